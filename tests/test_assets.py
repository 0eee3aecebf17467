"""Assets: uploads, lookups, limits, and references in workflows, against real servers."""
from __future__ import annotations

import os
import socket
import stat

import blake3
import pytest

from cylindria.service.server import Service
from tests import workflows
from tests.conftest import make_config
from tests.fake_comfy.png import decode_png, output_png, rgb_png
from tests.helpers import API_KEY, Api, wait_for

PNG = output_png("asset.png", 8)


@pytest.fixture
def database_url(backend):
    """The servers of this module keep their rows on each backend in turn."""
    return backend.database


def upload(api: Api, data: bytes, name: str = "photo.png", raw: bool = False):
    if raw:
        return api.request("POST", f"/assets?name={name}", data=data,
                           headers={"Content-Type": "image/png"})
    return api.request("POST", "/assets", files={"file": (name, data, "image/png")})


def asset_ref(asset: dict, by: str = "id") -> dict:
    return {"__type": "core/ASSET", "info": {by: asset[by]}}


def read_all(sock: socket.socket) -> bytes:
    """What the server sends until it closes the connection."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def files_in(folder) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


def test_upload_multipart_and_raw_give_one_asset_per_content(api, service):
    first = upload(api, PNG)
    assert first.status_code == 201
    asset = first.json()
    assert asset["hash"] == "blake3:" + blake3.blake3(PNG).hexdigest()
    assert (asset["name"], asset["size_bytes"], asset["content_type"], asset["created_new"]) == \
        ("photo.png", len(PNG), "image/png", True)
    again = upload(api, PNG, name="other.png", raw=True)
    assert again.status_code == 200 and again.json()["id"] == asset["id"]
    assert again.json()["created_new"] is False
    assert api.request("HEAD", f"/assets/by-hash/{asset['hash']}").status_code == 200
    assert api.request("HEAD", "/assets/by-hash/blake3:" + "0" * 64).status_code == 404
    assert api.get(f"/assets/{asset['id']}").json()["hash"] == asset["hash"]
    content = api.get(f"/assets/{asset['id']}/content")
    assert content.status_code == 200 and content.content == PNG
    assert content.headers["Content-Type"] == "image/png"
    assert api.get(f"/assets/{'f' * 32}").status_code == 404


def test_the_type_comes_from_the_bytes_never_the_name(api):
    asset = upload(api, b"GIF89a" + b"\0" * 20, name="looks.png").json()
    assert asset["content_type"] == "image/gif"
    text = upload(api, b"plain words", name="x.png", raw=True).json()
    assert text["content_type"] == "application/octet-stream"


def test_hostile_names_reach_neither_the_disk_nor_comfyui(api, service, fake):
    for name in ("../../x.png", "a\x00.png", "..\\..\\evil.png", "/etc/passwd"):
        data = PNG + name.encode("utf-8", "replace")
        answer = api.request("POST", "/assets", files={"file": (name, data, "image/png")})
        assert answer.status_code == 201, answer.text
        stored = answer.json()["name"]
        assert "/" not in stored and "\\" not in stored and "\x00" not in stored
    assets = service.context.config.data_dir / "assets"
    assert all(len(name) == 64 for name in files_in(assets))  # named by hash alone
    if os.name == "posix":
        assert {stat.S_IMODE(p.stat().st_mode) for p in assets.iterdir() if p.is_file()} == {0o600}
    assert not (service.context.config.data_dir.parent / "x.png").exists()


def test_an_upload_over_the_limit_is_413_without_reading_it(fakes, tmp_path):
    with Service(make_config(fakes, tmp_path, max_asset_mb=1)) as service:
        sock = socket.create_connection(("127.0.0.1", service.port), timeout=10)
        sock.sendall(f"POST /assets?name=big.bin HTTP/1.1\r\nHost: c\r\nX-API-Key: {API_KEY}\r\n"
                     f"Content-Length: {2 * 1024 * 1024}\r\n\r\n".encode())
        answer = read_all(sock).decode()  # no byte of the body was sent
        sock.close()
        assert answer.startswith("HTTP/1.1 413") and "asset_too_large" in answer
        api = Api(service.url)
        chunked = api.request("POST", "/assets?name=big.bin",
                              data=iter([b"\0" * (512 * 1024)] * 3))  # no Content-Length
        assert chunked.status_code == 413 and chunked.json()["code"] == "asset_too_large"
        assert files_in(service.context.config.data_dir / "assets") == []


def test_an_upload_cut_off_mid_body_leaves_nothing(api, service):
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=10)
    sock.sendall(f"POST /assets?name=cut.png HTTP/1.1\r\nHost: c\r\nX-API-Key: {API_KEY}\r\n"
                 f"Content-Length: 100000\r\n\r\n".encode() + PNG)
    sock.close()
    assets = service.context.config.data_dir / "assets"
    wait_for(lambda: api.get("/health").status_code == 200)
    assert files_in(assets) == []
    assert api.request("HEAD", "/assets/by-hash/blake3:" + blake3.blake3(PNG).hexdigest()).status_code == 404


def test_a_reference_to_an_unknown_asset_is_400_with_no_job_and_nothing_sent(api, fake):
    for gpu in ("0", "auto"):
        workflow = workflows.core("ghost")
        workflow["3"]["inputs"]["filename_prefix"] = {"__type": "core/ASSET", "info": {"id": "0" * 32}}
        answer = api.put(f"/startjob/ghost-{gpu}?GpuId={gpu}", json=workflow)
        assert answer.status_code == 400 and answer.json()["code"] == "asset_not_found"
        assert answer.json()["details"]["node_id"] == "3"
        assert api.get(f"/jobstatus/ghost-{gpu}").status_code == 404
    assert fake.prompts_received() == []


def test_an_asset_an_unfinished_job_needs_cannot_be_deleted(api, fake):
    asset = upload(api, PNG).json()
    fake.hold = True
    workflow = workflows.core("needs")
    workflow["3"]["inputs"]["filename_prefix"] = asset_ref(asset, by="hash")  # any string input
    assert api.put("/startjob/needs", json=workflow).status_code == 201
    refused = api.delete(f"/assets/{asset['id']}")
    assert refused.status_code == 409 and refused.json()["code"] == "asset_in_use"
    assert refused.json()["details"]["job_ids"] == ["needs"]
    fake.hold = False
    api.wait_status("needs", "completed")
    assert api.delete(f"/assets/{asset['id']}").status_code == 200
    assert api.get(f"/assets/{asset['id']}").status_code == 404


@pytest.mark.parametrize("gpu", ["0", "auto"])
def test_a_referenced_asset_is_uploaded_to_the_gpu_once_under_its_hash(api, fakes, gpu):
    asset = upload(api, PNG).json()
    used = set()
    for n in range(2):
        workflow = workflows.core(f"placed-{n}")
        workflow["3"]["inputs"]["filename_prefix"] = asset_ref(asset)
        assert api.put(f"/startjob/placed-{gpu}-{n}?GpuId={gpu}", json=workflow).status_code == 201
        used.add(api.wait_status(f"placed-{gpu}-{n}", "completed")["gpu_id"])
    sent = [r for f in fakes for r in f.requests() if r.path == "/prompt" and r.method == "POST"]
    prefix = sent[-1].json["prompt"]["3"]["inputs"]["filename_prefix"]
    assert prefix == f"cylindria/{asset['hash'][7:39]}.png"
    for index, fake in enumerate(fakes):  # once on each GPU that ran one of the jobs
        uploads = [r for r in fake.requests() if r.path == "/upload/image"]
        assert len(uploads) == (1 if index in used else 0)
        assert all(PNG in u.body and b"photo.png" not in u.body for u in uploads)


def small_picture(seed: int) -> tuple[bytes, bytes]:
    """A 4x4 PNG with values 0..64 (inverted exactly by ComfyUI's float maths), and its pixels."""
    pixels = bytes((seed * 5 + n * 3) % 65 for n in range(4 * 4 * 3))
    return rgb_png(4, 4, pixels), pixels


def run_inverted(api: Api, job_id: str, asset: dict, gpu: str, by: str = "id") -> dict:
    """Submit LoadImage(asset) -> ImageInvert -> SaveImage, wait for it, return the job."""
    workflow = workflows.load_image("placeholder", prefix=job_id)
    workflow["1"]["inputs"]["image"] = asset_ref(asset, by)
    answer = api.put(f"/startjob/{job_id}?GpuId={gpu}", json=workflow)
    assert answer.status_code == 201, answer.text
    return api.wait_status(job_id, "completed")


def downloaded(api: Api, job_id: str) -> bytes:
    """The job's first output file, through Cylindria."""
    result = api.get(f"/jobresult/{job_id}").json()
    return api.get(result["outputs"][0]["url"]).content


@pytest.mark.parametrize("gpu", ["0", "1", "auto"])
def test_an_uploaded_image_comes_back_inverted(api, fakes, gpu):
    png, pixels = small_picture(int(gpu) if gpu.isdigit() else 7)
    raw = gpu == "1"
    asset = upload(api, png, name="in.png", raw=raw).json()
    job = run_inverted(api, f"invert-{gpu}", asset, gpu, by="hash" if raw else "id")
    if gpu != "auto":
        assert job["gpu_id"] == int(gpu)
    picture = decode_png(downloaded(api, f"invert-{gpu}"))
    assert picture.rgb == bytes(255 - v for v in pixels)
    placed = fakes[job["gpu_id"]].uploads
    assert [(u.subfolder, u.name, u.data) for u in placed] == \
        [("cylindria", f"{asset['hash'][7:39]}.png", png)]


def test_a_comfyui_that_lost_its_input_files_gets_them_again(api, fakes):
    """Emptied input folder without a restart (ComfyUI refuses the prompt over the missing
    file: uploaded again, sent again), and a restart (the new websocket: uploaded again)."""
    png, pixels = small_picture(3)
    asset = upload(api, png).json()
    run_inverted(api, "before", asset, "0")
    fakes[0].clear_inputs()
    run_inverted(api, "after-clear", asset, "0")
    assert decode_png(downloaded(api, "after-clear")).rgb == bytes(255 - v for v in pixels)
    fakes[0].restart()
    wait_for(lambda: api.get("/serverstatus?GpuId=0").json()["websocket"] == "connected",
             message="the websocket back")
    run_inverted(api, "after-restart", asset, "0")
    assert len(fakes[0].uploads) == 3
    assert api.get("/jobstatus/after-clear").json()["attempts"] == 1


def test_an_oversize_upload_asking_to_continue_is_refused_before_its_body(fakes, tmp_path):
    with Service(make_config(fakes, tmp_path, max_asset_mb=1)) as service:
        sock = socket.create_connection(("127.0.0.1", service.port), timeout=10)
        sock.sendall(f"POST /assets?name=big.bin HTTP/1.1\r\nHost: c\r\nX-API-Key: {API_KEY}\r\n"
                     f"Expect: 100-continue\r\nContent-Length: {5 * 1024 * 1024}\r\n\r\n".encode())
        answer = read_all(sock).decode()
        sock.close()
    assert answer.startswith("HTTP/1.1 413") and "100 Continue" not in answer


def test_a_retry_is_answered_after_its_asset_is_gone(api, fake):
    asset = upload(api, PNG).json()
    workflow = workflows.core("retried")
    workflow["3"]["inputs"]["filename_prefix"] = asset_ref(asset)
    assert api.put("/startjob/retried", json=workflow).status_code == 201
    api.wait_status("retried", "completed")
    assert api.delete(f"/assets/{asset['id']}").status_code == 200
    again = api.put("/startjob/retried", json=workflow)
    assert again.status_code == 200 and again.json()["status"] == "completed"
    assert api.put("/startjob/new-one", json=workflow).json()["code"] == "asset_not_found"

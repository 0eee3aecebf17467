"""The official Comfy API v2 Python client, comfy-sdk 0.5.0, unmodified, against live servers.

Each test runs twice, through the `target` fixture of tests/sdk_targets.py:
- [cylindria]: Cylindria's /api/v2 in front of two fake ComfyUIs (GPU 0 and GPU 1);
- [proxy]: Comfy-Org's reference server comfy-api-proxy 0.1.6 in front of one fake ComfyUI,
  the yardstick for what an integrator's code already expects of a v2 server.

The client is made the documented way: COMFY_BASE_URL=<server> and Comfy(api_key=KEY); the
SDK adds /api/v2 itself and sends the key as a bearer token. Where the proxy behaves
differently the test says so in a `target.name == "proxy"` branch, asserting what the proxy
really does; a test the proxy cannot take at all (several GPUs) is skipped for it. The only
thing wrapped is the SDK's transport (client._low), and only to watch calls, never to change one.

The fake ComfyUI caches like ComfyUI: a node whose inputs it has seen is not run again, so
every job that must really run gets a workflow of its own (`fresh`).
"""
from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import blake3
import comfy_sdk
import pytest
from comfy_sdk.events import OutputReady, Progress, StatusChange
from comfy_sdk.exceptions import ComfyError, IdempotencyKeyReuse, JobFailed, Unauthorized

from tests import workflows
from tests.fake_comfy.png import PNG_MAGIC, decode_png, rgb_png
from tests.helpers import wait_for
from tests.sdk_targets import target  # noqa: F401  (the parametrized fixture)

ROOT = Path(__file__).resolve().parents[1]
PARTNER_KEY = "comfyui-partner-secret"
LONG = 100  # seconds of a slow() node: 5 s at the fakes' time scale, still running when acted on
_colours = itertools.count(1)


# -- helpers -----------------------------------------------------------------------------------
def connect(target, monkeypatch, key: str | None = None) -> comfy_sdk.Comfy:
    """A client of `target`, made as the SDK documents it."""
    monkeypatch.setenv("COMFY_BASE_URL", target.base_url)
    monkeypatch.delenv("COMFY_API_KEY", raising=False)
    return comfy_sdk.Comfy(api_key=key or target.key)


@pytest.fixture
def client(target, monkeypatch):
    with connect(target, monkeypatch) as client:
        yield client


def fresh(graph: dict) -> dict:
    """`graph` with its EmptyImage (node 1) in a colour no other job used: nothing cached."""
    graph["1"]["inputs"]["color"] = next(_colours)
    return graph


def submit_slow(client, seconds: float = LONG, steps: int = 8, **submit_args):
    """Submit a fresh slow() job: EmptyImage -> CylSleepProgress -> SaveImage."""
    return client.submit(client.workflows.from_json(fresh(workflows.slow(seconds, steps))),
                         **submit_args)


def wait_running(job):
    """Poll the job (GET /jobs/{id}) until it runs."""
    wait_for(lambda: job.refresh().status == "running", message=f"{job.id} to run")
    return job


def watch(monkeypatch, client, method: str) -> list:
    """Record (args, kwargs, result) of each call of the transport's `method`; the call
    itself is passed through untouched."""
    calls = []
    real = getattr(client._low, method)

    def recorded(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append((args, kwargs, result))
        return result

    monkeypatch.setattr(client._low, method, recorded)
    return calls


def small_picture(seed: int) -> tuple[bytes, bytes]:
    """A 4x4 PNG with values 0..64 (inverted exactly by ComfyUI's float maths), and its pixels."""
    pixels = bytes((seed * 5 + n * 3) % 65 for n in range(4 * 4 * 3))
    return rgb_png(4, 4, pixels), pixels


def invert_graph() -> dict:
    """LoadImage -> ImageInvert -> SaveImage, as examples/invert_asset.json (image set later)."""
    return workflows.load_image("placeholder", prefix="sdk_inverted")


def files_containing(folder, needle: bytes) -> list[str]:
    """Files under `folder` whose bytes contain `needle` (database, -wal and all)."""
    return [str(p) for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes()]


# -- tests -------------------------------------------------------------------------------------
def test_asset_upload_then_same_bytes_upload_nothing(target, client, monkeypatch, tmp_path):
    png, _ = small_picture(1)
    (tmp_path / "first.png").write_bytes(png)
    (tmp_path / "again.png").write_bytes(png)
    uploads = watch(monkeypatch, client, "post_assets")
    minted = watch(monkeypatch, client, "asset_from_hash")
    first = client.assets.from_file(tmp_path / "first.png")
    asset_id = first.commit()
    reference = first.as_reference()
    assert reference["__type"] == "core/ASSET" and reference["info"]["id"] == asset_id
    assert first.hash == "blake3:" + blake3.blake3(png).hexdigest()
    assert first.created_new is True and len(uploads) == 1
    second = client.assets.from_file(tmp_path / "again.png")
    second.commit()  # HEAD /assets/by-hash answers 200: POST /assets/from-hash, no upload
    assert second.hash == first.hash and second.id
    assert (len(uploads), len(minted)) == (1, 1)


def test_img2img_comes_back_inverted(target, client, tmp_path):
    png, pixels = small_picture(2)
    (tmp_path / "in.png").write_bytes(png)
    workflow = client.workflows.from_json(invert_graph())
    workflow.set_input("1", "image", client.assets.from_file(tmp_path / "in.png"))
    job = client.run(workflow)
    assert job.status == "succeeded"
    [output] = job.get_outputs("3")
    written = output.to_file(tmp_path / "out.png")
    assert decode_png(written.read_bytes()).rgb == bytes(255 - v for v in pixels)
    first_bytes = output.to_bytes(range=(0, 7))
    if target.name == "proxy":
        # comfy-api-proxy serves outputs by relaying ComfyUI's /view with the Range header
        # passed on; it does no ranges itself. The fake's /view ignores Range (200, the
        # whole file), so the proxy answers the whole file, and the SDK hands that over.
        assert first_bytes == written.read_bytes()
    else:
        assert first_bytes == PNG_MAGIC


def test_events_show_progress_then_success(target, client):
    job = submit_slow(client, seconds=20, steps=10)  # 1 s, ten steps
    events = list(job.events())  # ends after the terminal StatusChange
    assert isinstance(events[-1], StatusChange) and events[-1].status == "succeeded", events
    assert any(isinstance(e, Progress) for e in events[:-1]), events
    ready = [e for e in events if isinstance(e, OutputReady)]
    assert all(e.output.node_id == "3" for e in ready)  # OutputReady is optional, if sent: node 3
    assert job.refresh().status == "succeeded"


def test_cancel_a_running_job(target, client):
    job = wait_running(submit_slow(client))
    assert job.cancel().status in ("canceling", "canceled")
    job.wait()
    if target.name == "proxy":
        # comfy-api-proxy cancels through ComfyUI's POST /api/jobs/{id}/cancel, which the
        # ComfyUI 0.3.64 the fake reproduces does not have (404). The proxy ignores that
        # answer and says "canceling"; the job runs to its end.
        assert any(r.method == "POST" and r.path == f"/api/jobs/{job.id}/cancel"
                   for r in target.fakes[0].requests())
        assert job.status == "succeeded"
    else:
        assert job.status == "canceled"


def test_list_jobs_newest_first(target, client):
    jobs = [client.run(client.workflows.from_json(fresh(workflows.core(f"list{n}"))))
            for n in range(3)]
    listed = [summary.id for summary in client.list_jobs(limit=10)]
    positions = [listed.index(job.id) for job in reversed(jobs)]  # ValueError: one is missing
    assert positions == sorted(positions)


def test_metadata_labels_round_trip(target, client):
    workflow = client.workflows.from_json(fresh(workflows.core("labelled")))
    if target.name == "proxy":
        # comfy-api-proxy keeps `metadata` as one opaque string (<= 1 KiB) and refuses a map
        # of labels: 422 invalid_request. It filters on nothing, so the SDK (which checks the
        # labels of each listed job itself) yields no job for a label filter.
        with pytest.raises(ComfyError) as refused:
            client.submit(workflow, metadata={"client": "acme"})
        assert (refused.value.code, refused.value.http_status) == ("invalid_request", 422)
        client.run(workflow)
        assert list(client.list_jobs(metadata={"client": "acme"})) == []
        return
    labelled = client.submit(workflow, metadata={"client": "acme"})
    assert labelled.metadata == {"client": "acme"}
    other = client.submit(client.workflows.from_json(fresh(workflows.core("other"))),
                          metadata={"client": "other"})
    plain = client.run(client.workflows.from_json(fresh(workflows.core("plain"))))
    assert client.jobs.get(labelled.id).metadata == {"client": "acme"}
    assert plain.metadata == {}
    assert [s.id for s in client.list_jobs(metadata={"client": "acme"})] == [labelled.id]
    assert {s.id for s in client.list_jobs()} >= {labelled.id, other.id, plain.id}


def test_ten_jobs_use_both_gpus(target, client):
    jobs = [submit_slow(client, seconds=6, steps=2) for _ in range(10)]  # 0.3 s each
    for job in jobs:
        assert job.result().status == "succeeded"
    if target.name == "proxy":
        # comfy-api-proxy fronts one ComfyUI: all ten ran there, one after the other.
        assert sorted(target.prompts_received()) == sorted(job.id for job in jobs)
        return
    assert {target.gpu_of(job.id) for job in jobs} == {0, 1}


def test_wrong_key_is_unauthorized(target, monkeypatch):
    with connect(target, monkeypatch, key="not-the-key") as client:
        with pytest.raises(Unauthorized) as refused:
            list(client.list_jobs())
    assert refused.value.http_status == 401
    assert target.prompts_received() == []


def test_lost_job_fails(target, monkeypatch):
    if target.name == "cylindria":
        target.restart(max_attempts=1)  # no second attempt on the other GPU
    with connect(target, monkeypatch) as client:
        job = wait_running(submit_slow(client))
        gpu = target.gpu_of(job.id) if target.name == "cylindria" else 0
        target.fakes[gpu].stop()  # ComfyUI killed: connection refused from now on
        if target.name == "proxy":
            # comfy-api-proxy asks ComfyUI on every poll and has no failure of its own for a
            # lost job: while ComfyUI is down, GET /jobs/{id} is 503 upstream_unreachable
            # (not a JobFailed); once a ComfyUI that forgot the prompt is back, the job is
            # "expired", with no error object (JobFailed's code is the SDK's "job_failed").
            with pytest.raises(ComfyError) as down:
                job.result()
            assert not isinstance(down.value, JobFailed)
            assert (down.value.code, down.value.http_status) == ("upstream_unreachable", 503)
            target.fakes[gpu].start()
            with pytest.raises(JobFailed) as expired:
                job.result()
            assert job.status == "expired" and job.error is None
            assert expired.value.code == "job_failed"
            return
        with pytest.raises(JobFailed) as failed:
            job.result()
    assert job.status == "failed"
    assert job.error.code == "job_lost" and failed.value.code == "job_lost"


def test_idempotent_resubmit_reaches_comfyui_once(target, client, monkeypatch):
    graph = fresh(workflows.slow(4, 2))
    posts = watch(monkeypatch, client, "raw_request")
    job = client.submit(client.workflows.from_json(graph), idempotency_key="same-key-1")
    if target.name == "proxy":
        # comfy-api-proxy's keys are single-use (reject, no replay), as the SDK's docstring
        # describes: the same request again is 422 idempotency_key_reuse.
        with pytest.raises(IdempotencyKeyReuse):
            client.submit(client.workflows.from_json(graph), idempotency_key="same-key-1")
    else:
        # Cylindria replays (the v2 spec's Stripe semantics): the same job, 201 again,
        # marked Idempotency-Replayed: true.
        again = client.submit(client.workflows.from_json(graph), idempotency_key="same-key-1")
        assert again.id == job.id
        replay = [result for args, _, result in posts if args[:2] == ("POST", "/jobs")][-1]
        assert replay.status_code == 201
        assert replay.headers.get("Idempotency-Replayed") == "true"
    changed = fresh(workflows.slow(4, 2))
    with pytest.raises(IdempotencyKeyReuse):
        client.submit(client.workflows.from_json(changed), idempotency_key="same-key-1")
    job.result()
    assert len(target.prompts_received()) == 1
    if target.name == "proxy":
        assert target.prompts_received() == [job.id]  # the proxy's prompt id is the job id


def test_partner_key_reaches_comfyui_and_is_not_stored(target, client):
    workflow = client.workflows.from_json(fresh(workflows.core("sdk_partner_probe")))
    client.submit(workflow, api_key=PARTNER_KEY).result()
    [post] = target.prompt_posts()
    assert post.json["extra_data"]["api_key_comfy_org"] == PARTNER_KEY
    # Cylindria's data dir (the proxy's --state-dir) keeps the job's workflow: the scan sees
    # what was stored, and the partner key is not among it.
    assert files_containing(target.data_dir, b"sdk_partner_probe")
    assert files_containing(target.data_dir, PARTNER_KEY.encode()) == []


def test_partner_key_reaches_comfyui_with_an_asset_too(target, client, tmp_path):
    """The usual partner-node job: an uploaded image, then a node that needs the key (an
    asset makes the prompt another body: the key must go with it too)."""
    (tmp_path / "in.png").write_bytes(small_picture(2)[0])
    workflow = client.workflows.from_json(invert_graph())
    workflow.set_input("1", "image", client.assets.from_file(tmp_path / "in.png"))
    client.submit(workflow, api_key=PARTNER_KEY).result()
    [post] = target.prompt_posts()
    assert post.json["extra_data"]["api_key_comfy_org"] == PARTNER_KEY
    assert files_containing(target.data_dir, PARTNER_KEY.encode()) == []


def readme_example() -> str:
    """The Python lines of the README's "From comfy-sdk" section: the here-document the README
    feeds to `.venv/bin/python - "$OUT/inverted.png"`."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## From comfy-sdk"):]
    return re.search(r'python - "\$OUT/inverted.png" <<\'EOF\'\n(.*?)\nEOF\n', section, re.S).group(1)


def test_the_readme_example_runs_as_written(target, tmp_path):
    """The README's lines, in a process of their own, as a user runs them: in a checkout (here a
    copy of its examples/), with COMFY_BASE_URL and COMFY_API_KEY set, the output file named."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    env = {**os.environ, "COMFY_BASE_URL": target.base_url, "COMFY_API_KEY": target.key}
    out = tmp_path / "out" / "inverted.png"
    out.parent.mkdir()
    done = subprocess.run([sys.executable, "-", str(out)], input=readme_example(), cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    source = decode_png((ROOT / "examples" / "gradient.png").read_bytes())
    inverted = decode_png(out.read_bytes())
    assert (inverted.width, inverted.height) == (source.width, source.height)
    assert all(abs(a + b - 255) <= 1 for a, b in zip(inverted.rgb, source.rgb))

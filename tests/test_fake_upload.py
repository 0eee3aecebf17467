"""Input files in the fake ComfyUI: POST /upload/image, LoadImage and LoadImageMask, checked
against tests/recordings/scenario-upload-loadimage.json and ComfyUI 0.3.64's server.py and
nodes.py (tests/fake_comfy/files.py, nodes.py).
"""

from __future__ import annotations

import struct
import zlib
from array import array

import pytest
import requests

from tests import workflows
from tests.fake_comfy import FakeComfy, Upload
from tests.fake_comfy.png import PNG_MAGIC, _chunk, _paeth, decode_png, encode_png, rgb_png
from tests.test_fake_catalogue import cached_nodes, get, run, submit
from tests.test_fake_comfy import (TIMEOUT, clients, connect, fake, recorded_messages,  # noqa: F401
                                   recording, sample, shape, summarize, url, wait_history)

SCENARIO = "scenario-upload-loadimage"
LISTED = ["LoadImage", "LoadImageMask"]


def upload(fake: FakeComfy, name: str, data: bytes, **form: str) -> requests.Response:
    """POST /upload/image with the file as part `image` and the other fields as given."""
    return requests.post(url(fake, "/upload/image"), files={"image": (name, data, "image/png")},
                         data=form, timeout=TIMEOUT)


def placed(fake: FakeComfy, name: str, data: bytes) -> str:
    """Upload as a gateway does (input, subfolder cylindria, overwrite); the LoadImage name."""
    answer = upload(fake, name, data, type="input", subfolder="cylindria", overwrite="true")
    assert answer.json() == {"name": name, "subfolder": "cylindria", "type": "input"}
    return f"cylindria/{name}"


def saved(fake: FakeComfy, entry: dict) -> bytes:
    """The first image of a run's SaveImage, downloaded by /view."""
    image = entry["outputs"]["3"]["images"][0]
    view = requests.get(url(fake, "/view"), params=image, timeout=TIMEOUT)
    assert (view.status_code, view.headers["Content-Type"]) == (200, "image/png")
    return view.content


def f32(value: float) -> float:
    """The value rounded to float32."""
    return array("f", [value])[0]


def comfy_inverted(value: int) -> int:
    """What real ComfyUI saves for a channel value after LoadImage -> ImageInvert: float32
    tensors (value / 255, 1.0 - x), then SaveImage's uint8 cast of 255 * x truncates."""
    return int(f32(255.0 * f32(1.0 - f32(value / 255.0))))


def load_mask(name: str, channel: str | None = "alpha", prefix: str = "cyl_mask") -> dict:
    """LoadImageMask(name, channel) -> MaskToImage -> SaveImage; without a channel
    LoadImage's own MASK output (slot 1) instead."""
    workflow = workflows.load_image(name, prefix)
    workflow["2"] = {"class_type": "MaskToImage", "inputs": {"mask": ["1", 1]}}
    if channel is not None:
        workflow["1"] = {"class_type": "LoadImageMask",
                         "inputs": {"image": name, "channel": channel}}
        workflow["2"]["inputs"]["mask"] = ["1", 0]
    return workflow


# -- LoadImage -> ImageInvert -> SaveImage ------------------------------------------------------
def test_uploaded_image_comes_back_inverted(fake):
    source = rgb_png(16, 16)  # 256 pixels: every 8-bit value in every channel
    name = placed(fake, "4f2a9c1e0b7d3a55.png", source)
    assert fake.uploads == [("cylindria", "4f2a9c1e0b7d3a55.png", source)]
    view = requests.get(url(fake, "/view"), params={
        "type": "input", "subfolder": "cylindria", "filename": "4f2a9c1e0b7d3a55.png"},
        timeout=TIMEOUT)
    assert (view.status_code, view.headers["Content-Type"], view.content) == (
        200, "image/png", source)

    out = decode_png(saved(fake, run(fake, workflows.load_image(name))))
    pixels = decode_png(source).rgb
    assert (out.width, out.height, out.alpha) == (16, 16, None)
    assert all(255 - v - 1 <= o <= 255 - v for v, o in zip(pixels, out.rgb))
    assert list(out.rgb) == [comfy_inverted(v) for v in pixels]
    assert [comfy_inverted(v) for v in (0, 64, 65, 255)] == [255, 191, 189, 0]


def test_an_output_loaded_back_is_inverted_again(fake):
    first = run(fake, workflows.load_image(placed(fake, "p.png", rgb_png(4, 4))))
    filename = first["outputs"]["3"]["images"][0]["filename"]
    again = run(fake, workflows.load_image(f"{filename} [output]", prefix="again"))
    back = decode_png(saved(fake, again)).rgb
    assert list(back) == [comfy_inverted(v) for v in decode_png(saved(fake, first)).rgb]


def test_the_recorded_scenario(fake, clients):
    events = recording(SCENARIO)
    for listed in sample(events, "GET", "/object_info/LoadImage")["response"]["LoadImage"][
            "input"]["required"]["image"][0]:
        upload(fake, listed, rgb_png(2, 2))  # the recording machine's input folder
    main = connect(clients, fake, "rec-b837e472")
    data = rgb_png(32, 32)
    for event in [e for e in events if e["channel"] == "http" and e["status"] != 400]:
        request = event["request"]
        if request["path"] == "/upload/image":
            name = request["body"]["multipart"]["image"]
            answer = upload(fake, name, data, **request["body"]["fields"])
        elif request["method"] == "POST":
            main.mark()
            answer = requests.post(url(fake, "/prompt"), json=request["body"], timeout=TIMEOUT)
            main.wait_done(answer.json()["prompt_id"])
        else:  # the recorded output counter had run on from earlier scenarios
            path = request["path"].replace("cyl_loadimage_00002_", "cyl_loadimage_00001_")
            answer = requests.get(url(fake, path), timeout=TIMEOUT)
        if "type=input" in request["path"]:
            assert answer.content == data
        assert (answer.status_code, answer.headers["Content-Type"]) == (
            event["status"], event["content_type"]), request
        if "json" in event["content_type"] and request["path"].startswith("/history"):
            assert shape(answer.json()) == shape(event["response"])
        elif "json" in event["content_type"]:
            assert answer.json() == event["response"], request
    recorded = [m for m in recorded_messages(events, "A") if m[0] != "<op 8>"]
    assert summarize(main.messages) == summarize(recorded)


def test_a_file_that_is_not_there_is_refused_as_recorded(fake):
    placed(fake, "4f2a9c1e0b7d3a55.png", rgb_png(2, 2))
    for event in recording(SCENARIO):
        if event["channel"] == "http" and event["status"] == 400:
            answer = requests.post(url(fake, "/prompt"), json=event["request"]["body"],
                                   timeout=TIMEOUT)
            assert (answer.status_code, answer.json()) == (400, event["response"])
    assert fake.prompts_received() == []


def test_masks_come_out_as_comfyui_computes_them(fake):
    rgb, alpha = bytes(range(0, 240, 5)), bytes(range(100, 116))
    name = placed(fake, "rgba.png", encode_png(4, 4, rgb, alpha))

    def grey(workflow: dict) -> bytes:
        """The first channel of the run's saved image (MaskToImage gives grey)."""
        return decode_png(saved(fake, run(fake, workflow))).rgb[0::3]

    assert grey(load_mask(name, "green")) == rgb[1::3]
    assert list(grey(load_mask(name, "alpha"))) == [comfy_inverted(a) for a in alpha]
    assert list(grey(load_mask(name, None))) == [comfy_inverted(a) for a in alpha]  # 1 - alpha
    opaque = placed(fake, "rgb.png", rgb_png(4, 4))
    assert grey(load_mask(opaque, "alpha")) == bytes(16)
    without_alpha = decode_png(saved(fake, run(fake, load_mask(opaque, None, "zeros"))))
    assert (without_alpha.width, without_alpha.height, set(without_alpha.rgb)) == (64, 64, {0})


def test_load_image_mask_checks_its_file_and_channel(fake):
    refused = submit(fake, load_mask("cylindria/none.png", "green"))
    assert refused.status_code == 400
    assert refused.json()["node_errors"] == {"1": {
        "errors": [{"type": "custom_validation_failed",
                    "message": "Custom validation failed for node",
                    "details": "image - Invalid image file: cylindria/none.png",
                    "extra_info": {"input_name": "image"}}],
        "dependent_outputs": ["3"], "class_type": "LoadImageMask"}}
    name = placed(fake, "m.png", rgb_png(3, 2))
    bad = submit(fake, load_mask(name, "purple")).json()["node_errors"]["1"]["errors"]
    assert [(e["type"], e["details"]) for e in bad] == [
        ("value_not_in_list", "channel: 'purple' not in ['alpha', 'red', 'green', 'blue']")]


def test_a_file_that_is_no_image_fails_when_it_runs(fake):
    placed(fake, "fake.png", b"GIF89a, or anything else")
    answer = submit(fake, workflows.load_image("cylindria/fake.png"))
    assert answer.status_code == 200  # validation only asks whether the file exists
    entry = wait_history(fake, answer.json()["prompt_id"])
    error = dict(entry["status"]["messages"])["execution_error"]
    assert (error["node_id"], error["exception_type"], error["exception_message"]) == (
        "1", "PIL.UnidentifiedImageError", "cannot identify image file 'cylindria/fake.png'\n")


# -- uploads ----------------------------------------------------------------------------------
def test_overwrite_keeps_the_name_and_new_bytes_run_again(fake):
    first, second = rgb_png(2, 2), rgb_png(2, 2, bytes(range(12)))
    name = placed(fake, "same.png", first)
    entry = run(fake, workflows.load_image(name))
    assert cached_nodes(run(fake, workflows.load_image(name))) == ["1", "2", "3"]
    assert placed(fake, "same.png", second) == name  # same name back, bytes replaced
    assert fake.output_bytes("same.png", "cylindria", "input") == second
    again = run(fake, workflows.load_image(name))
    assert cached_nodes(again) == []  # IS_CHANGED: the file's hash changed
    assert saved(fake, again) != saved(fake, entry)
    assert list(decode_png(saved(fake, again)).rgb) == [comfy_inverted(v) for v in range(12)]


def test_without_overwrite_new_bytes_get_a_new_name(fake):
    one, two, three = (rgb_png(1, 1, bytes([v, v, v])) for v in (1, 2, 3))
    names = [upload(fake, "pic.png", data).json()["name"] for data in (one, one, two, three, two)]
    assert names == ["pic.png", "pic.png", "pic (1).png", "pic (2).png", "pic (1).png"]
    assert [u.name for u in fake.uploads] == names
    assert fake.output_bytes("pic (2).png", type="input") == three
    assert upload(fake, "pic.png", three, overwrite="1").json()["name"] == "pic.png"


@pytest.mark.parametrize("subfolder, filename", [
    ("../x", "a.png"), ("/etc", "a.png"), ("", "../a.png"), ("a/../..", "x.png"),
    ("cylindria", "../../a.png"), ("", "/tmp/a.png")])
def test_a_path_out_of_the_folder_is_refused(fake, subfolder, filename):
    answer = upload(fake, filename, b"x", subfolder=subfolder)
    assert (answer.status_code, answer.content) == (400, b"")
    assert fake.uploads == [] and get(fake, "/object_info/LoadImage")["LoadImage"]["input"][
        "required"]["image"][0] == []


def test_what_comfyui_resolves_inside_the_folder_is_kept(fake):
    answer = upload(fake, "../x.png", b"x", subfolder="a", type="input")
    assert answer.json() == {"name": "../x.png", "subfolder": "a", "type": "input"}
    assert fake.uploads == [Upload("", "x.png", b"x")]  # server.py: input/a/../x.png
    assert upload(fake, "t.png", b"t", type="temp").json()["type"] == "temp"
    assert fake.output_bytes("t.png", type="temp") == b"t" and len(fake.uploads) == 1


@pytest.mark.parametrize("files, status", [
    ({"image": (None, "not a file")}, 500),  # a text field: ComfyUI's image.file fails
    ({"image": (None, "")}, 400),
    ({"image": ("a\x00.png", b"x")}, 500),  # open() refuses the name
    ({"notimage": ("x.png", b"x")}, 400)])
def test_malformed_uploads(fake, files, status):
    answer = requests.post(url(fake, "/upload/image"), files=files, timeout=TIMEOUT)
    assert answer.status_code == status and fake.uploads == []


def test_object_info_lists_the_images_at_the_top_of_the_input_folder(fake):
    for name in ("b.png", "a.png", "notes.txt", "photo.webp"):
        upload(fake, name, b"x")
    placed(fake, "deep.png", b"x")
    for cls in LISTED:
        assert get(fake, f"/object_info/{cls}")[cls]["input"]["required"]["image"] == [
            ["a.png", "b.png", "photo.webp"], {"image_upload": True}]
    assert get(fake, "/object_info")["LoadImage"] == get(fake, "/object_info/LoadImage")[
        "LoadImage"]


# -- restarts -----------------------------------------------------------------------------------
def test_a_restart_without_state_empties_the_input_folder(fake):
    name = placed(fake, "kept.png", rgb_png(2, 2))
    upload(fake, "top.png", b"x")
    output = run(fake, workflows.load_image(name))["outputs"]["3"]["images"][0]
    fake.restart(keep_state=True)
    run(fake, workflows.load_image(name, prefix="after"))
    fake.restart()
    refused = submit(fake, workflows.load_image(name))
    assert refused.status_code == 400
    assert refused.json()["node_errors"]["1"]["errors"][0]["type"] == "custom_validation_failed"
    assert requests.get(url(fake, "/view"), params={
        "type": "input", "subfolder": "cylindria", "filename": "kept.png"},
        timeout=TIMEOUT).status_code == 404
    assert get(fake, "/object_info/LoadImage")["LoadImage"]["input"]["required"]["image"][0] == []
    assert fake.output_bytes(output["filename"])  # outputs stay, like a disk
    run(fake, workflows.load_image(placed(fake, "kept.png", rgb_png(2, 2))))
    assert len(fake.uploads) == 3  # counted across restarts, like requests()
    fake.clear_inputs()
    assert submit(fake, workflows.load_image(name)).status_code == 400


# -- the PNG decoder ----------------------------------------------------------------------------
def _filtered(rows: list[bytes], bpp: int, kinds: list[int]) -> bytes:
    """Scanlines with PNG filters applied (row y gets kinds[y % len(kinds)])."""
    out, prev = b"", bytes(len(rows[0]))
    for y, row in enumerate(rows):
        kind, line = kinds[y % len(kinds)], bytearray()
        for i, value in enumerate(row):
            left, up_left = (row[i - bpp], prev[i - bpp]) if i >= bpp else (0, 0)
            predicted = (0, left, prev[i], (left + prev[i]) >> 1, _paeth(left, prev[i], up_left))
            line.append((value - predicted[kind]) & 255)
        out += bytes([kind]) + line
        prev = row
    return out


def _png(width: int, height: int, colour: int, samples: bytes, *extra: tuple) -> bytes:
    """A PNG of raw samples (filters 0-4 in turn) with extra (type, data) chunks."""
    bpp = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
    rows = [samples[y * width * bpp:(y + 1) * width * bpp] for y in range(height)]
    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    data = zlib.compress(_filtered(rows, bpp, [0, 1, 2, 3, 4]))
    return PNG_MAGIC + _chunk(b"IHDR", header) + b"".join(_chunk(*c) for c in extra) + \
        _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def test_the_decoder_reads_every_filter_and_colour_type():
    width, height = 7, 5
    rgb = bytes((n * 37 + 11) & 255 for n in range(width * height * 3))
    grey = bytes((n * 53) & 255 for n in range(width * height))
    alpha = bytes((n * 29) & 255 for n in range(width * height))
    assert decode_png(_png(width, height, 2, rgb)).rgb == rgb
    rgba = decode_png(_png(width, height, 6, bytes(v for p in zip(
        rgb[0::3], rgb[1::3], rgb[2::3], alpha) for v in p)))
    assert (rgba.rgb, rgba.alpha) == (rgb, alpha)
    assert decode_png(_png(width, height, 0, grey)).rgb == bytes(g for g in grey for _ in "rgb")
    grey_alpha = decode_png(_png(width, height, 4, bytes(v for p in zip(grey, alpha) for v in p)))
    assert (grey_alpha.rgb[0::3], grey_alpha.alpha) == (grey, alpha)
    palette = bytes(range(30))  # ten colours
    indexes = bytes(n % 10 for n in range(width * height))
    decoded = decode_png(_png(width, height, 3, indexes, (b"PLTE", palette), (b"tRNS", b"\0\x80")))
    assert decoded.rgb == b"".join(palette[3 * i:3 * i + 3] for i in indexes)
    assert decoded.alpha == bytes({0: 0, 1: 128}.get(i, 255) for i in indexes)

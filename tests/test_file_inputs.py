"""A workflow reads only what it was given: an own key's file inputs (LoadImage's `image`...)
name only its own assets and its own jobs' outputs; for every key, no string input is an
absolute path or holds a `..` segment. A refusal is 400 file_not_allowed whether or not the
file exists, and nothing reaches ComfyUI."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from cylindria.service.server import Service
from tests import workflows
from tests.conftest import make_config
from tests.fake_comfy.png import output_png
from tests.helpers import API_KEY, Api
from tests.test_assets import asset_ref, upload

ALICE, BOB = "alice-key-0123456", "bob-key-0123456789"
RECORDED = Path(__file__).resolve().parent / "recordings" / "object-info.json"


# -- the rule, as plain functions -------------------------------------------------------------

def test_the_recorded_object_info_marks_the_core_loaders():
    from comfy.inputs.fileinputs import file_inputs_of
    marked = file_inputs_of(json.loads(RECORDED.read_text(encoding="utf-8")))
    assert marked["LoadImage"] == {"image"} and marked["LoadImageMask"] == {"image"}
    assert marked["LoadAudio"] == {"audio"} and marked["LoadVideo"] == {"file"}
    assert "CheckpointLoaderSimple" not in marked and "SaveImage" not in marked
    custom = {"MyLoader": {"input": {"required": {"x": ["STRING", {}]},
                                     "optional": {"clip": ["COMBO", {"video_upload": True}]}}}}
    assert file_inputs_of(custom) == {"MyLoader": {"clip"}}


@pytest.mark.parametrize("value", [
    "/etc/passwd", "\\etc\\passwd", "\\\\server\\share\\x.png", "C:\\x.png", "c:/x.png",
    "D:x.png", "../secret.png", "sub/../../x.png [output]", "..\\x.png", "x/..",
    "a/.../b.png", "a/.. /b.png", "../x.png [temp]"])
def test_absolute_paths_and_dot_dot_segments_are_unsafe(value):
    from comfy.inputs.fileinputs import unsafe_path
    assert unsafe_path(value)


@pytest.mark.parametrize("value", [
    "x.png", "sub/x.png [output]", "a photo of a cat...", "A: cat", "x..png", "..x.png",
    "version 1.2..3", "C:", "", "cylindria/abc.png"])
def test_names_inside_the_folders_and_plain_text_are_safe(value):
    from comfy.inputs.fileinputs import unsafe_path
    assert not unsafe_path(value)


def test_an_own_clients_file_inputs_name_only_its_assets_and_outputs():
    from comfy.inputs.fileinputs import CORE_FILE_INPUTS, FileNotAllowed, check_files
    mine = {("", "mine_00001_.png"), ("sub", "deep_00001_.png")}

    def own(subfolder, filename):
        return (subfolder, filename) in mine

    def check(value, own_output=own):
        check_files({"1": {"class_type": "LoadImage", "inputs": {"image": value}}},
                    CORE_FILE_INPUTS, own_output)
    for allowed in ("mine_00001_.png [output]", "sub/deep_00001_.png [output]",
                    {"__type": "core/ASSET", "info": {"id": "a"}}):
        check(allowed)
    for refused in ("theirs_00001_.png [output]", "mine_00001_.png", "mine_00001_.png [temp]",
                    "mine_00001_.png [input]", "deep_00001_.png [output]", ["9", 0],
                    {"__type": "other"}, 3):
        with pytest.raises(FileNotAllowed) as caught:
            check(refused)
        assert (caught.value.node_id, caught.value.input) == ("1", "image")
    check("theirs_00001_.png [output]", own_output=None)  # not an own client
    with pytest.raises(FileNotAllowed):
        check("../x.png", own_output=None)
    with pytest.raises(FileNotAllowed):  # any input, any class
        check_files({"1": {"class_type": "CLIPTextEncode", "inputs": {"text": "/etc/x"}}},
                    CORE_FILE_INPUTS, None)


def test_an_output_is_the_clients_on_a_gpu_when_its_newest_job_there_is():
    from comfy.inputs.fileinputs import owns_output

    def job(by, gpu, name):
        return SimpleNamespace(submitted_by=by, gpu_id=gpu, outputs=(
            {"node_id": "3", "filename": name, "subfolder": "", "type": "output"},))
    newest_first = [job("alice", 1, "x.png"), job("bob", 0, "x.png"), job("bob", 0, "y.png"),
                    job("alice", 0, "y.png"), job(None, 0, "z.png")]
    assert owns_output(newest_first, "bob", 0, "", "x.png")
    assert not owns_output(newest_first, "bob", 1, "", "x.png")
    assert not owns_output(newest_first, "bob", None, "", "x.png")  # GPU 1's is alice's
    assert owns_output(newest_first, "bob", None, "", "y.png")
    assert not owns_output(newest_first, "alice", 0, "", "y.png")  # written again by bob
    assert not owns_output(newest_first, "bob", 0, "", "none.png")
    assert not owns_output(newest_first, "bob", 0, "sub", "x.png")


# -- a real server ----------------------------------------------------------------------------

@pytest.fixture
def shared(fakes, tmp_path):
    keys = (f"alice:{ALICE}:own", f"bob:{BOB}:own", f"admin:{API_KEY}")
    with Service(make_config(fakes, tmp_path, api_keys=keys)) as service:
        yield service


def completed_output(api: Api, job_id: str, workflow: dict) -> str:
    """Run the workflow on GPU 0 and give the file name of its first output."""
    assert api.put(f"/startjob/{job_id}?GpuId=0", json=workflow).status_code == 201
    return api.wait_status(job_id, "completed")["outputs"][0]["filename"]


def refusal(answer) -> dict:
    assert answer.status_code == 400, answer.text
    assert answer.json()["code"] == "file_not_allowed"
    return answer.json()


def test_an_own_key_cannot_load_another_clients_output(shared, fakes):
    alice, bob = Api(shared.url, key=ALICE), Api(shared.url, key=BOB)
    hers = completed_output(alice, "alicedone", workflows.core("alicedone"))
    prompts = len(fakes[0].prompts_received())
    answers = [refusal(bob.put(f"/startjob/steal-{n}?GpuId={gpu}", json=workflows.load_image(name)))
               for n, (gpu, name) in enumerate([
                   ("0", f"{hers} [output]"), ("0", "nosuch_00001_.png [output]"),
                   ("auto", f"{hers} [output]"), ("auto", "nosuch_00001_.png [output]"),
                   ("0", f"{hers} [temp]"), ("0", hers)])]
    # The same answer whether the file exists or not: no clue to other clients' files.
    assert answers[0] == answers[1] and answers[2] == answers[3]
    assert answers[0]["details"] == {"node_id": "1", "input": "image"}
    v2 = bob.request("POST", "/api/v2/jobs", json={"workflow": workflows.load_image(f"{hers} [output]")})
    assert v2.status_code == 422 and v2.json()["error"]["code"] == "file_not_allowed"
    assert bob.get("/jobs").json()["jobs"] == []  # no job left behind
    assert len(fakes[0].prompts_received()) == prompts and not fakes[1].prompts_received()
    # A key without :own may (it sees every job's outputs anyway).
    admin = Api(shared.url)
    assert admin.put("/startjob/admin-reads?GpuId=0",
                     json=workflows.load_image(f"{hers} [output]")).status_code == 201


def test_an_own_key_loads_its_own_outputs_and_assets(shared):
    bob = Api(shared.url, key=BOB)
    his = completed_output(bob, "bobdone", workflows.core("bobdone"))
    again = completed_output(bob, "bob-again", workflows.load_image(f"{his} [output]"))
    assert again.startswith("cyl_load")
    asset = upload(bob, output_png("in.png")).json()
    assert completed_output(bob, "bob-asset", workflows.load_image(asset_ref(asset)))


@pytest.mark.parametrize("value", ["../../etc/passwd.png", "/etc/passwd", "C:\\Windows\\x.png",
                                   "\\\\server\\share\\x.png", "sub/../../x.png [output]"])
def test_paths_outside_comfys_folders_are_refused_for_every_key(shared, fakes, value):
    admin = Api(shared.url)
    for gpu in ("0", "auto"):
        refusal(admin.put(f"/startjob/escape?GpuId={gpu}", json=workflows.load_image(value)))
    text = workflows.core("esc")
    text["9"] = {"class_type": "CLIPTextEncode", "inputs": {"text": value, "clip": ["8", 0]}}
    refusal(admin.put("/startjob/escape?GpuId=0", json=text))
    assert admin.get("/jobstatus/escape").status_code == 404
    assert not fakes[0].prompts_received() and not fakes[1].prompts_received()

"""Per-instance node catalogues and the model-load cost of the fake ComfyUI (tests/fake_comfy).

Two GPUs of one gateway may differ: a custom node pack on one only, other checkpoints, a
model switch that costs seconds. No timing is asserted (shared, noisy machines): loads are
counted, answers compared.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from tests import workflows
from tests.fake_comfy import DEFAULT_CHECKPOINTS, Catalogue, FakeComfy
from tests.fake_comfy.__main__ import build, parse_args
from tests.fake_comfy.files import FileStore
from tests.helpers import wait_for

RECORDINGS = Path(__file__).resolve().parent / "recordings"
SCALE = 0.02  # node sleeps (and model loads) run 50x faster
TIMEOUT = 15.0
CUSTOM = "CylCustomInvert"
# ComfyUI's node_info() order; output_tooltips only where the class declares them
INFO_ORDER = ["input", "input_order", "output", "output_is_list", "output_name", "name",
              "display_name", "description", "python_module", "category", "output_node"]


def recorded(name: str):
    """A recording file's JSON."""
    return json.loads((RECORDINGS / name).read_text(encoding="utf-8"))


def get(fake: FakeComfy, path: str):
    """GET a path; its JSON."""
    response = requests.get(fake.url + path, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()


def submit(fake: FakeComfy, workflow: dict) -> requests.Response:
    """POST /prompt with a client_id (a gateway always sends one)."""
    return requests.post(fake.url + "/prompt", json={"prompt": workflow, "client_id": "cyl"},
                         timeout=TIMEOUT)


def run(fake: FakeComfy, workflow: dict) -> dict:
    """Submit, wait for the history entry, and return it (asserting success)."""
    answer = submit(fake, workflow)
    assert answer.status_code == 200, answer.text
    prompt_id = answer.json()["prompt_id"]
    entry = wait_for(lambda: get(fake, f"/history/{prompt_id}").get(prompt_id), TIMEOUT,
                     message=f"history of {prompt_id}")
    assert entry["status"]["status_str"] == "success", entry["status"]
    return entry


def cached_nodes(entry: dict) -> list[str]:
    """The nodes a run took from the output cache (its execution_cached message)."""
    return next(data["nodes"] for kind, data in entry["status"]["messages"]
                if kind == "execution_cached")


def unknown_class_refusal(class_type: str) -> dict:
    """What ComfyUI answered for an unknown class (scenario-validation-error.json), with
    `class_type` put in place of the recorded NoSuchNode; the recording had it at node "2",
    as workflows.custom_invert() and workflows.slow() have theirs."""
    for event in recorded("scenario-validation-error.json"):
        text = json.dumps(event.get("response"))
        if event.get("channel") == "http" and "NoSuchNode" in text:
            return json.loads(text.replace("NoSuchNode", class_type))
    raise AssertionError("the recording has no unknown-class refusal")


@pytest.fixture
def pair():
    """Two instances: 0 has the custom pack, 1 lacks CylSleepProgress."""
    with (FakeComfy(time_scale=SCALE, custom_nodes=(CUSTOM,)) as first,
          FakeComfy(time_scale=SCALE, without_nodes=("CylSleepProgress",)) as second):
        yield first, second


# -- catalogues -----------------------------------------------------------------------------
def test_two_instances_answer_object_info_by_their_own_catalogue(pair):
    first, second = pair
    full = [get(fake, "/object_info") for fake in pair]
    assert CUSTOM in full[0] and CUSTOM not in full[1]
    assert "CylSleepProgress" in full[0] and "CylSleepProgress" not in full[1]
    assert set(full[0]) - set(full[1]) == {CUSTOM, "CylSleepProgress"}
    assert get(first, f"/object_info/{CUSTOM}") == {CUSTOM: full[0][CUSTOM]}
    assert get(second, f"/api/object_info/{CUSTOM}") == {}
    assert get(second, "/object_info/CylSleepProgress") == {}
    assert get(second, "/object_info/ImageInvert") == get(first, "/object_info/ImageInvert")


def test_custom_node_workflow_runs_where_installed_and_is_refused_elsewhere(pair):
    first, second = pair
    entry = run(first, workflows.custom_invert())
    image = entry["outputs"]["3"]["images"][0]
    assert image["filename"].startswith("cyl_custom_")
    assert first.output_bytes(image["filename"])

    refused = submit(second, workflows.custom_invert())
    assert refused.status_code == 400
    assert refused.json() == unknown_class_refusal(CUSTOM)
    assert second.prompts_received() == []
    assert get(second, "/queue") == {"queue_running": [], "queue_pending": []}


def test_a_hidden_default_class_is_refused_like_an_unknown_one(pair):
    first, second = pair
    run(first, workflows.slow(seconds=0.1, steps=1))
    refused = submit(second, workflows.slow(seconds=0.1, steps=1))
    assert refused.status_code == 400
    assert refused.json() == unknown_class_refusal("CylSleepProgress")


def test_the_custom_pack_is_not_served_by_default():
    catalogue = Catalogue()
    assert CUSTOM not in catalogue.nodes and "CylSleepProgress" in catalogue.nodes
    assert catalogue.checkpoints == DEFAULT_CHECKPOINTS and catalogue.load_seconds == 0.0
    assert catalogue.object_info_node(CUSTOM) == {}


def test_unknown_class_names_are_refused_at_construction():
    with pytest.raises(ValueError, match="NoSuchPack"):
        FakeComfy(custom_nodes=("NoSuchPack",))
    with pytest.raises(ValueError, match="Nope"):
        Catalogue(without_nodes=("Nope",))
    with pytest.raises(ValueError):
        Catalogue(load_seconds=-1)


def test_served_classes_match_the_recorded_object_info():
    """Every class real ComfyUI also has looks as it did there (the loader: but its files;
    LoadImage: given the recording machine's input files, and one in a subfolder)."""
    real = recorded("object-info.json")
    files = FileStore()
    for name in real["LoadImage"]["input"]["required"]["image"][0] + ["notes.txt"]:
        files.put("input", "", name, b"")
    files.put("input", "cylindria", "unlisted.png", b"")
    info = Catalogue(checkpoints=(), files=files).object_info()
    shared = [name for name in info if name in real]
    assert {"EmptyImage", "ImageInvert", "SaveImage", "CheckpointLoaderSimple", "LoadImage",
            "LoadImageMask"} <= set(shared)
    for name in shared:
        mine = {k: v for k, v in info[name].items() if k != "load_seconds"}
        assert mine == real[name], name
        assert list(mine)[:len(INFO_ORDER)] == INFO_ORDER, name


# -- the checkpoint loader ------------------------------------------------------------------
def test_loader_info_carries_the_instance_checkpoints_and_load_seconds():
    with FakeComfy(time_scale=SCALE, checkpoints=["a.safetensors"], load_seconds=1.5) as fake:
        loader = get(fake, "/object_info")["CheckpointLoaderSimple"]
    real = recorded("object-info.json")["CheckpointLoaderSimple"]
    assert loader["input"]["required"]["ckpt_name"] == [
        ["a.safetensors"], real["input"]["required"]["ckpt_name"][1]]
    assert loader["output"] == ["MODEL", "CLIP", "VAE"]
    assert list(loader)[-2:] == ["output_tooltips", "load_seconds"]  # after ComfyUI's keys
    assert loader["load_seconds"] == 1.5


def test_a_checkpoint_the_instance_lacks_is_value_not_in_list():
    with FakeComfy(time_scale=SCALE, checkpoints=["only.safetensors"]) as fake:
        refused = submit(fake, workflows.checkpoint("sd15.safetensors"))
        run(fake, workflows.checkpoint("only.safetensors"))
    assert refused.status_code == 400
    body = refused.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert body["node_errors"]["1"] == {
        "errors": [{"type": "value_not_in_list", "message": "Value not in list",
                    "details": "ckpt_name: 'sd15.safetensors' not in ['only.safetensors']",
                    "extra_info": {"input_name": "ckpt_name",
                                   "input_config": [["only.safetensors"], {
                                       "tooltip": "The name of the checkpoint (model) to load."}],
                                   "received_value": "sd15.safetensors"}}],
        "dependent_outputs": ["3"], "class_type": "CheckpointLoaderSimple"}


def test_a_long_checkpoint_list_is_not_echoed_back():
    names = [f"m{n}.safetensors" for n in range(21)]
    with FakeComfy(time_scale=SCALE, checkpoints=names) as fake:
        error = submit(fake, workflows.checkpoint("x.safetensors")).json()
    reason = error["node_errors"]["1"]["errors"][0]
    assert reason["details"] == "ckpt_name: 'x.safetensors' not in (list of length 21)"
    assert reason["extra_info"]["input_config"] is None


@pytest.fixture
def loader():
    """An instance whose checkpoint switch costs a (scaled) second."""
    with FakeComfy(time_scale=SCALE, load_seconds=1.0) as fake:
        yield fake


def test_alternating_checkpoints_loads_at_every_switch(loader):
    assert (loader.model_loads, loader.last_model) == (0, None)
    sd15, sdxl = DEFAULT_CHECKPOINTS
    for count, ckpt in enumerate((sd15, sdxl, sd15, sdxl), start=1):
        entry = run(loader, workflows.checkpoint(ckpt, seconds=0.1, steps=1))
        assert (loader.model_loads, loader.last_model) == (count, ckpt)
        assert "1" not in cached_nodes(entry)  # the classic cache kept only the last prompt


def test_the_same_checkpoint_again_loads_once(loader):
    first = run(loader, workflows.checkpoint("sd15.safetensors", seconds=0.1))
    again = run(loader, workflows.checkpoint("sd15.safetensors", seconds=0.2))  # loader cached
    run(loader, workflows.core())  # evicts the loader's cached outputs
    evicted = run(loader, workflows.checkpoint("sd15.safetensors", seconds=0.3))
    assert cached_nodes(first) == [] and cached_nodes(again) == ["1"]
    assert cached_nodes(evicted) == []  # the loader ran, but its model was still loaded
    assert (loader.model_loads, loader.last_model) == (1, "sd15.safetensors")
    assert first["outputs"]["3"]["images"][0]["filename"].startswith("cyl_ckpt_")


def test_free_unloads_the_model(loader):
    run(loader, workflows.checkpoint("sd15.safetensors", seconds=0.1))
    requests.post(loader.url + "/free", json={"unload_models": True}, timeout=TIMEOUT)
    wait_for(lambda: loader.last_model is None, TIMEOUT, message="the unload")
    entry = run(loader, workflows.checkpoint("sd15.safetensors", seconds=0.2))
    assert cached_nodes(entry) == ["1"]  # the cached loader's model: CylSample loads it again
    requests.post(loader.url + "/free", json={"free_memory": True}, timeout=TIMEOUT)
    entry = run(loader, workflows.checkpoint("sd15.safetensors", seconds=0.2))
    assert cached_nodes(entry) == []  # free_memory also emptied the cache
    assert (loader.model_loads, loader.last_model) == (3, "sd15.safetensors")


def test_restart_forgets_the_loaded_model_but_keeps_counting(loader):
    run(loader, workflows.checkpoint("sdxl.safetensors", seconds=0.1))
    loader.restart()
    assert (loader.model_loads, loader.last_model) == (1, None)
    run(loader, workflows.checkpoint("sdxl.safetensors", seconds=0.1))
    assert (loader.model_loads, loader.last_model) == (2, "sdxl.safetensors")


def test_without_load_seconds_a_switch_still_counts():
    with FakeComfy(time_scale=SCALE) as fake:
        run(fake, workflows.checkpoint("sd15.safetensors", seconds=0.1))
        run(fake, workflows.checkpoint("sdxl.safetensors", seconds=0.1))
        assert fake.model_loads == 2


# -- workflow builders and the command line -------------------------------------------------
def test_workflow_builders():
    first = workflows.checkpoint("a.safetensors", seconds=0.5, steps=3, prefix="p")
    assert first == {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
        "2": {"class_type": "CylSample",
              "inputs": {"model": ["1", 0], "seconds": 0.5, "steps": 3}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "p"}}}
    first["2"]["inputs"]["steps"] = 99
    assert workflows.checkpoint("a.safetensors")["2"]["inputs"] == {
        "model": ["1", 0], "seconds": 0.2, "steps": 2}
    assert workflows.checkpoint("a.safetensors")["3"]["inputs"]["filename_prefix"] == "cyl_ckpt"
    custom = workflows.custom_invert()
    assert [custom[n]["class_type"] for n in ("1", "2", "3")] == ["EmptyImage", CUSTOM,
                                                                  "SaveImage"]
    assert custom["3"]["inputs"]["filename_prefix"] == "cyl_custom"
    assert workflows.core()["2"]["class_type"] == "ImageInvert"  # core() is untouched


def test_command_line_catalogue_flags():
    args = parse_args(["--count", "3", "--custom-node", f"1:{CUSTOM}", "--custom-node",
                       f"2:{CUSTOM}", "--without-node", "0:CylSleepProgress",
                       "--without-node", "0:CylFail", "--load-seconds", "2.5"])
    assert args.custom_node == [(1, CUSTOM), (2, CUSTOM)]
    assert args.without_node == [(0, "CylSleepProgress"), (0, "CylFail")]
    catalogues = [build(args, index, None).catalogue for index in range(3)]
    assert [c.custom_nodes for c in catalogues] == [(), (CUSTOM,), (CUSTOM,)]
    assert catalogues[0].without_nodes == ("CylSleepProgress", "CylFail")
    assert all(c.load_seconds == 2.5 for c in catalogues)
    assert parse_args([]).load_seconds == 0.0 and parse_args([]).custom_node == []


@pytest.mark.parametrize("argv", [
    ["--custom-node", f"1:{CUSTOM}"],  # one instance: index 1 does not exist
    ["--custom-node", CUSTOM],  # no index
    ["--custom-node", "x:CylFail"],
    ["--without-node", "0:NoSuchNode"],
    ["--load-seconds", "-1"],
])
def test_command_line_refuses_bad_catalogue_flags(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err

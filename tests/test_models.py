"""GET /models and /models/<folder>: the model files the GPUs' ComfyUIs can load, merged per
folder with the GPUs that have each; read when a GPU (re)connects, kept while it is away."""
from __future__ import annotations

import threading

import pytest
import requests

from comfy.comfyui.errors import ComfyBadResponse, ComfyTimeout, ComfyUnreachable
from comfy.comfyui.models import merge, read_models
from cylindria.service.server import Service
from tests.conftest import make_config
from tests.fake_comfy import DEFAULT_CHECKPOINTS, FakeComfy
from tests.helpers import Api, wait_for

GPU0_FILES = {"checkpoints": ["sd15.safetensors", "sdxl/base.safetensors"],
              "loras": ["detail.safetensors"]}
GPU1_FILES = {"checkpoints": ["sd15.safetensors", "flux.safetensors"],
              "ipadapter": ["ip-plus.bin"]}  # a folder a custom node pack registered


@pytest.fixture
def fakes(fakes):
    """The two fake GPUs, each with model files of its own."""
    fakes[0].models, fakes[1].models = GPU0_FILES, GPU1_FILES
    return fakes


def folders(api: Api) -> dict:
    """GET /models's folders."""
    response = api.get("/models")
    assert response.status_code == 200, response.text
    return response.json()["folders"]


def names(api: Api, folder: str) -> dict[str, list[int]]:
    """One folder's files as name -> GPUs ({} while no GPU has the folder)."""
    return {model["name"]: model["gpus"] for model in folders(api).get(folder, [])}


def wait_names(api: Api, folder: str, wanted: dict, message: str) -> None:
    """Until the folder lists exactly these files with these GPUs."""
    wait_for(lambda: names(api, folder) == wanted, message=message)


BOTH_READ = {"flux.safetensors": [1], "sd15.safetensors": [0, 1], "sdxl/base.safetensors": [0]}


# -- the endpoints, against a real server ------------------------------------------------

def test_each_file_is_listed_with_the_gpus_that_have_it(api):
    wait_names(api, "checkpoints", BOTH_READ, "both GPUs' files")
    found = folders(api)
    assert found["checkpoints"] == [{"name": "flux.safetensors", "gpus": [1]},
                                    {"name": "sd15.safetensors", "gpus": [0, 1]},
                                    {"name": "sdxl/base.safetensors", "gpus": [0]}]
    assert found["loras"] == [{"name": "detail.safetensors", "gpus": [0]}]
    assert found["ipadapter"] == [{"name": "ip-plus.bin", "gpus": [1]}]
    assert found["vae"] == []  # a folder both have, with nothing in it
    assert "custom_nodes" not in found  # node packs' files, not models
    one = api.get("/models/checkpoints")
    assert one.status_code == 200
    assert one.json() == {"folder": "checkpoints", "models": found["checkpoints"]}
    assert api.get("/Models/ipadapter/").json() == {"folder": "ipadapter",
                                                   "models": found["ipadapter"]}
    assert api.get("/models/vae").json() == {"folder": "vae", "models": []}


def test_an_unknown_folder_is_404_folder_not_found(api):
    wait_names(api, "checkpoints", BOTH_READ, "both GPUs' files")
    for folder in ("nope", "Checkpoints", "custom_nodes", "..%2e"):
        response = api.get(f"/models/{folder}")
        assert response.status_code == 404, folder
        assert response.json()["code"] == "folder_not_found", folder
        assert response.json()["details"] == {"folder": folder.replace("%2e", ".")}


def test_the_lists_are_kept_until_a_reconnect_reads_them_again(api, service, fakes):
    wait_names(api, "checkpoints", BOTH_READ, "both GPUs' files")
    fakes[1].models = {"checkpoints": ["sd15.safetensors", "new.safetensors"]}
    # Nothing reads them again while the websocket stays up: the answer is the cached one.
    assert names(api, "checkpoints") == BOTH_READ
    assert names(api, "ipadapter") == {"ip-plus.bin": [1]}
    fakes[1].drop_websockets()
    wait_names(api, "checkpoints", {"new.safetensors": [1], "sd15.safetensors": [0, 1],
                                    "sdxl/base.safetensors": [0]}, "GPU 1's files read again")
    assert "ipadapter" not in folders(api)
    assert api.get("/models/ipadapter").status_code == 404


def test_a_restarted_comfyui_is_read_again(api, fakes):
    wait_names(api, "checkpoints", BOTH_READ, "both GPUs' files")
    fakes[0].models = {"loras": ["style.safetensors"]}  # checkpoints back to its defaults
    fakes[0].restart()
    wait_names(api, "loras", {"style.safetensors": [0]}, "GPU 0's files read again")
    assert names(api, "checkpoints") == {"flux.safetensors": [1], "sd15.safetensors": [0, 1],
                                         "sdxl.safetensors": [0]}


def test_an_unreachable_gpu_keeps_its_last_known_files(api, service, fakes):
    wait_names(api, "checkpoints", BOTH_READ, "both GPUs' files")
    fakes[1].stop()
    wait_for(lambda: service.context.gpus[1].reachable is False, message="GPU 1 unreachable")
    assert names(api, "checkpoints") == BOTH_READ
    assert api.get("/models/ipadapter").json()["models"] == [{"name": "ip-plus.bin",
                                                             "gpus": [1]}]


def test_a_hung_gpu_does_not_hold_the_answer(api, fakes):
    wait_names(api, "checkpoints", BOTH_READ, "both GPUs' files")
    seen = len(fakes[1].requests())
    fakes[1].http_delay = 60.0
    try:
        wait_for(lambda: len(fakes[1].requests()) > seen, message="a call stuck in GPU 1")
        # Well under the 60 s GPU 1 takes: a request never asks ComfyUI.
        assert names(api, "checkpoints") == BOTH_READ
    finally:
        fakes[1].http_delay = 0.0


def test_a_gpu_never_reached_contributes_nothing_until_it_connects(fakes, tmp_path):
    fakes[1].stop()
    with Service(make_config(fakes, tmp_path)) as service:
        api = Api(service.url)
        wait_names(api, "checkpoints", {"sd15.safetensors": [0], "sdxl/base.safetensors": [0]},
                   "GPU 0's files")
        assert "ipadapter" not in folders(api)
        assert api.get("/models/ipadapter").json()["code"] == "folder_not_found"
        fakes[1].restart()
        wait_names(api, "ipadapter", {"ip-plus.bin": [1]}, "GPU 1's files once it is up")


def test_the_model_lists_need_the_key(service):
    anonymous = Api(service.url, key=None)
    for path in ("/models", "/models/checkpoints", "/models/nope"):
        response = anonymous.get(path)
        assert response.status_code == 401, path
        assert response.json()["code"] == "unauthorized"


# -- the merge ---------------------------------------------------------------------------

def test_merge_of_nothing_is_nothing():
    assert merge({}) == {}
    assert merge({0: {}, 3: {}}) == {}


def test_merge_lists_each_name_once_with_sorted_gpus():
    merged = merge({2: {"checkpoints": ["b", "a"]}, 0: {"checkpoints": ["a"], "vae": []},
                    1: {"checkpoints": ["c", "a", "a"], "loras": ["x"]}})
    assert merged == {"checkpoints": [{"name": "a", "gpus": [0, 1, 2]},
                                      {"name": "b", "gpus": [2]},
                                      {"name": "c", "gpus": [1]}],
                      "loras": [{"name": "x", "gpus": [1]}],
                      "vae": []}


def test_merge_keeps_names_as_comfyui_spells_them():
    merged = merge({0: {"loras": ["sdxl\\style.safetensors", "sdxl/style.safetensors",
                                  "Style.safetensors"]}})
    assert [model["name"] for model in merged["loras"]] == [
        "Style.safetensors", "sdxl/style.safetensors", "sdxl\\style.safetensors"]


# -- reading one ComfyUI's lists (a Dummy in place of the client) --------------------------

class DummyComfy:
    """Answers GET /models and /models/<folder> from `files`; `fail` maps a folder to the
    exception its listing raises ("/models": the folder list's)."""

    gpu_id = 7

    def __init__(self, files: dict, fail: dict | None = None):
        self.files, self.fail, self.asked = files, fail or {}, []

    def model_folders(self, timeout=None):
        if "/models" in self.fail:
            raise self.fail["/models"]
        return list(self.files)

    def model_files(self, folder, timeout=None):
        self.asked.append(folder)
        if folder in self.fail:
            raise self.fail[folder]
        return self.files[folder]


def test_read_skips_custom_nodes_and_anything_not_relative():
    comfy = DummyComfy({"checkpoints": ["a.safetensors", "/srv/models/b.safetensors",
                                        "C:\\models\\c.safetensors", "\\\\host\\d.ckpt",
                                        "sub\\e.safetensors", ""],
                        "custom_nodes": ["pack/__init__.py"], "vae": []})
    assert read_models(comfy, {}) == {"checkpoints": ("a.safetensors", "sub\\e.safetensors"),
                                      "vae": ()}
    assert "custom_nodes" not in comfy.asked


def test_read_keeps_a_folder_comfyui_answers_badly_and_drops_one_it_forgot():
    previous = {"checkpoints": ("old.safetensors",), "loras": ("l.safetensors",)}
    comfy = DummyComfy({"checkpoints": ["new.safetensors"], "loras": None, "vae": ["v.pt"]},
                       fail={"vae": ComfyBadResponse("answered 500", 7)})
    assert read_models(comfy, previous) == {"checkpoints": ("new.safetensors",)}
    previous = {"vae": ("old-v.pt",)}
    assert read_models(comfy, previous)["vae"] == ("old-v.pt",)


@pytest.mark.parametrize("fail", [{"/models": ComfyUnreachable("refused", 7)},
                                  {"/models": ComfyBadResponse("not a list", 7)},
                                  {"loras": ComfyTimeout("no answer", 7, may_have_run=True)}])
def test_a_comfyui_that_stops_answering_keeps_every_last_known_list(fail):
    previous = {"checkpoints": ("old.safetensors",)}
    comfy = DummyComfy({"checkpoints": ["new.safetensors"], "loras": ["l.pt"], "vae": []}, fail)
    assert read_models(comfy, previous) is previous
    assert "vae" not in comfy.asked  # nothing more is asked once it stopped answering


def test_a_read_stops_at_the_next_folder_once_cylindria_is_stopping():
    previous = {"checkpoints": ("old.safetensors",)}
    stop = threading.Event()

    class StoppedMidway(DummyComfy):
        def model_files(self, folder, timeout=None):
            stop.set()  # Cylindria begins to stop while the first folder is read
            return super().model_files(folder, timeout)

    comfy = StoppedMidway({"checkpoints": ["new.safetensors"], "loras": ["l.pt"], "vae": []})
    assert read_models(comfy, previous, stop) is previous
    assert comfy.asked == ["checkpoints"]


# -- the fake's GET /models/{folder} ---------------------------------------------------------

@pytest.fixture
def lone_fake():
    with FakeComfy(port=0, checkpoints=("one.safetensors", "two.ckpt")) as fake:
        yield fake


def get(fake: FakeComfy, path: str) -> requests.Response:
    return requests.get(fake.url + path, timeout=10)


def test_fake_lists_its_checkpoints_and_empty_folders_by_default(lone_fake):
    assert get(lone_fake, "/models/checkpoints").json() == ["one.safetensors", "two.ckpt"]
    assert get(lone_fake, "/api/models/checkpoints").json() == ["one.safetensors", "two.ckpt"]
    assert all(get(lone_fake, f"/models/{folder}").json() == []
               for folder in get(lone_fake, "/models").json() if folder != "checkpoints")
    assert FakeComfy().catalogue.checkpoints == DEFAULT_CHECKPOINTS


def test_fake_answers_an_unknown_folder_with_a_bare_404(lone_fake):
    response = get(lone_fake, "/models/nope")
    assert response.status_code == 404 and response.content == b""


def test_fake_models_knob_replaces_and_adds_folders(lone_fake):
    lone_fake.models = {"checkpoints": ["z.safetensors", "a\\b.safetensors"], "mine": ["m.pt"]}
    assert get(lone_fake, "/models/checkpoints").json() == ["a\\b.safetensors", "z.safetensors"]
    assert get(lone_fake, "/models/mine").json() == ["m.pt"]
    assert "mine" in get(lone_fake, "/models").json()
    lone_fake.models = {}
    assert get(lone_fake, "/models/checkpoints").json() == ["one.safetensors", "two.ckpt"]
    assert get(lone_fake, "/models/mine").status_code == 404

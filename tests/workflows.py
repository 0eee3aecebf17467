"""API-format workflows for tests, derived from the recorded tests/recordings/workflow-*.json.

Every helper returns a fresh dict, so a test may change it freely.
"""

from __future__ import annotations

import json
from pathlib import Path

RECORDINGS = Path(__file__).resolve().parent / "recordings"


def load(name: str) -> dict:
    """A recorded workflow by name: core, slow, fail or invalid."""
    return json.loads((RECORDINGS / f"workflow-{name}.json").read_text(encoding="utf-8"))


def core(prefix: str = "cyl") -> dict:
    """EmptyImage 512x512 -> ImageInvert -> SaveImage(prefix): core nodes only."""
    workflow = load("core")
    workflow["3"]["inputs"]["filename_prefix"] = prefix
    return workflow


def slow(seconds: float = 4.0, steps: int = 8, prefix: str = "cyl_slow",
         send_preview: bool = False) -> dict:
    """EmptyImage -> CylSleepProgress(seconds, steps) -> SaveImage(prefix)."""
    workflow = load("slow")
    workflow["2"]["inputs"].update(seconds=seconds, steps=steps)
    if send_preview:
        workflow["2"]["inputs"]["send_preview"] = True
    workflow["3"]["inputs"]["filename_prefix"] = prefix
    return workflow


def fail(message: str = "CylFail: intentional failure") -> dict:
    """EmptyImage -> CylFail(message) -> SaveImage: fails at run time (POST /prompt is 200)."""
    workflow = load("fail")
    workflow["2"]["inputs"]["message"] = message
    return workflow


def invalid() -> dict:
    """ImageInvert without its required `image`: POST /prompt answers 400."""
    return load("invalid")


def chain(n_nodes: int = 60) -> dict:
    """A valid workflow of n nodes: EmptyImage -> ImageInvert x (n-2) -> SaveImage."""
    if n_nodes < 2:
        raise ValueError("a chain needs at least EmptyImage and SaveImage")
    base = core(prefix="cyl_chain")
    workflow = {"1": base["1"]}
    for index in range(2, n_nodes):
        workflow[str(index)] = {"class_type": "ImageInvert",
                                "inputs": {"image": [str(index - 1), 0]}}
    workflow[str(n_nodes)] = {"class_type": "SaveImage", "inputs": {
        "images": [str(n_nodes - 1), 0], "filename_prefix": "cyl_chain"}}
    return workflow


def checkpoint(ckpt: str, seconds: float = 0.2, steps: int = 2,
               prefix: str = "cyl_ckpt") -> dict:
    """CheckpointLoaderSimple(ckpt) -> CylSample(seconds, steps) -> SaveImage(prefix): a
    checkpoint switch on an instance costs its load_seconds (tests/fake_comfy)."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CylSample",
              "inputs": {"model": ["1", 0], "seconds": seconds, "steps": steps}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def custom_invert(prefix: str = "cyl_custom") -> dict:
    """EmptyImage -> CylCustomInvert -> SaveImage(prefix): runs only on an instance with the
    custom pack (FakeComfy(custom_nodes=("CylCustomInvert",))), others answer 400."""
    workflow = core(prefix=prefix)
    workflow["2"]["class_type"] = "CylCustomInvert"
    return workflow


def load_image(name: str, prefix: str = "cyl_load") -> dict:
    """LoadImage(name) -> ImageInvert -> SaveImage(prefix): `name` is a file of the input
    folder, with its subfolder ("cylindria/<file>"), as POST /upload/image placed it."""
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }

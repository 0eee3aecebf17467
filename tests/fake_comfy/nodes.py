"""The fake's node library: core image nodes plus the recordings' test-only custom nodes."""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any, Awaitable, Callable, Protocol

from .jpeg import grey_jpeg

UI = dict[str, Any]
NodeResult = tuple[tuple[Any, ...], UI | None]  # (outputs by slot, ui for `executed`/history)


class NodeContext(Protocol):
    """What a running node may ask of the executor."""

    async def sleep(self, seconds: float) -> None:
        """Sleep, scaled by the instance's time_scale."""

    async def progress(self, value: int, total: int, preview: bytes | None = None) -> None:
        """Report progress (the interrupt point, like comfy.utils.ProgressBar)."""

    def save_images(self, image: "FakeImage", prefix: str, kind: str) -> list[dict]:
        """Write one PNG per batch item and return their references."""


@dataclass(frozen=True)
class FakeImage:
    """Stands in for an IMAGE tensor: only what the fake nodes need."""

    width: int
    height: int
    batch: int
    color: int
    inverted: bool = False

    def __str__(self) -> str:
        """Like a tensor's repr in execution_error's current_inputs."""
        shape = f"[{self.batch}, {self.height}, {self.width}, 3]"
        return f"tensor(shape={shape}, inverted={self.inverted})"


@dataclass(frozen=True)
class NodeDef:
    """One node class: its INPUT_TYPES, outputs and behaviour."""

    name: str
    run: Callable[..., Awaitable[NodeResult]]
    required: dict[str, list] = field(default_factory=dict)
    optional: dict[str, list] = field(default_factory=dict)
    hidden: dict[str, str] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    output_node: bool = False
    display_name: str = ""
    description: str = ""
    category: str = "image"
    python_module: str = "nodes"

    def inputs(self) -> list[tuple[str, list, bool]]:
        """(name, config, required?) for every declared input."""
        return [(n, c, True) for n, c in self.required.items()] + \
               [(n, c, False) for n, c in self.optional.items()]

    def info(self) -> dict:
        """This node's entry in GET /object_info (same key order as ComfyUI)."""
        sections = {"required": self.required, "optional": self.optional, "hidden": self.hidden}
        declared = {k: v for k, v in sections.items() if v}
        return {
            "input": declared,
            "input_order": {k: list(v) for k, v in declared.items()},
            "output": list(self.outputs),
            "output_is_list": [False] * len(self.outputs),
            "output_name": list(self.outputs),
            "name": self.name,
            "display_name": self.display_name or self.name,
            "description": self.description,
            "python_module": self.python_module,
            "category": self.category,
            "output_node": self.output_node,
        }


async def _empty_image(ctx: NodeContext, width: int, height: int, batch_size: int = 1,
                       color: int = 0) -> NodeResult:
    """EmptyImage: a batch of flat images."""
    return (FakeImage(width, height, batch_size, color),), None


async def _invert(ctx: NodeContext, image: FakeImage) -> NodeResult:
    """ImageInvert."""
    return (replace(image, inverted=not image.inverted),), None


async def _save(ctx: NodeContext, images: FakeImage,
                filename_prefix: str = "ComfyUI") -> NodeResult:
    """SaveImage: `<prefix>_<NNNNN>_.png` in the output directory."""
    return (), {"images": ctx.save_images(images, filename_prefix, "output")}


async def _preview(ctx: NodeContext, images: FakeImage) -> NodeResult:
    """PreviewImage: like SaveImage, into temp with a random `ComfyUI_temp_xxxxx` prefix."""
    suffix = "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
    return (), {"images": ctx.save_images(images, f"ComfyUI_temp_{suffix}", "temp")}


async def _sleep_progress(ctx: NodeContext, image: FakeImage, seconds: float, steps: int,
                          send_preview: bool = False) -> NodeResult:
    """CylSleepProgress: sleep seconds/steps, then report a step (with a JPEG preview)."""
    for step in range(1, steps + 1):
        await ctx.sleep(seconds / steps)
        preview = grey_jpeg(step * 255 // steps) if send_preview else None
        await ctx.progress(step, steps, preview)
    return (image,), None


async def _fail(ctx: NodeContext, image: FakeImage, message: str) -> NodeResult:
    """CylFail: always raises, like the recordings' custom node."""
    raise RuntimeError(message)


_INT_SIZE = {"default": 512, "min": 1, "max": 16384, "step": 1}
_TEST = {"category": "cyl_test", "python_module": "custom_nodes.cyl_test_nodes"}
_HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
_SAVE_DESCRIPTION = "Saves the input images to your ComfyUI output directory."
_PREFIX_TOOLTIP = ("The prefix for the file to save. This may include formatting information "
                   "such as %date:yyyy-MM-dd% or %Empty Latent Image.width% to include values "
                   "from nodes.")

LIBRARY: dict[str, NodeDef] = {d.name: d for d in (
    NodeDef("EmptyImage", _empty_image, required={
        "width": ["INT", dict(_INT_SIZE)], "height": ["INT", dict(_INT_SIZE)],
        "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}],
        "color": ["INT", {"default": 0, "min": 0, "max": 16777215, "step": 1, "display": "color"}]},
        outputs=("IMAGE",)),
    NodeDef("ImageInvert", _invert, required={"image": ["IMAGE"]}, outputs=("IMAGE",),
            display_name="Invert Image"),
    NodeDef("SaveImage", _save, required={
        "images": ["IMAGE", {"tooltip": "The images to save."}],
        "filename_prefix": ["STRING", {"default": "ComfyUI", "tooltip": _PREFIX_TOOLTIP}]},
        hidden=dict(_HIDDEN), output_node=True, display_name="Save Image",
        description=_SAVE_DESCRIPTION),
    NodeDef("PreviewImage", _preview, required={"images": ["IMAGE"]}, hidden=dict(_HIDDEN),
            output_node=True, display_name="Preview Image", description=_SAVE_DESCRIPTION),
    NodeDef("CylSleepProgress", _sleep_progress, required={
        "image": ["IMAGE"],
        "seconds": ["FLOAT", {"default": 4.0, "min": 0.0, "max": 3600.0, "step": 0.1}],
        "steps": ["INT", {"default": 8, "min": 1, "max": 10000}]},
        optional={"send_preview": ["BOOLEAN", {"default": False}]},
        outputs=("IMAGE",), display_name="Cyl Sleep Progress (test)", **_TEST),
    NodeDef("CylFail", _fail, required={
        "image": ["IMAGE"], "message": ["STRING", {"default": "CylFail: intentional failure"}]},
        outputs=("IMAGE",), display_name="Cyl Fail (test)", **_TEST),
)}


def object_info() -> dict:
    """GET /object_info: every node's info."""
    return {name: definition.info() for name, definition in LIBRARY.items()}

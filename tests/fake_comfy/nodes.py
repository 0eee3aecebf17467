"""The fake's node library: core image nodes, a checkpoint loader, LoadImage, LoadImageMask
and MaskToImage, the recordings' test-only custom nodes, and a custom pack (CylCustomInvert)
that an instance serves only when asked to.

LIBRARY is every class the fake knows; what one instance serves is its Catalogue
(catalogue.py): the `default` classes, plus its custom packs, minus the ones it hides.
"""

from __future__ import annotations

import hashlib
import inspect
import random
import struct
from dataclasses import dataclass, field, replace
from functools import lru_cache, partial
from typing import Any, Awaitable, Callable, Protocol

from .files import FileStore
from .jpeg import grey_jpeg
from .png import Picture, PngError, PngUnsupported, decode_png, encode_png, interleave

UI = dict[str, Any]
NodeResult = tuple[tuple[Any, ...], UI | None]  # (outputs by slot, ui for `executed`/history)


class NodeContext(Protocol):
    """What a running node may ask of the executor."""

    async def sleep(self, seconds: float) -> None:
        """Sleep, scaled by the instance's time_scale."""

    async def progress(self, value: int, total: int, preview: bytes | None = None) -> None:
        """Report progress (the interrupt point, like comfy.utils.ProgressBar)."""

    async def load_model(self, ckpt_name: str) -> None:
        """Load a checkpoint, paying the instance's load_seconds unless it is loaded already."""

    def save_images(self, image: "FakeImage", prefix: str, kind: str) -> list[dict]:
        """Write one PNG per batch item and return their references."""


def _f32(value: float) -> float:
    """The value rounded to float32, the dtype of ComfyUI's image tensors."""
    return struct.unpack("f", struct.pack("f", value))[0]


@lru_cache(maxsize=None)
def saved_values(inversions: int = 0) -> bytes:
    """What SaveImage writes for each 8-bit value LoadImage read, after `inversions`
    ImageInverts, as a bytes.translate table. ComfyUI computes in float32 (v / 255.0, then
    1.0 - x per invert) and SaveImage truncates 255.0 * x to uint8 (np.clip().astype()): a
    value read and saved comes back unchanged, an inverted one is 255 - v or, for 159 of the
    256 values (65, 67, ...), 254 - v."""
    table = bytearray(256)
    for value in range(256):
        x = _f32(value / 255.0)
        for _ in range(inversions):
            x = _f32(1.0 - x)
        table[value] = min(255, max(0, int(_f32(255.0 * x))))
    return bytes(table)


@dataclass(frozen=True)
class FakeImage:
    """Stands in for an IMAGE tensor: only what the fake nodes need. An image LoadImage read
    carries its pixels (and SaveImage writes them); EmptyImage's are never drawn."""

    width: int
    height: int
    batch: int
    color: int
    inversions: int = 0  # ImageInverts applied so far
    pixels: bytes | None = None  # RGB rows as LoadImage read them (batch 1)

    @property
    def inverted(self) -> bool:
        """Whether an odd number of ImageInverts ran on it."""
        return self.inversions % 2 == 1

    def png(self) -> bytes | None:
        """The PNG SaveImage writes for it (its pixels through ComfyUI's float32 steps), or
        None for an image without pixels (the file store draws a stand-in)."""
        if self.pixels is None:
            return None
        return encode_png(self.width, self.height,
                          self.pixels.translate(saved_values(self.inversions)))

    def __str__(self) -> str:
        """Like a tensor's repr in execution_error's current_inputs."""
        shape = f"[{self.batch}, {self.height}, {self.width}, 3]"
        return f"tensor(shape={shape}, inverted={self.inverted})"


@dataclass(frozen=True)
class FakeMask:
    """Stands in for a MASK tensor: 8-bit values as read, and how often 1.0 - x was applied
    to them (LoadImage's mask is 1 - alpha), so MaskToImage -> SaveImage shows them as
    ComfyUI would."""

    width: int
    height: int
    batch: int = 1
    values: bytes | None = None
    inversions: int = 0

    def __str__(self) -> str:
        """Like a tensor's repr in execution_error's current_inputs."""
        return f"tensor(shape=[{self.batch}, {self.height}, {self.width}])"


class UnidentifiedImageError(OSError):
    """Pillow's error for a file it cannot read (execution_error names it as Pillow does)."""

    __module__ = "PIL"


@dataclass(frozen=True)
class FakeModel:
    """Stands in for what CheckpointLoaderSimple returns (MODEL, CLIP and VAE alike)."""

    kind: str
    ckpt_name: str

    def __str__(self) -> str:
        """Like a model object's repr in execution_error's current_inputs."""
        return f"<{self.kind} of {self.ckpt_name}>"


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
    output_tooltips: tuple[str, ...] = ()
    default: bool = True  # False: a custom pack only some instances install (custom_nodes=)
    extra: dict[str, Any] = field(default_factory=dict)  # fake-only info keys, after ComfyUI's
    # Fills the instance's own values in (e.g. its checkpoint files) when a Catalogue adopts
    # the class, as ComfyUI's INPUT_TYPES() reads its folders on every call.
    adapt: Callable[["NodeDef", Any], "NodeDef"] | None = None
    # ComfyUI's classmethods, for the classes that have them (LoadImage's read the instance's
    # input folder, bound by `adapt`): VALIDATE_INPUTS(inputs it names) -> True or why not;
    # IS_CHANGED(inputs) -> part of the cache key; INPUT_TYPES() -> `required` as it is now.
    validate: Callable[..., Any] | None = None
    is_changed: Callable[..., Any] | None = None
    input_types: Callable[[], dict[str, list]] | None = None

    def current_required(self) -> dict[str, list]:
        """The required inputs as INPUT_TYPES() gives them now."""
        return self.input_types() if self.input_types is not None else self.required

    def validated_inputs(self) -> list[str]:
        """The inputs VALIDATE_INPUTS takes: ComfyUI skips its own checks of their values."""
        if self.validate is None:
            return []
        return [name for name, p in inspect.signature(self.validate).parameters.items()
                if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

    def input_names(self) -> set[str]:
        """The names of the declared inputs (without reading any folder)."""
        return {*self.required, *self.optional}

    def inputs(self) -> list[tuple[str, list, bool]]:
        """(name, config, required?) for every declared input."""
        return [(n, c, True) for n, c in self.current_required().items()] + \
               [(n, c, False) for n, c in self.optional.items()]

    def info(self) -> dict:
        """This node's entry in GET /object_info (same key order as ComfyUI)."""
        sections = {"required": self.current_required(), "optional": self.optional,
                    "hidden": self.hidden}
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
            **({"output_tooltips": list(self.output_tooltips)} if self.output_tooltips else {}),
            **self.extra,
        }


async def _empty_image(ctx: NodeContext, width: int, height: int, batch_size: int = 1,
                       color: int = 0) -> NodeResult:
    """EmptyImage: a batch of flat images."""
    return (FakeImage(width, height, batch_size, color),), None


async def _invert(ctx: NodeContext, image: FakeImage) -> NodeResult:
    """ImageInvert."""
    return (replace(image, inversions=image.inversions + 1),), None


def _picture(files: FileStore, image: str) -> Picture:
    """The decoded input file; the errors Pillow (or open()) would raise."""
    data = files.read(image)
    try:
        return decode_png(data)
    except PngUnsupported:
        raise  # a real PNG the fake cannot read: say so, under the fake's own name
    except PngError as ex:
        raise UnidentifiedImageError(f"cannot identify image file '{image}'") from ex


async def _load_image(files: FileStore, ctx: NodeContext, image: str) -> NodeResult:
    """LoadImage: the file's RGB pixels, and as MASK 1 - alpha (64x64 zeros without alpha)."""
    picture = _picture(files, image)
    loaded = FakeImage(picture.width, picture.height, 1, 0, pixels=picture.rgb)
    if picture.alpha is None:
        return (loaded, FakeMask(64, 64, values=bytes(64 * 64))), None
    return (loaded, FakeMask(picture.width, picture.height, values=picture.alpha,
                             inversions=1)), None


async def _load_image_mask(files: FileStore, ctx: NodeContext, image: str,
                           channel: str) -> NodeResult:
    """LoadImageMask: one channel of the file converted to RGBA (opaque without alpha) as a
    MASK; the alpha channel as 1 - alpha."""
    picture = _picture(files, image)
    size = picture.width * picture.height
    if channel[0].upper() == "A":
        values, inversions = picture.alpha or b"\xff" * size, 1
    else:
        values, inversions = picture.rgb["RGB".index(channel[0].upper())::3], 0
    return (FakeMask(picture.width, picture.height, 1, values, inversions),), None


async def _mask_to_image(ctx: NodeContext, mask: FakeMask) -> NodeResult:
    """MaskToImage: the mask as a grey image."""
    pixels = None if mask.values is None else interleave([mask.values] * 3)
    return (FakeImage(mask.width, mask.height, mask.batch, 0, mask.inversions, pixels),), None


def _validate_image(files: FileStore, image: str) -> bool | str:
    """LoadImage.VALIDATE_INPUTS: the file (or directory) must exist; `[output]` and friends
    pick another directory, a subfolder is part of the name."""
    return True if files.exists(image) else f"Invalid image file: {image}"


_validate_image.__qualname__ = "LoadImage.VALIDATE_INPUTS"  # as its TypeErrors name it


def _image_digest(files: FileStore, image: str, **_: Any) -> str:
    """LoadImage.IS_CHANGED: the sha256 of the file, so new bytes under a name run again."""
    return hashlib.sha256(files.read(image)).hexdigest()


def _image_inputs(files: FileStore) -> dict[str, list]:
    """LoadImage.INPUT_TYPES(): the images at the top of the input folder."""
    return {"image": [files.images("input"), {"image_upload": True}]}


def _mask_inputs(files: FileStore) -> dict[str, list]:
    """LoadImageMask.INPUT_TYPES(): LoadImage's, and the channel."""
    return {**_image_inputs(files), "channel": [list(_CHANNELS)]}


async def _save(ctx: NodeContext, images: FakeImage,
                filename_prefix: str = "ComfyUI") -> NodeResult:
    """SaveImage: `<prefix>_<NNNNN>_.png` in the output directory."""
    return (), {"images": ctx.save_images(images, filename_prefix, "output")}


async def _preview(ctx: NodeContext, images: FakeImage) -> NodeResult:
    """PreviewImage: like SaveImage, into temp with a random `ComfyUI_temp_xxxxx` prefix."""
    suffix = "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
    return (), {"images": ctx.save_images(images, f"ComfyUI_temp_{suffix}", "temp")}


async def _sleep_steps(ctx: NodeContext, seconds: float, steps: int,
                       send_preview: bool = False) -> None:
    """Sleep seconds/steps, then report a step (with a JPEG preview), `steps` times."""
    for step in range(1, steps + 1):
        await ctx.sleep(seconds / steps)
        preview = grey_jpeg(step * 255 // steps) if send_preview else None
        await ctx.progress(step, steps, preview)


async def _sleep_progress(ctx: NodeContext, image: FakeImage, seconds: float, steps: int,
                          send_preview: bool = False) -> NodeResult:
    """CylSleepProgress: the image back after a sleep with progress."""
    await _sleep_steps(ctx, seconds, steps, send_preview)
    return (image,), None


async def _load_checkpoint(ctx: NodeContext, ckpt_name: str) -> NodeResult:
    """CheckpointLoaderSimple: the instance's load cost when the checkpoint is not loaded."""
    await ctx.load_model(ckpt_name)
    return tuple(FakeModel(kind, ckpt_name) for kind in ("MODEL", "CLIP", "VAE")), None


async def _sample(ctx: NodeContext, model: FakeModel, seconds: float, steps: int) -> NodeResult:
    """CylSample: a sampler's sleep with progress, then a small image. Like ComfyUI's samplers
    (load_models_gpu) it loads its model when that is no longer the loaded one: a cached
    loader's model after POST /free unloaded it, or one of two loaders in one prompt."""
    await ctx.load_model(model.ckpt_name)
    await _sleep_steps(ctx, seconds, steps)
    return (FakeImage(SAMPLE_SIZE, SAMPLE_SIZE, 1, 0),), None


async def _fail(ctx: NodeContext, image: FakeImage, message: str) -> NodeResult:
    """CylFail: always raises, like the recordings' custom node."""
    raise RuntimeError(message)


def _sleep_inputs() -> dict[str, list]:
    """`seconds` and `steps` of the sleeping test nodes (fresh, so no two classes share one)."""
    return {"seconds": ["FLOAT", {"default": 4.0, "min": 0.0, "max": 3600.0, "step": 0.1}],
            "steps": ["INT", {"default": 8, "min": 1, "max": 10000}]}


def _with_checkpoints(definition: NodeDef, catalogue: Any) -> NodeDef:
    """The loader as one instance serves it: its checkpoint files as the ckpt_name COMBO,
    and its load cost as the fake-only info key "load_seconds" (clients ignore unknown keys)."""
    return replace(definition, required={"ckpt_name": [list(catalogue.checkpoints),
                                                       dict(_CKPT_TOOLTIP)]},
                   extra={"load_seconds": catalogue.load_seconds})


def _with_input_folder(definition: NodeDef, catalogue: Any) -> NodeDef:
    """LoadImage as one instance serves it: its hooks read that instance's input folder."""
    files = catalogue.files
    return replace(definition, run=partial(definition.run, files),
                   validate=partial(definition.validate, files),
                   is_changed=partial(definition.is_changed, files),
                   input_types=partial(definition.input_types, files))


_CHANNELS = ("alpha", "red", "green", "blue")
_LOADER = {"validate": _validate_image, "is_changed": _image_digest, "adapt": _with_input_folder}
_INT_SIZE = {"default": 512, "min": 1, "max": 16384, "step": 1}
_TEST = {"category": "cyl_test", "python_module": "custom_nodes.cyl_test_nodes"}
_CUSTOM_PACK = {"category": "cyl_custom", "python_module": "custom_nodes.cyl_custom_pack"}
SAMPLE_SIZE = 64  # CylSample's image: small, its pixels are never looked at
_CKPT_TOOLTIP = {"tooltip": "The name of the checkpoint (model) to load."}
_CKPT_DESCRIPTION = ("Loads a diffusion model checkpoint, diffusion models are used to "
                     "denoise latents.")
_CKPT_OUTPUT_TOOLTIPS = (
    "The model used for denoising latents.", "The CLIP model used for encoding text prompts.",
    "The VAE model used for encoding and decoding images to and from latent space.")
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
    NodeDef("LoadImage", _load_image, required={"image": [[], {"image_upload": True}]},
            outputs=("IMAGE", "MASK"), display_name="Load Image", input_types=_image_inputs,
            **_LOADER),
    NodeDef("LoadImageMask", _load_image_mask, required={
        "image": [[], {"image_upload": True}], "channel": [list(_CHANNELS)]},
        outputs=("MASK",), display_name="Load Image (as Mask)", category="mask",
        input_types=_mask_inputs, **_LOADER),
    NodeDef("MaskToImage", _mask_to_image, required={"mask": ["MASK"]}, outputs=("IMAGE",),
            display_name="Convert Mask to Image", category="mask",
            python_module="comfy_extras.nodes_mask"),
    NodeDef("CylSleepProgress", _sleep_progress,
        required={"image": ["IMAGE"], **_sleep_inputs()},
        optional={"send_preview": ["BOOLEAN", {"default": False}]},
        outputs=("IMAGE",), display_name="Cyl Sleep Progress (test)", **_TEST),
    NodeDef("CylFail", _fail, required={  # the default as object-info.json has it
        "image": ["IMAGE"], "message": ["STRING", {"default": "boom"}]},
        outputs=("IMAGE",), display_name="Cyl Fail (test)", **_TEST),
    NodeDef("CheckpointLoaderSimple", _load_checkpoint,
            required={"ckpt_name": [[], dict(_CKPT_TOOLTIP)]}, outputs=("MODEL", "CLIP", "VAE"),
            display_name="Load Checkpoint", description=_CKPT_DESCRIPTION, category="loaders",
            output_tooltips=_CKPT_OUTPUT_TOOLTIPS, adapt=_with_checkpoints),
    NodeDef("CylSample", _sample, required={"model": ["MODEL"], **_sleep_inputs()},
            outputs=("IMAGE",), display_name="Cyl Sample (test)", **_TEST),
    NodeDef("CylCustomInvert", _invert, required={"image": ["IMAGE"]}, outputs=("IMAGE",),
            display_name="Cyl Custom Invert (custom pack)", default=False, **_CUSTOM_PACK),
)}



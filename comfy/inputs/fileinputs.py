"""Which workflow inputs load a file, and which files a client may name in them.

A combo input that ComfyUI's /object_info marks `image_upload`, `audio_upload` or
`video_upload` (LoadImage's `image`) loads the file it names: from ComfyUI's input folder
(`x.png`), or, annotated, from its output or temp folder (`x.png [output]`,
`sub/x.png [temp]`). ComfyUI joins the name onto that folder and checks only that the file
exists, so a name is all it takes to read another client's file, or one outside the folders.
Hence: no string input may be an absolute path or hold a `..` segment (for every client), and
an own client's file inputs may name only its own assets (`core/ASSET` references, checked
where they are resolved) or the outputs of its own jobs. Nothing here asks ComfyUI whether a
file exists: a refusal never tells a client which files exist.
"""
from __future__ import annotations

import logging
import re
from typing import Callable, Iterable

logger = logging.getLogger(__name__)

UPLOAD_MARKS = ("image_upload", "audio_upload", "video_upload")
# Before any GPU's /object_info has been read (just after a start) a GpuId=auto job is held
# unchecked against the catalogues: these inputs of ComfyUI's core loaders are file inputs all
# the same, so an own client's LoadImage is never sent unchecked. They stay file inputs once
# catalogues are known (a class's input is a file input if any source says so).
CORE_FILE_INPUTS = {name: frozenset({"image", "audio", "video", "file"})
                    for name in ("LoadImage", "LoadImageMask", "LoadImageOutput", "LoadAudio",
                                 "LoadVideo")}
ASSET_TYPE = "core/ASSET"
OUTPUT_SUFFIX = " [output]"
# `/x`, `\x`, `\\server\x`, `C:\x` and a drive-relative `C:x` (never `A: cat`, a prompt's text).
_ABSOLUTE = re.compile(r"[/\\]|[A-Za-z]:(?!\s|$)")
_SEPARATORS = re.compile(r"[/\\]")
_ANNOTATION = re.compile(r" \[[a-z]+\]$")


class FileNotAllowed(Exception):
    """A workflow input names a file the client may not read."""

    def __init__(self, node_id: str, name: str, reason: str):
        super().__init__(f"node {node_id} input {name}: {reason}")
        self.node_id, self.input, self.reason = node_id, name, reason


def file_inputs_of(object_info: dict) -> dict[str, frozenset]:
    """class -> the names of its inputs that load a file, from GET /object_info's marks."""
    found = {}
    for class_name, info in object_info.items():
        inputs = info.get("input") if isinstance(info, dict) else None
        if not isinstance(inputs, dict):
            continue
        names = frozenset(name for section in ("required", "optional")
                          if isinstance(inputs.get(section), dict)
                          for name, spec in inputs[section].items() if _marked(spec))
        if names:
            found[str(class_name)] = names
    return found


def _marked(spec) -> bool:
    """Whether an input's spec (`[choices or "COMBO", {options}]`) marks it as an upload."""
    return isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) \
        and any(spec[1].get(mark) is True for mark in UPLOAD_MARKS)


def merged(sources: Iterable[dict]) -> dict[str, frozenset]:
    """The file inputs of ComfyUI's core loaders and of every source (a catalogue's map)."""
    result = dict(CORE_FILE_INPUTS)
    for source in sources:
        for class_name, names in source.items():
            result[class_name] = result.get(class_name, frozenset()) | names
    return result


def unsafe_path(value: str) -> bool:
    """An absolute path, or one with a `..` segment (also `...` or `.. `, which Windows
    reads as `..`), annotation left aside."""
    if _ABSOLUTE.match(value):
        return True
    if ".." not in value:
        return False
    return any(_only_dots(segment) for segment in _SEPARATORS.split(_ANNOTATION.sub("", value)))


def _only_dots(segment: str) -> bool:
    """A path segment of dots and spaces, two dots at least."""
    return segment.count(".") >= 2 and not segment.strip(". ")


def output_file(value: str) -> tuple[str, str] | None:
    """(subfolder, filename) of an annotated output name (`sub/x.png [output]`), else None."""
    if not value.endswith(OUTPUT_SUFFIX):
        return None
    subfolder, _, filename = value[:-len(OUTPUT_SUFFIX)].rpartition("/")
    return (subfolder, filename) if filename else None


def check_files(prompt: dict, file_inputs: dict[str, frozenset],
                own_output: Callable[[str, str], bool] | None) -> None:
    """FileNotAllowed for the first input naming a path outside ComfyUI's folders, or (with
    `own_output`, for an own client) a file input naming anything but an asset reference or
    an output `own_output(subfolder, filename)` says is the client's."""
    for node_id, node in prompt.items():
        files = file_inputs.get(node["class_type"], ())
        for name, value in node["inputs"].items():
            if _holds_unsafe_path(value):
                raise FileNotAllowed(node_id, name, "an absolute path or a '..' segment is "
                                     "not allowed in a workflow input")
            if own_output is not None and name in files and not _own_file(value, own_output):
                raise FileNotAllowed(node_id, name, "a file input may name only your own "
                                     "assets (core/ASSET) or your own jobs' outputs "
                                     "('name.png [output]')")


def _holds_unsafe_path(value) -> bool:
    """A string input (or a string in a list input) that is an unsafe path."""
    if value.__class__ is str:
        return unsafe_path(value)
    return value.__class__ is list and any(v.__class__ is str and unsafe_path(v) for v in value)


def _own_file(value, own_output: Callable[[str, str], bool]) -> bool:
    """An asset reference (whose owner is checked where it is resolved), or an own output.
    A link from another node is not: the name it carries is not known before the run."""
    if value.__class__ is dict:
        return value.get("__type") == ASSET_TYPE
    named = output_file(value) if value.__class__ is str else None
    return named is not None and own_output(*named)


def owns_output(jobs: Iterable, client: str, gpu_id: int | None, subfolder: str,
                filename: str) -> bool:
    """Whether `client` may read this output file on GPU `gpu_id` (None: whichever GPU the
    job goes to): on every GPU concerned where a job recorded it, the newest such job is the
    client's, and there is one. ComfyUI names outputs per GPU (two GPUs both write
    `ComfyUI_00001_.png`), and a name freed on disk may be written again by another job.
    `jobs`: every job, newest first."""
    newest: dict[int, str | None] = {}
    for job in jobs:
        if job.gpu_id is None or job.gpu_id in newest \
                or (gpu_id is not None and job.gpu_id != gpu_id):
            continue
        if any(output["filename"] == filename and output["subfolder"] == subfolder
               and output["type"] == "output" for output in job.outputs):
            newest[job.gpu_id] = job.submitted_by
    return bool(newest) and all(by == client for by in newest.values())

"""The model files each GPU's ComfyUI can load (its GET /models), and all GPUs' merged.

A GPU's lists are read after its node classes (comfy.comfyui.catalogue.refresh_catalogue), on a
thread of their own, when its websocket (re)connects: a restarted ComfyUI may have other files. They
are kept on the GPU's Catalogue, so a GPU that cannot be reached keeps its last known lists
and one never read has none. Requests only merge what is known; they never wait for ComfyUI.
Names are ComfyUI's own, relative to their folder ("sdxl/base.safetensors", with
backslashes on Windows hosts): never a path on the host's disk.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from typing import Mapping, Protocol, Sequence

from comfy.comfyui.errors import ComfyBadResponse, ComfyError
from comfy.comfyui.gpu import Gpu

logger = logging.getLogger(__name__)

# Listed by ComfyUI's /models, but it holds the node packs' own files, not models.
SKIPPED_FOLDERS = frozenset({"custom_nodes"})
READ_TIMEOUT = 5.0  # seconds for each call: a folder listing is a directory walk at most
DEADLINE = 15.0  # seconds for a whole read (on its own thread: nothing waits for it)
ABSOLUTE = re.compile(r"^([/\\]|[A-Za-z]:)")

ModelLists = Mapping[str, Sequence[str]]  # folder -> file names, as one ComfyUI gives them


class ModelSource(Protocol):
    """What reading the lists needs of a ComfyUI (comfy.comfyui.client.ComfyClient)."""

    gpu_id: int

    def model_folders(self, timeout: float | None = None) -> list[str]: ...

    def model_files(self, folder: str, timeout: float | None = None) -> list[str] | None: ...


def read_models(client: ModelSource, previous: ModelLists,
                stop: threading.Event | None = None) -> ModelLists:
    """This ComfyUI's folders and their files. If it stops answering (or is slower than
    DEADLINE) the whole read is dropped for `previous`; a folder it answers badly keeps
    its previous list, and one it no longer knows is left out. `stop` set: the read ends
    at the next folder, `previous` kept (Cylindria is stopping)."""
    deadline = time.monotonic() + DEADLINE
    lists = {}
    try:
        for folder in client.model_folders(timeout=READ_TIMEOUT):
            if stop is not None and stop.is_set():
                return previous
            if folder in SKIPPED_FOLDERS:
                continue
            if time.monotonic() > deadline:
                raise ComfyError(f"reading the folders took over {DEADLINE:.0f} s")
            files = _read_folder(client, folder, previous)
            if files is not None:
                lists[folder] = files
    except ComfyError as exc:
        logger.warning("GPU %d: could not read its model files (%s); keeping the last known",
                       client.gpu_id, exc)
        return previous
    return lists


def _read_folder(client: ModelSource, folder: str,
                 previous: ModelLists) -> tuple[str, ...] | None:
    """One folder's relative names; its previous list when ComfyUI answers it badly."""
    try:
        files = client.model_files(folder, timeout=READ_TIMEOUT)
    except ComfyBadResponse as exc:
        logger.warning("GPU %d: could not read model folder %r (%s)", client.gpu_id, folder, exc)
        files = previous.get(folder)
    if files is None:
        return None
    return tuple(name for name in files if name and not ABSOLUTE.match(name))


def merge(per_gpu: Mapping[int, ModelLists]) -> dict[str, list[dict]]:
    """{folder: [{"name", "gpus"}, ...]}: every folder any GPU has (empty ones too), its
    files sorted by name, each with the sorted indexes of the GPUs that have it."""
    found: dict[str, dict[str, list[int]]] = {}
    for index in sorted(per_gpu):
        for folder, names in per_gpu[index].items():
            holders = found.setdefault(folder, {})
            for name in names:
                gpus = holders.setdefault(name, [])
                if not gpus or gpus[-1] != index:
                    gpus.append(index)
    return {folder: [{"name": name, "gpus": gpus} for name, gpus in sorted(holders.items())]
            for folder, holders in sorted(found.items())}


class ModelCatalogue:
    """The merged view the web layer asks: only what the GPUs' Catalogues already hold."""

    def __init__(self, gpus: list[Gpu]):
        self.gpus = gpus

    def known(self) -> dict[int, ModelLists]:
        """Each GPU's last known lists, by GPU index (a GPU never read is absent)."""
        found = {}
        for gpu in self.gpus:
            catalogue = gpu.catalogue  # once: a reconnect may replace it meanwhile
            if catalogue is not None:
                found[gpu.index] = catalogue.models
        return found

    def folders(self) -> dict[str, list[dict]]:
        """Every folder with its files and the GPUs that have each."""
        return merge(self.known())

    def folder(self, name: str) -> list[dict] | None:
        """One folder's files with their GPUs, or None when no GPU has that folder."""
        return merge({index: {name: lists[name]} for index, lists in self.known().items()
                      if name in lists}).get(name)

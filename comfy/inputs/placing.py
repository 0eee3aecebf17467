"""Assets in workflows: `core/ASSET` references found, checked, and placed for a GPU.

A workflow input may be `{"__type": "core/ASSET", "info": {"id": "<asset id>"}}` (or
`"info": {"hash": "blake3:<hex>"}`). The job keeps the workflow as the client sent it (a
retry with the same references is the same workflow); only the prompt sent to a ComfyUI has
each reference replaced by the file name ComfyUI expects, after that file was uploaded to
that ComfyUI's input folder (subfolder `cylindria`, named by the hash).
"""
from __future__ import annotations

import logging

from comfy.inputs.assets import Asset, AssetStore

logger = logging.getLogger(__name__)

ASSET_TYPE = "core/ASSET"
SUBFOLDER = "cylindria"


class AssetNotFound(Exception):
    """A workflow refers to an asset Cylindria does not hold."""

    def __init__(self, node_id: str, name: str, info):
        super().__init__(f"node {node_id} input {name}: no asset {info}")
        self.node_id, self.input, self.info = node_id, name, info


def references(prompt: dict) -> list[tuple[str, str, dict]]:
    """(node id, input name, info) of every asset reference in a prompt."""
    found = []
    for node_id, node in prompt.items():
        for name, value in node["inputs"].items():
            if value.__class__ is dict and value.get("__type") == ASSET_TYPE:
                found.append((node_id, name, value.get("info")))
    return found


def resolve(prompt: dict, assets: AssetStore,
            owner: str | None = None) -> dict[tuple[str, str], Asset]:
    """(node id, input) -> the asset each reference names, among `owner`'s assets (None:
    any); AssetNotFound for the first unknown one (a reference must name an id or a hash),
    and for another own key's, which is answered the same."""
    resolved = {}
    for node_id, name, info in references(prompt):
        asset = None
        if isinstance(info, dict) and isinstance(info.get("id"), str):
            asset = assets.get(info["id"], owner)
        elif isinstance(info, dict) and isinstance(info.get("hash"), str):
            asset = assets.by_hash(info["hash"], owner)
        if asset is None:
            raise AssetNotFound(node_id, name, info)
        resolved[(node_id, name)] = asset
    return resolved


def comfy_path(asset: Asset) -> str:
    """The value a LoadImage-style input takes for this asset in ComfyUI."""
    return f"{SUBFOLDER}/{asset.comfy_name}"


def with_files(prompt: dict, resolved: dict[tuple[str, str], Asset]) -> dict:
    """The prompt with each reference replaced by its ComfyUI file name (nodes copied only
    where they change: the stored workflow is never modified)."""
    if not resolved:
        return prompt
    placed = dict(prompt)
    for (node_id, name), asset in resolved.items():
        node = placed[node_id]
        if node is prompt[node_id]:
            node = placed[node_id] = {**node, "inputs": dict(node["inputs"])}
        node["inputs"][name] = comfy_path(asset)
    return placed


def place(gpu, assets: AssetStore, needed) -> None:
    """Upload to this GPU's ComfyUI every one of these assets it does not have yet (as far
    as Cylindria knows: `gpu.placed` is forgotten when its websocket drops, and when it
    refuses a prompt over a missing file), each from this node's file (fetched from the
    database first where another node uploaded it)."""
    for asset in {asset.hash: asset for asset in needed}.values():
        if asset.comfy_name in gpu.placed:
            continue
        with open(assets.local(asset), "rb") as file:
            gpu.client.upload_image(file, asset.comfy_name, SUBFOLDER, asset.content_type)
        logger.info("asset %s uploaded to GPU %d as %s", asset.id, gpu.index, comfy_path(asset))
        gpu.placed.add(asset.comfy_name)

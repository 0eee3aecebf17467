"""Model endpoints: the model files the GPUs' ComfyUIs can load, per folder, with their GPUs."""
from __future__ import annotations

from flask import Blueprint, jsonify

from cylindria.web.context import ctx
from cylindria.web.errors import ApiError

bp = Blueprint("models", __name__)


@bp.get("/models")
def folders():
    """Every model folder, each file with the GPUs that have it (as last read from ComfyUI)."""
    return jsonify({"folders": ctx().models.folders()})


@bp.get("/models/<folder>")
def folder(folder: str):
    """One folder's files with their GPUs; 404 folder_not_found when no GPU has the folder."""
    models = ctx().models.folder(folder)
    if models is None:
        raise ApiError(404, "folder_not_found", "no GPU's ComfyUI has this model folder",
                       {"folder": folder})
    return jsonify({"folder": folder, "models": models})

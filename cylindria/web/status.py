"""Status endpoints: serverstatus (one GPU or all), health and ready."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from flask import Blueprint, jsonify

from comfy.comfyui.status import gpu_status
from cylindria.web.auth import current_client
from cylindria.web.context import ctx
from cylindria.web.params import gpu_id_param, raw_gpu_param

bp = Blueprint("status", __name__)


@bp.get("/serverstatus")
def serverstatus():
    """Live status of one GPU's ComfyUI, or of all with GpuId=all (asked in parallel)."""
    context = ctx()
    gpu_id = gpu_id_param(len(context.gpus), raw_gpu_param(), word="all")
    client = current_client()
    owner = client.name if client is not None and client.own else None
    if gpu_id is not None:
        return jsonify(gpu_status(context.gpus[gpu_id], context.store, owner))
    # A pool per call: GpuId=all is a monitoring call, and this keeps no thread between calls.
    with ThreadPoolExecutor(max_workers=len(context.gpus), thread_name_prefix="cylindria-ask") as pool:
        answers = list(pool.map(lambda gpu: gpu_status(gpu, context.store, owner), context.gpus))
    return jsonify({"gpus": answers})


@bp.get("/health")
def health():
    """The process is alive (no key needed)."""
    return jsonify({"status": "ok"})


@bp.get("/ready")
def ready():
    """200 when at least one GPU's ComfyUI is reachable (as the tracker last saw it),
    Cylindria's queue has room and its database answers, else 503 (a load balancer then
    sends work elsewhere)."""
    context = ctx()
    gpus = [{"gpu_id": gpu.index, "reachable": gpu.reachable is True,
             "websocket": "connected" if gpu.websocket_connected else "disconnected"}
            for gpu in context.gpus]
    reconciled = context.tracker.reconciled.is_set()
    held, limit = context.store.held(), context.config.max_queued
    database = context.storage is None or context.storage.ping()
    ok = reconciled and any(gpu["reachable"] for gpu in gpus) and held < limit and database
    return jsonify({"ready": ok, "reconciling": not reconciled, "gpus": gpus,
                    "queue": {"held": held, "max_queued": limit, "full": held >= limit},
                    "database": "ok" if database else "unavailable"}), 200 if ok else 503

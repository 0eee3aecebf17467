"""Status endpoints: serverstatus (one GPU or all), health and ready."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from flask import Blueprint, jsonify

from comfy.status import gpu_status
from web.context import ctx
from web.lookup import visible
from web.params import gpu_id_param, raw_gpu_param

bp = Blueprint("status", __name__)



@bp.get("/serverstatus")
def serverstatus():
    """Live status of one GPU's ComfyUI, or of all with GpuId=all (asked in parallel)."""
    context = ctx()
    gpu_id = gpu_id_param(len(context.gpus), raw_gpu_param(), word="all")
    if gpu_id is not None:
        return jsonify(_shown(gpu_status(context.gpus[gpu_id], context.store)))
    # A pool per call: GpuId=all is a monitoring call, and this keeps no thread between calls.
    with ThreadPoolExecutor(max_workers=len(context.gpus), thread_name_prefix="cylindria-ask") as pool:
        answers = list(pool.map(lambda gpu: gpu_status(gpu, context.store), context.gpus))
    return jsonify({"gpus": [_shown(answer) for answer in answers]})


def _shown(answer: dict) -> dict:
    """A GPU's status as this client may see it: a key limited to its own jobs is not told
    the id of another's job running there."""
    running = answer.get("running_job_id")
    job = ctx().store.get(running) if running is not None else None
    if running is not None and (job is None or not visible(job)):
        answer["running_job_id"] = None
    return answer


@bp.get("/health")
def health():
    """The process is alive (no key needed)."""
    return jsonify({"status": "ok"})


@bp.get("/ready")
def ready():
    """200 when at least one GPU's ComfyUI is reachable (as the tracker last saw it) and
    Cylindria's queue has room, else 503 (a load balancer then sends work elsewhere)."""
    context = ctx()
    gpus = [{"gpu_id": gpu.index, "reachable": gpu.reachable is True,
             "websocket": "connected" if gpu.websocket_connected else "disconnected"}
            for gpu in context.gpus]
    reconciled = context.tracker.reconciled.is_set()
    held, limit = context.store.held(), context.config.max_queued
    ok = reconciled and any(gpu["reachable"] for gpu in gpus) and held < limit
    return jsonify({"ready": ok, "reconciling": not reconciled, "gpus": gpus,
                    "queue": {"held": held, "max_queued": limit, "full": held >= limit}}), \
        200 if ok else 503

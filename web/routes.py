"""The contract's endpoints: serverstatus, startjob, jobstatus, health and ready."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from flask import Blueprint, current_app, jsonify, request

from comfy.status import gpu_status
from comfy.submit import JobIdConflict, submit_job
from comfy.workflow import parse_workflow
from web.context import Context
from web.errors import ApiError, error_response
from web.params import gpu_id_param, job_id_param, raw_gpu_param
from web.views import accepted_view, job_view

logger = logging.getLogger(__name__)

bp = Blueprint("api", __name__)


def ctx() -> Context:
    """This app's shared state."""
    return current_app.extensions["cylindria"]


@bp.get("/serverstatus")
def serverstatus():
    """Live status of one GPU's ComfyUI."""
    context = ctx()
    gpu = context.gpus[gpu_id_param(len(context.gpus), raw_gpu_param())]
    return jsonify(gpu_status(gpu, context.store))


@bp.put("/startjob", defaults={"job_id": ""})
@bp.put("/startjob/<path:job_id>")
def startjob(job_id: str):
    """Submit a workflow to a GPU, exactly once per job id."""
    context = ctx()
    job_id = job_id_param(job_id)
    gpu = context.gpus[gpu_id_param(len(context.gpus), raw_gpu_param())]
    body = request.get_data(cache=False)
    if context.config.dev:
        save_dev_copy(context.config.dev_save_dir, job_id, body)
    workflow = parse_workflow(body)
    try:
        job, created = submit_job(context.store, gpu, job_id, workflow)
    except JobIdConflict as exc:
        raise ApiError(409, "job_id_conflict",
                       f"job id {job_id} is already used for a different workflow",
                       {"status": exc.job.status.value, "gpu_id": exc.job.gpu_id}) from None
    return jsonify(accepted_view(job)), 201 if created else 200


@bp.get("/jobstatus", defaults={"job_id": ""})
@bp.get("/jobstatus/<path:job_id>")
def jobstatus(job_id: str):
    """Where a job stands."""
    job = ctx().store.get(job_id_param(job_id))
    if job is None:
        return error_response(404, "job_not_found", "job not found")
    return jsonify(job_view(job))


@bp.get("/health")
def health():
    """The process is alive (no key needed)."""
    return jsonify({"status": "ok"})


def save_dev_copy(folder: Path, job_id: str, body: bytes) -> None:
    """Dev mode: keep the workflow exactly as received (the job id is already validated)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{job_id}.json.tmp"
    temporary.write_bytes(body)
    os.replace(temporary, folder / f"{job_id}.json")

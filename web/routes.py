"""Job endpoints: startjob, jobstatus, cancel, and the job list."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from flask import Blueprint, Response, jsonify, request

from comfy.cancel import JobFinished, cancel_job
from comfy.catalogue import check_workflow, needs_of
from comfy.encoding import to_json
from comfy.held import cancel_held
from comfy.jobs import JobStatus
from comfy.placing import AssetNotFound, references, resolve
from comfy.submit import JobIdConflict, QueueFull, hold_job, submit_job
from comfy.workflow import Workflow, parse_workflow
from web.context import ctx, wait_until_reconciled
from web.errors import ApiError
from web.lookup import held_position, known_job
from web.params import gpu_id_param, job_id_param, list_params, priority_param, raw_gpu_param
from web.streams import wait_param, waited_job
from web.views import accepted_view, job_view

logger = logging.getLogger(__name__)

bp = Blueprint("jobs", __name__)
bp.before_request(wait_until_reconciled)

SETTLE_WAIT = 90.0  # seconds a retry or cancel waits for a submission still under way
QUEUE_FULL_RETRY = 5  # seconds a client is told to wait when Cylindria's queue is full



@bp.put("/startjob", defaults={"job_id": ""})
@bp.put("/startjob/<anypath:job_id>")
def startjob(job_id: str):
    """Submit a workflow to a GPU (or GpuId=auto), exactly once per job id."""
    context = ctx()
    job_id = job_id_param(job_id)
    gpu_id = gpu_id_param(len(context.gpus), raw_gpu_param(), word="auto")
    body = request.get_data(cache=False)
    if context.config.dev:
        save_dev_copy(context.config.dev_save_dir, job_id, body)
    priority = priority_param()
    workflow = parse_workflow(body)
    uses_assets = note_assets(context, job_id, workflow)
    try:
        if gpu_id is None:
            job, created = hold(context, job_id, workflow, priority)
        else:
            job, created = submit_job(context.store, context.gpus, job_id, workflow, gpu_id,
                                      SETTLE_WAIT, priority,
                                      context.assets if uses_assets else None)
    except AssetNotFound as exc:  # deleted while this submission was under way
        raise asset_missing(exc) from None
    except JobIdConflict as exc:
        raise ApiError(409, "job_id_conflict",
                       f"job id {job_id} is already used for a different workflow",
                       {"status": exc.job.status.public, "gpu_id": exc.job.gpu_id}) from None
    return jsonify(accepted_view(job, held_position(job))), 201 if created else 200


def note_assets(context, job_id: str, workflow: Workflow) -> bool:
    """Check the workflow's asset references (400 asset_not_found for one Cylindria does not
    hold: no job) and record that this job needs them; True if it has any. A retry of a
    job that exists is answered with the job even if its assets are gone by now."""
    if not references(workflow.prompt):
        return False
    try:
        resolved = resolve(workflow.prompt, context.assets)
    except AssetNotFound as exc:
        if context.store.get(job_id) is not None:
            return True  # the job's own answer (200, or 409 for another workflow) follows
        raise asset_missing(exc) from None
    context.assets.use(job_id, workflow.fingerprint, resolved.values())
    return True


def asset_missing(exc: AssetNotFound) -> ApiError:
    """400 asset_not_found naming the reference."""
    return ApiError(400, "asset_not_found", f"node {exc.node_id} input {exc.input} refers to an "
                    "asset Cylindria does not hold",
                    {"node_id": exc.node_id, "input": exc.input, "info": exc.info})


def hold(context, job_id: str, workflow: Workflow, priority: int):
    """GpuId=auto: check the workflow against what the reachable GPUs have installed, then
    hold it in Cylindria's queue (201 before any GPU has it)."""
    existing = context.store.get(job_id)
    if existing is None:  # a retry is answered whatever the GPUs look like now
        check_workflow(workflow.prompt, [gpu.catalogue for gpu in context.gpus
                                         if gpu.reachable and gpu.catalogue is not None])
        context.dispatcher.remember(job_id, needs_of(workflow.prompt))
    try:
        return hold_job(context.store, job_id, workflow, priority, context.config.max_queued)
    except QueueFull as exc:
        raise ApiError(429, "queue_full", f"Cylindria's queue is full ({exc.limit} jobs held); "
                       "try again later", {"max_queued": exc.limit},
                       headers={"Retry-After": str(QUEUE_FULL_RETRY)}) from None


@bp.get("/jobstatus", defaults={"job_id": ""})
@bp.get("/jobstatus/<anypath:job_id>")
def jobstatus(job_id: str):
    """Where a job stands (the most frequent call: encoded directly, without jsonify's extras);
    with ?wait=N, once it has ended or after N seconds."""
    job = waited_job(known_job(job_id), wait_param())
    return Response(to_json(job_view(job, held_position(job))), mimetype="application/json")


@bp.delete("/job", defaults={"job_id": ""})
@bp.delete("/job/<anypath:job_id>")
def cancel(job_id: str):
    """Cancel a job: 200 once cancelled, 202 while ComfyUI is interrupting it, 409 if it ended."""
    context = ctx()
    job = known_job(job_id)
    try:
        job, confirmed = _cancel(context, job)
    except JobFinished as exc:
        status = exc.job.status.public
        raise ApiError(409, "job_finished", f"job {job_id} already ended: {status}",
                       {"status": status}) from None
    return jsonify(job_view(job)), 200 if confirmed else 202


def _cancel(context, job):
    """Cancel wherever the job is: held (it never reaches ComfyUI), or in ComfyUI. A job
    being sent is waited for; one the dispatcher sends while this runs is cancelled there."""
    for _ in range(3):
        if job.status == JobStatus.SUBMITTING:
            job = context.store.wait_settled(job.job_id, SETTLE_WAIT) or job
        if job.status.finished:
            raise JobFinished(job)
        if job.status == JobStatus.HELD:
            job = cancel_held(context.store, job)
            if job.status == JobStatus.CANCELLED:
                return job, True
            continue  # sent meanwhile: cancel it in ComfyUI
        return cancel_job(context.store, context.gpus[job.gpu_id], job)
    raise ApiError(503, "comfy_unreachable", "the job moved between Cylindria's queue and a "
                   "GPU while being cancelled; try the cancel again", headers={"Retry-After": "1"})


@bp.get("/jobs")
def jobs():
    """Jobs newest first, filtered by status and GPU, paginated with `before`."""
    context = ctx()
    statuses, gpu, limit, before = list_params(len(context.gpus))
    page, next_before = context.store.page(statuses, gpu, limit, before)
    return jsonify({"jobs": [job_view(job, held_position(job)) for job in page],
                    "next_before": str(next_before) if next_before else None})


def save_dev_copy(folder: Path, job_id: str, body: bytes) -> None:
    """Dev mode: keep the workflow exactly as received (the job id is already validated)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{job_id}.json.tmp"
    temporary.write_bytes(body)
    os.replace(temporary, folder / f"{job_id}.json")

"""Job endpoints: startjob, jobstatus, cancel, and the job list."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from flask import Blueprint, Response, jsonify, request

from comfy.dispatch.cancel import JobFinished, JobGone, cancel_anywhere
from comfy.dispatch.submit import JobIdConflict, submit_job
from comfy.inputs.workflow import parse_workflow, without_secrets
from cylindria.web.context import ctx, wait_until_reconciled
from cylindria.web.errors import ApiError
from cylindria.web.lookup import held_position, known_job, listed_by, submitter, visible, webhook_state
from cylindria.web.params import (gpu_id_param, job_id_param, list_params, pinned_node,
                                  priority_param, raw_gpu_param)
from cylindria.web.pinning import forward_pinned
from cylindria.web.streams import wait_param, waited_job
from cylindria.web.submission import accepting, hold, request_body, with_webhook
from cylindria.web.views import EncodedViews, accepted_view, job_view

logger = logging.getLogger(__name__)

bp = Blueprint("jobs", __name__)
bp.before_request(wait_until_reconciled)

SETTLE_WAIT = 90.0  # seconds a retry or cancel waits for a submission still under way
# Shared by every app in the process: a body is kept with its record, which no other app has.
encoded_views = EncodedViews()


@bp.put("/startjob", defaults={"job_id": ""})
@bp.put("/startjob/<anypath:job_id>")
def startjob(job_id: str):
    """Submit a workflow to a GPU (or GpuId=auto), exactly once per job id; a job pinned to
    another node's GPU (GpuId=<node>:<n>) is submitted by that node."""
    context = ctx()
    job_id = job_id_param(job_id)
    given = raw_gpu_param()
    node, gpu = pinned_node(given, context.config.node)
    if node is not None:
        return forward_pinned(context, job_id, node, gpu)
    return start_job(context, job_id, gpu_id_param(len(context.gpus), gpu, "auto", given))


def start_job(context, job_id: str, gpu_id: int | None):
    """The submission of the request's workflow to this node's GPU `gpu_id` (None: held in
    Cylindria's queue), for the client the request is from: 201, or 200 for a retry."""
    body = request_body()
    if context.config.dev:
        save_dev_copy(context.config.dev_save_dir, job_id, without_secrets(body))
    priority = priority_param()
    workflow = parse_workflow(body)
    workflow = with_webhook(context, workflow, request.args.get("webhook"), workflow.asked_webhook)
    try:
        with accepting(context, job_id, workflow, gpu_id) as uses_assets:
            if gpu_id is None:
                job, created = hold(context, job_id, workflow, priority, None, submitter())
            else:
                job, created = submit_job(context.store, context.gpus, job_id, workflow,
                                          gpu_id, SETTLE_WAIT, priority,
                                          context.assets if uses_assets else None, submitter())
    except JobIdConflict as exc:
        raise _conflict(job_id, exc.job) from None
    if not created and not visible(job):  # another client's job: say no more than taken
        raise _conflict(job_id, job)
    return jsonify(accepted_view(job, held_position(job), webhook_state(job))), \
        201 if created else 200


def _conflict(job_id: str, job) -> ApiError:
    """409 job_id_conflict; where the job stands only for a client that may see it."""
    return ApiError(409, "job_id_conflict",
                    f"job id {job_id} is already used for a different workflow (or webhook)",
                    {"status": job.status.public, "gpu_id": job.gpu_id} if visible(job) else None)


@bp.get("/jobstatus", defaults={"job_id": ""})
@bp.get("/jobstatus/<anypath:job_id>")
def jobstatus(job_id: str):
    """Where a job stands (the most frequent call: encoded directly, without jsonify's extras);
    with ?wait=N, once it has ended or after N seconds."""
    job = waited_job(known_job(job_id, anywhere=True), wait_param())
    return Response(encoded_views.body(job, held_position(job), webhook_state(job)),
                    mimetype="application/json")


@bp.delete("/job", defaults={"job_id": ""})
@bp.delete("/job/<anypath:job_id>")
def cancel(job_id: str):
    """Cancel a job: 200 once cancelled, 202 while ComfyUI (or, for another node's job, that
    node) is cancelling it, 409 if it ended."""
    context = ctx()
    job = known_job(job_id, anywhere=True)
    try:
        job, confirmed = cancel_anywhere(context.store, context.gpus, job, SETTLE_WAIT)
    except JobGone:
        raise ApiError(404, "job_not_found", "job not found") from None
    except JobFinished as exc:
        status = exc.job.status.public
        raise ApiError(409, "job_finished", f"job {job_id} already ended: {status}",
                       {"status": status}) from None
    return jsonify(job_view(job, None, webhook_state(job))), 200 if confirmed else 202


@bp.get("/jobs")
def jobs():
    """Jobs newest first, filtered by status and GPU, paginated with `before`."""
    context = ctx()
    statuses, gpu, limit, before = list_params(len(context.gpus))
    owner = listed_by(request.args.get("submitted_by"))
    page, next_before = context.store.page(statuses, gpu, limit, before, submitted_by=owner)
    return jsonify({"jobs": [job_view(job, held_position(job), webhook_state(job)) for job in page],
                    "next_before": str(next_before) if next_before else None})


def save_dev_copy(folder: Path, job_id: str, body: bytes) -> None:
    """Dev mode: keep the workflow exactly as received (the job id is already validated)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{job_id}.json.tmp"
    temporary.write_bytes(body)
    os.replace(temporary, folder / f"{job_id}.json")

"""Cylindria's jobs, outputs and assets in the shapes of the Comfy API v2 (comfy-sdk's models).

Statuses: held, submitting and queued read `queued`; running reads `running` (`canceling`
once a cancel was asked for); completed `succeeded`; failed `failed`; cancelled `canceled`;
lost reads `failed` with error code `job_lost`: never a success.
"""
from __future__ import annotations

import time

from flask import request

from comfy.inputs.assets import Asset
from comfy.tracking.gone import gpu_at
from comfy.jobs.job import Job, JobStatus
from comfy.comfyui.outputs import content_type, kind
from comfy.comfyui.status import iso_time
from cylindria.fleet.peers import NodeUnreachable
from cylindria.storage import StorageUnavailable
from cylindria.web.context import ctx
from cylindria.web.lookup import held_elsewhere
from cylindria.web.remote import remote_size
from cylindria.web.views import queue_position

PREFIX = "/api/v2"
STATUS = {JobStatus.HELD: "queued", JobStatus.SUBMITTING: "queued", JobStatus.QUEUED: "queued",
          JobStatus.RUNNING: "running", JobStatus.COMPLETED: "succeeded",
          JobStatus.FAILED: "failed", JobStatus.CANCELLED: "canceled", JobStatus.LOST: "failed"}
TERMINAL = frozenset({"succeeded", "failed", "canceled", "expired"})
# Cylindria's error types -> v2 error codes; any other type is an exception a node raised.
ERROR_CODES = {"lost": "job_lost", "comfy_rejected": "invalid_workflow",
               "invalid_workflow": "invalid_workflow", "asset_not_found": "missing_asset",
               "partner_key_lost": "partner_key_lost", "internal": "internal_error",
               "unknown": "execution_failed", "send_failed": "execution_failed"}
OUTPUT_SEPARATOR = "~"  # an output's id: <job id>~<index> (job ids never hold a ~)


def status(job: Job) -> str:
    """The job's v2 status."""
    if job.status is JobStatus.RUNNING and job.cancel_requested:
        return "canceling"
    return STATUS[job.status]


def output_id(job_id: str, index: int) -> str:
    """The asset id of a job's output."""
    return f"{job_id}{OUTPUT_SEPARATOR}{index}"


def parse_output_id(asset_id: str) -> tuple[str, int] | None:
    """(job id, index) of an output's asset id, or None if it is not one."""
    job_id, separator, index = asset_id.rpartition(OUTPUT_SEPARATOR)
    if not separator or not job_id or not index.isdigit() or len(index) > 6:
        return None
    return job_id, int(index)


class Shapes:
    """Builds v2 objects for one request: links are made from the address the client used,
    expiry times from the retention, output sizes asked of ComfyUI once."""

    def __init__(self, host_url: str, retention: float, sizes, gpus, context=None):
        self.base = host_url.rstrip("/") + PREFIX  # absolute: Output.url must be a full URL
        self.retention = retention
        self.sizes = sizes
        self.gpus = gpus
        self.context = context  # the app's (which node this is); None: the request's

    def expires(self, job: Job) -> float:
        """When retention removes the job: from its end (an unfinished job: at least this)."""
        return (job.finished_at or time.time()) + self.retention

    def job(self, job: Job, held_position: int | None) -> dict:
        """GET /jobs/{id}: the whole job (`held_position`: its place in Cylindria's queue)."""
        view = self.summary(job, held_position)
        view.update({
            "expires_at": iso_time(self.expires(job)),
            "progress": progress(job),
            "outputs": [self.output(job, n) for n in range(len(job.outputs))],
            "metrics": metrics(job),
        })
        return view

    def summary(self, job: Job, held_position: int | None) -> dict:
        """A job in a list (no outputs: a lighter shape, as comfy-sdk expects)."""
        link = f"{PREFIX}/jobs/{job.job_id}"  # host-relative: right behind any proxy
        update = max(t for t in (job.submitted_at, job.started_at, job.finished_at) if t)
        return {"id": job.job_id, "status": status(job),
                "created_at": iso_time(job.submitted_at), "started_at": iso_time(job.started_at),
                "completed_at": iso_time(job.finished_at),
                "create_time": iso_time(job.submitted_at), "update_time": iso_time(update),
                "queue_position": queue_position(job, held_position),
                "error": error(job), "metadata": dict(job.labels or {}), "priority": job.priority,
                "gpu_id": job.gpu_id, "attempts": job.attempts,
                "urls": {"self": link, "events": f"{link}/events", "cancel": f"{link}/cancel"}}

    def output(self, job: Job, index: int) -> dict:
        """One output, as the job lists it and as its `output` event carries it."""
        output = job.outputs[index]
        size = self.size(job, index)
        asset_id = output_id(job.job_id, index)
        return {"node_id": str(output["node_id"]), "name": output["filename"],
                "type": kind(output["filename"]), "content_type": content_type(output["filename"]),
                "size_bytes": size or 0, "id": asset_id, "hash": None,
                "url": f"{self.base}/assets/{asset_id}/content",
                "url_expires_at": iso_time(self.expires(job)), "job_id": job.job_id}

    def size(self, job: Job, index: int) -> int | None:
        """Output `index`'s size: asked of this node's ComfyUI, or, for a job another node
        holds, of that node (a file of the same name in this node's ComfyUI is another file);
        None while neither can say."""
        output = job.outputs[index]
        if not held_elsewhere(job, self.context):
            return self.sizes.size(gpu_at(self.gpus, job.gpu_id), job.job_id, output)
        peers = (self.context or ctx()).peers
        return self.sizes.asked(("node", job.node), job.job_id, output,
                                lambda: remote_size(peers, job, index),
                                failures=(NodeUnreachable, StorageUnavailable))

    def output_asset(self, job: Job, index: int) -> dict:
        """An output read as an asset (GET /assets/{id})."""
        output = self.output(job, index)
        return {"id": output["id"], "hash": None, "size_bytes": output["size_bytes"],
                "content_type": output["content_type"], "file_path": output["name"],
                "created_at": iso_time(job.finished_at or job.started_at or job.submitted_at),
                "url": output["url"], "url_expires_at": output["url_expires_at"],
                "expires_at": output["url_expires_at"], "job_id": job.job_id}

    def asset(self, asset: Asset, created: bool | None = None) -> dict:
        """An uploaded asset: kept until no job has needed it for the retention."""
        expires = iso_time(max(asset.used_at, asset.created_at) + self.retention)
        view = {"id": asset.id, "hash": asset.hash, "size_bytes": asset.size_bytes,
                "content_type": asset.content_type, "file_path": asset.name,
                "created_at": iso_time(asset.created_at),
                "url": f"{self.base}/assets/{asset.id}/content", "url_expires_at": expires,
                "expires_at": expires}
        if created is not None:
            view["created_new"] = created
        return view


def shapes_now() -> Shapes:
    """The Shapes of the request being answered."""
    context = ctx()
    return Shapes(request.host_url, context.config.retention, context.output_sizes, context.gpus,
                  context)


def progress(job: Job) -> dict | None:
    """The v2 progress snapshot; None before the job runs."""
    if job.status in (JobStatus.HELD, JobStatus.SUBMITTING, JobStatus.QUEUED):
        return None
    ours = job.progress()
    node = ours["node"] if job.status is JobStatus.RUNNING else None
    step = int(ours["value"]) if node and ours["max"] else None
    steps = int(ours["max"]) if node and ours["max"] else None
    return {"value": round(ours["percent"] / 100, 4), "nodes_done": ours["nodes_done"],
            "nodes_total": ours["nodes_total"], "current_node": node, "current_node_class": None,
            "step": step, "steps": steps,
            "message": f"node {node} {step}/{steps}" if step is not None else None}


def error(job: Job) -> dict | None:
    """The v2 error of a job that failed or was lost."""
    if job.status is JobStatus.LOST and not job.error:
        return {"code": "job_lost", "message": "the job's ComfyUI lost it", "node_id": None,
                "class_type": None, "traceback": None}
    if not job.error or job.status not in (JobStatus.FAILED, JobStatus.LOST):
        return None
    ours = job.error
    kind_of = ours.get("type") or "unknown"
    message = ours.get("message") or "the job failed"
    code = ERROR_CODES.get(kind_of)
    if job.status is JobStatus.LOST:
        code = "job_lost"
    if code is None:  # an exception a node raised: its type leads the message
        code = "node_execution_error"
        if not message.startswith(kind_of):
            message = f"{kind_of}: {message}"
    return {"code": code, "message": message, "node_id": ours.get("node_id"),
            "class_type": ours.get("node_type"), "traceback": None}


def metrics(job: Job) -> dict:
    """queue_ms (submitted to started, or to now) and execution_ms (started to ended)."""
    now = time.time()
    started = job.started_at
    waited_until = started or job.finished_at or now
    return {"queue_ms": int(max(0.0, waited_until - job.submitted_at) * 1000),
            "execution_ms": int(max(0.0, (job.finished_at or now) - started) * 1000)
            if started else None}

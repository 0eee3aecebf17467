"""Job outputs: the list, and each file streamed from ComfyUI's /view."""
from __future__ import annotations

import logging
import re
from urllib.parse import quote

from flask import Blueprint, Response, jsonify

from comfy.jobs import Job, JobStatus
from web.context import ctx, wait_until_reconciled
from web.errors import ApiError
from web.params import job_id_param

logger = logging.getLogger(__name__)

bp = Blueprint("results", __name__)
bp.before_request(wait_until_reconciled)

CHUNK = 64 * 1024



@bp.get("/jobresult", defaults={"job_id": ""})
@bp.get("/jobresult/<job_id>")
def jobresult(job_id: str):
    """The completed job's output files, each with its download path."""
    job = completed_job(job_id)
    outputs = [{"index": n, **output, "url": f"/jobresult/{job.job_id}/{n}"}
               for n, output in enumerate(job.outputs)]
    return jsonify({"job_id": job.job_id, "outputs": outputs})


@bp.get("/jobresult/<job_id>/<index>")
def jobresult_file(job_id: str, index: str):
    """Stream output `index` from ComfyUI without holding it in memory."""
    job = completed_job(job_id)
    if not re.fullmatch(r"[0-9]{1,6}", index) or int(index) >= len(job.outputs):
        raise ApiError(404, "output_not_found", f"job {job_id} has no output {index[:20]}",
                       {"outputs": len(job.outputs)})
    output = job.outputs[int(index)]
    # Only what ComfyUI itself reported for this job reaches /view: never a client's value.
    upstream = ctx().gpus[job.gpu_id].client.view(output["filename"], output["subfolder"],
                                                  output["type"])
    headers = {"Content-Disposition": _attachment(output["filename"])}
    if upstream.headers.get("Content-Length"):
        headers["Content-Length"] = upstream.headers["Content-Length"]
    return Response(_stream(upstream), headers=headers, direct_passthrough=True,
                    mimetype=upstream.headers.get("Content-Type", "application/octet-stream"))


def completed_job(job_id: str) -> Job:
    """The job, if it completed; else the contract's 404 or 409."""
    job = ctx().store.get(job_id_param(job_id))
    if job is None:
        raise ApiError(404, "job_not_found", "job not found")
    if job.status != JobStatus.COMPLETED:
        raise ApiError(409, "job_not_finished", f"job {job_id} has not completed: {job.status.public}",
                       {"status": job.status.public})
    return job


def _stream(upstream):
    """The upstream body in chunks; the connection to ComfyUI is closed however it ends."""
    try:
        yield from upstream.iter_content(CHUNK)
    finally:
        upstream.close()


def _attachment(filename: str) -> str:
    """A Content-Disposition that survives any file name (RFC 6266 with an ASCII fallback)."""
    ascii_name = re.sub(r'[^A-Za-z0-9._ -]', "_", filename) or "output"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}"

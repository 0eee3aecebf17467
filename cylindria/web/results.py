"""Job outputs: the list, and each file streamed from ComfyUI's /view (this node's; a job
another node holds is asked of that node, see cylindria/web/remote.py)."""
from __future__ import annotations

import logging
import re
from urllib.parse import quote

from flask import Blueprint, Response, jsonify, request

from comfy.tracking.gone import gpu_at
from comfy.jobs.job import Job, JobStatus
from cylindria.web import downloads
from cylindria.web.context import ctx, wait_until_reconciled
from cylindria.web.errors import ApiError
from cylindria.web.lookup import held_elsewhere, known_job
from cylindria.web.remote import remote_output

logger = logging.getLogger(__name__)

bp = Blueprint("results", __name__)
bp.before_request(wait_until_reconciled)

CHUNK = 64 * 1024


@bp.get("/jobresult", defaults={"job_id": ""})
@bp.get("/jobresult/<job_id>")
def jobresult(job_id: str):
    """The completed job's output files, each with its download path (a job of any node)."""
    job = completed_job(job_id, anywhere=True)
    outputs = [{"index": n, **output, "url": f"/jobresult/{job.job_id}/{n}"}
               for n, output in enumerate(job.outputs)]
    return jsonify({"job_id": job.job_id, "outputs": outputs})


@bp.get("/jobresult/<job_id>/<index>")
def jobresult_file(job_id: str, index: str):
    """Stream output `index` without holding it in memory (Range supported), from this
    node's ComfyUI or from the node that holds the job."""
    job = completed_job(job_id, anywhere=True)
    return job_output(job, output_index(job, index), request.headers.get("Range"))


def output_index(job: Job, index: str) -> int:
    """The output number a path names, or 404 output_not_found."""
    if not re.fullmatch(r"[0-9]{1,6}", index) or int(index) >= len(job.outputs):
        raise ApiError(404, "output_not_found", f"job {job.job_id} has no output {index[:20]}",
                       {"outputs": len(job.outputs)})
    return int(index)


def job_output(job: Job, index: int, range_header: str | None) -> Response:
    """Output `index` of a completed job as a download: read from this node's ComfyUI, or
    asked of the node that holds the job (503 node_unreachable when it cannot be)."""
    if held_elsewhere(job):
        wanted = parse_range(range_header)
        return remote_output(job, index, range_text(wanted) if wanted else None)
    return local_output(job, index, range_header)


def local_output(job: Job, index: int, range_header: str | None) -> Response:
    """Output `index` of a job this node holds, from its GPU's ComfyUI."""
    gpu = gpu_at(ctx().gpus, job.gpu_id)
    if gpu is None:
        raise ApiError(404, "output_not_found", f"job {job.job_id} ran on GPU {job.gpu_id}, which "
                       "is no longer configured: its outputs cannot be read",
                       {"outputs": len(job.outputs), "gpu_id": job.gpu_id})
    return output_download(gpu, job.outputs[index], range_header)


def output_download(gpu, output: dict, range_header: str | None) -> Response:
    """One output file from its ComfyUI's /view, spooled and sent by waitress's loop (see
    cylindria/web/downloads.py). The client's download slot is taken before ComfyUI is asked."""
    with downloads.claimed() as slot:
        return downloads.send_chunks(slot, *_from_view(gpu, output, parse_range(range_header)))


def _from_view(gpu, output: dict, wanted) -> tuple:
    """(chunks, status, headers, mimetype) of an output read from ComfyUI's /view. A single
    byte range (`Range: bytes=a-b`, `a-`, `-n`) is asked of ComfyUI, which answers 206 for
    its files; an answer of 200 (ComfyUI serving it whole) is cut to the range here. Other
    range forms are ignored, as HTTP allows: the whole file is sent."""
    # Only what ComfyUI itself reported for this job reaches /view: never a client's value;
    # the range is rebuilt from the numbers parsed, never passed through.
    upstream = gpu.client.view(output["filename"], output["subfolder"], output["type"],
                               byte_range=range_text(wanted) if wanted else None)
    headers = {"Content-Disposition": _attachment(output["filename"]), "Accept-Ranges": "bytes"}
    mimetype = upstream.headers.get("Content-Type", "application/octet-stream")
    length = upstream.headers.get("Content-Length", "")
    if upstream.status_code == 416 or (upstream.status_code == 200 and wanted and length.isdigit()
                                       and satisfiable(wanted, int(length)) is None):
        total = length if upstream.status_code == 200 else \
            upstream.headers.get("Content-Range", "*/*").rpartition("/")[2]
        upstream.close()
        raise ApiError(416, "range_not_satisfiable", "the requested range is outside the file",
                       {"size_bytes": int(total) if total.isdigit() else None},
                       headers={"Content-Range": f"bytes */{total}"})
    status, body = upstream.status_code, _stream(upstream)
    if upstream.status_code == 206:
        headers["Content-Range"] = upstream.headers.get("Content-Range", "")
    elif wanted and length.isdigit():  # ComfyUI sent the whole file: cut it here
        first, last = satisfiable(wanted, int(length))
        status, body = 206, _slice(upstream, first, last)
        headers["Content-Range"] = f"bytes {first}-{last}/{length}"
    return body, status, headers, mimetype


def parse_range(header: str | None) -> tuple[int | None, int | None] | None:
    """(first, last) of a single `bytes=` range, either end None when open (`-n` is
    (None, n): the last n bytes); None when there is no usable single range."""
    match = re.fullmatch(r"\s*bytes\s*=\s*([0-9]{0,18})\s*-\s*([0-9]{0,18})\s*", header or "")
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first = int(match.group(1)) if match.group(1) else None
    last = int(match.group(2)) if match.group(2) else None
    if first is not None and last is not None and last < first:
        return None
    return first, last


def range_text(wanted: tuple[int | None, int | None]) -> str:
    """The Range header for a parsed range."""
    first, last = wanted
    return f"bytes={'' if first is None else first}-{'' if last is None else last}"


def satisfiable(wanted: tuple[int | None, int | None], size: int) -> tuple[int, int] | None:
    """The inclusive (first, last) byte offsets a range covers in a file of `size` bytes, or
    None when it covers none of it."""
    first, last = wanted
    if first is None:  # the last `last` bytes
        if not last or size == 0:
            return None
        return max(0, size - last), size - 1
    if first >= size:
        return None
    return first, size - 1 if last is None else min(last, size - 1)


def completed_job(job_id: str, anywhere: bool = False) -> Job:
    """The job, if it completed; else the contract's 404 or 409. `anywhere`: of any node of
    the fleet (see lookup.known_job)."""
    job = known_job(job_id, anywhere)
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


def _slice(upstream, first: int, last: int):
    """The bytes first..last of the upstream body (read through, not held), then closed."""
    skip, left = first, last - first + 1
    try:
        for chunk in upstream.iter_content(CHUNK):
            if skip >= len(chunk):
                skip -= len(chunk)
                continue
            piece = chunk[skip:skip + left]
            skip = 0
            left -= len(piece)
            yield piece
            if left <= 0:
                return
    finally:
        upstream.close()


def _attachment(filename: str) -> str:
    """A Content-Disposition that survives any file name (RFC 6266 with an ASCII fallback)."""
    ascii_name = re.sub(r'[^A-Za-z0-9._ -]', "_", filename) or "output"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}"

"""An output of a job another node holds: asked of that node (cylindria/fleet/peers.py) and
sent as a download of this node, like one read from this node's ComfyUI: the client's slot
taken first, the bytes spooled as they arrive and sent by waitress's loop
(cylindria/web/downloads.py), with the owner's status (200 or 206) and content headers."""
from __future__ import annotations

import logging

from flask import Response

from comfy.comfyui.outputs import ASK_TIMEOUT
from comfy.jobs.job import Job
from cylindria.fleet.peers import NodeUnreachable, Peers, body_chunks
from cylindria.web import downloads
from cylindria.web.context import ctx
from cylindria.web.errors import ApiError

logger = logging.getLogger(__name__)

PASSED_HEADERS = ("Content-Range", "Accept-Ranges", "Content-Disposition")
# Headers of an owner's error answer that belong to the error (its 416's size, its 503's wait).
ERROR_HEADERS = ("Content-Range", "Retry-After")
# An output's first byte: the owner's answer (206, or 416 for an empty file) names the whole
# file's size in its Content-Range, as its ComfyUI told it; no endpoint of its own needed.
FIRST_BYTE = "bytes=0-0"


def remote_output(job: Job, index: int, byte_range: str | None) -> Response:
    """Output `index` of `job`, from the node holding it. `byte_range`: a Range header built
    by Cylindria from the client's (never the client's own text)."""
    with downloads.claimed() as slot:
        upstream = ctx().peers.output(job.node, job.job_id, index, byte_range)
        if upstream.status_code not in (200, 206):
            raise owner_error(job.node, upstream)
        headers = {name: upstream.headers[name] for name in PASSED_HEADERS if name in upstream.headers}
        mimetype = upstream.headers.get("Content-Type", "application/octet-stream")
        return downloads.send_chunks(slot, body_chunks(job.node, upstream), upstream.status_code,
                                     headers, mimetype)


def owner_error(node: str, upstream) -> Exception:
    """The owner's error answer as this node's (416, 404, 409, its ComfyUI's 503 ...: the
    same code and details, in the shape of the surface asked); an answer that is no error of
    Cylindria's, or a refused credential, makes the node unusable: NodeUnreachable."""
    try:
        body = upstream.json()
    except ValueError:
        body = None
    finally:
        upstream.close()
    if upstream.status_code == 401:
        logger.warning("node %s refused this node's fleet credential", node)
        return NodeUnreachable(node, "it refused this node's fleet credential")
    if not isinstance(body, dict) or not isinstance(body.get("code"), str):
        return NodeUnreachable(node, f"it answered {upstream.status_code} without an error")
    headers = {name: upstream.headers[name] for name in ERROR_HEADERS if name in upstream.headers}
    return ApiError(upstream.status_code, body["code"], str(body.get("error", "")),
                    body.get("details"), headers=headers)


def remote_size(peers: Peers, job: Job, index: int) -> int | None:
    """The size in bytes of output `index` of `job`, as the node holding it reads it (waited
    for like a ComfyUI's HEAD /view: at most ASK_TIMEOUT); None when its answer does not say.
    NodeUnreachable (or StorageUnavailable) when that node cannot be asked now."""
    upstream = peers.output(job.node, job.job_id, index, FIRST_BYTE, read_timeout=ASK_TIMEOUT)
    try:
        if upstream.status_code in (206, 416):
            total = upstream.headers.get("Content-Range", "").rpartition("/")[2]
        elif upstream.status_code == 200:  # the whole file, a range ignored: its length
            total = upstream.headers.get("Content-Length", "")
        else:
            total = ""
    finally:
        upstream.close()
    return int(total) if total.isdigit() else None

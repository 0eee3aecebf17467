"""Checks of what a client puts in the path and the query string."""
from __future__ import annotations

import re

from flask import request

from comfy.jobs.job import JobStatus
from cylindria.web.errors import ApiError

JOB_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
GPU_PARAM_NAMES = ("gpuid", "gpu_id")
MAX_PAGE = 1000


def job_id_param(job_id: str) -> str:
    """The job id from the path, or 400 invalid_job_id."""
    if not JOB_ID.fullmatch(job_id or ""):
        raise ApiError(400, "invalid_job_id",
                       "job id must be 1 to 128 characters of A-Z a-z 0-9 . _ -",
                       {"job_id": job_id[:200] if job_id else job_id})
    return job_id


def raw_gpu_param() -> str | None:
    """The GpuId query value (also spelled gpuid or gpu_id), or None; given twice is an error."""
    values = [v for name, v in request.args.items(multi=True) if name.lower() in GPU_PARAM_NAMES]
    if len(values) > 1:
        raise ApiError(400, "invalid_gpu_id", "GpuId is given more than once",
                       {"gpu_id": [v[:50] for v in values[:8]]})
    return values[0] if values else None


def pinned_node(raw: str | None, this_node: str) -> tuple[str | None, str | None]:
    """GpuId=<node>:<n> split: (the other node named, or None for this one; the GPU part).
    `<this node>:<n>` is exactly GpuId=n; a value without ':' is this node's."""
    if raw is None or ":" not in raw:
        return None, raw
    node, _, gpu = raw.rpartition(":")
    if not node or not re.fullmatch(r"[0-9]", gpu):
        raise ApiError(400, "invalid_gpu_id", "GpuId=<node>:<n> is a node's name and one of "
                       "its GPU indexes (auto is never pinned to a node)", {"gpu_id": raw[:50]})
    return (None if node == this_node else node), gpu


def gpu_id_param(gpu_count: int, raw: str | None, word: str | None = None,
                 given: str | None = None) -> int | None:
    """The GPU index (default 0); None when `word` ("auto", "all") is allowed and given.
    `given`: the value as the client wrote it, if `raw` is a part of it (<node>:<n>)."""
    if raw is None:
        return 0
    text = raw
    if word is not None and text.lower() == word:
        return None
    if not re.fullmatch(r"[0-9]", text) or int(text) >= gpu_count:
        also = f", or {word}" if word else ""
        raise ApiError(400, "invalid_gpu_id",
                       f"GpuId must be an integer from 0 to {gpu_count - 1}{also}",
                       {"gpu_id": (given or raw)[:50], "number_of_gpus": gpu_count})
    return int(text)


PRIORITY_RANGE = (-100, 100)


def priority_param() -> int:
    """The `priority` query parameter (default 0): an integer from -100 to 100."""
    values = request.args.getlist("priority")
    if not values:
        return 0
    low, high = PRIORITY_RANGE
    if len(values) > 1 or not re.fullmatch(r"[+-]?[0-9]{1,3}", values[0]) \
            or not low <= int(values[0]) <= high:
        _bad("priority", f"given once, an integer from {low} to {high}")
    return int(values[0])


def list_params(gpu_count: int) -> tuple[set | None, int | None, int, int | None]:
    """/jobs filters: (statuses, gpu, limit, before), or 400 invalid_parameter."""
    for name in ("status", "gpu", "limit", "before", "submitted_by"):
        if len(request.args.getlist(name)) > 1:
            _bad(name, "given once")
    statuses = None
    if request.args.get("status") is not None:
        public = {s.value: s for s in JobStatus if s != JobStatus.HELD}
        names = request.args["status"].split(",")
        if any(name not in public for name in names):
            _bad("status", "one or more of " + ",".join(public))
        statuses = {public[name] for name in names}
        if JobStatus.QUEUED in statuses:
            statuses.add(JobStatus.HELD)  # queued: in a ComfyUI's queue or in Cylindria's
    gpu = _whole("gpu", 0, gpu_count - 1)
    limit = _whole("limit", 1, MAX_PAGE)
    before = _whole("before", 1, 10 ** 19 - 1)
    return statuses, gpu, 100 if limit is None else limit, before


def _whole(name: str, low: int, high: int) -> int | None:
    """An optional whole-number query parameter within [low, high]."""
    text = request.args.get(name)
    if text is None:
        return None
    if not re.fullmatch(r"[0-9]{1,19}", text) or not low <= int(text) <= high:
        _bad(name, f"a whole number from {low} to {high}")
    return int(text)


def _bad(name: str, expected: str):
    """400 invalid_parameter naming the parameter."""
    raise ApiError(400, "invalid_parameter", f"query parameter {name!r} must be {expected}",
                   {"parameter": name})

"""Checks of what a client puts in the path and the query string."""
from __future__ import annotations

import re

from flask import request

from web.errors import ApiError

JOB_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
GPU_PARAM_NAMES = ("gpuid", "gpu_id")


def job_id_param(job_id: str) -> str:
    """The job id from the path, or 400 invalid_job_id."""
    if not JOB_ID.fullmatch(job_id or ""):
        raise ApiError(400, "invalid_job_id",
                       "job id must be 1 to 128 characters of A-Z a-z 0-9 . _ -",
                       {"job_id": job_id[:200] if job_id else job_id})
    return job_id


def raw_gpu_param() -> str | None:
    """The GpuId query value (also spelled gpuid or gpu_id), or None."""
    for name, value in request.args.items(multi=True):
        if name.lower() in GPU_PARAM_NAMES:
            return value
    return None


def gpu_id_param(gpu_count: int, raw: str | None) -> int:
    """The GPU index (default 0), or 400 invalid_gpu_id."""
    if raw is None:
        return 0
    text = raw.strip()
    if not re.fullmatch(r"\d{1,3}", text) or int(text) >= gpu_count:
        raise ApiError(400, "invalid_gpu_id",
                       f"GpuId must be an integer from 0 to {gpu_count - 1}",
                       {"gpu_id": raw[:50], "number_of_gpus": gpu_count})
    return int(text)

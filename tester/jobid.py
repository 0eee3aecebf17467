"""Job ids: generated ones for StartJob, and the contract's rule for valid ones."""

import re
import secrets
from datetime import datetime, timezone

JOB_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")


def new_job_id(now: datetime | None = None) -> str:
    """Return a fresh job id like ``job-20250102-030405-1a2b3c4d`` (UTC time + 32 random bits)."""
    now = now or datetime.now(timezone.utc)
    if now.tzinfo is not None:
        now = now.astimezone(timezone.utc)
    return f"job-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(4)}"


def is_valid_job_id(job_id: str) -> bool:
    """Tell whether ``job_id`` is 1..128 characters of ``[A-Za-z0-9._-]``."""
    return JOB_ID_RE.fullmatch(job_id) is not None

"""What the GpuId and Priority fields mean when a request is sent."""

import re

AUTO = "auto"  # GpuId=auto: Cylindria holds the job in its own queue and picks the GPU itself
PRIORITY_MIN, PRIORITY_MAX = -100, 100
_INTEGER_RE = re.compile(r"[+-]?[0-9]{1,4}")  # ASCII digits only: int() would take "٣" too


def gpu_field(text: str) -> str:
    """The GpuId field as sent (empty is 0, ``AUTO`` is ``auto``); the server judges the rest."""
    text = (text or "").strip()
    if text.lower() == AUTO:
        return AUTO
    return text or "0"


def status_gpu(gpu_id: str) -> str:
    """The GpuId for ServerStatus: an auto job may go to any GPU, so auto asks about all of them."""
    return "all" if gpu_id == AUTO else gpu_id


def parse_priority(text: str) -> int | None:
    """The Priority field: None when empty (not sent), else an integer -100..100; ValueError if not."""
    text = (text or "").strip()
    if not text:
        return None
    if not _INTEGER_RE.fullmatch(text) or not PRIORITY_MIN <= int(text) <= PRIORITY_MAX:
        raise ValueError(f"the priority must be an integer from {PRIORITY_MIN} to {PRIORITY_MAX} "
                         f"(or empty), not {text!r}")
    return int(text)

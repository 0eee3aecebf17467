"""A GPU's live status, as /serverstatus reports it."""
from __future__ import annotations

import functools
import time

from comfy.comfyui.errors import ComfyError, ComfyUnreachable
from comfy.comfyui.gpu import Gpu
from comfy.jobs.store import JobStore

STATUS_TIMEOUT = 2.0  # seconds: a status page must answer even when ComfyUI does not


def gpu_status(gpu: Gpu, store: JobStore, owner: str | None = None) -> dict:
    """Ask the GPU's ComfyUI now (queue live, system stats at most a second old). With
    `owner` (a client that sees only its own jobs), the queue counts and the running job are
    that client's only: another's prompts are none of its business."""
    running_job_id, queue = None, {"running": 0, "pending": 0}
    try:
        snapshot = gpu.client.queue(timeout=STATUS_TIMEOUT)
    except ComfyError as exc:
        gpu.saw_failure(refused=isinstance(exc, ComfyUnreachable) and exc.refused)
        reachable, system = False, None
    else:
        reachable = True
        running = _jobs(gpu, store, snapshot.running, owner)
        running_job_id = running[-1].job_id if running else None
        if owner is None:
            queue = {"running": len(snapshot.running), "pending": len(snapshot.pending)}
        else:
            queue = {"running": len(running),
                     "pending": len(_jobs(gpu, store, snapshot.pending, owner))}
        system = gpu.system_stats()
    return {"gpu_id": gpu.index, "comfy_url": gpu.base_url, "reachable": reachable,
            "status": "ok" if reachable else "unreachable",
            "websocket": "connected" if gpu.websocket_connected else "disconnected",
            "queue": queue, "running_job_id": running_job_id, "system": system,
            "checked_at": iso_time(time.time())}


def _jobs(gpu: Gpu, store: JobStore, items, owner: str | None) -> list:
    """The jobs whose prompts these queue items are (only `owner`'s, if given)."""
    jobs = (store.job_for_prompt(gpu.index, item.prompt_id) for item in items)
    return [job for job in jobs if job is not None and (owner is None or job.submitted_by == owner)]


def iso_time(epoch: float | None) -> str | None:
    """ISO-8601 UTC with milliseconds and a Z."""
    if epoch is None:
        return None
    return f"{_iso_seconds(int(epoch))}.{int(epoch % 1 * 1000):03d}Z"


@functools.lru_cache(maxsize=4096)
def _iso_seconds(seconds: int) -> str:
    """The date and time to the second: formatting it is most of iso_time's cost, and one job's
    three times (and the jobs polled together) fall on few distinct seconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))

"""A job as the contract shows it (/jobstatus, startjob's answer, webhook events): the
views the web layer answers with and the webhooks send."""
from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from comfy.comfyui.status import iso_time
from comfy.jobs.job import Job, JobStatus


def shown_url(url: str) -> str:
    """The URL as views and logs show it: without its query string and user info, where a
    receiver's token would be."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def job_view(job: Job, held_position: int | None = None, webhook: dict | None = None) -> dict:
    """A job as /jobstatus shows it; a held job's place in Cylindria's queue and the state of
    its webhook's deliveries are the caller's to give (the dispatcher keeps the queue's
    order, the webhook outbox the deliveries)."""
    view = {"job_id": job.job_id, "gpu_id": job.gpu_id, "prompt_id": job.prompt_id,
            "status": job.status.public, "queue_position": queue_position(job, held_position),
            "progress": job.progress(),
            "submitted_at": iso_time(job.submitted_at), "started_at": iso_time(job.started_at),
            "finished_at": iso_time(job.finished_at), "error": job.error,
            "outputs": [dict(o) for o in job.outputs],
            "cancel_requested": job.cancel_requested,
            "priority": job.priority, "attempts": job.attempts}
    if job.warnings:
        view["warnings"] = job.warnings
    if job.webhook:
        view["webhook"] = webhook or {"url": shown_url(job.webhook)}
    if job.submitted_by is not None:
        view["submitted_by"] = job.submitted_by
    return view


def queue_position(job: Job, held_position: int | None) -> int | None:
    """Where a waiting job stands: a held job in Cylindria's queue (`held_position`, the
    dispatcher's), a queued one in its ComfyUI's; None for any other."""
    if job.status is JobStatus.HELD:
        return held_position
    return job.queue_position if job.status is JobStatus.QUEUED else None


def accepted_view(job: Job, held_position: int | None = None, webhook: dict | None = None) -> dict:
    """A job as startjob answers it, the first time (201) and on a retry (200) alike."""
    view = job_view(job, held_position, webhook)
    view["accepted"] = True
    view["detail"] = _detail(job, held_position)
    return view


def _detail(job: Job, held_position: int | None) -> str:
    """One human sentence about where the job stands."""
    if job.status is JobStatus.HELD:
        where = "in Cylindria's queue" if job.gpu_id is None else \
            f"in Cylindria's queue, waiting for GPU {job.gpu_id}"
        ahead = held_position or 0
        return f"queued {where} until a GPU is ready for it; " \
               f"{ahead} held job{'s' if ahead != 1 else ''} ahead of it"
    where = f"on GPU {job.gpu_id}"
    if job.status.value == "queued":
        ahead = job.queue_position
        if ahead is None:
            return f"queued {where}"
        return f"queued {where}; {ahead} prompt{'s' if ahead != 1 else ''} ahead of it"
    return f"{job.status.public} {where}"

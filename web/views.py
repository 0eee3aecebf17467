"""How jobs look in answers."""
from __future__ import annotations

from comfy.jobs import Job
from comfy.status import iso_time


def job_view(job: Job) -> dict:
    """A job as /jobstatus shows it."""
    view = {"job_id": job.job_id, "gpu_id": job.gpu_id, "prompt_id": job.prompt_id,
            "status": job.status.value,
            "queue_position": job.queue_position if job.status.value == "queued" else None,
            "progress": job.progress(),
            "submitted_at": iso_time(job.submitted_at), "started_at": iso_time(job.started_at),
            "finished_at": iso_time(job.finished_at), "error": job.error,
            "outputs": [dict(o) for o in job.outputs],
            "cancel_requested": job.cancel_requested}
    if job.warnings:
        view["warnings"] = job.warnings
    return view


def accepted_view(job: Job) -> dict:
    """A job as startjob answers it, the first time (201) and on a retry (200) alike."""
    view = job_view(job)
    view["accepted"] = True
    view["detail"] = _detail(job)
    return view


def _detail(job: Job) -> str:
    """One human sentence about where the job stands."""
    where = f"on GPU {job.gpu_id}"
    if job.status.value == "queued":
        ahead = job.queue_position
        if ahead is None:
            return f"queued {where}"
        return f"queued {where}; {ahead} prompt{'s' if ahead != 1 else ''} ahead of it"
    return f"{job.status.value} {where}"

"""How jobs look in answers."""
from __future__ import annotations

import threading

from comfy.encoding import to_json
from comfy.jobs.job import Job, JobStatus
from comfy.comfyui.status import iso_time
from cylindria.webhooks.outbox import shown_url

MAX_ENCODED = 1024  # job records whose /jobstatus body is kept


class EncodedViews:
    """/jobstatus bodies, encoded once per job record: a published record is never modified
    (the store publishes edited copies), so a client polling an unchanged job is answered
    with the same bytes. Bodies that depend on more than the record (a held job's place in
    the queue, a webhook's deliveries) are encoded each time."""

    def __init__(self, size: int = MAX_ENCODED):
        self.size = size
        self._bodies: dict = {}  # job id -> (the record, its body); oldest first
        self._lock = threading.Lock()  # for writers; a read is one atomic dict lookup

    def body(self, job: Job, held_position: int | None, webhook: dict | None) -> bytes:
        """The job's view as JSON."""
        if job.status is JobStatus.HELD or job.webhook:
            return to_json(job_view(job, held_position, webhook))
        kept = self._bodies.get(job.job_id)
        if kept is not None and kept[0] is job:  # the record itself, not an equal one
            return kept[1]
        body = to_json(job_view(job))
        with self._lock:
            self._bodies.pop(job.job_id, None)
            if len(self._bodies) >= self.size:
                del self._bodies[next(iter(self._bodies))]
            self._bodies[job.job_id] = (job, body)
        return body


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

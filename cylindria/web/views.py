"""How jobs look in answers: /jobstatus bodies encoded once (the views: comfy/jobs/view.py)."""
from __future__ import annotations

import threading

from comfy.encoding import to_json
from comfy.jobs.job import Job, JobStatus
from comfy.jobs.view import accepted_view, job_view, queue_position  # noqa: F401  (re-exported)

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
        """The job's view as JSON, ending in a newline as every other JSON answer does."""
        if job.status is JobStatus.HELD or job.webhook:
            return to_json(job_view(job, held_position, webhook)) + b"\n"
        kept = self._bodies.get(job.job_id)
        if kept is not None and kept[0] is job:  # the record itself, not an equal one
            return kept[1]
        body = to_json(job_view(job)) + b"\n"
        with self._lock:
            self._bodies.pop(job.job_id, None)
            if len(self._bodies) >= self.size:
                del self._bodies[next(iter(self._bodies))]
            self._bodies[job.job_id] = (job, body)
        return body

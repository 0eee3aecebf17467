"""Finding a job for a request: the contract's 400/404, and a held job's place in the queue."""
from __future__ import annotations

from comfy.jobs import Job, JobStatus
from web.context import ctx
from web.errors import ApiError
from web.params import job_id_param


def known_job(job_id: str) -> Job:
    """The job under a valid id, or the contract's 400/404."""
    job = ctx().store.get(job_id_param(job_id))
    if job is None:
        raise ApiError(404, "job_not_found", "job not found")
    return job


def held_position(job: Job) -> int | None:
    """A held job's place in Cylindria's queue (None for any other job)."""
    return ctx().dispatcher.position(job.job_id) if job.status == JobStatus.HELD else None


def webhook_state(job: Job) -> dict | None:
    """The job view's `webhook` object (None for a job without a webhook)."""
    return ctx().webhooks.outbox.summary(job) if job.webhook else None

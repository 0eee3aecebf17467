"""Finding a job for a request: the contract's 400/404, and a held job's place in the queue."""
from __future__ import annotations

from comfy.jobs.job import Job, JobStatus
from cylindria.web.auth import current_client
from cylindria.web.context import ctx
from cylindria.web.errors import ApiError
from cylindria.web.params import job_id_param


def known_job(job_id: str, anywhere: bool = False) -> Job:
    """The job under a valid id, or the contract's 400/404. `anywhere`: a job of any node of
    the fleet (another node's read from its row; 503 database_unavailable if it cannot be
    read), for the reads any node answers; else only one held here, which it can act on."""
    job_id = job_id_param(job_id)
    job = ctx().store.lookup(job_id) if anywhere else ctx().store.get(job_id)
    if job is None or not visible(job):
        raise ApiError(404, "job_not_found", "job not found")
    return job


def held_elsewhere(job: Job, context=None) -> bool:
    """Whether another node of the fleet holds the job (its outputs are in that node's
    ComfyUI, its GPU index names that node's GPU)."""
    return job.node is not None and job.node != (context or ctx()).config.node


def visible(job: Job) -> bool:
    """Whether the client may see this job: any, unless its key is limited to its own jobs
    (then another client's job is answered as if it did not exist)."""
    client = current_client()
    return client is None or not client.own or job.submitted_by == client.name


def submitter() -> str | None:
    """The name a new job records as `submitted_by`."""
    client = current_client()
    return client.name if client is not None else None


def listed_by(asked: str | None) -> str | None:
    """The `submitted_by` a job list is filtered by: the one asked for, or, for a key limited
    to its own jobs, always its own name (asking for another's lists nothing)."""
    client = current_client()
    if client is not None and client.own:
        return client.name if asked in (None, client.name) else "\0nobody"
    return asked


def held_position(job: Job, context=None) -> int | None:
    """A held job's place in Cylindria's queue (None for any other job). `context`: the
    app's, for a stream that runs after the request's app context has ended."""
    if job.status != JobStatus.HELD:
        return None
    return (context or ctx()).dispatcher.position(job.job_id)


def webhook_state(job: Job, context=None) -> dict | None:
    """The job view's `webhook` object (None for a job without a webhook)."""
    return (context or ctx()).webhooks.outbox.summary(job) if job.webhook else None

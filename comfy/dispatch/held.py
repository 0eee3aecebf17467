"""Cylindria's own queue as moves of a job: sent from it, back into it, out of attempts.

Every move names the submission it is about (its prompt_id), so what was decided about one
attempt never lands on the next one under the same job id.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

from comfy.tracking.events import finish
from comfy.jobs.job import Job, JobStatus
from comfy.tracking.outcome import lost_error, send_failed_error
from comfy.jobs.store import JobStore

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # the contract's default for --max-attempts


def claim(gpu_index: int, prompt_id: str) -> Callable[[Job], None]:
    """An edit that starts sending a held job to this GPU as a new attempt; it does nothing
    if the job left the queue meanwhile (cancelled) or is pinned to another GPU, and
    cancels a job whose cancel was asked for instead of sending it."""
    def edit(job: Job) -> None:
        if job.status != JobStatus.HELD or (not job.auto and job.gpu_id != gpu_index):
            return
        if job.cancel_requested:
            finish(JobStatus.CANCELLED)(job)
            return
        job.status = JobStatus.SUBMITTING
        job.gpu_id = gpu_index
        job.prompt_id = prompt_id
        job.attempts += 1
        job.queue_position = None
    return edit


def back_to_queue(counted: bool) -> Callable[[Job], None]:
    """An edit that puts a job back in Cylindria's queue with no prompt (and no GPU, if it
    may go to any). An attempt not `counted` is given back: ComfyUI never got it (refused),
    and nothing says the next one will fail too."""
    def edit(job: Job) -> None:
        job.status = JobStatus.HELD
        job.prompt_id = None
        if job.auto:
            job.gpu_id = None
        if not counted:
            job.attempts = max(0, job.attempts - 1)
        job.held_at = time.time()
        # What the dead attempt had reached is not this job's any more: the next run
        # starts from nothing and reports its own progress, times and files.
        job.number = job.started_at = None
        job.queue_position = job.progress_node = None
        job.progress_value = job.progress_max = 0.0
        job.nodes_done, job.done_nodes, job.outputs = 0, frozenset(), ()
    return edit


def unsent(store: JobStore, job: Job) -> Job | None:
    """A submission ComfyUI never got. A job the client was already promised goes back to
    the queue; a pinned job's first submission is dropped, so the client's retry goes
    through. Returns the job as it is now, None if it was dropped (or is no longer this
    submission)."""
    if not job.owed:
        store.discard(job.job_id, job.prompt_id)
        return None
    again = store.change(job.job_id, back_to_queue(counted=False), prompt_id=job.prompt_id)
    if again is not None and again.status == JobStatus.HELD:
        logger.info("job %s: GPU %s never got it; back in Cylindria's queue", job.job_id, job.gpu_id)
    return again


def died_under(store: JobStore, job: Job, max_attempts: int) -> Job | None:
    """The ComfyUI that had this job refused connections before the job ended: its queue
    and history died with it. The job is sent again (back in the queue, ahead of its
    priority's others) until it has been sent `max_attempts` times; then it is lost.
    A job whose cancel was asked for is cancelled; a pinned first submission ComfyUI may
    never have got is dropped. Decided on the record as it is when the change is made (a
    cancel asked for since `job` was read counts). Returns the job as it is now (None:
    dropped)."""
    if not job.owed and store.discard(job.job_id, job.prompt_id):
        return None
    gpu = job.gpu_id

    def edit(current: Job) -> None:
        if current.cancel_requested:
            finish(JobStatus.CANCELLED)(current)
        elif current.attempts >= max_attempts:
            finish(JobStatus.LOST, lost_error(gpu, f"stopped (connection refused) before the "
                                                   f"job ended, on attempt {current.attempts} "
                                                   f"of {max_attempts}"))(current)
        else:
            back_to_queue(counted=True)(current)
    now = store.change(job.job_id, edit, prompt_id=job.prompt_id)
    if now is not None and now.status == JobStatus.HELD:
        logger.info("job %s: ComfyUI on GPU %d stopped under it; back in Cylindria's queue "
                    "(sent %d of %d times)", job.job_id, gpu, now.attempts, max_attempts)
    return now


def send_failed(store: JobStore, job: Job, why: str, max_attempts: int) -> Job | None:
    """ComfyUI answered this submission's POST with an error that is no validation refusal
    (a 5xx, a 400 without `error`), or the send failed in Cylindria itself: the attempt
    counts, so a send that fails every time ends. A job the client was promised goes back
    to the queue until it has been sent `max_attempts` times, then fails with the reason;
    a pinned first submission is dropped (its client is told). Returns the job as it is now
    (None: dropped, or no longer this submission)."""
    if not job.owed:
        store.discard(job.job_id, job.prompt_id)
        return None

    def edit(current: Job) -> None:
        if current.attempts < max_attempts:
            back_to_queue(counted=True)(current)
            return
        finish(JobStatus.FAILED, send_failed_error(current.gpu_id, why, max_attempts))(current)
    now = store.change(job.job_id, edit, prompt_id=job.prompt_id)
    if now is not None:
        logger.warning("job %s: sending it to GPU %s failed (%s); %s", job.job_id, job.gpu_id,
                       why, "failed" if now.status.finished else "back in Cylindria's queue")
    return now


def expire(store: JobStore, job: Job, waited: float) -> Job | None:
    """A pinned job waited `waited` seconds for its GPU's ComfyUI to come back: lost."""
    def edit(current: Job) -> None:
        if current.status == JobStatus.HELD:
            finish(JobStatus.LOST, lost_error(
                current.gpu_id, f"did not come back within {waited:g}s to run the job again"))(current)
    return store.change(job.job_id, edit)


def cancel_held(store: JobStore, job: Job) -> Job:
    """Cancel a job while it is held: it never reaches ComfyUI. Returns the job as it is now:
    cancelled, or whatever it became meanwhile (sent, so the caller cancels it there)."""
    def edit(current: Job) -> None:
        if current.status == JobStatus.HELD:
            current.cancel_requested = True
            finish(JobStatus.CANCELLED)(current)
    return store.change(job.job_id, edit) or job

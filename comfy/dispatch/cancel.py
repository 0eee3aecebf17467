"""Cancelling a job: a queued prompt is deleted from ComfyUI's queue, a running one interrupted."""
from __future__ import annotations

import logging

from comfy.comfyui.errors import ComfyBadResponse
from comfy.tracking.events import finish
from comfy.comfyui.gpu import Gpu
from comfy.dispatch.held import cancel_held
from comfy.jobs.job import Job, JobStatus
from comfy.tracking.reconcile import Seen, judge
from comfy.jobs.store import JobStore

logger = logging.getLogger(__name__)


class JobFinished(Exception):
    """The job had already ended (perhaps just now); nothing was cancelled."""

    def __init__(self, job: Job):
        super().__init__(f"job {job.job_id} already ended: {job.status.value}")
        self.job = job


class JobGone(Exception):
    """Another node's job was removed (a submission its ComfyUI never got) as it was cancelled."""


class CancelRaced(Exception):
    """The job kept moving between Cylindria's queue and a GPU while being cancelled."""


def cancel_anywhere(store: JobStore, gpus: list[Gpu], job: Job,
                    settle_wait: float) -> tuple[Job, bool]:
    """Cancel the job wherever it is; returns (job, confirmed) like cancel_job. Held, it never
    reaches ComfyUI; being sent, its POST is waited for; sent meanwhile by the dispatcher, it
    is cancelled in that ComfyUI; another node's (or one of the fleet's shared queue that
    another node claimed as it was cancelled), that node is asked to (ask_owner).
    JobFinished if it has ended."""
    if store.get(job.job_id) is None:
        return ask_owner(store, job)
    for _ in range(3):
        if job.status == JobStatus.SUBMITTING:
            job = store.wait_settled(job.job_id, settle_wait) or job
        if job.status.finished:
            raise JobFinished(job)
        if job.status == JobStatus.HELD:
            job = cancel_held(store, job)
            if job.status == JobStatus.CANCELLED:
                return job, True
            if store.get(job.job_id) is None:
                return ask_owner(store, job)  # of the shared queue, claimed by another node
            continue  # sent meanwhile: cancel it in ComfyUI
        return cancel_job(store, gpus[job.gpu_id], job)
    raise CancelRaced("the job moved between Cylindria's queue and a GPU while being "
                      "cancelled; try the cancel again")


def ask_owner(store: JobStore, job: Job) -> tuple[Job, bool]:
    """Cancel another node's job: the flag in its row and a notice to its node, which cancels
    it as its own (cylindria/fleet/notices.py). Answered as a cancel under way (the job as its
    row reads now, cancel_requested), or confirmed if its node has cancelled it already;
    JobFinished if it had ended, JobGone if its row is gone."""
    job_id = job.job_id
    asked, job = store.request_cancel(job_id)
    if job is None:
        raise JobGone(f"job {job_id} is gone")
    if job.status.finished and not (asked and job.status == JobStatus.CANCELLED):
        raise JobFinished(job)  # ended before (or, not cancelled, as) the cancel was asked
    logger.info("job %s: cancel asked of node %s", job.job_id, job.node)
    return job, job.status == JobStatus.CANCELLED


def cancel_job(store: JobStore, gpu: Gpu, job: Job) -> tuple[Job, bool]:
    """Cancel an unfinished job; returns (job, confirmed).

    confirmed is True when the job is cancelled now (it was waiting), False when a running
    prompt was asked to stop and ComfyUI's confirmation is still to come.
    """
    snapshot = gpu.client.queue()
    pending = {item.prompt_id for item in snapshot.pending}
    if job.prompt_id in pending:
        gpu.client.delete_queued([job.prompt_id])
        snapshot = gpu.client.queue()  # it may have started between the two calls
    running = {item.prompt_id for item in snapshot.running}
    if job.prompt_id in running:
        return _interrupt(store, gpu, job), False
    if job.prompt_id in {item.prompt_id for item in snapshot.pending}:
        raise ComfyBadResponse("ComfyUI kept a prompt it was asked to delete", gpu.index)
    if job.prompt_id in pending:
        # Deleted while waiting: ComfyUI never writes history for it, so nothing else will tell.
        logger.info("job %s: removed from GPU %d's queue", job.job_id, gpu.index)
        return _confirm(store, job), True
    ended = judge(gpu, store, job, Seen(snapshot))  # it ended before the cancel arrived
    raise JobFinished(ended or store.get(job.job_id) or job)


def remove_prompt(gpu: Gpu, prompt_id: str) -> str | None:
    """Take a prompt out of this ComfyUI, whose job is no longer this node's (the fleet took it
    over): deleted from its queue if waiting, interrupted if running (that prompt only); what
    was done ("deleted", "interrupted"), or None if ComfyUI has it no more."""
    snapshot = gpu.client.queue()
    done = None
    if prompt_id in {item.prompt_id for item in snapshot.pending}:
        gpu.client.delete_queued([prompt_id])
        done = "deleted"
        snapshot = gpu.client.queue()  # it may have started between the two calls
    if prompt_id in {item.prompt_id for item in snapshot.running}:
        gpu.client.interrupt(prompt_id)
        return "interrupted"
    if prompt_id in {item.prompt_id for item in snapshot.pending}:
        raise ComfyBadResponse("ComfyUI kept a prompt it was asked to delete", gpu.index)
    return done


def _interrupt(store: JobStore, gpu: Gpu, job: Job) -> Job:
    """Mark the request (durably) and interrupt that prompt only."""
    job = store.change(job.job_id, lambda j: setattr(j, "cancel_requested", True))
    gpu.client.interrupt(job.prompt_id)
    logger.info("job %s: interrupt sent to GPU %d", job.job_id, gpu.index)
    return job


def _confirm(store: JobStore, job: Job) -> Job:
    """The job is cancelled now; a job that ended meanwhile keeps its true end."""
    def edit(current: Job) -> None:
        current.cancel_requested = True
        finish(JobStatus.CANCELLED)(current)
    current = store.change(job.job_id, edit)
    if current.status != JobStatus.CANCELLED:
        raise JobFinished(current)
    return current

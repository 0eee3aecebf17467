"""Bring one GPU's unfinished jobs in line with what its ComfyUI says (/queue, /history)."""
from __future__ import annotations

import logging
from typing import Callable

from comfy.comfyui.errors import ComfyError, ComfyTimeout, ComfyUnreachable
from comfy.tracking.events import finish, finish_from_history, start_running
from comfy.comfyui.gpu import Gpu
from comfy.dispatch.held import MAX_ATTEMPTS, died_under, unsent
from comfy.jobs.job import Job, JobStatus
from comfy.tracking.outcome import lost_error
from comfy.comfyui.queue import QueueItem, QueueSnapshot
from comfy.jobs.store import JobStore

logger = logging.getLogger(__name__)


def reconcile_gpu(gpu: Gpu, store: JobStore, max_attempts: int = MAX_ATTEMPTS) -> None:
    """One reconciliation of a GPU: the poller's step, also run on reconnect and at start.

    The jobs judged are taken before /queue is asked, and never one whose POST is still
    under way, so a prompt submitted after the snapshot is never mistaken for a lost one.
    """
    jobs = store.settled_active(gpu.index)
    try:
        snapshot = gpu.client.queue()
    except ComfyTimeout as exc:
        logger.warning("GPU %d: /queue timed out (%s); job states kept", gpu.index, exc)
        return
    except ComfyUnreachable as exc:
        if not exc.refused:
            logger.warning("GPU %d: /queue connection broke (%s); job states kept", gpu.index, exc)
            return
        gpu.saw_failure(refused=True)
        _died(gpu, store, jobs, max_attempts)
        return
    except ComfyError as exc:
        logger.warning("GPU %d: /queue failed: %s", gpu.index, exc)
        return
    seen = Seen(snapshot)
    try:
        if gpu.saw_queue(snapshot, {job.prompt_id for job in store.active(gpu.index)}):
            _revive(gpu, store, seen)
        for job in jobs:
            if not _unchanged(job, seen):
                judge(gpu, store, job, seen)
    except ComfyError as exc:
        logger.warning("GPU %d: reconciliation stopped: %s", gpu.index, exc)


class Seen:
    """One /queue answer, indexed once to judge many jobs against it."""

    def __init__(self, snapshot: QueueSnapshot):
        self.items = snapshot.items()
        self.positions = snapshot.positions()
        self.running = {item.prompt_id for item in snapshot.running}


def judge(gpu: Gpu, store: JobStore, job: Job, seen: Seen | None,
          allow_finished: bool = False,
          never_got: Callable[[JobStore, Job], Job | None] = unsent) -> Job | None:
    """ComfyUI's word on one submission, from its queue (`seen`; None when ComfyUI refuses
    connections: its queue and history are gone) and then its history. In the queue, the
    job waits or runs; in history, it ended as recorded there; in neither, ComfyUI never got
    a submission (`never_got`: dropped, or back in Cylindria's queue) or lost a job it had.
    Every change lands on this submission only (its prompt_id). Returns the job as it is
    now; None when it was dropped or the id holds another submission by now."""
    item = seen.items.get(job.prompt_id) if seen is not None else None
    if item is not None:
        return store.change(job.job_id, _in_queue(item, job.prompt_id in seen.running,
                                                  seen.positions.get(job.prompt_id)),
                            prompt_id=job.prompt_id)
    entry = gpu.client.history(job.prompt_id) if seen is not None else None
    if entry is not None:
        return store.change(job.job_id, finish_from_history(entry), allow_finished=allow_finished,
                            prompt_id=job.prompt_id)
    if job.status == JobStatus.SUBMITTING:
        logger.info("job %s: ComfyUI on GPU %d never got prompt %s", job.job_id, gpu.index,
                    job.prompt_id)
        return never_got(store, job)
    if job.status.finished:
        return store.get(job.job_id)
    return store.change(job.job_id, finish(JobStatus.LOST, lost_error(
        gpu.index, "no longer knows this prompt (restarted or cleared)")), prompt_id=job.prompt_id)


def _unchanged(job: Job, seen: Seen) -> bool:
    """True when the queue says nothing new about a waiting job (the common case of a poll,
    skipped so a deep queue costs no store writes)."""
    item = seen.items.get(job.prompt_id)
    return (item is not None and job.prompt_id not in seen.running
            and job.status == JobStatus.QUEUED and job.number == item.number
            and job.queue_position == seen.positions.get(job.prompt_id)
            and job.nodes_total == item.nodes_to_run())


def _in_queue(item: QueueItem, is_running: bool, position: int | None) -> Callable[[Job], None]:
    """An edit for a job whose prompt is in ComfyUI's queue."""
    nodes_total = item.nodes_to_run()

    def edit(job: Job) -> None:
        job.number = item.number
        job.nodes_total = nodes_total
        if is_running:
            start_running(job)
        elif job.status in (JobStatus.SUBMITTING, JobStatus.QUEUED):
            job.status = JobStatus.QUEUED
            job.queue_position = position
    return edit


def _died(gpu: Gpu, store: JobStore, jobs: list[Job], max_attempts: int) -> None:
    """ComfyUI refuses connections: its process, queue and history are gone with it. Each
    unfinished job is sent again while it has attempts left, else lost."""
    for job in jobs:
        now = died_under(store, job, max_attempts)
        if now is not None and now.status == JobStatus.LOST:
            gpu.lost_in_outage.add(job.job_id)


def _revive(gpu: Gpu, store: JobStore, seen: Seen) -> None:
    """ComfyUI is back: a job lost in the outage gets its true outcome if history has it."""
    job_ids, gpu.lost_in_outage = gpu.lost_in_outage, set()
    for job_id in job_ids:
        job = store.get(job_id)
        if job is not None and job.status == JobStatus.LOST:
            judge(gpu, store, job, seen, allow_finished=True)

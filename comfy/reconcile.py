"""Bring one GPU's unfinished jobs in line with what its ComfyUI says (/queue, /history)."""
from __future__ import annotations

import logging

from comfy.errors import ComfyError, ComfyTimeout, ComfyUnreachable
from comfy.events import finish, finish_from_history, start_running
from comfy.gpu import Gpu
from comfy.held import died_under, unsent
from comfy.jobs import Job, JobStatus
from comfy.outcome import lost_error
from comfy.queue import QueueSnapshot
from comfy.store import JobStore

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # the contract's default for --max-attempts


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
    if gpu.saw_queue(snapshot, {job.prompt_id for job in store.active(gpu.index)}):
        _revive(gpu, store)
    try:
        _judge(gpu, store, jobs, snapshot)
    except ComfyError as exc:
        logger.warning("GPU %d: reconciliation stopped: %s", gpu.index, exc)


def _judge(gpu: Gpu, store: JobStore, jobs: list[Job], snapshot: QueueSnapshot) -> None:
    """Each job is running, waiting, or gone (then its history tells how it ended)."""
    items, positions = snapshot.items(), snapshot.positions()
    running = {item.prompt_id for item in snapshot.running}
    for job in jobs:
        item = items.get(job.prompt_id)
        if item is None:
            settle_gone(gpu, store, job)
        else:
            is_running, position = job.prompt_id in running, positions.get(job.prompt_id)
            nodes_total = item.nodes_to_run()
            if not _unchanged(job, item.number, is_running, position, nodes_total):
                store.change(job.job_id, _in_queue(item.number, is_running, position, nodes_total),
                             prompt_id=job.prompt_id)


def _unchanged(job: Job, number: float, is_running: bool, position: int | None,
               nodes_total: int) -> bool:
    """True when the queue says nothing new about a waiting job (the common case of a poll,
    skipped so a deep queue costs no store writes)."""
    return (not is_running and job.status == JobStatus.QUEUED and job.number == number
            and job.queue_position == position and job.nodes_total == nodes_total)


def _in_queue(number: float, is_running: bool, position: int | None, nodes_total: int):
    """An edit for a job whose prompt is in ComfyUI's queue."""
    def edit(job: Job) -> None:
        job.number = number
        job.nodes_total = nodes_total
        if is_running:
            start_running(job)
        elif job.status in (JobStatus.SUBMITTING, JobStatus.QUEUED):
            job.status = JobStatus.QUEUED
            job.queue_position = position
    return edit


def settle_gone(gpu: Gpu, store: JobStore, job: Job, allow_finished: bool = False) -> None:
    """A prompt no longer in the queue: finished (history says how), or unknown to ComfyUI."""
    entry = gpu.client.history(job.prompt_id)
    if entry is not None:
        store.change(job.job_id, finish_from_history(entry), allow_finished=allow_finished,
                     prompt_id=job.prompt_id)
    elif job.status == JobStatus.SUBMITTING:
        if unsent(store, job) is None:
            logger.info("job %s: ComfyUI on GPU %d never got it; dropped so a retry can go "
                        "through", job.job_id, gpu.index)
    elif not job.status.finished:
        store.change(job.job_id, finish(
            JobStatus.LOST, lost_error(gpu.index, "no longer knows this prompt (restarted or cleared)")),
            prompt_id=job.prompt_id)


def _died(gpu: Gpu, store: JobStore, jobs: list[Job], max_attempts: int) -> None:
    """ComfyUI refuses connections: its process, queue and history are gone with it. Each
    unfinished job is sent again while it has attempts left, else lost."""
    for job in jobs:
        now = died_under(store, job, max_attempts)
        if now is not None and now.status == JobStatus.LOST:
            gpu.lost_in_outage.add(job.job_id)


def _revive(gpu: Gpu, store: JobStore) -> None:
    """ComfyUI is back: a job lost in the outage gets its true outcome if history has it."""
    job_ids, gpu.lost_in_outage = gpu.lost_in_outage, set()
    for job_id in job_ids:
        job = store.get(job_id)
        if job is not None and job.status == JobStatus.LOST:
            settle_gone(gpu, store, job, allow_finished=True)

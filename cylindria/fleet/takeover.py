"""Failover: the jobs of a node whose lease has ended go on without it, and the node, back,
lets go of them.

Every TICK seconds a live node looks for stranded nodes (lease ended by the database's clock,
unfinished jobs left: JobRows.stranded) and takes each over in one transaction
(JobRows.take_over, one taker at a time, re-checked under the node's row lock so a renewal
racing it comes first or learns it was taken over):
- a GpuId=auto job goes back to the fleet's shared queue (of no node, held, its GPU and prompt
  cleared, its attempt counted; NOTIFY'd, so a free GPU anywhere takes it within
  milliseconds), unless it was sent --max-attempts times already: then `lost`, as on one host;
- a job pinned to that node (GpuId=n there, or <node>:<n>), or held there with credentials only
  that node's memory kept, waits --requeue-wait seconds from the lease's end for the node to
  come back, then is `lost`;
- a job whose cancel was asked (of a node that could not act on it) is cancelled at once.
A job ended so is the taker's (its row names it); each change raises the row's fence and
writes its webhook events in the same transaction, so the events are written once.

The node the jobs were taken from learns it from its next renewal (cylindria/fleet/membership.py),
from a write the fence refused (JobStore.on_disowned), or at its next start: it then drops those
jobs from its memory and removes their prompts from its ComfyUI (deleted from the queue if
waiting, interrupted if running), as recorded by the takeover (JobRows.taken_from): a node that
restarted knows them from the database, not from memory.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Callable

from comfy.comfyui.errors import ComfyError, ComfyUnreachable
from comfy.comfyui.gpu import Gpu
from comfy.dispatch.cancel import remove_prompt
from comfy.dispatch.held import MAX_ATTEMPTS, back_to_queue
from comfy.jobs.job import Job, JobStatus
from comfy.jobs.store import JobStore
from comfy.tracking.events import finish
from cylindria.storage import JobRows, OutboxRow, StorageUnavailable, Taken

logger = logging.getLogger(__name__)

TICK = 1.0  # seconds between looks for stranded nodes (a takeover within lease + TICK)


def node_lost_error(node: str, why: str) -> dict:
    """The error object of a job lost with its node."""
    return {"type": "lost", "node_id": None, "node_type": None,
            "message": f"node {node} {why}"}


def rework(taker: str, node: str, job: Job, ended_for: float, requeue_wait: float,
           max_attempts: int) -> Job | None:
    """What becomes of an unfinished job of `node`, whose lease ended `ended_for` seconds ago
    (see the module's doc); None: it waits for its node."""
    waits = not job.auto or job.status == JobStatus.HELD  # only that node can send it
    if waits and ended_for < requeue_wait and not job.cancel_requested:
        return None
    new = dataclasses.replace(job)
    if job.cancel_requested:  # asked of its node, which did not act on it in time
        finish(JobStatus.CANCELLED)(new)
    elif waits:
        finish(JobStatus.LOST, node_lost_error(
            node, f"did not come back within {requeue_wait:g}s of its lease's end to run "
                  "the job"))(new)
    elif job.attempts >= max_attempts:
        finish(JobStatus.LOST, node_lost_error(
            node, f"stopped renewing its lease (it crashed, or lost the database) before the "
                  f"job ended, on attempt {job.attempts} of {max_attempts}"))(new)
    else:
        back_to_queue(counted=True)(new)
        new.node = None  # the fleet's shared queue: any node may claim it
        return new
    new.node = taker  # ended here: the taker's job, never its old node's again
    return new


class Takeover:
    """One thread taking over stranded nodes and letting go of what was taken from this one;
    built with the core on the fleet's database, started with the server, stopped before
    the storage closes."""

    def __init__(self, rows: JobRows, store: JobStore, gpus: list[Gpu], *,
                 requeue_wait: float, max_attempts: int = MAX_ATTEMPTS,
                 wake_sender: Callable[[], None] = lambda: None, every: float = TICK):
        self.rows, self.store, self.gpus = rows, store, gpus
        self.node = store.node
        self.requeue_wait, self.max_attempts = requeue_wait, max_attempts
        self.wake_sender = wake_sender  # the webhook sender: an event was committed here
        self.every = every
        # Set while jobs taken from this node may be left to let go of: at start (taken
        # while it was down), then whenever it learns of a takeover.
        self._taken = threading.Event()
        self._taken.set()
        self._failing = False  # a prompt could not be removed: logged once until it is
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.run, name="cylindria-takeover", daemon=True)
        store.on_disowned(lambda job: self.taken_over())

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Stop the thread (a takeover under way finishes its transaction)."""
        self._stop.set()
        self._wake.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("takeover thread did not stop in %.1fs", timeout)

    def taken_over(self) -> None:
        """This node learnt that the fleet took jobs from it (a renewal said so, or a write
        was refused by a fence): let go of them now."""
        self._taken.set()
        self._wake.set()

    def run(self) -> None:
        """A tick every `every` seconds, or at once when woken."""
        while not self._stop.is_set():
            try:
                self.tick()
            except StorageUnavailable:  # logged once by the storage; the next tick tries again
                pass
            except Exception:  # the thread never dies
                logger.exception("takeover tick failed")
            self._wake.wait(self.every)
            self._wake.clear()

    def tick(self) -> int:
        """Let go of what was taken from this node, then take over every stranded node; how
        many jobs were taken over."""
        if self._taken.is_set():
            self._taken.clear()
            if not self.let_go():
                self._taken.set()  # a prompt left to remove: tried again at the next tick
        return sum(len(self.take_over(name)) for name in self.rows.stranded()
                   if name != self.node)  # this node's own lease is its renewal's to mend

    def take_over(self, node: str) -> list[tuple[Job, Job]]:
        """Take over one stranded node's jobs (nothing if its lease holds again, or another
        node is taking it over); (before, after) of each job changed."""
        def judged(job: Job, ended_for: float) -> tuple[Job, list[OutboxRow]] | None:
            new = rework(self.node, node, job, ended_for, self.requeue_wait, self.max_attempts)
            return None if new is None else (new, self.store.events_for(job, new))

        changed = self.rows.take_over(node, judged)
        if changed:
            queued = sum(new.status == JobStatus.HELD for _, new in changed)
            logger.warning("node %s's lease has ended: took over %d of its job(s): %d back in "
                           "the fleet's queue, %d ended here", node, len(changed), queued,
                           len(changed) - queued)
            for old, new in changed:
                logger.info("job %s (node %s): %s -> %s", new.job_id, node, old.status.value,
                            new.status.value)
            self.wake_sender()
        return changed

    def let_go(self) -> bool:
        """Drop the jobs taken from this node from memory and their prompts from its ComfyUI;
        True once every one is done (a ComfyUI that cannot say is asked again later)."""
        taken = self.rows.taken_from(self.node)
        done = [t.job_id for t in taken if self._let_go(t)]
        if done:
            self.rows.forget_taken(self.node, done)
        return len(done) == len(taken)

    def _let_go(self, taken: Taken) -> bool:
        """Let go of one job taken from this node; whether its prompt is out of its ComfyUI."""
        if self.store.let_go(taken.job_id, taken.fence) is not None:
            logger.warning("job %s: taken over by the fleet while this node's lease had ended; "
                           "let go", taken.job_id)
            # Its notice, heard while the stale copy was held, was not acted on: the shared
            # queue held here takes it in now if it is still there.
            self.store.take_in(taken.job_id)
        if taken.prompt_id is None or taken.gpu_id is None \
                or not 0 <= taken.gpu_id < len(self.gpus):
            return True
        gpu = self.gpus[taken.gpu_id]
        try:
            done = remove_prompt(gpu, taken.prompt_id)
        except ComfyUnreachable as exc:
            if exc.refused:
                return True  # ComfyUI stopped: the prompt went with its queue
            return self._not_removed(taken, exc)
        except ComfyError as exc:
            return self._not_removed(taken, exc)
        if done is not None:
            logger.info("job %s: its prompt %s %s on GPU %d (the fleet runs the job elsewhere, "
                        "or ended it)", taken.job_id, taken.prompt_id, done, gpu.index)
        self._failing = False
        return True

    def _not_removed(self, taken: Taken, exc: Exception) -> bool:
        """A prompt that could not be removed now (logged once until one is): tried again."""
        if not self._failing:
            self._failing = True
            logger.warning("job %s: its prompt %s could not be removed from GPU %s yet: %s",
                           taken.job_id, taken.prompt_id, taken.gpu_id, exc)
        return False

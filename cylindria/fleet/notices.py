"""Cancels other nodes ask of this one: a client may cancel a job on any node of the fleet; the
node asked sets the flag in the job's row and NOTIFYs (JobRows.request_cancel); this node,
which holds the job, hears it on a LISTEN connection of its own and cancels the job as a
local cancel would (comfy.dispatch.cancel.cancel_anywhere: held, queued or running).

A notice sent while this node was not listening (its connection lost, the database
restarting) is not replayed by PostgreSQL: after every (re)connection, and every RECHECK_EVERY
seconds besides (a cancel that failed, its ComfyUI unreachable, is tried again), the flags in
this node's unfinished jobs' rows are read again.

The same connection hears the fleet's shared queue: a job entering it (`cylindria_held`) is
taken into this node's store, where its dispatcher (woken by the store) may claim it; a job
another node claimed (`cylindria_taken`) is dropped from it. After every (re)connection, and
at each re-check, the shared queue held here is made to agree with the database."""
from __future__ import annotations

import logging
import threading
import time

from comfy.comfyui.errors import ComfyError
from comfy.comfyui.gpu import Gpu
from comfy.dispatch.cancel import CancelRaced, JobFinished, cancel_anywhere
from comfy.jobs.store import JobStore
from cylindria.storage import CancelListener, StorageUnavailable
from cylindria.storage.postgres import CANCEL_CHANNEL, HELD_CHANNEL, TAKEN_CHANNEL

logger = logging.getLogger(__name__)

WAIT = 0.2  # seconds one wait for a notice lasts: how soon a stop is seen
RECHECK_EVERY = 10.0  # seconds between readings of the flags, notices or not
RETRY_EVERY = (0.2, 2.0)  # seconds before the first reconnection, and at most between them
SETTLE_WAIT = 10.0  # seconds a cancel waits for a submission still under way


class CancelNotices:
    """One thread listening for cancels of this node's jobs; built with the core (on a shared
    database only), started with the server, stopped before the storage closes."""

    def __init__(self, listener: CancelListener, store: JobStore, gpus: list[Gpu]):
        self.listener, self.store, self.gpus = listener, store, gpus
        # The jobs this listener has cancelled (interrupt sent, or done): a notice repeated
        # (a second cancel asked) or a flag found again by the re-check is not acted on twice.
        # Not the job's own cancel_requested: a job loaded at a start carries its row's flag,
        # set while this node was down, and has yet to be acted on.
        self._acted: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.run, name="cylindria-cancels", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Stop listening (within WAIT seconds: waited for at least that) and close the
        connection."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(max(timeout, 2 * WAIT))
            if self._thread.is_alive():
                logger.warning("cancel listener did not stop in %.1fs", timeout)
                return
        self.listener.close()

    def run(self) -> None:
        """Listen, apply each notice; on a lost connection listen again (backing off), then
        read the flags again: what was asked meanwhile is done then."""
        delay, listening, checked = RETRY_EVERY[0], False, 0.0
        while not self._stop.is_set():
            try:
                if not listening:
                    self.listener.listen()
                    listening, delay, checked = True, RETRY_EVERY[0], 0.0
                if time.monotonic() - checked >= RECHECK_EVERY:
                    self.store.resync_shared()
                    self.recheck()
                    checked = time.monotonic()
                for channel, job_id in self.listener.wait(WAIT):
                    self.heard(channel, job_id)
            except StorageUnavailable:  # logged by the listener's health, once an outage
                listening = False
                self.listener.close()
                self._stop.wait(delay)
                delay = min(delay * 2, RETRY_EVERY[1])
            except Exception:  # the thread never dies: logged, and listened again
                logger.exception("cancel listener failed")
                listening = False
                self.listener.close()
                self._stop.wait(RETRY_EVERY[1])

    def heard(self, channel: str, job_id: str) -> None:
        """Act on one notice."""
        if channel == HELD_CHANNEL:
            self.store.take_in(job_id)
        elif channel == TAKEN_CHANNEL:
            self.store.forget_shared(job_id)
        elif channel == CANCEL_CHANNEL:
            self.apply(job_id)

    def recheck(self) -> int:
        """Apply every cancel asked of this node's jobs that it has not acted on; how many."""
        applied = 0
        asked = self.store.cancels_requested()
        self._acted &= set(asked)  # those that ended are found no more
        for job_id in asked:
            if self.apply(job_id):
                logger.info("job %s: cancel asked while no notice was heard", job_id)
                applied += 1
        return applied

    def apply(self, job_id: str) -> bool:
        """Cancel this node's job as a local cancel would, unless it has ended or this listener
        has acted on it already; whether it acted."""
        job = self.store.get(job_id)
        if job is None or job.status.finished or job_id in self._acted:
            return False
        try:
            job, confirmed = cancel_anywhere(self.store, self.gpus, job, SETTLE_WAIT)
        except JobFinished:
            return False
        except (ComfyError, CancelRaced, StorageUnavailable) as exc:
            # The flag stays in the row: the next recheck tries again.
            logger.warning("job %s: cancel asked by another node not done yet: %s", job_id, exc)
            return False
        self._acted.add(job_id)
        logger.info("job %s: cancelled as another node asked (%s)", job_id,
                    "done" if confirmed else "interrupt sent")
        return True

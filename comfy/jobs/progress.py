"""Writing running jobs' progress to their rows off the websocket threads.

Every node a prompt runs is a websocket message, and its progress (nodes done, outputs so
far) belongs in the job's row: another node answers for the job from it, a restart starts
from it. Written by the websocket thread itself, each such write held up the next message:
at a job's end ComfyUI sends its last node's messages and `execution_success` together, and
the end (which frees the GPU for the next job) waited behind the writes of the others. This
thread writes them instead, as soon as it can: a burst of changes to one job is one write of
its latest state, and a change of status (written at once by the store, progress included)
makes the pending write unneeded.
"""
from __future__ import annotations

import logging
import threading

from comfy.jobs.store import JobStore
from cylindria.storage import StorageUnavailable

logger = logging.getLogger(__name__)

RETRY_AFTER = 1.0  # seconds before writing again while the database is unavailable


class ProgressWriter:
    """One thread writing the progress rows the store left behind (JobStore.defer_progress)."""

    def __init__(self, store: JobStore, retry_after: float = RETRY_AFTER):
        self._store = store
        self._retry_after = retry_after
        self._due: dict[str, None] = {}  # job ids to write, in the order they fell behind
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.run, name="cylindria-progress", daemon=True)
        store.defer_progress(self.schedule)

    def schedule(self, job_id: str) -> None:
        """The store's call: this job's row is behind its progress (cheap; never blocks on I/O)."""
        with self._wake:
            self._due[job_id] = None
            self._wake.notify()

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Stop the thread, then write what is still due (a last try: the rows are a restart's
        starting point, and the tracker corrects them from ComfyUI in any case)."""
        self._stop.set()
        with self._wake:
            self._wake.notify()
        if self._thread.ident is not None:
            self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("progress writer thread did not stop in %.1fs", timeout)
            return
        try:
            self.write_once()
        except StorageUnavailable:
            logger.info("progress of running jobs not written at shutdown: database unavailable")

    def run(self) -> None:
        """Write whatever is due as soon as it is; wait a while after a failed write."""
        while not self._stop.is_set():
            with self._wake:
                self._wake.wait_for(lambda: self._due or self._stop.is_set())
            try:
                self.write_once()
            except StorageUnavailable:  # logged once by the storage; the rows stay due
                self._stop.wait(self._retry_after)

    def write_once(self) -> int:
        """Write every row due now; returns how many were due. On StorageUnavailable the
        rows not written yet stay due."""
        with self._wake:
            due, self._due = list(self._due), {}
        for n, job_id in enumerate(due):
            try:
                self._store.write_progress(job_id)
            except StorageUnavailable:
                with self._wake:
                    for later in due[n:]:
                        self._due.setdefault(later, None)
                raise
            except Exception:  # not in a loop: the job's next change or its end writes it
                logger.exception("writing the progress of job %s failed", job_id)
        return len(due)

"""The retention sweep: finished jobs older than --retention leave memory and the database,
with their workflows, their asset uses and their settled webhook events; so do assets no job
has needed for that long."""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Callable

from comfy.inputs.assets import AssetStore
from comfy.jobs.job import JobStatus
from comfy.jobs.store import JobStore
from cylindria.storage import JobRows, StorageUnavailable

logger = logging.getLogger(__name__)


class RetentionSweep:
    """One thread removing expired finished jobs in small batches.

    Each batch holds the store's lock only to drop a few hundred dict entries; the rows are
    deleted outside that lock (JobRows.delete_expired, on the sweep's own connection where
    the backend has one), so reads of the store (every /jobstatus) never wait for the disk.
    Memory goes first: a job is never visible without its row, and a row left behind by a
    crash (or a database gone mid-batch) is found again by the next pass, or gives way to a
    new job under its id (JobRows.insert).
    """

    BATCH = 200  # jobs per pass: one short store lock and one small transaction
    PAUSE = 0.01  # seconds between full batches, so a backlog never monopolises the disk

    def __init__(self, store: JobStore, rows: JobRows, retention: float,
                 clock: Callable[[], float] = time.time, assets: AssetStore | None = None):
        self.store = store
        self.assets = assets
        self.retention = retention
        self.clock = clock
        self.interval = min(max(retention / 10, 0.5), 60.0)  # seconds between idle passes
        self._db = rows
        self._lock = threading.Lock()
        self._retired = rows.retired()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.run, name="cylindria-retention", daemon=True)

    def start(self) -> None:
        """Start the sweep thread."""
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Stop after the batch under way."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("retention thread did not stop in %.1fs", timeout)

    def run(self) -> None:
        """Sweep until stopped: batches back to back while a backlog lasts, then every interval."""
        self.at_start()
        while not self._stop.is_set():
            try:
                removed = self.sweep_once()
                self.sweep_assets()
            except StorageUnavailable:  # logged once by the storage; the next pass tries again
                removed = 0
            except Exception:
                logger.exception("retention sweep failed")
                removed = 0
            self._stop.wait(self.PAUSE if removed >= self.BATCH else self.interval)

    def sweep_once(self) -> int:
        """Remove one batch of finished jobs that ended more than `retention` ago, if no
        other node is sweeping (in a fleet one sweep deletes every node's expired rows); how
        many rows it deleted. A pass that is not working through a backlog then drops from
        memory this node's jobs of that age whose rows another node's sweep deleted."""
        cutoff = self.clock() - self.retention
        with self._db.sweep_turn() as ours:
            removed = self._delete_batch(cutoff) if ours else 0
        if removed < self.BATCH:  # a walk over memory once per idle pass, not per batch
            self._forget_deleted_elsewhere(cutoff)
        return removed

    def _delete_batch(self, cutoff: float) -> int:
        """Forget and delete one batch of expired jobs (this sweep's turn held); how many rows."""
        rows = self._db.expired(cutoff, self.BATCH)
        if not rows:
            return 0
        with self._lock:  # a scrape sees each job counted either live or retired, never both
            self.store.forget_finished([job_id for _, job_id in rows], cutoff)
            deleted = self._db.delete_expired([seq for seq, _ in rows], cutoff)
            # Re-read, not added up: a new job under an expired id deletes that row too, and
            # in a fleet the other nodes' sweeps add theirs.
            self._retired = self._db.retired()
        if self.assets is not None:
            self.assets.forget_jobs([job_id for _, job_id in rows], self.store)
        removed = sum(deleted.values())
        logger.debug("retention: removed %d finished job(s) that ended before %s", removed,
                     time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(cutoff)))
        return removed

    def _forget_deleted_elsewhere(self, cutoff: float) -> None:
        """Drop this node's jobs that ended before `cutoff` from memory, a batch per store
        lock: their rows went with another node's sweep (counted there), or go with a later
        pass of this one (a job is then briefly neither in memory nor gone: its row is past
        retention, and no read answers an expired row)."""
        job_ids = self.store.finished_before(cutoff)
        if not job_ids:
            return
        with self._lock:
            for start in range(0, len(job_ids), self.BATCH):
                self.store.forget_finished(job_ids[start:start + self.BATCH], cutoff)
            self._retired = self._db.retired()

    def at_start(self) -> None:
        """Once a start: the asset uses of jobs no longer in the store that no pass will meet
        (left by versions that kept them for ever, or by a submission a crash cut off), and,
        where the database holds asset files, those this node kept on its disk before it did."""
        if self.assets is None:
            return
        try:
            job_ids = self.assets.users_ever()
            for start in range(0, len(job_ids), self.BATCH):  # the asset lock held briefly
                self.assets.forget_jobs(job_ids[start:start + self.BATCH], self.store)
            self.assets.share_files()
        except StorageUnavailable:  # logged once by the storage; the next start tries again
            pass
        except Exception:
            logger.exception("retention: the start's asset clean-up failed")

    def sweep_assets(self) -> int:
        """Remove assets no job has needed for `retention` and no job needs now (nor a
        submission under way), retry files whose unlink failed, and drop cached files other
        nodes removed; how many assets went."""
        if self.assets is None:
            return 0
        removed = sum(not self.assets.delete(asset, self.store)
                      for asset in self.assets.unused_since(self.clock() - self.retention))
        self.assets.sweep_files()
        if removed:
            logger.info("retention: removed %d asset(s) no job needed", removed)
        return removed

    def counts(self) -> tuple[dict[tuple[int, JobStatus], int], Counter]:
        """The store's live counts and the retired ones, read together (for /metrics)."""
        with self._lock:
            return self.store.counts(), Counter(self._retired)

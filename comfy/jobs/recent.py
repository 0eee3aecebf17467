"""Jobs of other nodes as their rows were lately read: a node answers for any job of its fleet,
and a client polling another node's job many times a second costs one database read a
second, not one per poll (the contract allows a status up to 1 s old)."""
from __future__ import annotations

import threading
import time

from comfy.jobs.job import Job

FRESH_FOR = 1.0  # seconds a row read is answered from here
MAX_KEPT = 4096  # rows kept at most: a storm of distinct ids never grows the dict unbounded


class RecentRows:
    """job id -> (when read, the job or None: no such row), for FRESH_FOR seconds, oldest
    first. A read is one atomic dict lookup; writers take a lock to keep the order and size."""

    def __init__(self, fresh_for: float = FRESH_FOR, size: int = MAX_KEPT,
                 clock=time.monotonic):
        self.fresh_for, self.size, self._clock = fresh_for, size, clock
        self._rows: dict[str, tuple[float, Job | None]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, job_id: str) -> tuple[bool, Job | None]:
        """(True, the job or None) if its row was read less than FRESH_FOR ago; else (False, None)."""
        kept = self._rows.get(job_id)
        if kept is None or self._clock() - kept[0] >= self.fresh_for:
            return False, None
        return True, kept[1]

    def put(self, job_id: str, job: Job | None) -> None:
        """Note what a read of the job's row found (None: no row), as of now."""
        with self._lock:
            now = self._clock()
            self._rows.pop(job_id, None)  # put back last: the dict stays oldest first
            # Stale rows are the first ones: dropped from the front, and the oldest fresh
            # ones too while the dict is full (a storm of distinct ids).
            while self._rows:
                oldest = next(iter(self._rows))
                if now - self._rows[oldest][0] < self.fresh_for and len(self._rows) < self.size:
                    break
                del self._rows[oldest]
            self._rows[job_id] = (now, job)

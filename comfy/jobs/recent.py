"""Jobs of other nodes as their rows were lately read: a node answers for any job of its fleet,
and a client polling another node's job many times a second costs one database read a
second, not one per poll (the contract allows a status up to 1 s old). A row that can no
longer change (completed, failed, cancelled: final; `lost` may still get its true end) is
kept longer: status polls of finished jobs, the common case, then cost no reads at all."""
from __future__ import annotations

import threading
import time

from comfy.jobs.job import Job, JobStatus

FRESH_FOR = 1.0  # seconds a row read is answered from here
SETTLED_FOR = 60.0  # the same for a row whose status is final (only retention removes it)
SETTLED = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
MAX_KEPT = 4096  # rows kept at most: a storm of distinct ids never grows the dict unbounded


class RecentRows:
    """job id -> (until when it is answered from here, the job or None: no such row), for
    FRESH_FOR seconds (SETTLED_FOR for a final status), in the order read. A read is one
    atomic dict lookup; writers take a lock to keep the order and size."""

    def __init__(self, fresh_for: float = FRESH_FOR, size: int = MAX_KEPT,
                 clock=time.monotonic, settled_for: float = SETTLED_FOR):
        self.fresh_for, self.settled_for, self.size, self._clock = \
            fresh_for, settled_for, size, clock
        self._rows: dict[str, tuple[float, Job | None]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, job_id: str) -> tuple[bool, Job | None]:
        """(True, the job or None) if its row was read less than FRESH_FOR ago; else (False, None)."""
        kept = self._rows.get(job_id)
        if kept is None or self._clock() >= kept[0]:
            return False, None
        return True, kept[1]

    def put(self, job_id: str, job: Job | None) -> None:
        """Note what a read of the job's row found (None: no row), as of now."""
        settled = job is not None and job.status in SETTLED
        with self._lock:
            now = self._clock()
            self._rows.pop(job_id, None)  # put back last: the dict stays in the order read
            # Expired rows are dropped from the front (the oldest reads), and the oldest kept
            # ones too while the dict is full (a storm of distinct ids).
            while self._rows:
                oldest = next(iter(self._rows))
                if now < self._rows[oldest][0] and len(self._rows) < self.size:
                    break
                del self._rows[oldest]
            self._rows[job_id] = (now + (self.settled_for if settled else self.fresh_for), job)

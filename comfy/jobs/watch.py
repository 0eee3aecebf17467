"""Waiting on a job: a thread sleeps until the store changes that job (or a timeout, or
shutdown), so a long-poll or an event stream costs no polling loop inside Cylindria."""
from __future__ import annotations

import threading

from comfy.jobs.store import JobStore


class _Watched:
    """One job someone waits on: a change counter under a condition."""

    __slots__ = ("condition", "version", "waiters")

    def __init__(self, lock: threading.Lock):
        self.condition = threading.Condition(lock)
        self.version = 0
        self.waiters = 0


class JobWatch:
    """Wakes the threads waiting on a job whenever the store changes it.

    Only jobs someone waits on are tracked, so the store's watcher call on every change
    (every progress message) costs one dict lookup when nobody waits.
    """

    def __init__(self, store: JobStore):
        self._lock = threading.Lock()
        self._watched: dict[str, _Watched] = {}
        self.closed = False
        store.watch(self._changed)

    def _changed(self, job_id: str) -> None:
        """Store watcher: the job changed."""
        watched = self._watched.get(job_id)  # unlocked read: a dict lookup is atomic
        if watched is None:
            return
        with self._lock:
            watched.version += 1
            watched.condition.notify_all()

    def wait(self, job_id: str, seen: int, timeout: float) -> int:
        """Between `begin` and `end`: sleep until the job changes after version `seen`, the
        timeout passes, or the watch is closed (shutdown); returns the job's version now."""
        with self._lock:
            watched = self._watched[job_id]
            watched.condition.wait_for(lambda: watched.version != seen or self.closed, timeout)
            return watched.version

    def begin(self, job_id: str) -> int:
        """Start watching a job before reading it, so no change between the read and the
        first wait is missed; returns its version (pair with `end`)."""
        with self._lock:
            watched = self._watched.get(job_id)
            if watched is None:
                watched = self._watched[job_id] = _Watched(self._lock)
            watched.waiters += 1
            return watched.version

    def end(self, job_id: str) -> None:
        """Stop watching a job begun with `begin`."""
        with self._lock:
            watched = self._watched.get(job_id)
            if watched is not None:
                watched.waiters -= 1
                if watched.waiters == 0:
                    del self._watched[job_id]

    def close(self) -> None:
        """Shutdown: every waiter wakes now, and none waits again."""
        with self._lock:
            self.closed = True
            for watched in self._watched.values():
                watched.condition.notify_all()

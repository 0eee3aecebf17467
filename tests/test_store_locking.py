"""The job store's lock is never held for slow work: a workflow read, a walk of every job, or
a wait for the database (SQLite's write lock held by another connection, the webhook sender or
the sweep; a PostgreSQL round trip). A write waits on its own job's lock: other jobs' changes
go on meanwhile, the same job's next change waits its turn."""
from __future__ import annotations

import sqlite3
import threading

from comfy.jobs.job import Job, JobStatus
from comfy.jobs.store import JobStore
from tests.backends import sqlite_storage
from tests.helpers import wait_for

DEADLINE = 30.0  # seconds: only a deadlock reaches it


def new_store(tmp_path, wrap=lambda rows: rows) -> JobStore:
    store = JobStore(wrap(sqlite_storage(tmp_path).jobs))
    for n in range(3):
        job = Job(job_id=f"job-{n}", gpu_id=0, prompt_id=f"p-{n}", fingerprint="f",
                  status=JobStatus.HELD)
        store.reserve(job, b'{"1": {}}')
    return store


def in_thread(call) -> threading.Event:
    """Run `call` on a thread; the event is set when it returned."""
    done = threading.Event()

    def run() -> None:
        try:
            call()
        finally:
            done.set()
    threading.Thread(target=run, daemon=True).start()
    return done


def a_status_change(store: JobStore) -> threading.Event:
    """A websocket update of job-0 (it needs the store's lock), on a thread of its own."""
    return in_thread(lambda: store.change("job-0", lambda job: setattr(job, "nodes_done", 1)))


def test_a_workflow_read_does_not_hold_the_store(tmp_path):
    reading, release = threading.Event(), threading.Event()

    class SlowBlobs:
        """The job rows, their workflow reads held at a gate."""

        def __init__(self, rows):
            self._rows = rows

        def __getattr__(self, name):
            return getattr(self._rows, name)

        def workflow(self, job_id):
            reading.set()
            release.wait(DEADLINE)
            return self._rows.workflow(job_id)

    store = new_store(tmp_path, SlowBlobs)
    try:
        read = in_thread(lambda: store.workflow("job-1"))
        assert reading.wait(DEADLINE)
        changed = a_status_change(store)
        assert changed.wait(DEADLINE) and not read.is_set()  # done while the read still waits
        release.set()
        assert read.wait(DEADLINE)
        assert store.get("job-0").nodes_done == 1
    finally:
        release.set()


def test_a_listing_does_not_hold_the_store_for_its_walk(tmp_path):
    store = new_store(tmp_path)
    walking, release = threading.Event(), threading.Event()

    def match(job: Job) -> bool:
        walking.set()
        release.wait(DEADLINE)
        return True

    try:
        listed: list = []
        walk = in_thread(lambda: listed.append(store.page(None, None, 10, None, match)))
        assert walking.wait(DEADLINE)
        changed = a_status_change(store)
        assert changed.wait(DEADLINE) and not walk.is_set()
        release.set()
        assert walk.wait(DEADLINE)
        jobs, cursor = listed[0]
        assert [job.job_id for job in jobs] == ["job-2", "job-1", "job-0"] and cursor is None
        assert store.page(None, None, 2, None)[1] == store.get("job-1").seq  # next page
        assert [j.job_id for j in store.page(None, None, 2, store.get("job-1").seq)[0]] == ["job-0"]
    finally:
        release.set()


def test_a_busy_database_does_not_stall_status_reads(tmp_path):
    store = new_store(tmp_path)
    other = sqlite3.connect(str(tmp_path / "jobs.sqlite3"), isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # the sender or the sweep, mid-transaction
        changed = a_status_change(store)  # waits for SQLite's write lock, holding its job's
        wait_for(store._stripe("job-0").locked, DEADLINE, message="the change to hold job-0's lock")
        read = in_thread(lambda: store.get("job-2"))
        assert read.wait(DEADLINE)
        assert not changed.is_set()  # answered while the write still waited for SQLite
        other.execute("COMMIT")
        assert changed.wait(DEADLINE)
    finally:
        other.close()


def test_a_write_waiting_for_the_database_holds_up_no_other_job(tmp_path):
    writing, release = threading.Event(), threading.Event()
    written: list[tuple[str, int]] = []

    class GatedWrites:
        """The job rows, job-0's first write held at a gate (a slow round trip)."""

        def __init__(self, rows):
            self._rows = rows

        def __getattr__(self, name):
            return getattr(self._rows, name)

        def update(self, job, events=()):
            if job.job_id == "job-0" and job.nodes_done == 1:
                writing.set()
                release.wait(DEADLINE)
            done = self._rows.update(job, events)
            written.append((job.job_id, job.nodes_done))
            return done

    store = new_store(tmp_path, GatedWrites)
    try:
        first = a_status_change(store)
        assert writing.wait(DEADLINE)
        other = in_thread(lambda: store.change("job-1", lambda job: setattr(job, "nodes_done", 5)))
        assert other.wait(DEADLINE) and not first.is_set()  # done while job-0's write waits
        assert store.get("job-1").nodes_done == 5 and store.get("job-0").nodes_done == 0
        again = in_thread(lambda: store.change("job-0", lambda job: setattr(job, "nodes_done", 2)))
        release.set()
        assert first.wait(DEADLINE) and again.wait(DEADLINE)
        assert [w for w in written if w[0] == "job-0"] == [("job-0", 1), ("job-0", 2)]
        assert store.get("job-0").nodes_done == 2
    finally:
        release.set()

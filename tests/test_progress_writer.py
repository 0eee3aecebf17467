"""Running jobs' progress written to their rows off the websocket thread (comfy.jobs.progress),
on every backend: the row catches up at the writer's next step, a change of status writes
the progress with it, a row taken over drops the job, an unavailable database leaves the
write due, and the thread writes on its own and stops."""
from __future__ import annotations

import pytest

from comfy.jobs.job import Job, JobStatus
from comfy.jobs.progress import ProgressWriter
from comfy.jobs.store import JobStore
from comfy.tracking.events import finish, start_running
from cylindria.storage import StorageUnavailable
from tests.helpers import wait_for

OUTPUT = {"node_id": "9", "filename": "a.png", "subfolder": "", "type": "output"}


class Rows:
    """A store of record whose job updates can be counted, refused (a takeover raised the
    fence) or failed (the database is unavailable)."""

    def __init__(self, rows):
        self._rows = rows
        self.updates = 0
        self.refuse = self.fail = False

    def __getattr__(self, name):
        return getattr(self._rows, name)

    def update(self, job: Job, events=()) -> bool:
        if self.fail:
            raise StorageUnavailable("the database is unavailable")
        self.updates += 1
        return False if self.refuse else self._rows.update(job, events)


@pytest.fixture
def rows(backend):
    return Rows(backend.open().jobs)


@pytest.fixture
def store(rows):
    store = JobStore(rows)
    store.reserve(Job(job_id="j", gpu_id=0, prompt_id="p", fingerprint="f"), b"{}")
    store.release("j", "p")
    store.change("j", start_running)
    return store


def progressed(nodes: int):
    def edit(job: Job) -> None:
        job.nodes_done = nodes
        job.outputs = (OUTPUT,)
    return edit


def test_progress_reaches_the_row_at_the_writers_step_in_one_write(rows, store):
    writer = ProgressWriter(store)
    before = rows.updates
    for nodes in (1, 2, 3):  # a burst of messages
        store.change("j", progressed(nodes))
    assert store.get("j").nodes_done == 3  # answered from memory at once
    assert rows.updates == before and rows.get("j").nodes_done == 0  # the row is behind
    assert writer.write_once() == 1
    row = rows.get("j")
    assert rows.updates == before + 1 and row.nodes_done == 3 and row.outputs == (OUTPUT,)
    assert writer.write_once() == 0


def test_a_change_of_status_writes_the_progress_with_it(rows, store):
    writer = ProgressWriter(store)
    store.change("j", progressed(2))
    store.change("j", finish(JobStatus.COMPLETED))  # written at once, progress included
    row = rows.get("j")
    assert row.status == JobStatus.COMPLETED and row.outputs == (OUTPUT,)
    written = rows.updates
    assert writer.write_once() == 1 and rows.updates == written  # nothing left to write


def test_a_row_taken_over_meanwhile_drops_the_job(rows, store):
    writer = ProgressWriter(store)
    disowned = []
    store.on_disowned(disowned.append)
    store.change("j", progressed(1))
    rows.refuse = True  # the fence was raised: another node took the job over
    writer.write_once()
    assert store.get("j") is None and [job.job_id for job in disowned] == ["j"]


def test_an_unavailable_database_leaves_the_write_due(rows, store):
    writer = ProgressWriter(store)
    store.change("j", progressed(1))
    rows.fail = True
    with pytest.raises(StorageUnavailable):
        writer.write_once()
    rows.fail = False
    assert writer.write_once() == 1 and rows.get("j").nodes_done == 1


def test_the_thread_writes_by_itself_and_stops(rows, store):
    writer = ProgressWriter(store)
    writer.start()
    try:
        store.change("j", progressed(4))
        wait_for(lambda: rows.get("j").nodes_done == 4)
    finally:
        writer.stop()
    assert not writer._thread.is_alive()


def test_only_a_running_jobs_progress_waits(rows, store):
    """A change that is not progress alone (here: a status) is written before change()
    returns, whatever else it carries."""
    ProgressWriter(store)
    store.reserve(Job(job_id="k", gpu_id=0, prompt_id="q", fingerprint="f"), b"{}")
    store.release("k", "q")

    def queued_with_progress(job: Job) -> None:
        job.status = JobStatus.QUEUED
        job.nodes_done = 1
    store.change("k", queued_with_progress)
    assert rows.get("k").status == JobStatus.QUEUED and rows.get("k").nodes_done == 1

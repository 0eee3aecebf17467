"""The rows behind a fleet's cancel and job list, on every backend: `request_cancel` sets only the
flag of an unfinished job (and, on PostgreSQL, notifies its node in the same transaction, heard
by `cancel_listener`, also after a lost connection is listened again), `cancels_requested`
finds what a node was asked, `page` lists every node's jobs newest first with the filters of
/jobs, and JobStore.page shows this node's own jobs as held in memory."""
from __future__ import annotations

import dataclasses
import json
import time

import psycopg
import pytest

from comfy.jobs.job import Job, JobStatus
from comfy.jobs.store import JobStore
from cylindria.storage import StorageUnavailable
from cylindria.storage.postgres import LISTENER_NAME
from tests import workflows
from tests.backends import Backend

BODY = json.dumps({"prompt": workflows.core("fleet")}).encode()


def row(job_id: str, node: str | None, status=JobStatus.RUNNING, **fields) -> Job:
    """A job as a node wrote it."""
    values = dict(gpu_id=0, prompt_id=f"p-{job_id}", fingerprint="f", status=status,
                  submitted_at=time.time() - 10, submitted_by="alice", node=node)
    if status.finished:
        values.update(finished_at=time.time() - 5)
    values.update(fields)
    return Job(job_id=job_id, **values)


def test_request_cancel_sets_only_the_flag_of_an_unfinished_job(backend):
    rows = backend.open().jobs
    for job in (row("running", "a"), row("held", "a", JobStatus.HELD, gpu_id=None, prompt_id=None),
                row("theirs", "b"), row("ended", "a", JobStatus.COMPLETED)):
        rows.insert(job, BODY)
    before = {job_id: rows.get(job_id) for job_id in ("running", "held", "theirs", "ended")}

    assert rows.request_cancel("running") and rows.request_cancel("held")
    assert rows.request_cancel("running")  # asked again: still a cancel under way
    assert not rows.request_cancel("ended") and not rows.request_cancel("nope")
    for job_id in ("running", "held"):
        assert rows.get(job_id) == dataclasses.replace(before[job_id], cancel_requested=True)
    for job_id in ("theirs", "ended"):
        assert rows.get(job_id) == before[job_id]
    assert rows.cancels_requested("a") == ["running", "held"]  # oldest first
    assert rows.cancels_requested("b") == []

    rows.update(dataclasses.replace(before["running"], status=JobStatus.CANCELLED,
                                    finished_at=time.time(), cancel_requested=True))
    assert rows.cancels_requested("a") == ["held"]  # ended: nothing left to do


@pytest.fixture
def shared(postgres_cluster, tmp_path):
    """A fresh PostgreSQL store, the only one several nodes share (a host's SQLite file has
    one writer, so what follows has no SQLite counterpart)."""
    backend = Backend("postgresql", tmp_path / "data", postgres_cluster)
    yield backend
    backend.close()


def test_a_nodes_write_from_memory_never_takes_back_a_cancel_asked_in_its_row(shared):
    rows = shared.open().jobs
    assert rows.shared
    rows.insert(row("j", "a"), BODY)
    assert rows.request_cancel("j")
    rows.update(dataclasses.replace(rows.get("j"), cancel_requested=False, nodes_done=3))
    assert (rows.get("j").cancel_requested, rows.get("j").nodes_done) == (True, 3)


def test_the_node_hears_a_cancel_when_it_commits_and_after_listening_again(backend):
    storage = backend.open()
    listener = storage.cancel_listener("a")
    if not storage.jobs.shared:
        assert listener is None  # one host: no other node to ask anything
        return
    for job_id in ("first", "second"):
        storage.jobs.insert(row(job_id, "a"), BODY)
    storage.jobs.insert(row("ended", "a", JobStatus.FAILED), BODY)
    listener.listen()
    try:
        assert not storage.jobs.request_cancel("ended")  # nothing asked: nothing sent
        assert storage.jobs.request_cancel("first")
        assert listener.wait(30) == [("cylindria_cancel", "first")]

        terminate(backend.database, LISTENER_NAME.format(node="a"))
        with pytest.raises(StorageUnavailable):
            while True:  # the notices already received, then the lost connection
                listener.wait(30)
        assert storage.jobs.request_cancel("second")  # while no one listens: not replayed
        listener.listen()
        assert storage.jobs.cancels_requested("a") == ["first", "second"]  # the re-check's
        assert storage.jobs.request_cancel("second")
        assert listener.wait(30) == [("cylindria_cancel", "second")]
    finally:
        listener.close()


def terminate(url: str, application_name: str) -> None:
    """End the sessions of this name (what a database restart does to them)."""
    with psycopg.connect(url, autocommit=True) as conn:
        ended = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE application_name = %s AND datname = current_database()",
                             (application_name,)).fetchall()
    assert ended and all(flag for (flag,) in ended)


def test_page_lists_every_nodes_jobs_newest_first_with_the_filters(backend):
    rows = backend.open(retention=3600).jobs
    jobs = [row("a1", "a", JobStatus.COMPLETED), row("b1", "b", gpu_id=1, submitted_by="bob"),
            row("a2", "a", JobStatus.HELD, gpu_id=None, prompt_id=None),
            row("b2", "b", JobStatus.FAILED, submitted_by="bob"),
            row("gone", "a", JobStatus.COMPLETED, finished_at=time.time() - 7200),
            row("a3", "a")]
    seqs = {job.job_id: rows.insert(job, BODY) for job in jobs}

    def ids(*args, **kwargs) -> list[str]:
        return [job.job_id for job in rows.page(*args, **kwargs)]

    assert ids(None, None, 10, None) == ["a3", "b2", "a2", "b1", "a1"]  # past retention: not
    assert ids(None, None, 2, None) == ["a3", "b2"]
    assert ids(None, None, 2, seqs["b2"]) == ["a2", "b1"]  # a cursor: older than that seq
    assert ids(["running", "held"], None, 10, None) == ["a3", "a2", "b1"]
    assert ids(None, 1, 10, None) == ["b1"]
    assert ids(None, None, 10, None, submitted_by="bob") == ["b2", "b1"]
    assert ids(["failed"], 0, 10, None, submitted_by="bob") == ["b2"]
    assert ids(None, None, 10, None, submitted_by="nobody") == []
    assert ids(None, None, 10, None, submitted_by="\0nobody") == []  # the own key's "no one"
    [b1] = rows.page(None, 1, 1, None)
    assert b1 == dataclasses.replace(jobs[1], seq=seqs["b1"])


def test_a_fleet_nodes_page_shows_its_own_jobs_from_memory(shared):
    storage = shared.open()
    assert storage.jobs.shared  # one host's page is its memory's (tests/test_jobs_list.py)
    store = JobStore(storage.jobs, "a")
    for n in range(3):
        store.reserve(Job(f"a{n}", 0, f"pa{n}", "f"), BODY)
        storage.jobs.insert(row(f"b{n}", "b", submitted_by="bob" if n == 1 else "alice"), BODY)
    store.change("a1", lambda job: setattr(job, "status", JobStatus.RUNNING))
    store.change("a1", lambda job: setattr(job, "progress_value", 5.0))  # in memory only
    assert storage.jobs.get("a1").progress_value == 0.0

    page, cursor = store.page(None, None, 4, None)
    assert [job.job_id for job in page] == ["b2", "a2", "b1", "a1"]
    assert page[3] is store.get("a1")  # this node's own: the record in memory
    rest, end = store.page(None, None, 4, cursor)
    assert ([job.job_id for job in rest], end) == (["b0", "a0"], None)
    assert page[3].progress_value == 5.0
    running, _ = store.page({JobStatus.RUNNING}, None, 10, None)
    assert [job.job_id for job in running] == ["b2", "b1", "a1", "b0"]
    submitted, _ = store.page({JobStatus.SUBMITTING}, None, 10, None)
    assert [job.job_id for job in submitted] == ["a2", "a0"]
    bobs, _ = store.page(None, None, 10, None, submitted_by="bob")
    assert [job.job_id for job in bobs] == ["b1"]
    # `match` after the SQL filters, over as many batches as it takes
    first, cursor = store.page(None, None, 1, None, match=lambda job: job.job_id.endswith("0"))
    assert [job.job_id for job in first] == ["b0"] and cursor == first[0].seq
    second, end = store.page(None, None, 1, cursor, match=lambda job: job.job_id.endswith("0"))
    assert ([job.job_id for job in second], end) == (["a0"], None)

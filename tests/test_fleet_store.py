"""Several nodes on one store (on every backend): each loads only its own jobs and those written
before nodes existed (adopting these; a host's own SQLite file adopts every row), never
deletes another node's row under a submitted id but answers the submission with that job,
and reads another node's job from its row (PostgreSQL, the fleet's database) without ever
holding it."""
from __future__ import annotations

import dataclasses
import json
import time

import pytest

from comfy.dispatch.submit import JobIdConflict, SubmissionUnsettled, hold_job, submit_job
from comfy.inputs.workflow import parse_workflow
from comfy.jobs.job import Job, JobStatus
from comfy.jobs.recent import RecentRows
from comfy.jobs.store import JobStore
from cylindria.storage import StorageUnavailable
from tests import workflows

BODY = json.dumps({"prompt": workflows.core("fleet")}).encode()
WORKFLOW = parse_workflow(BODY)
OTHER = parse_workflow(json.dumps({"prompt": workflows.core("other")}).encode())


def row(job_id: str, node: str | None, status=JobStatus.COMPLETED, **fields) -> Job:
    """A job as another node (or a Cylindria from before nodes, node None) wrote it."""
    values = dict(gpu_id=0, prompt_id=f"p-{job_id}", fingerprint=WORKFLOW.fingerprint,
                  status=status, submitted_at=time.time() - 10, submitted_by="alice", node=node)
    if status.finished:
        values.update(finished_at=time.time() - 5, outputs=({"filename": "x.png"},))
    values.update(fields)
    return Job(job_id=job_id, **values)


def test_a_node_loads_its_own_jobs_and_adopts_those_of_no_node(backend):
    rows = backend.open().jobs
    for job_id, node in (("mine", "a"), ("theirs", "b"), ("old", None)):
        rows.insert(row(job_id, node, JobStatus.QUEUED), BODY)
    assert {job.job_id for job in rows.load("a")} == {"mine", "old"}  # old: of no node yet

    store = JobStore(rows, "a")
    if not rows.shared:  # one host's file: its rows under another name are the host's own
        assert {(job.job_id, job.node) for job in store.jobs()} == \
            {("mine", "a"), ("old", "a"), ("theirs", "a")}
        assert rows.get("theirs").node == "a"
        return
    assert {job.job_id for job in store.jobs()} == {"mine", "old"}
    assert store.get("old").node == "a" and rows.get("old").node == "a"  # adopted in the row
    assert store.get("theirs") is None and rows.get("theirs").node == "b"
    assert rows.adopt("b") == 0  # taken once: the second node to start finds none
    assert {job.job_id for job in JobStore(backend.open().jobs, "b").jobs()} == {"theirs"}


def test_a_node_creates_jobs_as_its_own(backend):
    rows = backend.open().jobs
    store = JobStore(rows, "a")
    store.reserve(Job("pinned", 0, "p", "f"), BODY)
    hold_job(store, "auto", WORKFLOW, 0, max_queued=10)
    # On the fleet's database a held GpuId=auto job is in the shared queue: of no node.
    auto = None if rows.shared else "a"
    assert {(job.job_id, job.node) for job in store.jobs()} == {("pinned", "a"), ("auto", auto)}
    reopened = backend.open().jobs
    assert {(job.job_id, job.node) for job in reopened.load("a")} == {("pinned", "a"), ("auto", auto)}


def test_another_nodes_row_under_a_submitted_id_is_the_job_never_replaced(backend):
    storage = backend.open()
    store = JobStore(storage.jobs, "a")
    theirs = row("j", "b", JobStatus.RUNNING)
    storage.jobs.insert(theirs, BODY)

    existing, created = store.reserve(Job("j", 0, "p-mine", WORKFLOW.fingerprint), b"{}")
    assert not created and (existing.node, existing.prompt_id) == ("b", "p-j")
    assert storage.jobs.get("j") == dataclasses.replace(theirs, seq=existing.seq)  # intact
    assert storage.jobs.workflow("j") == BODY
    assert store.get("j") is None and list(store.jobs()) == []  # never held here
    assert submit_job(store, [], "j", WORKFLOW, 0)[0].prompt_id == "p-j"  # a retry's 200
    assert hold_job(store, "j", WORKFLOW, 0, max_queued=10) == (existing, False)
    with pytest.raises(JobIdConflict):  # another workflow under its id: 409 as on one host
        submit_job(store, [], "j", OTHER, 0)
    with pytest.raises(JobIdConflict):
        hold_job(store, "j", OTHER, 0, max_queued=10)
    assert storage.jobs.get("j").prompt_id == "p-j" and storage.jobs.workflow("j") == BODY


def test_a_job_another_node_is_still_submitting_is_left_to_it(backend):
    """Only the node that POSTed it can settle it with its ComfyUI: a retry here is told to
    come back (no GPU of this node is asked: there are none)."""
    storage = backend.open()
    store = JobStore(storage.jobs, "a")
    storage.jobs.insert(row("s", "b", JobStatus.SUBMITTING), BODY)
    with pytest.raises(SubmissionUnsettled):
        submit_job(store, [], "s", WORKFLOW, 0)
    assert storage.jobs.get("s").status is JobStatus.SUBMITTING


def test_a_row_of_no_node_under_a_submitted_id_is_not_replaced_either(backend):
    """Written by a Cylindria from before nodes after this one adopted the others: not ours."""
    storage = backend.open()
    store = JobStore(storage.jobs, "a")
    storage.jobs.insert(row("old", None), BODY)
    existing, created = store.reserve(Job("old", 0, "p-new", WORKFLOW.fingerprint), b"{}")
    assert not created and existing.prompt_id == "p-old"
    assert storage.jobs.get("old").prompt_id == "p-old"


def test_any_node_reads_another_nodes_job_from_the_fleets_database(backend):
    storage = backend.open()
    store = JobStore(storage.jobs, "a")
    storage.jobs.insert(row("theirs", "b"), BODY)
    store.reserve(Job("mine", 0, "p", "f"), b"{}")
    assert store.lookup("mine") is store.get("mine")
    assert store.lookup("missing") is None
    if not storage.jobs.shared:  # SQLite is one host's: what it holds is in memory
        assert store.lookup("theirs") is None
        return
    found = store.lookup("theirs")
    assert (found.node, found.status, found.outputs) == ("b", JobStatus.COMPLETED, ({"filename": "x.png"},))
    assert store.get("theirs") is None and "theirs" not in {job.job_id for job in store.jobs()}


class Failing:
    """Rows whose reads by id fail (the database went away after the start)."""

    def __init__(self, rows):
        self._rows = rows

    def get(self, job_id: str):
        raise StorageUnavailable("the database went away")

    def __getattr__(self, name):
        return getattr(self._rows, name)


def test_a_job_held_here_is_answered_while_the_database_is_down(backend):
    rows = backend.open().jobs
    store = JobStore(Failing(rows), "a")
    store.reserve(Job("mine", 0, "p", "f"), b"{}")
    assert store.lookup("mine").job_id == "mine"
    if rows.shared:
        with pytest.raises(StorageUnavailable):
            store.lookup("unknown")


def test_rows_read_are_answered_for_a_second_then_read_again():
    now = [100.0]
    recent = RecentRows(fresh_for=1.0, size=3, clock=lambda: now[0])
    job = row("x", "b", JobStatus.RUNNING)
    recent.put("x", job)
    recent.put("gone", None)
    assert recent.get("x") == (True, job) and recent.get("gone") == (True, None)
    now[0] += 0.99
    assert recent.get("x") == (True, job)
    now[0] += 0.02
    assert recent.get("x") == (False, None)


def test_a_storm_of_distinct_ids_keeps_only_the_newest_rows():
    now = [0.0]
    recent = RecentRows(fresh_for=1.0, size=3, clock=lambda: now[0])
    for n in range(10):
        recent.put(f"id-{n}", None)
    assert [recent.get(f"id-{n}")[0] for n in range(10)] == [False] * 7 + [True] * 3
    now[0] = 5.0
    recent.put("later", None)  # the stale ones go
    assert len(recent) == 1



def test_a_final_row_is_answered_for_a_minute_a_lost_one_for_a_second():
    """completed/failed/cancelled never change (a lost job may still get its true end)."""
    now = [100.0]
    recent = RecentRows(fresh_for=1.0, size=10, clock=lambda: now[0], settled_for=60.0)
    done, lost = row("done", "b"), row("lost", "b", JobStatus.LOST)
    recent.put("done", done)
    recent.put("lost", lost)
    now[0] += 1.5
    assert recent.get("done") == (True, done) and recent.get("lost") == (False, None)
    now[0] += 60.0
    assert recent.get("done") == (False, None)

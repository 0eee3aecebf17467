"""The fleet's shared queue in the store (PostgreSQL only: one host's SQLite file has no other
node): a GpuId=auto job held on the fleet's database is of no node, every node's store holds
it (taken in at start or from a notice), one claim of it wins (SKIP LOCKED, only while still
held) and the loser drops it from memory, the database untouched; a requeued auto job goes
back to the shared queue; the notices say so."""
from __future__ import annotations

import json
import threading
import time

import pytest

from comfy.dispatch.held import back_to_queue, cancel_held, claim
from comfy.jobs.job import Job, JobStatus
from comfy.jobs.store import JobStore
from tests import workflows
from tests.backends import Backend

BODY = json.dumps({"prompt": workflows.core("queue")}).encode()
WAIT = 30


@pytest.fixture
def shared(postgres_cluster, tmp_path):
    """Two stores, nodes a and b, on one fresh PostgreSQL database: (storage, a, b)."""
    backend = Backend("postgresql", tmp_path / "data", postgres_cluster)
    storage = backend.open()
    yield storage, JobStore(storage.jobs, "a"), JobStore(storage.jobs, "b")
    backend.close()


def held(job_id: str, **fields) -> Job:
    job = Job(job_id=job_id, gpu_id=None, prompt_id=None, fingerprint="f",
              status=JobStatus.HELD, auto=True, submitted_at=time.time(), **fields)
    job.held_at = job.submitted_at
    return job


def test_an_auto_job_is_in_the_shared_queue_and_every_node_holds_it(shared):
    storage, a, b = shared
    job, created = a.reserve(held("q"), BODY)
    assert created and job.node is None and storage.jobs.get("q").node is None
    assert a.held_here() == (0, 1)
    assert b.get("q") is None and b.take_in("q")  # the notice b hears
    assert b.get("q").status == JobStatus.HELD and b.held_here() == (0, 1)
    late = JobStore(storage.jobs, "c")  # a node started later loads it, never adopts it
    assert late.get("q").node is None and storage.jobs.get("q").node is None
    pinned, _ = a.reserve(Job(job_id="p", gpu_id=0, prompt_id=None, fingerprint="f",
                              status=JobStatus.HELD, submitted_at=time.time()), BODY)
    assert pinned.node == "a" and a.held_here() == (1, 1) and not b.take_in("p")
    assert a.in_shared_queue("q") and b.in_shared_queue("q") and not a.in_shared_queue("p")


def test_one_of_two_claims_wins_and_the_loser_forgets_the_job(shared):
    storage, a, b = shared
    for n in range(20):
        job_id = f"race{n}"
        a.reserve(held(job_id), BODY)
        assert b.take_in(job_id)
        barrier = threading.Barrier(2)
        results = {}

        def send(store: JobStore, name: str) -> None:
            barrier.wait(WAIT)
            results[name] = store.change(job_id, claim(0, f"p-{name}-{n}"), sending=True)

        threads = [threading.Thread(target=send, args=(store, name))
                   for store, name in ((a, "a"), (b, "b"))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        won = [name for name, job in results.items()
               if job is not None and job.status == JobStatus.SUBMITTING]
        assert len(won) == 1, results
        winner, loser = (a, b) if won == ["a"] else (b, a)
        row = storage.jobs.get(job_id)
        assert (row.status, row.node, row.prompt_id) == (JobStatus.SUBMITTING, won[0],
                                                          f"p-{won[0]}-{n}")
        assert winner.get(job_id).node == won[0]
        assert loser.get(job_id) is None  # dropped from memory, the row left alone
        assert not winner.forget_shared(job_id)  # the taken notice never drops the claimer's own
        winner.release(job_id, row.prompt_id)
    assert a.held_here() == b.held_here() == (0, 0)


def test_a_taken_notice_drops_the_job_and_a_requeue_puts_it_back_in_the_shared_queue(shared):
    storage, a, b = shared
    a.reserve(held("r"), BODY)
    assert b.take_in("r")
    job = a.change("r", claim(0, "p1"), sending=True)
    a.release("r", "p1")
    assert job.node == "a" and b.forget_shared("r") and b.get("r") is None
    again = a.change("r", back_to_queue(counted=True), prompt_id="p1")
    assert (again.status, again.node) == (JobStatus.HELD, None)
    assert storage.jobs.get("r").node is None and a.held_here() == (0, 1)
    assert b.take_in("r") and b.get("r").attempts == 1
    claimed = b.change("r", claim(0, "p2"), sending=True)  # b runs the second attempt
    assert (claimed.node, claimed.attempts) == ("b", 2)
    assert a.change("r", claim(0, "p3"), sending=True) is None and a.get("r") is None


def test_a_cancel_of_a_shared_job_is_fenced_like_a_claim(shared):
    storage, a, b = shared
    a.reserve(held("c"), BODY)
    assert b.take_in("c")
    assert cancel_held(b, b.get("c")).status == JobStatus.CANCELLED
    row = storage.jobs.get("c")
    assert (row.status, row.node) == (JobStatus.CANCELLED, "b")
    assert a.change("c", claim(0, "p"), sending=True) is None  # the row is not held: lost
    assert a.get("c") is None


def test_the_listener_hears_a_job_enter_and_leave_the_shared_queue(shared):
    storage, a, b = shared
    listener = storage.cancel_listener("b")
    listener.listen()
    try:
        a.reserve(held("n"), BODY)
        assert listener.wait(WAIT) == [("cylindria_held", "n")]
        b.take_in("n")
        a.change("n", claim(0, "p"), sending=True)
        assert listener.wait(WAIT) == [("cylindria_taken", "n")]
    finally:
        listener.close()


def test_a_resync_takes_in_what_was_missed_and_drops_what_was_taken(shared):
    storage, a, b = shared
    for job_id in ("x", "y"):
        a.reserve(held(job_id), BODY)
        b.take_in(job_id)
    a.change("x", claim(0, "px"), sending=True)  # b misses the notice
    a.reserve(held("z"), BODY)  # and this one's
    b.resync_shared()
    assert b.get("x") is None and b.get("y") is not None and b.get("z") is not None
    assert b.held_here() == (0, 2)

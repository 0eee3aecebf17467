"""Failover in the store, on both backends (SQLite: the same statements, a fleet of one never
strands a node of its own): a node whose lease ended is taken over once, by one node, in one
transaction (GpuId=auto jobs back in the queue with their attempt counted, or lost once out of
attempts; pinned jobs left to wait --requeue-wait, then lost; each event written once); every
write of the old owner names its fence and changes nothing once the job was taken; the old
owner, back, lets go of what was taken; a renewal racing a takeover either comes first (nothing
taken) or learns it was taken over."""
from __future__ import annotations

import json
import threading
import time

import psycopg
import pytest

from comfy.dispatch.held import claim
from comfy.jobs.job import Job, JobStatus
from comfy.jobs.store import JobStore
from comfy.tracking.events import finish, start_running
from cylindria.fleet.takeover import Takeover, rework
from cylindria.storage import OutboxRow, Taken
from tests import workflows
from tests.helpers import wait_for

BODY = json.dumps({"prompt": workflows.core("failover")}).encode()
HOOK = "http://127.0.0.1:9/hook"
WAIT = 30
HELD, QUEUED, RUNNING, LOST = (JobStatus.HELD, JobStatus.QUEUED, JobStatus.RUNNING,
                               JobStatus.LOST)


class Fleet:
    """Nodes a and b on one store: a holds jobs and then stops renewing; b takes over."""

    def __init__(self, storage):
        self.storage, self.rows = storage, storage.jobs
        # Both stores before any job: a store's start on SQLite adopts every row of the file.
        self.a, self.b = JobStore(self.rows, "a"), JobStore(self.rows, "b")
        self.events: list[str] = []
        self.b.commit_with(self.event)
        self.disowned: list[str] = []
        self.a.on_disowned(lambda job: self.disowned.append(job.job_id))
        for name in ("a", "b"):
            storage.nodes.renew(name, "", 10.0, "", "{}")

    def event(self, old: Job, new: Job) -> list[OutboxRow]:
        """b's companion: one event per end (as the webhooks' outbox writes them)."""
        if not new.status.finished:
            return []
        self.events.append(new.job_id)
        return [OutboxRow(f"e{len(self.events)}", new.job_id, HOOK, f"job.{new.status.value}",
                          b"{}", time.time(), due_at=time.time())]

    def strand(self) -> None:
        """a stops renewing: its lease (of no length) has ended once the clock has moved."""
        self.storage.nodes.renew("a", "", 0.0, "", "{}")
        wait_for(lambda: not self.storage.nodes.all()[0].live, message="a's lease to end")

    def taker(self, requeue_wait: float = 300.0, max_attempts: int = 3) -> Takeover:
        return Takeover(self.rows, self.b, [], requeue_wait=requeue_wait,
                        max_attempts=max_attempts)

    def running_auto(self, job_id: str, attempts: int = 0) -> Job:
        """An auto job a sent (attempt attempts + 1) and runs."""
        job = Job(job_id, None, None, "f", HELD, submitted_at=time.time(), auto=True,
                  attempts=attempts, webhook=HOOK)
        job.held_at = job.submitted_at
        self.a.reserve(job, BODY)
        self.a.change(job_id, claim(0, f"p-{job_id}"), sending=True)
        self.a.release(job_id, f"p-{job_id}")
        return self.a.change(job_id, start_running)

    def pinned(self, job_id: str, status: JobStatus = QUEUED) -> Job:
        """A job pinned to a's GPU 0, accepted by its ComfyUI (or still being sent)."""
        job, _ = self.a.reserve(Job(job_id, 0, f"p-{job_id}", "f", attempts=1, webhook=HOOK),
                                BODY)
        if status == JobStatus.SUBMITTING:
            return job
        self.a.release(job_id, f"p-{job_id}")
        return self.a.change(job_id, lambda j: setattr(j, "status", status))

    def row(self, job_id: str) -> Job:
        return self.rows.get(job_id)

    def events_of(self, job_id: str) -> list[str]:
        return [e.event for e in self.storage.outbox.of_job(job_id, HOOK)]


@pytest.fixture
def fleet(backend):
    return Fleet(backend.open())


def test_a_stranded_nodes_jobs_are_taken_over_once(fleet):
    auto, spent = fleet.running_auto("auto"), fleet.running_auto("spent", attempts=2)
    fleet.pinned("pinned")
    taker = fleet.taker()
    assert fleet.rows.stranded() == [] and taker.tick() == 0  # a's lease holds
    fleet.strand()
    assert fleet.rows.stranded() == ["a"]

    assert taker.tick() == 2  # the pinned job waits for a
    row = fleet.row("auto")
    assert (row.status, row.node, row.gpu_id, row.prompt_id, row.attempts, row.fence) == \
        (HELD, None, None, None, 1, 1)
    assert row.held_at >= auto.submitted_at and row.started_at is None
    row = fleet.row("spent")  # sent --max-attempts times already
    assert (row.status, row.node, row.attempts, row.fence, row.error["type"]) == \
        (LOST, "b", 3, 1, "lost")
    assert "node a stopped renewing its lease" in row.error["message"]
    row = fleet.row("pinned")
    assert (row.status, row.node, row.fence) == (QUEUED, "a", 0)
    assert fleet.rows.taken_from("a") == [Taken("auto", 1, 0, "p-auto"),
                                          Taken("spent", 1, 0, "p-spent")]

    assert taker.tick() == 0  # taken once: nothing left to take but what waits
    assert fleet.taker(requeue_wait=0.0).tick() == 1  # waited long enough: lost
    row = fleet.row("pinned")
    assert (row.status, row.node, row.fence) == (LOST, "b", 1)
    assert "did not come back within 0s" in row.error["message"]
    assert fleet.rows.stranded() == []
    assert fleet.events == ["spent", "pinned"]
    assert fleet.events_of("spent") == ["job.lost"] and fleet.events_of("auto") == []
    assert spent.node == "a"


def test_a_takeover_is_told_the_time_since_the_lease_ended(fleet):
    """What a pinned job's --requeue-wait is measured by: the seconds since the node's lease
    ended, not since its last renewal (nor that plus the lease, which lost pinned jobs as soon
    as a lease of more than half their wait ended)."""
    fleet.pinned("pinned")
    renewed = time.time()
    fleet.storage.nodes.renew("a", "", 1.0, "", "{}")
    wait_for(lambda: fleet.rows.stranded() == ["a"], message="a's lease to end")
    told = []
    assert fleet.rows.take_over("a", lambda job, ended_for: told.append(ended_for)) == []
    [ended_for] = told  # the job waits (None): nothing taken
    assert 0.0 < ended_for <= time.time() - renewed - 1.0


def test_the_old_owners_writes_change_nothing_once_taken(fleet):
    fleet.running_auto("auto")
    fleet.pinned("pinned")
    fleet.pinned("unsent", status=JobStatus.SUBMITTING)  # a's POST under way as a stops
    stale = {job_id: fleet.a.get(job_id) for job_id in ("auto", "pinned", "unsent")}
    fleet.strand()
    assert fleet.taker(requeue_wait=0.0).tick() == 3
    taken = {job_id: fleet.row(job_id) for job_id in stale}

    assert fleet.a.change("auto", finish(JobStatus.COMPLETED)) is None
    assert fleet.a.change("pinned", start_running) is None
    assert not fleet.a.discard("unsent", "p-unsent")  # a row taken over is never deleted
    assert fleet.disowned == ["auto", "pinned", "unsent"]
    for job_id, row in taken.items():
        assert fleet.a.get(job_id) is None  # let go of, read from its row like another's
        assert fleet.a.lookup(job_id) == row or not fleet.rows.shared
        assert fleet.row(job_id) == row, job_id  # nothing written
        assert not fleet.rows.update(stale[job_id])
        assert not fleet.rows.claim_held(stale[job_id])
        assert not fleet.rows.delete(stale[job_id])
        assert fleet.row(job_id) == row
    # A retry of the submission on a meets the job as the fleet left it, never a new run.
    again, created = fleet.a.reserve(Job("unsent", 0, "p-again", "f", attempts=1), BODY)
    assert not created and (again.status, again.node) == (LOST, "b")
    assert fleet.events_of("auto") == [] and fleet.events_of("pinned") == ["job.lost"]


def test_the_old_owner_back_lets_go_of_what_was_taken(fleet):
    fleet.running_auto("auto")
    fleet.running_auto("kept")
    fleet.strand()
    assert fleet.taker().tick() == 2
    back = Takeover(fleet.rows, fleet.a, [], requeue_wait=300.0)
    fleet.storage.nodes.renew("a", "", 10.0, "", "{}")
    # a claims "kept" again before it lets go: its copy is the row's, of the new fence
    assert fleet.a.let_go("kept", 1).fence == 0
    if fleet.rows.shared:
        assert fleet.a.take_in("kept")
        fleet.a.change("kept", claim(0, "p-kept-2"), sending=True)
        assert fleet.a.get("kept").fence == 1
    assert fleet.a.get("auto") is not None
    assert back.tick() == 0
    assert fleet.rows.taken_from("a") == []
    if fleet.rows.shared:  # its stale copy dropped, the job held here as the fleet's queue's
        assert fleet.a.in_shared_queue("auto") and fleet.a.get("auto").fence == 1
    else:
        assert fleet.a.get("auto") is None
    assert fleet.disowned == []  # told by the records, not by a refused write
    if fleet.rows.shared:
        assert (fleet.a.get("kept").attempts, fleet.a.get("kept").node) == (2, "a")


def test_a_takeover_record_goes_with_its_job_at_retention(fleet):
    """The records of what was taken from a node that never comes back do not pile up: the
    retention sweep deletes them with their jobs."""
    fleet.running_auto("gone")
    fleet.running_auto("young")
    fleet.strand()
    assert fleet.taker(max_attempts=1).tick() == 2  # both lost: out of attempts
    assert [t.job_id for t in fleet.rows.taken_from("a")] == ["gone", "young"]
    seq = fleet.row("gone").seq
    assert fleet.rows.delete_expired([seq], time.time() + 1) == {(0, LOST): 1}
    assert [t.job_id for t in fleet.rows.taken_from("a")] == ["young"]


def lock_waiters(database: str) -> int:
    """Sessions of this database waiting for a lock another holds (PostgreSQL)."""
    with psycopg.connect(database, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                            "AND datname = current_database()").fetchone()[0]


def test_a_renewal_racing_a_takeover_waits_and_learns_it_was_taken_over(fleet, backend):
    fleet.running_auto("auto")
    fleet.strand()
    inside, go = threading.Event(), threading.Event()

    def paused(job: Job, ended_for: float):
        inside.set()  # the takeover holds a's row and its jobs' rows now
        assert go.wait(WAIT)
        return rework("b", "a", job, ended_for, 300.0, 3), []

    results: dict = {}
    threads = [threading.Thread(target=lambda: results.update(
                   taken=fleet.rows.take_over("a", paused))),
               threading.Thread(target=lambda: inside.wait(WAIT) and results.update(
                   renewed=fleet.storage.nodes.renew("a", "", 10.0, "", "{}"))),
               threading.Thread(target=lambda: inside.wait(WAIT) and results.update(
                   written=fleet.a.change("auto", finish(JobStatus.COMPLETED)))),
               threading.Thread(target=lambda: inside.wait(WAIT) and results.update(
                   second=fleet.taker().take_over("a")))]  # another taker at once
    for thread in threads:
        thread.start()
    assert inside.wait(WAIT)
    if backend.database is not None:  # both wait on the rows the takeover holds
        wait_for(lambda: lock_waiters(backend.database) >= 2,
                 message="the renewal and the write to wait on the takeover's row locks")
    else:  # SQLite: a writer waiting for the one write lock shows nowhere to be waited for
        time.sleep(0.3)
    assert "renewed" not in results and "written" not in results
    go.set()
    for thread in threads:
        thread.join(WAIT)
    assert [new.status for _, new in results["taken"]] == [HELD]
    assert results["renewed"] is True  # and a lets go of what was taken
    assert results["written"] is None and fleet.row("auto").status == HELD
    assert results["second"] == []  # one taker only
    assert fleet.rows.take_over("a", paused) == []  # a's lease holds again


def test_a_renewal_first_leaves_the_node_its_jobs(fleet):
    fleet.running_auto("auto")
    fleet.strand()
    fleet.storage.nodes.renew("a", "", 10.0, "", "{}")  # back before anyone took it over
    assert fleet.rows.stranded() == [] and fleet.taker().take_over("a") == []
    assert fleet.a.change("auto", finish(JobStatus.COMPLETED)).status == JobStatus.COMPLETED


def test_a_node_stopped_cleanly_is_given_one_lease_to_come_back(fleet):
    fleet.running_auto("auto")
    fleet.storage.nodes.renew("a", "", 3.0, "", "{}")
    fleet.storage.nodes.leave("a")  # not live at once (the fleet's view), its jobs kept a lease
    assert not fleet.storage.nodes.all()[0].live
    assert fleet.rows.stranded() == [] and fleet.taker().take_over("a") == []
    wait_for(lambda: fleet.rows.stranded() == ["a"], message="a's lease after it left to end")
    assert len(fleet.taker().take_over("a")) == 1


def test_a_renewal_under_way_is_never_waited_for(fleet, backend):
    if backend.database is None:
        pytest.skip("one writer at a time on SQLite: a takeover waits its turn")
    fleet.running_auto("auto")
    fleet.strand()
    with psycopg.connect(backend.database) as renewing:  # a's renewal, between its statements
        renewing.execute("SELECT 1 FROM nodes WHERE name = 'a' FOR UPDATE")
        assert fleet.taker().take_over("a") == []
    assert len(fleet.taker().take_over("a")) == 1


def test_a_job_back_in_the_shared_queue_runs_its_second_attempt_anywhere(fleet, backend):
    if backend.database is None:
        pytest.skip("the shared queue is the fleet's database's")
    fleet.running_auto("auto")
    listener = fleet.storage.cancel_listener("b")
    listener.listen()
    try:
        fleet.strand()
        assert fleet.taker().tick() == 1
        assert listener.wait(WAIT) == [("cylindria_held", "auto")]
    finally:
        listener.close()
    assert fleet.b.take_in("auto") and fleet.b.in_shared_queue("auto")
    again = fleet.b.change("auto", claim(0, "p-auto-2"), sending=True)
    assert (again.node, again.attempts, again.fence, again.prompt_id) == ("b", 2, 1, "p-auto-2")

"""How the PostgreSQL backend uses its connections: autocommit (a call of one statement is one
round trip; several run in one explicit transaction), a transaction left idle by a frozen
process ended by the server (its row locks freed), and a claim bringing back the workflow
its node reads next."""
from __future__ import annotations

import threading
import time

import psycopg
import pytest

from comfy.dispatch.held import claim
from comfy.jobs.job import Job, JobStatus
from comfy.jobs.store import JobStore
from cylindria.storage import StorageUnavailable, postgres, records
from tests.backends import Backend
from tests.helpers import wait_for

WAIT = 30


@pytest.fixture
def backend(postgres_cluster, tmp_path):
    backend = Backend("postgresql", tmp_path / "data", postgres_cluster)
    yield backend
    backend.close()


def held(job_id: str) -> Job:
    job = Job(job_id=job_id, gpu_id=None, prompt_id=None, fingerprint="f",
              status=JobStatus.HELD, auto=True, submitted_at=time.time())
    job.held_at = job.submitted_at
    return job


def test_pooled_connections_are_in_autocommit_with_an_idle_transaction_limit(backend):
    storage = backend.open()
    with storage._pool.connection() as conn:
        assert conn.autocommit
        shown = conn.execute("SHOW idle_in_transaction_session_timeout").fetchone()[0]
    assert shown == f"{postgres.IDLE_IN_TRANSACTION // 1000}s"


def test_a_url_that_sets_the_limit_keeps_its_own(backend):
    url = f"{backend.database}?options=-c%20idle_in_transaction_session_timeout%3D7s"
    storage = postgres.PostgresStorage(url)
    try:
        with storage._pool.connection() as conn:
            assert conn.execute("SHOW idle_in_transaction_session_timeout").fetchone()[0] == "7s"
    finally:
        storage.close()


def test_a_transaction_a_frozen_process_left_open_stops_holding_its_row(backend, monkeypatch):
    """A node frozen (SIGSTOP) inside a transaction holds the rows it locked: the server ends
    that transaction once it has been idle IDLE_IN_TRANSACTION, and a write waiting on the
    row (a takeover's, here an update) then lands."""
    monkeypatch.setattr(postgres, "IDLE_IN_TRANSACTION", 300)
    storage = backend.open()
    store = JobStore(storage.jobs)
    store.reserve(Job(job_id="j", gpu_id=0, prompt_id="p", fingerprint="f"), b"{}")
    frozen = storage._pool.getconn()
    try:
        frozen.execute("BEGIN")
        frozen.execute("SELECT 1 FROM jobs WHERE job_id = 'j' FOR UPDATE")
        landed = []
        writer = threading.Thread(target=lambda: landed.append(
            storage.jobs.update(store.get("j"))), daemon=True)
        writer.start()
        writer.join(WAIT)
        assert landed == [True]
        with pytest.raises(psycopg.Error):
            frozen.execute("SELECT 1")  # its session was ended by the server
    finally:
        storage._pool.putconn(frozen)


def test_a_claim_brings_back_the_workflow_read_next(backend):
    storage = backend.open()
    a, b = JobStore(storage.jobs, "a"), JobStore(storage.jobs, "b")
    a.reserve(held("q"), b'{"prompt": {}}')
    assert b.take_in("q")
    assert b.change("q", claim(0, "p-b"), sending=True).node == "b"
    assert storage.jobs._claimed.pop("q") == b'{"prompt": {}}'  # kept by the claim
    assert storage.jobs.workflow("q") == b'{"prompt": {}}'  # then read from its row


def test_claimed_workflows_are_few_and_short_lived(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(postgres.time, "monotonic", lambda: now[0])
    kept = postgres._Claimed(2, 10.0)
    for n in range(3):
        kept.put(f"j{n}", b"body%d" % n)
    assert kept.pop("j0") is None  # the oldest went past the size
    assert kept.pop("j1") == b"body1" and kept.pop("j1") is None  # read once
    now[0] += 10.0
    assert kept.pop("j2") is None  # too old: its job may have been replaced since


def idle_in_transaction(database: str, longer_than: float = 0.0) -> int:
    """Sessions of this database idle inside a transaction (for longer than that)."""
    with psycopg.connect(database, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                            "current_database() AND state = 'idle in transaction' AND "
                            "clock_timestamp() - state_change > make_interval(secs => %s)",
                            (longer_than,)).fetchone()[0]


def test_a_session_the_server_ended_is_an_outage_and_writes_nothing(backend, monkeypatch):
    """A node that froze inside a takeover's transaction finds, woken, its session ended by
    the server: StorageUnavailable (as for a lost connection), nothing of it written."""
    monkeypatch.setattr(postgres, "IDLE_IN_TRANSACTION", 300)
    storage = backend.open()
    JobStore(storage.jobs, "a").reserve(Job(job_id="j", gpu_id=0, prompt_id="p",
                                            fingerprint="f"), b"{}")
    storage.nodes.renew("a", "", 0.0, "", "{}")  # a lease of no length
    wait_for(lambda: storage.jobs.stranded() == ["a"], message="a's lease to end")

    def frozen(job: Job, lease_ended: float):
        wait_for(lambda: idle_in_transaction(backend.database), message="the taker idle")
        wait_for(lambda: not idle_in_transaction(backend.database), message="its session ended")
        job.status = JobStatus.LOST
        return job, []
    with pytest.raises(StorageUnavailable):
        storage.jobs.take_over("a", frozen)
    row = storage.jobs.get("j")
    assert (row.status, row.fence) == (JobStatus.SUBMITTING, 0)
    assert storage.jobs.take_over("a", lambda job, ended: None) == []  # the pool works on


def test_a_file_read_waits_on_its_reader_past_the_limit(backend, monkeypatch, tmp_path):
    """A reading transaction locks nothing: a slow reader of an asset's bytes (or of `db
    copy`'s source) is never cut off by IDLE_IN_TRANSACTION."""
    monkeypatch.setattr(postgres, "IDLE_IN_TRANSACTION", 300)
    storage = backend.open()
    content = tmp_path / "file"
    data = bytes(range(256)) * (2 * records.CHUNK_BYTES // 256 + 1)
    content.write_bytes(data)
    storage.assets.add_file("h1", len(data), "application/octet-stream", content)
    chunks = storage.assets.read_file("h1")
    read = [next(chunks)]
    wait_for(lambda: idle_in_transaction(backend.database, longer_than=0.6),
             message="the reading transaction idle past the limit")
    read += list(chunks)
    assert b"".join(read) == data


def test_a_call_that_reaches_no_database_ends_no_outage(backend):
    """A workflow kept from its claim, or nothing to delete, touch no database: during an
    outage they must not log it over (the next failing call would log it again)."""
    storage = backend.open()
    storage.jobs._health.failed(RuntimeError("down"))
    storage.jobs._claimed.put("q", b"{}")
    assert storage.jobs.workflow("q") == b"{}"
    assert storage.jobs.delete_expired([], 0.0) == {}
    assert storage.jobs._health.down

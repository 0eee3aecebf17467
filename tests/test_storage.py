"""The storage seam: what every backend promises (a held job claimed once, a write that fails
changes nothing, a row left by an unacknowledged write, schema versions), the SQLite data dirs
of earlier versions, and PostgreSQL's own (SKIP LOCKED, a URL never shown with its password)."""
from __future__ import annotations

import dataclasses
import sqlite3
import subprocess
import sys
import time

import psycopg
import pytest

from comfy.jobs.job import Job, JobStatus
from comfy.jobs.store import JobStore
from cylindria.config.options import ConfigError, load_config
from cylindria.service.core import build_core
from cylindria.storage import JobIdTaken, OutboxRow, StorageUnavailable, Taken, open_url
from cylindria.storage.postgres import SCHEMA_VERSION as POSTGRES_VERSION, shown
from cylindria.storage.sqlite import JOBS_TABLE, SCHEMA_VERSION as SQLITE_VERSION
from tests.backends import Backend, sqlite_storage
from tests.conftest import make_config
from tests.helpers import free_ports
from tests.processes import ROOT

SUBMITTING, QUEUED, HELD = JobStatus.SUBMITTING, JobStatus.QUEUED, JobStatus.HELD


def event(event_id: str, job_id: str = "j") -> OutboxRow:
    """A webhook event due now."""
    now = time.time()
    return OutboxRow(event_id, job_id, "http://receiver.example/h", "job.started", b"{}", now,
                     due_at=now)


def add_events(storage, *events: OutboxRow) -> None:
    """Job "j" and these events of it (a settled event of no job would go at once)."""
    storage.jobs.insert(Job("j", 0, "p", "f"), b"{}")
    storage.jobs.update(Job("j", 0, "p", "f"), events)


def held_job(job_id: str = "h") -> Job:
    return Job(job_id=job_id, gpu_id=None, prompt_id=None, fingerprint="f", status=HELD,
               auto=True, submitted_at=time.time(), held_at=time.time())


def test_a_held_job_is_claimed_once(backend):
    rows = backend.open().jobs
    job = held_job()
    rows.insert(job, b"{}")
    first = dataclasses.replace(job, status=SUBMITTING, gpu_id=0, prompt_id="p1", attempts=1)
    second = dataclasses.replace(job, status=SUBMITTING, gpu_id=1, prompt_id="p2", attempts=1)
    assert rows.claim_held(first) and not rows.claim_held(second)
    [row] = backend.open().jobs.load("local")
    assert (row.status, row.gpu_id, row.prompt_id, row.attempts) == (SUBMITTING, 0, "p1", 1)


def test_the_store_sends_a_held_job_through_the_claim(backend):
    rows = backend.open().jobs
    store = JobStore(rows)
    store.reserve(held_job(), b"{}")

    def claim(job: Job) -> None:
        job.status, job.gpu_id, job.prompt_id, job.attempts = SUBMITTING, 0, "p1", 1
    assert store.change("h", claim, sending=True).prompt_id == "p1"
    assert not rows.claim_held(store.get("h"))  # no longer held: a second claim gets nothing


def test_a_row_left_by_an_unacknowledged_insert_gives_way_to_the_retry(backend):
    """The database committed a submission and went away before saying so: the client was
    answered 503 and nothing is in memory. Its retry creates the job."""
    storage = backend.open()
    store = JobStore(storage.jobs)
    storage.jobs.insert(Job("j", 0, "p-ghost", "f", submitted_at=time.time(), node=store.node),
                        b"{}")
    with pytest.raises(JobIdTaken):
        storage.jobs.insert(Job("j", 0, "p-other", "f", submitted_at=time.time()), b"{}")
    job, created = store.reserve(Job("j", 0, "p-retry", "f"), b'{"retry": 1}')
    assert created and job.prompt_id == "p-retry"
    reopened = backend.open().jobs
    assert [row.prompt_id for row in reopened.load("local")] == ["p-retry"]
    assert reopened.workflow("j") == b'{"retry": 1}'


class Unreachable:
    """The job rows, every call refused while `down` (the database gone)."""

    def __init__(self, rows):
        self._rows, self.down = rows, False

    def __getattr__(self, name):
        real = getattr(self._rows, name)

        def call(*args, **kwargs):
            if self.down:
                raise StorageUnavailable("database test unavailable: gone")
            return real(*args, **kwargs)
        return call


def test_a_write_that_fails_changes_nothing_in_memory_and_the_retry_goes_through(backend):
    rows = Unreachable(backend.open().jobs)
    store = JobStore(rows)
    rows.down = True
    with pytest.raises(StorageUnavailable):
        store.reserve(Job("j", 0, "p", "f"), b"{}")
    assert store.get("j") is None and not store.in_flight("j") and store.counts() == {}
    rows.down = False
    store.reserve(Job("j", 0, "p", "f"), b"{}")
    store.release("j", "p")
    rows.down = True
    with pytest.raises(StorageUnavailable):
        store.change("j", lambda job: setattr(job, "status", QUEUED))
    with pytest.raises(StorageUnavailable):
        store.discard("j", "p")
    assert store.get("j").status is SUBMITTING and store.counts() == {(0, SUBMITTING): 1}
    rows.down = False
    assert store.change("j", lambda job: setattr(job, "status", QUEUED)).status is QUEUED
    assert JobStore(backend.open().jobs).get("j").status is QUEUED


def set_schema_version(backend, version: int) -> None:
    """Write another schema version into the backend's meta table (as a newer Cylindria would)."""
    backend.open().close()  # created at its current version first
    if backend.database is None:
        with sqlite3.connect(backend.path) as conn:
            conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
        return
    with psycopg.connect(backend.database, autocommit=True) as conn:
        conn.execute("UPDATE meta SET value = %s WHERE key = 'schema_version'", (str(version),))


# What each schema version added, taken out of a fresh store to make one of the version before.
# SQLite's schema stops at its own version (it keeps asset files in the data dir).
ADDED_BY = {
    2: ("DROP INDEX jobs_by_node", "DROP TABLE nodes", "ALTER TABLE jobs DROP COLUMN node"),
    3: ("ALTER TABLE webhook_outbox DROP COLUMN claimed_until",
        "ALTER TABLE webhook_outbox DROP COLUMN claimed_by"),
    4: ("DROP INDEX takeovers_by_node", "DROP TABLE takeovers",
        "ALTER TABLE nodes DROP COLUMN left_at", "ALTER TABLE nodes DROP COLUMN taken_over_at",
        "ALTER TABLE jobs DROP COLUMN fence"),
    5: ("DROP TABLE asset_chunks",),
}
CURRENT = {"sqlite": SQLITE_VERSION, "postgresql": POSTGRES_VERSION}


def run_sql(backend, *statements: str) -> list:
    """Run statements on the backend's database outside Cylindria; the last one's rows."""
    if backend.database is None:
        with sqlite3.connect(backend.path) as conn:
            return [conn.execute(statement) for statement in statements][-1].fetchall()
    with psycopg.connect(backend.database, autocommit=True) as conn:
        cursors = [conn.execute(statement) for statement in statements]
        return cursors[-1].fetchall() if cursors[-1].description else []


def outbox_columns(backend) -> set:
    """The names of webhook_outbox's columns."""
    query = ("SELECT name FROM pragma_table_info('webhook_outbox')" if backend.database is None
             else "SELECT column_name FROM information_schema.columns "
                  "WHERE table_name = 'webhook_outbox'")
    return {row[0] for row in run_sql(backend, query)}


def make_older(backend, version: int) -> None:
    """Turn the backend's (closed) store into one of schema `version`, its rows kept."""
    undo = [statement for added in sorted(ADDED_BY, reverse=True)
            if version < added <= CURRENT[backend.kind] for statement in ADDED_BY[added]]
    run_sql(backend, *undo, f"UPDATE meta SET value = '{version}' WHERE key = 'schema_version'")


def test_a_version_1_store_gains_the_fleets_tables_in_place(backend):
    """Schema version 2 (the fleet: a nodes table, each job's node) on a store of version 1,
    made here by taking the later versions' additions out of a fresh one, its job rows kept."""
    storage = backend.open()
    storage.jobs.insert(Job("kept", 0, "p", "f"), b"{}")
    storage.close()
    make_older(backend, 1)
    storage = backend.open()
    try:
        assert storage.meta.get("schema_version", "none") == str(CURRENT[backend.kind])
        assert [job.job_id for job in storage.jobs.load("local")] == ["kept"]
    finally:
        storage.close()
    assert run_sql(backend, "SELECT COUNT(*), MIN(node) FROM nodes, jobs") == [(0, None)]


def test_a_version_2_store_gains_the_webhook_claims_in_place(backend):
    """Schema version 3 (webhook_outbox's claimed_by and claimed_until) on a store of version
    2: its pending event is still due, unclaimed, and can be claimed and delivered."""
    storage = backend.open()
    add_events(storage, event("e1"))
    storage.close()
    make_older(backend, 2)
    assert "claimed_by" not in outbox_columns(backend)
    storage = backend.open()
    try:
        assert storage.meta.get("schema_version", "none") == str(CURRENT[backend.kind])
        assert [e.id for e in storage.outbox.due(time.time(), 10)] == ["e1"]
        assert storage.outbox.claim("e1", "a", time.time(), 30.0)
        storage.outbox.delivered("e1", time.time())
        assert storage.outbox.due(time.time(), 10) == []
    finally:
        storage.close()
    assert {"claimed_by", "claimed_until"} <= outbox_columns(backend)


def test_a_version_3_store_gains_failovers_fence_in_place(backend):
    """Schema version 4 (each job's fence, the nodes' takeover mark, the takeovers table) on a
    store of version 3: its jobs are of fence 0, written as before, and can be taken over."""
    storage = backend.open()
    storage.jobs.insert(Job("kept", 0, "p", "f", node="gone"), b"{}")
    storage.nodes.renew("gone", "", 0.0, "", "{}")
    storage.close()
    make_older(backend, 3)
    storage = backend.open()
    try:
        assert storage.meta.get("schema_version", "none") == str(CURRENT[backend.kind])
        [job] = storage.jobs.load("gone")
        assert job.fence == 0
        job.status = QUEUED
        assert storage.jobs.update(job)
        [(before, after)] = storage.jobs.take_over("gone", lambda job, ended: (
            dataclasses.replace(job, status=JobStatus.LOST, node="a"), []))
        assert (before.status, after.status, after.fence) == (QUEUED, JobStatus.LOST, 1)
        assert storage.jobs.taken_from("gone") == [Taken("kept", 1, 0, "p")]
        assert not storage.nodes.renew("a", "", 10.0, "", "{}")
        assert storage.nodes.renew("gone", "", 10.0, "", "{}")  # told once
        assert not storage.nodes.renew("gone", "", 10.0, "", "{}")
    finally:
        storage.close()


def test_a_schema_newer_than_the_code_stops_the_start(backend, fakes, tmp_path):
    set_schema_version(backend, 99)
    with pytest.raises(ConfigError, match="newer Cylindria .*schema version 99"):
        build_core(make_config(fakes, tmp_path, database=backend.database))


def test_a_schema_newer_than_the_code_exits_2_with_one_line(tmp_path):
    data = tmp_path / "data"
    sqlite_storage(data).close()
    with sqlite3.connect(data / "jobs.sqlite3") as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    done = subprocess.run([sys.executable, str(ROOT / "cylindria.py"), "--data-dir", str(data),
                           "--host", "127.0.0.1", "--port", str(free_ports(1)), "--no-auth"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("cylindria: error: the database was written by a newer Cylindria")


def test_an_unreachable_postgresql_at_start_stops_it_with_one_line(fakes, tmp_path):
    url = f"postgresql://nobody:secret@127.0.0.1:{free_ports(1)}/cylindria?connect_timeout=1"
    with pytest.raises(ConfigError, match="unavailable") as refused:
        build_core(make_config(fakes, tmp_path, database=url))
    assert "secret" not in str(refused.value) and "\n" not in str(refused.value)


# -- SQLite data dirs written by earlier versions -----------------------------------------------
def test_one_hosts_file_grants_every_claim_and_every_sweep_turn(tmp_path):
    """A fleet of one (the instance lock keeps a second Cylindria off the file): a claim is
    granted without a write, and the events stay due until settled."""
    storage = sqlite_storage(tmp_path)
    add_events(storage, event("e1"))
    now = time.time()
    assert storage.outbox.claim("e1", "a", now, 30.0) and storage.outbox.claim("e1", "b", now, 30.0)
    assert [e.id for e in storage.outbox.due(now, 10)] == ["e1"]
    storage.outbox.delivered("e1", now)
    assert storage.outbox.due(now, 10) == []
    with storage.jobs.sweep_turn() as ours, storage.jobs.sweep_turn() as again:
        assert ours and again


def test_an_unversioned_data_dir_is_brought_to_the_current_version_in_place(tmp_path):
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as conn:
        conn.execute(JOBS_TABLE)
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("INSERT INTO jobs (job_id, gpu_id, prompt_id, fingerprint, status, "
                     "submitted_at) VALUES ('old', 0, 'p', 'f', 'completed', 1.0)")
    storage = sqlite_storage(tmp_path)
    assert storage.meta.get("schema_version", "none") == str(SQLITE_VERSION)
    assert [job.job_id for job in storage.jobs.load("local")] == ["old"]


def test_an_outbox_written_before_events_knew_their_client_gets_it_from_the_job(tmp_path):
    """A data dir of an earlier Cylindria: its pending event is shared as its job's client's."""
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as conn:
        conn.execute(JOBS_TABLE)
        conn.execute("INSERT INTO jobs (job_id, gpu_id, prompt_id, fingerprint, status, "
                     "submitted_at, webhook, submitted_by) VALUES ('j', 0, 'p', 'f', 'running', "
                     "1.0, 'http://receiver.example/h', 'bob')")
        conn.execute("CREATE TABLE webhook_outbox (id TEXT PRIMARY KEY, job_id TEXT NOT NULL, "
                     "url TEXT NOT NULL, event TEXT NOT NULL, body BLOB NOT NULL, created_at "
                     "REAL NOT NULL, due_at REAL, attempts INTEGER NOT NULL DEFAULT 0, "
                     "last_error TEXT, delivered_at REAL, given_up_at REAL)")
        conn.execute("INSERT INTO webhook_outbox (id, job_id, url, event, body, created_at, due_at)"
                     " VALUES ('old', 'j', 'http://receiver.example/h', 'job.started', x'7b7d', 1, 1)")
    outbox = sqlite_storage(tmp_path).outbox
    [event] = outbox.due(float("inf"), 10)
    assert (event.id, event.client, event.body) == ("old", "bob", b"{}")
    assert outbox.due(float("inf"), 10, clients={"bob"}) == []


# -- PostgreSQL's own ---------------------------------------------------------------------------
@pytest.fixture
def shared(postgres_cluster, tmp_path):
    """A fleet's PostgreSQL database, opened by each node as `shared.open()`."""
    backend = Backend("postgresql", tmp_path / "data", postgres_cluster)
    yield backend
    backend.close()


def claims(backend) -> dict:
    """event id -> (claimed_by, whether its claim still holds), as the database has them."""
    rows = run_sql(backend, "SELECT id, claimed_by, claimed_until > extract(epoch FROM "
                            "clock_timestamp()) FROM webhook_outbox ORDER BY id")
    return {event_id: (node, holds) for event_id, node, holds in rows}


def test_two_nodes_claim_each_event_once(shared):
    """Every node reads every due event; the claim gives each to one of them, and an event
    one node holds is no longer due for the other."""
    a, b = shared.open().outbox, shared.open().outbox
    add_events(shared.open(), *(event(f"e{n}") for n in range(6)))
    now = time.time()
    every = [f"e{n}" for n in range(6)]
    assert [e.id for e in a.due(now, 10)] == [e.id for e in b.due(now, 10)] == every
    taken = {"a": [], "b": []}
    for n, found in enumerate(a.due(now, 10)):  # both nodes try every event, in turns
        first, second = (("a", a), ("b", b)) if n % 2 == 0 else (("b", b), ("a", a))
        assert first[1].claim(found.id, first[0], now, 30.0)
        assert not second[1].claim(found.id, second[0], now, 30.0)
        taken[first[0]].append(found.id)
    assert taken == {"a": ["e0", "e2", "e4"], "b": ["e1", "e3", "e5"]}
    assert a.due(now, 10) == b.due(now, 10) == []
    assert a.next_due() is None
    assert claims(shared) == {f"e{n}": ("a" if n % 2 == 0 else "b", True) for n in range(6)}


def test_a_claim_another_node_is_taking_is_skipped_at_once(shared):
    outbox = shared.open().outbox
    add_events(shared.open(), event("e1"))
    with psycopg.connect(shared.database) as other:  # another node, mid-claim
        other.execute("SELECT id FROM webhook_outbox WHERE id = 'e1' FOR UPDATE")
        assert not outbox.claim("e1", "a", time.time(), 30.0)  # returned while the lock is held
    assert outbox.claim("e1", "a", time.time(), 30.0)


def test_a_lapsed_claim_is_claimable_again_and_a_settled_try_ends_the_claim(shared):
    """A node that died mid-try leaves a claim that lapses: another node then sends the event
    (at least once). Delivered, retried and given up each end the claim."""
    a, b = shared.open().outbox, shared.open().outbox
    add_events(shared.open(), *(event(f"e{n}") for n in range(3)))
    now = time.time()
    for event_id in ("e0", "e1", "e2"):
        assert a.claim(event_id, "a", now, 30.0)
    # a dies; a minute later by the database's clock its claims have lapsed
    run_sql(shared, "UPDATE webhook_outbox SET claimed_until = claimed_until - 60")
    assert [e.id for e in b.due(now, 10)] == ["e0", "e1", "e2"]
    assert all(b.claim(event_id, "b", now, 30.0) for event_id in ("e0", "e1", "e2"))
    assert b.due(now, 10) == [] and not a.claim("e0", "a", now, 30.0)
    b.delivered("e0", now)
    b.retry("e1", "HTTP 500", now - 1)
    b.give_up("e2", "HTTP 500", now)
    assert claims(shared) == {"e0": (None, None), "e1": (None, None), "e2": (None, None)}
    assert [e.id for e in a.due(now, 10)] == ["e1"]  # due again, by anyone
    assert a.claim("e1", "a", now, 30.0)
    assert not b.claim("e0", "b", now, 30.0)  # delivered: nothing to claim
    [row] = [e for e in a.of_job("j", "http://receiver.example/h") if e.id == "e0"]
    assert row.delivered_at == now and row.attempts == 1


def test_one_retention_sweep_at_a_time(shared):
    """The sweep's turn is one node's at a time, never waited for, and free again after."""
    a, b = shared.open().jobs, shared.open().jobs
    with a.sweep_turn() as ours:
        assert ours
        with b.sweep_turn() as theirs:
            assert not theirs
    with b.sweep_turn() as theirs:
        assert theirs


def test_a_claim_skips_a_row_another_claimer_holds_at_once(postgres_cluster):
    """The fleet's claim: a held row another node is claiming is skipped, never waited for."""
    url = postgres_cluster.create_database("claim_skips")
    storage = open_url(url)
    try:
        job = held_job()
        storage.jobs.insert(job, b"{}")
        claimed = dataclasses.replace(job, status=SUBMITTING, gpu_id=0, prompt_id="p1")
        with psycopg.connect(url) as other:  # another node, mid-claim
            other.execute("SELECT seq FROM jobs WHERE job_id = 'h' FOR UPDATE")
            assert not storage.jobs.claim_held(claimed)  # returned while the lock is held
        assert storage.jobs.claim_held(claimed)
    finally:
        storage.close()
        postgres_cluster.drop_database("claim_skips")


def test_a_database_url_is_never_shown_with_its_password():
    assert shown("postgresql://cyl:s3cret@db.example:5433/jobs?sslmode=require") == \
        "postgresql://db.example:5433/jobs"
    with pytest.raises(ConfigError) as bad:
        load_config(["--database", "mysql://cyl:s3cret@db.example/jobs"])
    assert "s3cret" not in str(bad.value) and "--database" in str(bad.value)


def test_the_database_comes_from_the_flag_or_the_environment():
    url = "postgresql://cyl@127.0.0.1:5432/jobs"
    assert load_config([]).database is None
    assert load_config([], {"CYLINDRIA_DATABASE_URL": url}).database == url
    assert load_config(["--database", "host=127.0.0.1 dbname=jobs"],
                       {"CYLINDRIA_DATABASE_URL": url}).database == "host=127.0.0.1 dbname=jobs"

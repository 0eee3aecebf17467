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
from cylindria.storage import JobIdTaken, StorageUnavailable, open_url
from cylindria.storage.postgres import shown
from cylindria.storage.sqlite import JOBS_TABLE, SCHEMA_VERSION as SQLITE_VERSION
from tests.backends import sqlite_storage
from tests.conftest import make_config
from tests.helpers import free_ports
from tests.processes import ROOT

SUBMITTING, QUEUED, HELD = JobStatus.SUBMITTING, JobStatus.QUEUED, JobStatus.HELD


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


def test_a_version_1_store_gains_the_fleets_tables_in_place(backend):
    """Schema version 2 (the fleet: a nodes table, each job's node) on a store of version 1,
    made here by taking version 2's additions out of a fresh one, its job rows kept."""
    storage = backend.open()
    storage.jobs.insert(Job("kept", 0, "p", "f"), b"{}")
    storage.close()
    undo = ("DROP INDEX jobs_by_node", "DROP TABLE nodes", "ALTER TABLE jobs DROP COLUMN node",
            "UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    if backend.database is None:
        with sqlite3.connect(backend.path) as conn:
            for statement in undo:
                conn.execute(statement)
    else:
        with psycopg.connect(backend.database, autocommit=True) as conn:
            for statement in undo:
                conn.execute(statement)
    storage = backend.open()
    try:
        assert storage.meta.get("schema_version", "none") == "2"
        assert [job.job_id for job in storage.jobs.load("local")] == ["kept"]
    finally:
        storage.close()
    if backend.database is None:
        with sqlite3.connect(backend.path) as conn:
            assert conn.execute("SELECT COUNT(*), MIN(node) FROM nodes, jobs").fetchone() == (0, None)
    else:
        with psycopg.connect(backend.database) as conn:
            assert conn.execute("SELECT COUNT(*), MIN(node) FROM nodes, jobs").fetchone() == (0, None)


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

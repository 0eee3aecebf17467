"""The job store's durable half: one SQLite file in the data dir."""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

from comfy.jobs import FINISHED, Job, JobStatus
from comfy.private import private_dir, private_file, tighten

logger = logging.getLogger(__name__)

JOBS_TABLE = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL UNIQUE,
    gpu_id INTEGER,
    prompt_id TEXT,
    fingerprint TEXT NOT NULL,
    status TEXT NOT NULL,
    number REAL,
    submitted_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    error TEXT,
    outputs TEXT,
    warnings TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    nodes_done INTEGER NOT NULL DEFAULT 0,
    nodes_total INTEGER NOT NULL DEFAULT 0,
    auto INTEGER NOT NULL DEFAULT 0,
    priority INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    held_at REAL,
    labels TEXT,
    webhook TEXT,
    submitted_by TEXT
);
"""

SCHEMA = JOBS_TABLE + """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- The workflow of every job (the request body as received, credentials left out): a held
-- job is sent from it, a job whose ComfyUI died is sent again from it, and a client may read
-- it back (GET /api/v2/jobs/<id>/workflow). Deleted with the job's row.
CREATE TABLE IF NOT EXISTS workflows (job_id TEXT PRIMARY KEY, body BLOB NOT NULL);
-- By end time: the sweep finds the oldest finished jobs, and a start loads the unfinished and
-- recent ones, without reading the table whole (a partial index serves only the first).
DROP INDEX IF EXISTS jobs_finished_at;
CREATE INDEX IF NOT EXISTS jobs_by_finished_at ON jobs (finished_at);
"""

COLUMNS = ("job_id", "gpu_id", "prompt_id", "fingerprint", "status", "number", "submitted_at",
           "started_at", "finished_at", "error", "outputs", "warnings", "cancel_requested",
           "nodes_done", "nodes_total", "auto", "priority", "attempts", "held_at", "labels",
           "webhook", "submitted_by")
# Columns added to the table after the queue's schema, each with its type: an older data
# dir gets them (empty) at its first start.
ADDED_COLUMNS = {"labels": "TEXT", "webhook": "TEXT", "submitted_by": "TEXT"}
# The columns of the first schema (gpu_id and prompt_id NOT NULL, no queue fields): a data
# dir written by an earlier Cylindria is moved to the new table once, at its first start.
FIRST_COLUMNS = COLUMNS[:15]
JSON_COLUMNS = frozenset({"error", "outputs", "warnings", "labels"})


# Seconds a statement waits for SQLite's write lock held by another connection (the webhook
# sender's one-UPDATE tries, the retention sweep's batches of 200 rows: milliseconds each).
# The store writes under its lock and nothing retries a failed commit (the state change would
# be lost), so a write waits rather than fail at the first busy moment; status reads
# (JobStore.get) do not take that lock, so they never wait behind it.
BUSY_WAIT = 5.0


class Database:
    """Rows of jobs; the caller (JobStore) serialises access with its own lock."""

    def __init__(self, path: Path, retention: float | None = None):
        self.path = Path(path)
        self.retention = retention  # seconds a finished job is kept; None: for ever
        self._make_private()
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False,
                                     isolation_level=None, timeout=BUSY_WAIT)
        # WAL + NORMAL: a commit survives a crash or kill of Cylindria without an fsync per
        # state change (only a power cut can lose the last commits).
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._migrate()
        self._conn.executescript(SCHEMA)
        self._reader: sqlite3.Connection | None = None  # workflow reads, opened at the first
        self._reader_lock = threading.Lock()

    def _migrate(self) -> None:
        """Move a jobs table of the first schema to the current one (gpu_id and prompt_id
        may be null for a held job; the queue's columns added), rows and seqs kept."""
        columns = {row[1]: row for row in self._conn.execute("PRAGMA table_info(jobs)")}
        if not columns:
            return
        if "held_at" in columns:
            for name, kind in ADDED_COLUMNS.items():
                if name not in columns:
                    self._conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
            return
        logger.info("moving the job database to the queue's schema (once)")
        listed = ", ".join(("seq",) + FIRST_COLUMNS)
        with self._transaction():
            self._conn.execute("DROP INDEX IF EXISTS jobs_by_finished_at")
            self._conn.execute("ALTER TABLE jobs RENAME TO jobs_first")
            self._conn.execute(JOBS_TABLE)
            self._conn.execute(f"INSERT INTO jobs ({listed}) SELECT {listed} FROM jobs_first")
            self._conn.execute("DROP TABLE jobs_first")

    def _make_private(self) -> None:
        """The data dir 0700 and the database 0600 before SQLite opens it: SQLite gives the
        -wal and -shm files it creates the database file's mode (an older start's, tightened)."""
        private_dir(self.path.parent)
        private_file(self.path)
        for suffix in ("-wal", "-shm"):
            tighten(self.path.with_name(self.path.name + suffix))

    def load(self) -> list[Job]:
        """Every job still within retention, oldest first (expired rows await the sweep)."""
        # Two index lookups, not `IS NULL OR >= ?` (which SQLite answers with a full scan):
        # a million expired rows cost a start nothing.
        cursor = self._conn.execute(
            f"SELECT seq, {', '.join(COLUMNS)} FROM jobs WHERE seq IN ("
            "SELECT seq FROM jobs WHERE finished_at IS NULL UNION ALL "
            "SELECT seq FROM jobs WHERE finished_at >= ?) ORDER BY seq", (self._cutoff(),))
        return [_row_to_job(row) for row in cursor]

    def insert(self, job: Job, workflow: bytes) -> int:
        """Add a job and its workflow in one transaction; returns the job's sequence number.

        An expired row the sweep has not deleted yet (the job is already gone from memory)
        gives way to a new job under its id: it is deleted, and counted, in the same transaction.
        """
        values = [_to_db(name, getattr(job, name)) for name in COLUMNS]
        statement = f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
        with self._transaction():
            try:
                seq = self._conn.execute(statement, values).lastrowid
            except sqlite3.IntegrityError:
                if not self._delete_expired("job_id = ?", [job.job_id], self._cutoff()):
                    raise
                seq = self._conn.execute(statement, values).lastrowid
            self._conn.execute("INSERT OR REPLACE INTO workflows (job_id, body) VALUES (?, ?)",
                               (job.job_id, workflow))
        return seq

    def workflow(self, job_id: str) -> bytes | None:
        """The workflow of a job, as it was received (credentials left out). Read on a
        connection of its own, so a large body never holds the one the store writes on; the
        caller needs no lock (reads of workflows wait only for each other)."""
        with self._reader_lock:
            if self._reader is None:
                self._reader = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                               check_same_thread=False, timeout=BUSY_WAIT)
            row = self._reader.execute("SELECT body FROM workflows WHERE job_id = ?",
                                       (job_id,)).fetchone()
        return None if row is None else bytes(row[0])

    def expired(self, cutoff: float, limit: int) -> list[tuple[int, str]]:
        """(seq, job_id) of up to `limit` finished jobs that ended before `cutoff`, oldest first."""
        return self._conn.execute(
            "SELECT seq, job_id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ? "
            f"AND status IN ({_FINISHED_MARKS}) ORDER BY finished_at LIMIT ?",
            (cutoff, *_FINISHED_VALUES, limit)).fetchall()

    def delete_expired(self, seqs: list[int], cutoff: float) -> Counter:
        """Delete these rows if they are still finished before `cutoff`; (gpu, status) -> deleted."""
        if not seqs:
            return Counter()
        with self._transaction():
            return self._delete_expired(f"seq IN ({', '.join('?' * len(seqs))})", seqs, cutoff)

    def limit_cache(self, kib: int) -> None:
        """Cap this connection's page cache (SQLite's default is 2 MiB per connection)."""
        self._conn.execute(f"PRAGMA cache_size = -{int(kib)}")

    def retired(self) -> Counter:
        """(gpu, status) -> jobs removed by retention so far, over every life of this data dir."""
        rows = self._conn.execute("SELECT key, value FROM meta WHERE key LIKE 'retired:%'")
        counts = Counter()
        for key, value in rows:
            _, gpu, status = key.split(":")
            counts[(None if gpu == NO_GPU else int(gpu), _STATUS[status])] = int(value)
        return counts

    def _delete_expired(self, where: str, values: list, cutoff: float) -> Counter:
        """Delete the matching expired rows and add them to the durable retired counts
        (inside the caller's transaction, so a count is never lost nor doubled)."""
        rows = self._conn.execute(
            f"DELETE FROM jobs WHERE {where} AND finished_at IS NOT NULL AND finished_at < ? "
            f"AND status IN ({_FINISHED_MARKS}) RETURNING gpu_id, status, job_id",
            (*values, cutoff, *_FINISHED_VALUES)).fetchall()
        job_ids = [(job_id,) for _, _, job_id in rows]
        self._conn.executemany("DELETE FROM workflows WHERE job_id = ?", job_ids)
        if self._has_table("webhook_outbox"):
            # Its delivered and given-up events go with it; one still due stays, to be tried
            # for the day the contract promises, and goes once settled (webhooks/outbox.py).
            self._conn.executemany(
                "DELETE FROM webhook_outbox WHERE job_id = ? AND due_at IS NULL", job_ids)
        deleted = Counter((gpu, _STATUS[status]) for gpu, status, _ in rows)
        for (gpu, status), n in deleted.items():
            self._conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) "
                "DO UPDATE SET value = CAST(value AS INTEGER) + excluded.value",
                (f"retired:{NO_GPU if gpu is None else gpu}:{status.value}", n))
        return deleted

    def _has_table(self, name: str) -> bool:
        """Whether the database has this table (the webhook outbox creates its own)."""
        return self._conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                  (name,)).fetchone() is not None

    def _transaction(self):
        """One transaction on this connection (see `transaction`)."""
        return transaction(self._conn)

    def _cutoff(self) -> float:
        """Finished jobs that ended before this are past retention (-inf: keep all)."""
        return float("-inf") if self.retention is None else time.time() - self.retention

    def update(self, job: Job, names: list[str], also: list[tuple[str, tuple]] = ()) -> None:
        """Write the named fields of a job, and the statements `also` (the rows a change
        causes elsewhere, such as a webhook event) in the same transaction."""
        assignments = ", ".join(f"{name} = ?" for name in names)
        values = [_to_db(name, getattr(job, name)) for name in names] + [job.job_id]
        if not also:
            self._conn.execute(f"UPDATE jobs SET {assignments} WHERE job_id = ?", values)
            return
        with self._transaction():
            self._conn.execute(f"UPDATE jobs SET {assignments} WHERE job_id = ?", values)
            for statement, parameters in also:
                self._conn.execute(statement, parameters)

    def delete(self, job_id: str) -> None:
        """Remove a job and its workflow (a submission ComfyUI never got)."""
        with self._transaction():
            self._conn.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))
            self._conn.execute("DELETE FROM workflows WHERE job_id = ?", (job_id,))

    def meta(self, key: str, default: str) -> str:
        """A stored setting, written with `default` the first time it is asked for."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row:
            return row[0]
        self._conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, default))
        return default

    def close(self) -> None:
        """Close the connections."""
        self._conn.close()
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()


@contextmanager
def transaction(conn: sqlite3.Connection):
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error) on a connection in autocommit mode."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _to_db(name: str, value):
    """A Job field as SQLite stores it."""
    if name in JSON_COLUMNS:
        return None if value is None else json.dumps(list(value) if name == "outputs" else value)
    if name == "status":
        return value.value
    if name in ("cancel_requested", "auto"):
        return int(value)
    return value


def _row_to_job(row) -> Job:
    """A jobs row as a Job (positionally: start-up loads every row through here)."""
    (seq, job_id, gpu_id, prompt_id, fingerprint, status, number, submitted_at, started_at,
     finished_at, error, outputs, warnings, cancel_requested, nodes_done, nodes_total,
     auto, priority, attempts, held_at, labels, webhook, submitted_by) = row
    return Job(job_id, gpu_id, prompt_id, fingerprint, _STATUS[status], number, submitted_at,
               started_at, finished_at, _json_or_none(error),
               tuple(json.loads(outputs)) if outputs else (), _json_or_none(warnings),
               bool(cancel_requested), nodes_done, nodes_total, bool(auto), priority, attempts,
               held_at, _json_or_none(labels), webhook, submitted_by, seq)


_STATUS = {status.value: status for status in JobStatus}
NO_GPU = "none"  # the GPU of a job never sent to one (a held GpuId=auto job cancelled)
_FINISHED_VALUES = tuple(status.value for status in FINISHED)
_FINISHED_MARKS = ", ".join("?" * len(_FINISHED_VALUES))


def _json_or_none(text: str | None):
    """A JSON column's value."""
    return None if text is None else json.loads(text)

"""The job store's durable half: one SQLite file in the data dir."""
from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

from comfy.jobs import Job, JobStatus

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL UNIQUE,
    gpu_id INTEGER NOT NULL,
    prompt_id TEXT NOT NULL,
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
    nodes_total INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

COLUMNS = ("job_id", "gpu_id", "prompt_id", "fingerprint", "status", "number", "submitted_at",
           "started_at", "finished_at", "error", "outputs", "warnings", "cancel_requested",
           "nodes_done", "nodes_total")
JSON_COLUMNS = frozenset({"error", "outputs", "warnings"})


class Database:
    """Rows of jobs; the caller (JobStore) serialises access with its own lock."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False,
                                     isolation_level=None)
        # WAL + NORMAL: a commit survives a crash or kill of Cylindria without an fsync per
        # state change (only a power cut can lose the last commits).
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(SCHEMA)

    def load(self) -> list[Job]:
        """Every job, oldest first."""
        cursor = self._conn.execute(f"SELECT seq, {', '.join(COLUMNS)} FROM jobs ORDER BY seq")
        return [_row_to_job(row) for row in cursor]

    def insert(self, job: Job) -> int:
        """Add a job; returns its sequence number."""
        values = [_to_db(name, getattr(job, name)) for name in COLUMNS]
        marks = ", ".join("?" * len(COLUMNS))
        cursor = self._conn.execute(
            f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({marks})", values)
        return cursor.lastrowid

    def update(self, job: Job, names: list[str]) -> None:
        """Write the named fields of a job."""
        assignments = ", ".join(f"{name} = ?" for name in names)
        values = [_to_db(name, getattr(job, name)) for name in names] + [job.job_id]
        self._conn.execute(f"UPDATE jobs SET {assignments} WHERE job_id = ?", values)

    def delete(self, job_id: str) -> None:
        """Remove a job (a submission ComfyUI never got)."""
        self._conn.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))

    def meta(self, key: str, default: str) -> str:
        """A stored setting, written with `default` the first time it is asked for."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row:
            return row[0]
        self._conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, default))
        return default

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()


def _to_db(name: str, value):
    """A Job field as SQLite stores it."""
    if name in JSON_COLUMNS:
        return None if value is None else json.dumps(list(value) if name == "outputs" else value)
    if name == "status":
        return value.value
    if name == "cancel_requested":
        return int(value)
    return value


def _row_to_job(row) -> Job:
    """A jobs row as a Job (positionally: start-up loads every row through here)."""
    (seq, job_id, gpu_id, prompt_id, fingerprint, status, number, submitted_at, started_at,
     finished_at, error, outputs, warnings, cancel_requested, nodes_done, nodes_total) = row
    return Job(job_id, gpu_id, prompt_id, fingerprint, _STATUS[status], number, submitted_at,
               started_at, finished_at, _json_or_none(error),
               tuple(json.loads(outputs)) if outputs else (), _json_or_none(warnings),
               bool(cancel_requested), nodes_done, nodes_total, seq)


_STATUS = {status.value: status for status in JobStatus}


def _json_or_none(text: str | None):
    """A JSON column's value."""
    return None if text is None else json.loads(text)

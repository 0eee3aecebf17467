"""The webhook outbox: one row per event a job's status change causes, written in the same
SQLite transaction as the change (through JobStore.commit_with), so a crash never loses an
event nor leaves one for a change that did not happen. The sender (webhooks/sender.py)
reads the due rows and settles each: delivered, tried again later, or given up.
"""
from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

from comfy.encoding import to_json
from comfy.jobs import Job, JobStatus
from comfy.status import iso_time

# The status a job moves to -> the event it causes (a job with a webhook only).
EVENTS = {JobStatus.RUNNING: "job.started", JobStatus.COMPLETED: "job.completed",
          JobStatus.FAILED: "job.failed", JobStatus.CANCELLED: "job.cancelled",
          JobStatus.LOST: "job.lost"}

SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_outbox (
    id TEXT PRIMARY KEY,        -- the webhook-id: the same on every try of this event
    job_id TEXT NOT NULL,
    url TEXT NOT NULL,
    event TEXT NOT NULL,
    body BLOB NOT NULL,         -- the bytes signed and sent, as of the change
    created_at REAL NOT NULL,
    due_at REAL,                -- the next try; NULL once delivered or given up
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    delivered_at REAL,
    given_up_at REAL,
    client TEXT NOT NULL DEFAULT ''  -- the job's submitted_by ('' unnamed): deliveries are shared
);
DROP INDEX IF EXISTS webhook_outbox_due;
CREATE INDEX IF NOT EXISTS webhook_outbox_due_order ON webhook_outbox (due_at, id)
    WHERE due_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS webhook_outbox_job ON webhook_outbox (job_id);
"""
INSERT = ("INSERT INTO webhook_outbox (id, job_id, url, event, body, created_at, due_at, client) "
          "VALUES (?, ?, ?, ?, ?, ?, ?, ?)")


@dataclass(frozen=True)
class Event:
    """One event to deliver."""

    id: str
    job_id: str
    url: str
    event: str
    body: bytes
    created_at: float
    attempts: int
    due_at: float | None = None
    client: str = ""  # who submitted the job ('' for an unnamed key)


def shown_url(url: str) -> str:
    """The URL as views and logs show it: without its query string and user info, where a
    receiver's token would be."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class Outbox:
    """The outbox table, on a connection of its own: the sender's writes never wait for the
    job store's lock, and the store's never for a delivery."""

    def __init__(self, path: Path, render: Callable[[Job], dict], clock: Callable[[], float] = time.time):
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None,
                                     timeout=30.0)
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(SCHEMA)
        self._add_client_column()
        self._lock = threading.Lock()
        self._render = render
        self._clock = clock
        self.wake = threading.Event()  # set once a change has committed an event

    def _add_client_column(self) -> None:
        """An outbox written before events knew their client gets the column, filled from
        the jobs still there (once, at the first start)."""
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(webhook_outbox)")}
        if "client" in columns:
            return
        self._conn.execute("ALTER TABLE webhook_outbox ADD COLUMN client TEXT NOT NULL DEFAULT ''")
        self._conn.execute("UPDATE webhook_outbox SET client = COALESCE((SELECT submitted_by "
                           "FROM jobs WHERE jobs.job_id = webhook_outbox.job_id), '')")

    # -- the job store's side -----------------------------------------------------------------
    def rows_for(self, old: Job, new: Job) -> list:
        """JobStore companion: the event rows this status change causes, if any. A job that
        ran but whose start Cylindria learnt only with its end (its websocket was behind or
        down, and ComfyUI's history told the end) gets its job.started too, just before; one
        whose start was announced already (a `lost` job revived by its true end) does not."""
        event = EVENTS.get(new.status) if new.webhook else None
        if event is None or old.status is new.status:
            return []
        events = [event]
        # started_at is set when a start is seen (and cleared when a job goes back to the
        # queue), so an old started_at means job.started went out with that start.
        if new.status.finished and old.status is not JobStatus.RUNNING \
                and old.started_at is None and new.started_at:
            events.insert(0, EVENTS[JobStatus.RUNNING])
        now = self._clock()
        data = self._render(new)
        return [(INSERT, (f"msg_{uuid.uuid4().hex}", new.job_id, new.webhook, kind,
                          to_json({"type": kind, "timestamp": iso_time(now), "data": data}),
                          now + n * 1e-6, now + n * 1e-6,  # the due order is the event order
                          new.submitted_by or ""))
                for n, kind in enumerate(events)]

    def observed(self, old: Job | None, new: Job) -> None:
        """Store observer (after the commit): wake the sender for a new event."""
        if new.webhook and new.status in EVENTS:
            self.wake.set()

    # -- the sender's side --------------------------------------------------------------------
    def due(self, now: float, limit: int, skip: set | frozenset = frozenset(), *,
            after: tuple | None = None, jobs: set | frozenset = frozenset(),
            urls: set | frozenset = frozenset(),
            clients: set | frozenset = frozenset()) -> list[Event]:
        """Up to `limit` events due by `now`, oldest first, but those in `skip` (being tried
        now), of the `jobs`, to the `urls` or of the `clients` given; `after`: the (due_at, id)
        of the last event of the page before."""
        where, values = ["due_at IS NOT NULL AND due_at <= ?"], [now]
        if after is not None:
            where.append("(due_at, id) > (?, ?)")
            values.extend(after)
        for column, left_out in (("id", skip), ("job_id", jobs), ("url", urls),
                                 ("client", clients)):
            if left_out:
                where.append(f"{column} NOT IN ({', '.join('?' * len(left_out))})")
                values.extend(left_out)
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, job_id, url, event, body, created_at, attempts, due_at, client "
                f"FROM webhook_outbox WHERE {' AND '.join(where)} ORDER BY due_at, id LIMIT ?",
                (*values, limit)).fetchall()
        return [Event(*row) for row in rows]

    def next_due(self) -> float | None:
        """When the earliest undelivered event is due, or None if none waits."""
        with self._lock:
            return self._conn.execute(
                "SELECT MIN(due_at) FROM webhook_outbox WHERE due_at IS NOT NULL").fetchone()[0]

    def delivered(self, event_id: str, now: float) -> None:
        self._settle("due_at = NULL, delivered_at = ?, last_error = NULL", (now,), event_id,
                     settled=True)

    def retry(self, event_id: str, error: str, due_at: float) -> None:
        self._settle("due_at = ?, last_error = ?", (due_at, error), event_id)

    def give_up(self, event_id: str, error: str, now: float) -> None:
        self._settle("due_at = NULL, given_up_at = ?, last_error = ?", (now, error), event_id,
                     settled=True)

    def _settle(self, assignments: str, values: tuple, event_id: str,
                settled: bool = False) -> None:
        """Record one try's outcome (each try counts as an attempt), one statement so SQLite's
        write lock is held no longer than the job store's writes can wait. A settled event
        whose job the retention sweep removed while it was due goes too (the sweep takes only
        settled events with their job: comfy/database.py); a read first, as that is rare."""
        with self._lock:
            self._conn.execute(f"UPDATE webhook_outbox SET {assignments}, "
                               "attempts = attempts + 1 WHERE id = ?", (*values, event_id))
            if settled and self._conn.execute(
                    "SELECT 1 FROM webhook_outbox AS o WHERE o.id = ? AND NOT EXISTS "
                    "(SELECT 1 FROM jobs WHERE jobs.job_id = o.job_id)", (event_id,)).fetchone():
                self._conn.execute("DELETE FROM webhook_outbox WHERE id = ? AND due_at IS NULL",
                                   (event_id,))

    def depth(self) -> int:
        """Events not yet delivered nor given up."""
        with self._lock:
            return self._conn.execute(
                "SELECT COUNT(*) FROM webhook_outbox WHERE due_at IS NOT NULL").fetchone()[0]

    # -- the job view's side ------------------------------------------------------------------
    def summary(self, job: Job) -> dict | None:
        """The job view's `webhook`: its URL (shown without query), whether every event so far
        was delivered, the tries they took, the last error of one not delivered (or given up)."""
        if not job.webhook:
            return None
        with self._lock:
            rows = self._conn.execute(
                "SELECT delivered_at, given_up_at, attempts, last_error FROM webhook_outbox "
                "WHERE job_id = ? AND url = ? ORDER BY created_at", (job.job_id, job.webhook)).fetchall()
        pending = [row for row in rows if row[0] is None]
        return {"url": shown_url(job.webhook), "events": len(rows),
                "delivered": bool(rows) and not pending,
                "attempts": sum(row[2] for row in rows),
                "given_up": any(row[1] is not None for row in rows),
                "last_error": next((row[3] for row in reversed(pending) if row[3]), None)}

    def close(self) -> None:
        with self._lock:
            self._conn.close()

"""The webhook outbox: one row per event a job's status change causes, written in the same
transaction as the change (through JobStore.commit_with, into storage.OutboxRows), so a
crash never loses an event nor leaves one for a change that did not happen. The sender
(cylindria/webhooks/sender.py) reads the due rows, claims each before its try (in a fleet any
node may send any event, one node at a time) and settles it: delivered, tried again later, or
given up.
"""
from __future__ import annotations

import threading
import time
import uuid
from typing import Callable, Iterable

from comfy.encoding import to_json
from comfy.jobs.job import Job, JobStatus
from comfy.jobs.store import LOCAL_NODE
from comfy.jobs.view import shown_url  # noqa: F401  (the sender and tests use it from here)
from comfy.comfyui.status import iso_time
from cylindria.storage import OutboxRow, OutboxRows, StorageUnavailable

# The status a job moves to -> the event it causes (a job with a webhook only).
EVENTS = {JobStatus.RUNNING: "job.started", JobStatus.COMPLETED: "job.completed",
          JobStatus.FAILED: "job.failed", JobStatus.CANCELLED: "job.cancelled",
          JobStatus.LOST: "job.lost"}

# An event to deliver is an outbox row (its fields: cylindria.storage.interface.OutboxRow).
Event = OutboxRow


class Outbox:
    """The events' rows (storage.OutboxRows), as the job store and the sender use them: the
    sender's writes never wait for the job store's lock, and the store's never for a delivery."""

    def __init__(self, rows: OutboxRows, render: Callable[[Job], dict],
                 clock: Callable[[], float] = time.time, node: str = LOCAL_NODE):
        self._rows = rows
        self.node = node  # the name this node's claims carry
        self._render = render
        self._clock = clock
        self.wake = threading.Event()  # set once a change has committed an event

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
        return [OutboxRow(f"msg_{uuid.uuid4().hex}", new.job_id, new.webhook, kind,
                          to_json({"type": kind, "timestamp": iso_time(now), "data": data}),
                          now + n * 1e-6, due_at=now + n * 1e-6,  # the due order: event order
                          client=new.submitted_by or "")
                for n, kind in enumerate(events)]

    def observed(self, old: Job | None, new: Job) -> None:
        """Store observer (after the commit): wake the sender for a new event."""
        if new.webhook and new.status in EVENTS:
            self.wake.set()

    # -- the sender's side --------------------------------------------------------------------
    def due(self, now: float, limit: int, skip: Iterable[str] = frozenset(), *,
            after: tuple | None = None, jobs: Iterable[str] = frozenset(),
            urls: Iterable[str] = frozenset(), clients: Iterable[str] = frozenset()) -> list[Event]:
        """Up to `limit` events due by `now`, oldest first, but those in `skip` (being tried
        now), of the `jobs`, to the `urls` or of the `clients` given; `after`: the (due_at, id)
        of the last event of the page before."""
        return self._rows.due(now, limit, skip=skip, after=after, jobs=jobs, urls=urls,
                              clients=clients)

    def next_due(self) -> float | None:
        """When the earliest undelivered event is due, or None if none waits."""
        return self._rows.next_due()

    def claim(self, event_id: str, now: float, seconds: float) -> bool:
        """Take the event for one try lasting at most `seconds`: False if another node is
        trying it, or has settled it since it was read as due."""
        return self._rows.claim(event_id, self.node, now, seconds)

    def delivered(self, event_id: str, now: float) -> None:
        """The receiver took it."""
        self._rows.delivered(event_id, now)

    def retry(self, event_id: str, error: str, due_at: float) -> None:
        """This try failed; the next at `due_at`."""
        self._rows.retry(event_id, error, due_at)

    def give_up(self, event_id: str, error: str, now: float) -> None:
        """No more tries."""
        self._rows.give_up(event_id, error, now)

    def depth(self) -> int:
        """Events not yet delivered nor given up."""
        return self._rows.depth()

    # -- the job view's side ------------------------------------------------------------------
    def summary(self, job: Job) -> dict | None:
        """The job view's `webhook`: its URL (shown without query), whether every event so far
        was delivered, the tries they took, the last error of one not delivered (or given up)."""
        if not job.webhook:
            return None
        try:
            rows = self._rows.of_job(job.job_id, job.webhook)
        except StorageUnavailable:  # the job is still answered from memory, without its tries
            return {"url": shown_url(job.webhook), "unavailable": True}
        pending = [row for row in rows if row.delivered_at is None]
        return {"url": shown_url(job.webhook), "events": len(rows),
                "delivered": bool(rows) and not pending,
                "attempts": sum(row.attempts for row in rows),
                "given_up": any(row.given_up_at is not None for row in rows),
                "last_error": next((row.last_error for row in reversed(pending)
                                    if row.last_error), None)}

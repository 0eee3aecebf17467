"""Waiting on a job without polling: `GET /jobstatus/<id>?wait=N` and `GET /jobevents/<id>`
(Server-Sent Events). Each holds a worker thread while it waits, so at most --max-streams
are open at once, and --max-streams-per-client of one client (429 too_many_streams beyond)."""
from __future__ import annotations

import threading
import time
from collections import Counter
from contextlib import contextmanager

from flask import Blueprint, Response, request

from comfy.encoding import to_json
from comfy.jobs.job import Job
from comfy.jobs.recent import FRESH_FOR
from cylindria.storage import StorageUnavailable
from cylindria.web.auth import current_client
from cylindria.web.context import ctx, wait_until_reconciled
from cylindria.web.errors import ApiError
from cylindria.web.lookup import held_position, known_job, webhook_state
from cylindria.web.views import job_view

bp = Blueprint("streams", __name__)
bp.before_request(wait_until_reconciled)

MAX_WAIT = 60  # seconds a ?wait= may ask for
KEEPALIVE = 15.0  # seconds between comment lines on an idle stream (proxies close silent ones)
PROGRESS_EVERY = 0.25  # seconds: at most 4 progress events a second
STREAMS_RETRY = 5  # seconds a client is told to wait when every stream slot is taken


class StreamSlots:
    """At most `limit` long-polls and event streams at once (each holds a worker thread), and
    at most `share` of them per client, so one client cannot leave another none."""

    def __init__(self, limit: int, share: int | None = None):
        self.limit = limit
        self.share = share or max(1, limit // 4)
        self._lock = threading.Lock()
        self._open = 0
        self._by_client: Counter = Counter()  # client name -> slots it holds

    def take(self) -> str | None:
        """Take a slot for the request's client, or 429 too_many_streams at once; returns
        the client charged (None without a key: --no-auth), to give back with."""
        client = current_client()
        name = client.name if client is not None else None
        with self._lock:
            if self._open >= self.limit:
                raise _refused(f"{self.limit} event streams and long-polls are open, the limit",
                               {"max_streams": self.limit})
            if name is not None and self._by_client[name] >= self.share:
                raise _refused(f"this client has {self.share} event streams and long-polls "
                               "open, its limit", {"max_streams_per_client": self.share})
            self._open += 1
            if name is not None:
                self._by_client[name] += 1
        return name

    def give_back(self, name: str | None) -> None:
        """Free a slot taken with `take` (given the client it returned)."""
        with self._lock:
            self._open -= 1
            if name is not None:
                self._by_client[name] -= 1
                if not self._by_client[name]:
                    del self._by_client[name]

    @contextmanager
    def slot(self):
        """A slot for the duration of the block."""
        name = self.take()
        try:
            yield
        finally:
            self.give_back(name)


def _refused(reason: str, details: dict) -> ApiError:
    """429 too_many_streams, with when to try again."""
    return ApiError(429, "too_many_streams", f"{reason}; try again later or poll", details,
                    headers={"Retry-After": str(STREAMS_RETRY)})


def wait_param() -> float:
    """The `wait` query parameter: seconds from 0 to 60 (default 0: answer at once)."""
    if not request.environ.get("QUERY_STRING"):
        return 0.0  # the usual poll: no query string to parse
    values = request.args.getlist("wait")
    if not values:
        return 0.0
    try:
        seconds = float(values[0])
    except ValueError:
        seconds = -1.0
    if len(values) > 1 or not 0 <= seconds <= MAX_WAIT:
        raise ApiError(400, "invalid_parameter",
                       f"query parameter 'wait' must be given once, seconds from 0 to {MAX_WAIT}",
                       {"parameter": "wait"})
    return seconds


def waited_job(job: Job, seconds: float) -> Job:
    """The job once it has ended, or as it stands after `seconds` (0: at once)."""
    if seconds <= 0 or job.status.finished:
        return job
    context = ctx()
    with context.streams.slot():
        watch, job_id = context.watch, job.job_id
        version = watch.begin(job_id)
        try:
            deadline = time.monotonic() + seconds
            job = current_job(context.store, job_id) or job
            while not job.status.finished and not watch.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                version = watch.wait(job_id, version, wait_within(context.store, job_id, left))
                job = current_job(context.store, job_id) or job
        finally:
            watch.end(job_id)
    return job


@bp.get("/jobevents", defaults={"job_id": ""})
@bp.get("/jobevents/<anypath:job_id>")
def jobevents(job_id: str):
    """The job's status at once and at every change, its progress in between; ends after
    the final status (or at shutdown)."""
    job = known_job(job_id, anywhere=True)
    context = ctx()

    def render(kind: str, job: Job) -> bytes:
        if kind == "status":
            return event("status", _view(context, job))
        return event("progress", job.progress())
    return event_stream(context, job.job_id, render)


def event_stream(context, job_id: str, render) -> Response:
    """A Server-Sent Events response following one job: `render("status", job)` at once and
    at every status change, `render("progress", job)` when its progress moved (at most 4 a
    second), a comment when nothing was written for 15 s; it ends after the final status or
    at shutdown. Holds a stream slot (429 too_many_streams when none is free)."""
    client = context.streams.take()
    try:
        version = context.watch.begin(job_id)
    except BaseException:
        context.streams.give_back(client)
        raise
    done = threading.Lock()

    def finish() -> None:
        """Once: stop watching and free the slot (when the stream ends, or when waitress
        closes a response it never iterated, the client having gone)."""
        if done.acquire(blocking=False):
            context.watch.end(job_id)
            context.streams.give_back(client)

    response = Response(_events(context, job_id, version, finish, render),
                        mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    response.call_on_close(finish)
    return response


def _events(context, job_id: str, version: int, finish, render):
    """The stream: status events on status changes, throttled progress events, keep-alives."""
    store, watch = context.store, context.watch
    try:
        job = current_job(store, job_id)
        if job is None:
            return
        yield render("status", job)
        shown_status, shown_progress, progress_at = job.status, job.progress(), 0.0
        written = time.monotonic()
        while not job.status.finished and not watch.closed:
            now = time.monotonic()
            pending = job.progress() != shown_progress
            quiet = written + KEEPALIVE - now  # a comment is due this long after the last write
            timeout = min(max(0.0, progress_at + PROGRESS_EVERY - now), quiet) if pending else quiet
            version = watch.wait(job_id, version, wait_within(store, job_id, max(0.0, timeout)))
            job = current_job(store, job_id)
            if job is None:
                return
            now = time.monotonic()
            if job.status != shown_status:
                shown_status, shown_progress = job.status, job.progress()
                yield render("status", job)
            elif job.progress() != shown_progress and now >= progress_at + PROGRESS_EVERY:
                shown_progress, progress_at = job.progress(), now
                yield render("progress", job)
            elif now >= written + KEEPALIVE:
                yield b": keep-alive\n\n"
            else:
                continue
            written = now
    finally:
        finish()


def current_job(store, job_id: str) -> Job | None:
    """The job as it stands: held here, or another node's as its row was last read (at most
    FRESH_FOR old); None if it is gone, or its row cannot be read now (the stream ends)."""
    try:
        return store.lookup(job_id)
    except StorageUnavailable:
        return None


def wait_within(store, job_id: str, seconds: float) -> float:
    """How long to wait for a job's next change: another node's changes wake no one here, so
    its row is read again every FRESH_FOR seconds."""
    return seconds if store.get(job_id) is not None else min(seconds, FRESH_FOR)


def _view(context, job: Job) -> dict:
    """A job as /jobstatus shows it (from the context given: the stream runs after the
    request's app context has ended)."""
    return job_view(job, held_position(job, context), webhook_state(job, context))


def event(name: str, data) -> bytes:
    """One Server-Sent Event (the data is one line of JSON)."""
    return b"event: " + name.encode() + b"\ndata: " + to_json(data) + b"\n\n"


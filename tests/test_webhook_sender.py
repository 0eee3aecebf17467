"""The webhook sender's own failures: a database that refuses a write, a receiver's backlog,
a receiver that answers byte by byte, connection pools, stopping. Forced with events and
stand-ins (never sleeps); real sockets on loopback only where sockets are the point."""
from __future__ import annotations

import logging
import socket
import sqlite3
import threading
import time
from contextlib import contextmanager

import pytest

import cylindria.webhooks.sender as sender_module
from comfy.tracking.events import finish
from comfy.jobs.job import Job, JobStatus
from comfy.jobs.store import JobStore
from tests.backends import sqlite_storage
from cylindria.webhooks.address import Target
from cylindria.webhooks.outbox import Outbox
from cylindria.webhooks.sender import PER_RECEIVER, WebhookSender

SECRET = "whsec_" + "QUJD" * 8


def add_hooked(store: JobStore, job_id: str, hook: str) -> None:
    """A job with a webhook, ended at once: one job.completed event, due now."""
    store.reserve(Job(job_id=job_id, gpu_id=0, prompt_id=f"p-{job_id}", fingerprint="f",
                      webhook=hook), b"{}")
    store.release(job_id, f"p-{job_id}")
    store.change(job_id, finish(JobStatus.COMPLETED))


def hooked_jobs(path, *hooks: str) -> tuple[JobStore, Outbox]:
    """A store and its outbox with one due event per webhook URL, in this order."""
    storage = sqlite_storage(path)
    store = JobStore(storage.jobs)
    outbox = Outbox(storage.outbox, lambda job: {"job_id": job.job_id})
    store.commit_with(outbox.rows_for)
    for n, hook in enumerate(hooks):
        add_hooked(store, f"j{n}", hook)
    return store, outbox


class Posting(WebhookSender):
    """A sender whose POST is a stand-in: `answer(event)` is what the receiver did (None:
    took it)."""

    def __init__(self, outbox, answer=lambda event: None, **options):
        super().__init__(outbox, SECRET, **options)
        self.answer = answer
        self.posted: list[str] = []

    def _post(self, event, cutter):
        self.posted.append(event.id)
        return self.answer(event)


class Failing:
    """The outbox, but each named method raises SQLite's error the first time it is called
    (and wakes the sender, as a new event would, so that its loop goes on at once)."""

    def __init__(self, outbox: Outbox, *names: str):
        self._outbox = outbox
        self.failing = set(names)
        self.spent = threading.Event()  # every named method has failed once

    def __getattr__(self, name):
        real = getattr(self._outbox, name)
        if name not in self.failing:
            return real

        def fail(*args, **kwargs):
            self.failing.discard(name)
            if not self.failing:
                self.spent.set()
            self._outbox.wake.set()
            raise sqlite3.OperationalError("database or disk is full")
        return fail


class Stalling:
    """A receiver on loopback that takes one connection and answers its requests with
    `answers`, one each; after the last it sends nothing more (as one dripping its answer
    does between two bytes) until the sender hangs up."""

    def __init__(self, *answers: bytes):
        self.answers = answers
        self.requested, self.hung_up = threading.Event(), threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/h?token=hush"
        self._conn: socket.socket | None = None
        self._thread = threading.Thread(target=self._serve, name="stalling-receiver", daemon=True)

    def __enter__(self) -> "Stalling":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        for sock in (self._listener, self._conn):
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the accept or read below
                except OSError:
                    pass
        self._thread.join(10)
        self._listener.close()

    def _serve(self) -> None:
        try:
            self._conn, _ = self._listener.accept()
            with self._conn, self._conn.makefile("rb") as requests:
                for answer in self.answers:
                    if not _read_request(requests):
                        return
                    self.requested.set()
                    self._conn.sendall(answer)
                requests.read()  # whatever else comes, until the sender hangs up
                self.hung_up.set()
        except OSError:
            pass


def _read_request(requests) -> bool:
    """Read one HTTP request, body included; False if the sender hung up first."""
    length = 0
    while (line := requests.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    requests.read(length)
    return line == b"\r\n"


@pytest.fixture
def path(tmp_path):
    return tmp_path


def test_an_outcome_the_database_refuses_is_logged_and_that_event_waits_before_its_next_try(
        path, caplog):
    """Before: the error vanished into a future and the event, still due, was POSTed again at
    once, again and again."""
    store, outbox = hooked_jobs(path, "http://receiver.example/h?token=hush")
    now = [time.time()]
    sender = Posting(Failing(outbox, "delivered"), clock=lambda: now[0])
    try:
        with caplog.at_level(logging.WARNING, logger="cylindria.webhooks.sender"):
            assert sender.deliver_once() == 0
        [event_id] = sender.posted
        assert any(event_id in r.getMessage() and r.exc_info for r in caplog.records)
        assert "hush" not in caplog.text and SECRET not in caplog.text
        assert sender.deliver_once() == 0 and sender.deliver_once() == 0
        assert sender.posted == [event_id]  # held back, though still due in the outbox
        now[0] += sender_module.HOLD_AFTER_DB_ERROR + 1
        assert sender.deliver_once() == 1 and sender.posted == [event_id, event_id]
        assert outbox.depth() == 0
    finally:
        sender.stop()


def test_the_thread_lives_through_sql_errors_in_every_part_of_its_loop(path):
    """Before: an error in the query that picks the next wake-up ended the thread for good."""
    store, outbox = hooked_jobs(path)
    failing = Failing(outbox, "due", "next_due")
    delivered = threading.Event()
    sender = Posting(failing, answer=lambda event: delivered.set())
    sender.start()
    try:
        assert failing.spent.wait(10)
        add_hooked(store, "later", "http://receiver.example/h")
        outbox.wake.set()
        assert delivered.wait(10)
        assert sender._thread.is_alive()
    finally:
        sender.stop()


@pytest.mark.parametrize("one_url", [True, False], ids=["one-url", "a-url-per-job"])
def test_a_receivers_backlog_does_not_hold_back_another_receivers_events(path, monkeypatch,
                                                                       one_url):
    """A dozen events due at a receiver that takes its time, then one to another receiver:
    that one goes at once (before: not until the first receiver's backlog drained)."""
    monkeypatch.setattr(sender_module, "PAGE", 4)  # several pages of the stuck receiver's rows
    stuck = [f"http://stuck.example/h{'' if one_url else n}" for n in range(12)]
    store, outbox = hooked_jobs(path, *stuck, "http://other.example/h")
    release, other = threading.Event(), threading.Event()

    def answer(event):
        if "other" in event.url:
            other.set()
        else:
            assert release.wait(10)
    sender = Posting(outbox, answer=answer)
    try:
        assert sender.deliver_once(wait=False) == PER_RECEIVER + 1
        assert other.wait(10)
        assert sender.deliver_once(wait=False) == 0  # nothing more at the stuck receiver
    finally:
        release.set()
        sender.stop(timeout=10)


@pytest.fixture
def hour_timeouts(monkeypatch):
    """Connect and read timeouts of an hour: only the deadline can end a stalled try."""
    monkeypatch.setattr(sender_module, "CONNECT_TIMEOUT", 3600.0)
    monkeypatch.setattr(sender_module, "READ_TIMEOUT", 3600.0)


@contextmanager
def sending_to(path, receiver: Stalling, scheme: str = "http", **options):
    """A real sender (loopback allowed) with one event due to `receiver`; all closed after."""
    store, outbox = hooked_jobs(path, receiver.url.replace("http:", f"{scheme}:"))
    sender = WebhookSender(outbox, SECRET, allow_private=True, **options)
    try:
        yield store, outbox, sender
    finally:
        sender.stop()


def test_a_try_is_cut_off_at_its_deadline_however_slowly_the_receiver_drips(path, hour_timeouts):
    """Each read is within the read timeout; the whole try is not: it fails, counted as an
    attempt and retried on the schedule."""
    with Stalling(b"HTTP/1.1 200 OK\r\n") as receiver, \
            sending_to(path, receiver, deadline=0.5) as (store, outbox, sender):
        assert sender.deliver_once() == 0 and receiver.hung_up.wait(10)
        [event] = outbox.due(float("inf"), 10)
        assert event.attempts == 1 and event.due_at > time.time()
        assert outbox.summary(store.get("j0"))["last_error"] == "no complete answer within 0.5s"


def test_a_kept_connection_used_again_is_cut_off_at_the_deadline_too(path, hour_timeouts):
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    with Stalling(answer, b"") as receiver, \
            sending_to(path, receiver, deadline=0.5) as (store, outbox, sender):
        assert sender.deliver_once() == 1  # a short answer: its connection is kept
        add_hooked(store, "again", receiver.url)
        assert sender.deliver_once() == 0  # the receiver takes no second connection
        assert receiver.hung_up.wait(10)


def test_a_tls_handshake_that_never_ends_is_cut_off_at_the_deadline(path, hour_timeouts):
    with Stalling() as receiver, \
            sending_to(path, receiver, "https", deadline=0.5) as (store, outbox, sender):
        assert sender.deliver_once() == 0  # it took the connection, never answers the hello
        assert outbox.summary(store.get("j0"))["last_error"] == "no complete answer within 0.5s"


def test_only_the_status_of_an_answer_is_read(path, hour_timeouts):
    """A 200 followed by a long body that never comes: delivered at once, connection closed."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nfirst bytes"
    with Stalling(head) as receiver, \
            sending_to(path, receiver, deadline=3600.0) as (store, outbox, sender):
        delivered = threading.Event()
        sender.on_delivered = lambda seconds: delivered.set()
        sender.deliver_once(wait=False)
        assert delivered.wait(10) and receiver.hung_up.wait(10)
        assert outbox.depth() == 0


def test_stop_cuts_a_try_under_way_short_and_leaves_its_event_due(path, hour_timeouts):
    """Before: the worker stayed in its read (and the interpreter's exit waited for it)."""
    with Stalling(b"") as receiver, sending_to(path, receiver) as (store, outbox, sender):
        assert sender.deliver_once(wait=False) == 1
        assert receiver.requested.wait(10)
        sender.stop(timeout=5.0)
        assert receiver.hung_up.wait(10)
        [event] = outbox.due(float("inf"), 10)  # not counted: the receiver was not at fault
        assert event.attempts == 0 and sender.counts["failed_attempts"] == 0


def test_connection_pools_are_capped_least_recently_used_first_and_closed_at_stop(path,
                                                                               monkeypatch):
    monkeypatch.setattr(sender_module, "MAX_POOLS", 2)
    store, outbox = hooked_jobs(path)
    sender = WebhookSender(outbox, SECRET)

    def target(address: str) -> Target:
        return Target(f"http://{address}/h", "http", address, 80, (address,))
    a = sender._pool(target("192.0.2.1"))
    b = sender._pool(target("192.0.2.2"))
    assert sender._pool(target("192.0.2.1")) is a  # used again: now the most recent
    c = sender._pool(target("192.0.2.3"))
    assert b.pool is None and a.pool is not None and c.pool is not None  # b closed
    assert len(sender._pools) == 2
    sender.stop()
    assert a.pool is None and c.pool is None and not sender._pools

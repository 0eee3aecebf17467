"""Webhook deliveries are shared between submitting clients: one client's receivers that never
answer cannot hold the sender's workers, whatever hosts or ports they sit on. A real server and
real sockets on loopback where the hang is the point; stand-in POSTs for the sender's counts.
Forced with events, never sleeps."""
from __future__ import annotations

import socket
import threading
import time

import pytest

import cylindria.webhooks.sender as sender_module
from comfy.tracking.events import finish
from comfy.jobs.job import Job, JobStatus
from comfy.jobs.store import JobStore
from tests.backends import sqlite_storage
from cylindria.service.server import Service
from tests import workflows
from tests.conftest import make_config
from tests.helpers import Api, wait_for
from tests.webhook_receiver import Receiver
from cylindria.webhooks.outbox import Outbox
from cylindria.webhooks.sender import PER_RECEIVER, WORKERS, WebhookSender

SECRET = "whsec_" + "QUJD" * 8
ALICE, BOB = "alice-key-0123456", "bob-key-0123456789"


class Hanging:
    """Receivers on loopback ports that accept every connection and never answer, holding
    it; they note when the sender gives up on one (closes it)."""

    def __init__(self, ports: int):
        self.count = ports
        self.ports: list[int] = []
        self.accepted = 0
        self.first_close: float | None = None  # time.time() of the sender's first give-up
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listeners = []
        self._held: list[socket.socket] = []

    def start(self) -> "Hanging":
        for _ in range(self.count):
            listener = socket.create_server(("127.0.0.1", 0), backlog=64)
            self.ports.append(listener.getsockname()[1])
            listener.settimeout(0.2)
            self._listeners.append(listener)
            threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with self._lock:
                self.accepted += 1
                self._held.append(conn)
            threading.Thread(target=self._hold, args=(conn,), daemon=True).start()

    def _hold(self, conn: socket.socket) -> None:
        """Read and drop the request; note when the sender closes its end."""
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass
        with self._lock:
            if not self._stop.is_set() and self.first_close is None:
                self.first_close = time.time()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            for sock in self._listeners + self._held:
                sock.close()


@pytest.fixture
def long_tries(monkeypatch):
    """Tries of Bob's hanging receivers last a minute (not 10 s): nothing but Alice's own
    delivery can come before them, however loaded the machine."""
    monkeypatch.setattr(sender_module, "READ_TIMEOUT", 60.0)
    monkeypatch.setattr(sender_module, "DEADLINE", 60.0)


def test_one_clients_hanging_receivers_do_not_hold_back_another_clients_event(
        fakes, tmp_path, long_tries):
    """Bob's 24 jobs post to 4 receivers (4 ports of one host) that never answer; Alice's
    event reaches her receiver while every one of Bob's tries still hangs."""
    hanging, alice_receiver = Hanging(4).start(), Receiver().start()
    config = make_config(fakes, tmp_path, webhook_allow_private=True,
                         api_keys=(f"alice:{ALICE}:own", f"bob:{BOB}:own"))
    try:
        with Service(config) as service:
            alice, bob = Api(service.url, key=ALICE), Api(service.url, key=BOB)
            for n in range(24):
                hook = f"http://127.0.0.1:{hanging.ports[n % 4]}/bob"
                answer = bob.put(f"/startjob/bob-{n}?GpuId=0&webhook={hook}",
                                 json=workflows.core(f"bob{n}"))
                assert answer.status_code == 201, answer.text
            wait_for(lambda: hanging.accepted >= PER_RECEIVER, 30, message="Bob's tries to hang")
            answer = alice.put(f"/startjob/alice-1?GpuId=1&webhook={alice_receiver.url}/alice",
                               json=workflows.core("alice1"))
            assert answer.status_code == 201, answer.text
            [first] = alice_receiver.wait(1, timeout=30)
            assert hanging.first_close is None or first.at < hanging.first_close, \
                "Alice's event waited for one of Bob's tries to give up"
    finally:
        alice_receiver.stop()
        hanging.stop()


def hooked(path, *events: tuple[str, str]) -> tuple[JobStore, Outbox]:
    """A store and its outbox with one due event per (client, webhook URL), in this order."""
    storage = sqlite_storage(path)
    store = JobStore(storage.jobs)
    outbox = Outbox(storage.outbox, lambda job: {"job_id": job.job_id})
    store.commit_with(outbox.rows_for)
    for n, (client, hook) in enumerate(events):
        store.reserve(Job(job_id=f"j{n}", gpu_id=0, prompt_id=f"p{n}", fingerprint="f",
                          webhook=hook, submitted_by=client), b"{}")
        store.release(f"j{n}", f"p{n}")
        store.change(f"j{n}", finish(JobStatus.COMPLETED))
    return store, outbox


class Stuck(WebhookSender):
    """A sender whose POSTs hang until released, but Alice's, which are taken."""

    def __init__(self, outbox):
        super().__init__(outbox, SECRET)
        self.release, self.others = threading.Event(), threading.Event()
        self.posted: list[str] = []

    def _post(self, event, cutter):
        self.posted.append(event.url)
        if "alice" in event.url:
            self.others.set()
        else:
            assert self.release.wait(10)


@pytest.fixture
def stuck(tmp_path):
    made = []

    def make(*events):
        store, outbox = hooked(tmp_path, *events)
        sender = Stuck(outbox)
        made.append((store, outbox, sender))
        return sender
    yield make
    for store, outbox, sender in made:
        sender.release.set()
        sender.stop(timeout=10)


def test_a_client_alone_leaves_workers_free_for_the_next_client(stuck):
    """Bob's events to as many hosts as there are workers: Alice's, due after all of them,
    still starts in the same pass."""
    bobs = [("bob", f"http://bob{n}.example/h") for n in range(WORKERS)]
    sender = stuck(*bobs, ("alice", "http://alice.example/h"))
    started = sender.deliver_once(wait=False)
    assert sender.others.wait(10), "Alice's event did not start"
    assert started == len(sender.posted) <= WORKERS


def test_clients_share_the_workers_while_both_have_due_events(stuck):
    """Bob's and Carol's receivers all hang, Bob's events are older: Carol's get workers too."""
    sender = stuck(*[("bob", f"http://bob{n}.example/h") for n in range(WORKERS)],
                   *[("carol", f"http://carol{n}.example/h") for n in range(WORKERS)])
    sender.deliver_once(wait=False)
    held = lambda client: sum(1 for url in sender.posted if client in url)
    assert held("carol") >= 1
    assert held("bob") + held("carol") == WORKERS


def test_more_ports_of_one_host_give_no_more_tries_at_once(stuck):
    sender = stuck(*[("bob", f"http://bob.example:{8000 + n}/h") for n in range(WORKERS)])
    assert sender.deliver_once(wait=False) == PER_RECEIVER


def test_one_clients_hanging_host_does_not_cap_another_clients_receiver_there(stuck):
    """The per-receiver cap is each client's: Bob's tries hanging at a shared host leave
    Alice's receiver on that host its own slots."""
    sender = stuck(*[("bob", f"http://shared.example/bob{n}") for n in range(PER_RECEIVER)],
                   ("alice", "http://shared.example/alice"))
    assert sender.deliver_once(wait=False) == PER_RECEIVER + 1
    assert sender.others.wait(10)

"""The webhook sender: posts the outbox's due events, signed as Standard Webhooks, at least
once each, with backoff and jitter for a day, then gives up.

Each try checks the receiver's address again (cylindria/webhooks/address.py): a name that resolved to a
public address at submission may resolve to a private one now. The connection then goes to
the very address that was checked (one urllib3 pool per receiver address, TLS still verified
against the URL's host name), so DNS cannot swap it between the check and the connection.
In a fleet every node reads every due event (any node can send any from its row), and a
try starts only once its event is claimed in the database (Outbox.claim): one node sends an
event at a time. Deliveries run on a few worker threads, each try within a deadline; the job
store is never touched, so tracking never waits for a receiver. The workers are shared between
the clients that submitted the jobs (their `submitted_by`), so one client's receivers that
never answer cannot hold them all: another client's event still starts at once.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import socket
import threading
import time
from collections import Counter, OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor, wait as wait_for_futures
from datetime import datetime, timezone
from typing import Callable, Iterator
from urllib.parse import urlsplit

import certifi
import urllib3
from standardwebhooks.webhooks import Webhook

from cylindria.storage import StorageUnavailable
from cylindria.webhooks.address import InvalidWebhook, Target, check_webhook
from cylindria.webhooks.outbox import Event, Outbox, shown_url
from cylindria.webhooks.schedule import DELAYS, GIVE_UP_AFTER, next_try

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT, READ_TIMEOUT = 3.0, 10.0
DEADLINE = 15.0  # seconds a whole try may take: the read timeout bounds each read, not the sum
WORKERS = 8
# Tries at once to one receiver host (all its ports), each client's apart: a slow one leaves
# workers for the others, and another client's receiver on that host keeps its own slots.
PER_RECEIVER = 4
# Workers a client with due events alone may not take: another client's first event starts at
# once. With several clients waiting, each may hold an equal part of the workers.
SPARE = 2
PAGE = 32  # due events read at a time, reading on past those whose receiver, client or job is busy
# Reading on past the first page scans every due event (a busy receiver's backlog included),
# so it is done at most this often: a backlog delays another receiver's events by no more.
READ_ON_EVERY = 0.2
MAX_POOLS = 64  # receiver addresses whose connections are kept; the least recently used go
KEEP_ANSWER = 1024  # an answer this short (by its Content-Length) is read to keep the connection
HOLD_AFTER_DB_ERROR = 30.0  # seconds an event whose outcome could not be recorded is not tried
# Seconds a claim outlives a try's deadline: the address check before the connection and the
# write of the outcome after it are outside the deadline. A claim that lapses while its try
# still runs only lets another node send the event again (at least once).
CLAIM_MARGIN = 15.0


class WebhookSender:
    """start(), stop(timeout), deliver_once(): the usual thread shape."""

    def __init__(self, outbox: Outbox, secret: str, *, allow_private: bool = False,
                 comfy: frozenset = frozenset(), local: Callable[[], frozenset] = frozenset,
                 delays: tuple = DELAYS,
                 give_up_after: float = GIVE_UP_AFTER, deadline: float = DEADLINE,
                 tick: float = 1.0, clock: Callable[[], float] = time.time, resolve=None):
        self.outbox = outbox
        self._signer = Webhook(secret)
        self.allow_private = allow_private
        self.comfy = comfy
        self.local = local  # this host's addresses, as of now (cylindria/webhooks/host.py)
        self.delays = delays
        self.give_up_after = give_up_after
        self.deadline = deadline
        self.tick = tick
        self.clock = clock
        self.resolve = resolve
        self.counts: Counter = Counter()  # delivered, failed_attempts, given_up
        self.on_delivered: Callable[[float], None] | None = None  # seconds from the event
        self._lock = threading.Lock()
        self._trying: dict[str, Event] = {}  # event id -> event, of the tries under way
        # Jobs with an event being tried: their next event waits for that try to end, so a
        # receiver that answers gets a job's events in order (started before completed). An
        # event that failed does not hold the next one back while it waits for its retry.
        self._jobs_trying: set[str] = set()
        self._per_receiver: Counter = Counter()  # origin -> tries under way
        self._per_client: Counter = Counter()  # client -> tries under way
        self._held: dict[str, float] = {}  # event id -> when it may be tried again
        self._read_on_at = float("-inf")  # monotonic time from which _due may read on
        self._cutters: set[_Cutter] = set()  # of the tries under way, for stop()
        self._futures: set[Future] = set()
        self._pools: OrderedDict[tuple, urllib3.HTTPConnectionPool] = OrderedDict()
        self._workers = ThreadPoolExecutor(WORKERS, thread_name_prefix="cylindria-webhook")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.run, name="cylindria-webhooks", daemon=True)

    def start(self) -> None:
        """Start delivering (events left undelivered by an earlier run go first)."""
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Stop taking events and cut the tries under way short, all within `timeout` (an
        event whose try did not finish stays due and is sent again: at least once)."""
        until = time.monotonic() + timeout
        self._stop.set()
        self.outbox.wake.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)
        self._workers.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            cutters, futures = list(self._cutters), list(self._futures)
        for cutter in cutters:
            cutter.cut()
        # Waited for, so that their outcomes are written before the outbox closes.
        unfinished = wait_for_futures(futures, max(0.0, until - time.monotonic())).not_done
        if self._thread.is_alive() or unfinished:
            logger.warning("webhook sender did not stop in %.1fs (%d tries under way)", timeout,
                           len(unfinished))
        with self._lock:
            pools = list(self._pools.values())
            self._pools.clear()
        for pool in pools:
            pool.close()

    def run(self) -> None:
        """Deliver until stopped: at once when an event is committed, else at the next due."""
        while not self._stop.is_set():
            self.outbox.wake.clear()
            try:
                started = self.deliver_once(wait=False)
                pause = self._idle(blocked=not started)
            except StorageUnavailable:  # logged once by the storage; asks again later
                pause = self.tick
            except Exception:  # a locked or full database: the thread lives on, asks again later
                logger.exception("webhook delivery pass failed")
                pause = self.tick
            self.outbox.wake.wait(pause)

    def _idle(self, blocked: bool) -> float:
        """Seconds to sleep before the next pass; woken earlier by a new event or by the end of
        a try. A pass that could start nothing (every due event's receiver, client or job
        busy) waits for a try to end rather than asking the outbox again at once: that would
        spin."""
        due = self.outbox.next_due()
        if due is None:
            return self.tick
        wait = max(0.0, due - self.clock())
        return self.tick if blocked and wait == 0.0 else min(self.tick, wait)

    def deliver_once(self, wait: bool = True) -> int:
        """Start a try of every due event that may start now (a worker free, its receiver,
        its client and its job not busy); with `wait`, wait for those tries and return how
        many were delivered, else return how many were started."""
        started, waiting = [], set()  # waiting: the clients with an event due in this pass
        for event in self._due(waiting):
            origin = _origin(event)
            with self._lock:
                if len(self._trying) >= WORKERS:
                    break
                waiting.add(event.client)
                if self._per_receiver[origin] >= PER_RECEIVER or event.id in self._trying \
                        or event.job_id in self._jobs_trying \
                        or self._per_client[event.client] >= self._share(waiting):
                    continue
                self._per_receiver[origin] += 1
                self._per_client[event.client] += 1
                self._trying[event.id] = event
                self._jobs_trying.add(event.job_id)
            future = self._submit(event, origin)
            if future is None:
                break
            started.append(future)
        if not wait:
            return len(started)
        return sum(1 for future in started if future.result())

    def _share(self, waiting: set) -> int:
        """Tries one client may hold at once (under the lock): all workers but SPARE while
        no other client is known to wait, else an equal part for each of them."""
        clients = len(waiting | {client for client, n in self._per_client.items() if n > 0})
        return WORKERS - SPARE if clients <= 1 else max(1, WORKERS // clients)

    def _due(self, waiting: set) -> Iterator[Event]:
        """The due events, oldest first, page by page, so that a backlog at a busy receiver
        or of a busy client never hides other events; the SQL leaves out what surely cannot
        start. `waiting`: the clients seen with due events so far in this pass."""
        now, after = self.clock(), None
        read_on = time.monotonic() >= self._read_on_at
        while True:
            with self._lock:
                self._held = {key: until for key, until in self._held.items() if until > now}
                full = {origin for origin, n in self._per_receiver.items() if n >= PER_RECEIVER}
                share = self._share(waiting)
                busy = {"skip": set(self._trying) | set(self._held),
                        "jobs": set(self._jobs_trying),
                        "urls": {e.url for e in self._trying.values() if _origin(e) in full},
                        "clients": {c for c, n in self._per_client.items() if n >= share}}
            # The first page only as long as the free workers (the usual case: one receiver
            # with a try just ended); reading on takes whole pages.
            # It leaves the full receivers and clients to the loop below: excluding them in
            # SQL scans their whole backlog, which only reading on (rate-limited) may do.
            limit = PAGE if after is not None else max(1, WORKERS - len(busy["skip"]))
            if after is None:
                busy["urls"], busy["clients"] = set(), set()
            page = self.outbox.due(now, limit, after=after, **busy)
            yield from page
            if len(page) < limit:
                return
            if after is None:
                if not read_on:  # the next pass reads on (a try's end or the tick wakes it)
                    return
                self._read_on_at = time.monotonic() + READ_ON_EVERY
            after = (page[-1].due_at, page[-1].id)

    def _submit(self, event: Event, origin: tuple) -> Future | None:
        """Hand the try to a worker; None if stopped meanwhile (the event stays due)."""
        try:
            future = self._workers.submit(self._try, event, origin)
        except RuntimeError:
            self._done(event, origin)
            return None
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: Future) -> None:
        with self._lock:
            self._futures.discard(future)

    def _try(self, event: Event, origin: tuple) -> bool:
        """One try of one event, its outcome recorded before the event may be picked again
        (else a pass in between would see it still due, and send it twice). True if delivered."""
        try:
            if not self.outbox.claim(event.id, self.clock(), self.deadline + CLAIM_MARGIN):
                return False  # another node is trying it, or settled it since it was read
            error = self._attempt(event)
            if error is not None and self._stop.is_set():
                return False  # cut short by stop(): not the receiver's failure, and still due
            return self._record(event, error)
        except StorageUnavailable:  # logged once by the storage; the event stays due
            with self._lock:
                self._held[event.id] = self.clock() + HOLD_AFTER_DB_ERROR
            return False
        except Exception:  # its outcome is not written (a locked or full database): were it
            # picked again at once, it would be POSTed in a tight loop
            with self._lock:
                self._held[event.id] = self.clock() + HOLD_AFTER_DB_ERROR
            logger.exception("webhook %s: its try could not be settled; not tried again for "
                             "%.0fs", event.id, HOLD_AFTER_DB_ERROR)
            return False
        finally:
            self._done(event, origin)

    def _attempt(self, event: Event) -> str | None:
        """POST the event within the deadline: None if the receiver took it, else why not."""
        cutter = _Cutter(self.deadline)
        with self._lock:
            self._cutters.add(cutter)
        if self._stop.is_set():  # stop() may have cut the others before this one was listed
            cutter.cut()
        _running.cutter = cutter
        try:
            error = self._post(event, cutter)
        except Exception as exc:  # a bug must not lose the event: it is tried again
            logger.exception("webhook %s: try failed", event.id)
            error = f"internal error: {type(exc).__name__}"
        finally:
            _running.cutter = None
            cutter.end()
            with self._lock:
                self._cutters.discard(cutter)
        if error is not None and cutter.passed:
            return f"no complete answer within {self.deadline:g}s"
        return error

    def _record(self, event: Event, error: str | None) -> bool:
        """Settle one try: delivered, due again later, or given up."""
        now = self.clock()
        if error is None:
            self.outbox.delivered(event.id, now)
            self._count("delivered")
            if self.on_delivered is not None:
                self.on_delivered(max(0.0, now - event.created_at))
            return True
        self._count("failed_attempts")
        due = next_try(event.created_at, now, event.attempts + 1, self.delays, self.give_up_after)
        if due is not None:
            self.outbox.retry(event.id, error, due)
            return False
        self.outbox.give_up(event.id, error, now)
        self._count("given_up")
        logger.warning("webhook %s (%s of job %s to %s) given up after %d tries in %.0fs: %s",
                       event.id, event.event, event.job_id, shown_url(event.url),
                       event.attempts + 1, now - event.created_at, error)
        return False

    def _count(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1

    def _done(self, event: Event, origin: tuple) -> None:
        with self._lock:
            self._trying.pop(event.id, None)
            self._jobs_trying.discard(event.job_id)
            _release(self._per_receiver, origin)
            _release(self._per_client, event.client)
        self.outbox.wake.set()  # a job's next event, or a receiver's, may go now

    def _post(self, event: Event, cutter: _Cutter) -> str | None:
        """POST the event, signed; None if the receiver took it (2xx), else why not."""
        try:
            target = check_webhook(event.url, allow_private=self.allow_private, comfy=self.comfy,
                                   local=self.local(), resolve=self.resolve)
        except InvalidWebhook as exc:
            return f"refused: {exc}"
        now = self.clock()
        body = event.body.decode("utf-8")
        signature = self._signer.sign(event.id, datetime.fromtimestamp(now, timezone.utc), body)
        parts = urlsplit(event.url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = {"Content-Type": "application/json", "User-Agent": "Cylindria-Webhooks/1",
                   "Host": _host_header(target), "webhook-id": event.id,
                   "webhook-timestamp": str(int(now)), "webhook-signature": signature}
        try:
            response = self._pool(target).urlopen(
                "POST", path, body=event.body, headers=headers, retries=False, redirect=False,
                timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT),
                preload_content=False, assert_same_host=False)
        except urllib3.exceptions.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"[:300]
        whole = not cutter.passed  # a head cut off by the deadline would read as complete
        _let_go(response, whole)
        if whole and 200 <= response.status < 300:
            return None
        return f"HTTP {response.status}"

    def _pool(self, target: Target) -> urllib3.HTTPConnectionPool:
        """The connection pool to the address this try checked (kept per receiver address,
        the least recently used closed beyond MAX_POOLS)."""
        address = target.addresses[0]
        key = (target.scheme, target.host, target.port, address)
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                if target.scheme == "https":
                    pool = _HTTPSPool(address, target.port, maxsize=PER_RECEIVER,
                                      cert_reqs="CERT_REQUIRED", ca_certs=certifi.where(),
                                      server_hostname=target.host, assert_hostname=target.host)
                else:
                    pool = _HTTPPool(address, target.port, maxsize=PER_RECEIVER)
                self._pools[key] = pool
            self._pools.move_to_end(key)
            evicted = [self._pools.popitem(last=False)[1]
                       for _ in range(len(self._pools) - MAX_POOLS)]
        for old in evicted:  # its connections in use are closed when they come back
            old.close()
        return pool


class _Cutter:
    """Ends one try at its deadline (or at stop()) by shutting down its sockets: a shutdown
    wakes a read blocked in the worker, where a close would not. It shuts duplicates of their
    descriptors, so a descriptor the try closed and the OS gave to another socket is never hit."""

    def __init__(self, seconds: float):
        self.passed = False
        self.ended = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        _DEADLINES.add(self, seconds)

    def watch(self, sock: socket.socket) -> None:
        """Cut this socket too (at once if the time is up already)."""
        try:
            duplicate = socket.fromfd(sock.fileno(), sock.family, sock.type)
        except OSError:  # closed already: nothing to cut
            return
        with self._lock:
            self._sockets.append(duplicate)
            if self.passed:
                _shut(duplicate)

    def cut(self) -> None:
        with self._lock:
            self.passed = True
            for sock in self._sockets:
                _shut(sock)

    def end(self) -> None:
        """The try is over: no cut any more, duplicates closed."""
        with self._lock:
            self.ended = True
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()
        _DEADLINES.ended()


class _Deadlines:
    """One thread cuts the tries whose deadline has passed (a timer thread per try would cost
    a thread start for every webhook). It runs only while tries are under way."""

    def __init__(self):
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Cutter]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, cutter: _Cutter, seconds: float) -> None:
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + seconds, next(self._order), cutter))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="cylindria-webhook-deadlines")
                self._thread.start()
            else:
                self._cond.notify()

    def ended(self) -> None:
        """A try ended: the thread forgets it (and ends once none is left)."""
        with self._cond:
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._heap and self._heap[0][2].ended:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._thread = None
                    return
                when, _, cutter = self._heap[0]
                wait = when - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
            cutter.cut()


_DEADLINES = _Deadlines()
_running = threading.local()  # .cutter: the _Cutter of the try this worker thread runs


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # the peer or the try closed it already
        pass


class _Watched:
    """A urllib3 connection that puts its socket under the running try's cutter: a new one
    when it connects (before any TLS handshake), a kept one when it is used again."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _watch(sock)
        return sock

    def request(self, *args, **kwargs):
        if self.sock is not None:
            _watch(self.sock)
        return super().request(*args, **kwargs)


def _watch(sock: socket.socket) -> None:
    cutter = getattr(_running, "cutter", None)
    if cutter is not None:
        cutter.watch(sock)


class _HTTPConnection(_Watched, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_Watched, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


def _let_go(response: urllib3.HTTPResponse, whole: bool) -> None:
    """Done with an answer once its status is known: a whole short one, whose length is
    declared, is read so its connection can serve the next try; any other is closed unread."""
    length = response.length_remaining
    if whole and length is not None and length <= KEEP_ANSWER:
        try:
            response.read()
            response.release_conn()
            return
        except urllib3.exceptions.HTTPError:
            pass
    response.close()
    response.release_conn()  # the pool's slot back; the closed connection reconnects if reused


def _release(counts: Counter, key) -> None:
    """One try fewer under `key`; a key with none left goes (hosts and clients come and go)."""
    counts[key] -= 1
    if counts[key] <= 0:
        del counts[key]


def _origin(event: Event) -> tuple:
    """(client, scheme, host) of an event: what the per-receiver limit counts by (a host's
    ports together: more ports are no more slots)."""
    parts = urlsplit(event.url)
    return event.client, parts.scheme, parts.hostname


def _host_header(target: Target) -> str:
    """The Host header of the URL (the connection itself goes to a checked address)."""
    host = f"[{target.host}]" if ":" in target.host else target.host
    default = 443 if target.scheme == "https" else 80
    return host if target.port == default else f"{host}:{target.port}"

"""The webhook sender: posts the outbox's due events, signed as Standard Webhooks, at least
once each, with backoff and jitter for a day, then gives up.

Each try checks the receiver's address again (webhooks/address.py): a name that resolved to a
public address at submission may resolve to a private one now. The connection then goes to
the very address that was checked (one urllib3 pool per receiver address, TLS still verified
against the URL's host name), so DNS cannot swap it between the check and the connection.
Deliveries run on a few worker threads; the job store is never touched, so tracking never
waits for a receiver.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Callable
from urllib.parse import urlsplit

import certifi
import urllib3
from standardwebhooks.webhooks import Webhook

from webhooks.address import InvalidWebhook, Target, check_webhook
from webhooks.outbox import Event, Outbox, shown_url
from webhooks.schedule import DELAYS, GIVE_UP_AFTER, next_try

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT, READ_TIMEOUT = 3.0, 10.0
WORKERS = 8
PER_RECEIVER = 4  # tries at once to one receiver: a slow one leaves workers for the others
READ_LIMIT = 65536  # bytes of a receiver's answer read (and ignored)
PRUNE_EVERY = 600.0  # seconds between removals of long-settled events


class WebhookSender:
    """start(), stop(timeout), deliver_once(): the usual thread shape."""

    def __init__(self, outbox: Outbox, secret: str, *, allow_private: bool = False,
                 comfy: frozenset = frozenset(), delays: tuple = DELAYS,
                 give_up_after: float = GIVE_UP_AFTER, keep_for: float = 30 * 86400.0,
                 tick: float = 1.0, clock: Callable[[], float] = time.time, resolve=None):
        self.outbox = outbox
        self._signer = Webhook(secret)
        self.allow_private = allow_private
        self.comfy = comfy
        self.delays = delays
        self.give_up_after = give_up_after
        self.keep_for = keep_for
        self.tick = tick
        self.clock = clock
        self.resolve = resolve
        self.counts: Counter = Counter()  # delivered, failed_attempts, given_up
        self.on_delivered: Callable[[float], None] | None = None  # seconds from the event
        self._lock = threading.Lock()
        self._trying: set[str] = set()  # event ids being tried now
        # Jobs with an event being tried: their next event waits for that try to end, so a
        # receiver that answers gets a job's events in order (started before completed). An
        # event that failed does not hold the next one back while it waits for its retry.
        self._jobs_trying: set[str] = set()
        self._per_receiver: Counter = Counter()  # origin -> tries under way
        self._pools: dict[tuple, urllib3.HTTPConnectionPool] = {}
        self._workers = ThreadPoolExecutor(WORKERS, thread_name_prefix="cylindria-webhook")
        self._stop = threading.Event()
        self._next_prune = 0.0
        self._thread = threading.Thread(target=self.run, name="cylindria-webhooks", daemon=True)

    def start(self) -> None:
        """Start delivering (events left undelivered by an earlier run go first)."""
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Stop taking events; tries under way end with their timeouts, in the background
        (an event whose try did not finish stays due and is sent again: at least once)."""
        self._stop.set()
        self.outbox.wake.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)
        self._workers.shutdown(wait=False, cancel_futures=True)

    def run(self) -> None:
        """Deliver until stopped: at once when an event is committed, else at the next due."""
        while not self._stop.is_set():
            self.outbox.wake.clear()
            started = 0
            try:
                started = self.deliver_once(wait=False)
                self._prune()
            except Exception:
                logger.exception("webhook delivery pass failed")
            self.outbox.wake.wait(self._idle(blocked=not started))

    def _idle(self, blocked: bool) -> float:
        """Seconds to sleep before the next pass; woken earlier by a new event or by the end of
        a try. A pass that could start nothing (every due event's receiver or job busy) waits
        for a try to end rather than asking the outbox again at once: that would spin."""
        due = self.outbox.next_due()
        if due is None:
            return self.tick
        wait = max(0.0, due - self.clock())
        return self.tick if blocked and wait == 0.0 else min(self.tick, wait)

    def deliver_once(self, wait: bool = True) -> int:
        """Start a try of every due event not being tried; with `wait`, wait for those tries
        and return how many were delivered, else return how many were started."""
        with self._lock:
            skip = set(self._trying)
        events = self.outbox.due(self.clock(), WORKERS, skip)  # no more than can start
        started = []
        for event in events:
            origin = _origin(event.url)
            with self._lock:
                if self._per_receiver[origin] >= PER_RECEIVER or event.id in self._trying \
                        or event.job_id in self._jobs_trying:
                    continue
                self._per_receiver[origin] += 1
                self._trying.add(event.id)
                self._jobs_trying.add(event.job_id)
            try:
                started.append(self._workers.submit(self._try, event, origin))
            except RuntimeError:  # stopped meanwhile: the event stays due
                self._done(event, origin)
                break
        if not wait:
            return len(started)
        return sum(1 for future in started if future.result())

    def _try(self, event: Event, origin: tuple) -> bool:
        """One try of one event, its outcome recorded before the event may be picked again
        (else a pass in between would see it still due, and send it twice). True if delivered."""
        try:
            try:
                error = self._post(event)
            except Exception as exc:  # a bug must not lose the event: it is tried again
                logger.exception("webhook %s: try failed", event.id)
                error = f"internal error: {type(exc).__name__}"
            return self._record(event, error)
        finally:
            self._done(event, origin)

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
            self._trying.discard(event.id)
            self._jobs_trying.discard(event.job_id)
            self._per_receiver[origin] -= 1
        self.outbox.wake.set()  # a job's next event, or a receiver's, may go now

    def _post(self, event: Event) -> str | None:
        """POST the event, signed; None if the receiver took it (2xx), else why not."""
        try:
            target = check_webhook(event.url, allow_private=self.allow_private, comfy=self.comfy,
                                   resolve=self.resolve)
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
        try:  # the status is what counts; an answer read whole keeps its connection for reuse
            whole = len(response.read(READ_LIMIT)) < READ_LIMIT
        except urllib3.exceptions.HTTPError:
            whole = False
        if whole:
            response.release_conn()
        else:
            response.close()
        if 200 <= response.status < 300:
            return None
        return f"HTTP {response.status}"

    def _pool(self, target: Target) -> urllib3.HTTPConnectionPool:
        """The connection pool to the address this try checked (kept per receiver)."""
        address = target.addresses[0]
        key = (target.scheme, target.host, target.port, address)
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                if target.scheme == "https":
                    pool = urllib3.HTTPSConnectionPool(
                        address, target.port, maxsize=PER_RECEIVER, cert_reqs="CERT_REQUIRED",
                        ca_certs=certifi.where(), server_hostname=target.host,
                        assert_hostname=target.host)
                else:
                    pool = urllib3.HTTPConnectionPool(address, target.port, maxsize=PER_RECEIVER)
                self._pools[key] = pool
            return pool

    def _prune(self) -> None:
        """Now and then, forget events settled longer ago than jobs are kept."""
        now = self.clock()
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_EVERY
            self.outbox.prune(now - self.keep_for)


def _origin(url: str) -> tuple:
    """(scheme, host, port) of a URL: what the per-receiver limit counts by."""
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port


def _host_header(target: Target) -> str:
    """The Host header of the URL (the connection itself goes to a checked address)."""
    host = f"[{target.host}]" if ":" in target.host else target.host
    default = 443 if target.scheme == "https" else 80
    return host if target.port == default else f"{host}:{target.port}"

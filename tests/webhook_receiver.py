"""A webhook receiver for tests: a real HTTP server on a loopback port that records every
POST and answers as it is told (per webhook-id: a list of statuses for its first tries)."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.helpers import SERVE_POLL, free_ports, wait_for


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict
    body: bytes
    at: float


class Receiver:
    """start() on `port` (a free one by default), stop(); `failures`: statuses answered to the
    first tries of each event (then 200); `delay`: seconds spent before answering. `spans`:
    (webhook-id, start, end) of every request answered, by time.monotonic()."""

    def __init__(self, port: int | None = None, failures: tuple = (), delay: float = 0.0):
        self.port = port or free_ports(1)
        self.failures = failures
        self.delay = delay
        self.received: list[Received] = []
        self.spans: list[tuple[str, float, float]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Receiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                started = time.monotonic()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    tries = sum(1 for r in receiver.received
                                if r.headers.get("webhook-id") == self.headers.get("webhook-id"))
                    receiver.received.append(Received(self.path, {k.lower(): v for k, v in
                                                                  self.headers.items()}, body,
                                                      time.time()))
                if receiver.delay:
                    time.sleep(receiver.delay)
                status = receiver.failures[tries] if tries < len(receiver.failures) else 200
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the sender gave up on this try (killed, or out of time): it is recorded
                with receiver._lock:
                    receiver.spans.append((self.headers.get("webhook-id"), started,
                                           time.monotonic()))

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(SERVE_POLL,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def overlapping(self) -> list[str]:
        """The webhook-ids of which two requests were answered at once (one began before the
        other's answer was written)."""
        by_id: dict[str, list[tuple[float, float]]] = {}
        with self._lock:
            for event_id, started, ended in self.spans:
                by_id.setdefault(event_id, []).append((started, ended))
        return [event_id for event_id, spans in by_id.items()
                if any(later[0] < earlier[1] for earlier, later in zip(sorted(spans), sorted(spans)[1:]))]

    def of_type(self, kind: str) -> list[Received]:
        """The requests whose body is an event of this type."""
        import json
        with self._lock:
            return [r for r in self.received if json.loads(r.body)["type"] == kind]

    def wait(self, count: int, timeout: float = 20.0) -> list[Received]:
        """Wait until `count` requests have arrived; all of them."""
        return wait_for(lambda: list(self.received) if len(self.received) >= count else None,
                        timeout, message=f"{count} webhook requests")

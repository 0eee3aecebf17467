"""The server's lifecycle, in one place for the command line, the Windows service and tests."""
from __future__ import annotations

import json
import logging
import threading
import time

from waitress import create_server, utilities, wasyncore

from web.app import create_app
from web.config import Config

logger = logging.getLogger(__name__)

LOOP_TIMEOUT = 0.2  # seconds: how soon the serving loop notices stop()
STOP_TIMEOUT = 1.0  # seconds: everything is down within this of stop()


class Service:
    """Cylindria running: the waitress server plus the tracker threads."""

    def __init__(self, config: Config, app=None):
        self.config = config
        self.app = app or create_app(config)
        self.context = self.app.extensions["cylindria"]
        self._map: dict = {}
        self._server = None
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port actually listened on (useful with port 0)."""
        return self._server.effective_port

    @property
    def url(self) -> str:
        """http://host:port of this server, for clients on this machine."""
        host = self.config.host if self.config.host not in ("0.0.0.0", "::") else "127.0.0.1"
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        """Reconcile and start tracking, then bind the listening socket."""
        self.context.tracker.start()
        self._server = create_server(
            self.app, map=self._map, host=self.config.host, port=self.config.port,
            threads=self.config.threads, ident="Cylindria",
            # waitress refuses larger bodies from Content-Length without reading them; its
            # limit sits just above Flask's so that Flask's JSON 413 is what clients see.
            max_request_body_size=self.config.max_body_bytes + 65536,
            channel_timeout=30, asyncore_loop_timeout=LOOP_TIMEOUT)
        logger.info("Cylindria listening on %s:%d with %d threads, %d GPU(s) from %s",
                    self.config.host, self.port, self.config.threads, len(self.context.gpus),
                    self.config.comfy_base_url)

    def serve(self) -> None:
        """Serve until stop() (from any thread) or Ctrl+C, then shut everything down."""
        try:
            while not self._stop.is_set():
                wasyncore.loop(timeout=LOOP_TIMEOUT, map=self._map, count=1)
        finally:
            self._shutdown()

    def serve_in_thread(self) -> "Service":
        """start() and serve() on a named background thread (tests, the Windows service)."""
        self.start()
        self._thread = threading.Thread(target=self.serve, name="cylindria-server", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = STOP_TIMEOUT + 1.0) -> bool:
        """Ask the server to stop; True once everything is down."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return self._done.wait(timeout)

    def __enter__(self) -> "Service":
        return self.serve_in_thread()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _shutdown(self) -> None:
        """Close the sockets, let running requests finish (briefly), stop tracking, close the store."""
        started = time.monotonic()
        try:
            if self._server is not None:
                wasyncore.close_all(self._map)
                self._server.task_dispatcher.shutdown(cancel_pending=True, timeout=STOP_TIMEOUT / 2)
            self.context.tracker.stop(timeout=STOP_TIMEOUT / 2)
            self.context.store.close()
        finally:
            self._done.set()
            logger.info("Cylindria stopped in %.2fs", time.monotonic() - started)


class RateLimitFilter(logging.Filter):
    """Lets one record of a logger through per `interval` seconds (waitress's queue-depth
    warning otherwise fires on every burst of requests)."""

    def __init__(self, interval: float = 60.0):
        super().__init__()
        self.interval = interval
        self._last = float("-inf")

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now - self._last < self.interval:
            return False
        self._last = now
        return True


def _waitress_error_as_json(self, ident=None):
    """waitress's own error answers (bad request line, headers too large, body over its
    limit) in the contract's JSON error shape instead of plain text."""
    codes = {400: "bad_request", 413: "payload_too_large", 431: "headers_too_large",
             500: "internal_error"}
    body = json.dumps({"error": f"{self.reason.lower()}: {self.body}",
                       "code": codes.get(self.code, "bad_request")}).encode("utf-8")
    return f"{self.code} {self.reason}", [("Content-Type", "application/json")], body


def install_waitress_integration() -> None:
    """Route waitress's errors and warnings through Cylindria's shapes and logging."""
    utilities.Error.to_response = _waitress_error_as_json
    queue_logger = logging.getLogger("waitress.queue")
    if not any(isinstance(f, RateLimitFilter) for f in queue_logger.filters):
        queue_logger.addFilter(RateLimitFilter())


install_waitress_integration()

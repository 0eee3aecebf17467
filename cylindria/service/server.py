"""The server's lifecycle, in one place for the command line, the Windows service and tests."""
from __future__ import annotations

import json
import logging
import threading
import time

from waitress import create_server, utilities, wasyncore
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.utilities import RequestEntityTooLarge
from waitress.task import ErrorTask

from comfy.private import show_once
from cylindria.config.options import Config
from cylindria.fleet.membership import keys_hash
from cylindria.service.bodies import BodyBudget, BodyGate, is_upload
from cylindria.service.core import build_core
from cylindria.service.instance import take_instance_lock
from cylindria.service.logs import AccessLog, access_logger, log_access
from cylindria.web.app import create_app
from cylindria.web.context import build_web_state
from cylindria.web.downloads import LoopSentChannel, cut_stalled
from cylindria.web.errors import error_body

logger = logging.getLogger(__name__)

LOOP_TIMEOUT = 0.2  # seconds: how soon the serving loop notices stop()
STOP_TIMEOUT = 1.0  # seconds: everything is down within this of stop()
BODY_MARGIN = 65536  # bytes waitress's body limit sits above Flask's (see Service.start)
NODE_TAKEN = 2  # the exit code once the node name was lost to another Cylindria (as at start)


class Service:
    """Cylindria running: the waitress server plus the tracker threads."""

    def __init__(self, config: Config, app=None):
        self.config = config
        # First: a second Cylindria on this data dir (or node) stops here, having opened nothing.
        self.instance = take_instance_lock(config)
        try:
            self.app = app or _app_for(config)
        except BaseException:
            self.instance.release()
            raise
        self.context = self.app.extensions["cylindria"]
        self._map: dict = {}
        self._server = None
        self._stop = threading.Event()
        self._done = threading.Event()
        self._stop_asked_at: float | None = None  # monotonic time of the first stop request
        self.ready = threading.Event()  # set once listening (service hosts and tests wait on it)
        self.bodies = BodyBudget(config.max_inflight_body_mb << 20)  # memory of bodies in flight
        self._thread: threading.Thread | None = None
        self.exit_code = 0  # the process's: NODE_TAKEN once another Cylindria took the node name
        self.serving = False  # serve()'s loop runs: a stop is a flag it notices
        self.signalled = False  # stopped by SIGINT or SIGTERM

    @property
    def port(self) -> int:
        """The port actually listened on (useful with port 0)."""
        return int(self._server.effective_port)

    @property
    def url(self) -> str:
        """http://host:port of this server, for clients on this machine."""
        host = self.config.host if self.config.host not in ("0.0.0.0", "::") else "127.0.0.1"
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        """Bind the listening socket, tell the operator about the key (a generated one is
        printed only now, so a start that cannot bind shows none), then start tracking (its
        start-up reconciliation runs on a thread of its own while the server already answers
        /health and /ready).

        When the socket cannot be had (OSError), the store is closed before the error goes
        up: nothing was started, nothing is left running.
        """
        try:
            self._server = create_server(
                AccessLog(self.app), map=self._map, host=self.config.host, port=self.config.port,
                threads=self.config.threads, ident="Cylindria",
                # waitress refuses larger bodies from Content-Length without reading them; its
                # limit sits just above Flask's so that Flask's JSON 413 is what clients see.
                max_request_body_size=body_limit(self.config) + BODY_MARGIN,
                connection_limit=self.config.connection_limit,
                channel_timeout=max(1, int(self.config.idle_timeout)),
                cleanup_interval=max(1, int(self.config.idle_timeout / 4)),
                asyncore_loop_timeout=LOOP_TIMEOUT,
                # 64 KiB reads instead of waitress's 8 KiB: an asset upload is taken in about
                # 1.7x faster (bench/assets.py); a small request costs the same.
                recv_bytes=65536, **self._proxy())
        except OSError:
            self.close()
            raise
        self.instance.keep(self._node_taken)  # on PostgreSQL: through database restarts
        limits = (self.config.max_body_bytes, asset_limit(self.config))
        check = self.app.extensions.get("cylindria_header_check")
        gate = BodyGate(self.bodies, check, self.app.extensions.get("cylindria_throttle"),
                        self.config.trusted_proxy)
        self._server.channel_class = type("Channel", (Channel,), {"parser_class": type(
            "Parser", (PathLimitedParser,), {"limits": limits, "gate": gate})})
        if check is not None and check.identify.tokens is not None:
            # Bodies are let in on cached JWT keys only: the first ones are there at once
            # (a JWKS that cannot be read costs this start FETCH_TIMEOUT, and is tried again).
            check.identify.tokens.warm(wait=True)
        announce_keys(self)
        self.context.start_threads()
        self.context.start_fleet(keys_hash(self.context.keys.keys))
        self.ready.set()
        logger.info("Cylindria listening on %s:%d with %d threads, %d GPU(s) from %s",
                    self.config.host, self.port, self.config.threads, len(self.context.gpus),
                    self.config.comfy_base_url)

    def _node_taken(self, line: str) -> None:
        """Another Cylindria took this node's name while the lock's session was gone (the
        keeper logged the line): this one stops, and its process exits as a start refused the
        name would. Called on the keeper's thread: it asks for the stop and does not wait."""
        self.exit_code = NODE_TAKEN
        self.ask_stop()

    def ask_stop(self) -> None:
        """Ask the serving loop to end (within LOOP_TIMEOUT) and return at once: from another
        thread, or a signal's handler."""
        self.stop_asked()
        self._stop.set()

    def stop_on_signal(self) -> bool:
        """SIGINT or SIGTERM came: True if the serving loop will end by itself (asked to);
        False before it runs, when the signal must interrupt the start instead."""
        self.signalled = True
        self.stop_asked()
        if not self.serving:
            return False
        self._stop.set()
        return True

    def close(self) -> None:
        """Close the core and give the instance lock back, when start() did not get to serve."""
        try:
            self.context.close()
        finally:
            self.instance.release()

    def _proxy(self) -> dict:
        """waitress settings that take the client's address from a trusted proxy's header."""
        if not self.config.trusted_proxy:
            return {}
        return dict(trusted_proxy=self.config.trusted_proxy, trusted_proxy_count=1,
                    trusted_proxy_headers={"x-forwarded-for"}, clear_untrusted_proxy_headers=True)

    def serve(self) -> None:
        """Serve until stop() (from any thread) or Ctrl+C, then shut everything down."""
        next_sweep = 0.0
        self.serving = True
        try:
            while not self._stop.is_set():
                wasyncore.loop(timeout=LOOP_TIMEOUT, map=self._map, count=1)
                if time.monotonic() >= next_sweep:
                    self.sweep_slow_clients(time.monotonic())
                    cut_stalled(self._server.active_channels.values(), time.time(),
                                self.config.send_timeout)
                    next_sweep = time.monotonic() + 1.0
        finally:
            self._shutdown()

    def sweep_slow_clients(self, now: float) -> int:
        """Close connections whose request headers are not complete `header_timeout` seconds
        after they began, or whose body is not complete `body_timeout` seconds after its
        headers. waitress only drops *idle* connections, so a client trickling a byte now and
        then would otherwise hold its slot for ever. Runs on the loop thread."""
        late = {"headers": 0, "body": 0}
        for channel in list(self._map.values()):
            request = getattr(channel, "request", None)
            if request is None or not hasattr(request, "headers_finished") or request.completed:
                continue
            part, limit = ("body", self.config.body_timeout) if request.headers_finished \
                else ("headers", self.config.header_timeout)
            if channel.requests:  # the body waits (100 Continue, pipelining) while one is served
                request.__dict__[f"cylindria_{part}_began"] = now
            began = request.__dict__.setdefault(f"cylindria_{part}_began", now)
            if now - began > limit:
                channel.handle_close()
                late[part] += 1
        for part, limit in (("headers", self.config.header_timeout),
                            ("body", self.config.body_timeout)):
            if late[part]:
                logger.info("closed %d connection(s) that sent no complete %s in %.0fs",
                            late[part], part, limit)
        return sum(late.values())

    def serve_in_thread(self) -> "Service":
        """start() and serve() on a named background thread (tests, the Windows service)."""
        self.start()
        self._thread = threading.Thread(target=self.serve, name="cylindria-server", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = STOP_TIMEOUT + 1.0) -> bool:
        """Ask the server to stop; True once everything is down."""
        self.ask_stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return self._done.wait(timeout)

    def stop_asked(self) -> None:
        """Note when the stop was asked for (stop(), or a signal's handler): the figure the
        stop is logged with runs from then, not from when the serving loop noticed."""
        if self._stop_asked_at is None:
            self._stop_asked_at = time.monotonic()

    def __enter__(self) -> "Service":
        return self.serve_in_thread()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _shutdown(self) -> None:
        """Close the sockets, let running requests finish (briefly), stop tracking, close the store."""
        self.stop_asked()  # Ctrl+C: the loop ends with the signal
        try:
            self.context.watch.close()  # open streams and long-polls end now
            if self._server is not None:
                wasyncore.close_all(self._map)
                self._server.task_dispatcher.shutdown(cancel_pending=True, timeout=STOP_TIMEOUT / 2)
            self.context.dispatcher.stop(timeout=STOP_TIMEOUT / 4)
            self.context.tracker.stop(timeout=STOP_TIMEOUT / 2)
            if self.context.progress is not None:  # after the tracker: no progress comes any more
                self.context.progress.stop(timeout=STOP_TIMEOUT / 8)
            self.context.retention.stop(timeout=STOP_TIMEOUT / 4)
            self.context.webhooks.stop(timeout=STOP_TIMEOUT / 8)
            self.context.webhooks.close()
            self.context.stop_fleet(timeout=STOP_TIMEOUT / 8)
            self.context.storage.close()
        finally:
            self.instance.release()
            self._done.set()
            logger.info("Cylindria stopped in %.2fs", time.monotonic() - self._stop_asked_at)


def _app_for(config: Config):
    """The core built from `config` and the HTTP surface over it (the core closed again if
    the surface cannot be built)."""
    web = build_web_state(config)  # first: a bad key entry stops the start before anything opens
    core = build_core(config)
    try:
        return create_app(core, web)
    except BaseException:
        core.close()
        raise


def announce_keys(service) -> None:
    """Tell the operator where the key is; print a newly generated key once, at the first
    start that got its port."""
    config, keys = service.config, service.context.keys
    if config.no_auth:
        logger.warning("AUTHENTICATION IS OFF (--no-auth): anyone who can reach port %d can "
                       "run workflows on these GPUs", service.port)
    elif keys.generated:
        show_once("API key", keys.key_file, keys.keys[0])
        # A service has no console to print to: its log says where to read the new key.
        logger.info("API key: generated and stored in %s", keys.key_file)
    elif keys.key_file is not None:
        logger.info("API key: read from %s", keys.key_file)
    else:
        logger.info("API keys: %d configured", len(keys.keys))
    announce_webhook_secret(service.context.webhooks.secret)


def announce_webhook_secret(secret) -> None:
    """Print a newly generated webhook signing secret once (receivers verify with it); later
    starts only log where it is. The secret itself never goes to the log. (An installed
    service finds it shown already: `service install` made it and showed it.)"""
    if secret.generated:
        show_once("webhook signing secret", secret.path, secret.secret)
        logger.info("webhook signing secret: generated and stored in %s", secret.path)
    else:
        logger.info("webhook signing secret: read from %s", secret.path)


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


def _waitress_error_as_json(self, ident=None, limit_bytes=None, code=None, path=None):
    """waitress's own error answers (bad request line, headers too large, body over its
    limit) in the contract's JSON error shape (or its surface's) instead of plain text."""
    codes = {400: "bad_request", 401: "unauthorized", 413: "payload_too_large",
             429: "too_many_requests", 431: "headers_too_large", 500: "internal_error",
             503: "busy"}
    # waitress's own text names its internal limits: the client gets the reason only.
    messages = {413: "request body is larger than the limit",
                431: "request headers are larger than the limit"}
    message = getattr(self, "message", None) or messages.get(
        self.code, f"{self.reason.lower()}: {self.body}")
    details = {"limit_bytes": limit_bytes} if self.code == 413 and limit_bytes is not None else None
    _, answer = error_body(path, self.code, code or codes.get(self.code, "bad_request"),
                           message, details)
    body = json.dumps(answer).encode("utf-8")
    headers = [("Content-Type", "application/json"), *getattr(self, "headers", ())]
    return f"{self.code} {self.reason}", headers, body


def body_limit(config) -> int:
    """The largest body any endpoint takes: a workflow, or an asset upload."""
    return max(config.max_body_bytes, asset_limit(config) + ASSET_FRAMING)


def asset_limit(config) -> int:
    """The largest asset, in bytes."""
    return config.max_asset_mb * 1024 * 1024


ASSET_FRAMING = 64 * 1024  # bytes of multipart framing an upload may add to its file


class PathLimitedParser(HTTPRequestParser):
    """waitress's request parser with a body limit per path: waitress reads a whole body
    before the app sees it, so each endpoint's limit is kept here, from Content-Length
    before a byte of the body is read (and while a chunked body comes in). An asset upload
    may be as large as --max-asset-mb; every other body is a workflow. Past the limit, the
    gate (cylindria/service/bodies.py) decides from the headers whether the body is read at all: a
    refused body is not read beyond what came with its headers (one read, 64 KiB)."""

    limits = (0, 0)  # (workflow bytes, asset upload bytes): set per server
    gate: BodyGate | None = None  # set per server

    def received(self, data):
        headers_before = self.headers_finished
        consumed = super().received(data)
        if self.error is None and self.headers_finished and not self.empty:
            limit = self.limits[1] + ASSET_FRAMING if is_upload(self.path) else self.limits[0] + BODY_MARGIN
            if max(self.content_length, self.body_bytes_received) > limit:
                self.refuse(RequestEntityTooLarge("exceeds the limit of this endpoint"))
            elif self.gate is not None:
                refusal = self.gate.grow(self) if headers_before else self.gate.admit(self)
                if refusal is not None:
                    self.refuse(refusal)
                    return len(data)  # the rest of this read is dropped, never parsed
        return consumed

    def refuse(self, error) -> None:
        """Answer `error` now, without the body."""
        self.error = error
        self.completed = True
        # No "100 Continue": a client that asked first (curl does above 1 MiB) then never
        # sends the body it would only have had refused.
        self.expect_continue = False
        self.close()  # its share of the body budget, and what was buffered, go now

    def close(self):
        """The request is done with (answered, or its connection gone): its body's share of
        the budget is given back."""
        if self.gate is not None:
            self.gate.budget.release(self)
        super().close()


class LoggedErrorTask(ErrorTask):
    """waitress's own error answer, which no WSGI wrapper sees: JSON with the limit a client
    must keep to, and the access line every failed request gets."""

    def execute(self):
        request = self.request
        limit, code = self.channel.limit_for(getattr(request, "path", None))
        error = request.error
        gate = self.channel.parser_class.gate
        if gate is not None:
            error = gate.answer(error, self.channel.addr, request.headers)
        status, headers, body = _waitress_error_as_json(
            error, limit_bytes=limit, code=code if error.code == 413 else None,
            path=getattr(request, "path", None))
        self.status = status
        self.response_headers.extend(headers)
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)
        addr = self.channel.addr
        log_access(access_logger, getattr(request, "command", None) or "-",
                   getattr(request, "path", None) or "-", getattr(request, "query", None) or "",
                   status[:3], None, addr[0] if isinstance(addr, tuple) else "-")


class Channel(LoopSentChannel, HTTPChannel):
    """waitress's channel, answering its own errors through LoggedErrorTask, its requests
    parsed with a body limit per path, its workers never waiting on a client's reading of a
    file body (cylindria/web/downloads.py)."""

    error_task_class = LoggedErrorTask
    parser_class = PathLimitedParser

    def limit_for(self, path: str | None) -> tuple[int, str | None]:
        """(the body limit a client must keep to on this path, the error code for it)."""
        workflow, asset = self.parser_class.limits
        return (asset, "asset_too_large") if is_upload(path) else (workflow, None)

    def handle_close(self):
        """The connection is gone: a request still coming in gives back its budget."""
        if self.request is not None:
            self.request.close()
        super().handle_close()

    def cancel(self):
        """Requests never served (the server stops) give back their budget too."""
        for request in list(self.requests):
            request.close()
        super().cancel()


def install_waitress_integration() -> None:
    """Route waitress's errors and warnings through Cylindria's shapes and logging."""
    utilities.Error.to_response = _waitress_error_as_json
    queue_logger = logging.getLogger("waitress.queue")
    if not any(isinstance(f, RateLimitFilter) for f in queue_logger.filters):
        queue_logger.addFilter(RateLimitFilter())


install_waitress_integration()

"""Logging: plain lines on the console, the same in a rotating file, one line per request."""
from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from logging.handlers import QueueHandler, QueueListener, RotatingFileHandler
from pathlib import Path

from comfy.private import private_file
from cylindria.web.downloads import FileBody

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FILE_BYTES = 10 * 1024 * 1024  # rotate at 10 MiB...
FILE_COUNT = 5  # ...and keep 5 old files: at most 60 MiB of logs on the GPU host
LOG_FILE_NAME = "cylindria.log"  # in the data dir, for the Windows service

# Query parameters whose values are shown; any other pair is hidden whole, since a client may
# put its key in a query string (even as a bare name) and keys must never reach a log.
SHOWN_PARAMS = frozenset({"gpuid", "gpu_id", "gpu", "status", "limit", "before"})

QUIET_METHODS = frozenset({"GET", "HEAD"})  # successful ones are logged at DEBUG

# The most a log line takes from one value a client sent (its path, its query): anyone can
# send a 100,000-character path, and its lines would rotate every job line out of the log.
SHOWN_CHARS = 300
MESSAGE_CHARS = 4000  # any record's message, whatever its source (tracebacks kept whole)

access_logger = logging.getLogger("cylindria.access")


class _Enqueue(QueueHandler):
    """Hands records to the writer thread as they are: formatting and writing happen there.

    The stock QueueHandler formats in the caller, which is exactly the cost this moves off
    the request threads; Cylindria logs only immutable values, so nothing changes meanwhile.
    """

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


class _Writer(QueueListener):
    """The writer thread: woken by the first record, it writes every record queued by then,
    and lets the next ones gather for GATHER seconds before it looks again.

    A record put while the writer sleeps or writes costs the request thread only the append;
    waking a waiting writer for every record (one access line per request) also cost each
    request a GIL handoff to it: about 90 us of CPU per PUT /startjob, measured in-process
    (bench/README.md, "Where the rest goes"). A line now reaches the log up to GATHER later.
    """

    GATHER = 0.02

    def start(self) -> None:
        """Start the named writer thread."""
        self._thread = threading.Thread(target=self._monitor, name="cylindria-log", daemon=True)
        self._thread.start()

    def _monitor(self) -> None:
        """Write until the stop sentinel: a batch per wake-up, then a pause to gather more."""
        while self.write_batch():
            time.sleep(self.GATHER)

    def write_batch(self) -> bool:
        """Write the records queued now, waiting for the first; False at the stop sentinel."""
        record = self.queue.get()  # blocks while nothing is logged
        while record is not self._sentinel:
            self.handle(record)
            try:
                record = self.queue.get_nowait()
            except queue.Empty:
                return True
        return False


class PrivateRotatingFileHandler(RotatingFileHandler):
    """A rotating log whose files only the service's user can read (where the OS has modes)."""

    def _open(self):
        private_file(Path(self.baseFilename))  # each new file, at start and at every rotation
        return super()._open()


class LogPipeline:
    """The console/file handlers, fed by one writer thread through a queue."""

    def __init__(self, handlers: list[logging.Handler]):
        self.handlers = handlers
        self.enqueue = _Enqueue(queue.SimpleQueue())
        self.listener = _Writer(self.enqueue.queue, *handlers, respect_handler_level=True)

    def start(self) -> None:
        """Attach to the root logger and start writing."""
        logging.getLogger().addHandler(self.enqueue)
        self.listener.start()
        atexit.register(self.stop)

    def stop(self) -> None:
        """Detach, write what is still queued, close the handlers; idempotent."""
        logging.getLogger().removeHandler(self.enqueue)
        if self.listener._thread is not None:
            self.listener.stop()
        for handler in self.handlers:
            handler.close()
        atexit.unregister(self.stop)


def setup_logging(level: str, log_file: Path | None = None, console: bool = True) -> LogPipeline:
    """Send every record at `level` or above to the console and/or a rotating file.

    Request threads only queue records: one writer thread formats and writes them, so a
    slow console or disk never holds a request, and the handlers' locks are never contended.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler()] if console else []
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(PrivateRotatingFileHandler(log_file, maxBytes=FILE_BYTES,
                                                   backupCount=FILE_COUNT, encoding="utf-8"))
    # The format uses no caller, process or thread fields; not collecting them makes every
    # record (one per request) cheaper, as the logging HOWTO's "Optimization" section advises.
    logging._srcfile = None
    logging.logMultiprocessing = False
    logging.logProcesses = False
    formatter = ClippingFormatter(FORMAT)
    for handler in handlers:
        handler.setFormatter(formatter)
    pipeline = LogPipeline(handlers)
    pipeline.start()
    root = logging.getLogger()
    root.setLevel(getattr(logging, level))
    # websocket-client's own records come at DEBUG (comfy.comfyui.listener demotes them).
    return pipeline


def remove_handlers(pipeline: LogPipeline) -> None:
    """Detach and close what setup_logging() added."""
    pipeline.stop()


def clip(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text`, or its first `limit` characters marked as cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[cut {len(text) - limit} chars]"


class ClippingFormatter(logging.Formatter):
    """The standard format with every message clipped to MESSAGE_CHARS: a safety net for
    anything client-controlled that reaches a record some other way (a library's own line)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = clip(record.message, MESSAGE_CHARS)
        return super().formatMessage(record)


def safe_query(query: str) -> str:
    """The query string with every pair not known to be harmless replaced by '***'."""
    pairs = query.split("&")
    return "&".join(pair if pair.partition("=")[0].lower() in SHOWN_PARAMS else "***"
                    for pair in pairs)


class AccessLog:
    """WSGI wrapper: one line per request once its body has been sent.

    The line has the method, the path (with only harmless query values), the status, the
    milliseconds until the server closed the body, and the client address; never a header.
    """

    def __init__(self, wsgi_app, logger: logging.Logger = access_logger):
        self.wsgi_app = wsgi_app
        self.logger = logger

    def __call__(self, environ, start_response):
        if not self.logger.isEnabledFor(logging.INFO):
            return self.wsgi_app(environ, start_response)  # the hot path pays one cached check
        request = _Request(self.logger, environ, start_response)
        try:
            request.body = self.wsgi_app(environ, request.start_response)
        except BaseException:
            request.status = "500"
            request.log()
            raise
        if isinstance(request.body, FileBody):  # waitress sends it from its loop only unwrapped
            request.body.on_close(request.log)
            return request.body
        if not request.wanted():
            return request.body  # a successful read below the logger's level: nothing to log
        # The wrapper has no len(): waitress would use len() == 1 to set Content-Length, but
        # Flask's bodies have none either and Flask sets Content-Length itself.
        return request


class _Request:
    """One request in flight: records its status and logs once the server closes the body."""

    __slots__ = ("logger", "environ", "path", "server_start_response", "started", "status",
                 "body")

    def __init__(self, logger, environ, start_response):
        self.logger = logger
        self.environ = environ
        self.path = environ.get("PATH_INFO", "")  # as sent: the app normalises it in place
        self.server_start_response = start_response
        self.started = time.perf_counter()
        self.status = "-"
        self.body = ()

    def start_response(self, status, headers, exc_info=None):
        """The app's start_response: note the status, pass everything on."""
        self.status = status
        return self.server_start_response(status, headers, exc_info)

    def __iter__(self):
        return iter(self.body)

    def close(self):
        """Called by the server after the last byte (PEP 3333): close the body, then log."""
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            self.log()

    def wanted(self) -> bool:
        """Whether this request gets a line: always for writes and failures, and for
        successful reads (GET, HEAD) only at DEBUG. Known once the app has started its answer."""
        if self.status == "-" or self.status[:3] >= "400" \
                or self.environ.get("REQUEST_METHOD") not in QUIET_METHODS:
            return self.logger.isEnabledFor(logging.INFO)
        return self.logger.isEnabledFor(logging.DEBUG)

    def log(self):
        """The access line: values only, no headers, no hidden query values."""
        if not self.wanted():
            return
        environ = self.environ
        log_access(self.logger, environ.get("REQUEST_METHOD", "-"), self.path,
                   environ.get("QUERY_STRING", ""), self.status[:3],
                   (time.perf_counter() - self.started) * 1000.0, environ.get("REMOTE_ADDR", "-"),
                   environ.get("cylindria.client"))


def log_access(logger: logging.Logger, method: str, path: str, query: str, status: str,
               ms: float | None, client: str, name: str | None = None) -> None:
    """One access line; what the client sent is shown printable, harmless and clipped."""
    if not path.isprintable():  # a decoded %0A must not forge a second log line
        path = repr(path)
    path = clip(path)
    if query:
        path = f"{path}?{clip(safe_query(query))}"
    # Reads that succeed are the bulk (clients poll /jobstatus): at INFO they would
    # rotate the job and error lines out of the log within minutes, so they are DEBUG.
    level = logging.DEBUG if method in QUIET_METHODS and status < "400" else logging.INFO
    logger.log(level, "%s %s %s %s %s%s", clip(method, 20), path, status,
               "-" if ms is None else f"{ms:.1f}ms", clip(client, 100),
               "" if name is None else f" {clip(name, 130)}")

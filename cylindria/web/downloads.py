"""Downloads (assets, job outputs, v2 content) sent by waitress's loop, never a worker thread.

A file body is handed to waitress as its `wsgi.file_wrapper` (ReadOnlyFileBasedBuffer): the
worker writes the headers, puts the open file on the channel's output buffers and is free;
the loop thread sends the bytes as the client reads them. A client that never reads thus
holds no thread, only its slot: each client has at most --max-downloads-per-client downloads
in flight (429 too_many_downloads beyond), and a connection whose answer makes no progress for
--send-timeout is cut by the serving loop's sweep (`cut_stalled`). A slot is given back when
its body is closed: sent, cut, the connection gone, or the answer never sent (HEAD, 304).
"""
from __future__ import annotations

import logging
import tempfile
import threading
import weakref
from contextlib import contextmanager

from flask import current_app, request
from waitress.buffers import ReadOnlyFileBasedBuffer
from werkzeug.utils import send_file as werkzeug_send_file

from cylindria.web.auth import current_client, fleet_call
from cylindria.web.context import ctx
from cylindria.web.errors import RETRY_AFTER_SECONDS, ApiError

logger = logging.getLogger(__name__)

EXTENSION = "cylindria_downloads"
BLOCK = 65536  # bytes per read when a server without waitress's loop iterates a body
PENDING_SINCE = "cylindria_pending_since"  # channel attribute: when unsent output was first seen


class Slot:
    """One download of one client in flight; `release` is safe to call any number of times."""

    def __init__(self, slots: "DownloadSlots", who: str):
        self._slots, self.who, self.held = slots, who, True

    def release(self) -> None:
        """Give the slot back (once, whichever path gets here first)."""
        self._slots.give_back(self)


class DownloadSlots:
    """At most `limit` downloads in flight per client."""

    def __init__(self, limit: int):
        self.limit = limit
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def take(self, who: str, capped: bool = True) -> Slot:
        """A slot for `who`, or 429 too_many_downloads at once (`capped` False: counted, never
        refused)."""
        with self._lock:
            held = self._counts.get(who, 0)
            if capped and held >= self.limit:
                raise ApiError(429, "too_many_downloads",
                               f"{self.limit} downloads of this client are in flight, the limit; "
                               "finish or close one first", {"max_downloads": self.limit},
                               headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
            self._counts[who] = held + 1
        return Slot(self, who)

    def give_back(self, slot: Slot) -> None:
        """Free a slot taken with `take`; a slot already given back changes nothing."""
        with self._lock:
            if not slot.held:
                return
            slot.held = False
            left = self._counts.get(slot.who, 1) - 1
            if left > 0:
                self._counts[slot.who] = left
            else:
                self._counts.pop(slot.who, None)

    def in_flight(self, who: str) -> int:
        """Downloads of `who` not yet finished."""
        with self._lock:
            return self._counts.get(who, 0)


class FileBody(ReadOnlyFileBasedBuffer):
    """An open file sent from `start` for `length` bytes, holding a download slot until it is
    closed. waitress hands it to its loop (it checks for exactly this class); other servers
    iterate it."""

    def __init__(self, file, slot: Slot, block_size: int = BLOCK):
        super().__init__(file, block_size)
        self.left = None
        self._on_close: list = []
        # An answer dropped before the server got it (an exception after it was made) is
        # never closed: the slot then goes back when the body is collected.
        self._release = weakref.finalize(self, slot.release)

    def limit(self, start: int, length: int | None) -> None:
        """Send `length` bytes from `start` (a range) instead of the whole file."""
        self.file.seek(start)
        self.left = length

    def on_close(self, callback) -> None:
        """Call `callback()` once the body is closed (sent or abandoned)."""
        self._on_close.append(callback)

    def __next__(self):
        size = self.block_size if self.left is None else min(self.block_size, self.left)
        data = self.file.read(size) if size else b""
        if not data:
            raise StopIteration
        if self.left is not None:
            self.left -= len(data)
        return data

    next = __next__

    def close(self):
        """Close the file, free the slot, then run the close callbacks (the access log)."""
        try:
            super().close()
        finally:
            self._release()
            callbacks, self._on_close = self._on_close, []
            for callback in callbacks:
                callback()


def slots() -> DownloadSlots:
    """The app's download slots (made on first use, from the app's config)."""
    extensions = current_app.extensions
    found = extensions.get(EXTENSION)
    if found is None:
        found = extensions.setdefault(EXTENSION,
                                      DownloadSlots(ctx().config.max_downloads_per_client))
    return found


def client_key() -> str:
    """Whom a download counts against: the client's name, or its address without a key."""
    if fleet_call():
        return f"fleet node at {request.remote_addr}"
    client = current_client()
    return client.name if client is not None else f"address {request.remote_addr}"


@contextmanager
def claimed():
    """A slot of this request's client for the block; given back if the block fails (on
    success the block has handed it to a FileBody, which gives it back when closed). Another
    node asking for an output is not capped: the node it serves took its client's slot."""
    slot = slots().take(client_key(), capped=not fleet_call())
    try:
        yield slot
    except BaseException:
        slot.release()
        raise


def send_file(path, **options):
    """Flask's send_file (Range, 416, conditional answers as werkzeug makes them) with the
    body a FileBody: a Range answer too is sent by waitress's loop, from the range's start."""
    made: list[FileBody] = []
    with claimed() as slot:
        def wrapper(file, block_size=BLOCK):
            made.append(FileBody(file, slot, block_size))
            return made[-1]
        environ = dict(request.environ, **{"wsgi.file_wrapper": wrapper})
        response = werkzeug_send_file(path, environ, response_class=current_app.response_class,
                                      max_age=current_app.get_send_file_max_age,
                                      _root_path=current_app.root_path, **options)
    body = made[0]
    if response.status_code == 206:  # werkzeug wrapped the body to skip to the range
        body.limit(response.content_range.start, response.content_length)
    elif response.status_code == 200:
        body.limit(0, response.content_length)
    response.response = body
    return response


def send_chunks(slot: Slot, chunks, status: int, headers: dict, mimetype: str):
    """An answer whose bytes come from `chunks` (e.g. ComfyUI's /view), holding `slot`:
    spooled to a temporary file first (ComfyUI is on loopback: fast), then sent from it by
    the loop. The file has no name left on disk (POSIX) and is gone once closed."""
    spool = tempfile.TemporaryFile(dir=ctx().config.data_dir)
    try:
        for chunk in chunks:
            spool.write(chunk)
        size = spool.tell()
        spool.seek(0)
        body = FileBody(spool, slot)
    except BaseException:
        spool.close()
        getattr(chunks, "close", lambda: None)()  # the connection to ComfyUI, at once
        raise
    body.limit(0, size)
    return current_app.response_class(body, status=status, direct_passthrough=True,
                                      headers={**headers, "Content-Length": str(size)},
                                      mimetype=mimetype)


def cut_stalled(channels, now: float, timeout: float) -> int:
    """Close the connections whose unsent answer has made no progress for `timeout` seconds
    (`now` is time.time(), waitress's clock). waitress never times out a write, and a file
    body is only sent as its client reads. Runs on the loop thread, once a second."""
    cut = 0
    for channel in list(channels):
        if not channel.total_outbufs_len:
            channel.__dict__.pop(PENDING_SINCE, None)
            continue
        # Since when unsent output was first seen: an answer just queued after a long wait
        # (a long-poll) has an old last_activity and must not look stalled.
        pending_since = channel.__dict__.setdefault(PENDING_SINCE, now)
        if now - max(pending_since, channel.last_activity) > timeout:
            channel.handle_close()
            cut += 1
    if cut:
        logger.info("cut %d connection(s) whose client read nothing for %.0fs", cut, timeout)
    return cut


class LoopSentChannel:
    """A waitress channel mixin: a worker waits for the client only for what is held in
    memory. waitress makes it wait (before its next pipelined request, or before writing
    more) while more than its high watermark is unsent; file bodies are no memory and are
    sent by the loop, so counting them would hold the worker as long as the client stalls."""

    def _flush_outbufs_below_high_watermark(self):
        with self.outbuf_lock:
            in_files = sum(len(b) for b in self.outbufs if isinstance(b, ReadOnlyFileBasedBuffer))
        if self.total_outbufs_len - in_files > self.adj.outbuf_high_watermark:
            super()._flush_outbufs_below_high_watermark()

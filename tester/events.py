"""Server-Sent Events: parsing a job's /jobevents, and reading it in a thread of its own."""

import codecs
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

import requests

from tester.client import STREAM_TIMEOUT, Client, Result, describe_error

logger = logging.getLogger(__name__)

_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class Event:
    """One event: its name (``status``, ``progress``) and its data (a line of JSON)."""

    name: str
    data: str


@dataclass(frozen=True)
class Refused:
    """The stream did not open; ``result`` is what came instead (a 429, a connection error)."""

    result: Result


@dataclass(frozen=True)
class Ended:
    """The stream is over: the server ended it (no ``error_text``), it broke, or it was stopped."""

    error_text: str | None = None
    stopped: bool = False


Item = Event | Refused | Ended
Emit = Callable[[Item, bool], None]  # (item, final): final is true for the reader's last item


class Parser:
    """Turns an event stream's bytes, cut anywhere, into Events (the WHATWG rules)."""

    def __init__(self):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._started = False
        self._name = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[Event]:
        """Take the next bytes of the stream; return the events they complete."""
        text = self._buffer + self._decoder.decode(chunk)
        if text and not self._started:
            self._started = True
            text = text.removeprefix("\ufeff")
        # A CR at the very end may be half of a CRLF: keep it until the next chunk says.
        cut = len(text) - 1 if text.endswith("\r") else len(text)
        *lines, rest = _LINE_END.split(text[:cut])
        self._buffer = rest + text[cut:]
        return [event for event in map(self._line, lines) if event is not None]

    def _line(self, line: str) -> Event | None:
        """Apply one line; the blank line that ends an event returns it."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment: the server's keep-alive
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._name = value
        elif name == "data":
            self._data.append(value)
        # id and retry are for reconnecting, which a watch does not do: it polls instead
        return None

    def _dispatch(self) -> Event | None:
        """The event gathered so far (none without data lines); start the next one."""
        event = Event(self._name or "message", "\n".join(self._data)) if self._data else None
        self._name, self._data = "", []
        return event


class EventReader:
    """Reads one job's /jobevents in a named thread and hands each item to ``emit``.

    ``emit`` runs on the reader's thread: a Refused, or Events then an Ended; the last item is
    emitted with ``final`` true. ``stop()`` wakes a read in progress and closes the stream.
    """

    def __init__(self, client: Client, job_id: str, emit: Emit):
        self.client = client
        self.job_id = job_id
        self.emit = emit
        self.parser = Parser()
        self.stop_event = threading.Event()
        self._response: requests.Response | None = None
        self.chunks = iter(())  # the stream's bytes as they come, once it is open
        self._thread = threading.Thread(target=self.run, name=f"tester: events of {job_id}",
                                        daemon=True)

    def start(self) -> None:
        """Open the stream and read it in the reader's thread."""
        self._thread.start()

    def stop(self, timeout: float = 0.0) -> None:
        """Stop reading and close the stream; wait up to ``timeout`` s for the thread to end.

        The Tk thread does not wait: the reader holds nothing of Tk and ends on its own.
        """
        self.stop_event.set()
        response = self._response
        if response is not None:
            _wake(response)
        if timeout > 0:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("%s did not stop within %g s", self._thread.name, timeout)

    def run(self) -> None:
        """Thread body: follow the stream, then emit how it ended as the final item."""
        try:
            last = self.follow()
        except Exception as exc:  # a bug here must still end the watch's wait for this reader
            logger.exception("reading the events of %s failed", self.job_id)
            last = Ended(f"internal error: {exc!r}")
        self.emit(last, True)

    def follow(self) -> Refused | Ended:
        """Open the stream and read it until it ends; return how it ended."""
        result, self._response = self.client.open_events(self.job_id)
        if self._response is None:
            return Refused(result)
        # Each chunk as it comes: an HTTP/1.1 stream of unknown length is chunked (waitress's is).
        self.chunks = self._response.iter_content(chunk_size=None)
        error = None
        try:
            while not self.stop_event.is_set() and self.read_once():
                pass
        except requests.RequestException as exc:
            error = describe_error(exc, STREAM_TIMEOUT)
        finally:
            self._response.close()
        return Ended(stopped=True) if self.stop_event.is_set() else Ended(error)

    def read_once(self) -> bool:
        """Read what the server sent next and emit its events; False once the stream is over."""
        chunk = next(self.chunks, b"")
        for event in self.parser.feed(chunk):
            self.emit(event, False)
        return bool(chunk)


def _wake(response: requests.Response) -> None:
    """Shut the stream's socket so that a read blocked on it returns now."""
    try:
        response.raw.shutdown()  # urllib3 2.3+: made for closing a stream from another thread
    except (AttributeError, ValueError, RuntimeError, OSError):
        response.close()  # an older urllib3, or already closed: the read ends by the next event

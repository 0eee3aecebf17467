"""The tester's watch over Server-Sent Events: parsing, the reader thread against a real socket,
and when the watch falls back to polling. No display needed."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

import pytest

from tester import format as fmt
from tester.client import Client, Result
from tester.events import Ended, Event, EventReader, Parser, Refused
from tester.watch import POLLING, Watch
from tests.test_tester_logic import Server, dead_port, job_result

WAIT_S = 10  # upper bound of every wait; never asserted on


def sse(name: str, data: object) -> bytes:
    """One event as Cylindria sends it."""
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def job(status: str, percent: float = 0.0) -> dict:
    return {"job_id": "j", "gpu_id": 0, "status": status, "progress": {"percent": percent}}


FULL_STREAM = [sse("status", job("queued")), b": keep-alive\n\n", sse("status", job("running")),
               sse("progress", {"percent": 50.0}), sse("status", job("completed", 100.0))]


class SseHandler(BaseHTTPRequestHandler):
    """Cylindria's /jobevents and /jobstatus as the test scripts them (``server.mode``).

    Modes: ``end`` sends ``server.chunks`` then ends the stream cleanly; ``drop`` cuts the
    connection after them; ``hold`` keeps the stream open until the client goes; ``busy``
    answers 429 too_many_streams.
    """

    protocol_version = "HTTP/1.1"  # streams are chunked, as waitress sends them

    def log_message(self, *args):
        pass

    def reply(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in (("Content-Type", "application/json"),
                            ("Content-Length", str(len(data))), *headers):
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_GET(self):
        server, path = self.server, urlsplit(self.path).path
        server.received.append({"method": "GET", "path": path, "headers": dict(self.headers)})
        if path.startswith("/jobstatus/"):
            return self.reply(200, job("completed", 100.0))
        if server.mode == "busy":
            return self.reply(429, {"error": "1 event streams and long-polls are open, the limit",
                                    "code": "too_many_streams", "details": {"max_streams": 1}},
                              [("Retry-After", "5")])
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.close_connection = True
        try:
            for data in server.chunks:
                self.chunk(data)
            if server.mode == "hold":
                self.rfile.read(1)  # returns once the client has closed the connection
            elif server.mode == "end":
                self.chunk(b"")
        except OSError:  # the client went while we wrote
            pass
        if server.mode == "hold":
            server.client_gone.set()


@pytest.fixture
def stub():
    """The scripted Cylindria; tests set ``mode`` and ``chunks``."""
    with Server(SseHandler) as srv:
        srv.httpd.mode, srv.httpd.chunks = "end", FULL_STREAM
        srv.httpd.client_gone = threading.Event()
        yield srv.httpd, Client(srv.base_url, api_key="k")


class Collector:
    """What a reader emits, as (item, final) pairs; ``ended`` is set by the final one."""

    def __init__(self):
        self.items: list[tuple[object, bool]] = []
        self.ended = threading.Event()

    def __call__(self, item, final):
        self.items.append((item, final))
        if final:
            self.ended.set()

    def events(self):
        return [item for item, _ in self.items if isinstance(item, Event)]


def read_all(client: Client, job_id: str = "j") -> Collector:
    """Run a reader to its end; return what it emitted."""
    got = Collector()
    reader = EventReader(client, job_id, got)
    reader.start()
    assert got.ended.wait(WAIT_S), got.items
    reader.stop(WAIT_S)
    return got


# ---- parser --------------------------------------------------------------------------------
def test_parser_reads_cylindria_events_and_skips_comments():
    events = Parser().feed(b"".join(FULL_STREAM))
    assert [e.name for e in events] == ["status", "status", "progress", "status"]
    assert json.loads(events[-1].data)["status"] == "completed"


@pytest.mark.parametrize("text, expected", [
    (b"data: a\ndata: b\n\n", [Event("message", "a\nb")]),
    (b"event:x\ndata:no space\n\n", [Event("x", "no space")]),
    (b"event: x\r\ndata: 1\r\n\r\nevent: y\rdata: 2\r\r\n", [Event("x", "1"), Event("y", "2")]),
    (b"event: lonely\n\ndata: next\n\n", [Event("message", "next")]),  # no data: no event
    (b"data\n\n", [Event("message", "")]),
    (b"id: 7\nretry: 10\ndata:  two spaces\n\n", [Event("message", " two spaces")]),
    (b"\xef\xbb\xbfdata: after a BOM\n\n", [Event("message", "after a BOM")]),
    (b"data: unfinished\n", []),
])
def test_parser_follows_the_sse_rules(text, expected):
    assert Parser().feed(text) == expected


def test_parser_gives_the_same_events_wherever_the_bytes_are_cut():
    stream = "event: status\r\ndata: {\"n\": \"é€\"}\r\n\r\n: ping\r\rdata: x\n\n".encode()
    whole = Parser().feed(stream)
    assert whole == [Event("status", '{"n": "é€"}'), Event("message", "x")]
    for cut in range(1, len(stream)):
        parser = Parser()
        assert parser.feed(stream[:cut]) + parser.feed(stream[cut:]) == whole, cut
    parser = Parser()
    assert [e for byte in stream for e in parser.feed(bytes([byte]))] == whole


# ---- the reader, against a real socket ------------------------------------------------------
def test_reader_emits_each_event_then_a_clean_end(stub):
    server, client = stub
    got = read_all(client, "a job/with slash")
    assert [e.name for e in got.events()] == ["status", "status", "progress", "status"]
    assert got.items[-1] == (Ended(), True)
    assert [final for _, final in got.items] == [False] * 4 + [True]
    sent = server.received[0]
    assert sent["path"] == "/jobevents/a%20job%2Fwith%20slash/"
    assert sent["headers"]["X-API-Key"] == "k"
    assert sent["headers"]["Accept"] == "text/event-stream"


def test_reader_reports_a_refused_stream_with_its_answer(stub):
    server, client = stub
    server.mode = "busy"
    item, final = read_all(client).items[0]
    assert final and isinstance(item, Refused)
    assert item.result.status == 429 and item.result.data["code"] == "too_many_streams"


def test_reader_reports_a_stream_that_cannot_open():
    got = read_all(Client(f"http://127.0.0.1:{dead_port()}"))
    [(item, final)] = got.items
    assert final and item.result.status is None
    assert item.result.error_text.startswith("connection error:")


def test_reader_reports_a_stream_cut_mid_way(stub):
    server, client = stub
    server.mode, server.chunks = "drop", FULL_STREAM[:3]
    got = read_all(client)
    assert [json.loads(e.data)["status"] for e in got.events()] == ["queued", "running"]
    last, final = got.items[-1]
    assert final and isinstance(last, Ended) and last.error_text and not last.stopped


def test_stopping_the_reader_closes_the_stream(stub):
    server, client = stub
    server.mode, server.chunks = "hold", FULL_STREAM[:1]
    got = Collector()
    reader = EventReader(client, "j", got)
    reader.start()
    deadline = time.monotonic() + WAIT_S
    while not got.items and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got.events(), "the first event"
    reader.stop(WAIT_S)
    assert got.items[-1] == (Ended(stopped=True), True)
    assert server.client_gone.wait(WAIT_S), "the server saw the connection closed"


def test_a_reader_stopped_before_it_opens_emits_only_its_end(stub):
    server, client = stub
    server.mode = "hold"
    got = Collector()
    reader = EventReader(client, "j", got)
    reader.stop()
    reader.run()  # the thread's body, here: the stream opens, nothing is read
    assert got.items == [(Ended(stopped=True), True)]
    assert server.client_gone.wait(WAIT_S)


def test_read_once_emits_what_one_chunk_completes(stub):
    _, client = stub
    got = Collector()
    reader = EventReader(client, "j", got)
    reader.chunks = iter([FULL_STREAM[0][:10], FULL_STREAM[0][10:] + FULL_STREAM[1]])
    assert reader.read_once() and got.items == []
    assert reader.read_once() and [e.name for e in got.events()] == ["status"]
    assert not reader.read_once()


# ---- the watch: events, and when to poll instead --------------------------------------------
def status_event(status, percent=0.0, gpu_id=0):
    return Event("status", json.dumps({**job(status, percent), "gpu_id": gpu_id}))


def test_watch_follows_status_and_progress_events_to_completion():
    watch = Watch("j")
    queued = watch.stream_step(status_event("queued"))
    assert (queued.status, queued.done, queued.poll) == ("queued 0% · GPU 0", False, False)
    assert queued.lines == [("watch j: queued · GPU 0", fmt.INFO)]
    running = watch.stream_step(status_event("running", 10))
    assert running.lines == [("watch j: running 10% · GPU 0", fmt.INFO)]
    progress = watch.stream_step(Event("progress", json.dumps({"percent": 55.5})))
    assert (progress.percent, progress.status, progress.lines) == (55.5, "running 56% · GPU 0", [])
    done = watch.stream_step(status_event("completed", 100))
    assert done.done and not done.poll and done.lines[0] == ("watch j: ended completed", fmt.OK)
    assert '"status": "completed"' in fmt.as_text(done.lines)
    after = watch.stream_step(Ended())  # the server ends the stream after the final status
    assert after.done and not after.poll and after.lines == []


@pytest.mark.parametrize("result, words", [
    (Result("GET", "u", 429, 1.0, "TOO MANY REQUESTS", is_json=True,
            data={"error": "1 event streams and long-polls are open, the limit",
                  "code": "too_many_streams"}),
     "no event stream: HTTP 429 TOO MANY REQUESTS · 1 ms (too_many_streams: 1 event streams"),
    (Result("GET", "u", None, 1.0, error_text="connection error: Connection refused"),
     "no event stream (connection error: Connection refused)"),
    (Result("GET", "u", 200, 1.0, "OK", body="<html>"), "(not an event stream)"),
    (Result("GET", "u", 502, 1.0, "Bad Gateway", body="<html>"), "(Bad Gateway)"),
])
def test_a_refused_stream_falls_back_to_polling(result, words):
    update = Watch("j").stream_step(Refused(result))
    assert update.poll and not update.done
    [(line, tag)] = update.lines
    assert words in line and line.endswith(f"; {POLLING}") and tag == fmt.INFO


@pytest.mark.parametrize("ended, words", [
    (Ended(), "the event stream ended before the job did"),
    (Ended("connection error: Connection reset by peer"),
     "the event stream broke (connection error: Connection reset by peer)"),
])
def test_a_stream_over_before_the_job_falls_back_to_polling(ended, words):
    watch = Watch("j")
    watch.stream_step(status_event("running", 20))
    update = watch.stream_step(ended)
    assert update.poll and not update.done and update.status == "running 20% · GPU 0"
    assert update.lines == [(f"watch j: {words}; {POLLING}", fmt.INFO)]
    # the polls carry on where the stream left off: the same status is not announced again
    assert watch.step(job_result("running", 30)).lines == []
    assert watch.step(job_result("completed", 100)).done


def test_a_stopped_stream_ends_the_watch_quietly():
    update = Watch("j").stream_step(Ended(stopped=True))
    assert update.done and not update.poll and update.lines == []


def test_odd_events_are_shown_or_skipped_never_fatal():
    watch = Watch("j")
    assert watch.stream_step(Event("message", "hello")).lines == []
    early = watch.stream_step(Event("progress", json.dumps({"percent": 5})))  # before any status
    bad = watch.stream_step(Event("status", "{not json"))
    for update in (early, bad):
        assert not update.done and not update.poll and update.lines[0][1] == fmt.ERROR
    assert "unexpected status event: {not json" in bad.lines[0][0]
    assert not watch.stream_step(status_event("running")).done


def test_an_empty_stream_falls_back_to_polling(stub):
    """A stream that ends before its first event: the watch polls."""
    server, client = stub
    server.chunks = []
    got = read_all(client)
    assert got.items == [(Ended(), True)]
    update = Watch("j").stream_step(got.items[0][0])
    assert update.poll and "ended before the job did" in update.lines[0][0]


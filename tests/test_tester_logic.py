"""Unit tests of the tester's logic: no display needed, real sockets for the client."""

import json
import socket
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from tester import format as fmt
from tester import settings as settings_mod
from tester.client import Client, Result, build_base_url
from tester.fields import gpu_field, parse_priority, status_gpu
from tester.jobid import is_valid_job_id, new_job_id
from tester.settings import Settings
from tester.watch import MAX_CONNECTION_ERRORS, Watch, progress_percent
from tester.workflow import WorkflowError, load_workflow
from tests.helpers import SERVE_POLL

KEY = "s3cret-key"
FLEET = {"node": "a", "nodes": [
    {"node": "a", "advertise_url": "http://10.0.0.1:8000", "live": True, "lease_age_seconds": 0.5,
     "lease_seconds": 10.0, "started_at": "2025-03-01T09:00:00.000Z", "held_jobs": 4,
     "gpus": [{"gpu_id": 0, "reachable": True, "websocket": "connected", "running": 1,
               "queue_length": 2}]},
    {"node": "b", "advertise_url": "http://10.0.0.2:8000", "live": False, "lease_age_seconds": 61.0,
     "lease_seconds": 10.0, "started_at": "2025-03-01T08:00:00.000Z", "held_jobs": 0,
     "gpus": [{"gpu_id": 0, "reachable": False, "websocket": "disconnected", "running": 0,
               "queue_length": 0}]}]}
MODELS = {"folders": {"checkpoints": [{"name": "sd15.safetensors", "gpus": [0, 1]},
                                      {"name": "sdxl\\base.safetensors", "gpus": [1]}],
                      "loras": [], "vae": [{"name": "ae.pt", "gpus": [0]}]}}


class Handler(BaseHTTPRequestHandler):
    """A tiny stand-in for Cylindria's routes, recording what it received."""

    def log_message(self, *args):
        pass

    def reply(self, status, body, content_type="application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def record(self, body=b""):
        parts = urlsplit(self.path)
        self.server.received.append({"method": self.command, "path": parts.path,
                                     "query": parse_qs(parts.query), "body": body,
                                     "headers": dict(self.headers)})

    def authorized(self):
        if self.headers.get("X-API-Key") == KEY:
            return True
        self.reply(401, {"error": "missing or wrong API key", "code": "unauthorized"})
        return False

    def do_GET(self):
        self.record()
        path = urlsplit(self.path).path
        if path == "/html":
            return self.reply(500, b"<html><body>Internal Server Error</body></html>", "text/html")
        if path == "/slow":
            time.sleep(2)
            return self.reply(200, {})
        if not self.authorized():
            return
        if path == "/serverstatus":
            return self.reply(200, {"gpu_id": 0, "reachable": True, "status": "ok"})
        if path == "/models":
            return self.reply(200, MODELS)
        if path == "/fleet":
            return self.reply(200, FLEET)
        if path.startswith("/jobstatus/"):
            return self.reply(404, {"error": "job not found", "code": "job_not_found"})
        self.reply(404, {"error": "no such route", "code": "not_found"})

    def do_PUT(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.record(body)
        if not self.authorized():
            return
        job_id = urlsplit(self.path).path.split("/")[2]
        self.reply(201, {"job_id": job_id, "accepted": True, "status": "queued"})


class Server:
    """A real HTTP server on 127.0.0.1, port 0, in a thread; use with ``with``."""

    def __init__(self, handler=Handler):
        self.handler = handler

    def __enter__(self):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self.handler)
        self.httpd.daemon_threads = True
        self.httpd.received = []
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(SERVE_POLL,),
                                       name="test-http", daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    @property
    def received(self):
        return self.httpd.received


@pytest.fixture
def server():
    with Server() as srv:
        yield srv


def dead_port():
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- client ------------------------------------------------------------------------------
def test_server_status_sends_key_and_gpu_id(server):
    result = Client(server.base_url, api_key=KEY).server_status(3)
    assert result.status == 200 and result.ok and result.is_json
    assert result.data["status"] == "ok"
    assert result.error_text is None and result.elapsed_ms >= 0
    assert result.url == f"{server.base_url}/serverstatus?GpuId=3"
    got = server.received[-1]
    assert got["headers"]["X-API-Key"] == KEY
    assert got["query"] == {"GpuId": ["3"]}


def test_start_job_puts_body_under_job_id(server):
    body = b'{"1": {"class_type": "EmptyImage", "inputs": {}}}'
    result = Client(server.base_url, api_key=KEY).start_job("job-1", body, 0)
    assert result.status == 201
    assert result.data == {"job_id": "job-1", "accepted": True, "status": "queued"}
    got = server.received[-1]
    assert (got["method"], got["path"], got["body"]) == ("PUT", "/startjob/job-1/", body)
    assert got["headers"]["Content-Type"] == "application/json"


def test_start_job_auto_with_priority_builds_the_query(server):
    result = Client(server.base_url, api_key=KEY).start_job("job-2", b"{}", "auto", -5)
    assert result.url == f"{server.base_url}/startjob/job-2/?GpuId=auto&priority=-5"
    assert server.received[-1]["query"] == {"GpuId": ["auto"], "priority": ["-5"]}


@pytest.mark.parametrize("priority", [None, 0])
def test_start_job_sends_priority_only_when_given(server, priority):
    Client(server.base_url, api_key=KEY).start_job("job-3", b"{}", "1", priority)
    expected = {"GpuId": ["1"]} if priority is None else {"GpuId": ["1"], "priority": ["0"]}
    assert server.received[-1]["query"] == expected


def test_models_asks_for_every_folder_with_the_key(server):
    result = Client(server.base_url, api_key=KEY).models()
    assert result.ok and result.data == MODELS
    sent = server.received[-1]
    assert (sent["method"], sent["path"], sent["query"]) == ("GET", "/models", {})
    assert sent["headers"]["X-API-Key"] == KEY


def test_job_status_quotes_the_job_id(server):
    result = Client(server.base_url, api_key=KEY).job_status("a b/c")
    assert result.status == 404 and not result.ok
    assert server.received[-1]["path"] == "/jobstatus/a%20b%2Fc/"
    assert fmt.error_summary(result) == "job_not_found: job not found"


def test_missing_key_gives_readable_401(server):
    result = Client(server.base_url).server_status(0)
    assert "X-API-Key" not in server.received[-1]["headers"]
    text = fmt.as_text(fmt.format_lines("Server status", result))
    assert "HTTP 401 Unauthorized" in text
    assert "unauthorized: missing or wrong API key" in text
    assert '"code": "unauthorized"' in text


def test_non_json_body_is_shown_as_text(server):
    result = Client(server.base_url).request("GET", "/html")
    assert result.status == 500 and not result.is_json
    text = fmt.as_text(fmt.format_lines("html", result))
    assert "(not JSON" in text and "Internal Server Error" in text


def test_connection_refused_is_one_line():
    result = Client(f"http://127.0.0.1:{dead_port()}").server_status(0)
    assert result.status is None and not result.ok
    assert result.error_text.startswith("connection error:")
    assert "refused" in result.error_text.lower()
    line, tag = fmt.status_line(result)
    assert tag == fmt.ERROR and "Traceback" not in line and "\n" not in line


def test_read_timeout_is_reported(server):
    result = Client(server.base_url, timeout=(2, 0.2)).request("GET", "/slow")
    assert result.status is None
    assert result.error_text == "timeout: no answer within 0.2 s"


# ---- base URL ----------------------------------------------------------------------------
@pytest.mark.parametrize("url, port, expected", [
    ("http://127.0.0.1", "8000", "http://127.0.0.1:8000"),
    ("127.0.0.1", "8000", "http://127.0.0.1:8000"),
    (" localhost ", " 9000 ", "http://localhost:9000"),
    ("http://127.0.0.1:1234/", "", "http://127.0.0.1:1234"),
    ("http://127.0.0.1:1234", "8000", "http://127.0.0.1:8000"),
    ("https://gpu.example/cylindria/", "443", "https://gpu.example:443/cylindria"),
    ("http://[::1]", "8000", "http://[::1]:8000"),
])
def test_build_base_url(url, port, expected):
    assert build_base_url(url, port) == expected


@pytest.mark.parametrize("url, port, words", [
    ("", "8000", "empty"),
    ("ftp://host", "21", "http://"),
    ("http://127.0.0.1", "eighty", "port"),
    ("http://127.0.0.1", "70000", "port"),
    ("http://", "8000", "host"),
])
def test_build_base_url_refuses(url, port, words):
    with pytest.raises(ValueError, match=words):
        build_base_url(url, port)


# ---- job ids -----------------------------------------------------------------------------
def test_new_job_id_shape_and_validity():
    job_id = new_job_id(datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
    assert job_id.startswith("job-20250102-030405-")
    assert len(job_id.rsplit("-", 1)[1]) == 8
    assert is_valid_job_id(job_id)


def test_new_job_ids_are_unique():
    ids = {new_job_id() for _ in range(100)}
    assert len(ids) == 100


@pytest.mark.parametrize("job_id, valid", [
    ("a", True), ("A.b_c-9", True), ("x" * 128, True),
    ("", False), ("x" * 129, False), ("a b", False), ("a/b", False), ("é", False),
])
def test_is_valid_job_id(job_id, valid):
    assert is_valid_job_id(job_id) is valid


# ---- workflow files ----------------------------------------------------------------------
def test_load_workflow_returns_the_json_text(tmp_path):
    path = tmp_path / "wf.json"
    path.write_text('{"1": {"class_type": "X", "inputs": {}}}', encoding="utf-8")
    assert json.loads(load_workflow(path)) == {"1": {"class_type": "X", "inputs": {}}}


def test_load_workflow_strips_a_bom(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}')
    assert load_workflow(path) == b'{"a": 1}'


@pytest.mark.parametrize("content, words", [
    (b'{"1": {"class_type": ', "not valid JSON"),
    (b"hello", "not valid JSON: Expecting value at line 1 column 1"),
    (b"", "empty"),
    (b"  \n", "empty"),
    (b"\xff\xfe\x00junk", "not UTF-8"),
])
def test_load_workflow_refuses(tmp_path, content, words):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(WorkflowError, match=words):
        load_workflow(path)


def test_load_workflow_missing_file(tmp_path):
    with pytest.raises(WorkflowError, match="cannot read"):
        load_workflow(tmp_path / "nope.json")


# ---- formatting --------------------------------------------------------------------------
def test_format_success():
    result = Result("PUT", "http://h:1/startjob/j/?GpuId=0", 201, 12.4, "CREATED",
                    body="{}", data={"job_id": "j", "status": "queued"}, is_json=True)
    lines = fmt.format_lines("Start job", result, now=datetime(2025, 1, 1, 9, 8, 7))
    assert lines[0] == ("── 09:08:07  Start job ──", fmt.HEADER)
    assert lines[1] == ("PUT http://h:1/startjob/j/?GpuId=0", fmt.INFO)
    assert lines[2] == ("HTTP 201 CREATED · 12 ms", fmt.OK)
    assert lines[3] == ("queued · GPU -", fmt.INFO)
    assert lines[4] == ('{\n  "job_id": "j",\n  "status": "queued"\n}', fmt.BODY)
    assert len(lines) == 5


HELD = {"job_id": "j", "gpu_id": None, "prompt_id": None, "status": "queued", "queue_position": 2,
        "priority": 5, "attempts": 0, "accepted": True}


@pytest.mark.parametrize("gpu_id, expected", [(None, "GPU -"), (0, "GPU 0"), (3, "GPU 3")])
def test_gpu_text(gpu_id, expected):
    assert fmt.gpu_text(gpu_id) == expected


@pytest.mark.parametrize("job, expected", [
    (HELD, "queued · GPU - · queue position 2 · priority 5 · attempts 0"),
    ({**HELD, "gpu_id": 1, "status": "running", "attempts": 2},
     "running · GPU 1 · priority 5 · attempts 2"),
    ({"job_id": "j", "gpu_id": 0, "status": "queued", "queue_position": None}, "queued · GPU 0"),
])
def test_job_summary(job, expected):
    assert fmt.job_summary(job) == expected


def test_format_lists_models_by_folder_with_their_gpus_instead_of_the_json():
    result = Result("GET", "http://h:1/models", 200, 4.0, "OK", data=MODELS, is_json=True)
    lines = fmt.format_lines("Models", result)
    assert lines[3:] == [("3 model folders, 3 files", fmt.INFO),
                         ("checkpoints (2)", fmt.INFO),
                         ("  sd15.safetensors · GPU 0, 1", fmt.BODY),
                         ("  sdxl\\base.safetensors · GPU 1", fmt.BODY),
                         ("loras (none)", fmt.INFO),
                         ("vae (1)", fmt.INFO),
                         ("  ae.pt · GPU 0", fmt.BODY)]


def test_fleet_asks_for_the_nodes_with_the_key(server):
    result = Client(server.base_url, api_key=KEY).fleet()
    assert result.ok and result.data == FLEET
    sent = server.received[-1]
    assert (sent["method"], sent["path"], sent["headers"]["X-API-Key"]) == ("GET", "/fleet", KEY)


def test_format_lists_the_fleet_node_by_node_with_their_gpus():
    result = Result("GET", "http://h:1/fleet", 200, 4.0, "OK", data=FLEET, is_json=True)
    assert fmt.format_lines("Fleet", result)[3:] == [
        ("2 node(s), 1 live · answered by a", fmt.INFO),
        ("a · live · lease 0.5s of 10.0s · 4 held · http://10.0.0.1:8000", fmt.INFO),
        ("  GPU 0 · reachable · websocket connected · 1 running · 2 queued", fmt.BODY),
        ("b · gone · lease 61.0s of 10.0s · 0 held · http://10.0.0.2:8000", fmt.ERROR),
        ("  GPU 0 · unreachable · websocket disconnected · 0 running · 0 queued", fmt.BODY)]


def test_format_shows_a_refused_model_list_as_its_error():
    result = Result("GET", "http://h:1/models", 401, 1.0, "UNAUTHORIZED", is_json=True,
                    data={"error": "missing or wrong API key", "code": "unauthorized"})
    assert ("unauthorized: missing or wrong API key", fmt.ERROR) in fmt.format_lines("Models", result)


def test_format_held_auto_job():
    result = Result("PUT", "u", 201, 3.0, "CREATED", data=HELD, is_json=True)
    lines = fmt.format_lines("Start job", result)
    assert lines[3] == ("queued · GPU - · queue position 2 · priority 5 · attempts 0", fmt.INFO)
    assert '"gpu_id": null' in lines[4][0]


@pytest.mark.parametrize("status, data", [
    (200, {"gpu_id": 0, "reachable": True, "status": "ok"}),  # a GPU's status, not a job
    (400, {"error": "bad priority", "code": "invalid_priority", "job_id": "j", "status": "x"}),
])
def test_format_summarizes_only_job_answers(status, data):
    lines = fmt.format_lines("t", Result("GET", "u", status, 1.0, data=data, is_json=True))
    assert not any("GPU" in text for text, tag in lines if tag != fmt.BODY)


# ---- GpuId and priority fields -------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("", "0"), ("  ", "0"), ("2", "2"), (" 7 ", "7"), ("auto", "auto"), (" AUTO ", "auto"),
    ("9", "9"),  # the server says how many GPUs it has
])
def test_gpu_field(text, expected):
    assert gpu_field(text) == expected


def test_server_status_for_auto_asks_about_all_gpus():
    assert (status_gpu("auto"), status_gpu("3")) == ("all", "3")


@pytest.mark.parametrize("text, expected", [
    ("", None), ("   ", None), ("0", 0), ("5", 5), (" 42 ", 42), ("+7", 7), ("-100", -100),
    ("100", 100), ("-0", 0),
])
def test_parse_priority(text, expected):
    assert parse_priority(text) == expected


@pytest.mark.parametrize("text", ["101", "-101", "1000", "abc", "1.5", "1e2", "--1", "0x10",
                                  "٣", "5 5", "auto"])
def test_parse_priority_refuses(text):
    with pytest.raises(ValueError, match=r"integer from -100 to 100 \(or empty\), not"):
        parse_priority(text)


def test_format_connection_error():
    result = Result("GET", "http://h:1/serverstatus?GpuId=0", None, 3.0,
                    error_text="connection error: Connection refused")
    text = fmt.as_text(fmt.format_lines("Server status", result))
    assert text.endswith("connection error: Connection refused · 3 ms")


def test_format_long_body_is_cut():
    result = Result("GET", "u", 502, 1.0, body="x" * (fmt.MAX_BODY_CHARS + 100))
    text = fmt.as_text(fmt.format_lines("t", result))
    assert "x" * fmt.MAX_BODY_CHARS + " …" in text and "x" * (fmt.MAX_BODY_CHARS + 1) not in text


def test_format_note():
    lines = fmt.format_note("Start job", "Refused: bad", now=datetime(2025, 1, 1))
    assert lines == [("── 00:00:00  Start job ──", fmt.HEADER), ("Refused: bad", fmt.ERROR)]


# ---- watching ----------------------------------------------------------------------------
def job_result(status, percent=None, status_code=200, gpu_id=0, **extra):
    data = {"job_id": "j", "gpu_id": gpu_id, "status": status,
            "queue_position": 1 if status == "queued" else None,
            "progress": {"percent": percent}, **extra}
    return Result("GET", "u", status_code, 1.0, "OK", data=data, is_json=True)


def test_watch_follows_a_job_to_completion():
    watch = Watch("j")
    first = watch.step(job_result("queued"))
    assert (first.status, first.done) == ("queued · GPU 0", False)
    assert first.lines == [("watch j: queued · GPU 0 · queue position 1", fmt.INFO)]
    running = watch.step(job_result("running", 40))
    assert (running.percent, running.status, running.done) == (40.0, "running 40% · GPU 0", False)
    assert running.lines == [("watch j: running 40% · GPU 0", fmt.INFO)]
    again = watch.step(job_result("running", 60))
    assert again.lines == [] and again.percent == 60.0
    done = watch.step(job_result("completed", 60))
    assert done.done and done.percent == 100.0
    assert done.lines[0] == ("watch j: ended completed", fmt.OK)
    assert '"status": "completed"' in fmt.as_text(done.lines)


def test_watch_follows_a_held_auto_job_to_its_gpu():
    watch = Watch("j")
    held = watch.step(job_result("queued", gpu_id=None, priority=5, attempts=0))
    assert held.status == "queued · GPU -"
    assert held.lines == [("watch j: queued · GPU - · queue position 1 · priority 5 · attempts 0",
                           fmt.INFO)]
    assert watch.step(job_result("queued", gpu_id=None, priority=5, attempts=0)).lines == []
    sent = watch.step(job_result("queued", gpu_id=1, priority=5, attempts=1))
    assert sent.status == "queued · GPU 1"
    assert sent.lines == [("watch j: queued · GPU 1 · queue position 1 · priority 5 · attempts 1",
                           fmt.INFO)]
    requeued = watch.step(job_result("queued", gpu_id=None, priority=5, attempts=1))
    assert requeued.status == "queued · GPU -" and len(requeued.lines) == 1


@pytest.mark.parametrize("status", ["failed", "cancelled", "lost"])
def test_watch_stops_at_other_ends(status):
    update = Watch("j").step(job_result(status))
    assert update.done and (f"watch j: ended {status}", fmt.ERROR) in update.lines


def test_watch_stops_on_http_error():
    result = Result("GET", "u", 404, 1.0, "NOT FOUND",
                    data={"error": "job not found", "code": "job_not_found"}, is_json=True)
    update = Watch("j").step(result)
    assert update.done
    assert "job_not_found: job not found" in update.lines[0][0]


def test_watch_tolerates_a_few_connection_errors():
    watch = Watch("j")
    failed = Result("GET", "u", None, 1.0, error_text="connection error: Connection refused")
    updates = [watch.step(failed) for _ in range(MAX_CONNECTION_ERRORS)]
    assert [u.done for u in updates] == [False] * (MAX_CONNECTION_ERRORS - 1) + [True]
    assert "stopped watching" in updates[-1].lines[0][0]


def test_watch_connection_error_count_resets_on_answer():
    watch = Watch("j")
    failed = Result("GET", "u", None, 1.0, error_text="connection error: x")
    for _ in range(MAX_CONNECTION_ERRORS - 1):
        watch.step(failed)
    watch.step(job_result("running", 5))
    assert not watch.step(failed).done


@pytest.mark.parametrize("data, expected", [
    ({"progress": {"percent": 42.5}}, 42.5), ({"progress": {"percent": 130}}, 100.0),
    ({"progress": {"percent": -1}}, 0.0), ({"progress": {"percent": None}}, None),
    ({"progress": {"percent": True}}, None), ({"progress": None}, None), ({}, None), ([], None),
])
def test_progress_percent(data, expected):
    assert progress_percent(data) == expected


# ---- settings ----------------------------------------------------------------------------
@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    path = tmp_path / "config"
    monkeypatch.setenv(settings_mod.CONFIG_DIR_ENV, str(path))
    return path


def test_settings_default_when_missing(config_dir):
    assert settings_mod.load() == Settings()
    assert settings_mod.settings_path() == config_dir / settings_mod.FILE_NAME


def test_settings_round_trip(config_dir):
    saved = Settings(url="http://10.0.0.5", port="8123", gpu_id="auto", priority="-20")
    path = settings_mod.save(saved)
    assert path.parent == config_dir
    assert settings_mod.load() == saved
    assert json.loads(path.read_text()) == {"url": "http://10.0.0.5", "port": "8123",
                                            "gpu_id": "auto", "priority": "-20"}


def test_settings_priority_is_optional(config_dir):
    config_dir.mkdir()
    (config_dir / settings_mod.FILE_NAME).write_text(json.dumps({"gpu_id": "1", "priority": 7}))
    assert settings_mod.load() == Settings(gpu_id="1", priority="7")
    (config_dir / settings_mod.FILE_NAME).write_text(json.dumps({"gpu_id": "1"}))
    assert settings_mod.load().priority == ""


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '"text"'])
def test_settings_unreadable_file_gives_defaults(config_dir, content):
    config_dir.mkdir()
    (config_dir / settings_mod.FILE_NAME).write_text(content)
    assert settings_mod.load() == Settings()


def test_settings_ignore_unknown_keys_and_never_hold_a_key(config_dir):
    config_dir.mkdir()
    (config_dir / settings_mod.FILE_NAME).write_text(
        json.dumps({"url": "http://h", "api_key": "leaked", "port": 8001}))
    loaded = settings_mod.load()
    assert loaded == Settings(url="http://h", port="8001", gpu_id="0")
    assert not hasattr(loaded, "api_key")


def test_default_config_dir_uses_platformdirs(monkeypatch):
    monkeypatch.delenv(settings_mod.CONFIG_DIR_ENV, raising=False)
    assert settings_mod.config_dir().name == "Cylindria"

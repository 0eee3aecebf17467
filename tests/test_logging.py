"""Logging: one access line per request (never a key), a rotating log file, the same fields;
each GPU's node classes and model files said once, then at each change."""
import logging
import re
import socket
from logging.handlers import RotatingFileHandler

import pytest

from cylindria.config.options import ConfigError, load_config
from cylindria.service.logs import FILE_BYTES, FILE_COUNT, AccessLog, remove_handlers, safe_query, setup_logging
from cylindria.service.server import Service
from tests.conftest import make_config
from tests.helpers import API_KEY, Api, wait_for
from tests.processes import CylindriaProcess
from cylindria.web.auth import unnamed

LINE = re.compile(r"^(GET|PUT|DELETE) (\S+) (\d{3}) \d+\.\dms 127\.0\.0\.1(?: (\S+))?$")
WRONG_KEY = "not-the-key-but-secret-too-42"


def access_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "cylindria.access"]


def test_one_line_per_request_with_method_path_status_ms_client(service, api, caplog):
    caplog.set_level(logging.INFO)
    api.get("/jobstatus/nope")
    api.put("/startjob/bad", data=b"{")
    lines = wait_for(lambda: access_lines(caplog) if len(access_lines(caplog)) >= 2 else None)
    assert [LINE.match(line).group(1, 2, 3, 4) for line in lines] == [
        ("GET", "/jobstatus/nope", "404", unnamed(API_KEY)),
        ("PUT", "/startjob/bad", "400", unnamed(API_KEY))]  # the key's name, never the key


@pytest.mark.parametrize("how", ["x-api-key", "bearer", "query", "bare-query", "wrong-key"])
def test_no_key_reaches_any_log_line(service, caplog, how):
    caplog.set_level(logging.DEBUG)
    client = Api(service.url, key=None)
    sent = {"x-api-key": dict(headers={"X-API-Key": API_KEY}),
            "bearer": dict(headers={"Authorization": f"Bearer {API_KEY}"}),
            "query": dict(params={"GpuId": "0", "api_key": API_KEY, "key": API_KEY}),
            "bare-query": dict(params=API_KEY),
            "wrong-key": dict(headers={"X-API-Key": WRONG_KEY}, params={"token": WRONG_KEY})}[how]
    client.get("/serverstatus", **sent)
    line = wait_for(lambda: access_lines(caplog))[0]
    assert LINE.match(line).group(2).startswith("/serverstatus")
    assert API_KEY not in caplog.text and WRONG_KEY not in caplog.text
    assert "X-API-Key" not in caplog.text and "Bearer" not in caplog.text


@pytest.mark.parametrize("proxy, client", [("127.0.0.1", "203.0.113.7"), (None, "127.0.0.1")])
def test_the_client_is_the_forwarded_one_only_behind_a_trusted_proxy(fakes, tmp_path, caplog,
                                                                      proxy, client):
    caplog.set_level(logging.INFO)
    with Service(make_config(fakes, tmp_path, trusted_proxy=proxy)) as service:
        Api(service.url).get("/jobstatus/x", headers={"X-Forwarded-For": "203.0.113.7"})
        line = wait_for(lambda: access_lines(caplog))[0]
    assert line.startswith("GET /jobstatus/x 404 ") and line.endswith(f"ms {client} {unnamed(API_KEY)}")


def test_only_harmless_query_values_are_shown():
    query = "GpuId=1&api_key=s3cret&s3cret2&status=queued"
    assert safe_query(query) == "GpuId=1&***&***&status=queued"


class Body:
    """A response body that says when the server closed it."""

    def __init__(self):
        self.closed = False

    def __iter__(self):
        yield b"one"
        yield b"two"

    def close(self):
        self.closed = True


def run(app, logger, path="/x"):
    """Call a wrapped app as a server would, up to (not including) close()."""
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "",
               "REMOTE_ADDR": "127.0.0.1"}
    body = AccessLog(app, logger)(environ, lambda status, headers, exc_info=None: None)
    return body, b"".join(body)


def app_with(body):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return body
    return app


def test_the_line_is_written_when_the_server_closes_the_body(caplog):
    caplog.set_level(logging.DEBUG)
    inner = Body()
    body, sent = run(app_with(inner), logging.getLogger("cylindria.access"))
    assert sent == b"onetwo" and access_lines(caplog) == []
    body.close()
    assert inner.closed
    assert LINE.match(access_lines(caplog)[0]).group(1, 2, 3) == ("GET", "/x", "200")


def test_below_info_the_app_is_called_as_if_unwrapped(caplog):
    caplog.set_level(logging.WARNING)
    inner = Body()
    body, _ = run(app_with(inner), logging.getLogger("cylindria.access"))
    assert body is inner and access_lines(caplog) == []


def test_successful_reads_are_debug_and_everything_else_info(service, api, caplog):
    caplog.set_level(logging.DEBUG)
    api.get("/health")
    api.get("/jobstatus/nope")
    api.put("/startjob/bad", data=b"{")
    records = wait_for(lambda: (lambda r: r if len(r) >= 3 else None)(
        [r for r in caplog.records if r.name == "cylindria.access"]))
    assert [(r.levelname, r.getMessage().split()[1]) for r in records] == [
        ("DEBUG", "/health"), ("INFO", "/jobstatus/nope"), ("INFO", "/startjob/bad")]


def test_a_crashing_app_is_logged_as_500_and_the_error_goes_on(caplog):
    caplog.set_level(logging.INFO)

    def app(environ, start_response):
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        run(app, logging.getLogger("cylindria.access"))
    assert LINE.match(access_lines(caplog)[0]).group(3) == "500"


def test_a_decoded_newline_in_the_path_cannot_forge_a_second_line(caplog):
    caplog.set_level(logging.DEBUG)
    body, _ = run(app_with(Body()), logging.getLogger("cylindria.access"),
                  path="/x\nGET /forged 200 1.0ms 10.0.0.1")
    body.close()
    assert "\n" not in access_lines(caplog)[0]


def test_log_file_rotates_and_has_the_console_fields(tmp_path):
    path = tmp_path / "logs" / "cylindria.log"
    pipeline = setup_logging("INFO", path, console=False)
    try:
        (handler,) = pipeline.handlers
        assert isinstance(handler, RotatingFileHandler)
        assert (handler.maxBytes, handler.backupCount) == (FILE_BYTES, FILE_COUNT)
        logging.getLogger("cylindria.test").info("hello %s", "file")
    finally:
        remove_handlers(pipeline)  # writes what is still queued before closing
    assert re.fullmatch(r"\S+ \S+ INFO cylindria\.test: hello file\n", path.read_text())


def test_trusted_proxy_must_be_an_address():
    assert load_config(["--trusted-proxy", "::1"], {}).trusted_proxy == "::1"
    with pytest.raises(ConfigError, match="--trusted-proxy"):
        load_config(["--trusted-proxy", "proxy.local"], {})


def test_log_file_from_flag_or_environment():
    assert str(load_config(["--log-file", "a.log"], {}).log_file) == "a.log"
    assert str(load_config([], {"CYLINDRIA_LOG_FILE": "b.log"}).log_file) == "b.log"
    assert load_config([], {}).log_file is None


def test_the_command_line_logs_requests_to_its_log_file(fakes, tmp_path):
    log_file = tmp_path / "cylindria.log"
    proc = CylindriaProcess(fakes[0].url, tmp_path / "data",
                            extra=("--log-file", str(log_file))).start()
    try:
        Api(proc.url).get("/jobstatus/in-the-file")
        wait_for(lambda: "GET /jobstatus/in-the-file 404" in log_file.read_text())
    finally:
        proc.stop()
    text = log_file.read_text()
    assert "Cylindria listening on 127.0.0.1" in text and API_KEY not in text
    assert "Cylindria stopped" in text  # stop() is SIGTERM: a clean shutdown, logged


def test_a_huge_path_without_a_key_gives_bounded_lines_also_when_throttled(service, caplog):
    caplog.set_level(logging.INFO)
    anonymous = Api(service.url, key=None)
    path = "/jobstatus/" + "a" * 100_000
    codes = {anonymous.get(path, params={"GpuId": "1" * 100_000}).status_code for _ in range(12)}
    assert codes == {401, 429}  # the failure throttle answers the last ones
    lines = wait_for(lambda: (lambda lines: lines if len(lines) >= 12 else None)(access_lines(caplog)))
    for line in lines:
        assert len(line) < 800 and line.count("...[cut ") == 2
        assert line.startswith("GET /jobstatus/aaa") and re.search(r" (401|429) \d+\.\dms 127\.0\.0\.1$", line)


def test_a_long_message_from_anywhere_is_clipped_in_the_file(tmp_path):
    path = tmp_path / "cylindria.log"
    pipeline = setup_logging("INFO", path, console=False)
    try:
        logging.getLogger("waitress").warning("Exception while serving %s", "/x" * 50_000)
    finally:
        remove_handlers(pipeline)
    line = path.read_text()
    assert len(line) < 4200 and line.rstrip().endswith("...[cut 96024 chars]")


def test_both_kinds_of_413_are_logged_and_say_the_limit(fakes, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    with Service(make_config(fakes, tmp_path, max_body_bytes=1000)) as service:
        api = Api(service.url)
        flask_413 = api.put("/startjob/big", data=b" " * 2000)  # Flask reads it, then refuses
        waitress_413 = api.put("/startjob/bigger", data=b" " * 200_000)  # refused unread
        lines = wait_for(lambda: (lambda l: l if len(l) >= 2 else None)(access_lines(caplog)))
    for response in (flask_413, waitress_413):
        assert response.status_code == 413
        assert response.json() == {"error": "request body is larger than the limit",
                                   "code": "payload_too_large", "details": {"limit_bytes": 1000}}
    assert sorted(line.split()[:3] for line in lines) == [
        ["PUT", "/startjob/big", "413"], ["PUT", "/startjob/bigger", "413"]]


def test_waitress_own_answers_are_logged_with_the_client(service, caplog):
    caplog.set_level(logging.INFO)
    with socket.create_connection(("127.0.0.1", service.port), timeout=30) as raw:
        raw.sendall(b"GET /jobs HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
        answer = b"".join(iter(lambda: raw.recv(65536), b""))  # waitress closes after it
    assert answer.startswith(b"HTTP/1.1 400") and b'"code": "bad_request"' in answer
    line = wait_for(lambda: access_lines(caplog))[0]
    assert line.startswith("GET /jobs 400 - ") and line.endswith(" 127.0.0.1")


READS = ("node classes installed", "model files in")


def said(caplog, gpu: int, what: str, level: int | None = None) -> list[logging.LogRecord]:
    """The catalogue's log records about this GPU's `what` (at `level`, if given)."""
    return [r for r in caplog.records if r.name == "comfy.comfyui.catalogue"
            and r.getMessage().startswith(f"GPU {gpu}: ") and what in r.getMessage()
            and (level is None or r.levelno == level)]


def test_each_gpu_says_its_node_classes_and_model_files_once_then_each_change(fakes, tmp_path,
                                                                             caplog):
    """Read at the start-up reconciliation, then again as each websocket first connects:
    said once (the second read at DEBUG); a changed list is said again, an unchanged one not."""
    caplog.set_level(logging.DEBUG, logger="comfy.comfyui.catalogue")
    with Service(make_config(fakes, tmp_path)):
        wait_for(lambda: all(len(said(caplog, gpu, what)) == 2 for gpu in (0, 1) for what in READS),
                 message="both reads of both GPUs")
        assert [len(said(caplog, gpu, what, logging.INFO)) for gpu in (0, 1) for what in READS] \
            == [1, 1, 1, 1]
        fakes[0].models = {"loras": ["new.safetensors"]}  # a file added, then ComfyUI reconnects
        fakes[0].drop_websockets()
        wait_for(lambda: len(said(caplog, 0, "model files in")) == 3, message="GPU 0's third read")
        wait_for(lambda: len(said(caplog, 0, "node classes installed")) == 3)
    assert [len(said(caplog, gpu, what, logging.INFO)) for gpu in (0, 1) for what in READS] \
        == [1, 2, 1, 1]
    assert said(caplog, 0, "model files in", logging.INFO)[-1].getMessage() \
        == "GPU 0: 3 model files in 19 folders"

"""The API key appears in no log line and no error message, at any log level.

Logs are captured at DEBUG from a real process (its console and its --log-file) and from an
in-process server (every logger, urllib3 and waitress included), across successes, 401s,
429s, other 4xx and 5xx, with the key sent as X-API-Key, as Authorization: Bearer and in a
query string. Wrong keys a client sends must not be logged either.
"""
from __future__ import annotations

import http.client
import logging
import os
import socket
import subprocess
import sys
import threading

import requests

from tests import workflows
from tests.helpers import API_KEY, free_ports, wait_for
from tests.processes import ROOT, CylindriaProcess

WRONG = "wrong-secret-9f8e7d6c5b4a"  # a client's mistaken key: as secret as the right one
QUERY_NAMES = ("api_key", "key", "token", "apikey", "X-API-Key")


def as_header(key: str) -> dict:
    """The key as X-API-Key."""
    return {"X-API-Key": key}


def as_bearer(key: str) -> dict:
    """The key as Authorization: Bearer."""
    return {"Authorization": f"Bearer {key}"}


def traffic(url: str, fakes) -> list[requests.Response]:
    """Successes and every kind of refusal, with keys in headers, bearer tokens and queries."""
    seen = []

    def call(method, path, headers=None, **kwargs):
        """One request, kept for the checks on answers."""
        seen.append(requests.request(method, url + path, headers=headers or {}, timeout=30,
                                     **kwargs))
        return seen[-1]

    for auth in (as_header(API_KEY), as_bearer(API_KEY)):
        call("PUT", "/startjob/secret-ok", auth, json=workflows.core("secret"))
        call("GET", "/jobstatus/secret-ok", auth)
        call("GET", "/serverstatus", auth, params={"GpuId": "all"})
        call("GET", "/metrics", auth)
    wait_for(lambda: call("GET", "/jobstatus/secret-ok", as_header(API_KEY)).json()["status"]
             == "completed")
    call("GET", "/jobresult/secret-ok/0", as_header(API_KEY))
    for name in QUERY_NAMES:  # the key in a query string, with and without a valid header
        call("GET", "/jobs", as_header(API_KEY), params={name: API_KEY, "limit": 5})
        call("GET", f"/jobs?{API_KEY}")
    client_errors(call)
    server_errors(call, fakes)
    refusals(call)
    return seen


def client_errors(call) -> None:
    """400, 404, 405, 409, 413 with a valid key."""
    auth = as_header(API_KEY)
    call("PUT", "/startjob/bad id", auth, json=workflows.core())
    call("PUT", "/startjob/secret-json", auth, data=b"{not json")
    call("PUT", "/startjob/secret-ui", auth, json={"nodes": [], "links": []})
    call("PUT", "/startjob/secret-rejected", auth, json=workflows.invalid())
    call("PUT", "/startjob/secret-ok", auth, json=workflows.core("other"))
    call("GET", "/jobstatus/nobody", auth)
    call("GET", "/nowhere", auth)
    call("POST", "/jobs", auth)
    call("GET", "/serverstatus", auth, params={"GpuId": "9"})
    call("PUT", "/startjob/secret-big", auth, data=b" " * (32 * 1024 * 1024 + 1))


def server_errors(call, fakes) -> None:
    """503 (a ComfyUI down) and 502 with a valid key, both ways of sending it."""
    fakes[1].stop()
    for auth in (as_header(API_KEY), as_bearer(API_KEY)):
        call("PUT", "/startjob/secret-down", auth, json=workflows.core(), params={"GpuId": 1})
    fakes[1].restart()
    fakes[0].http_delay = 0.0
    nan = b'{"1": {"class_type": "EmptyImage", "inputs": {"width": NaN}}}'
    call("PUT", "/startjob/secret-nan", as_header(API_KEY), data=nan)


def refusals(call) -> None:
    """401s with wrong and missing keys, until the address is throttled (429), then more."""
    for n in range(6):
        call("GET", "/jobs", as_header(f"{WRONG}{n}"))
        call("GET", "/jobs", as_bearer(f"{WRONG}{n}"))
    call("GET", "/jobs")
    call("GET", "/jobs", params={"api_key": API_KEY})
    for auth in (as_header(API_KEY), as_bearer(API_KEY), as_header(WRONG)):
        call("GET", "/jobs", auth)


def leaks(text: str) -> list[str]:
    """Lines of `text` that show the right key or a wrong one a client sent."""
    return [line for line in text.splitlines() if API_KEY in line or WRONG in line]


def assert_answers_keep_it(responses: list[requests.Response]) -> None:
    """No answer echoes a key, in its body or its headers; and the run had every kind of answer."""
    statuses = {r.status_code for r in responses}
    assert {200, 201, 400, 401, 404, 405, 409, 413, 429, 503} <= statuses, statuses
    for response in responses:
        shown = response.content[:100_000] + repr(dict(response.headers)).encode()
        assert API_KEY.encode() not in shown and WRONG.encode() not in shown, response.url


def test_a_real_process_at_debug_never_logs_a_key(fakes, tmp_path):
    """Console and log file of `cylindria.py --log-level DEBUG` hold no key, whatever happened."""
    log_file = tmp_path / "cylindria-file.log"
    process = CylindriaProcess(fakes[0].url, tmp_path / "data",
                               extra=("--log-level", "DEBUG", "--log-file", str(log_file)))
    process.start()
    try:
        responses = traffic(process.url, fakes)
    finally:
        process.stop()
    console, written = process.log(), log_file.read_text(encoding="utf-8")
    assert " DEBUG " in console and " 429 " in written and " 401 " in written
    assert leaks(console) == [] and leaks(written) == []
    assert_answers_keep_it(responses)


def test_an_in_process_server_at_debug_never_logs_a_key(service, fakes, caplog):
    """Every record of every logger, formatted, tracebacks included, holds no key."""
    caplog.set_level(logging.DEBUG)
    for name in ("urllib3", "websocket", "waitress", "cylindria", "werkzeug"):
        caplog.set_level(logging.DEBUG, logger=name)
    responses = traffic(service.url, fakes)
    # The test's own client (requests, on this thread) logs its URLs: those are not Cylindria's.
    server = [r for r in caplog.records if r.thread != threading.get_ident()]
    assert any(r.levelno == logging.DEBUG for r in server)
    assert {"cylindria.access", "urllib3.connectionpool"} <= {r.name for r in server}
    formatter = logging.Formatter("%(name)s %(message)s")
    assert leaks("\n".join(formatter.format(r) for r in server)) == []
    assert leaks("\n".join(repr(r.args) for r in server)) == []
    assert_answers_keep_it(responses)


def test_the_right_key_from_another_address_is_served_while_one_is_throttled(service):
    """After the throttle trips for 127.0.0.1, its wrong keys get 429 while the right key is
    still served there; 127.0.0.2's wrong key is only a 401 and its right key a 200."""
    for n in range(12):
        requests.get(service.url + "/jobs", headers=as_header(f"{WRONG}{n}"), timeout=10)
    refused = requests.get(service.url + "/jobs", headers=as_header(f"{WRONG}x"), timeout=10)
    assert refused.status_code == 429
    served = requests.get(service.url + "/jobs", headers=as_header(API_KEY), timeout=10)
    assert served.status_code == 200  # the throttle slows wrong keys only (issue 25, item 11)
    for key, status in ((f"{WRONG}y", 401), (API_KEY, 200)):
        connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10,
                                                source_address=("127.0.0.2", 0))
        connection.request("GET", "/jobs", headers=as_header(key))
        assert connection.getresponse().status == status
        connection.close()


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """cylindria.py with these flags, expected to stop at once (bad configuration)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CYLINDRIA_")}
    return subprocess.run([sys.executable, str(ROOT / "cylindria.py"), *args], cwd=ROOT,
                          env={**environ, **(env or {})}, capture_output=True, text=True,
                          timeout=60)


def test_configuration_errors_never_show_a_key(tmp_path):
    """A too-short key, by flag or environment, is refused without being repeated."""
    short = "s3cr7!x"  # 7 characters: refused
    for args, env in ((("--api-key", short), None), ((), {"CYLINDRIA_API_KEY": short}),
                      (("--api-key", f"{API_KEY},{short}"), None),
                      (("--api-key", API_KEY, "--port", "bad"), None),
                      (("--api-key", API_KEY, "--numberOfGpus", "9"), None)):
        result = run_cli(*args, "--data-dir", str(tmp_path / "data"), env=env)
        assert result.returncode == 2, result.stderr
        output = result.stdout + result.stderr
        assert short not in output and API_KEY not in output, output


def test_a_generated_key_is_printed_once_and_never_logged(fakes, tmp_path):
    """First start: the key on stdout exactly once; in the log (file and console lines) never."""
    data_dir, log_file = tmp_path / "data", tmp_path / "gen.log"
    port = free_ports(1)
    args = [sys.executable, str(ROOT / "cylindria.py"), "--host", "127.0.0.1", "--port", str(port),
            "--numberOfGpus", "2", "--comfy-base-url", fakes[0].url, "--data-dir", str(data_dir),
            "--log-level", "DEBUG", "--log-file", str(log_file)]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CYLINDRIA_")}
    process = subprocess.Popen(args, cwd=ROOT, env=environ, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (data_dir / "api_key").exists() and _healthy(port), timeout=60)
        key = (data_dir / "api_key").read_text(encoding="utf-8").strip()
        assert requests.get(f"http://127.0.0.1:{port}/jobs", headers=as_header(key),
                            timeout=10).status_code == 200
        requests.get(f"http://127.0.0.1:{port}/jobs", headers=as_bearer(key), timeout=10)
    finally:
        process.terminate()
        stdout, stderr = process.communicate(timeout=30)
    assert stdout.count(key) == 1
    assert key not in stderr and key not in log_file.read_text(encoding="utf-8")


def _healthy(port: int) -> bool:
    """Whether a Cylindria answers /health on that port."""
    try:
        return requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def test_a_generated_key_is_shown_by_the_first_start_that_gets_its_port(fakes, tmp_path):
    """A first start whose port is taken fails before showing the key; the next start, on a
    free port, shows that same key; the one after only says where it is."""
    data_dir = tmp_path / "data"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CYLINDRIA_")}

    def args(port: int) -> list[str]:
        return [sys.executable, str(ROOT / "cylindria.py"), "--host", "127.0.0.1", "--port",
                str(port), "--numberOfGpus", "1", "--comfy-base-url", fakes[0].url,
                "--data-dir", str(data_dir)]

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        failed = subprocess.run(args(taken.getsockname()[1]), cwd=ROOT, env=environ,
                                capture_output=True, text=True, timeout=60)
    assert failed.returncode == 2 and "cannot listen on" in failed.stderr
    key = (data_dir / "api_key").read_text(encoding="utf-8").strip()
    assert key not in failed.stdout + failed.stderr and "Generated API key" not in failed.stdout
    outputs = []
    for _ in range(2):
        port = free_ports(1)
        process = subprocess.Popen(args(port), cwd=ROOT, env=environ, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        try:
            wait_for(lambda: _healthy(port), timeout=60)
        finally:
            process.terminate()
            outputs.append(process.communicate(timeout=30)[0])
    shown, later = outputs
    assert f"Generated API key (shown once; stored in {data_dir / 'api_key'}):\n  {key}\n" in shown
    assert key not in later and f"API key: read from {data_dir / 'api_key'}" in later

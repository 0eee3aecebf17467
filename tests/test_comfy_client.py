"""ComfyClient against a plain HTTP server that records what it gets: only Cylindria's own
headers go out, bodies are exact, and a redirect is never followed anywhere."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from comfy.comfyui.client import ComfyClient
from comfy.comfyui.errors import ComfyBadResponse
from tests.helpers import SERVE_POLL


class Recording(ThreadingHTTPServer):
    """Answers from `routes` ({(method, path): (status, headers, body)}), 404 otherwise,
    and keeps every request as (method, path, headers, body)."""

    daemon_threads = True

    def __init__(self, routes: dict):
        super().__init__(("127.0.0.1", 0), Handler)
        self.routes = routes
        self.seen: list[tuple[str, str, dict, bytes]] = []
        self.thread = threading.Thread(target=self.serve_forever, args=(SERVE_POLL,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.seen.append((self.command, self.path, dict(self.headers), body))
        status, headers, payload = self.server.routes.get((self.command, self.path),
                                                          (404, {}, b""))
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(payload))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _answer


@pytest.fixture
def servers():
    made = []

    def make(routes):
        made.append(Recording(routes))
        return made[-1]
    yield make
    for server in made:
        server.close()


# What requests' machinery adds (Host, Accept-Encoding, Connection) and Cylindria's own.
SENT_HEADERS = {"host", "user-agent", "accept", "accept-encoding", "connection", "content-type",
                "content-length"}
QUEUE = json.dumps({"queue_running": [], "queue_pending": []}).encode()


def test_redirects_are_never_followed(servers):
    elsewhere = servers({})
    comfy = servers({
        ("GET", "/queue"): (302, {"Location": f"{elsewhere.url}/queue"}, b""),
        ("POST", "/prompt"): (307, {"Location": f"{elsewhere.url}/prompt"}, b""),
    })
    client = ComfyClient(comfy.url)
    with pytest.raises(ComfyBadResponse):
        client.queue()
    with pytest.raises(ComfyBadResponse):
        client.submit({"prompt": {}, "client_id": "c", "prompt_id": "p"})
    assert [(m, p) for m, p, _, _ in comfy.seen] == [("GET", "/queue"), ("POST", "/prompt")]
    assert elsewhere.seen == []


def test_only_cylindrias_headers_and_the_exact_body_go_out(servers):
    answer = json.dumps({"prompt_id": "p", "number": 1, "node_errors": {}}).encode()
    comfy = servers({("POST", "/prompt"): (200, {"Set-Cookie": "session=abc"}, answer),
                     ("GET", "/queue"): (200, {}, QUEUE)})
    client = ComfyClient(comfy.url)
    payload = {"prompt": {"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "é"}}},
               "client_id": "c", "prompt_id": "p", "extra_data": {}}
    for _ in range(2):  # the second call goes through the thread's prepared copy
        assert client.submit(payload)["prompt_id"] == "p"
        client.queue()
    posts = [entry for entry in comfy.seen if entry[0] == "POST"]
    assert len(posts) == 2
    for _, _, headers, body in posts:
        assert json.loads(body) == payload
        names = {name.lower() for name in headers}
        assert {"host", "user-agent", "accept", "content-type", "content-length"} <= names
        assert names <= SENT_HEADERS
        assert headers["User-Agent"] == "Cylindria"
        assert headers["Content-Type"] == "application/json"
        assert "Cookie" not in headers  # what ComfyUI set is never sent back
    gets = [entry for entry in comfy.seen if entry[0] == "GET"]
    assert all("Content-Type" not in headers and "Cookie" not in headers
               for _, _, headers, _ in gets)

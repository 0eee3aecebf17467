"""No path, method or encoding reaches anything on ComfyUI but the contract's operations.

Hostile request lines go out on raw sockets (requests would normalise `..`, `//` and
absolute URLs away), all with the right key so that nothing stops them at the door. The
fake ComfyUIs log every request they get; afterwards the exact list of (method, path) they
received must lie within the contract's operations, each with only Cylindria's own ids,
and none may carry anything a client sent (headers, file names, paths).
"""
from __future__ import annotations

import re

import pytest

from tests import workflows
from tests.helpers import API_KEY
from tests.test_hostile_clients import connect, read_response

MARK = "evil-marker"  # put in every hostile request: it must never reach ComfyUI
ALLOWED = [("POST", r"/prompt"), ("GET", r"/queue"), ("GET", r"/history/[0-9a-f-]{36}"),
           ("GET", r"/system_stats"), ("POST", r"/queue"), ("POST", r"/interrupt"),
           ("GET", r"/view"), ("GET", r"/ws"), ("GET", r"/object_info"),
           ("POST", r"/upload/image"),  # only Cylindria's own asset files, named by hash
           ("GET", r"/models"), ("GET", r"/models/[A-Za-z0-9_.-]+")]  # folders ComfyUI listed
# Hostile-looking lines that are in fact Cylindria's own endpoints (served, never forwarded).
CYLINDRIA_OWN = ("GET /jobresult/done/0?", "GET /jobresult/done/%30", f"GET http://{MARK}/jobs",
                 "GET /models")
CLIENT_HEADERS = ("origin", "cookie", "x-forwarded-for", "x-evil", "x-api-key", "authorization",
                  "referer", "forwarded")


# ComfyUI's own routes (and their /api twins): none is a Cylindria endpoint.
COMFY_ROUTES = [
    "GET /prompt", "POST /prompt", "GET /queue", "POST /queue", "GET /history",
    f"GET /history/{MARK}", "POST /history", "POST /interrupt", "POST /free", "GET /system_stats",
    "GET /ws", "GET /ws?clientId=evil", f"GET /view?filename={MARK}.png&type=output",
    "GET /object_info", "GET /userdata/comfy.settings.json", "POST /userdata/x.json",
    "POST /upload/image", "GET /manager/reboot", "POST /manager/queue/install", "GET /api/prompt",
    "POST /api/prompt", f"GET /api/view?filename={MARK}", "POST /api/upload/image",
    "GET /api/userdata?dir=.", "GET /extensions", "GET /internal/logs", "GET /models",
    "GET /embeddings", "DELETE /prompt"]
# Dot segments, encoded slashes, doubled slashes and odd methods that a proxy might resolve.
PATH_TRICKS = [
    f"GET /jobresult/../view?filename={MARK}", f"GET /jobresult/%2e%2e/view?filename={MARK}",
    "GET /jobstatus/../../prompt", "GET /jobstatus/..%2f..%2fprompt", "GET /%2e%2e/prompt",
    "GET //prompt", "GET ///view?filename=x", "GET /./prompt", "GET /%2fprompt",
    "GET /jobs/../prompt", "GET /serverstatus/../system_stats", "GET /serverstatus?GpuId=../view",
    "GET /serverstatus?GpuId=0/../../prompt", "GET /serverstatus?GpuId=-1",
    "GET /serverstatus?GpuId=65535", "PUT /startjob/..%2Fprompt", "PUT /startjob/%2e%2e",
    "DELETE /job/..%2Fqueue", "PATCH /startjob/x", "PROPFIND /", "TRACE /", "OPTIONS *",
    "GET /openapi.json/../prompt"]


def hostile_lines(job: str, fake_port: int) -> list[str]:
    """Request lines (method, target) a client might try to reach ComfyUI through Cylindria."""
    comfy = f"127.0.0.1:{fake_port}"
    aimed = [  # at a real job's outputs, and straight at ComfyUI's address
        f"GET /jobresult/{job}/..%2F..%2Fview?filename={MARK}",
        f"GET /jobresult/{job}/0/../../view?filename={MARK}",
        f"GET /jobresult/{job}/%2e%2e%2f%2e%2e%2fview?filename={MARK}",
        f"GET /jobresult/{job}/0/../../../../api/view?filename={MARK}",
        f"GET /jobresult/{job}/0?filename={MARK}&subfolder=..&type=input",
        f"GET /jobresult/{job}/0%00", f"GET /jobresult/{job}/%30?filename=/etc/passwd",
        f"GET /jobresult/{job}/-1", f"GET /jobresult/{job}/99999999999", f"CONNECT {comfy}",
        f"GET http://{comfy}/prompt", f"POST http://{comfy}/prompt",
        f"GET http://{comfy}/view?filename={MARK}", f"GET http://{comfy}/api/userdata?dir=.",
        f"GET http://{MARK}/jobs"]
    return COMFY_ROUTES + PATH_TRICKS + aimed


def send_raw(port: int, line: str, extra: str = "") -> tuple[int, dict, bytes]:
    """One request exactly as written, with the key and headers ComfyUI must never see."""
    body = '{"prompt": {}, "client_id": "%s"}' % MARK
    request = (f"{line} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {API_KEY}\r\n"
               f"Origin: http://{MARK}.example\r\nCookie: session={MARK}\r\n"
               f"X-Forwarded-For: 10.6.6.6\r\nX-Evil: {MARK}\r\nReferer: http://{MARK}/\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
               f"Connection: close\r\n{extra}\r\n{body}")
    with connect(port) as sock:
        sock.sendall(request.encode("latin-1"))
        return read_response(sock.makefile("rb"))


def allowed(method: str, path: str) -> bool:
    """Whether (method, path) is one of the operations the contract lets Cylindria call."""
    return any(m == method and re.fullmatch(p, path) for m, p in ALLOWED)


@pytest.fixture
def jobs(api, fakes):
    """Jobs that make Cylindria use every allowed operation once, legitimately."""
    api.put("/startjob/done", json=workflows.core("iso_done"))
    api.wait_status("done", "completed")
    fakes[0].ws_silent = True  # this one's end is learnt from /history by the poller
    api.put("/startjob/quiet", json=workflows.core("iso_quiet"))
    api.wait_status("quiet", "completed")
    assert api.get("/serverstatus", params={"GpuId": "all"}).status_code == 200
    api.put("/startjob/running", json=workflows.slow(seconds=200), params={"GpuId": 1})
    api.wait_status("running", "running")
    fakes[1].hold = True  # the next one waits behind the running one
    api.put("/startjob/waiting", json=workflows.core("iso_wait"), params={"GpuId": 1})
    assert api.delete("/job/waiting").status_code == 200
    assert api.delete("/job/running").status_code == 202
    api.wait_status("running", "cancelled")
    assert api.get("/jobresult/done/0").status_code == 200
    return api


def test_hostile_paths_methods_and_encodings_reach_nothing_on_comfy(service, jobs, fakes):
    """Every hostile request is answered by Cylindria itself; ComfyUI sees only the contract."""
    answers = {}
    for line in hostile_lines("done", fakes[0].port):
        status, headers, body = send_raw(service.port, line)
        answers[line] = status
        assert status >= 400 or line.startswith(CYLINDRIA_OWN), (line, status, body[:200])
        assert headers.get("content-type", "").startswith(("application/json", "image/")), line
    upgrade = "Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" \
              "Sec-WebSocket-Version: 13\r\n"
    assert send_raw(service.port, "GET /ws", upgrade)[0] == 404
    # A wrapped body naming its own client_id, prompt_id and queue place: none goes through.
    sneaky = {"prompt": workflows.core("iso_sneaky"), "client_id": MARK, "prompt_id": MARK,
              "front": True, "number": -1}
    assert jobs.put("/startjob/sneaky", json=sneaky).status_code == 201
    jobs.wait_status("sneaky", "completed")
    assert_comfy_saw_only_the_contract(service, fakes)


def assert_comfy_saw_only_the_contract(service, fakes) -> None:
    """What the fakes logged: allowed operations, Cylindria's own ids, nothing of a client's."""
    store = service.context.store
    prompt_ids = {job.prompt_id for job in store.jobs()}
    outputs = [(o["filename"], o["subfolder"], o["type"])
               for job in store.jobs() for o in job.outputs]
    client_ids = {gpu.client_id for gpu in service.context.gpus}
    used = {(r.method, r.path.rsplit("/", 1)[0]
             if r.path.startswith(("/history/", "/models/")) else r.path)
            for fake in fakes for r in fake.requests()}
    assert used == {("POST", "/prompt"), ("GET", "/queue"), ("GET", "/history"), ("GET", "/view"),
                    ("GET", "/system_stats"), ("POST", "/queue"), ("POST", "/interrupt"),
                    ("GET", "/ws"), ("GET", "/object_info"), ("GET", "/models")}, \
        "the fixture exercises every allowed operation"
    for fake in fakes:
        for request in fake.requests():
            seen = f"{request.method} {request.path}?{request.query}"
            assert allowed(request.method, request.path), seen
            assert MARK not in seen + request.body.decode("utf-8", "replace"), seen
            assert not {h.lower() for h in request.headers} & set(CLIENT_HEADERS), request.headers
            assert API_KEY not in repr(request.headers) + seen + repr(request.body), seen
            check_arguments(request, prompt_ids, outputs, client_ids)


def check_arguments(request, prompt_ids: set, outputs: list, client_ids: set) -> None:
    """Each call names only Cylindria's own prompts, outputs and websocket client ids."""
    from urllib.parse import parse_qs
    query = {k: v[0] for k, v in parse_qs(request.query, keep_blank_values=True).items()}
    if request.path.startswith("/history/"):
        assert request.path.split("/")[2] in prompt_ids
    elif request.path == "/view":
        assert (query["filename"], query["subfolder"], query["type"]) in outputs, query
    elif request.path == "/ws":
        assert query == {"clientId": query.get("clientId")} and query["clientId"] in client_ids
    elif request.method == "POST" and request.path == "/prompt":
        assert set(request.json) <= {"prompt", "client_id", "prompt_id", "extra_data"}
        assert request.json["prompt_id"] in prompt_ids and request.json["client_id"] in client_ids
    elif request.method == "POST" and request.path == "/queue":
        assert set(request.json) == {"delete"} and set(request.json["delete"]) <= prompt_ids
    elif request.path == "/interrupt":
        assert set(request.json) == {"prompt_id"} and request.json["prompt_id"] in prompt_ids

"""Keeps tests/fake_comfy faithful to the real ComfyUI recordings in tests/recordings/.

Each scenario is replayed against the fake with real sockets (requests + websocket-client)
and compared with the recording: message types in order, their data keys and the values
that do not depend on time or ids; HTTP statuses, content types and JSON shapes.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Callable

import pytest
import requests
import websocket

from tests import workflows
from tests.fake_comfy import FakeComfy
from tests.fake_comfy.png import PNG_MAGIC, output_png

RECORDINGS = Path(__file__).resolve().parent / "recordings"
REPO = Path(__file__).resolve().parent.parent
SCALE = 0.02  # node sleeps run 50x faster: the recorded 4 s node takes 80 ms
LONG = {"seconds": 3600.0, "steps": 10000}  # a run that only ends by interrupt
PSEUDO = {"<connected>", "<sent>", "<error>", "<close-frame>"}
TIMEOUT = 15.0


# -- recordings ------------------------------------------------------------------------------
def recording(name: str) -> list[dict]:
    """A recorded scenario or sample file."""
    return json.loads((RECORDINGS / f"{name}.json").read_text(encoding="utf-8"))


def recorded_messages(events: list[dict], channel: str) -> list[tuple[str, Any]]:
    """(type, data) of one recorded socket, pseudo events left out except <binary>."""
    return [(e["type"], e["data"]) for e in events
            if e["channel"] == f"ws:{channel}" and e["type"] not in PSEUDO]


def recorded_runs(events: list[dict], channel: str) -> list[list[tuple[str, Any]]]:
    """One socket's messages split at each POST /prompt (part 0 is before the first)."""
    cuts = [e["t"] for e in events if e["channel"] == "http"
            and e["request"]["method"] == "POST" and e["request"]["path"] == "/prompt"]
    parts: list[list] = [[] for _ in range(len(cuts) + 1)]
    for e in events:
        if e["channel"] == f"ws:{channel}" and e["type"] not in PSEUDO:
            parts[sum(1 for cut in cuts if e["t"] >= cut)].append((e["type"], e["data"]))
    return parts


def sample(events: list[dict], method: str, path: str) -> dict:
    """The first recorded HTTP exchange for method + path (path with its query)."""
    return next(e for e in events if e["channel"] == "http"
                and e["request"]["method"] == method and e["request"]["path"] == path)


# -- comparison -----------------------------------------------------------------------------
def shape(value: Any) -> Any:
    """Structure without values: dict keys kept, lists of alike items collapsed to one."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        shapes = [shape(v) for v in value]
        return [shapes[0]] if shapes and all(s == shapes[0] for s in shapes) else shapes
    return type(value).__name__


def _state_detail(data: dict) -> tuple:
    """progress_state: per node, state, value and max (reprs keep int vs float)."""
    return tuple((n, e["state"], repr(e["value"]), repr(e["max"]), tuple(sorted(e)))
                 for n, e in data["nodes"].items())


DETAIL: dict[str, Callable[[dict], Any]] = {
    "status": lambda d: d["status"]["exec_info"]["queue_remaining"],
    "executing": lambda d: d["node"],
    "progress": lambda d: (d["value"], d["max"], d["node"]),
    "progress_state": _state_detail,
    "executed": lambda d: (d["node"], [(tuple(sorted(i)), i["subfolder"], i["type"])
                                       for i in d["output"]["images"]]),
    "execution_cached": lambda d: tuple(d["nodes"]),
    "execution_error": lambda d: (d["node_id"], d["node_type"], tuple(d["executed"]),
                                  d["exception_type"], d["exception_message"]),
    "execution_interrupted": lambda d: (d["node_id"], d["node_type"], tuple(d["executed"])),
    "feature_flags": lambda d: tuple(sorted(d.items())),
}


def summarize(messages: list[tuple[str, Any]]) -> list[tuple]:
    """Per message: type, data keys and the time/id independent details."""
    out = []
    for kind, data in messages:
        if kind == "<binary>":
            out.append(("<binary>", data["event_type"]))
        else:
            out.append((kind, tuple(sorted(data)), DETAIL.get(kind, lambda d: None)(data)))
    return out


def _is_step(kind: str, data: Any) -> bool:
    """A progress-bar step: progress, its progress_state, or its preview frame."""
    if kind in ("progress", "<binary>"):
        return True
    return kind == "progress_state" and any(
        e["state"] == "running" and isinstance(e["value"], int) for e in data["nodes"].values())


def collapse_steps(messages: list[tuple[str, Any]]) -> list[tuple]:
    """summarize(), with every run of progress steps folded into one marker."""
    out: list[tuple] = []
    for (kind, data), summary in zip(messages, summarize(messages)):
        item = ("<steps>",) if _is_step(kind, data) else summary
        if not (item == ("<steps>",) and out and out[-1] == item):
            out.append(item)
    return out


# -- live helpers ---------------------------------------------------------------------------
def wait_until(predicate: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    """Bounded polling; the predicate's truthy result is returned."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


class Client:
    """A websocket-client socket whose reader thread collects (type, data) messages."""

    def __init__(self, fake: FakeComfy, client_id: str | None = None,
                 first_frame: dict | None = None) -> None:
        query = f"?clientId={client_id}" if client_id else ""
        self.ws = websocket.create_connection(f"ws://127.0.0.1:{fake.port}/ws{query}",
                                              timeout=TIMEOUT)
        if first_frame is not None:
            self.ws.send(json.dumps(first_frame))
        self.messages: list[tuple[str, Any]] = []
        self.error: Exception | None = None
        self.marks: list[int] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        """Collect frames until the connection ends."""
        try:
            while True:
                opcode, data = self.ws.recv_data()
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    message = json.loads(data)
                    self.messages.append((message["type"], message["data"]))
                elif opcode == websocket.ABNF.OPCODE_BINARY:
                    event = struct.unpack(">I", data[:4])[0]
                    self.messages.append(("<binary>", {"event_type": event, "payload": data[4:]}))
                else:
                    self.messages.append(("<close-frame>", {}))
                    return
        except Exception as ex:  # noqa: BLE001 - the test inspects it
            self.error = ex

    def mark(self) -> None:
        """Start a new part (called right before a POST /prompt)."""
        self.marks.append(len(self.messages))

    def runs(self) -> list[list[tuple[str, Any]]]:
        """Messages split at the marks, like recorded_runs()."""
        bounds = [0] + self.marks + [len(self.messages)]
        return [self.messages[a:b] for a, b in zip(bounds, bounds[1:])]

    def wait_for(self, predicate: Callable[[str, Any], bool], what: str, start: int = 0) -> int:
        """Index of the first message from `start` matching predicate(type, data)."""
        def find() -> int | None:
            for index in range(start, len(self.messages)):
                if predicate(*self.messages[index]):
                    return index + 1
            return None
        return wait_until(find, what) - 1

    def wait_done(self, prompt_id: str, start: int = 0) -> int:
        """Index of `executing` null for that prompt."""
        return self.wait_for(lambda k, d: k == "executing" and d["node"] is None
                             and d.get("prompt_id") == prompt_id, f"end of {prompt_id}", start)

    def wait_status(self, remaining: int, start: int) -> int:
        """Index of a `status` with that queue_remaining after `start`."""
        return self.wait_for(lambda k, d: k == "status"
                             and d["status"]["exec_info"]["queue_remaining"] == remaining,
                             f"status {remaining}", start)

    def close(self) -> None:
        """Close politely (tests of aborts check `error` instead)."""
        self.ws.close()


def url(fake: FakeComfy, path: str) -> str:
    """Absolute URL on the fake."""
    return fake.url + path


def post_prompt(fake: FakeComfy, workflow: dict | None, clients: tuple = (), **extra: Any) -> dict:
    """POST /prompt after marking every client; the JSON answer (asserting 200)."""
    for client in clients:
        client.mark()
    body = {"prompt": workflow, **extra} if workflow is not None else dict(extra)
    response = requests.post(url(fake, "/prompt"), json=body, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()


def history(fake: FakeComfy, prompt_id: str) -> dict:
    """GET /history/{id}."""
    return requests.get(url(fake, f"/history/{prompt_id}"), timeout=TIMEOUT).json()


def wait_history(fake: FakeComfy, prompt_id: str) -> dict:
    """Poll until the prompt has a history entry; that entry."""
    return wait_until(lambda: history(fake, prompt_id).get(prompt_id), f"history {prompt_id}")


def progress_at_least(value: int) -> Callable[[str, Any], bool]:
    """Predicate: a `progress` message with at least that value."""
    return lambda k, d: k == "progress" and d["value"] >= value


def settle(answer: dict, target: Client | None, others: list[Client]) -> None:
    """Wait until a run's last message reached every socket: `executing` null for its
    client, the final `status` for the rest (the fake delivers in one FIFO)."""
    if target is not None:
        target.wait_done(answer["prompt_id"], target.marks[-1])
    for client in others:
        client.wait_status(0, client.marks[-1])


@pytest.fixture
def fake():
    """A fresh fake (cold cache, number 0) per test."""
    with FakeComfy(time_scale=SCALE) as instance:
        yield instance


@pytest.fixture
def clients():
    """Sockets opened by a test, closed after it."""
    opened: list[Client] = []
    yield opened
    for client in opened:
        client.close()


def connect(opened: list, fake: FakeComfy, client_id: str | None = None, **kw: Any) -> Client:
    """Open a socket, wait for its greeting `status`, and register it for closing."""
    client = Client(fake, client_id, **kw)
    opened.append(client)
    client.wait_for(lambda k, d: k == "status" and "sid" in d, "greeting")
    return client


# -- scenarios ------------------------------------------------------------------------------
def test_success_matches_recording(fake, clients):
    events = recording("scenario-success")
    main = connect(clients, fake, "cyl-success")
    answer = post_prompt(fake, workflows.core(), (main,), client_id="cyl-success")
    main.wait_done(answer["prompt_id"])
    assert summarize(main.messages) == summarize(recorded_messages(events, "main"))
    recorded_history = sample(events, "GET", f"/history/{events[2]['response']['prompt_id']}")
    got = requests.get(url(fake, f"/history/{answer['prompt_id']}"), timeout=TIMEOUT)
    assert got.headers["Content-Type"] == recorded_history["content_type"]
    assert shape(got.json()[answer["prompt_id"]]) == shape(
        next(iter(recorded_history["response"].values())))
    image = got.json()[answer["prompt_id"]]["outputs"]["3"]["images"][0]
    view = requests.get(url(fake, "/view"), params=image, timeout=TIMEOUT)
    assert (view.status_code, view.headers["Content-Type"]) == (200, "image/png")
    assert view.headers["Content-Disposition"] == f'filename="{image["filename"]}"'
    assert int(view.headers["Content-Length"]) == len(view.content)
    assert view.content.startswith(PNG_MAGIC)
    assert view.content == fake.output_bytes(image["filename"])
    queue = requests.get(url(fake, "/queue"), timeout=TIMEOUT)
    assert queue.json() == sample(events, "GET", "/queue")["response"]


def test_post_prompt_answer_matches_recording(fake):
    recorded = recording("scenario-success")[2]
    response = requests.post(url(fake, "/prompt"), json=recorded["request"]["body"],
                             timeout=TIMEOUT)
    assert response.status_code == recorded["status"]
    assert response.headers["Content-Type"] == recorded["content_type"]
    assert shape(response.json()) == shape(recorded["response"])
    assert response.json()["number"] == 0 and response.json()["node_errors"] == {}


def test_progress_matches_recording(fake, clients):
    events = recording("scenario-progress")
    main = connect(clients, fake, "cyl-progress")
    answer = post_prompt(fake, workflows.slow(), (main,), client_id="cyl-progress")
    main.wait_done(answer["prompt_id"])
    assert summarize(main.messages) == summarize(recorded_messages(events, "main"))


def test_queue_and_history_while_running(fake, clients):
    events = recording("scenario-progress")
    main = connect(clients, fake, "cyl-running")
    answer = post_prompt(fake, workflows.slow(**LONG), (main,), client_id="cyl-running")
    main.wait_for(progress_at_least(1), "first progress")
    queue = requests.get(url(fake, "/queue"), timeout=TIMEOUT).json()
    recorded_queue = sample(events, "GET", "/queue")["response"]
    assert shape(queue) == shape(recorded_queue)
    assert queue["queue_running"][0][1] == answer["prompt_id"]
    during = requests.get(url(fake, f"/history/{answer['prompt_id']}"), timeout=TIMEOUT)
    assert (during.status_code, during.json(), during.headers["Content-Length"]) == (200, {}, "2")
    assert requests.get(url(fake, "/prompt"), timeout=TIMEOUT).json() == {
        "exec_info": {"queue_remaining": 1}}
    requests.post(url(fake, "/interrupt"), timeout=TIMEOUT)
    main.wait_done(answer["prompt_id"])
    assert wait_history(fake, answer["prompt_id"])["status"]["status_str"] == "error"


def test_error_matches_recording(fake, clients):
    events = recording("scenario-error")
    main = connect(clients, fake, "cyl-error")
    answer = post_prompt(fake, workflows.fail(), (main,), client_id="cyl-error")
    main.wait_done(answer["prompt_id"])
    recorded = recorded_messages(events, "main")
    assert summarize(main.messages) == summarize(recorded)
    error = next(d for k, d in main.messages if k == "execution_error")
    recorded_error = next(d for k, d in recorded if k == "execution_error")
    assert shape(error) == shape(recorded_error)
    assert error["current_outputs"] == recorded_error["current_outputs"]
    entry = history(fake, answer["prompt_id"])[answer["prompt_id"]]
    recorded_entry = next(iter(sample(events, "GET", f"/history/{recorded_error['prompt_id']}")
                               ["response"].values()))
    assert shape(entry) == shape(recorded_entry)
    assert (entry["outputs"], entry["meta"], entry["status"]["status_str"]) == ({}, {}, "error")


def test_interrupt_matches_recording(fake, clients):
    events = recording("scenario-interrupt")
    recorded = recorded_runs(events, "main")
    main = connect(clients, fake, "cyl-interrupt")
    first = post_prompt(fake, workflows.slow(**LONG), (main,), client_id="cyl-interrupt")
    main.wait_for(progress_at_least(3), "progress 3")
    reply = requests.post(url(fake, "/interrupt"), json={"prompt_id": first["prompt_id"]},
                          timeout=TIMEOUT)
    assert (reply.status_code, reply.text, reply.headers.get("Content-Type")) == (200, "", None)
    main.wait_done(first["prompt_id"])
    # The recorder freed the cache between runs (unrecorded), so node 1 ran again there.
    requests.post(url(fake, "/free"), json={"free_memory": True}, timeout=TIMEOUT)
    second = post_prompt(fake, workflows.slow(**LONG), (main,), client_id="cyl-interrupt")
    seen = main.wait_for(progress_at_least(2), "progress 2", main.marks[-1])
    requests.post(url(fake, "/interrupt"), json={"prompt_id": "not-running-id"}, timeout=TIMEOUT)
    value = main.messages[seen][1]["value"]
    main.wait_for(progress_at_least(value + 2), "progress after the ignored interrupt", seen)
    requests.post(url(fake, "/interrupt"), timeout=TIMEOUT)  # bodiless: global
    main.wait_done(second["prompt_id"])
    for got, want in zip(main.runs(), recorded):
        assert collapse_steps(got) == collapse_steps(want)
    for answer in (first, second):
        entry = history(fake, answer["prompt_id"])[answer["prompt_id"]]
        assert (entry["status"]["status_str"], entry["status"]["completed"]) == ("error", False)
        assert entry["status"]["messages"][-1][0] == "execution_interrupted"
        assert (entry["outputs"], entry["meta"]) == ({}, {})


def test_interrupt_without_client_is_broadcast(fake, clients):
    other = connect(clients, fake, "cyl-bystander")
    answer = post_prompt(fake, workflows.slow(**LONG), (other,))
    other.wait_for(progress_at_least(1), "broadcast progress")
    requests.post(url(fake, "/interrupt"), timeout=TIMEOUT)
    other.wait_for(lambda k, d: k == "execution_interrupted", "broadcast interrupted")
    wait_history(fake, answer["prompt_id"])
    kinds = {k for k, _ in other.runs()[1]}
    assert kinds == {"status", "progress_state", "progress", "execution_interrupted"}


def test_interrupt_while_idle_does_not_affect_the_next_prompt(fake, clients):
    main = connect(clients, fake, "cyl-idle")
    reply = requests.post(url(fake, "/interrupt"), timeout=TIMEOUT)
    assert (reply.status_code, reply.text) == (200, "")
    answer = post_prompt(fake, workflows.core(), (main,), client_id="cyl-idle")
    main.wait_done(answer["prompt_id"])
    assert wait_history(fake, answer["prompt_id"])["status"]["status_str"] == "success"


def test_cached_matches_recording(fake, clients):
    events = recording("scenario-cached")
    main = connect(clients, fake, "cyl-cached")
    answers = []
    for prefix in ("cyl", "cyl", "cyl_other"):
        answers.append(post_prompt(fake, workflows.core(prefix), (main,), client_id="cyl-cached"))
        main.wait_done(answers[-1]["prompt_id"])
    assert [summarize(run) for run in main.runs()] == \
           [summarize(run) for run in recorded_runs(events, "main")]
    first, cached = (wait_history(fake, a["prompt_id"]) for a in answers[:2])
    assert cached["outputs"] == first["outputs"]  # a fully cached run lists the old file


def test_free_memory_empties_the_cache(fake, clients):
    main = connect(clients, fake, "cyl-free")
    for _ in range(2):
        requests.post(url(fake, "/free"), json={"unload_models": True, "free_memory": True},
                      timeout=TIMEOUT)
        answer = post_prompt(fake, workflows.core(), (main,), client_id="cyl-free")
        main.wait_done(answer["prompt_id"])
    cached = [d["nodes"] for k, d in main.messages if k == "execution_cached"]
    assert cached == [[], []]


def test_validation_errors_match_recording(fake, clients):
    events = recording("scenario-validation-error")
    main = connect(clients, fake, "cyl-validation")
    posts = [e for e in events if e["channel"] == "http" and e["request"]["path"] == "/prompt"]
    assert len(posts) == 7
    for recorded in posts:
        response = requests.post(url(fake, "/prompt"), json=recorded["request"]["body"],
                                 timeout=TIMEOUT)
        assert response.status_code == recorded["status"] == 400
        assert response.headers["Content-Type"] == recorded["content_type"]
        assert response.json() == recorded["response"]
    assert requests.get(url(fake, "/queue"), timeout=TIMEOUT).json() == {
        "queue_running": [], "queue_pending": []}
    answer = post_prompt(fake, workflows.core(), (main,), client_id="cyl-validation")
    assert answer["number"] == 7  # every refused POST /prompt used a number
    main.wait_done(answer["prompt_id"])
    assert main.runs()[0] == [main.messages[0]]  # the refusals sent nothing over /ws


def test_partially_valid_prompt_runs_the_valid_output(fake, clients):
    main = connect(clients, fake, "cyl-partial")
    workflow = workflows.core()
    workflow["4"] = {"class_type": "SaveImage", "inputs": {"filename_prefix": "broken"}}
    answer = post_prompt(fake, workflow, (main,), client_id="cyl-partial")
    assert list(answer["node_errors"]) == ["4"]
    assert answer["node_errors"]["4"]["errors"][0]["type"] == "required_input_missing"
    main.wait_done(answer["prompt_id"])
    assert list(wait_history(fake, answer["prompt_id"])["outputs"]) == ["3"]


def test_queue_delete_clear_and_front(fake, clients):
    events = recording("scenario-queue")
    main = connect(clients, fake, "cyl-queue")
    first = post_prompt(fake, workflows.slow(**LONG), (main,), client_id="cyl-queue")
    main.wait_for(lambda k, d: k == "execution_start", "first prompt running")
    second = post_prompt(fake, workflows.slow(0.4, 2), (main,), client_id="cyl-queue")
    third = post_prompt(fake, workflows.slow(0.6, 2), (main,), client_id="cyl-queue")
    queue = requests.get(url(fake, "/queue"), timeout=TIMEOUT).json()
    assert [item[1] for item in queue["queue_running"]] == [first["prompt_id"]]
    assert [item[1] for item in queue["queue_pending"]] == [second["prompt_id"], third["prompt_id"]]
    recorded_queue = sample(events, "GET", "/queue")["response"]
    assert shape(queue) == shape(recorded_queue)
    start = len(main.messages)
    reply = requests.post(url(fake, "/queue"), json={"delete": [third["prompt_id"]]},
                          timeout=TIMEOUT)
    assert (reply.status_code, reply.text, reply.headers.get("Content-Type")) == (200, "", None)
    main.wait_status(2, start)  # deleting broadcasts status
    pending = requests.get(url(fake, "/queue"), timeout=TIMEOUT).json()["queue_pending"]
    assert [item[1] for item in pending] == [second["prompt_id"]]
    requests.post(url(fake, "/interrupt"), json={"prompt_id": first["prompt_id"]},
                  timeout=TIMEOUT)
    main.wait_done(second["prompt_id"])
    assert history(fake, third["prompt_id"]) == {}
    fake.hold = True
    held = [post_prompt(fake, workflows.core(f"held{i}"))["prompt_id"] for i in range(2)]
    requests.post(url(fake, "/queue"), json={"clear": True}, timeout=TIMEOUT)
    assert requests.get(url(fake, "/queue"), timeout=TIMEOUT).json() == {
        "queue_running": [], "queue_pending": []}
    ordered = [post_prompt(fake, workflows.core(f"order{i}"), client_id="cyl-queue", **extra)
               for i, extra in enumerate(({}, {}, {"front": True}))]
    assert ordered[2]["number"] == -ordered[1]["number"] - 1 < 0
    start = len(main.messages)
    fake.hold = False
    for answer in ordered:
        main.wait_done(answer["prompt_id"], start)
    started = [d["prompt_id"] for k, d in main.messages[start:] if k == "execution_start"]
    assert started == [ordered[2]["prompt_id"], ordered[0]["prompt_id"], ordered[1]["prompt_id"]]
    assert all(history(fake, prompt_id) == {} for prompt_id in held)


def test_client_id_targeting_matches_recording(fake, clients):
    events = recording("scenario-client-id")
    a = connect(clients, fake, "cyl-A")
    b = connect(clients, fake, "cyl-B")
    anon = connect(clients, fake)
    sockets = {"A": a, "B": b, "anon": anon}
    step = workflows.slow(1.0, 2)
    answer = post_prompt(fake, step, tuple(sockets.values()), client_id="cyl-A")
    a.wait_done(answer["prompt_id"])
    for client in (b, anon):
        client.wait_status(0, client.marks[-1])
    requests.post(url(fake, "/free"), json={"free_memory": True}, timeout=TIMEOUT)
    answer = post_prompt(fake, step, tuple(sockets.values()))  # no client_id
    for client in sockets.values():
        client.wait_status(0, client.marks[-1])
    for label, client in sockets.items():
        got, want = client.runs(), recorded_runs(events, label)
        assert summarize(got[1]) == summarize(want[1]), label
        assert summarize(got[2]) == summarize(want[2]), label
    assert anon.messages[0][1]["sid"] in fake.ws_client_ids()
    assert wait_history(fake, answer["prompt_id"])["prompt"][3] == {}


def test_caller_chosen_prompt_id_and_reuse(fake, clients):
    main = connect(clients, fake, "cyl-A")
    first = post_prompt(fake, workflows.core(), (main,), client_id="cyl-A", prompt_id="cyl-custom")
    assert first["prompt_id"] == "cyl-custom"
    main.wait_done("cyl-custom")
    old = wait_history(fake, "cyl-custom")
    fake.hold = True
    second = post_prompt(fake, workflows.core("again"), (main,), client_id="cyl-A",
                         prompt_id="cyl-custom")
    assert history(fake, "cyl-custom")["cyl-custom"] == old  # old entry until the rerun ends
    fake.hold = False
    main.wait_done("cyl-custom", main.marks[-1])
    assert history(fake, "cyl-custom")["cyl-custom"]["prompt"][0] == second["number"]
    assert fake.prompts_received() == ["cyl-custom", "cyl-custom"]


def test_same_prompt_id_twice_while_queued(fake, clients):
    main = connect(clients, fake, "cyl-A")
    fake.hold = True
    for seconds in (0.2, 0.3):
        post_prompt(fake, workflows.slow(seconds, 2), (main,), client_id="cyl-A",
                    prompt_id="cyl-dup")
    pending = requests.get(url(fake, "/queue"), timeout=TIMEOUT).json()["queue_pending"]
    assert [item[1] for item in pending] == ["cyl-dup", "cyl-dup"]
    fake.hold = False
    end = main.wait_done("cyl-dup")
    main.wait_done("cyl-dup", end + 1)
    starts = [k for k, d in main.messages if k == "execution_start"]
    assert len(starts) == 2
    entry = wait_history(fake, "cyl-dup")
    assert entry["prompt"][2]["2"]["inputs"]["seconds"] == 0.3  # one entry, the later run


def test_second_socket_with_same_client_id_replaces_first(fake, clients):
    events = recording("scenario-client-id")
    a = connect(clients, fake, "cyl-A")
    b = connect(clients, fake, "cyl-B")
    a2 = connect(clients, fake, "cyl-A")
    assert fake.ws_client_ids() == ["cyl-A", "cyl-B", "cyl-A"]
    answer = post_prompt(fake, workflows.slow(1.0, 2), (a, b, a2), client_id="cyl-A")
    a2.wait_done(answer["prompt_id"])
    b.wait_status(0, b.marks[-1])
    want = recorded_runs(events, "A2")[-1]
    assert summarize(a2.runs()[-1]) == summarize(want)
    assert a.runs()[-1] == [] == recorded_runs(events, "A")[-1]
    assert summarize(b.runs()[-1]) == summarize(recorded_runs(events, "B")[-1])


def test_old_socket_closing_unregisters_its_replacement(fake, clients):
    # server.py pops the socket table by clientId when any socket of that id ends.
    old = connect(clients, fake, "cyl-A")
    new = connect(clients, fake, "cyl-A")
    watcher = connect(clients, fake, "cyl-watch")
    old.close()
    wait_until(lambda: fake.ws_client_ids() == ["cyl-A", "cyl-watch"], "old socket gone")
    answer = post_prompt(fake, workflows.core(), (new, watcher), client_id="cyl-A")
    watcher.wait_status(0, watcher.marks[-1])
    wait_history(fake, answer["prompt_id"])
    assert new.runs()[-1] == []


def test_previews_match_recording(fake, clients):
    events = recording("scenario-preview")
    flags = {"type": "feature_flags", "data": {"supports_preview_metadata": True}}
    legacy = connect(clients, fake, "cyl-legacy")
    meta = connect(clients, fake, "cyl-meta", first_frame=flags)
    meta.wait_for(lambda k, d: k == "feature_flags", "feature flags answer")
    for target in (legacy, meta, None):
        # The recorder freed the cache before each run: the three runs are identical.
        requests.post(url(fake, "/free"), json={"free_memory": True}, timeout=TIMEOUT)
        extra = {"client_id": "cyl-legacy" if target is legacy else "cyl-meta"} if target else {}
        answer = post_prompt(fake, workflows.slow(1.0, 3, send_preview=True), (legacy, meta),
                             **extra)
        settle(answer, target, [c for c in (legacy, meta) if c is not target])
    for label, client in (("legacy", legacy), ("meta", meta)):
        assert [summarize(r) for r in client.runs()] == \
               [summarize(r) for r in recorded_runs(events, label)], label
    _check_preview_payloads(legacy, meta, events)


def _check_preview_payloads(legacy: Client, meta: Client, events: list[dict]) -> None:
    """Type 1: image type + JPEG; type 4: JSON length + recorded metadata keys + JPEG."""
    recorded_meta = next(e["data"]["metadata"] for e in events if e.get("type") == "<binary>"
                         and e["data"]["event_type"] == 4)
    for client in (legacy, meta):
        for kind, data in client.messages:
            if kind != "<binary>":
                continue
            payload = data["payload"]
            if data["event_type"] == 1:
                assert payload[:4] == struct.pack(">I", 1) and payload[4:8] == b"\xff\xd8\xff\xe0"
            else:
                length = struct.unpack(">I", payload[:4])[0]
                metadata = json.loads(payload[4:4 + length])
                assert list(metadata) == list(recorded_meta)
                assert payload[4 + length:].startswith(b"\xff\xd8\xff\xe0")


def test_feature_flags_only_answer_a_first_frame(fake, clients):
    events = recording("scenario-preview")
    recorded = next(d for k, d in recorded_messages(events, "meta") if k == "feature_flags")
    flags = {"type": "feature_flags", "data": {"supports_preview_metadata": True}}
    first = connect(clients, fake, "cyl-first", first_frame=flags)
    first.wait_for(lambda k, d: k == "feature_flags", "answer")
    assert [d for k, d in first.messages if k == "feature_flags"] == [recorded]
    late = connect(clients, fake, "cyl-late", first_frame={"type": "hello", "data": {}})
    late.ws.send(json.dumps(flags))
    first.ws.send(json.dumps(flags))
    start = len(late.messages)
    requests.post(url(fake, "/queue"), json={"clear": True}, timeout=TIMEOUT)  # a status
    late.wait_status(0, start)
    first.wait_status(0, start)
    assert all(k != "feature_flags" for k, _ in late.messages)
    assert [k for k, _ in first.messages].count("feature_flags") == 1
    features = requests.get(url(fake, "/features"), timeout=TIMEOUT).json()
    assert features == recorded


def test_http_samples_match_recording(fake):
    events = recording("http-samples")
    exact = ["/queue", "/prompt", "/object_info/EmptyImage", "/object_info/CylSleepProgress",
             "/object_info/SaveImage", "/object_info/NoSuchNode", "/features", "/embeddings",
             "/models", "/history/does-not-exist"]
    for path in exact:
        recorded = sample(events, "GET", path)
        response = requests.get(url(fake, path), timeout=TIMEOUT)
        assert response.status_code == recorded["status"], path
        assert response.headers["Content-Type"] == recorded["content_type"], path
        assert response.json() == recorded["response"], path
    recorded = sample(events, "GET", "/system_stats")
    response = requests.get(url(fake, "/system_stats"), timeout=TIMEOUT)
    assert response.headers["Content-Type"] == recorded["content_type"]
    assert shape(response.json()) == shape(recorded["response"])
    assert fake.system_stats_calls == 1
    assert requests.get(url(fake, "/extensions"), timeout=TIMEOUT).json() == []  # no frontend
    for method, path, body in (("POST", "/interrupt", None),
                               ("POST", "/free", {"unload_models": True}),
                               ("POST", "/history", {"delete": ["does-not-exist"]})):
        recorded = sample(events, method, path)
        response = requests.request(method, url(fake, path), json=body, timeout=TIMEOUT)
        assert (response.status_code, response.text) == (recorded["status"], recorded["response"])
        assert response.headers.get("Content-Type") is None and recorded["content_type"] == ""


def test_history_max_items_and_delete(fake, clients):
    main = connect(clients, fake, "cyl-hist")
    ids = []
    for prefix in ("h1", "h2", "h3"):
        ids.append(post_prompt(fake, workflows.core(prefix), (main,), client_id="cyl-hist")
                   ["prompt_id"])
        main.wait_done(ids[-1])
    recent = requests.get(url(fake, "/history?max_items=2"), timeout=TIMEOUT).json()
    assert list(recent) == ids[1:]  # the most recent ones, oldest first
    assert list(requests.get(url(fake, "/api/history"), timeout=TIMEOUT).json()) == ids
    requests.post(url(fake, "/history"), json={"delete": [ids[0]]}, timeout=TIMEOUT)
    assert history(fake, ids[0]) == {}
    requests.post(url(fake, "/history"), json={"clear": True}, timeout=TIMEOUT)
    assert requests.get(url(fake, "/history"), timeout=TIMEOUT).json() == {}


def test_view_variants_and_uploads_match_recording(fake):
    events = recording("http-samples")
    for path in ("/view?filename=nope.png&type=output",
                 "/view?filename=../../etc/passwd&type=output"):
        recorded = sample(events, "GET", path)
        response = requests.get(url(fake, path), timeout=TIMEOUT)
        assert (response.status_code, response.text) == (recorded["status"], recorded["response"])
    first, second, third = (output_png(name) for name in ("a.png", "b.png", "c.png"))
    form = {"type": "input", "overwrite": "false"}
    uploads = [({"image": ("cyl_upload.png", first, "image/png")}, form),
               ({"image": ("cyl_upload.png", first, "image/png")}, form),
               ({"image": ("cyl_upload.png", second, "image/png")}, form),
               ({"image": ("cyl_upload2.png", third, "image/png")},
                {"subfolder": "cylsub", "type": "input"}),
               ({"notimage": ("x.png", first, "image/png")}, {})]
    recorded = [e for e in events
                if e["channel"] == "http" and e["request"]["path"] == "/upload/image"]
    for (files, data), want in zip(uploads, recorded, strict=True):
        response = requests.post(url(fake, "/upload/image"), files=files, data=data,
                                 timeout=TIMEOUT)
        assert response.status_code == want["status"]
        assert response.headers.get("Content-Type", "") == want["content_type"]
        body = response.json() if response.status_code == 200 else response.text
        assert body == want["response"]
    view = requests.get(url(fake, "/view?filename=cyl_upload.png&type=input"), timeout=TIMEOUT)
    assert (view.status_code, view.content) == (200, first)
    assert view.headers["Content-Disposition"] == 'filename="cyl_upload.png"'
    assert fake.output_bytes("cyl_upload (1).png", type="input") == second
    assert fake.output_bytes("cyl_upload2.png", "cylsub", "input") == third
    escape = requests.get(url(fake, "/view?filename=a.png&subfolder=../x"), timeout=TIMEOUT)
    assert escape.status_code == 403


def test_output_files_are_real_distinct_pngs(fake, clients):
    main = connect(clients, fake, "cyl-png")
    workflow = workflows.core("batch")
    workflow["1"]["inputs"]["batch_size"] = 2
    answer = post_prompt(fake, workflow, (main,), client_id="cyl-png")
    main.wait_done(answer["prompt_id"])
    images = wait_history(fake, answer["prompt_id"])["outputs"]["3"]["images"]
    assert [i["filename"] for i in images] == ["batch_00001_.png", "batch_00002_.png"]
    blobs = [fake.output_bytes(i["filename"]) for i in images]
    assert blobs[0] != blobs[1]
    for blob in blobs:
        _check_png(blob)
    with pytest.raises(KeyError):
        fake.output_bytes("missing.png")


def _check_png(blob: bytes) -> None:
    """Walk the chunks: CRCs valid, IHDR first, IDAT inflates to the declared size."""
    assert blob.startswith(PNG_MAGIC)
    offset, chunks = 8, {}
    while offset < len(blob):
        length, kind = struct.unpack(">I4s", blob[offset:offset + 8])
        data = blob[offset + 8:offset + 8 + length]
        crc = struct.unpack(">I", blob[offset + 8 + length:offset + 12 + length])[0]
        assert zlib.crc32(kind + data) & 0xFFFFFFFF == crc
        chunks[kind] = data
        offset += 12 + length
    width, height = struct.unpack(">II", chunks[b"IHDR"][:8])
    assert len(zlib.decompress(chunks[b"IDAT"])) == height * (1 + 3 * width)
    assert b"IEND" in chunks


def test_preview_image_and_escaping_prefix(fake, clients):
    main = connect(clients, fake, "cyl-temp")
    workflow = workflows.core()
    workflow["3"] = {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}
    answer = post_prompt(fake, workflow, (main,), client_id="cyl-temp")
    main.wait_done(answer["prompt_id"])
    image = wait_history(fake, answer["prompt_id"])["outputs"]["3"]["images"][0]
    assert image["type"] == "temp" and image["filename"].startswith("ComfyUI_temp_")
    view = requests.get(url(fake, "/view"), params=image, timeout=TIMEOUT)
    assert view.status_code == 200 and view.content.startswith(PNG_MAGIC)
    escaping = post_prompt(fake, workflows.core("../outside"), (main,), client_id="cyl-temp")
    main.wait_done(escaping["prompt_id"])
    error = wait_history(fake, escaping["prompt_id"])["status"]["messages"][-1]
    assert error[0] == "execution_error" and error[1]["exception_type"] == "Exception"


def test_chain_workflow_runs_and_caches(fake, clients):
    main = connect(clients, fake, "cyl-chain")
    workflow = workflows.chain(60)
    assert len(workflow) == 60 and workflow["60"]["class_type"] == "SaveImage"
    for _ in range(2):
        answer = post_prompt(fake, workflow, (main,), client_id="cyl-chain")
        main.wait_done(answer["prompt_id"])
    first, second = main.runs()[1:]
    executing = [d["node"] for k, d in first if k == "executing" and d["node"] is not None]
    assert executing == [str(i) for i in range(1, 61)]
    assert next(d["nodes"] for k, d in second if k == "execution_cached") == list(workflow)


def test_stop_drops_sockets_and_restart_resets_state(fake, clients):
    main = connect(clients, fake, "cyl-kill")
    done = post_prompt(fake, workflows.core(), (main,), client_id="cyl-kill")
    main.wait_done(done["prompt_id"])
    running = post_prompt(fake, workflows.slow(**LONG), (main,), client_id="cyl-kill")
    main.wait_for(progress_at_least(1), "running")
    port = fake.port
    fake.stop()
    wait_until(lambda: main.error is not None, "socket error")
    assert isinstance(main.error, websocket.WebSocketConnectionClosedException)
    assert all(k != "<close-frame>" for k, _ in main.messages)
    with pytest.raises(requests.ConnectionError):
        requests.get(url(fake, "/queue"), timeout=TIMEOUT)
    with pytest.raises(ConnectionRefusedError):
        websocket.create_connection(f"ws://127.0.0.1:{port}/ws", timeout=TIMEOUT)
    fake.restart(keep_state=True)
    assert fake.port == port
    assert history(fake, done["prompt_id"]) != {} and history(fake, running["prompt_id"]) == {}
    fake.hold = True
    post_prompt(fake, workflows.core("pending"))
    fake.restart(keep_state=True)
    assert requests.get(url(fake, "/queue"), timeout=TIMEOUT).json()["queue_pending"] == []
    fake.restart()
    assert requests.get(url(fake, "/history"), timeout=TIMEOUT).json() == {}
    assert post_prompt(fake, workflows.core())["number"] == 0


def test_reconnecting_client_gets_its_running_node(fake, clients):
    # server.py: a socket connecting as the running prompt's client also gets `executing`.
    first = connect(clients, fake, "cyl-back")
    answer = post_prompt(fake, workflows.slow(**LONG), (first,), client_id="cyl-back")
    first.wait_for(progress_at_least(1), "running")
    again = connect(clients, fake, "cyl-back")
    again.wait_for(lambda k, d: k == "executing", "executing replay")
    assert again.messages[:2] == [
        ("status", {"status": {"exec_info": {"queue_remaining": 1}}, "sid": "cyl-back"}),
        ("executing", {"node": "2"})]
    requests.post(url(fake, "/interrupt"), timeout=TIMEOUT)
    again.wait_done(answer["prompt_id"])


def test_stop_aborts_requests_in_flight_and_start_failures_leak_nothing(fake):
    fake.http_delay = 60.0
    result: dict = {}

    def call() -> None:
        try:
            requests.get(url(fake, "/queue"), timeout=TIMEOUT)
        except requests.ConnectionError as ex:
            result["error"] = ex

    worker = threading.Thread(target=call)
    worker.start()
    wait_until(lambda: fake.requests(), "request logged")
    fake.stop()
    worker.join(TIMEOUT)
    assert "error" in result  # dropped like a killed process, not answered
    taken = FakeComfy(port=fake.port)
    threads = threading.active_count()
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
        holder.bind(("127.0.0.1", fake.port))
        holder.listen()
        with pytest.raises(OSError):
            taken.start()
    assert threading.active_count() == threads  # the failed start left no loop thread
    taken.close()


def test_drop_websockets_and_reconnect(fake, clients):
    first = connect(clients, fake, "cyl-drop")
    fake.drop_websockets()
    wait_until(lambda: first.error is not None, "dropped socket")
    assert isinstance(first.error, websocket.WebSocketConnectionClosedException)
    wait_until(lambda: fake.ws_client_ids() == [], "table emptied")
    assert any(t.name == f"fake-comfy-{fake.port}" for t in threading.enumerate())
    connect(clients, fake, "cyl-drop")
    assert fake.ws_client_ids() == ["cyl-drop"]
    upgrades = [r for r in fake.requests() if r.path == "/ws"]
    assert len(upgrades) == 2 and upgrades[0].query == "clientId=cyl-drop"


def test_ws_silent_sends_nothing(fake, clients):
    fake.ws_silent = True
    quiet = Client(fake, "cyl-quiet")
    clients.append(quiet)
    answer = post_prompt(fake, workflows.core(), client_id="cyl-quiet")
    wait_history(fake, answer["prompt_id"])
    fake.ws_silent = False
    requests.post(url(fake, "/queue"), json={"clear": True}, timeout=TIMEOUT)  # a status
    quiet.wait_status(0, 0)
    assert [k for k, _ in quiet.messages] == ["status"]


def test_http_delay_holds_answers_until_lowered(fake):
    fake.http_delay = 60.0
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(
        r=requests.get(url(fake, "/prompt"), timeout=TIMEOUT)))
    worker.start()
    wait_until(lambda: any(r.path == "/prompt" for r in fake.requests()), "request logged")
    assert worker.is_alive()  # logged on arrival, still waiting out the delay
    fake.http_delay = 0.0
    worker.join(TIMEOUT)
    assert result["r"].status_code == 200


def test_hold_keeps_prompts_pending(fake, clients):
    main = connect(clients, fake, "cyl-hold")
    fake.hold = True
    answer = post_prompt(fake, workflows.core(), (main,), client_id="cyl-hold")
    queue = requests.get(url(fake, "/queue"), timeout=TIMEOUT).json()
    item = queue["queue_pending"][0]
    assert queue["queue_running"] == [] and len(item) == 5
    assert item[1:] == [answer["prompt_id"], workflows.core(), {"client_id": "cyl-hold"}, ["3"]]
    fake.hold = False
    main.wait_done(answer["prompt_id"])


def test_ignore_prompt_id_emulates_older_comfyui(fake):
    fake.ignore_prompt_id = True
    answer = post_prompt(fake, workflows.core(), prompt_id="mine")
    assert answer["prompt_id"] != "mine" and len(answer["prompt_id"]) == 36
    assert fake.prompts_received() == [answer["prompt_id"]]


def test_requests_log_and_api_prefix(fake):
    post_prompt(fake, workflows.core(), client_id="x")
    assert requests.get(url(fake, "/api/queue"), timeout=TIMEOUT).status_code == 200
    missing = requests.get(url(fake, "/no/such/path"), timeout=TIMEOUT)
    assert (missing.status_code, missing.text) == (404, "404: Not Found")
    logged = fake.requests()
    assert [(r.method, r.path) for r in logged] == [
        ("POST", "/prompt"), ("GET", "/api/queue"), ("GET", "/no/such/path")]
    assert logged[0].json["client_id"] == "x" and json.loads(logged[0].body) == logged[0].json
    assert logged[1].query == "" and "Host" in logged[1].headers


def test_mismatched_origin_is_refused_like_comfyui(fake):
    foreign = requests.get(url(fake, "/queue"), headers={"Origin": "https://evil.example"},
                           timeout=TIMEOUT)
    same = requests.get(url(fake, "/queue"), headers={"Origin": fake.url}, timeout=TIMEOUT)
    assert (foreign.status_code, same.status_code) == (403, 200)


def test_workflow_helpers_return_fresh_dicts():
    first = workflows.slow(seconds=1.5, steps=3, prefix="p", send_preview=True)
    assert first["2"]["inputs"] == {"image": ["1", 0], "seconds": 1.5, "steps": 3,
                                    "send_preview": True}
    first["2"]["inputs"]["steps"] = 99
    assert workflows.slow()["2"]["inputs"]["steps"] == 8
    assert workflows.fail("boom")["2"]["inputs"]["message"] == "boom"
    assert workflows.invalid()["2"]["inputs"] == {}
    assert workflows.core("x")["3"]["inputs"]["filename_prefix"] == "x"


def _free_port_pair() -> int:
    """A port p with p and p+1 free right now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise AssertionError("no free port pair")


def test_command_line_runs_instances_until_sigterm():
    port = _free_port_pair()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_comfy", "--port", str(port), "--count", "2",
         "--time-scale", "0.01"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        lines = [process.stdout.readline() for _ in range(2)]
        assert [line.split()[-1] for line in lines] == [
            f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"]
        for p in (port, port + 1):
            stats = requests.get(f"http://127.0.0.1:{p}/system_stats", timeout=TIMEOUT).json()
            assert stats["system"]["argv"][stats["system"]["argv"].index("--port") + 1] == str(p)
        process.terminate()
        assert process.wait(TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(TIMEOUT)
        process.stdout.close()

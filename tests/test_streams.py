"""Waiting on a job without polling: ?wait= and Server-Sent Events, against real servers."""
from __future__ import annotations

import json
import threading

import requests

from cylindria.service.server import Service
from tests import workflows
from tests.conftest import make_config
from tests.helpers import API_KEY, Api, wait_for

HEADERS = {"X-API-Key": API_KEY}


def read_events(url: str, events: list | None = None, timeout: float = 30.0) -> list:
    """Every event of a stream until the server ends it, appended to `events` as it comes:
    (name, data); comments as ("", text)."""
    events = [] if events is None else events
    name = None
    with requests.get(url, headers=HEADERS, stream=True, timeout=timeout) as response:
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].startswith("text/event-stream")
        for line in response.iter_lines(decode_unicode=True):
            if line.startswith(":"):
                events.append(("", line))
            elif line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[len("data: "):])))
    return events


def test_wait_answers_when_the_job_ends_and_after_the_wait_otherwise(api, fake):
    fake.hold = True
    api.put("/startjob/waited", json=workflows.slow(seconds=4, steps=2, prefix="waited"))
    held = api.get("/jobstatus/waited?wait=0.3").json()
    assert held["status"] == "queued"  # the wait ran out: the job as it stands
    answers = []
    waiter = threading.Thread(target=lambda: answers.append(
        api.get("/jobstatus/waited?wait=60", timeout=30).json()))
    waiter.start()
    fake.hold = False
    waiter.join(40)
    # Answered before the client's own 30 s timeout, though 60 s were allowed: it came when
    # the job ended, not when the wait ran out.
    assert answers and answers[0]["status"] == "completed"
    for bad in ("61", "-1", "soon", "nan"):
        answer = api.get(f"/jobstatus/waited?wait={bad}")
        assert answer.status_code == 400 and answer.json()["details"]["parameter"] == "wait"
    assert api.get("/jobstatus/unknown?wait=5").status_code == 404


def test_jobevents_delivers_each_status_and_progress_between_then_ends(api, fake, service):
    fake.hold = True
    api.put("/startjob/streamed", json=workflows.slow(seconds=30, steps=6, prefix="streamed"))
    events: list = []
    reader = threading.Thread(target=read_events, args=(f"{service.url}/jobevents/streamed", events))
    reader.start()
    wait_for(lambda: events, message="the first event")
    fake.hold = False
    reader.join(40)
    assert not reader.is_alive(), "the stream ended after the final status"
    statuses = [data["status"] for name, data in events if name == "status"]
    assert statuses == ["queued", "running", "completed"]
    first_running = [name for name, _ in events].index("status", 1)
    progress = [data for name, data in events if name == "progress"]
    assert progress and all(name in ("progress", "") for name, _ in events[first_running + 1:-1])
    assert progress[-1]["percent"] <= 100 and events[-1][1]["outputs"]


def test_a_finished_job_streams_its_status_and_ends(api):
    api.put("/startjob/done-early", json=workflows.core("done-early"))
    api.wait_status("done-early", "completed")
    events = read_events(f"{api.base_url}/jobevents/done-early")
    assert [(name, data["status"]) for name, data in events] == [("status", "completed")]


def test_streams_beyond_the_limit_get_429_and_a_slot_comes_back(fakes, tmp_path):
    fakes[0].hold = True
    with Service(make_config(fakes, tmp_path, max_streams=1)) as service:
        api = Api(service.url)
        api.put("/startjob/limited", json=workflows.core("limited"))
        stream = requests.get(f"{service.url}/jobevents/limited", headers=HEADERS, stream=True,
                              timeout=10)
        assert stream.status_code == 200
        for path in ("/jobevents/limited", "/jobstatus/limited?wait=5"):
            refused = api.get(path)
            assert refused.status_code == 429 and refused.json()["code"] == "too_many_streams"
            assert int(refused.headers["Retry-After"]) > 0
        assert api.get("/jobstatus/limited").status_code == 200  # a plain read needs no slot
        stream.close()
        fakes[0].hold = False
        api.wait_status("limited", "completed")
        wait_for(lambda: api.get("/jobstatus/limited?wait=1").status_code == 200,
                 message="the slot freed when the client left")


def test_stop_ends_open_streams_within_the_second(fakes, tmp_path):
    fakes[0].hold = True
    # One client's stream and wait: its share of the slots must allow two.
    service = Service(make_config(fakes, tmp_path, max_streams_per_client=2)).serve_in_thread()
    api = Api(service.url)
    api.put("/startjob/open", json=workflows.core("open"))
    ended = threading.Event()

    def listen() -> None:
        try:
            read_events(f"{service.url}/jobevents/open")
        except requests.RequestException:
            pass  # the server went away: the stream is over either way
        ended.set()

    threading.Thread(target=listen, daemon=True).start()
    def wait_long() -> None:
        try:
            api.get("/jobstatus/open?wait=60", timeout=30)
        except requests.RequestException:
            pass  # the server closed the connection as it stopped: the wait is over either way

    waiter = threading.Thread(target=wait_long, daemon=True)
    waiter.start()
    wait_for(lambda: len(service.context.watch._watched) == 1 and
             service.context.watch._watched["open"].waiters == 2, message="both waiting")
    assert service.stop() is True
    assert ended.wait(10)
    waiter.join(10)
    assert not waiter.is_alive()


def test_a_held_job_streams_until_a_gpu_takes_it(fakes, tmp_path):
    """GpuId=auto with no GPU reachable: the stream shows it queued in Cylindria's queue, then
    follows it to its end once a ComfyUI starts."""
    for fake in fakes:
        fake.stop()
    with Service(make_config(fakes, tmp_path)) as service:
        api = Api(service.url)
        assert api.put("/startjob/held-stream?GpuId=auto",
                       json=workflows.core("held-stream")).status_code == 201
        events: list = []
        reader = threading.Thread(target=read_events,
                                  args=(f"{service.url}/jobevents/held-stream", events))
        reader.start()
        wait_for(lambda: events, message="the first event")
        first = events[0][1]
        assert (first["status"], first["gpu_id"], first["queue_position"]) == ("queued", None, 0)
        fakes[0].start()
        reader.join(40)
        assert not reader.is_alive()
    statuses = [data["status"] for name, data in events if name == "status"]
    assert statuses[0] == "queued" and statuses[-1] == "completed"


def test_keepalives_come_on_time_though_the_job_is_touched_often(fakes, tmp_path, monkeypatch):
    """The poller touches a waiting job every interval; a comment is still due KEEPALIVE
    after the stream's last write, not after its last wake-up."""
    from cylindria.web import streams as web_streams
    monkeypatch.setattr(web_streams, "KEEPALIVE", 0.3)
    fakes[0].hold = True
    with Service(make_config(fakes, tmp_path, poll_interval=0.05)) as service:
        api = Api(service.url)
        api.put("/startjob/quiet", json=workflows.core("quiet"))
        events: list = []
        reader = threading.Thread(target=read_events, args=(f"{service.url}/jobevents/quiet", events))
        reader.start()
        wait_for(lambda: sum(1 for name, _ in events if name == "") >= 2, message="two keep-alives")
        fakes[0].hold = False
        reader.join(30)
    assert [data["status"] for name, data in events if name == "status"][-1] == "completed"

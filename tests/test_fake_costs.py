"""The fake's `costs` knob: route costs read from the recordings, one costed request at a time.

No timing is asserted (shared, noisy machines): only the cost table's values, which sections
were entered, and that the sections of one instance never overlap.
"""

from __future__ import annotations

import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import websocket

from tests import workflows
from tests.fake_comfy import FakeComfy
from tests.fake_comfy.costs import (LATER_SESSION, RECORDINGS, REAL_TIMINGS, cost_of, cost_table,
                                    is_costed, real_costs, recorded_costs, route_key, timing_key)

TIMEOUT = 15.0
SMALL = 0.02  # seconds: a synthetic cost, small enough to keep the tests fast
SMALL_COSTS = {"POST /prompt 200": SMALL, "POST /prompt 400": SMALL / 2, "GET /queue": SMALL,
               "GET /system_stats": SMALL, "GET /history/{id}": SMALL}


def http(method: str, path: str, elapsed: float | None, status: int | None = 200,
         **extra) -> dict:
    """A recorded HTTP event as the recordings have it."""
    return {"t": 0.0, "channel": "http", "request": {"method": method, "path": path, **extra},
            "status": status, "content_type": "application/json", "elapsed_ms": elapsed}


def write(folder, name: str, events) -> None:
    """One recording file."""
    (folder / name).write_text(json.dumps(events), encoding="utf-8")


# -- the cost table ------------------------------------------------------------------------
def test_recorded_costs_of_a_synthetic_folder(tmp_path):
    write(tmp_path, "scenario-a.json", [
        http("POST", "/prompt", 4.0), http("POST", "/prompt", 6.0), http("POST", "/prompt", 11.0),
        http("POST", "/prompt", 3.0, status=400), http("GET", "/history/abc", 2.0),
        http("GET", "/api/history/def", 4.0), http("GET", "/view?filename=a.png&type=output", 5.0),
        http("GET", "/view?filename=b.png", 7.0, status=404), http("GET", "/queue", 9.0),
        http("GET", "/system_stats", None, status=None),  # the server was killed: no answer
        {"t": 1.0, "channel": "ws:a", "type": "status", "data": {}},
        {"t": 2.0, "channel": "note", "data": "ignored"}])
    write(tmp_path, "samples.json", [
        http("GET", "/queue", 1.0), http("GET", "/history?max_items=2", 8.0),
        {"t": 3.0, "channel": "timing", "data": {"results": [
            {"path": "/queue", "n": 50, "median_ms": 2.5},
            {"path": "/history", "n": 50, "median_ms": 3.0},
            {"path": "/history?max_items=1", "n": 50, "median_ms": 5.0}]}}])
    write(tmp_path, "workflow-core.json", {"1": {"class_type": "EmptyImage", "inputs": {}}})

    costs = recorded_costs(tmp_path)

    assert costs == pytest.approx({
        "POST /prompt 200": 0.006, "POST /prompt 400": 0.003,  # status-keyed: median of each
        "GET /history/{id}": 0.003,  # /history/<id> and /api/history/<id> are one route
        "GET /view": 0.006,  # query strings dropped, statuses pooled
        "GET /queue": 0.0025,  # the timing median over 50 calls wins over the samples
        "GET /history": 0.004})  # two timing paths of one route: the median of their medians
    assert "GET /system_stats" not in costs


def test_route_keys_and_lookups():
    assert route_key("post", "/api/prompt?x=1", 400) == "POST /prompt 400"
    assert route_key("GET", "/queue", 200) == "GET /queue"  # only POST /prompt keys the status
    assert route_key("GET", "/object_info/EmptyImage") == "GET /object_info/{class}"
    assert route_key("GET", "/history") == "GET /history"
    assert cost_of(SMALL_COSTS, "POST", "/prompt", 400) == SMALL / 2
    assert cost_of(SMALL_COSTS, "POST", "/prompt", 500) == 0.0
    assert cost_of(SMALL_COSTS, "GET", "/history/some-id", 200) == SMALL
    assert cost_of(SMALL_COSTS, "GET", "/ws", 101) == 0.0
    assert cost_of(None, "GET", "/queue", 200) == 0.0
    assert is_costed(SMALL_COSTS, "POST", "/api/prompt")
    assert not is_costed(SMALL_COSTS, "GET", "/ws")
    assert not is_costed(SMALL_COSTS, "GET", "/history")  # /history/{id} is another route
    assert not is_costed(None, "GET", "/queue")


def test_real_recordings_give_positive_costs_for_the_proxied_routes():
    costs = recorded_costs()
    for key in ("POST /prompt 200", "GET /queue", "GET /system_stats", "GET /history/{id}"):
        assert costs[key] > 0, key
    assert all(value > 0 for value in costs.values())


def test_the_second_session_files_leave_recorded_costs_as_they_were(tmp_path):
    """object-info.json and timings-real.json are no event lists, and the second session's
    scenario is skipped: recorded_costs() is what the first session's files alone give."""
    second = LATER_SESSION | {"object-info.json", REAL_TIMINGS}
    for path in RECORDINGS.glob("*.json"):
        if path.name not in second:
            shutil.copy(path, tmp_path / path.name)
    assert all((RECORDINGS / name).exists() for name in second)
    assert recorded_costs() == recorded_costs(tmp_path)
    # not skipped, the later scenario's samples would join the first session's medians
    assert recorded_costs(skip=frozenset()) != recorded_costs()


def test_dict_files_and_skipped_files_give_no_cost(tmp_path):
    write(tmp_path, "scenario-a.json", [http("GET", "/queue", 4.0)])
    write(tmp_path, "scenario-b.json", [http("GET", "/queue", 40.0)])
    write(tmp_path, "timings.json", {"routes": {"GET /queue": {"p50_ms": 1.0}}})
    assert recorded_costs(tmp_path, skip=frozenset({"scenario-b.json"})) == {"GET /queue": 0.004}


# -- real costs ------------------------------------------------------------------------------
def test_real_costs_of_a_synthetic_file(tmp_path):
    write(tmp_path, "timings.json", {"date": "x", "routes": {
        "POST /prompt (core workflow, accepted)": {"n": 50, "p50_ms": 2.0, "p90_ms": 9.0},
        "POST /prompt (missing input, refused)": {"n": 50, "p50_ms": 1.0},
        "GET /history/{id} (finished)": {"n": 50, "p50_ms": 3.0},
        "GET /history/{id} (unknown)": {"n": 50, "p50_ms": 5.0},
        "GET /api/queue?x=1": {"n": 50, "p50_ms": 7.0}}})
    assert real_costs(tmp_path / "timings.json") == pytest.approx({
        "POST /prompt 200": 0.002, "POST /prompt 400": 0.001,
        "GET /history/{id}": 0.004,  # two situations of one route: the median of their p50s
        "GET /queue": 0.007})


def test_timing_names_become_route_keys():
    assert timing_key("GET /object_info (full)") == "GET /object_info"
    assert timing_key("POST /upload/image (32x32 PNG, overwrite)") == "POST /upload/image"
    assert timing_key("GET /prompt") == "GET /prompt"
    assert timing_key("POST /prompt (rejected: no outputs)") == "POST /prompt 400"
    with pytest.raises(ValueError):
        timing_key("the queue")


def test_real_costs_come_from_timings_real_json():
    routes = json.loads((RECORDINGS / REAL_TIMINGS).read_text(encoding="utf-8"))["routes"]
    costs = real_costs()
    assert set(costs) == {"POST /prompt 200", "GET /queue", "GET /history/{id}",
                          "GET /system_stats", "GET /object_info", "POST /upload/image",
                          "GET /prompt"}
    for key, cost in costs.items():
        p50s = [timing["p50_ms"] / 1000 for name, timing in routes.items()
                if timing_key(name) == key]
        assert min(p50s) <= cost <= max(p50s), key
    recorded = recorded_costs()
    for key in set(costs) & set(recorded):  # the second session measured a quieter ComfyUI
        assert costs[key] < recorded[key], key


def test_cost_tables_by_name():
    assert cost_table("none") is None
    assert cost_table("recorded") == recorded_costs()
    assert cost_table("real") == real_costs()
    with pytest.raises(ValueError, match="one of none, recorded, real"):
        cost_table("cheap")


def test_a_fake_at_real_costs_charges_the_measured_p50():
    with FakeComfy(time_scale=0.02, costs="real") as fake:
        assert fake.costs == real_costs()
        assert call(fake, ("GET", "/queue", None)) == 200
        assert call(fake, ("GET", "/features", None)) == 200  # not measured: not costed
        assert [(s.key, s.cost) for s in fake.costed_sections()] == [
            ("GET /queue", real_costs()["GET /queue"])]
        fake.costs = "none"
        assert fake.costs is None


# -- the fake with costs -------------------------------------------------------------------
@pytest.fixture
def costed():
    """A fake whose proxied routes cost SMALL seconds each."""
    with FakeComfy(time_scale=0.02, costs=SMALL_COSTS) as instance:
        instance.hold = True  # prompts queue up: nothing runs while the requests are timed
        yield instance


def call(fake: FakeComfy, request: tuple) -> int:
    """One request on its own connection; its status."""
    method, path, body = request
    return requests.request(method, fake.url + path, json=body, timeout=TIMEOUT).status_code


MIX = [("POST", "/prompt", {"prompt": workflows.core()}), ("GET", "/queue", None),
       ("GET", "/system_stats", None), ("GET", "/history/nope", None),
       ("POST", "/prompt", {"prompt": workflows.load("invalid")})]


def test_costed_requests_of_one_instance_never_overlap(costed):
    barrier = threading.Barrier(12)

    def together(request: tuple) -> int:
        barrier.wait(TIMEOUT)  # all twelve are sent at once
        return call(costed, request)

    with ThreadPoolExecutor(12) as pool:
        statuses = list(pool.map(together, [MIX[n % len(MIX)] for n in range(12)]))

    assert statuses.count(400) == 2 and statuses.count(200) == 10
    sections = sorted(costed.costed_sections(), key=lambda s: s.entered)
    assert len(sections) == 12
    for earlier, later in zip(sections, sections[1:]):
        assert earlier.left <= later.entered, (earlier, later)
    by_key = {s.key: s.cost for s in sections}
    assert by_key["POST /prompt 200"] == SMALL and by_key["POST /prompt 400"] == SMALL / 2
    assert by_key["GET /queue"] == SMALL


def test_uncosted_routes_and_websockets_take_no_lock(costed):
    socket = websocket.create_connection(costed.url.replace("http", "ws") + "/ws?clientId=c",
                                         timeout=TIMEOUT)
    try:
        socket.recv()  # the greeting: the socket's handler now runs for as long as it is open
        # were the socket's handler holding the lock, this would never be answered
        assert call(costed, ("GET", "/queue", None)) == 200
        assert call(costed, ("GET", "/features", None)) == 200
    finally:
        socket.close()
    assert [s.key for s in costed.costed_sections()] == ["GET /queue"]


def test_costs_can_be_switched_on_a_running_fake():
    with FakeComfy(time_scale=0.02) as fake:
        assert fake.costs is None
        assert call(fake, ("GET", "/queue", None)) == 200
        fake.costs = {"GET /queue": SMALL}
        assert call(fake, ("GET", "/queue", None)) == 200
        fake.costs = None
        assert call(fake, ("GET", "/queue", None)) == 200
        assert [s.key for s in fake.costed_sections()] == ["GET /queue"]


def test_without_costs_nothing_is_serialized_or_changed():
    with FakeComfy(time_scale=0.02) as fake:
        fake.hold = True
        assert fake.costs is None
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda r: call(fake, r), MIX * 2))
        assert statuses == [200, 200, 200, 200, 400] * 2
        assert fake.costed_sections() == []  # the section, the only taker of the lock: never
        assert len(fake.prompts_received()) == 2
        assert len(fake.requests()) == 10


def test_command_line_accepts_the_cost_tables():
    from tests.fake_comfy.__main__ import parse_args

    assert parse_args(["--costs", "recorded"]).costs == "recorded"
    assert parse_args(["--costs", "real"]).costs == "real"
    assert parse_args([]).costs == "none"
    with pytest.raises(SystemExit):
        parse_args(["--costs", "cheap"])

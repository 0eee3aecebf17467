"""GET /fleet and the lease keeper on one host (SQLite: the fleet of one), the keys' hash, the
comparison of keys with the live nodes', and a renewal that fails."""
from __future__ import annotations

import json
import logging

from comfy.comfyui.gpu import build_gpus
from comfy.jobs.store import JobStore
from cylindria.fleet.membership import Membership, keys_hash, node_status
from cylindria.fleet.view import RecentNodes
from cylindria.storage import StorageUnavailable
from tests import workflows
from tests.backends import sqlite_storage
from tests.helpers import API_KEY, Api, wait_for


def test_fleet_lists_this_node_on_sqlite(api, service, fakes):
    answer = api.get("/fleet")
    assert answer.status_code == 200
    fleet = answer.json()
    assert fleet["node"] == service.config.node
    [node] = fleet["nodes"]
    assert node["node"] == service.config.node and node["live"] is True
    assert node["lease_seconds"] == service.config.node_lease
    assert 0 <= node["lease_age_seconds"] <= node["lease_seconds"]
    assert node["started_at"].endswith("Z") and node["advertise_url"].startswith("http://")
    assert [gpu["gpu_id"] for gpu in node["gpus"]] == [0, 1]
    assert set(node["gpus"][0]) == {"gpu_id", "reachable", "websocket", "running", "queue_length"}
    assert node["held_jobs"] == 0


def test_fleet_needs_a_key(service):
    answer = Api(service.url, key=None).get("/fleet")
    assert answer.status_code == 401 and answer.json()["code"] == "unauthorized"


def test_the_lease_says_what_the_node_runs(api, service, fakes):
    fakes[0].hold = True  # GPU 0's job waits in its ComfyUI's queue
    assert api.put("/startjob/waiting?GpuId=0", json=workflows.core("waiting")).status_code == 201
    long = workflows.slow(seconds=400, prefix="long")  # 20 s at the fakes' time scale
    assert api.put("/startjob/long?GpuId=1", json=long).status_code == 201
    api.wait_status("long", "running")

    def gpus():
        return api.get("/fleet").json()["nodes"][0]["gpus"]
    wait_for(lambda: [(g["queue_length"], g["running"]) for g in gpus()] == [(1, 0), (0, 1)],
             timeout=10, message="the next renewal")
    assert [g["reachable"] for g in gpus()] == [True, True]


def test_metrics_show_the_fleet(api, service):
    assert api.put("/startjob/auto?GpuId=auto", json=workflows.core("auto")).status_code == 201
    api.wait_status("auto", "completed")
    text = api.get("/metrics").text
    assert "cylindria_fleet_live_nodes 1.0" in text
    assert "cylindria_fleet_held_jobs 0.0" in text
    # One host has no shared queue: its GpuId=auto jobs are sent from its own, no claim.
    assert f'cylindria_fleet_claims_total{{node="{service.config.node}"}} 0.0' in text


def test_the_keys_hash_is_of_the_keys_not_their_order_nor_the_keys_themselves():
    assert keys_hash(["a-key-123", "b-key-456"]) == keys_hash(["b-key-456", "a-key-123"])
    assert keys_hash(["a-key-123"]) != keys_hash(["a-key-123", "b-key-456"])
    assert "a-key-123" not in keys_hash(["a-key-123"])


def keeper(storage, name: str, gpus=(), lease: float = 60.0) -> Membership:
    return Membership(storage.nodes, name, f"http://127.0.0.1:1/{name}", lease, list(gpus),
                      JobStore(storage.jobs))


def test_a_node_whose_keys_differ_from_the_live_nodes_warns(tmp_path, caplog):
    storage = sqlite_storage(tmp_path)
    status = json.dumps({"gpus": [], "held_jobs": 0})
    storage.nodes.renew("same", "", 60.0, keys_hash([API_KEY]), status)
    storage.nodes.renew("other-a", "", 60.0, keys_hash(["another-key"]), status)
    storage.nodes.renew("other-b", "", 60.0, keys_hash(["another-key"]), status)
    storage.nodes.renew("gone", "", 60.0, keys_hash(["a-third-key"]), status)
    storage.nodes.leave("gone")  # not live: its keys do not count
    caplog.set_level(logging.WARNING)
    node = keeper(storage, "new")
    node.keys_hash = keys_hash([API_KEY])
    assert node.renew_once()
    [warning] = [r.getMessage() for r in caplog.records if "API keys" in r.getMessage()]
    assert "differ from those of 2 of the 3 other live node(s) (other-a, other-b)" in warning
    caplog.clear()
    assert node.renew_once() and "API keys" not in caplog.text  # compared once, at start


class FailingRows:
    """NodeRows whose database is down for the first `failures` renewals."""

    def __init__(self, failures: int):
        self.failures, self.renewals = failures, []

    def renew(self, *args, **kwargs) -> None:
        if self.failures:
            self.failures -= 1
            raise StorageUnavailable("database down")
        self.renewals.append(kwargs)

    def all(self) -> list:
        return []

    def leave(self, name: str) -> None:
        raise StorageUnavailable("database down")


def test_a_failed_renewal_is_logged_once_and_tried_again(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    node = Membership(FailingRows(3), "n1", "", 10.0, [], JobStore(sqlite_storage(tmp_path).jobs))
    assert [node.renew_once() for _ in range(4)] == [False, False, False, True]
    failed = [r for r in caplog.records if "lease not renewed" in r.getMessage()]
    assert len(failed) == 1 and "renewed again" in caplog.text
    assert node.rows.renewals == [{"first": True}]  # the first that got through: started_at now


def test_a_stopped_node_leaves_even_if_the_database_is_down(tmp_path):
    node = Membership(FailingRows(0), "n1", "", 10.0, [], JobStore(sqlite_storage(tmp_path).jobs))
    node.start("h")
    node.stop(1.0)  # leave() meets the outage: no exception, the lease ends by itself
    assert not node._thread.is_alive()


def test_a_clean_stop_leaves_the_fleet(tmp_path):
    storage = sqlite_storage(tmp_path)
    node = keeper(storage, "n1")
    node.start("h")
    assert storage.nodes.all()[0].live
    node.stop(1.0)
    [row] = storage.nodes.all()
    assert row.name == "n1" and not row.live


def test_the_status_is_built_from_memory(tmp_path, fakes):
    gpus = build_gpus(fakes[0].url, 2, "t")
    gpus[1].reachable, gpus[1].websocket_connected = True, True
    status = node_status(gpus, JobStore(sqlite_storage(tmp_path).jobs))
    assert status == {"gpus": [
        {"gpu_id": 0, "reachable": False, "websocket": "disconnected", "running": 0,
         "queue_length": 0},
        {"gpu_id": 1, "reachable": True, "websocket": "connected", "running": 0,
         "queue_length": 0}], "held_jobs": 0, "shared_queue": 0}
    assert fakes[0].requests() == [] and fakes[1].requests() == []  # ComfyUI never asked


class CountedRows:
    """NodeRows over a real store that count the reads."""

    def __init__(self, rows):
        self.rows, self.reads = rows, 0

    def all(self):
        self.reads += 1
        return self.rows.all()


def test_the_fleet_gauges_sum_the_live_nodes_and_read_at_most_every_so_often(tmp_path):
    storage = sqlite_storage(tmp_path)
    for name, held in (("a", 2), ("b", 3), ("gone", 7)):
        storage.nodes.renew(name, "", 60.0, "h", json.dumps({"gpus": [], "held_jobs": held}))
    storage.nodes.leave("gone")
    rows = CountedRows(storage.nodes)
    recent = RecentNodes(rows, max_age=3600)
    assert recent.gauges() == (2, 5)  # the node that left counts for neither
    assert recent.gauges() == (2, 5) and rows.reads == 1  # the second from the cache
    fresh = RecentNodes(rows, max_age=0)
    fresh.gauges(), fresh.gauges()
    assert rows.reads == 3


def test_the_fleet_gauge_counts_the_shared_queue_once(tmp_path):
    storage = sqlite_storage(tmp_path)
    for name, held, shared in (("a", 1, 4), ("b", 2, 5), ("gone", 7, 9)):
        storage.nodes.renew(name, "", 60.0, "h", json.dumps(
            {"gpus": [], "held_jobs": held, "shared_queue": shared}))
    storage.nodes.leave("gone")
    # each live node's own, plus the shared queue as the node that sees most of it says
    assert RecentNodes(storage.nodes, max_age=0).gauges() == (2, 1 + 2 + 5)

"""Outputs across a fleet (real processes, each node with its own fake ComfyUI, one
PostgreSQL): any node sends the bytes of a job another node holds exactly as that node sends
them (Range too, v2 too), asked of it with the fleet credential, never a client's key; the
node holding them down is 503 node_unreachable with Retry-After."""
from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from cylindria.fleet.credential import HEADER, META_KEY, load_credential
from cylindria.storage import open_url
from tests import workflows
from tests.helpers import API_KEY, Api, wait_for

BOB = "bob-key-0123456789"  # a key limited to its own jobs
KEYS = ("--api-key", f"{API_KEY},bob:{BOB}:own")
CONTENT_HEADERS = ("Content-Type", "Content-Length", "Content-Range", "Accept-Ranges",
                   "Content-Disposition")


def credential_in(database_url: str) -> str:
    """The fleet credential as the database holds it."""
    storage = open_url(database_url)
    try:
        return storage.meta.get(META_KEY, "")
    finally:
        storage.close()


def completed_job(owner: Api, *others: Api) -> str:
    """A job pinned to `owner`'s GPU 0, completed, and seen completed by the other nodes."""
    job_id = str(uuid.uuid4())
    created = owner.put(f"/startjob/{job_id}?GpuId=0", json=workflows.core("fleet"))
    assert created.status_code == 201, created.text
    owner.wait_status(job_id, "completed")
    for other in others:  # its row, read again within a second
        other.wait_status(job_id, "completed")
    return job_id


def same_answer(asked: requests.Response, owner: requests.Response) -> None:
    """Two answers with the same status, bytes and content headers."""
    assert asked.status_code == owner.status_code, asked.text
    assert asked.content == owner.content
    for name in CONTENT_HEADERS:
        assert asked.headers.get(name) == owner.headers.get(name), name


@pytest.fixture
def fleet(start_node):
    """Nodes a and b on one fresh database: (a's Api, b's Api, {name: process})."""
    nodes = start_node.many(("a", "b"), *KEYS)
    return Api(nodes["a"].url), Api(nodes["b"].url), nodes


def test_any_node_sends_another_nodes_output_as_that_node_does(fleet):
    a, b, nodes = fleet
    job_id = completed_job(a, b)
    assert b.get(f"/jobresult/{job_id}").json() == a.get(f"/jobresult/{job_id}").json()
    [output] = a.get(f"/jobresult/{job_id}").json()["outputs"]
    expected = nodes["a"].fake.output_bytes(output["filename"])
    assert len(expected) > 200  # room for the ranges below
    views_on_b = len([r for r in nodes["b"].fake.requests() if r.path == "/view"])
    for api in (b, a):  # the v2 views give the file's size whichever node is asked
        [shown] = api.get(f"/api/v2/jobs/{job_id}").json()["outputs"]
        assert shown["size_bytes"] == len(expected), shown
        assert api.get(f"/api/v2/assets/{job_id}~0").json()["size_bytes"] == len(expected)

    for path in (f"/jobresult/{job_id}/0", f"/api/v2/assets/{job_id}~0/content"):
        whole = b.get(path)
        assert whole.status_code == 200 and whole.content == expected, whole.text
        same_answer(whole, a.get(path))
        for byte_range, piece in (("bytes=10-99", expected[10:100]),
                                  ("bytes=-50", expected[-50:]),
                                  (f"bytes={len(expected) - 5}-", expected[-5:])):
            part = b.get(path, headers={"Range": byte_range})
            assert part.status_code == 206 and part.content == piece, (byte_range, part.text)
            assert part.headers["Content-Range"].endswith(f"/{len(expected)}")
            same_answer(part, a.get(path, headers={"Range": byte_range}))
        outside = b.get(path, headers={"Range": f"bytes={len(expected)}-"})
        assert outside.status_code == 416, outside.text
        assert outside.headers["Content-Range"] == f"bytes */{len(expected)}"
        assert outside.status_code == a.get(path, headers={"Range": f"bytes={len(expected)}-"}).status_code
    assert b.get(f"/jobresult/{job_id}/1").json()["code"] == "output_not_found"
    # Nothing of it was read from b's own ComfyUI: the bytes came from a.
    assert len([r for r in nodes["b"].fake.requests() if r.path == "/view"]) == views_on_b

    bob = Api(nodes["b"].url, key=BOB)  # another client's job, as on the node that ran it
    for path in (f"/jobresult/{job_id}", f"/jobresult/{job_id}/0",
                 f"/api/v2/assets/{job_id}~0/content"):
        assert bob.get(path).status_code == 404, path
        assert Api(nodes["a"].url, key=BOB).get(path).status_code == 404, path


def test_the_internal_endpoint_takes_the_fleet_credential_only(fleet, fleet_database):
    a, b, nodes = fleet
    job_id = completed_job(a, b)
    credential = credential_in(fleet_database)
    assert len(credential) >= 40  # secrets.token_urlsafe(32)
    internal = f"/fleet/outputs/{job_id}/0"
    for headers in ({"X-API-Key": API_KEY}, {"Authorization": f"Bearer {API_KEY}"},
                    {HEADER: API_KEY}, {HEADER: credential[:-1]}, {}):
        refused = requests.get(nodes["a"].url + internal, headers=headers, timeout=10)
        assert refused.status_code == 401 and refused.json()["code"] == "unauthorized", headers
    fleet_only = {HEADER: credential}
    owner = requests.get(nodes["a"].url + internal, headers=fleet_only, timeout=10)
    assert owner.status_code == 200
    assert owner.content == a.get(f"/jobresult/{job_id}/0").content
    part = requests.get(nodes["a"].url + internal, headers={**fleet_only, "Range": "bytes=0-9"},
                        timeout=10)
    assert part.status_code == 206 and part.content == owner.content[:10]
    # Both nodes hold the database's one credential, and it opens only the owner's own jobs...
    not_held = requests.get(nodes["b"].url + internal, headers=fleet_only, timeout=10)
    assert not_held.status_code == 404 and not_held.json()["code"] == "job_not_found"
    # ... and nothing of the public API.
    for path in ("/jobs", f"/jobresult/{job_id}/0", "/fleet"):
        assert requests.get(nodes["b"].url + path, headers=fleet_only, timeout=10).status_code == 401

    answers = [b.get(path).text for path in ("/fleet", "/metrics", "/serverstatus",
                                             f"/jobstatus/{job_id}", "/openapi.json")]
    assert not [text for text in answers if credential in text]
    assert "/fleet/outputs" not in b.get("/openapi.json").text
    for node in nodes.values():
        assert credential not in node.log()


def test_a_node_down_is_node_unreachable_for_its_outputs(fleet, start_node):
    """a stopped cleanly (its lease ended at once) and c killed while its lease (60 s) still
    holds (its port refuses connections): b answers 503 node_unreachable for both."""
    a, b, nodes = fleet
    c_node = start_node("c", *KEYS, "--node-lease", "60s")
    c = Api(c_node.url)
    stopped, killed = completed_job(a, b), completed_job(c, b)
    nodes["a"].stop()
    live = {node["node"]: node["live"] for node in b.get("/fleet").json()["nodes"]}
    assert live == {"a": False, "b": True, "c": True}
    c_node.kill()
    for job_id in (stopped, killed):
        for path in (f"/jobresult/{job_id}/0", f"/api/v2/assets/{job_id}~0/content"):
            down = b.get(path, headers={"Range": "bytes=0-9"})
            assert down.status_code == 503, down.text
            assert int(down.headers["Retry-After"]) > 0
            body = down.json()
            code = body["error"]["code"] if path.startswith("/api/v2") else body["code"]
            assert code == "node_unreachable", body
        assert b.get(f"/jobresult/{job_id}").status_code == 200  # the list is the job's row
    # Each path was the one meant: a's ended lease, c's closed port (b's log is written by
    # its own thread, after the answers).
    wait_for(lambda: "node a cannot be reached: its lease has ended" in nodes["b"].log()
             and "node c cannot be reached: ConnectionError" in nodes["b"].log(),
             message="b to log why each node could not be asked")


def test_nodes_starting_together_read_one_credential(fleet_database):
    """The first node to ask creates the credential; nodes asking at the same instant all read
    that one (the meta row is added only if absent). Its repr shows nothing of it."""
    storages = [open_url(fleet_database) for _ in range(4)]
    barrier = threading.Barrier(len(storages))

    def load(storage):
        barrier.wait()
        return load_credential(storage.meta)

    try:
        with ThreadPoolExecutor(len(storages)) as pool:
            loaded = list(pool.map(load, storages))
    finally:
        for storage in storages:
            storage.close()
    stored = credential_in(fleet_database)
    assert all(credential.headers() == {HEADER: stored} for credential in loaded)
    assert all(credential.accepts(stored) and not credential.accepts(stored + "x")
               for credential in loaded)
    assert stored not in repr(loaded[0]) and stored not in str(loaded[0])

"""GpuId=<node>:<n> (real processes, each node with its own fake ComfyUI, one PostgreSQL): a
job pinned to another node's GPU is submitted by that node, asked with the fleet credential
and the client's name (never its key), and the owner's answer is the client's; retries go to
any node; an unknown node or GPU is 400, a node down 503 node_unreachable."""
from __future__ import annotations

import uuid

import psycopg
import pytest
import requests

from cylindria.fleet.credential import HEADER
from cylindria.storage import open_url
from tests import workflows
from tests.helpers import API_KEY, Api
from tests.test_assets import PNG, asset_ref, upload
from tests.test_fleet_outputs import credential_in

BOB, CAROL = "bob-key-0123456789", "carol-key-0123456789"  # keys limited to their own jobs
KEYS = ("--api-key", f"{API_KEY},bob:{BOB}:own,carol:{CAROL}:own")


@pytest.fixture
def fleet(start_node):
    """Nodes a and b on one fresh database: (a's Api, b's Api, {name: process})."""
    nodes = start_node.many(("a", "b"), *KEYS)
    return Api(nodes["a"].url), Api(nodes["b"].url), nodes


def node_of(database_url: str, job_id: str) -> str | None:
    """The node the job's row names (None: no such job)."""
    storage = open_url(database_url)
    try:
        job = storage.jobs.get(job_id)
        return None if job is None else job.node
    finally:
        storage.close()


def prompts(fake) -> list[dict]:
    """The prompts a fake ComfyUI was sent."""
    return [r.json for r in fake.requests() if r.path == "/prompt" and r.method == "POST"]


def test_a_job_pinned_to_another_node_runs_there_and_retries_go_anywhere(fleet, fleet_database):
    a, b, nodes = fleet
    job_id = str(uuid.uuid4())
    workflow = workflows.core("pinned")
    created = b.put(f"/startjob/{job_id}?GpuId=a:0&priority=7", json=workflow)
    assert created.status_code == 201, created.text
    job = created.json()
    assert (job["job_id"], job["gpu_id"], job["priority"]) == (job_id, 0, 7)
    assert [p["prompt_id"] for p in prompts(nodes["a"].fake)] == [job["prompt_id"]]
    assert prompts(nodes["b"].fake) == []
    assert node_of(fleet_database, job_id) == "a"

    done = a.wait_status(job_id, "completed")
    assert b.wait_status(job_id, "completed") == done  # both nodes answer the same job

    for api, gpu in ((b, "a:0"), (a, "a:0"), (a, "0"), (b, "0")):
        again = api.put(f"/startjob/{job_id}?GpuId={gpu}&priority=7", json=workflow)
        assert again.status_code == 200, (gpu, again.text)
        assert again.json()["prompt_id"] == job["prompt_id"]
    other = workflows.core("another")
    for api in (a, b):
        conflict = api.put(f"/startjob/{job_id}?GpuId=a:0", json=other)
        assert conflict.status_code == 409 and conflict.json()["code"] == "job_id_conflict"
    assert len(prompts(nodes["a"].fake)) == 1 and prompts(nodes["b"].fake) == []


def test_this_nodes_own_name_is_its_own_gpu(fleet, fleet_database):
    a, b, nodes = fleet
    job_id = str(uuid.uuid4())
    created = b.put(f"/startjob/{job_id}?gpu_id=b:0", json=workflows.core("own"))
    assert created.status_code == 201, created.text
    assert [p["prompt_id"] for p in prompts(nodes["b"].fake)] == [created.json()["prompt_id"]]
    assert prompts(nodes["a"].fake) == []
    assert node_of(fleet_database, job_id) == "b"
    b.wait_status(job_id, "completed")


def test_the_owners_refusal_is_the_clients_answer(fleet, fleet_database):
    """ComfyUI on a refuses the prompt: b answers a's 400 comfy_rejected, and no job stays."""
    a, b, nodes = fleet
    refused = b.put("/startjob/refused?GpuId=a:0", json=workflows.invalid())
    assert refused.status_code == 400, refused.text
    assert refused.json() == a.put("/startjob/refused?GpuId=0", json=workflows.invalid()).json()
    assert refused.json()["code"] == "comfy_rejected"
    assert node_of(fleet_database, "refused") is None
    bad = b.put("/startjob/bad-json?GpuId=a:0", data=b"{not json")
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_json"
    # An id of dots reaches a as that id (never read as a dot segment of the path).
    dots = b.put("/startjob/%2E%2E?GpuId=a:0", json=workflows.core("dots"))
    assert dots.status_code == 201 and dots.json()["job_id"] == "..", dots.text
    assert node_of(fleet_database, "..") == "a"


INVALID = (("zz:0", "zz"), ("a:5", "a"), ("a:auto", None), (":0", None), ("a:01", None))


def test_an_unknown_node_or_gpu_is_invalid_gpu_id(fleet):
    """Each refused before anything is recorded (one fleet for all: two nodes take seconds to
    start)."""
    a, b, nodes = fleet
    for gpu_id, node in INVALID:
        answer = b.put(f"/startjob/bad?GpuId={gpu_id}", json=workflows.core())
        assert answer.status_code == 400, (gpu_id, answer.text)
        body = answer.json()
        assert body["code"] == "invalid_gpu_id" and body["details"]["gpu_id"] == gpu_id
        assert body["details"].get("node") == node, gpu_id
        if gpu_id == "a:5":
            assert body["details"]["number_of_gpus"] == 1
    assert b.get("/jobstatus/bad").status_code == 404
    assert prompts(nodes["a"].fake) == [] and prompts(nodes["b"].fake) == []


def test_a_node_down_is_node_unreachable_and_nothing_is_accepted(fleet, start_node, fleet_database):
    """a stopped cleanly (its lease ended at once) and c killed while its lease (60 s) still
    holds (its port refuses connections)."""
    a, b, nodes = fleet
    c = start_node("c", *KEYS, "--node-lease", "60s")
    nodes["a"].stop()
    c.kill()
    for gpu_id, node in (("a:0", "a"), ("c:0", "c")):
        down = b.put(f"/startjob/down-{node}?GpuId={gpu_id}", json=workflows.core())
        assert down.status_code == 503, down.text
        assert int(down.headers["Retry-After"]) > 0
        assert down.json()["code"] == "node_unreachable"
        assert down.json()["details"] == {"node": node}
        assert node_of(fleet_database, f"down-{node}") is None
    assert prompts(nodes["b"].fake) == []


def test_an_own_key_pins_its_own_job(fleet):
    a, b, nodes = fleet
    bob, carol = Api(nodes["b"].url, key=BOB), Api(nodes["b"].url, key=CAROL)
    bob_on_a, carol_on_a = Api(nodes["a"].url, key=BOB), Api(nodes["a"].url, key=CAROL)
    job_id = str(uuid.uuid4())
    created = bob.put(f"/startjob/{job_id}?GpuId=a:0", json=workflows.core("bob"))
    assert created.status_code == 201 and created.json()["submitted_by"] == "bob"
    assert a.status(job_id)["submitted_by"] == "bob"
    for api in (bob, bob_on_a):
        assert api.get(f"/jobstatus/{job_id}").status_code == 200
    for api in (carol, carol_on_a):
        assert api.get(f"/jobstatus/{job_id}").status_code == 404
    # Carol's submission under bob's id, pinned through b: as if the id were free, no more.
    taken = carol.put(f"/startjob/{job_id}?GpuId=a:0", json=workflows.core("carol"))
    assert taken.status_code == 409 and "details" not in taken.json()
    assert bob.put(f"/startjob/{job_id}?GpuId=a:0", json=workflows.core("bob")).status_code == 200


def test_an_asset_only_its_nodes_disk_holds_is_used_on_that_node_only(fleet, fleet_database):
    """An asset uploaded to a runs on a when pinned there through b. One whose bytes the
    database lacks (as for a file kept before it held them) cannot be used on a: 409
    asset_on_other_node, no job; on b, which has its file, it runs; uploaded again, anywhere."""
    a, b, nodes = fleet
    on_a = upload(a, PNG).json()
    workflow = workflows.core("asset-a")
    workflow["3"]["inputs"]["filename_prefix"] = asset_ref(on_a)
    created = b.put("/startjob/asset-a?GpuId=a:0", json=workflow)
    assert created.status_code == 201, created.text
    a.wait_status("asset-a", "completed")
    assert [r for r in nodes["a"].fake.requests() if r.path == "/upload/image"]

    on_b = upload(b, PNG + b"b").json()
    with psycopg.connect(fleet_database) as conn:
        conn.execute("DELETE FROM asset_chunks WHERE hash = %s", (on_b["hash"],))
    workflow = workflows.core("asset-b")
    workflow["3"]["inputs"]["filename_prefix"] = asset_ref(on_b)
    refused = b.put("/startjob/asset-b?GpuId=a:0", json=workflow)
    assert refused.status_code == 409, refused.text
    assert refused.json()["code"] == "asset_on_other_node"
    assert refused.json()["details"]["node_id"] == "3"
    assert a.get(f"/assets/{on_b['id']}/content").json()["code"] == "asset_on_other_node"
    assert b.get("/jobstatus/asset-b").status_code == 404
    assert b.put("/startjob/asset-b?GpuId=b:0", json=workflow).status_code == 201
    assert upload(a, PNG + b"b").status_code == 200  # the asset it was: its bytes now stored
    assert b.put("/startjob/asset-b2?GpuId=a:0", json=workflow).status_code == 201
    a.wait_status("asset-b2", "completed")


def test_the_internal_submission_takes_the_fleet_credential_only(fleet, fleet_database):
    a, b, nodes = fleet
    internal = nodes["a"].url + "/fleet/jobs/direct?GpuId=0"
    credential = credential_in(fleet_database)
    body = workflows.core("direct")
    for headers in ({"X-API-Key": API_KEY}, {"Authorization": f"Bearer {API_KEY}"},
                    {HEADER: API_KEY}, {HEADER: credential[:-1]}, {}):
        refused = requests.put(internal, json=body, headers=headers, timeout=10)
        assert refused.status_code == 401, headers
    assert prompts(nodes["a"].fake) == []
    created = requests.put(internal, json=body, headers={HEADER: credential, "X-Cylindria-Client":
                                                         "bob", "X-Cylindria-Client-Own": "1"},
                           timeout=10)
    assert created.status_code == 201 and created.json()["submitted_by"] == "bob"
    # The credential opens nothing of the public API, and the endpoint is not part of it.
    assert requests.put(nodes["a"].url + "/startjob/x", json=body, headers={HEADER: credential},
                        timeout=10).status_code == 401
    assert "/fleet/jobs" not in b.get("/openapi.json").text


def test_on_sqlite_only_this_nodes_name_pins(api, service, fakes):
    """One host (SQLite, no fleet): <its name>:<n> is GpuId=n; any other name is no node."""
    name = service.config.node
    created = api.put(f"/startjob/mine?GpuId={name}:1", json=workflows.core())
    assert created.status_code == 201 and created.json()["gpu_id"] == 1, created.text
    assert fakes[1].prompts_received() == [created.json()["prompt_id"]]
    assert api.put(f"/startjob/mine?GpuId={name}:2", json=workflows.core()).json()["details"] \
        == {"gpu_id": f"{name}:2", "number_of_gpus": 2}
    other = api.put("/startjob/theirs?GpuId=elsewhere:0", json=workflows.core())
    assert other.status_code == 400 and other.json()["details"]["node"] == "elsewhere"
    assert fakes[0].prompts_received() == []

"""Two Cylindria nodes (real processes, each with its own fake ComfyUI) on one PostgreSQL
database: a job pinned to node a's GPU is answered by node b (its status, a retry of it, a
different workflow under its id, ownership), and node b, restarted while the job is still in
a's ComfyUI, neither loads it nor judges it against its own ComfyUI."""
from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests import workflows
from tests.fleet_checks import events_streamed
from tests.helpers import API_KEY, Api, wait_for

BOB = "bob-key-0123456789"  # a key limited to its own jobs


@pytest.fixture
def fleet(start_node):
    """Nodes a and b on one fresh database, each with one fake GPU: ({name: process}, {name: fake})."""
    nodes = start_node.many(("a", "b"), "--api-key", f"{API_KEY},bob:{BOB}:own",
                            "--max-streams-per-client", "4")
    return nodes, {name: node.fake for name, node in nodes.items()}


def test_any_node_answers_for_a_job_another_node_holds(fleet):
    nodes, fakes = fleet
    a, b = Api(nodes["a"].url), Api(nodes["b"].url)
    job_id = str(uuid.uuid4())
    workflow = workflows.core("fleet")
    fakes["a"].hold = True  # the job waits in a's ComfyUI while b restarts
    created = a.put(f"/startjob/{job_id}?GpuId=0", json=workflow)
    assert created.status_code == 201, created.text
    prompt_id = created.json()["prompt_id"]
    a.wait_status(job_id, ("queued", "running"))

    seen = wait_for(lambda: (lambda j: j if j.get("status") in ("queued", "running") else None)(
        b.status(job_id)), message="node b to answer for a's job")
    assert (seen["prompt_id"], seen["gpu_id"]) == (prompt_id, 0)
    retried = b.put(f"/startjob/{job_id}?GpuId=0", json=workflow)
    assert retried.status_code == 200 and retried.json()["prompt_id"] == prompt_id, retried.text
    other = b.put(f"/startjob/{job_id}?GpuId=0", json=workflows.core("another"))
    assert other.status_code == 409 and other.json()["code"] == "job_id_conflict", other.text

    nodes["b"].stop()
    nodes["b"].start()  # loads only its own jobs: a's is not judged against b's ComfyUI
    assert b.status(job_id)["status"] in ("queued", "running")
    assert a.status(job_id)["status"] in ("queued", "running")

    with ThreadPoolExecutor(2) as pool:  # b follows a's job to its end: ?wait= and events
        waited = pool.submit(b.get, f"/jobstatus/{job_id}?wait=30", timeout=60)
        streamed = pool.submit(statuses_streamed, nodes["b"].url, job_id)
        fakes["a"].hold = False
        done = a.wait_status(job_id, "completed")
        assert waited.result().json()["status"] == "completed"
        assert streamed.result()[-1] == "completed"
    assert done["outputs"]
    there = b.wait_status(job_id, "completed")  # its row, read again within a second
    assert (there["prompt_id"], there["outputs"]) == (prompt_id, done["outputs"])
    v2 = b.get(f"/api/v2/jobs/{job_id}")
    assert v2.status_code == 200 and v2.json()["id"] == job_id, v2.text
    assert fakes["a"].prompts_received() == [prompt_id] and fakes["b"].prompts_received() == []
    for api in (Api(nodes["a"].url, key=BOB), Api(nodes["b"].url, key=BOB)):
        assert api.get(f"/jobstatus/{job_id}").status_code == 404  # another client's job
        assert api.get(f"/api/v2/jobs/{job_id}").status_code == 404
    assert "lost" not in nodes["b"].log()


def statuses_streamed(url: str, job_id: str) -> list[str]:
    """The statuses GET /jobevents/<id> sends, until its stream ends."""
    return [data["status"] for name, data in events_streamed(url, job_id) if name == "status"]


def test_a_gpuid_auto_retry_on_another_node_is_the_same_job(fleet):
    """A GpuId=auto job held in the fleet's shared queue (every GPU busy), retried on node b:
    200 with the job; another workflow under the id: 409 on b too; /fleet counts it in no
    node's own held jobs and once in the fleet's gauge; it runs once, on one node."""
    nodes, fakes = fleet
    a, b = Api(nodes["a"].url), Api(nodes["b"].url)
    for name, api in (("a", a), ("b", b)):  # both GPUs full (their depth is 2)
        fakes[name].hold = True
        for n in range(2):
            answer = api.put(f"/startjob/busy-{name}{n}?GpuId=0", json=workflows.core(f"busy{n}"))
            assert answer.status_code == 201, answer.text
    job_id = str(uuid.uuid4())
    workflow = workflows.core("fleet-auto")
    created = a.put(f"/startjob/{job_id}?GpuId=auto", json=workflow)
    assert created.status_code == 201 and created.json()["gpu_id"] is None, created.text
    retried = b.put(f"/startjob/{job_id}?GpuId=auto", json=workflow)
    assert retried.status_code == 200 and retried.json()["job_id"] == job_id, retried.text
    other = b.put(f"/startjob/{job_id}?GpuId=auto", json=workflows.core("another"))
    assert other.status_code == 409 and other.json()["code"] == "job_id_conflict", other.text
    wait_for(lambda: "cylindria_fleet_held_jobs 1.0" in b.get("/metrics").text,
             message="the shared queue counted once in the fleet's gauge")
    assert {n["node"]: n["held_jobs"] for n in b.get("/fleet").json()["nodes"]} == {"a": 0, "b": 0}
    fakes["a"].hold = fakes["b"].hold = False
    b.wait_status(job_id, "completed")
    ran = [prompt for fake in fakes.values() for prompt in fake.prompts_received()
           if prompt == a.status(job_id)["prompt_id"]]
    assert len(ran) == 1

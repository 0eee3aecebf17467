"""GpuId=auto fleet-wide (real processes, each node with its own fake ComfyUI, one PostgreSQL
database): one shared queue whichever node receives a job; every job is sent once, to one
ComfyUI; a free GPU on another node takes a job its receiver cannot run now; the same id sent
to two nodes at once is one job."""
from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg

from tests import workflows
from tests.helpers import Api, wait_for
from tests.test_reliability_load import prompts_by_job

JOBS = 90
WAIT = 60


def test_the_fleet_runs_every_auto_job_once_whichever_node_receives_it(start_node):
    nodes = [start_node(name, "--gpu-queue-depth", "1") for name in ("a", "b", "c")]
    apis = [Api(node.url) for node in nodes]
    job_ids = [f"q{n}-{uuid.uuid4().hex[:8]}" for n in range(JOBS)]

    def send(n: int) -> None:
        answer = apis[n % 3].put(f"/startjob/{job_ids[n]}?GpuId=auto",
                                 json=workflows.core(job_ids[n]))
        assert answer.status_code == 201, answer.text

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(send, range(JOBS)))
    for n, job_id in enumerate(job_ids):
        apis[(n + 1) % 3].wait_status(job_id, "completed", timeout=WAIT)

    ran = [prompts_by_job(node.fake) for node in nodes]
    for job_id in job_ids:
        prompts = [prompt for by_job in ran for prompt in by_job.get(job_id, [])]
        assert len(prompts) == 1, (job_id, [sorted(by_job) for by_job in ran])
    assert all(set(by_job) & set(job_ids) for by_job in ran), "every node's GPU ran some"
    for job_id in job_ids[::7]:  # a status is the same whichever node is asked
        seen = [wait_for(lambda api=api: (lambda j: j if j.get("outputs") else None)(
            api.status(job_id)), message="the job's status") for api in apis]
        assert all((s["status"], s["prompt_id"], s["gpu_id"], s["outputs"])
                   == (seen[0]["status"], seen[0]["prompt_id"], seen[0]["gpu_id"],
                       seen[0]["outputs"]) for s in seen), seen


def fill(node, api: Api) -> None:
    """The node's only GPU full at --gpu-queue-depth 1: its ComfyUI takes a pinned prompt and
    starts none (held)."""
    node.fake.hold = True
    busy = str(uuid.uuid4())
    assert api.put(f"/startjob/{busy}?GpuId=0", json=workflows.core(busy)).status_code == 201
    api.wait_status(busy, "queued")


def test_a_job_received_by_a_busy_node_runs_on_a_free_one(start_node, fleet_database):
    a, b = start_node("a", "--gpu-queue-depth", "1"), start_node("b", "--gpu-queue-depth", "1")
    api_a = Api(a.url)
    fill(a, api_a)
    job_id = str(uuid.uuid4())
    assert api_a.put(f"/startjob/{job_id}?GpuId=auto",
                     json=workflows.core(job_id)).status_code == 201
    Api(b.url).wait_status(job_id, "completed", timeout=WAIT)
    assert api_a.wait_status(job_id, "completed")["prompt_id"] in prompts_by_job(b.fake)[job_id]
    assert job_id not in prompts_by_job(a.fake)
    with psycopg.connect(fleet_database) as conn:
        assert conn.execute("SELECT node FROM jobs WHERE job_id = %s",
                            (job_id,)).fetchone() == ("b",)
    a.fake.hold = False


def test_one_id_sent_to_two_nodes_at_once_is_one_job(start_node):
    a, b = start_node("a"), start_node("b")
    apis = (Api(a.url), Api(b.url))
    job_ids = [f"twice{n}-{uuid.uuid4().hex[:8]}" for n in range(25)]
    for job_id in job_ids:
        barrier = threading.Barrier(2)
        workflow = workflows.core(job_id)

        def put(api: Api):
            barrier.wait(WAIT)
            return api.put(f"/startjob/{job_id}?GpuId=auto", json=workflow)

        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(put, apis))
        assert sorted(answer.status_code for answer in answers) == [200, 201], \
            [answer.text for answer in answers]
        other = apis[1].put(f"/startjob/{job_id}?GpuId=auto", json=workflows.core("another"))
        assert other.status_code == 409 and other.json()["code"] == "job_id_conflict", other.text
    for job_id in job_ids:
        apis[0].wait_status(job_id, "completed", timeout=WAIT)
    for job_id in job_ids:
        prompts = prompts_by_job(a.fake).get(job_id, []) + prompts_by_job(b.fake).get(job_id, [])
        assert len(prompts) == 1, job_id


def test_a_shared_job_cancelled_on_another_node_never_runs(start_node):
    a, b = start_node("a", "--gpu-queue-depth", "1"), start_node("b", "--gpu-queue-depth", "1")
    api_a, api_b = Api(a.url), Api(b.url)
    for node, api in ((a, api_a), (b, api_b)):  # every GPU full: the job stays in the queue
        fill(node, api)
    job_id = str(uuid.uuid4())
    assert api_a.put(f"/startjob/{job_id}?GpuId=auto",
                     json=workflows.core(job_id)).status_code == 201
    # b holds it as a job of the shared queue (cancelled there, fenced by the row), or has
    # not heard of it yet (asked of the nodes holding it): either way it never runs
    cancelled = api_b.delete(f"/job/{job_id}/")
    assert cancelled.status_code in (200, 202), cancelled.text
    api_a.wait_status(job_id, "cancelled")
    a.fake.hold = b.fake.hold = False
    assert job_id not in prompts_by_job(a.fake) and job_id not in prompts_by_job(b.fake)

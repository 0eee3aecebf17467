"""GpuId=auto fleet-wide (real processes, each node with its own fake ComfyUI, one PostgreSQL
database): one shared queue whichever node receives a job; every job is sent once, to one
ComfyUI, that of the node its row names, and no ComfyUI hears of another node's job; every
node answers the same for every job; a free GPU on another node takes a job its receiver
cannot run now; the same id sent to two nodes at once is one job."""
from __future__ import annotations

import re
import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from tests import workflows
from tests.fleet_checks import foreign_requests, job_rows, prompts_not_once, same_answers
from tests.helpers import Api
from tests.test_reliability_load import prompts_by_job

JOBS = {False: 45, True: 300}  # GpuId=auto jobs sent round-robin (short form, --soak)
TWICE = {False: 12, True: 100}  # ids sent to two nodes at the same instant
WAIT = 60
NODES = ("a", "b", "c")
COMPARED = 5  # jobs of each node whose answers every node must give alike (--soak: all)
COMPARING = 3  # jobs whose answers are compared at once (each opens an event stream per node)


def test_the_fleet_runs_every_auto_job_once_whichever_node_receives_it(start_node,
                                                                      fleet_database, soak):
    # Room for the comparisons' event streams, also one whose slot the node has not yet
    # given back as the client reads its end.
    nodes = start_node.many(NODES, "--gpu-queue-depth", "1", "--max-streams-per-client",
                            str(4 * COMPARING))
    urls = [node.url for node in nodes.values()]
    job_ids = [f"q{n}-{uuid.uuid4().hex[:8]}" for n in range(JOBS[soak])]

    def send(n: int) -> None:
        answer = Api(urls[n % 3]).put(f"/startjob/{job_ids[n]}?GpuId=auto",
                                      json=workflows.core(job_ids[n]))
        assert answer.status_code == 201, answer.text

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(send, range(len(job_ids))))
    for n, job_id in enumerate(job_ids):
        Api(urls[(n + 1) % 3]).wait_status(job_id, "completed", timeout=WAIT)

    rows = job_rows(fleet_database)
    fakes = {name: node.fake for name, node in nodes.items()}
    assert prompts_not_once(fakes, rows, job_ids) == []
    assert foreign_requests(fakes, rows) == []
    ran = Counter(rows[job_id].node for job_id in job_ids)
    assert set(ran) == set(NODES), ran  # every node's GPU ran some
    # Each node counts the jobs it took from the shared queue: all of them went through it.
    assert {name: claims(node.url) for name, node in nodes.items()} == dict(ran)
    # A job is answered alike by every node: each job (--soak), or COMPARED of each node's.
    compared = job_ids if soak else [job_id for name in NODES for job_id in
                                     [j for j in job_ids if rows[j].node == name][:COMPARED]]
    with ThreadPoolExecutor(COMPARING) as pool:
        for answers in pool.map(lambda job_id: same_answers(urls, job_id), compared):
            assert answers["status"]["status"] == "completed" and answers["file"]
            assert answers["range"][:2] == (206, f"bytes 7-70/{len(answers['file'])}")
            assert answers["range"][2] == answers["file"][7:71]
            assert answers["events"][-1] == ("status", answers["status"])
            [output] = answers["v2"][1]["outputs"]
            assert output["size_bytes"] == len(answers["file"]), output


def claims(url: str) -> int:
    """The node's count of jobs it claimed from the fleet's shared queue (/metrics)."""
    text = Api(url).get("/metrics").text
    [value] = re.findall(r'^cylindria_fleet_claims_total\{node="[^"]+"\} ([0-9.]+)$', text, re.M)
    return int(float(value))


def fill(node, api: Api) -> None:
    """The node's only GPU full at --gpu-queue-depth 1: its ComfyUI takes a pinned prompt and
    starts none (held)."""
    node.fake.hold = True
    busy = str(uuid.uuid4())
    assert api.put(f"/startjob/{busy}?GpuId=0", json=workflows.core(busy)).status_code == 201
    api.wait_status(busy, "queued")


def test_a_job_received_by_a_busy_node_runs_on_a_free_one(start_node, fleet_database):
    a, b = start_node.many(("a", "b"), "--gpu-queue-depth", "1").values()
    api_a = Api(a.url)
    fill(a, api_a)
    job_id = str(uuid.uuid4())
    assert api_a.put(f"/startjob/{job_id}?GpuId=auto",
                     json=workflows.core(job_id)).status_code == 201
    Api(b.url).wait_status(job_id, "completed", timeout=WAIT)
    assert api_a.wait_status(job_id, "completed")["prompt_id"] in prompts_by_job(b.fake)[job_id]
    assert job_id not in prompts_by_job(a.fake)
    assert job_rows(fleet_database)[job_id].node == "b"
    a.fake.hold = False


def test_one_id_sent_to_two_nodes_at_once_is_one_job(start_node, fleet_database, soak):
    """Each time: the same id and workflow sent to two nodes at the same instant is one job
    (201 and 200) and one prompt; another workflow under that id, sent to both at once, is
    409 on both; two different workflows under a new id at once: one 201, one 409, and the
    job is the 201's."""
    nodes = start_node.many(("a", "b"))
    urls = [node.url for node in nodes.values()]
    job_ids, rivals = [], {}
    for n in range(TWICE[soak]):
        job_id = f"twice{n}-{uuid.uuid4().hex[:8]}"
        job_ids.append(job_id)
        answers = at_once(urls, job_id, [workflows.core(job_id)] * 2)
        assert sorted(a.status_code for a in answers) == [200, 201], [a.text for a in answers]
        assert len({a.json()["job_id"] for a in answers}) == 1
        other = at_once(urls, job_id, [workflows.core("another")] * 2)
        assert [(a.status_code, a.json()["code"]) for a in other] == \
            [(409, "job_id_conflict")] * 2, [a.text for a in other]
        rival = f"rival{n}-{uuid.uuid4().hex[:8]}"
        prefixes = [f"{rival}-left", f"{rival}-right"]
        answers = at_once(urls, rival, [workflows.core(prefix) for prefix in prefixes])
        codes = [a.status_code for a in answers]
        assert sorted(codes) == [201, 409], [a.text for a in answers]
        rivals[rival] = prefixes[codes.index(201)]
    for job_id in job_ids + list(rivals):
        Api(urls[0]).wait_status(job_id, "completed", timeout=WAIT)
    fakes = {name: node.fake for name, node in nodes.items()}
    rows = job_rows(fleet_database)
    assert prompts_not_once(fakes, rows, job_ids + list(rivals)) == []
    ran = {prefix: job for fake in fakes.values() for prefix, job in prompts_by_job(fake).items()}
    assert [rival for rival, prefix in rivals.items() if prefix not in ran] == []  # the 201's


def at_once(urls: list[str], job_id: str, bodies: list[dict]) -> list:
    """PUT /startjob/<id>?GpuId=auto with bodies[i] to node i, all released at one instant."""
    barrier = threading.Barrier(len(urls))

    def put(index: int):
        api = Api(urls[index])
        barrier.wait(WAIT)
        return api.put(f"/startjob/{job_id}?GpuId=auto", json=bodies[index])

    with ThreadPoolExecutor(len(urls)) as pool:
        return list(pool.map(put, range(len(urls))))


def test_a_shared_job_cancelled_on_another_node_never_runs(start_node):
    a, b = start_node.many(("a", "b"), "--gpu-queue-depth", "1").values()
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

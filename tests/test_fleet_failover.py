"""Failover with real processes (each node with its own fake ComfyUI, one PostgreSQL database,
leases of 2 s): a node killed or paused past its lease has its GpuId=auto jobs run by the
others (attempt 2), its pinned jobs wait --requeue-wait for it (done if it comes back, else
lost); a node back lets go of what was taken (its prompts deleted or interrupted in its own
ComfyUI) and writes nothing more about it; every job is reported once."""
from __future__ import annotations

import json
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import psycopg

from tests import workflows
from tests.helpers import Api, wait_for
from tests.test_reliability_load import prompts_by_job
from tests.webhook_receiver import Receiver

WAIT = 60
# a's fake runs nodes 5 times as long as they say (b's, 1/20th): a's jobs are still under way
# when it dies or wakes up, however slow the machine; b's end in a second or two.
ON_A = 5.0
AUTO_SECONDS = 30  # what the GpuId=auto jobs a runs say they take: 150 s on a, 1.5 s on b


def submit(api: Api, job_id: str, gpu: str, receiver: Receiver, seconds: float) -> dict:
    """A slow job (many short steps: the fake sees an interrupt between two) to this node."""
    answer = api.put(f"/startjob/{job_id}?GpuId={gpu}&webhook={receiver.url}/{job_id}",
                     json=workflows.slow(seconds=seconds, steps=100, prefix=job_id))
    assert answer.status_code == 201, answer.text
    return answer.json()


def rows(database: str, job_ids) -> dict:
    """job id -> (status, node, attempts, prompt_id) as the database holds it."""
    with psycopg.connect(database) as conn:
        return {row[0]: row[1:] for row in conn.execute(
            "SELECT job_id, status, node, attempts, prompt_id FROM jobs WHERE job_id = ANY(%s)",
            (list(job_ids),))}


def comfy_calls(fake, path: str) -> list:
    """The bodies of the POSTs to `path` the fake received."""
    return [r.json for r in fake.requests() if r.method == "POST" and r.path == path]


def reported_once(receiver: Receiver, ends: dict) -> None:
    """Every event delivered once (no webhook id twice), and each job's end once: `ends`,
    job id -> the one end event it had."""
    received = list(receiver.received)
    ids = Counter(r.headers["webhook-id"] for r in received)
    assert [event_id for event_id, n in ids.items() if n > 1] == []
    kinds = Counter((r.path.lstrip("/"), json.loads(r.body)["type"]) for r in received)
    assert {key: n for key, n in kinds.items() if key[1] != "job.started"} == \
        {(job_id, end): 1 for job_id, end in ends.items()}


def wait_delivered(api: Api, job_id: str, status: str) -> dict:
    return wait_for(lambda: (lambda j: j if j["status"] == status and j["webhook"]["delivered"]
                             else None)(api.status(job_id)), timeout=WAIT,
                    message=f"{job_id} {status}, its events delivered")


def busy_node(start_node, receiver: Receiver, pinned_seconds: float, *flags: str):
    """Node a with a GpuId=auto job running and one queued in its ComfyUI, and a job pinned to
    its GPU 0 (of `pinned_seconds`): (a, its Api, the three job ids)."""
    a = start_node("a", *flags)
    a.fake.time_scale = ON_A
    api_a = Api(a.url)
    running, queued, pinned = (f"{kind}-{uuid.uuid4().hex[:8]}"
                               for kind in ("running", "queued", "pinned"))
    submit(api_a, running, "auto", receiver, AUTO_SECONDS)
    api_a.wait_status(running, "running")
    submit(api_a, queued, "auto", receiver, AUTO_SECONDS)
    api_a.wait_status(queued, "queued")
    submit(api_a, pinned, "0", receiver, pinned_seconds)
    return a, api_a, (running, queued, pinned)


def test_a_killed_nodes_auto_jobs_run_on_another_and_its_pinned_job_is_lost(start_node):
    receiver = Receiver().start()
    try:
        flags = ("--webhook-allow-private", "--requeue-wait", "3")
        a, api_a, (running, queued, pinned) = busy_node(start_node, receiver, 30, *flags)
        assert api_a.status(queued)["prompt_id"]  # in a's ComfyUI, not the fleet's queue
        b = start_node("b", *flags)
        api_b = Api(b.url)
        a.kill()  # no clean-up: its lease just stops being renewed

        for job_id in (running, queued):
            job = wait_delivered(api_b, job_id, "completed")
            assert job["attempts"] == 2 and job["prompt_id"] in prompts_by_job(b.fake)[job_id]
        job = wait_delivered(api_b, pinned, "lost")
        assert "node a did not come back within 3s" in job["error"]["message"]
        assert pinned not in prompts_by_job(b.fake)
    finally:
        receiver.stop()
    reported_once(receiver, {running: "job.completed", queued: "job.completed",
                             pinned: "job.lost"})


def test_a_pinned_job_waits_for_its_node_and_runs_on_when_it_comes_back(start_node,
                                                                          fleet_database):
    receiver = Receiver().start()
    try:
        flags = ("--webhook-allow-private", "--requeue-wait", "120")
        a = start_node("a", *flags)
        a.fake.time_scale = ON_A
        api_a = Api(a.url)
        auto, pinned = f"auto-{uuid.uuid4().hex[:8]}", f"pinned-{uuid.uuid4().hex[:8]}"
        submit(api_a, auto, "auto", receiver, AUTO_SECONDS)
        api_a.wait_status(auto, "running")
        first = api_a.status(auto)["prompt_id"]
        submit(api_a, pinned, "0", receiver, 0.4)  # behind the auto job in a's ComfyUI
        b = start_node("b", *flags)
        api_b = Api(b.url)
        a.kill()
        assert wait_delivered(api_b, auto, "completed")["attempts"] == 2
        assert rows(fleet_database, [pinned])[pinned][:2] == ("queued", "a")  # it waits for a

        a.start()  # back within --requeue-wait: lets go of the auto job, runs on with its own
        wait_for(lambda: comfy_calls(a.fake, "/interrupt") == [{"prompt_id": first}],
                 timeout=WAIT, message="a to interrupt the first attempt of the job taken")
        job = wait_delivered(api_b, pinned, "completed")
        assert job["attempts"] == 1 and rows(fleet_database, [pinned])[pinned][1] == "a"
        assert api_a.status(auto)["prompt_id"] in prompts_by_job(b.fake)[auto]
    finally:
        receiver.stop()
    reported_once(receiver, {auto: "job.completed", pinned: "job.completed"})


def test_a_node_paused_past_its_lease_lets_go_of_what_was_taken_and_writes_nothing_of_it(
        start_node, fleet_database):
    receiver = Receiver().start()
    a = None
    try:
        a, api_a, (running, queued, pinned) = busy_node(start_node, receiver, 0.4,
                                                        "--webhook-allow-private")
        first = {job_id: api_a.status(job_id)["prompt_id"] for job_id in (running, queued)}
        b = start_node("b", "--webhook-allow-private")
        api_b = Api(b.url)

        a.pause()  # its lease runs out while its ComfyUI runs on
        for job_id in (running, queued):
            assert wait_delivered(api_b, job_id, "completed")["attempts"] == 2
        taken = rows(fleet_database, first)
        assert all(row[:2] == ("completed", "b") for row in taken.values()), taken
        a.resume()

        wait_for(lambda: comfy_calls(a.fake, "/interrupt") == [{"prompt_id": first[running]}]
                 and {"delete": [first[queued]]} in comfy_calls(a.fake, "/queue"),
                 timeout=WAIT, message="a to take the prompts of the jobs taken out of its ComfyUI")
        job = wait_delivered(api_a, pinned, "completed")  # a's own, run on as before
        assert job["attempts"] == 1
        wait_for(lambda: api_a.status(running)["status"] == "completed", timeout=WAIT,
                 message="a to answer the job taken as the fleet ran it")
        assert rows(fleet_database, first) == taken  # a wrote nothing about them
        for job_id in first:
            assert api_a.status(job_id)["prompt_id"] == taken[job_id][3]
    finally:
        if a is not None and a.proc.poll() is None:
            a.resume()
        receiver.stop()
    reported_once(receiver, {running: "job.completed", queued: "job.completed",
                             pinned: "job.completed"})


def test_a_submission_its_node_was_paused_in_answers_the_job_the_fleet_holds(start_node):
    """Node b freezes (SIGSTOP) while its POST of a pinned job to its ComfyUI is under way;
    a takes the job over (lost: --requeue-wait 0.1); b, woken, learns from the write of
    ComfyUI's answer that the job is no longer its own, and answers the submission with the
    job as the fleet holds it (seen in tests/test_reliability_fleet --soak: a 500)."""
    a, b = start_node.many(("a", "b"), "--requeue-wait", "0.1").values()
    b.fake.http_delay = 1.0  # b's POST is under way for a second: b freezes within it
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(Api(b.url).put, "/startjob/midway?GpuId=0",
                             json=workflows.core("midway"), timeout=WAIT)
        wait_for(lambda: [r for r in b.fake.requests() if r.path == "/prompt"],
                 message="b's POST to reach its ComfyUI")
        b.pause()
        try:
            Api(a.url).wait_status("midway", "lost", timeout=WAIT)
        finally:
            b.resume()
        answer = answer.result()
    assert answer.status_code == 201, answer.text
    assert answer.json()["status"] == "lost"
    assert "unhandled error" not in b.log()

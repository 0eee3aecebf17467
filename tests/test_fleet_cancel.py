"""Cancel and the job list from any node (real processes, each with its own fake ComfyUI, on one
PostgreSQL database): a job of node a cancelled on node b is cancelled by a in its own ComfyUI
(interrupted running, deleted from the queue waiting), b answering as a local cancel does; a
cancel asked while a's LISTEN connection was gone is done once a listens again; /jobs on b
lists every node's jobs with the filters and cursor of one host."""
from __future__ import annotations

import uuid
from contextlib import contextmanager

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cylindria.storage.postgres import LISTENER_NAME
from tests import workflows
from tests.helpers import API_KEY, Api, wait_for

BOB = "bob-key-0123456789"  # a key limited to its own jobs


@pytest.fixture
def fleet(start_node):
    """Nodes a and b on one fresh database, each with one fake GPU: {name: process}."""
    return start_node.many(("a", "b"), "--api-key", f"{API_KEY},bob:{BOB}:own")


def comfy_calls(fake, path: str) -> list:
    """The bodies of the POSTs to `path` the fake received."""
    return [r.json for r in fake.requests() if r.method == "POST" and r.path == path]


def test_a_running_job_of_node_a_cancelled_on_node_b_is_interrupted_by_a(fleet):
    a, b = Api(fleet["a"].url), Api(fleet["b"].url)
    job_id = str(uuid.uuid4())
    prompt_id = a.put(f"/startjob/{job_id}?GpuId=0", json=workflows.slow(seconds=60)).json()["prompt_id"]
    a.wait_status(job_id, "running")
    assert Api(fleet["b"].url, key=BOB).delete(f"/job/{job_id}").status_code == 404  # not bob's

    answer = b.delete(f"/job/{job_id}")
    assert answer.status_code in (200, 202), answer.text  # as a local cancel: under way, or done
    expected = "running" if answer.status_code == 202 else "cancelled"
    assert (answer.json()["status"], answer.json()["cancel_requested"]) == (expected, True)
    assert a.wait_status(job_id, "cancelled")["cancel_requested"] is True
    assert b.wait_status(job_id, "cancelled")["prompt_id"] == prompt_id
    assert comfy_calls(fleet["a"].fake, "/interrupt") == [{"prompt_id": prompt_id}]
    assert comfy_calls(fleet["b"].fake, "/interrupt") == [] and fleet["b"].fake.prompts_received() == []

    again = b.delete(f"/job/{job_id}")  # ended: as a local cancel of an ended job
    assert again.status_code == 409 and again.json()["details"] == {"status": "cancelled"}
    v2 = b.request("POST", f"/api/v2/jobs/{job_id}/cancel")
    assert v2.status_code == 200 and v2.json()["status"] == "canceled", v2.text


def test_a_waiting_job_of_node_a_cancelled_on_node_b_leaves_its_queue(fleet):
    a, b = Api(fleet["a"].url), Api(fleet["b"].url)
    fleet["a"].fake.hold = True  # prompts wait in a's ComfyUI's queue
    job_id = str(uuid.uuid4())
    prompt_id = a.put(f"/startjob/{job_id}?GpuId=0", json=workflows.core("waiting")).json()["prompt_id"]
    a.wait_status(job_id, "queued")
    assert Api(fleet["b"].url, key=BOB).request("POST", f"/api/v2/jobs/{job_id}/cancel").status_code == 404

    answer = b.request("POST", f"/api/v2/jobs/{job_id}/cancel")  # v2's cancel: the job as it stands
    assert answer.status_code == 200 and answer.json()["status"] in ("queued", "canceled"), answer.text
    assert b.wait_status(job_id, "cancelled")["cancel_requested"] is True
    assert a.status(job_id)["status"] == "cancelled"
    assert comfy_calls(fleet["a"].fake, "/queue") == [{"delete": [prompt_id]}]
    assert comfy_calls(fleet["a"].fake, "/interrupt") == []
    assert comfy_calls(fleet["b"].fake, "/queue") == [] and fleet["b"].fake.prompts_received() == []


def test_a_cancel_asked_while_the_owner_was_not_listening_is_done_when_it_listens_again(
        fleet, fleet_database):
    a, b = Api(fleet["a"].url), Api(fleet["b"].url)
    job_id = str(uuid.uuid4())
    prompt_id = a.put(f"/startjob/{job_id}?GpuId=0", json=workflows.slow(seconds=60)).json()["prompt_id"]
    a.wait_status(job_id, "running")
    listener = LISTENER_NAME.format(node="a")
    wait_for(lambda: sessions(fleet_database, listener), message="a to listen")

    allow_connections(fleet_database, False)  # a cannot listen again until let
    try:
        assert terminate(fleet_database, listener) == 1
        answer = b.delete(f"/job/{job_id}")  # the NOTIFY goes to no one
        assert answer.status_code == 202 and answer.json()["cancel_requested"] is True, answer.text
        assert a.status(job_id)["status"] == "running"
    finally:
        allow_connections(fleet_database, True)
    assert a.wait_status(job_id, "cancelled")["cancel_requested"] is True
    assert comfy_calls(fleet["a"].fake, "/interrupt") == [{"prompt_id": prompt_id}]
    wait_for(lambda: f"job {job_id}: cancel asked while no notice was heard" in fleet["a"].log(),
             message="a to say the re-check found it")


def sessions(url: str, application_name: str) -> int:
    """How many sessions of this name the database has."""
    with admin(url) as (conn, name):
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                            "AND datname = %s", (application_name, name)).fetchone()[0]


def terminate(url: str, application_name: str) -> int:
    """End the database's sessions of this name (what a database restart does to them); how many."""
    with admin(url) as (conn, name):
        return sum(flag for (flag,) in conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s "
            "AND datname = %s", (application_name, name)).fetchall())


def allow_connections(url: str, allowed: bool) -> None:
    """Let new sessions into the database, or refuse them all (open ones go on)."""
    with admin(url) as (conn, name):
        conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
            sql.Identifier(name), sql.SQL("true" if allowed else "false")))


@contextmanager
def admin(url: str):
    """(a connection to the cluster's `postgres` database, the name of the one in `url`)."""
    with psycopg.connect(make_conninfo(url, dbname="postgres"), autocommit=True) as conn:
        yield conn, conninfo_to_dict(url)["dbname"]


def test_the_job_list_on_any_node_is_the_fleets(fleet):
    a, b = Api(fleet["a"].url), Api(fleet["b"].url)
    bob = Api(fleet["b"].url, key=BOB)
    submitted = []
    for n, (api, key) in enumerate([(a, API_KEY), (b, API_KEY), (a, BOB), (b, API_KEY)]):
        job_id = f"list-{n}-{uuid.uuid4()}"
        client = api if key == API_KEY else Api(api.base_url, key=BOB)
        assert client.put(f"/startjob/{job_id}?GpuId=0", json=workflows.core(f"l{n}")).status_code == 201
        submitted.append(job_id)
    for job_id in submitted:
        b.wait_status(job_id, "completed")
    fleet["a"].fake.hold = True
    waiting = "list-waiting"
    a.put(f"/startjob/{waiting}?GpuId=0", json=workflows.core("w"))
    b.wait_status(waiting, "queued")
    newest_first = [waiting] + submitted[::-1]

    for api in (a, b):
        listed = api.get("/jobs").json()
        assert [job["job_id"] for job in listed["jobs"]] == newest_first
        assert listed["next_before"] is None
    paged, cursor = [], None
    while True:  # one at a time across both nodes' jobs
        page = b.get("/jobs?limit=2" + (f"&before={cursor}" if cursor else "")).json()
        paged += [job["job_id"] for job in page["jobs"]]
        cursor = page["next_before"]
        if cursor is None:
            break
    assert paged == newest_first
    assert [job["job_id"] for job in b.get("/jobs?status=queued").json()["jobs"]] == [waiting]
    assert [job["job_id"] for job in b.get("/jobs?status=completed&gpu=0").json()["jobs"]] == \
        submitted[::-1]
    assert [job["job_id"] for job in bob.get("/jobs").json()["jobs"]] == [submitted[2]]
    assert bob.get("/jobs?submitted_by=someone").json()["jobs"] == []
    assert [job["id"] for job in bob.get("/api/v2/jobs").json()["jobs"]] == [submitted[2]]
    v2 = b.get("/api/v2/jobs?limit=3").json()
    assert [job["id"] for job in v2["jobs"]] == newest_first[:3] and v2["next_cursor"]
    fleet["a"].fake.hold = False


def test_a_cancel_asked_while_the_owner_was_stopped_is_done_at_its_start(fleet):
    a, b = Api(fleet["a"].url), Api(fleet["b"].url)
    job_id = str(uuid.uuid4())
    prompt_id = a.put(f"/startjob/{job_id}?GpuId=0", json=workflows.slow(seconds=60)).json()["prompt_id"]
    a.wait_status(job_id, "running")
    fleet["a"].stop()  # the prompt runs on in a's ComfyUI
    answer = b.delete(f"/job/{job_id}")
    assert answer.status_code == 202 and answer.json()["cancel_requested"] is True, answer.text
    fleet["a"].start()  # loads the job with its row's flag: still to be acted on
    assert a.wait_status(job_id, "cancelled")["cancel_requested"] is True
    assert comfy_calls(fleet["a"].fake, "/interrupt") == [{"prompt_id": prompt_id}]

"""An own key sees nothing of other clients: /metrics (every key's name and counts) is 404 for
it, and /serverstatus counts only its own prompts in a GPU's queue."""
from __future__ import annotations

from tests import workflows
from tests.helpers import Api, wait_for
from tests.test_own_key_isolation import ALICE, BOB, named  # noqa: F401 (a fixture)


def test_metrics_are_not_found_for_an_own_key(named):
    alice, bob = Api(named.url, key=ALICE), Api(named.url, key=BOB)
    assert alice.get("/jobstatus/x").status_code == 404  # a request: her name is in the counts
    shown = alice.get("/metrics")
    assert shown.status_code == 200 and 'client="alice"' in shown.text
    hidden, unknown = bob.get("/metrics"), bob.get("/no-such-endpoint")
    assert hidden.status_code == 404 and "alice" not in hidden.text
    assert hidden.json() == unknown.json()  # answered as an endpoint that does not exist


def test_serverstatus_counts_only_an_own_keys_prompts(named):
    alice, bob = Api(named.url, key=ALICE), Api(named.url, key=BOB)
    for job_id in ("a-runs", "a-waits"):
        workflow = workflows.slow(seconds=2000, prefix=job_id)
        assert alice.put(f"/startjob/{job_id}?GpuId=0", json=workflow).status_code == 201
    assert bob.put("/startjob/b-waits?GpuId=0",
                   json=workflows.slow(seconds=2000, prefix="b-waits")).status_code == 201
    alice.wait_status("a-runs", "running")

    def queues(api: Api, query: str) -> list:
        answer = api.get(f"/serverstatus?{query}").json()
        return [gpu["queue"] for gpu in answer.get("gpus", [answer])]

    wait_for(lambda: queues(alice, "GpuId=0") == [{"running": 1, "pending": 2}],
             message="GPU 0 to hold the three prompts")
    assert queues(bob, "GpuId=0") == [{"running": 0, "pending": 1}]
    assert queues(bob, "GpuId=all") == [{"running": 0, "pending": 1},
                                        {"running": 0, "pending": 0}]
    assert bob.get("/serverstatus?GpuId=0").json()["running_job_id"] is None
    for job_id in ("b-waits", "a-waits", "a-runs"):
        (bob if job_id.startswith("b") else alice).delete(f"/job/{job_id}")

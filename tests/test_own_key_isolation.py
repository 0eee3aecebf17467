"""A key limited to its own jobs (`name:key:own`) is never told the id of another client's
job: not where a GPU's status names the job running on it, nor where an asset another
client's job needs cannot be deleted."""
from __future__ import annotations

import pytest

from cylindria.service.server import Service
from tests import workflows
from tests.conftest import make_config
from tests.fake_comfy.png import output_png
from tests.helpers import Api, wait_for
from tests.test_assets import asset_ref, upload

ALICE, BOB = "alice-key-0123456", "bob-key-0123456789"


@pytest.fixture
def named(fakes, tmp_path):
    with Service(make_config(fakes, tmp_path, api_keys=(f"alice:{ALICE}", f"bob:{BOB}:own"))) \
            as service:
        yield service


def test_an_own_key_is_not_told_the_ids_of_others_jobs(named):
    alice, bob = Api(named.url, key=ALICE), Api(named.url, key=BOB)
    asset = upload(bob, output_png("in.png")).json()  # Bob's own; Alice's key sees every asset
    workflow = workflows.slow(seconds=2000, prefix="theirs")
    workflow["9"] = {"class_type": "LoadImage", "inputs": {"image": asset_ref(asset)}}
    assert alice.put("/startjob/theirs?GpuId=0", json=workflow).status_code == 201
    alice.wait_status("theirs", "running")

    def running(api: Api, query: str) -> list:
        answer = api.get(f"/serverstatus?{query}").json()
        return [gpu["running_job_id"] for gpu in answer.get("gpus", [answer])]

    wait_for(lambda: running(alice, "GpuId=0") == ["theirs"], message="GPU 0 to run it")
    assert running(bob, "GpuId=0") == [None]
    assert running(bob, "GpuId=all") == [None, None]
    assert running(alice, "GpuId=all") == ["theirs", None]
    for api, shown in ((bob, []), (alice, ["theirs"])):
        refused = api.delete(f"/assets/{asset['id']}")
        assert refused.status_code == 409 and refused.json()["code"] == "asset_in_use"
        assert refused.json()["details"]["job_ids"] == shown
    assert alice.delete("/job/theirs").status_code in (200, 202)

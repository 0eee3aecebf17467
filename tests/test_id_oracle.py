"""No job-id oracle, no squatting: a submission's own faults (a missing asset, a file it may
not read, a node class no GPU has) are answered the same whether or not another own client's
job holds the id; a v2 job id cannot be derived from an Idempotency-Key by another client."""
from __future__ import annotations

import uuid

import pytest

from cylindria.service.server import Service
from tests import workflows
from tests.conftest import make_config
from tests.helpers import Api

ALICE, BOB = "alice-key-0123456", "bob-key-0123456789"
MISSING_ASSET = {"__type": "core/ASSET", "info": {"id": "no-such-asset"}}
# The namespace 30f2a62 derived v2 job ids with (uuid5 of "<client>\0<key>"): public source.
OLD_NAMESPACE = uuid.UUID("6c1d3a1e-4f0b-5a51-9c8e-3f2b7d0c9a11")


@pytest.fixture
def shared(fakes, tmp_path):
    config = make_config(fakes, tmp_path, api_keys=(f"alice:{ALICE}:own", f"bob:{BOB}:own"))
    with Service(config) as service:
        yield service


def faulty() -> dict:
    """Workflows with a fault of their own, by the fault."""
    unknown = workflows.core("unknown")
    unknown["2"]["class_type"] = "NoSuchNodeClass"
    return {"missing asset": workflows.load_image(MISSING_ASSET),
            "file not allowed": workflows.load_image("theirs_00001_.png [output]"),
            "unknown class": unknown}


@pytest.mark.parametrize("gpu", ["0", "auto"])
def test_a_faulty_submission_is_answered_the_same_whether_another_client_owns_the_id(shared, gpu):
    alice, bob = Api(shared.url, key=ALICE), Api(shared.url, key=BOB)
    assert alice.put("/startjob/taken?GpuId=0", json=workflows.core("hers")).status_code == 201
    for fault, workflow in faulty().items():
        if fault == "unknown class" and gpu == "0":
            continue  # a pinned job's classes are ComfyUI's to check
        on_taken = bob.put(f"/startjob/taken?GpuId={gpu}", json=workflow)
        on_free = bob.put(f"/startjob/free?GpuId={gpu}", json=workflow)
        assert on_taken.status_code == on_free.status_code == 400, (fault, on_taken.text)
        assert on_taken.json() == on_free.json(), fault
    assert bob.get("/jobs").json()["jobs"] == [] and bob.get("/jobstatus/free").status_code == 404
    assert alice.status("taken")["submitted_by"] == "alice"
    # Its owner, who sees the job, is answered with it: another workflow under its id.
    refused = alice.put("/startjob/taken?GpuId=0", json=faulty()["missing asset"])
    assert refused.status_code == 409 and refused.json()["code"] == "job_id_conflict"


def v2_submit(api: Api, key: str, prefix: str):
    return api.request("POST", "/api/v2/jobs", json={"workflow": workflows.core(prefix)},
                       headers={"Idempotency-Key": key})


def test_another_client_cannot_take_the_id_of_a_v2_idempotency_key(fakes, tmp_path):
    config = make_config(fakes, tmp_path, api_keys=(f"alice:{ALICE}:own", f"bob:{BOB}:own"))
    with Service(config) as service:
        alice, bob = Api(service.url, key=ALICE), Api(service.url, key=BOB)
        # Bob takes the id a predictable derivation gives for Alice's key, and the key too.
        guessed = str(uuid.uuid5(OLD_NAMESPACE, "alice\0order-1"))
        squat = bob.put(f"/startjob/{guessed}?GpuId=auto", json=workflows.core("squat"))
        assert squat.status_code == 201
        assert v2_submit(bob, "order-1", "bobs").status_code == 201
        first = v2_submit(alice, "order-1", "alices")
        assert first.status_code == 201, first.text
        job_id = first.json()["id"]
        assert job_id != guessed and uuid.UUID(job_id)
        replay = v2_submit(alice, "order-1", "alices")
        assert replay.status_code == 201 and replay.headers["Idempotency-Replayed"] == "true"
        assert replay.json()["id"] == job_id
        assert v2_submit(alice, "order-1", "other").status_code == 422  # her key, another body
    # The derivation's secret is the installation's: the same key names the same job after
    # a restart.
    with Service(config) as again:
        replay = v2_submit(Api(again.url, key=ALICE), "order-1", "alices")
        assert replay.status_code == 201 and replay.json()["id"] == job_id


def test_a_key_used_before_ids_were_secret_still_names_its_job(fakes, tmp_path):
    config = make_config(fakes, tmp_path, api_keys=(f"alice:{ALICE}:own", f"bob:{BOB}:own"))
    with Service(config) as service:
        alice = Api(service.url, key=ALICE)
        legacy = str(uuid.uuid5(OLD_NAMESPACE, "alice\0before"))  # as an older version made it
        assert alice.put(f"/startjob/{legacy}?GpuId=auto",
                         json=workflows.core("before")).status_code == 201
        replay = v2_submit(alice, "before", "before")
        assert replay.status_code == 201 and replay.json()["id"] == legacy
        assert replay.headers["Idempotency-Replayed"] == "true"

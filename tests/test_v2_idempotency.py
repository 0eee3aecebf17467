"""Comfy API v2's Idempotency-Key: a retry is the same job, never a second run, and a key is
its client's own (another client's same key is another job)."""
from __future__ import annotations

import pytest

from cylindria.service.server import Service
from tests import workflows
from tests.conftest import make_config
from tests.helpers import Api
from cylindria.web.auth import unnamed

ALICE, PLAIN = "alice-key-0123456", "plain-key-000000"


@pytest.fixture
def named(fakes, tmp_path):
    with Service(make_config(fakes, tmp_path, api_keys=(f"alice:{ALICE}", PLAIN))) as service:
        yield service


def test_an_idempotency_key_is_the_clients_own(named, fakes):
    """Two clients choosing the same Idempotency-Key submit two jobs (neither is the other's
    replay); each one's retry is its own job again."""
    body = {"workflow": workflows.core("same-key")}
    jobs = {}
    for key in (ALICE, PLAIN):
        client = Api(named.url, key=key)
        first = client.request("POST", "/api/v2/jobs", json=body,
                               headers={"Idempotency-Key": "order-42"})
        again = client.request("POST", "/api/v2/jobs", json=body,
                               headers={"Idempotency-Key": "order-42"})
        assert (first.status_code, again.status_code) == (201, 201)
        assert "Idempotency-Replayed" not in first.headers
        assert again.headers["Idempotency-Replayed"] == "true"
        assert again.json()["id"] == first.json()["id"]
        jobs[key] = first.json()["id"]
        client.wait_status(jobs[key], "completed")
    assert jobs[ALICE] != jobs[PLAIN]
    assert Api(named.url, key=PLAIN).status(jobs[PLAIN])["submitted_by"] == unnamed(PLAIN)
    assert sum(len(fake.prompts_received()) for fake in fakes) == 2

"""Named keys: the name (never the key) in the access log, in /metrics and in each job's
`submitted_by`; a key limited to its own jobs sees and cancels only those."""
from __future__ import annotations

import logging

import pytest

from cylindria.config.options import ConfigError
from cylindria.service.server import Service
from tests import workflows
from tests.conftest import make_config
from tests.helpers import Api, wait_for
from cylindria.web.auth import BadKeyEntry, resolve_keys, unnamed

ALICE, BOB, PLAIN = "alice-key-0123456", "bob-key-0123456789", "plain-key-000000"


@pytest.fixture
def named(fakes, tmp_path):
    config = make_config(fakes, tmp_path, api_keys=(f"alice:{ALICE}", f"bob:{BOB}:own", PLAIN))
    with Service(config) as service:
        yield service


def test_jobs_carry_the_submitting_keys_name_and_can_be_listed_by_it(named):
    alice, plain = Api(named.url, key=ALICE), Api(named.url, key=PLAIN)
    alice.put("/startjob/a1", json=workflows.core("a1"))
    plain.put("/startjob/p1?GpuId=auto", json=workflows.core("p1"))
    assert alice.status("a1")["submitted_by"] == "alice"
    assert alice.status("p1")["submitted_by"] == unnamed(PLAIN)
    listed = alice.get("/jobs?submitted_by=alice").json()["jobs"]
    assert [job["job_id"] for job in listed] == ["a1"]
    v2 = alice.request("POST", "/api/v2/jobs", json={"workflow": workflows.core("a2")}).json()
    assert alice.status(v2["id"])["submitted_by"] == "alice"


def test_a_key_limited_to_its_own_jobs_sees_and_cancels_only_those(named):
    alice, bob = Api(named.url, key=ALICE), Api(named.url, key=BOB)
    alice.put("/startjob/theirs?GpuId=1", json=workflows.slow(seconds=2000, prefix="theirs"))
    bob.put("/startjob/mine", json=workflows.core("mine"))
    bob.wait_status("mine", "completed")
    assert alice.status("mine")["submitted_by"] == "bob"  # alice is not limited
    for call in (lambda: bob.get("/jobstatus/theirs"), lambda: bob.delete("/job/theirs"),
                 lambda: bob.get("/jobresult/theirs"), lambda: bob.get("/jobevents/theirs"),
                 lambda: bob.get("/api/v2/jobs/theirs"),
                 lambda: bob.request("POST", "/api/v2/jobs/theirs/cancel")):
        assert call().status_code == 404
    assert [j["job_id"] for j in bob.get("/jobs").json()["jobs"]] == ["mine"]
    assert bob.get("/jobs?submitted_by=alice").json()["jobs"] == []
    assert [j["id"] for j in bob.get("/api/v2/jobs").json()["jobs"]] == ["mine"]
    retry = bob.put("/startjob/theirs?GpuId=1", json=workflows.slow(seconds=2000, prefix="theirs"))
    assert retry.status_code == 409 and retry.json().get("details") is None  # taken, nothing more
    assert alice.status("theirs")["status"] in ("queued", "running")  # untouched by bob
    assert alice.delete("/job/theirs").status_code in (200, 202)


def test_names_reach_the_log_and_metrics_and_keys_never(named, caplog):
    caplog.set_level(logging.INFO)
    Api(named.url, key=ALICE).put("/startjob/logged", json=workflows.core("logged"))
    Api(named.url, key=BOB).delete("/job/nope")
    wait_for(lambda: "alice" in caplog.text and " bob" in caplog.text)
    assert ALICE not in caplog.text and BOB not in caplog.text
    metrics = Api(named.url, key=ALICE).get("/metrics").text
    assert 'cylindria_client_requests_total{client="alice"}' in metrics
    assert 'cylindria_client_requests_total{client="bob"} 1.0' in metrics
    assert ALICE not in metrics and BOB not in metrics


def test_the_key_file_holds_named_keys(tmp_path):
    (tmp_path / "api_key").write_text(f"alice:{ALICE}\nbob:{BOB}:own\n{PLAIN}\n")
    setup = resolve_keys((), False, tmp_path)
    assert setup.keys == (ALICE, BOB, PLAIN)
    assert [(c.name, c.own) for c in setup.clients] == [
        ("alice", False), ("bob", True), (unnamed(PLAIN), False)]


@pytest.mark.parametrize("entries", [
    ("alice:short",), ("al ice:" + ALICE,), (f"a:{ALICE}:mine",), (f"a:{ALICE}", f"a:{BOB}")])
def test_a_bad_key_entry_stops_the_start_without_showing_the_key(fakes, tmp_path, entries):
    with pytest.raises(BadKeyEntry) as refused:
        resolve_keys(entries, False, tmp_path)
    assert ALICE not in str(refused.value) and BOB not in str(refused.value)
    with pytest.raises(ConfigError):
        Service(make_config(fakes, tmp_path, api_keys=entries))

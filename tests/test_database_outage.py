"""PostgreSQL stopped under a running Cylindria, then started again: requests that need it are
503 database_unavailable with Retry-After (never a 500), /ready is 503, every thread lives on,
and once it is back the client's retry goes through and every job acknowledged before is
tracked to its end."""
from __future__ import annotations

import logging

import pytest

from cylindria.service.server import Service
from tests import workflows
from tests.conftest import make_config
from tests.helpers import Api, wait_for
from tests.postgres import PostgresCluster

WAIT = 60.0  # seconds the pool may take to reconnect (its backoff) before the test fails


@pytest.fixture
def own_postgres():
    """A cluster of the test's own: the session's is never stopped under other tests."""
    with PostgresCluster() as cluster:
        yield cluster


def threads(service) -> dict:
    """Every long-lived thread of the core, by name."""
    context = service.context
    named = {"dispatcher": context.dispatcher._thread, "poller": context.tracker.poller._thread,
             "retention": context.retention._thread, "webhooks": context.webhooks.sender._thread,
             "lease": context.membership._thread}
    named.update({f"listener{n}": listener._thread
                  for n, listener in enumerate(context.tracker.listeners)})
    return named


def dead(service) -> list[str]:
    return [name for name, thread in threads(service).items() if not thread.is_alive()]


def refused_for_the_database(answer, v2: bool = False) -> bool:
    """503 database_unavailable with Retry-After (in the v2 envelope on /api/v2)."""
    code = answer.json()["error"]["code"] if v2 else answer.json()["code"]
    return answer.status_code == 503 and code == "database_unavailable" \
        and int(answer.headers["Retry-After"]) > 0


def lease_failures(caplog) -> list:
    return [r for r in caplog.records if "lease not renewed" in r.getMessage()]


def test_postgresql_stopped_then_started_loses_nothing(own_postgres, fakes, tmp_path, caplog):
    url = own_postgres.create_database("outage")
    config = make_config(fakes, tmp_path, database=url, retention=3600.0)
    caplog.set_level(logging.WARNING)
    with Service(config) as service:
        api = Api(service.url)
        fakes[1].hold = True  # GPU 1's job waits in its ComfyUI through the outage
        assert api.put("/startjob/pinned?GpuId=1", json=workflows.core("pinned")).status_code == 201
        assert api.put("/startjob/auto?GpuId=auto", json=workflows.core("auto")).status_code == 201
        api.wait_status("auto", "completed")

        own_postgres.stop()
        during = api.put("/startjob/during?GpuId=0", json=workflows.core("during"))
        assert refused_for_the_database(during), during.text
        held = api.put("/startjob/during-auto?GpuId=auto", json=workflows.core("during-auto"))
        assert refused_for_the_database(held), held.text
        v2 = api.request("POST", "/api/v2/jobs", json={"workflow": workflows.core("v2")})
        assert refused_for_the_database(v2, v2=True), v2.text
        ready = api.get("/ready")
        assert ready.status_code == 503 and ready.json()["database"] == "unavailable"
        assert api.status("pinned")["status"] in ("queued", "running")  # read from memory
        # Nothing was accepted here, but another node of the fleet may have: not a 404.
        assert refused_for_the_database(api.get("/jobstatus/during"))
        assert refused_for_the_database(api.get("/fleet"))
        wait_for(lambda: lease_failures(caplog), message="the lease's failed renewal logged")
        fakes[1].hold = False  # it runs and ends while the database is down
        wait_for(lambda: api.get("/metrics").status_code == 200, message="a scrape")
        assert dead(service) == []

        own_postgres.start()
        retried = wait_for(lambda: (lambda a: a if a.status_code == 201 else None)(
            api.put("/startjob/during?GpuId=0", json=workflows.core("during"))),
            timeout=WAIT, interval=0.2, message="the client's retry to be accepted")
        assert retried.json()["job_id"] == "during"
        for job_id in ("pinned", "auto", "during"):
            api.wait_status(job_id, "completed", timeout=WAIT)
        wait_for(lambda: api.get("/ready").status_code == 200, timeout=WAIT, message="/ready")
        wait_for(lambda: "lease renewed again" in caplog.text, message="the lease renewed")
        assert [node["live"] for node in api.get("/fleet").json()["nodes"]] == [True]
        assert dead(service) == []
    assert "unhandled error while serving a request" not in caplog.text
    assert len(lease_failures(caplog)) == 1  # logged once, however many ticks met the outage
    outages = [r for r in caplog.records if r.name == "cylindria.storage.interface"
               and "unavailable" in r.getMessage()]
    assert len(outages) == 1  # the outage logged once, not at every call that met it

    with Service(config) as service:  # what was acknowledged is in the database
        api = Api(service.url)
        for job_id in ("pinned", "auto", "during"):
            assert api.status(job_id)["status"] == "completed"

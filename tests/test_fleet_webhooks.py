"""Three Cylindria nodes (real processes) on one PostgreSQL database, every node's webhook
sender reading the whole outbox: each event is claimed in the database before its try, so a
run without faults delivers every event exactly once, under the id it was written with."""
from __future__ import annotations

import json
from collections import Counter

from tests import workflows
from tests.helpers import Api, wait_for
from tests.webhook_receiver import Receiver

NODES = ("a", "b", "c")
JOBS_PER_NODE = 17  # ~50 jobs, two events each


def test_every_event_is_delivered_once_by_one_node_of_the_fleet(start_node):
    receiver = Receiver(delay=0.2).start()  # slow: other nodes read the outbox mid-try
    try:
        apis = {name: Api(start_node(name, "--webhook-allow-private").url) for name in NODES}
        jobs = {f"{name}-{n}": api for name, api in apis.items() for n in range(JOBS_PER_NODE)}
        for job_id, api in jobs.items():  # pinned to each node's own GPU 0
            created = api.put(f"/startjob/{job_id}?GpuId=0&webhook={receiver.url}/{job_id}",
                              json=workflows.core(job_id))
            assert created.status_code == 201, created.text
        for job_id, api in jobs.items():
            # Delivered: recorded in the outbox, so no node can claim the events any more.
            wait_for(lambda: (lambda j: j["status"] == "completed" and j["webhook"]["delivered"])(
                api.status(job_id)), timeout=30, message=f"{job_id}'s events delivered")
    finally:
        receiver.stop()
    received = list(receiver.received)
    ids = Counter(r.headers["webhook-id"] for r in received)
    assert [event_id for event_id, n in ids.items() if n > 1] == []  # none sent twice
    kinds = Counter((r.path.lstrip("/"), json.loads(r.body)["type"]) for r in received)
    assert kinds == Counter({(job_id, kind): 1 for job_id in jobs
                             for kind in ("job.started", "job.completed")})
    for r in received:  # the body names the job it was sent for (any node may send any)
        assert json.loads(r.body)["data"]["job_id"] == r.path.lstrip("/")

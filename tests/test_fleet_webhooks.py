"""Three Cylindria nodes (real processes) on one PostgreSQL database, every node's webhook
sender reading the whole outbox: each event is claimed in the database before its try, so
every event is delivered, never by two nodes at once, under the id it was written with; a run
without faults delivers each exactly once. `--soak`: 201 jobs (67 a node), and every event's
first try fails (503), so each is tried again, by whichever node claims it then."""
from __future__ import annotations

import json
from collections import Counter

from tests import workflows
from tests.helpers import Api, wait_for
from tests.webhook_receiver import Receiver

NODES = ("a", "b", "c")
JOBS_PER_NODE = {False: 10, True: 67}  # two events each (short form, --soak)
FAILURES = {False: (), True: (503,)}  # answered to each event's first tries
WAIT = {False: 30, True: 180}


def test_every_event_is_delivered_by_one_node_at_a_time(start_node, soak):
    failures = FAILURES[soak]
    receiver = Receiver(delay=0.2, failures=failures).start()  # slow: other nodes read the
    try:                                                          # outbox mid-try
        apis = {name: Api(node.url) for name, node in
                start_node.many(NODES, "--webhook-allow-private").items()}
        jobs = {f"{name}-{n}": api for name, api in apis.items()
                for n in range(JOBS_PER_NODE[soak])}
        for job_id, api in jobs.items():  # pinned to each node's own GPU 0
            created = api.put(f"/startjob/{job_id}?GpuId=0&webhook={receiver.url}/{job_id}",
                              json=workflows.core(job_id))
            assert created.status_code == 201, created.text
        for job_id, api in jobs.items():
            # Delivered: recorded in the outbox, so no node can claim the events any more.
            wait_for(lambda: (lambda j: j["status"] == "completed" and j["webhook"]["delivered"])(
                api.status(job_id)), timeout=WAIT[soak], message=f"{job_id}'s events delivered")
    finally:
        receiver.stop()
    received = list(receiver.received)
    tries = len(failures) + 1  # the failed ones, then the delivery: never sent again after it
    ids = Counter(r.headers["webhook-id"] for r in received)
    assert {event_id: n for event_id, n in ids.items() if n != tries} == {}
    assert receiver.overlapping() == []  # no event sent by two nodes at once
    kinds = Counter((r.path.lstrip("/"), json.loads(r.body)["type"]) for r in received)
    assert kinds == Counter({(job_id, kind): tries for job_id in jobs
                             for kind in ("job.started", "job.completed")})
    for r in received:  # the body names the job it was sent for (any node may send any)
        assert json.loads(r.body)["data"]["job_id"] == r.path.lstrip("/")

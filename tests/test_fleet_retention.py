"""Two Cylindria nodes (real processes) on one PostgreSQL database with a short --retention:
one sweep at a time deletes every node's expired jobs, each counted once, and each node drops
its own from memory, whichever node deleted their rows."""
from __future__ import annotations

from comfy.jobs.job import JobStatus
from cylindria.storage import open_url
from tests import workflows
from tests.helpers import Api, wait_for

NODES = ("a", "b")
JOBS_PER_NODE = 6


def test_each_expired_job_is_deleted_once_and_no_node_answers_for_it(start_node, fleet_database):
    apis = {name: Api(node.url) for name, node in
            start_node.many(NODES, "--retention", "1s").items()}
    jobs = {f"{name}-{n}": api for name, api in apis.items() for n in range(JOBS_PER_NODE)}
    for job_id, api in jobs.items():  # pinned to each node's own GPU 0
        created = api.put(f"/startjob/{job_id}?GpuId=0", json=workflows.core(job_id))
        assert created.status_code == 201, created.text
    for job_id in jobs:  # gone from both nodes' memory and from the database
        for name, api in apis.items():
            wait_for(lambda: api.get(f"/jobstatus/{job_id}").status_code == 404, timeout=30,
                     message=f"node {name} to forget {job_id}")
    storage = open_url(fleet_database)  # no retention: an expired row left would be read
    try:
        assert [job_id for job_id in jobs if storage.jobs.get(job_id) is not None] == []
        # Each counted once, as it ended (a job is expired only once it has ended).
        assert storage.jobs.retired() == {(0, JobStatus.COMPLETED): len(jobs)}
    finally:
        storage.close()

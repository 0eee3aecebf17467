"""Retention: finished jobs older than --retention leave memory and the database; unfinished
jobs never do; the removal counts survive restarts (the store-level tests on every backend)."""
from __future__ import annotations

import time

import pytest

from comfy.tracking.events import finish
from comfy.jobs.job import Job, JobStatus
from comfy.jobs.retention import RetentionSweep
from comfy.jobs.store import JobStore
from cylindria.config.options import ConfigError, load_config
from cylindria.config.values import duration
from cylindria.service.server import Service
from tests import workflows
from tests.backends import Backend
from tests.conftest import make_config
from tests.helpers import Api, wait_for

DAY = 86400.0


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def add_job(store: JobStore, job_id: str, status: JobStatus, ended_at: float | None) -> None:
    """A job recorded, accepted and (unless `status` is unfinished) ended at `ended_at`."""
    store.reserve(Job(job_id=job_id, gpu_id=0, prompt_id=f"p-{job_id}", fingerprint="f"),
                  b'{"job": "%s"}' % job_id.encode())
    store.release(job_id, f"p-{job_id}")
    store.change(job_id, lambda job: setattr(job, "status", JobStatus.QUEUED))
    if status.finished:
        store.change(job_id, finish(status, when=ended_at))


def test_the_sweep_removes_only_finished_jobs_older_than_retention(backend):
    now = time.time()
    storage = backend.open(30 * DAY)
    store = JobStore(storage.jobs)
    add_job(store, "old-done", JobStatus.COMPLETED, now - 40 * DAY)
    add_job(store, "old-failed", JobStatus.FAILED, now - 31 * DAY)
    add_job(store, "recent", JobStatus.COMPLETED, now - 29 * DAY)
    add_job(store, "unfinished", JobStatus.QUEUED, None)
    sweep = RetentionSweep(store, storage.jobs, 30 * DAY, clock=Clock(now + 365 * DAY))
    sweep.clock.now = now
    assert sweep.sweep_once() == 2
    assert store.get("old-done") is None and store.get("old-failed") is None
    assert store.get("recent") is not None and store.get("unfinished").status == JobStatus.QUEUED
    # A workflow is kept while its job is (GET /api/v2/jobs/<id>/workflow), and leaves with it.
    assert store.workflow("recent") == b'{"job": "recent"}'
    assert store.workflow("old-done") is None
    sweep.clock.now = now + 365 * DAY  # a year on: everything finished is past retention
    assert sweep.sweep_once() == 1 and sweep.sweep_once() == 0
    assert store.get("unfinished") is not None
    live, retired = sweep.counts()
    assert retired == {(0, JobStatus.COMPLETED): 2, (0, JobStatus.FAILED): 1}
    assert live == {(0, JobStatus.QUEUED): 1}
    sweep.stop()
    storage.close()

    reopened = JobStore(backend.open(30 * DAY).jobs)
    assert [job.job_id for job in reopened.jobs()] == ["unfinished"]
    assert backend.open().jobs.retired() == retired  # durable, for /metrics across restarts


def test_a_backlog_is_removed_in_bounded_batches(backend):
    storage = backend.open(DAY)
    store = JobStore(storage.jobs)
    long_ago = time.time() - 10 * DAY
    total = RetentionSweep.BATCH * 2 + 7
    for n in range(total):
        add_job(store, f"j{n}", JobStatus.COMPLETED, long_ago + n)
    sweep = RetentionSweep(store, storage.jobs, DAY)
    passes = []
    while (removed := sweep.sweep_once()):
        passes.append(removed)
    assert passes == [RetentionSweep.BATCH, RetentionSweep.BATCH, 7]
    assert list(store.jobs()) == []
    sweep.stop()


def test_expired_rows_are_not_loaded_and_their_ids_can_be_used_again(backend):
    storage = backend.open()  # no retention while these are written
    add_job(JobStore(storage.jobs), "reused", JobStatus.COMPLETED, time.time() - 40 * DAY)
    storage.close()
    store = JobStore(backend.open(30 * DAY).jobs)  # a restart with --retention 30d
    assert store.get("reused") is None  # expired: never loaded, though its row awaits the sweep
    job, created = store.reserve(Job(job_id="reused", gpu_id=1, prompt_id="p-new", fingerprint="g"), b"{}")
    assert created and job.prompt_id == "p-new"
    reopened = JobStore(backend.open(30 * DAY).jobs)
    assert reopened.get("reused").prompt_id == "p-new"
    assert backend.open().jobs.retired() == {(0, JobStatus.COMPLETED): 1}


def test_two_nodes_sweep_one_at_a_time_and_each_forgets_its_own_jobs(postgres_cluster, tmp_path):
    """A fleet on one PostgreSQL: one sweep at a time deletes every node's expired rows, each
    counted once; the node whose rows another node deleted drops them from memory itself."""
    shared = Backend("postgresql", tmp_path / "data", postgres_cluster)
    try:
        now = time.time()
        stores, sweeps = {}, {}
        for node in ("a", "b"):
            rows = shared.open(30 * DAY).jobs
            stores[node] = JobStore(rows, node)
            sweeps[node] = RetentionSweep(stores[node], rows, 30 * DAY, clock=Clock(now))
            for n in range(3):
                add_job(stores[node], f"{node}-old-{n}", JobStatus.COMPLETED, now - 40 * DAY)
            add_job(stores[node], f"{node}-recent", JobStatus.FAILED, now - DAY)
        other = shared.open(30 * DAY).jobs
        with other.sweep_turn() as ours:  # a third node mid-sweep: b deletes nothing...
            assert ours and sweeps["b"].sweep_once() == 0
        assert len(other.expired(now - 30 * DAY, 100)) == 6
        assert [j.job_id for j in stores["b"].jobs()] == ["b-recent"]  # ...but forgets its own
        assert sweeps["b"].sweep_once() == 6  # every node's expired rows, b's turn now
        assert {j.job_id for j in stores["a"].jobs()} == {"a-old-0", "a-old-1", "a-old-2",
                                                          "a-recent"}
        assert sweeps["a"].sweep_once() == 0  # nothing left to delete: a forgets its own
        assert [j.job_id for j in stores["a"].jobs()] == ["a-recent"]
        assert other.expired(now - 30 * DAY, 100) == []
        assert sum(other.retired().values()) == 6  # each deleted row counted once
        assert other.retired() == {(0, JobStatus.COMPLETED): 6}
        assert [sum(sweep.counts()[1].values()) for sweep in sweeps.values()] == [6, 6]
    finally:
        shared.close()


def test_retention_is_a_duration_with_a_unit():
    assert duration("90s") == 90 and duration("12h") == 12 * 3600 and duration("30d") == 30 * DAY
    assert load_config([]).retention == 30 * DAY
    assert load_config(["--retention", "2s"]).retention == 2
    for bad in ("30", "0d", "-1h", "abc", "nanh", "infd", "d"):
        with pytest.raises(ConfigError, match="--retention"):
            load_config([f"--retention={bad}"])


def test_a_server_removes_finished_jobs_after_retention_and_keeps_unfinished_ones(fakes, tmp_path):
    """--retention 2s against real fakes: 404 afterwards, also after a restart; a job held in
    ComfyUI's queue for longer than that stays."""
    config = make_config(fakes, tmp_path, retention=2.0)
    fakes[1].hold = True  # GPU 1 runs nothing: its job stays queued
    try:
        with Service(config) as service:
            api = Api(service.url)
            assert api.put("/startjob/waiting?GpuId=1", json=workflows.core("w")).status_code == 201
            assert api.put("/startjob/done?GpuId=0", json=workflows.core("d")).status_code == 201
            api.wait_status("done", "completed")
            wait_for(lambda: api.get("/jobstatus/done").status_code == 404, timeout=20,
                     message="the finished job to be removed")
            assert api.get("/jobstatus/done").json() == {"error": "job not found",
                                                         "code": "job_not_found"}
            assert api.status("waiting")["status"] == "queued"
            metrics = api.get("/metrics").text
            assert 'cylindria_jobs_removed_total{gpu="0",status="completed"} 1.0' in metrics
            assert 'cylindria_jobs_submitted_total{gpu="0"} 1.0' in metrics
        with Service(config) as service:  # a restart on the same data dir
            api = Api(service.url)
            assert api.get("/jobstatus/done").status_code == 404
            assert api.status("waiting")["status"] in ("queued", "running")
            fakes[1].hold = False
            api.wait_status("waiting", "completed")
    finally:
        fakes[1].hold = False


def test_metrics_totals_do_not_drop_when_jobs_are_removed(fakes, tmp_path):
    config = make_config(fakes, tmp_path, retention=1.0)
    with Service(config) as service:
        api = Api(service.url)
        for n in range(3):
            api.put(f"/startjob/m{n}", json=workflows.core(f"m{n}"))
            api.wait_status(f"m{n}", "completed")
        wait_for(lambda: api.get("/jobs").json()["jobs"] == [], timeout=20)
        text = api.get("/metrics").text
        assert 'cylindria_jobs_submitted_total{gpu="0"} 3.0' in text
        assert 'cylindria_jobs_finished_total{gpu="0",status="completed"} 3.0' in text
        assert 'cylindria_jobs{gpu="0",status="completed"} 0.0' in text


def test_assets_no_job_needed_for_the_retention_are_removed(backend, tmp_path):
    """An asset last needed before the cutoff goes (row and file); one an unfinished job
    refers to stays however old; one needed recently stays."""
    import io

    from comfy.inputs.assets import AssetStore
    storage = backend.open(DAY)
    store = JobStore(storage.jobs)
    assets = AssetStore(tmp_path / "assets", storage.assets, 1024 * 1024)
    old, held, fresh = (assets.add(io.BytesIO(data), name, None)[0]
                        for data, name in ((b"old bytes", "old"), (b"held bytes", "held"),
                                           (b"fresh bytes", "fresh")))
    add_job(store, "waiting", JobStatus.QUEUED, None)
    assets.use("waiting", "f", [held])
    clock = Clock(time.time() + 2 * DAY)  # two days on: all three unused for more than a day,
    # but a job needed this one half a day ago
    storage.assets.touch(fresh.id, clock.now - DAY / 2)
    sweep = RetentionSweep(store, storage.jobs, DAY, clock=clock, assets=assets)
    try:
        assert sweep.sweep_assets() == 1
        assert assets.get(old.id) is None and not assets.path(old).exists()
        assert assets.get(held.id) is not None and assets.path(held).exists()
        assert assets.get(fresh.id) is not None
    finally:
        sweep.stop()

"""Cylindria as a real process: killed and restarted on the same data dir."""
import json

import pytest
import requests

from tests import workflows
from tests.helpers import Api, wait_for
from tests.processes import CylindriaProcess


@pytest.fixture
def process_factory(fakes, tmp_path):
    started = []

    def start(database: str | None = None):
        extra = ("--database", database) if database else ()
        proc = CylindriaProcess(fakes[0].url, tmp_path / "data", extra=extra).start()
        started.append(proc)
        return proc
    yield start
    for proc in started:
        proc.stop()


def comfy_finished(fake, prompt_id) -> bool:
    return bool(requests.get(f"{fake.url}/history/{prompt_id}", timeout=5).json())


def test_jobs_survive_a_restart(process_factory):
    first = process_factory()
    api = Api(first.url)
    api.put("/startjob/kept", json=workflows.core("kept"))
    api.wait_status("kept", "completed")
    first.stop()
    second = process_factory()
    job = Api(second.url).status("kept")
    assert job["status"] == "completed" and job["outputs"]


def test_killed_mid_job_then_restarted_shows_the_true_end(process_factory, fake):
    first = process_factory()
    api = Api(first.url)
    running = api.put("/startjob/mid-run", json=workflows.slow(seconds=30)).json()
    api.put("/startjob/mid-fail", json=workflows.fail())
    api.wait_status("mid-run", "running")
    first.kill()
    wait_for(lambda: comfy_finished(fake, running["prompt_id"]), timeout=30)
    second = process_factory()
    api = Api(second.url)
    assert api.wait_status("mid-run", "completed", timeout=10)["outputs"]
    assert api.wait_status("mid-fail", "failed", timeout=10)["error"]["node_type"] == "CylFail"


def test_killed_then_comfy_restarted_too_shows_lost(process_factory, fake):
    first = process_factory()
    api = Api(first.url)
    api.put("/startjob/forgotten", json=workflows.slow(seconds=200))
    api.wait_status("forgotten", "running")
    first.kill()
    fake.restart(keep_state=False)
    second = process_factory()
    assert Api(second.url).wait_status("forgotten", "lost", timeout=10)["error"]["type"] == "lost"


def test_crash_between_record_and_post_is_settled_at_start(process_factory, fake, backend):
    """Rows left `submitting` by a crash: adopted if ComfyUI got the prompt, else dropped
    (on every backend)."""
    import time
    import uuid

    from comfy.jobs.job import Job
    from comfy.inputs.workflow import fingerprint

    got, never = str(uuid.uuid4()), str(uuid.uuid4())
    storage = backend.open()
    for job_id, prompt_id in (("got-it", got), ("never-got-it", never)):
        storage.jobs.insert(Job(job_id=job_id, gpu_id=0, prompt_id=prompt_id,
                                submitted_at=time.time(),
                                fingerprint=fingerprint(workflows.core(job_id))),
                            json.dumps(workflows.core(job_id)).encode())
    storage.close()
    requests.post(f"{fake.url}/prompt", json={"prompt": workflows.core("got-it"), "prompt_id": got},
                  timeout=10).raise_for_status()
    api = Api(process_factory(backend.database).url)
    assert api.wait_status("got-it", "completed")["prompt_id"] == got
    assert api.get("/jobstatus/never-got-it").status_code == 404
    retry = api.put("/startjob/never-got-it", json=workflows.core("never-got-it"))
    assert retry.status_code == 201 and retry.json()["prompt_id"] != never
    assert fake.prompts_received().count(got) == 1


def test_a_held_v2_job_whose_partner_key_was_only_in_memory_fails_after_a_restart(fake, tmp_path):
    """Partner keys are never written down: a job still in Cylindria's queue when it stops
    cannot be sent after the restart, and says why (v2 error partner_key_lost)."""
    secret = "partner-key-that-must-not-persist"
    data = tmp_path / "data"
    first = CylindriaProcess(fake.url, data, gpus=1, extra=("--gpu-queue-depth", "1")).start()
    second = None
    try:
        api = Api(first.url)
        api.put("/startjob/blocker?GpuId=0", json=workflows.slow(seconds=100))  # 5 s of fake time
        api.wait_status("blocker", "running")
        answer = api.request("POST", "/api/v2/jobs", json={
            "workflow": workflows.core("partner"), "extra_data": {"api_key_comfy_org": secret}})
        assert answer.status_code == 201 and answer.json()["status"] == "queued", answer.text
        job_id = answer.json()["id"]
        first.kill()
        second = CylindriaProcess(fake.url, data, gpus=1, extra=("--gpu-queue-depth", "1")).start()
        api = Api(second.url)
        job = wait_for(lambda: (lambda j: j if j["status"] == "failed" else None)(
            api.get(f"/api/v2/jobs/{job_id}").json()), timeout=30, message="the job to fail")
        assert job["error"]["code"] == "partner_key_lost", job
        assert api.status(job_id)["status"] == "failed"  # the same job on Cylindria's own API
        for path in [p for p in tmp_path.rglob("*") if p.is_file()]:  # data dir and logs
            assert secret.encode() not in path.read_bytes(), path
    finally:
        first.stop()
        if second is not None:
            second.stop()

"""Cylindria restarted with fewer GPUs on the same data dir: the jobs of a GPU that no longer
exists end `lost` with the reason at start, every surface answers them, retention takes them."""
from __future__ import annotations

from cylindria.service.server import Service
from tests import workflows
from tests.conftest import make_config
from tests.helpers import Api, wait_for
from cylindria.web.v2.shapes import output_id


def test_jobs_of_a_gpu_that_is_gone_are_lost_and_answered_everywhere(fakes, tmp_path):
    with Service(make_config(fakes, tmp_path)) as service:
        api = Api(service.url)
        assert api.put("/startjob/done?GpuId=1", json=workflows.core("done")).status_code == 201
        api.wait_status("done", "completed")
        fakes[1].hold = True  # the next ones stay in GPU 1's queue
        for job_id in ("waiting", "also-waiting"):
            assert api.put(f"/startjob/{job_id}?GpuId=1",
                           json=workflows.core(job_id)).status_code == 201
            api.wait_status(job_id, "queued")
    with Service(make_config(fakes[:1], tmp_path)) as service:  # --numberOfGpus 1
        api = Api(service.url)
        for job_id in ("waiting", "also-waiting"):
            job = api.status(job_id)
            assert job["status"] == "lost" and job["gpu_id"] == 1
            assert "GPU 1" in job["error"]["message"] and "--numberOfGpus" in job["error"]["message"]
            refused = api.delete(f"/job/{job_id}")
            assert refused.status_code == 409 and refused.json()["code"] == "job_finished"
            assert api.get(f"/api/v2/jobs/{job_id}").json()["status"] == "failed"
        assert {job["job_id"] for job in api.get("/jobs").json()["jobs"]} >= \
            {"done", "waiting", "also-waiting"}
        assert api.get("/api/v2/jobs").status_code == 200
        assert api.get("/jobresult/done").status_code == 200
        gone = api.get("/jobresult/done/0")
        assert gone.status_code == 404 and gone.json()["code"] == "output_not_found"
        shown = api.get("/api/v2/jobs/done")
        assert shown.status_code == 200 and shown.json()["status"] == "succeeded"
        assert api.get(f"/api/v2/assets/{output_id('done', 0)}").status_code == 404
        assert api.get(f"/api/v2/assets/{output_id('done', 0)}/content").status_code == 404
        assert api.get("/metrics").status_code == 200
    with Service(make_config(fakes[:1], tmp_path, retention=0.5)) as service:
        api = Api(service.url)
        wait_for(lambda: all(api.get(f"/jobstatus/{job_id}").status_code == 404
                             for job_id in ("done", "waiting", "also-waiting")),
                 message="the retention sweep to take the jobs of GPU 1")

"""PUT /startjob against a real server and fake GPUs: answers, refusals, exactly-once."""
import json
import threading
import uuid

import pytest

from cylindria.service.server import Service
from tests import workflows
from tests.conftest import make_config
from tests.helpers import Api

UUID_FORM = lambda text: str(uuid.UUID(text)) == text  # noqa: E731  lowercase canonical UUID


def test_first_submission_answers_201_field_by_field(api, fakes):
    response = api.put("/startjob/job-a/?GpuId=1", json=workflows.core())
    assert response.status_code == 201
    job = response.json()
    assert job["job_id"] == "job-a" and job["gpu_id"] == 1 and job["accepted"] is True
    assert UUID_FORM(job["prompt_id"])
    assert job["status"] in ("queued", "running", "completed")
    assert isinstance(job["detail"], str) and job["detail"]
    assert "queue_position" in job
    assert fakes[1].prompts_received() == [job["prompt_id"]] and fakes[0].prompts_received() == []


def test_prompt_goes_under_prompt_key_with_cylindrias_client_id(api, fake, service):
    api.put("/startjob/job-b", json=workflows.core())
    posts = [r for r in fake.requests() if r.method == "POST" and r.path == "/prompt"]
    assert len(posts) == 1
    body = posts[0].json
    assert body["prompt"] == workflows.core()
    assert body["client_id"] == service.context.gpus[0].client_id
    assert set(body) == {"prompt", "client_id", "prompt_id", "extra_data"}
    assert "Origin" not in posts[0].headers and "X-API-Key" not in posts[0].headers


def test_wrapped_body_is_accepted_and_its_extra_data_kept(api, fake):
    wrapped = {"prompt": workflows.core(), "extra_data": {"extra_pnginfo": {"k": "v"}},
               "client_id": "not-yours"}
    assert api.put("/startjob/job-c", json=wrapped).status_code == 201
    body = [r for r in fake.requests() if r.path == "/prompt"][0].json
    assert body["extra_data"] == {"extra_pnginfo": {"k": "v"}} and body["client_id"] != "not-yours"


def test_gpu_param_spellings_and_default(api, fakes):
    assert api.put("/startjob/j0", json=workflows.core()).json()["gpu_id"] == 0
    assert api.put("/startjob/j1?gpuid=1", json=workflows.core("b")).json()["gpu_id"] == 1
    assert api.put("/startjob/j2?gpu_id=1", json=workflows.core("c")).json()["gpu_id"] == 1


def test_same_id_same_workflow_is_200_with_the_same_job_and_runs_once(api, fake):
    first = api.put("/startjob/retry-me", json=workflows.core())
    second = api.put("/StartJob/retry-me/", json=workflows.core())
    assert (first.status_code, second.status_code) == (201, 200)
    assert second.json()["prompt_id"] == first.json()["prompt_id"]
    assert set(second.json()) == set(first.json())
    assert len(fake.prompts_received()) == 1


def test_concurrent_retries_of_one_job_run_the_gpu_once(api, fake):
    fake.http_delay = 0.3  # the first POST is still under way when the retries arrive
    results = []

    def submit():
        results.append(api.put("/startjob/storm", json=workflows.core()).status_code)
    threads = [threading.Thread(target=submit) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [200] * 5 + [201]
    assert len(fake.prompts_received()) == 1


def test_same_id_different_workflow_is_409_and_changes_nothing(api, fake):
    api.put("/startjob/taken", json=workflows.core())
    response = api.put("/startjob/taken", json=workflows.core("other"))
    assert response.status_code == 409 and response.json()["code"] == "job_id_conflict"
    assert len(fake.prompts_received()) == 1


@pytest.mark.parametrize("gpu", ["2", "-1", "x", "1.0", "", "99999999999"])
def test_bad_gpu_id_is_400_and_nothing_is_submitted(api, fakes, gpu):
    response = api.put(f"/startjob/g?GpuId={gpu}", json=workflows.core())
    assert response.status_code == 400 and response.json()["code"] == "invalid_gpu_id"
    assert api.get("/jobstatus/g").status_code == 404
    assert all(f.prompts_received() == [] for f in fakes)


@pytest.mark.parametrize("job_id", ["a" * 129, "bad id", "semi;colon", "slash/inside", "%C3%A9t%C3%A9"])
def test_bad_job_id_is_400(api, job_id):
    response = api.put(f"/startjob/{job_id}", json=workflows.core())
    assert response.status_code == 400 and response.json()["code"] == "invalid_job_id"


def test_empty_job_id_is_400(api):
    response = api.put("/startjob/", json=workflows.core())
    assert response.status_code == 400 and response.json()["code"] == "invalid_job_id"


@pytest.mark.parametrize("body,code", [
    (b"", "invalid_json"), (b"{oops", "invalid_json"), (b"[]", "invalid_workflow"),
    (b"{}", "invalid_workflow"), (b'{"1": {"class_type": "X"}}', "invalid_workflow"),
    (json.dumps({"nodes": [], "links": []}).encode(), "ui_format_workflow")])
def test_bad_bodies_get_the_contracts_error_and_leave_no_job(api, fake, body, code):
    response = api.put("/startjob/bad-body", data=body)
    assert response.status_code == 400 and response.json()["code"] == code
    assert api.get("/jobstatus/bad-body").status_code == 404
    assert fake.prompts_received() == []


def test_comfy_validation_error_is_relayed_and_a_retry_can_go_through(api, fake):
    response = api.put("/startjob/invalid-then-fixed", json=workflows.invalid())
    assert response.status_code == 400
    error = response.json()
    assert error["code"] == "comfy_rejected"
    assert error["details"]["error"]["type"] == "prompt_outputs_failed_validation"
    assert error["details"]["node_errors"]["2"]["errors"][0]["type"] == "required_input_missing"
    assert api.get("/jobstatus/invalid-then-fixed").status_code == 404
    assert api.put("/startjob/invalid-then-fixed", json=workflows.core()).status_code == 201


def test_unreachable_gpu_is_503_with_retry_after_and_leaves_no_job(api, fakes):
    fakes[1].stop()
    response = api.put("/startjob/down?GpuId=1", json=workflows.core())
    assert response.status_code == 503 and response.json()["code"] == "comfy_unreachable"
    assert int(response.headers["Retry-After"]) > 0
    assert api.get("/jobstatus/down").status_code == 404
    fakes[1].restart()
    assert api.put("/startjob/down?GpuId=1", json=workflows.core()).status_code == 201


def test_older_comfy_that_picks_its_own_prompt_id_is_recorded(api, fake):
    fake.ignore_prompt_id = True
    job = api.put("/startjob/old-comfy", json=workflows.core()).json()
    assert job["prompt_id"] == fake.prompts_received()[0]
    assert api.wait_status("old-comfy", "completed")["prompt_id"] == job["prompt_id"]


def test_dev_mode_saves_the_exact_body(fakes, tmp_path):
    config = make_config(fakes, tmp_path, dev=True)
    raw = b'{"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, ' \
          b'"color": 0}},\n "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], ' \
          b'"filename_prefix": "dev"}}}'
    with Service(config) as service:
        response = Api(service.url).put("/startjob/dev-job", data=raw)
    assert response.status_code == 201
    assert (tmp_path / "dev" / "dev-job.json").read_bytes() == raw


def test_dev_mode_never_keeps_a_partner_key(fakes, tmp_path):
    secret = "comfyui-partner-secret-0123456789"
    body = {"prompt": workflows.core("dev-partner"), "extra_data": {"api_key_comfy_org": secret,
                                                                    "note": "kept"}}
    with Service(make_config(fakes, tmp_path, dev=True)) as service:
        api = Api(service.url)
        assert api.put("/startjob/dev-partner", json=body).status_code == 201
        assert api.put("/startjob/dev-broken", data=b'{"api_key_comfy_org": "' +
                       secret.encode() + b'", oops').status_code == 400
        [post] = [r for r in fakes[0].requests() if r.method == "POST" and r.path == "/prompt"]
        assert post.json["extra_data"]["api_key_comfy_org"] == secret  # ComfyUI still gets it
    kept = json.loads((tmp_path / "dev" / "dev-partner.json").read_bytes())
    assert kept["extra_data"] == {"api_key_comfy_org": "(withheld)", "note": "kept"}
    assert kept["prompt"] == body["prompt"]
    for copy in (tmp_path / "dev").iterdir():
        assert secret.encode() not in copy.read_bytes(), copy.name

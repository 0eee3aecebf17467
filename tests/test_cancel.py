"""DELETE /job: queued jobs leave ComfyUI's queue, running ones are interrupted, ended ones 409."""
from tests import workflows



def prompts_in_queue(fake) -> set:
    import requests
    queue = requests.get(fake.url + "/queue", timeout=10).json()
    return {item[1] for item in queue["queue_running"] + queue["queue_pending"]}


def test_cancel_of_a_queued_job_removes_it_and_leaves_the_running_one(api, fake):
    api.put("/startjob/running-one", json=workflows.slow(seconds=60))
    api.wait_status("running-one", "running")
    fake.hold = True
    waiting = api.put("/startjob/waiting-one", json=workflows.slow(seconds=61)).json()
    response = api.delete("/job/waiting-one/")
    assert response.status_code == 200
    job = response.json()
    assert job["status"] == "cancelled" and job["finished_at"] and job["cancel_requested"] is True
    assert waiting["prompt_id"] not in prompts_in_queue(fake)
    assert api.status("running-one")["status"] == "running"
    assert api.status("waiting-one")["status"] == "cancelled"


def test_cancel_of_a_running_job_interrupts_only_it(api, fake):
    api.put("/startjob/victim", json=workflows.slow(seconds=60))
    api.wait_status("victim", "running")
    fake.hold = True
    api.put("/startjob/bystander", json=workflows.slow(seconds=0.5, prefix="by"))
    response = api.delete("/job/victim")
    assert response.status_code == 202
    assert response.json()["status"] == "running" and response.json()["cancel_requested"] is True
    assert api.wait_status("victim", "cancelled")["cancel_requested"] is True
    fake.hold = False
    assert api.wait_status("bystander", "completed")["outputs"]
    interrupts = [r for r in fake.requests() if r.path == "/interrupt"]
    assert interrupts and all(r.json == {"prompt_id": api.status("victim")["prompt_id"]}
                              for r in interrupts)


def test_cancel_of_an_ended_job_is_409_with_its_status(api):
    api.put("/startjob/ended", json=workflows.core("ended"))
    api.wait_status("ended", "completed")
    response = api.delete("/job/ended")
    assert response.status_code == 409
    assert response.json()["code"] == "job_finished"
    assert response.json()["details"] == {"status": "completed"}


def test_cancel_of_unknown_or_bad_id(api):
    assert api.delete("/job/nope").status_code == 404
    assert api.delete("/job/no pe").json()["code"] == "invalid_job_id"


def test_cancel_when_comfy_does_not_answer_is_503_and_changes_nothing(api, fakes, service):
    fakes[1].hold = True
    api.put("/startjob/stuck?GpuId=1", json=workflows.core("stuck"))
    service.context.gpus[1].client.read_timeout = 0.3
    fakes[1].http_delay = 2  # alive but slow: the job keeps its status
    response = api.delete("/job/stuck")
    assert response.status_code == 503 and response.json()["code"] == "comfy_unreachable"
    assert api.status("stuck")["status"] == "queued"

"""GET /jobstatus: the documented fields, and 404 for unknown ids."""
import re

from tests import workflows

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def test_completed_job_answers_every_field(api):
    api.put("/startjob/done-job", json=workflows.core())
    job = api.wait_status("done-job", "completed")
    assert set(job) >= {"job_id", "gpu_id", "prompt_id", "status", "queue_position", "progress",
                        "submitted_at", "started_at", "finished_at", "error", "outputs"}
    assert job["queue_position"] is None and job["error"] is None
    assert job["progress"]["percent"] == 100 and job["progress"]["nodes_total"] == 3
    assert all(ISO.fullmatch(job[k]) for k in ("submitted_at", "started_at", "finished_at"))
    assert job["submitted_at"] <= job["started_at"] <= job["finished_at"]
    assert job["outputs"] == [{"node_id": "3", "filename": "cyl_00001_.png", "subfolder": "",
                               "type": "output"}]


def test_unknown_job_is_404_with_the_exact_message(api):
    response = api.get("/jobstatus/never-heard-of-it/")
    assert response.status_code == 404
    assert response.json() == {"error": "job not found", "code": "job_not_found"}


def test_job_ids_are_case_sensitive_but_endpoint_names_are_not(api):
    api.put("/startjob/CaseJob", json=workflows.core())
    assert api.get("/JOBSTATUS/CaseJob").status_code == 200
    assert api.get("/jobstatus/casejob").status_code == 404


def test_failed_job_carries_the_node_error(api):
    api.put("/startjob/fails", json=workflows.fail())
    job = api.wait_status("fails", "failed")
    assert job["error"] == {"type": "RuntimeError", "message": "CylFail: intentional failure",
                            "node_id": "2", "node_type": "CylFail"}
    assert job["outputs"] == []


def test_queued_job_reports_how_many_prompts_run_before_it(api, fake):
    fake.hold = True
    for n in range(3):
        api.put(f"/startjob/q{n}", json=workflows.slow(seconds=1.0 + n / 10))
    positions = [api.status(f"q{n}")["queue_position"] for n in range(3)]
    assert positions == [0, 1, 2]
    fake.hold = False
    api.wait_status("q0", ["running", "completed"])
    job = api.wait_status("q2", "queued")
    assert job["queue_position"] in (1, 2)


def test_every_form_of_the_answer_ends_with_a_newline_like_other_json_answers(api, fakes):
    """The encoded-once body (kept per job record), ?wait=, and a held job's (encoded each
    time) all end with a newline, as jsonify's answers and the error bodies do."""
    api.put("/startjob/nl-done", json=workflows.core())
    api.wait_status("nl-done", "completed")
    for gpu, fake in enumerate(fakes):  # both GPUs full (2 prompts): an auto job is held
        fake.hold = True
        for n in range(2):
            api.put(f"/startjob/nl-busy{gpu}-{n}?GpuId={gpu}", json=workflows.slow(seconds=1.0))
    api.put("/startjob/nl-held?GpuId=auto", json=workflows.core("held"))
    answers = [api.get("/jobstatus/nl-done"), api.get("/jobstatus/nl-done"),
               api.get("/jobstatus/nl-done?wait=1"), api.get("/jobstatus/nl-held"),
               api.get("/jobs"), api.get("/jobstatus/never-heard-of-it")]
    assert answers[3].json()["status"] == "queued" and answers[3].json()["gpu_id"] is None
    assert [a.content[-1:] for a in answers] == [b"\n"] * len(answers)
    assert all(a.content[-2:-1] == b"}" for a in answers)

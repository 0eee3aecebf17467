"""/openapi.json: a valid OpenAPI 3 document listing every route, matching real answers."""
import re

import pytest
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate

from cylindria.service.server import Service
from cylindria.web.auth import FLEET_ENDPOINTS
from tests import workflows
from tests.conftest import make_config
from tests.helpers import Api, wait_for


@pytest.fixture
def doc(api):
    return api.get("/openapi.json").json()


def test_the_document_is_valid_openapi(doc):
    validate(doc)


def test_every_route_of_the_app_is_documented(doc, service):
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    for rule in service.app.url_map.iter_rules():
        if rule.endpoint == "static" or (rule.defaults or {}).get("job_id") == "":
            continue  # the job-id-less variants exist only to answer invalid_job_id
        if rule.endpoint in FLEET_ENDPOINTS:
            continue  # the nodes' internal endpoints: the fleet credential only, not the API
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (path, method) in documented, f"{method} {path} is not in /openapi.json"


def check(doc, method: str, path: str, response) -> None:
    """The answer's body matches the document's schema for that status, and it has every
    header the document says it has."""
    operation = doc["paths"][path][method.lower()]
    spec = operation["responses"][str(response.status_code)]
    schema = spec["content"]["application/json"]["schema"]
    validator = OAS30Validator({**schema, "components": doc["components"]})
    validator.validate(response.json())
    for name, header in spec.get("headers", {}).items():
        assert not header.get("required") or name in response.headers, f"{name} missing"


def check_component(doc, name: str, value) -> None:
    """A value matches one of the document's named schemas."""
    OAS30Validator({**doc["components"]["schemas"][name], "components": doc["components"]}
                   ).validate(value)


def parameter(doc, path: str, method: str, name: str) -> dict:
    """One documented parameter of an operation."""
    return next(p for p in doc["paths"][path][method]["parameters"] if p["name"] == name)


def test_answers_match_their_documented_shapes(doc, api, fake):
    submitted = api.put("/startjob/doc-job", json=workflows.core("doc"))
    check(doc, "PUT", "/startjob/{job_id}", submitted)
    check(doc, "PUT", "/startjob/{job_id}", api.put("/startjob/doc-job", json=workflows.core("doc")))
    check(doc, "PUT", "/startjob/{job_id}", api.put("/startjob/doc-job", json=workflows.core("x")))
    check(doc, "PUT", "/startjob/{job_id}", api.put("/startjob/bad id", json=workflows.core()))
    api.wait_status("doc-job", "completed")
    check(doc, "GET", "/jobstatus/{job_id}", api.get("/jobstatus/doc-job"))
    check(doc, "GET", "/jobstatus/{job_id}", api.get("/jobstatus/nope"))
    check(doc, "GET", "/jobresult/{job_id}", api.get("/jobresult/doc-job"))
    check(doc, "DELETE", "/job/{job_id}", api.delete("/job/doc-job"))
    check(doc, "GET", "/jobs", api.get("/jobs"))
    check(doc, "GET", "/jobs", api.get("/jobs?limit=0"))
    check(doc, "GET", "/serverstatus", api.get("/serverstatus"))
    check(doc, "GET", "/serverstatus", api.get("/serverstatus?GpuId=all"))
    check(doc, "GET", "/health", api.get("/health"))
    check(doc, "GET", "/ready", api.get("/ready"))
    fake.hold = True
    api.put("/startjob/doc-wait", json=workflows.core("wait"))
    check(doc, "DELETE", "/job/{job_id}", api.delete("/job/doc-wait"))


def test_gpuid_auto_and_priority_are_documented_as_the_app_takes_them(doc):
    gpu = parameter(doc, "/startjob/{job_id}", "put", "GpuId")["schema"]["pattern"]
    assert all(re.fullmatch(gpu.strip("^$"), value) for value in ("0", "1", "auto", "AUTO"))
    assert not any(re.fullmatch(gpu.strip("^$"), value) for value in ("2", "all", "-1"))
    priority = parameter(doc, "/startjob/{job_id}", "put", "priority")["schema"]
    assert priority == {"type": "integer", "minimum": -100, "maximum": 100, "default": 0}
    codes = doc["components"]["schemas"]["Error"]["properties"]["code"]["enum"]
    assert {"queue_full", "invalid_workflow", "invalid_parameter"} <= set(codes)
    job = doc["components"]["schemas"]["Job"]
    assert {"priority", "attempts"} <= set(job["required"])
    assert job["properties"]["gpu_id"]["nullable"] and job["properties"]["prompt_id"]["nullable"]
    too_many = doc["paths"]["/startjob/{job_id}"]["put"]["responses"]["429"]
    assert "queue_full" in too_many["description"] and too_many["headers"]["Retry-After"]["required"]


def test_held_jobs_and_a_full_queue_match_their_documented_shapes(fakes, tmp_path):
    """No GPU reachable: a GpuId=auto job is held (gpu_id and prompt_id null); the next one
    over --max-queued is 429 queue_full with Retry-After, and /ready is 503 with its queue."""
    for fake in fakes:
        fake.stop()
    with Service(make_config(fakes, tmp_path, max_queued=1)) as service:
        api = Api(service.url)
        doc = api.get("/openapi.json").json()
        held = api.put("/startjob/doc-held?GpuId=auto&priority=7", json=workflows.core("held"))
        assert held.status_code == 201
        check(doc, "PUT", "/startjob/{job_id}", held)
        assert (held.json()["gpu_id"], held.json()["prompt_id"], held.json()["priority"],
                held.json()["attempts"], held.json()["queue_position"]) == (None, None, 7, 0, 0)
        check(doc, "PUT", "/startjob/{job_id}", api.put("/startjob/doc-held?GpuId=auto&priority=7",
                                                        json=workflows.core("held")))
        check(doc, "GET", "/jobstatus/{job_id}", api.get("/jobstatus/doc-held"))
        queued = api.get("/jobs?status=queued")
        check(doc, "GET", "/jobs", queued)
        assert [job["job_id"] for job in queued.json()["jobs"]] == ["doc-held"]
        full = api.put("/startjob/doc-over?GpuId=auto", json=workflows.core("over"))
        assert full.status_code == 429 and full.json()["code"] == "queue_full"
        check(doc, "PUT", "/startjob/{job_id}", full)
        bad = api.put("/startjob/doc-bad?GpuId=auto&priority=101", json=workflows.core("bad"))
        assert bad.status_code == 400 and bad.json()["code"] == "invalid_parameter"
        check(doc, "PUT", "/startjob/{job_id}", bad)
        ready = api.get("/ready")
        assert ready.status_code == 503 and ready.json()["queue"] == {
            "held": 1, "max_queued": 1, "full": True}
        check(doc, "GET", "/ready", ready)
        cancelled = api.delete("/job/doc-held")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        check(doc, "DELETE", "/job/{job_id}", cancelled)


def test_refusals_of_an_auto_job_match_their_documented_shapes(doc, api, service):
    """Refused before it is held: details a WorkflowProblem. Refused by ComfyUI once sent: a
    failed job whose error carries ComfyUI's answer."""
    gpus = service.context.gpus
    wait_for(lambda: all(gpu.reachable and gpu.catalogue is not None for gpu in gpus),
             message="node classes read")
    nowhere = workflows.core("nowhere")
    nowhere["2"]["class_type"] = "NoSuchNode"
    unknown = api.put("/startjob/doc-nowhere?GpuId=auto", json=nowhere)
    missing = api.put("/startjob/doc-missing?GpuId=auto", json=workflows.invalid())
    for answer, reason in ((unknown, "unknown_node_class"), (missing, "missing_required_input")):
        assert answer.status_code == 400 and answer.json()["code"] == "invalid_workflow"
        check(doc, "PUT", "/startjob/{job_id}", answer)
        check_component(doc, "WorkflowProblem", answer.json()["details"])
        assert answer.json()["details"]["reason"] == reason
    refused = workflows.core("refused")
    refused["1"]["inputs"]["width"] = -4  # only ComfyUI checks values: it refuses when sent
    assert api.put("/startjob/doc-refused?GpuId=auto", json=refused).status_code == 201
    failed = api.wait_status("doc-refused", "failed")
    assert failed["error"]["type"] == "comfy_rejected" and failed["attempts"] == 1
    check(doc, "GET", "/jobstatus/{job_id}", api.get("/jobstatus/doc-refused"))
    check_component(doc, "ComfyRejection", failed["error"]["details"])

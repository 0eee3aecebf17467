"""/openapi.json: a valid OpenAPI 3 document listing every route, matching real answers."""
import re

import pytest
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate

from tests import workflows


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
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (path, method) in documented, f"{method} {path} is not in /openapi.json"


def check(doc, method: str, path: str, response) -> None:
    """The answer's body matches the document's schema for that status."""
    operation = doc["paths"][path][method.lower()]
    spec = operation["responses"][str(response.status_code)]
    schema = spec["content"]["application/json"]["schema"]
    validator = OAS30Validator({**schema, "components": doc["components"]})
    validator.validate(response.json())


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

"""Schemathesis against /openapi.json of a live Cylindria: every operation, with a valid key.

The server runs for real (waitress, tracker, two fake GPUs) and holds a completed, a failed
and a running job under ids the generator likes to pick ("0", "A", "_"), so the 200 paths of
jobstatus, jobresult and cancel are fuzzed too, not only their 404s. Examples are bounded:
10 per operation in the normal suite (the suite keeps under 10 minutes on 2 cores), 300 with --soak.
"""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, assume, settings
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from cylindria.service.server import Service
from tests import workflows
from tests.helpers import API_KEY, Api

KEY = {"X-API-Key": API_KEY}
SHORT_EXAMPLES, SOAK_EXAMPLES = 10, 300
SETTINGS = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck))
# Requests the document cannot judge alone, so a schema-valid one may be refused: ComfyUI
# decides which nodes run, and an upload's bytes decide whether its expected_hash is theirs.
NOT_THE_DOCUMENT_DECIDES = {"PUT /startjob/{job_id}", "POST /api/v2/jobs", "POST /api/v2/assets"}


def no_dns(host: str, port: int) -> list[str]:
    raise OSError("the fuzz test looks up no host name")


def seed_jobs(api: Api) -> None:
    """Jobs in each kind of state under ids the generator tries early."""
    api.put("/startjob/0", json=workflows.core("fuzz0"))
    api.put("/startjob/A", json=workflows.fail())
    api.put("/startjob/_", json=workflows.slow(seconds=2000))  # 100 s at the fakes' time scale
    api.wait_status("0", "completed")
    api.wait_status("A", "failed")
    api.wait_status("_", "running")


@pytest.fixture
def api_schema(config, soak):
    """The live document, loaded over HTTP from a real server in front of two fake GPUs."""
    with Service(config) as service:
        # Schemathesis also checks that the key is enforced (requests without it); those 401s
        # must not get this test client throttled, or every later answer would be a 429.
        service.app.extensions["cylindria_throttle"].limit = 10 ** 9
        # A generated webhook may name any host or address: none is looked up, and no
        # event is ever sent (tests send traffic to loopback only).
        service.context.webhooks.stop()
        service.context.webhooks.resolve_with(no_dns)
        seed_jobs(Api(service.url))
        examples = SOAK_EXAMPLES if soak else SHORT_EXAMPLES
        fuzz_config = schemathesis.Config.from_dict({"generation": {"max-examples": examples}})
        yield schemathesis.openapi.from_url(service.url + "/openapi.json", headers=KEY,
                                            config=fuzz_config)


schema = schemathesis.pytest.from_fixture("api_schema")
WAIT_CAP = 0.2  # seconds: a long-poll on the running job would hold the fuzz for up to a minute


# HTTP's own framing, not the API: a generated "Transfer-Encoding: x" is answered 501 by
# waitress before Cylindria sees the request, as RFC 9112 says it should be.
FRAMING = {"transfer-encoding", "content-length", "connection", "te", "upgrade", "expect", "host"}


def bounded(case):
    """The case with a valid `wait` shortened: every value the document allows is still
    sent in kind (a number from 0 to 60), but none blocks the run for long. Headers that
    frame the HTTP message are left to the HTTP client."""
    for name in [name for name in (case.headers or {}) if name.lower() in FRAMING]:
        del case.headers[name]
    # HTTP strips a field value's leading and trailing whitespace (RFC 9110, 5.5): such a
    # value cannot reach the app as generated ("key " arrives as "key", which the document
    # allows), so the example is discarded, not judged.
    assume(all(str(value) == str(value).strip(" \t") for value in (case.headers or {}).values()))
    wait = (case.query or {}).get("wait")
    try:
        if isinstance(wait, (int, float, str)) and 0 < float(wait) <= 60:
            case.query["wait"] = min(float(wait), WAIT_CAP)
    except ValueError:
        pass  # not a number: left as it is, to be refused
    return case


@schema.parametrize()
@SETTINGS
def test_every_answer_matches_the_document(case):
    """No 5xx; status, content type, headers and body as /openapi.json says; the key enforced.

    Whether the document's request schemas are exact (all they allow is accepted, all they
    forbid refused) is the next test's question.
    """
    bounded(case).call_and_validate(headers=KEY,
                                    excluded_checks=[positive_data_acceptance, negative_data_rejection])


@schema.parametrize()
@SETTINGS
def test_the_document_allows_exactly_what_the_app_accepts(case):
    """A request the document allows is not refused with 400, one it forbids is not served."""
    excluded = [positive_data_acceptance] if case.operation.label in NOT_THE_DOCUMENT_DECIDES else []
    bounded(case).call_and_validate(headers=KEY, excluded_checks=excluded)

"""--cors-origin: preflights answered without a key, headers only for allowed origins,
nothing at all when no origin is configured, never credentials."""
from __future__ import annotations

import pytest

from cylindria.service.server import Service
from tests.conftest import make_config
from tests.helpers import Api

ALLOWED = "https://app.example.com"
STRANGER = "https://evil.example.net"


def preflight(url: str, path: str, origin: str, method: str = "PUT",
              headers: str = "X-API-Key, Content-Type") -> object:
    """A browser's preflight: no key, the method and headers it means to send."""
    return Api(url, key=None).request("OPTIONS", path, headers={
        "Origin": origin, "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers})


def cors_headers(response) -> dict:
    return {k: v for k, v in response.headers.items() if k.lower().startswith("access-control-")}


def names(value: str) -> set:
    return {part.strip().lower() for part in value.split(",")}


@pytest.fixture
def cors_service(fakes, tmp_path):
    with Service(make_config(fakes, tmp_path, cors_origins=(ALLOWED,), rate_limit="100/hour")) as s:
        yield s


@pytest.fixture
def wildcard_service(fakes, tmp_path):
    with Service(make_config(fakes, tmp_path, cors_origins=("*",))) as s:
        yield s


def test_a_preflight_from_an_allowed_origin_is_answered_without_a_key(cors_service):
    answer = preflight(cors_service.url, "/startjob/job-1", ALLOWED)
    assert answer.status_code == 200
    assert answer.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "put" in names(answer.headers["Access-Control-Allow-Methods"])
    assert names(answer.headers["Access-Control-Allow-Headers"]) == {"x-api-key", "content-type"}
    assert int(answer.headers["Access-Control-Max-Age"]) > 0
    assert "Access-Control-Allow-Credentials" not in answer.headers


def test_a_v2_preflight_may_send_idempotency_key_authorization_and_range(cors_service):
    answer = preflight(cors_service.url, "/api/v2/jobs", ALLOWED, method="POST",
                       headers="Authorization, Content-Type, Idempotency-Key")
    assert answer.status_code == 200
    assert names(answer.headers["Access-Control-Allow-Headers"]) == {
        "authorization", "content-type", "idempotency-key"}
    ranged = preflight(cors_service.url, "/api/v2/assets/a1/content", ALLOWED, method="GET",
                       headers="X-API-Key, Range")
    assert names(ranged.headers["Access-Control-Allow-Headers"]) == {"x-api-key", "range"}


def test_answers_to_an_allowed_origin_expose_the_api_headers(cors_service):
    answer = Api(cors_service.url).get("/jobs", headers={"Origin": ALLOWED})
    assert answer.status_code == 200
    assert answer.headers["Access-Control-Allow-Origin"] == ALLOWED
    exposed = names(answer.headers["Access-Control-Expose-Headers"])
    assert {"retry-after", "ratelimit-limit", "ratelimit-remaining", "ratelimit-reset",
            "idempotency-replayed", "content-range"} <= exposed
    assert "Access-Control-Allow-Credentials" not in answer.headers
    refused = Api(cors_service.url, key=None).get("/jobs", headers={"Origin": ALLOWED})
    assert refused.status_code == 401  # the key is still needed, and the page can read why
    assert refused.headers["Access-Control-Allow-Origin"] == ALLOWED


def test_a_preflight_answer_says_nothing_but_the_methods(cors_service):
    answer = preflight(cors_service.url, "/jobstatus/job-1", ALLOWED, method="GET")
    assert answer.status_code == 200 and answer.content == b""
    assert names(answer.headers["Allow"]) == {"get", "head", "options"}


def test_a_disallowed_origin_gets_no_allow_origin(cors_service):
    answer = preflight(cors_service.url, "/startjob/job-1", STRANGER)
    assert "Access-Control-Allow-Origin" not in answer.headers
    assert "Access-Control-Allow-Methods" not in answer.headers
    plain = Api(cors_service.url).get("/jobs", headers={"Origin": STRANGER})
    assert plain.status_code == 200
    assert cors_headers(plain) == {}


def test_no_cors_headers_when_no_origin_is_configured(service):
    answer = preflight(service.url, "/startjob/job-1", ALLOWED)
    assert cors_headers(answer) == {}
    assert cors_headers(Api(service.url).get("/jobs", headers={"Origin": ALLOWED})) == {}


def test_no_cors_headers_without_an_origin(cors_service):
    assert cors_headers(Api(cors_service.url).get("/jobs")) == {}


def test_a_wildcard_is_a_literal_star_never_with_credentials(wildcard_service):
    answer = preflight(wildcard_service.url, "/startjob/job-1", STRANGER)
    assert answer.status_code == 200
    assert answer.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in answer.headers
    plain = Api(wildcard_service.url).get("/jobs", headers={"Origin": STRANGER,
                                                           "Cookie": "session=1"})
    assert plain.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in plain.headers

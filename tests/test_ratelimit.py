"""--rate-limit: a budget per API key (per address where no key is needed), 429 with
Retry-After and RateLimit-* headers when spent; /health and /ready never limited."""
from __future__ import annotations

import pytest

from cylindria.service.server import Service
from tests.conftest import make_config
from tests.helpers import API_KEY, Api

OTHER_KEY = "other-key-9876543210fedcba"
RATE = "3/hour"  # an hour: no window rolls over while a test runs
HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")


@pytest.fixture
def limited(fakes, tmp_path):
    """A server allowing 3 requests an hour per key, with two keys."""
    config = make_config(fakes, tmp_path, rate_limit=RATE, api_keys=(API_KEY, OTHER_KEY),
                         metrics_public=True)
    with Service(config) as service:
        yield service


def spend(api: Api, path: str = "/jobs", count: int = 3) -> None:
    """Use up `count` requests of the budget, each answered."""
    for _ in range(count):
        assert api.get(path).status_code == 200


def test_the_budget_is_counted_down_in_ratelimit_headers(limited):
    api = Api(limited.url)
    answers = [api.get("/jobs") for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [a.headers["RateLimit-Remaining"] for a in answers] == ["2", "1", "0"]
    for answer in answers:
        assert answer.headers["RateLimit-Limit"] == "3"
        assert 1 <= int(answer.headers["RateLimit-Reset"]) <= 3600  # seconds, not a timestamp
        assert "Retry-After" not in answer.headers  # said only when refused


def test_over_the_limit_is_429_with_retry_after_and_ratelimit_headers(limited):
    api = Api(limited.url)
    spend(api)
    refused = api.get("/serverstatus")  # one budget for every endpoint
    assert refused.status_code == 429
    body = refused.json()
    assert body["code"] == "too_many_requests" and body["error"]
    assert body["details"]["limit"] == RATE
    assert 1 <= int(refused.headers["Retry-After"]) <= 3600
    assert refused.headers["RateLimit-Limit"] == "3"
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert 1 <= int(refused.headers["RateLimit-Reset"]) <= 3600


def test_another_key_is_not_limited_by_the_first(limited):
    first, other = Api(limited.url), Api(limited.url, key=OTHER_KEY)
    spend(first)
    assert first.get("/jobs").status_code == 429
    answer = other.get("/jobs")
    assert answer.status_code == 200
    assert answer.headers["RateLimit-Remaining"] == "2"


def test_the_same_key_as_bearer_spends_the_same_budget(limited):
    spend(Api(limited.url))
    bearer = Api(limited.url, key=None)
    bearer.session.headers["Authorization"] = f"Bearer {API_KEY}"
    assert bearer.get("/jobs").status_code == 429


def test_health_and_ready_are_never_limited_and_spend_nothing(limited):
    api = Api(limited.url)
    for path in ("/health", "/ready", "/api/v2/health") * 3:
        answer = api.get(path)
        assert answer.status_code != 429
        assert not any(name in answer.headers for name in HEADERS)
    spend(api)  # the whole budget is still there
    assert api.get("/jobs").status_code == 429
    for path in ("/health", "/ready", "/api/v2/health"):
        assert api.get(path).status_code != 429
        assert Api(limited.url, key=None).get(path).status_code != 429


def test_a_v2_path_gets_the_v2_envelope_on_429(limited):
    api = Api(limited.url)
    spend(api, "/api/v2/jobs")
    refused = api.get("/api/v2/jobs")
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "too_many_requests" and error["message"]
    assert error["details"]["limit"] == RATE
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["RateLimit-Remaining"] == "0"


def test_refused_keys_spend_nothing(limited):
    stranger = Api(limited.url, key="not-a-key-of-this-server")
    for _ in range(3):
        assert stranger.get("/jobs").status_code == 401
    spend(Api(limited.url))


def test_a_public_endpoint_is_limited_per_address_whatever_key_is_shown(limited):
    # /metrics is public here: keys are not checked there, so made-up ones buy nothing.
    for n in range(3):
        assert Api(limited.url, key=f"made-up-key-{n}").get("/metrics").status_code == 200
    assert Api(limited.url, key="made-up-key-3").get("/metrics").status_code == 429
    assert Api(limited.url).get("/jobs").status_code == 200  # the key's budget is its own


def test_no_limit_and_no_headers_without_rate_limit(service, api):
    for _ in range(5):
        answer = api.get("/jobs")
        assert answer.status_code == 200
        assert not any(name in answer.headers for name in HEADERS)

"""Throttling repeated authentication failures."""
from cylindria.web.throttle import FailureThrottle


def test_an_address_is_throttled_after_the_limit_and_others_are_not():
    throttle = FailureThrottle(limit=3, window=60)
    for _ in range(2):
        throttle.record_failure("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") is None
    throttle.record_failure("10.0.0.1")
    assert 1 <= throttle.retry_after("10.0.0.1") <= 61
    assert throttle.retry_after("10.0.0.2") is None


def test_failures_age_out_of_the_window():
    throttle = FailureThrottle(limit=1, window=0.0)
    throttle.record_failure("a")
    assert throttle.retry_after("a") is None


def test_memory_is_bounded_under_a_spray_of_addresses():
    throttle = FailureThrottle(limit=5, window=60, max_addresses=100)
    for n in range(1000):
        throttle.record_failure(f"addr{n}")
    assert len(throttle._failures) == 100

"""--rate-limit: requests per API key (per client address where no key is checked), by
Flask-Limiter, answered as the contract's 429 with Retry-After and the RateLimit-* headers."""
from __future__ import annotations

import logging
import math
import time

from flask import Flask, request
from flask_limiter import Limiter, RateLimitExceeded

from cylindria.web.auth import PUBLIC_ENDPOINTS, current_client, fleet_call
from cylindria.web.errors import error_response

logger = logging.getLogger(__name__)


def rate_key() -> str:
    """Whose budget a request spends: the client the key check named (a key's name, or a
    JWT's subject), else, where no key is checked, the client's address (a made-up key on a
    public endpoint buys no budget of its own)."""
    client = current_client()
    if client is not None:
        return f"client:{client.name}"
    return f"address:{request.remote_addr or '?'}"


def exempt() -> bool:
    """Probes spend nothing: they must answer whatever a client has spent (the contract
    exempts /health and /ready, the endpoints no key is needed for); nor does another node's
    call (its client spent its budget on the node it asked)."""
    return request.endpoint in PUBLIC_ENDPOINTS or fleet_call()


def seconds_left(limiter: Limiter) -> int:
    """Seconds until this request's window resets (at least 1)."""
    reset_at, _ = limiter.current_limit.window
    return max(1, math.ceil(reset_at - time.time()))


def too_many_requests(limiter: Limiter, rate: str):
    """The 429, in the shape of the API surface asked (v2's envelope under /api/v2)."""
    wait = seconds_left(limiter)
    return error_response(429, "too_many_requests",
                          f"rate limit of {rate} reached; try again in {wait} s",
                          {"limit": rate, "retry_after": wait}, headers={"Retry-After": str(wait)})


def add_headers(limiter: Limiter, response):
    """RateLimit-Limit, -Remaining and -Reset (seconds, as the IETF draft has them) on every
    answer the limit applied to. Flask-Limiter's own headers are off: it puts Retry-After on
    every answer and stretches a 503's Retry-After to the end of the window."""
    current = limiter.current_limit
    if current is not None:
        response.headers["RateLimit-Limit"] = str(current.limit.amount)
        response.headers["RateLimit-Remaining"] = str(max(0, current.remaining))
        response.headers["RateLimit-Reset"] = str(seconds_left(limiter))
    return response


def init_app(app: Flask, rate: str | None) -> Limiter | None:
    """Limit every endpoint but the probes to `rate` (like 120/minute) per client; None: off.

    Call after auth.init_app: the limiter's before_request must run after the key check,
    so refused requests spend nothing and the key function knows the key was good."""
    if not rate:
        return None
    # One budget per client across all endpoints (an application limit), not one per route.
    limiter = Limiter(key_func=rate_key, application_limits=[rate],
                      storage_uri="memory://", strategy="fixed-window", headers_enabled=False)
    limiter.request_filter(exempt)
    limiter.init_app(app)
    app.register_error_handler(RateLimitExceeded, lambda exc: too_many_requests(limiter, rate))
    app.after_request(lambda response: add_headers(limiter, response))
    return limiter

"""Response headers both OpenAPI surfaces document (Cylindria's own and the Comfy API v2)."""
from __future__ import annotations

RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again",
                               "required": True, "schema": {"type": "integer", "minimum": 0}}}
# With --rate-limit, on every answer the limit applies to (all but /health and /ready).
RATE_LIMIT = {
    "RateLimit-Limit": {"description": "Requests per window (--rate-limit)",
                        "schema": {"type": "integer", "minimum": 1}},
    "RateLimit-Remaining": {"description": "Requests left in this window",
                            "schema": {"type": "integer", "minimum": 0}},
    "RateLimit-Reset": {"description": "Seconds until this window ends",
                        "schema": {"type": "integer", "minimum": 0}}}


def limit_headers(status: int) -> dict:
    """The headers of a 429 (Retry-After and the rate limit's) or a 503 (Retry-After)."""
    return RETRY_AFTER if status == 503 else {**RETRY_AFTER, **RATE_LIMIT}

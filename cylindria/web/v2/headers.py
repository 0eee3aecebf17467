"""The Comfy API v2's request headers Cylindria reads."""
from __future__ import annotations

import re

from flask import request

from cylindria.web.v2.errors import invalid_request

MAX_IDEMPOTENCY_KEY = 255


def idempotency_key() -> str | None:
    """The Idempotency-Key header: 1 to 255 printable ASCII characters, or absent (400
    invalid_request otherwise, on every operation that documents it)."""
    key = request.headers.get("Idempotency-Key")
    if key is not None and not re.fullmatch(r"[\x21-\x7e]{1,%d}" % MAX_IDEMPOTENCY_KEY, key):
        raise invalid_request(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable "
                              "ASCII characters", "Idempotency-Key")
    return key

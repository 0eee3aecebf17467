"""JSON on the hot paths: every /jobstatus answer, every prompt sent to ComfyUI, every /queue
answer read from it (a busy queue holds every pending prompt: hundreds of KB per poll).

orjson encodes a job's view in a tenth of the time the standard library takes. What orjson
refuses (an integer beyond 64 bits in a workflow, a lone surrogate in an error text, nesting
deeper than 254) is still valid JSON for the standard library, which writes it as ASCII with
\\u escapes instead of failing.
"""
from __future__ import annotations

import json

import orjson


def to_json(value) -> bytes:
    """Compact UTF-8 JSON, keys in their given order."""
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(value, separators=(",", ":")).encode("ascii")


def from_json(data: bytes):
    """Parse JSON from ComfyUI; what orjson refuses but Python accepts (NaN, which ComfyUI's
    json.dumps writes for a float nan) goes to the standard library. Raises ValueError."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:  # a ValueError
        return json.loads(data)

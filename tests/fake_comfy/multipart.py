"""A strict little multipart/form-data parser over an already-read body.

The request log reads every body first, which consumes aiohttp's stream, so /upload/image
parses the cached bytes itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PARAM = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True)
class Part:
    """One form field; `filename` is None for plain text fields."""

    data: bytes
    filename: str | None

    def text(self) -> str:
        """The field as text."""
        return self.data.decode("utf-8", "replace")


def _boundary(content_type: str) -> bytes | None:
    """The boundary parameter of a multipart/form-data content type."""
    if not content_type.lower().startswith("multipart/form-data"):
        return None
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    return match.group(1).encode("latin-1") if match else None


def _part(chunk: bytes) -> tuple[str, Part] | None:
    """(field name, Part) from one chunk between boundaries."""
    head, _, data = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
    for line in head.decode("utf-8", "replace").split("\r\n"):
        if line.lower().startswith("content-disposition:"):
            params = dict(_PARAM.findall(line))
            if "name" in params:
                return params["name"], Part(data.removesuffix(b"\r\n"), params.get("filename"))
    return None


def parse(content_type: str, body: bytes) -> dict[str, Part]:
    """Every field of a multipart body; {} when it is not multipart."""
    boundary = _boundary(content_type)
    if boundary is None:
        return {}
    fields: dict[str, Part] = {}
    for chunk in body.split(b"--" + boundary)[1:-1]:
        parsed = _part(chunk)
        if parsed and parsed[0] not in fields:
            fields[parsed[0]] = parsed[1]
    return fields

"""The webhook signing secret (Standard Webhooks' `whsec_<base64>`): the operator's own
(--webhook-secret-file), or one generated in the data dir (by `service install`, or at the
first start) and shown once, like the API key. It is never logged."""
from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass
from pathlib import Path

from comfy.private import generated_once

SECRET_FILE_NAME = "webhook_secret"
PREFIX = "whsec_"
MIN_BYTES = 24  # Standard Webhooks asks for 24 to 64 random bytes
MAX_BYTES = 64


class BadSecret(ValueError):
    """A secret file Cylindria cannot sign with (the message never holds the secret)."""


@dataclass(frozen=True)
class WebhookSecret:
    secret: str = ""
    path: Path | None = None
    generated: bool = False  # not shown to the operator yet

    def __repr__(self) -> str:  # a secret never reaches a log through a repr
        return f"WebhookSecret(path={self.path}, generated={self.generated})"


def load_secret(data_dir: Path, secret_file: Path | None) -> WebhookSecret:
    """The operator's secret file, else the data dir's (generated when there is none)."""
    if secret_file is not None:
        path = Path(secret_file)
        return WebhookSecret(_valid(_read(path), path), path)
    path = Path(data_dir) / SECRET_FILE_NAME
    text, unshown = generated_once(path, _new_secret, _read)
    return WebhookSecret(_valid(text, path), path, unshown)


def _new_secret() -> str:
    """32 random bytes, as Standard Webhooks writes a secret."""
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def _read(path: Path) -> str:
    """A secret file's text, stripped."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadSecret(f"cannot read the webhook secret file {path}: {exc.__class__.__name__}") from None


def _valid(text: str, path: Path) -> str:
    """`text` if it is a `whsec_` secret of 24 to 64 bytes."""
    try:
        raw = base64.b64decode(text[len(PREFIX):], validate=True) if text.startswith(PREFIX) else b""
    except (binascii.Error, ValueError):
        raw = b""
    if not MIN_BYTES <= len(raw) <= MAX_BYTES:
        raise BadSecret(f"the webhook secret file {path} must hold whsec_ and the base64 of "
                        f"{MIN_BYTES} to {MAX_BYTES} random bytes")
    return text

"""The webhook signing secret (Standard Webhooks' `whsec_<base64>`): the operator's own
(--webhook-secret-file), or one generated in the data dir at the first start and shown once,
like the API key. It is never logged."""
from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass
from pathlib import Path

from comfy.private import tighten, write_private

SECRET_FILE_NAME = "webhook_secret"
UNSHOWN_SUFFIX = ".unshown"  # beside a generated secret no successful start has shown yet
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
    """The operator's secret file, else the data dir's (generated on the first start)."""
    if secret_file is not None:
        return WebhookSecret(_read(Path(secret_file)), Path(secret_file))
    path = Path(data_dir) / SECRET_FILE_NAME
    if tighten(path).exists():
        return WebhookSecret(_read(path), path, _unshown(path).exists())
    secret = PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")
    write_private(_unshown(path), "")  # first: a secret is never kept without its mark
    write_private(path, secret)
    return WebhookSecret(secret, path, True)


def secret_shown(setup: WebhookSecret) -> None:
    """The generated secret was shown: later starts only say where it is."""
    if setup.generated and setup.path is not None:
        _unshown(setup.path).unlink(missing_ok=True)


def _read(path: Path) -> str:
    """A `whsec_` secret of 24 to 64 bytes, from a file."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadSecret(f"cannot read the webhook secret file {path}: {exc.__class__.__name__}") from None
    try:
        raw = base64.b64decode(text[len(PREFIX):], validate=True) if text.startswith(PREFIX) else b""
    except (binascii.Error, ValueError):
        raw = b""
    if not MIN_BYTES <= len(raw) <= MAX_BYTES:
        raise BadSecret(f"the webhook secret file {path} must hold whsec_ and the base64 of "
                        f"{MIN_BYTES} to {MAX_BYTES} random bytes")
    return text


def _unshown(path: Path) -> Path:
    return path.with_name(path.name + UNSHOWN_SUFFIX)

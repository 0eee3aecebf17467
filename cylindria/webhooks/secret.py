"""The webhook signing secret (Standard Webhooks' `whsec_<base64>`): the operator's own
(--webhook-secret-file), or one generated in the data dir (by `service install`, or at the
first start) and shown once, like the API key. In a fleet (PostgreSQL) without a secret file,
the fleet's: the first node's, kept in the database, so that a receiver verifies every node's
deliveries with one secret; each node keeps a copy in its data dir. It is never logged."""
from __future__ import annotations

import base64
import binascii
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path

from comfy.private import generated_once, mark_unshown, write_private
from cylindria.storage import Meta

logger = logging.getLogger(__name__)

SECRET_FILE_NAME = "webhook_secret"
FLEET_META_KEY = "webhook_secret"  # the fleet's secret, in the database's meta table
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


def load_secret(data_dir: Path, secret_file: Path | None, fleet: Meta | None = None) -> WebhookSecret:
    """The operator's secret file, else the data dir's (generated when there is none); with
    `fleet` (the fleet's database) and no secret file, the fleet's (StorageUnavailable if it
    cannot be read)."""
    if secret_file is not None:
        path = Path(secret_file)
        return WebhookSecret(_valid(_read(path), path), path)
    path = Path(data_dir) / SECRET_FILE_NAME
    text, unshown = generated_once(path, _new_secret, _read)
    own = WebhookSecret(_valid(text, path), path, unshown)
    return own if fleet is None else _fleets(own, fleet)


def _fleets(own: WebhookSecret, fleet: Meta) -> WebhookSecret:
    """The fleet's secret: this node's own if it is the first to ask (added only if absent,
    so nodes starting together read the same one), else the first node's, which replaces the
    data dir's copy and is shown once, as a generated one is."""
    shared = _valid(fleet.get(FLEET_META_KEY, own.secret), "the fleet's database (meta)")
    if shared == own.secret:
        return own
    if not own.generated:
        logger.warning("the webhook signing secret in %s is not the fleet's: replaced by the "
                       "fleet's (the first node's, kept in the database), with which receivers "
                       "verify every node's deliveries", own.path)
    mark_unshown(own.path)
    write_private(own.path, shared)
    return WebhookSecret(shared, own.path, True)


def _new_secret() -> str:
    """32 random bytes, as Standard Webhooks writes a secret."""
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def _read(path: Path) -> str:
    """A secret file's text, stripped."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadSecret(f"cannot read the webhook secret file {path}: {exc.__class__.__name__}") from None


def _valid(text: str, path: Path | str) -> str:
    """`text` if it is a `whsec_` secret of 24 to 64 bytes."""
    try:
        raw = base64.b64decode(text[len(PREFIX):], validate=True) if text.startswith(PREFIX) else b""
    except (binascii.Error, ValueError):
        raw = b""
    if not MIN_BYTES <= len(raw) <= MAX_BYTES:
        raise BadSecret(f"the webhook secret file {path} must hold whsec_ and the base64 of "
                        f"{MIN_BYTES} to {MAX_BYTES} random bytes")
    return text

"""API keys: X-API-Key or Authorization: Bearer, compared in constant time, never logged."""
from __future__ import annotations

import hmac
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path

from flask import Flask, request
from flask_httpauth import HTTPTokenAuth

from comfy.private import tighten, write_private
from web.errors import error_response
from web.throttle import FailureThrottle

logger = logging.getLogger(__name__)

KEY_FILE_NAME = "api_key"
UNSHOWN_SUFFIX = ".unshown"  # beside the key file while no successful start has shown its key
PUBLIC_ENDPOINTS = frozenset({"status.health", "status.ready", "v2_health"})


@dataclass(frozen=True)
class KeySetup:
    """The keys in force and where a generated one lives."""

    keys: tuple
    key_file: Path | None = None
    generated: bool = False


def resolve_keys(configured: tuple, no_auth: bool, data_dir: Path) -> KeySetup:
    """Configured keys, or the data dir's generated key (made on first start)."""
    if no_auth:
        return KeySetup(())
    if configured:
        return KeySetup(tuple(configured))
    path = Path(data_dir) / KEY_FILE_NAME
    if tighten(path).exists():
        # One key per line (or comma separated), so a service can be given several.
        text = path.read_text(encoding="utf-8").replace("\n", ",")
        keys = tuple(k.strip() for k in text.split(",") if k.strip())
        if keys:  # a generated key whose start failed before showing it is shown by the next
            return KeySetup(keys, path, _unshown(path).exists())
    key = secrets.token_urlsafe(32)
    write_private(_unshown(path), "")  # first: a key is never kept without its mark
    write_private(path, key)
    return KeySetup((key,), path, True)


def key_shown(setup: KeySetup) -> None:
    """The generated key has been shown to the operator: later starts only say where it is."""
    if setup.generated:
        _unshown(setup.key_file).unlink(missing_ok=True)


def _unshown(key_file: Path) -> Path:
    """The mark of a generated key not shown yet."""
    return key_file.with_name(key_file.name + UNSHOWN_SUFFIX)


class PresentedKey:
    """What a client presented, in the shape flask-httpauth reads (lighter than werkzeug's
    Authorization, which costs more than the rest of a /jobstatus answer to build)."""

    __slots__ = ("token",)
    username = None
    type = "bearer"

    def __init__(self, token: str):
        self.token = token


class ApiKeyAuth(HTTPTokenAuth):
    """A token auth that reads the key from `X-API-Key` or `Authorization: Bearer`."""

    def get_auth(self):
        """The presented key, or None."""
        key = request.headers.get("X-API-Key")
        if key is None:
            scheme, _, key = request.headers.get("Authorization", "").strip().partition(" ")
            if scheme.lower() != "bearer":
                return None
        return PresentedKey(key.strip())


def key_matches(candidate: str | None, keys: tuple[bytes, ...]) -> bool:
    """Constant-time comparison against every (encoded) key: no early exit that would leak which."""
    if not candidate:
        return False
    given = candidate.encode("utf-8", "surrogateescape")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key)
    return matched


def init_app(app: Flask, setup: KeySetup, no_auth: bool, metrics_public: bool = False) -> None:
    """Guard every endpoint but /health and /ready (and /metrics, if made public)."""
    public = PUBLIC_ENDPOINTS | ({"meta.metrics"} if metrics_public else set())
    throttle = FailureThrottle()
    auth = ApiKeyAuth(scheme="Bearer", realm="Cylindria")
    app.extensions["cylindria_throttle"] = throttle
    encoded_keys = tuple(key.encode("utf-8") for key in setup.keys)

    @auth.verify_token
    def verify(token):
        return "client" if key_matches(token, encoded_keys) else None

    @auth.error_handler
    def unauthorized(status):
        throttle.record_failure(request.remote_addr or "?")
        return error_response(401, "unauthorized",
                              "missing or wrong API key: send it as X-API-Key or Authorization: Bearer")

    guard = auth.login_required(lambda: None)  # built once: flask-httpauth's check, then nothing

    @app.before_request
    def require_key():
        current = request._get_current_object()  # one proxy lookup instead of two
        if no_auth or current.endpoint in public:
            return None
        wait = throttle.retry_after(current.remote_addr or "?")
        if wait is not None:
            return error_response(429, "too_many_requests",
                                  "too many failed authentication attempts; try again later",
                                  headers={"Retry-After": str(wait)})
        return guard()

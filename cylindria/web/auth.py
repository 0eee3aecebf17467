"""API keys: X-API-Key or Authorization: Bearer, compared in constant time, never logged.

A key may be named (`name:key` in the key file or --api-key; `name:key:own` for a key that
sees and cancels only the jobs it submitted): the name, never the key, is what logs, metrics
and jobs (`submitted_by`) show. An unnamed key is shown as `key-<8 hex of its SHA-256>`. With
--jwt-*, a Bearer token that is a valid JWT is accepted too, as client `jwt:<sub>` (cylindria/web/tokens.py)."""
from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from flask import Flask, g, request
from flask_httpauth import HTTPTokenAuth
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RoutingException

from comfy.private import generated_once
from cylindria.fleet.credential import ENVIRON_HEADER as ENVIRON_FLEET_HEADER
from cylindria.web.errors import error_response
from cylindria.web.throttle import FailureThrottle

logger = logging.getLogger(__name__)

KEY_FILE_NAME = "api_key"
PUBLIC_ENDPOINTS = frozenset({"status.health", "status.ready", "v2_health"})
# The nodes' internal endpoints (cylindria/web/internal.py): the fleet credential only, never
# an API key (the serving loop's key check too lets a body in on the credential alone).
FLEET_ENDPOINTS = frozenset({"internal.fleet_output", "internal.fleet_submit"})
FLEET_CALL = "cylindria_fleet_call"  # flask.g: the request is another node's, with the credential
CLIENT_RECORD = "cylindria_client_record"  # flask.g: the Client the request is from


UNAUTHORIZED = "missing or wrong API key: send it as X-API-Key or Authorization: Bearer"
THROTTLED = "too many failed authentication attempts; try again later"

NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
ENVIRON_CLIENT = "cylindria.client"  # WSGI environ key: the client's name, for the access log


@dataclass(frozen=True)
class Client:
    """Who a request comes from: a key's name (or `jwt:<sub>` for a JWT), never the key."""

    name: str
    own: bool = False  # sees and cancels only the jobs it submitted


@dataclass(frozen=True)
class KeySetup:
    """The keys in force (the secrets alone), who each one is, and where a generated one lives."""

    keys: tuple
    key_file: Path | None = None
    generated: bool = False
    clients: tuple = ()  # a Client per key, in the same order

    def __post_init__(self):
        if len(self.clients) != len(self.keys):  # keys given bare: each is its own client
            object.__setattr__(self, "clients", tuple(Client(unnamed(k)) for k in self.keys))


class BadKeyEntry(ValueError):
    """A key entry that cannot be used (the message never holds the key)."""


def unnamed(key: str) -> str:
    """The name shown for a key without one: stable, and no clue to the key itself."""
    return "key-" + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def parse_entries(entries) -> KeySetup:
    """Keys from entries `key`, `name:key` or `name:key:own`."""
    keys, clients = [], []
    for number, entry in enumerate(entries, start=1):
        parts = entry.strip().split(":")
        if len(parts) == 1:
            key, client = parts[0], Client(unnamed(parts[0]))
        elif len(parts) == 2 or (len(parts) == 3 and parts[2] == "own"):
            key, client = parts[1], Client(parts[0], own=len(parts) == 3)
            if not NAME.fullmatch(parts[0]):
                raise BadKeyEntry(f"key entry {number}: a name is 1 to 64 of A-Z a-z 0-9 _ . @ -")
        else:
            raise BadKeyEntry(f"key entry {number}: write key, name:key or name:key:own")
        if len(key) < 8:
            raise BadKeyEntry(f"key entry {number}: a key needs at least 8 characters")
        keys.append(key)
        clients.append(client)
    names = [c.name for c in clients]
    if len(set(names)) != len(names):
        raise BadKeyEntry("two keys have the same name")
    return KeySetup(tuple(keys), clients=tuple(clients))


def resolve_keys(configured: tuple, no_auth: bool, data_dir: Path) -> KeySetup:
    """Configured keys, or the data dir's generated key (made on first start)."""
    if no_auth:
        return KeySetup(())
    if configured:
        return parse_entries(configured)
    path = Path(data_dir) / KEY_FILE_NAME
    entries, unshown = generated_once(path, lambda: secrets.token_urlsafe(32), _entries)
    parsed = parse_entries(entries)
    return KeySetup(parsed.keys, path, unshown, parsed.clients)


def _entries(key_file: Path) -> list[str]:
    """The key file's entries: one per line, or comma separated (a service may have several)."""
    text = key_file.read_text(encoding="utf-8").replace("\n", ",")
    return [k.strip() for k in text.split(",") if k.strip()]


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
        return presented_key(request.environ)


def presented_key(environ: dict) -> PresentedKey | None:
    """The key a request's headers present (read from the WSGI environ: the request's
    header view is one more object to build per request)."""
    key = presented(environ.get("HTTP_X_API_KEY"), environ.get("HTTP_AUTHORIZATION"))
    return None if key is None else PresentedKey(key)


def presented(api_key: str | None, authorization: str | None) -> str | None:
    """The key sent as X-API-Key, else as Authorization: Bearer; None if neither."""
    if api_key is None:
        scheme, _, api_key = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
    return api_key.strip()


def key_index(candidate: str | None, keys: tuple[bytes, ...]) -> int | None:
    """Which (encoded) key this is, compared in constant time against every key: no early
    exit that would leak which, or how many characters matched."""
    if not candidate:
        return None
    given = candidate.encode("utf-8", "surrogateescape")
    found = None
    for index, key in enumerate(keys):
        if hmac.compare_digest(given, key) and found is None:
            found = index
    return found


class Identify:
    """Who a presented key or token is (a Client), or None."""

    def __init__(self, setup: KeySetup, tokens=None):
        self.setup, self.tokens = setup, tokens
        self.encoded_keys = tuple(key.encode("utf-8") for key in setup.keys)

    def __call__(self, token: str | None, cached: bool = False) -> Client | None:
        """`cached`: a JWT is checked against the keys already fetched only (never waits)."""
        index = key_index(token, self.encoded_keys)
        if index is not None:
            return self.setup.clients[index]
        if self.tokens is not None and token and token.count(".") == 2:
            return self.tokens.client(token, cached=cached)
        return None


class HeaderCheck:
    """The key check of a request from its headers alone, before its body is read: the
    serving loop calls it, so it never waits (a JWT is checked against cached keys)."""

    def __init__(self, url_map, public: frozenset, identify: Identify, fleet=None):
        self.adapter = url_map.bind("cylindria")
        self.public, self.identify, self.fleet = public, identify, fleet

    def allowed(self, method: str, path: str, api_key: str | None,
                authorization: str | None, fleet_credential: str | None = None) -> bool:
        """True for a public endpoint, a browser's OPTIONS, or a valid key (`path`:
        normalized as the app sees it); for a nodes' internal endpoint, the fleet credential
        and nothing else."""
        if method == "OPTIONS":
            return True
        endpoint = self._endpoint(method, path)
        if endpoint in FLEET_ENDPOINTS:
            return self.fleet is not None and self.fleet.accepts(fleet_credential)
        if endpoint in self.public:
            return True
        return self.identify(presented(api_key, authorization), cached=True) is not None

    def _endpoint(self, method: str, path: str) -> str | None:
        """The endpoint this request goes to; None for none (the app asks for a key)."""
        try:
            return self.adapter.match(path, method)[0]
        except (HTTPException, RoutingException):
            return None


def current_client() -> Client | None:
    """Who the request being answered comes from (None: a public endpoint, or --no-auth)."""
    return g.get(CLIENT_RECORD)


def fleet_call() -> bool:
    """Whether the request being answered is another node's (it showed the fleet credential)."""
    return g.get(FLEET_CALL, False)


def init_app(app: Flask, setup: KeySetup, no_auth: bool, metrics_public: bool = False,
             tokens=None, public_extra: frozenset = frozenset(), fleet=None) -> None:
    """Guard every endpoint but /health and /ready (and /metrics, if made public, and the
    endpoints of `public_extra`). `tokens`: a JWT verifier (cylindria/web/tokens.py) whose valid
    tokens are accepted beside the keys. `fleet`: the fleet credential (a FleetCredential),
    the only thing the FLEET_ENDPOINTS accept, with or without --no-auth."""
    public = PUBLIC_ENDPOINTS | ({"meta.metrics"} if metrics_public else set()) | public_extra
    throttle = FailureThrottle()
    auth = ApiKeyAuth(scheme="Bearer", realm="Cylindria")
    app.extensions["cylindria_throttle"] = throttle
    identify = Identify(setup, tokens)
    app.extensions["cylindria_header_check"] = None if no_auth else \
        HeaderCheck(app.url_map, public, identify, fleet)

    @auth.verify_token
    def verify(token):
        return identify(token)

    @auth.error_handler
    def unauthorized(status):
        address = request.remote_addr or "?"
        wait = throttle.retry_after(address)
        if wait is not None:  # a throttled address's wrong keys are not counted: they wait
            return error_response(429, "too_many_requests", THROTTLED,
                                  headers={"Retry-After": str(wait)})
        throttle.record_failure(address)
        return error_response(401, "unauthorized", UNAUTHORIZED)

    @app.before_request
    def require_key():
        # flask-httpauth's login_required, step by step: its wrapper asks current_app and
        # request through their proxies five times, a third of what a /jobstatus costs here.
        current = request._get_current_object()  # one proxy lookup instead of several
        environ = current.environ
        if current.endpoint in FLEET_ENDPOINTS:
            return fleet_checked(environ)
        if no_auth or current.endpoint in public:
            return None
        if current.method == "OPTIONS":
            return None  # let through unchecked, as login_required does (a CORS preflight)
        # The key is checked first: the throttle answers wrong keys only (unauthorized), so
        # a client sharing an address with someone guessing keys is never locked out.
        presented = presented_key(environ)
        client = verify(presented.token) if presented is not None else None
        if client is None:
            return auth.auth_error_callback(401)  # flask-httpauth's answer: WWW-Authenticate
        g.cylindria_client_record = client  # current_client(); the rate limit's key
        environ[ENVIRON_CLIENT] = client.name
        return None

    def fleet_checked(environ):
        """None for a call with the fleet credential; else the answer to a wrong key."""
        if fleet is None or not fleet.accepts(environ.get(ENVIRON_FLEET_HEADER)):
            return auth.auth_error_callback(401)
        g.setdefault(FLEET_CALL, True)
        environ[ENVIRON_CLIENT] = "fleet"
        return None

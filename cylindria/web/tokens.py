"""Optional JWT bearer tokens beside API keys (--jwt-jwks-url or --jwt-jwks-file): verified
with PyJWT against the keys of a JWKS, the algorithm taken from an allowlist (EdDSA by
default; `none` and HS* never, so a public key can never be used as an HMAC secret), the
issuer and audience checked when configured, `exp` required. The token's subject is the
client `jwt:<sub>`: a namespace of its own, never a key's name (a key name has no colon), so
a token cannot act as a key's client. With --jwt-own-claim, a token whose claim holds the
value is an own client (sees only its own jobs and assets).

The JWKS is cached and fetched again every `refresh` seconds; a token naming a key id the
cache does not hold triggers one early fetch at most every 30 s, so a key rotation is picked
up at once but a flood of made-up key ids cannot make Cylindria hammer the JWKS server.
One thread fetches at a time, outside the lock: meanwhile the others verify with the cached
keys (a token naming a key id they lack is refused, not held until the fetch ends), so a
slow or dead JWKS server delays no request but the one that fetches.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Callable

import jwt
import requests
from jwt import PyJWK
from jwt.exceptions import InvalidTokenError

from cylindria.web.auth import Client

logger = logging.getLogger(__name__)

REFRESH = 600.0  # seconds between fetches of the JWKS
UNKNOWN_KID_EVERY = 30.0  # seconds: at most one early fetch for a key id not in the cache
FETCH_TIMEOUT = 5.0
LEEWAY = 30  # seconds of clock skew allowed on exp and nbf
MAX_TOKEN = 8192  # characters: a longer bearer token is not looked at
SUBJECT_PREFIX = "jwt:"  # a token's client name: jwt:<sub>


class JwksUnavailable(Exception):
    """The JWKS could not be read (its message says why; no token is accepted meanwhile
    unless an earlier fetch succeeded)."""


def load_jwks(url: str | None, path: Path | None) -> dict:
    """The JWKS document, from its URL or its file."""
    try:
        if path is not None:
            document = json.loads(Path(path).read_text(encoding="utf-8"))
        else:
            response = requests.get(url, timeout=FETCH_TIMEOUT)
            response.raise_for_status()
            document = response.json()
    except (OSError, ValueError, requests.RequestException) as exc:
        raise JwksUnavailable(f"{type(exc).__name__}: {exc}"[:300]) from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksUnavailable("not a JWKS: no 'keys' list")
    return document


class TokenVerifier:
    """client(token): who a valid token is (subject(token): its `sub`), else None."""

    def __init__(self, *, jwks_url: str | None = None, jwks_file: Path | None = None,
                 issuer: str | None = None, audience: str | None = None,
                 algorithms: tuple = ("EdDSA",), refresh: float = REFRESH,
                 clock: Callable[[], float] = time.monotonic, load=load_jwks,
                 own_claim: tuple | None = None):
        self.jwks_url, self.jwks_file = jwks_url, jwks_file
        self.issuer, self.audience = issuer, audience
        self.own_claim = own_claim  # (claim, value) that makes a token's client own
        self.algorithms = tuple(algorithms)
        self.refresh = refresh
        self.clock = clock
        self._load = load
        self._lock = threading.Lock()
        self._keys: dict[str | None, dict] = {}  # kid -> JWK (None: a key without a kid)
        self._fetched_at = float("-inf")
        self._early_at = float("-inf")
        self._fetching = False  # one fetch at a time; the others use the cache meanwhile
        self.fetches = 0

    def client(self, token: str, cached: bool = False) -> Client | None:
        """The client `jwt:<sub>` of a valid token (own if it holds the own claim), else None.
        `cached`: checked against the keys already fetched, never waiting for a fetch."""
        claims = self._claims(token, cached)
        if claims is None:
            return None
        return Client(SUBJECT_PREFIX + claims["sub"], self._own(claims))

    def subject(self, token: str, cached: bool = False) -> str | None:
        """The token's `sub` if it is a valid JWT for this host, else None (never raises)."""
        claims = self._claims(token, cached)
        return None if claims is None else claims["sub"]

    def _own(self, claims: dict) -> bool:
        """Whether the own claim holds its value: a word of a string, or an item of a list."""
        if self.own_claim is None:
            return False
        name, value = self.own_claim
        held = claims.get(name)
        if isinstance(held, str):
            return value in held.split()
        return isinstance(held, list) and value in held

    def _claims(self, token: str, cached: bool = False) -> dict | None:
        """The claims of a valid token with a usable `sub`, else None (never raises)."""
        if len(token) > MAX_TOKEN:
            return None
        try:
            header = jwt.get_unverified_header(token)
        except InvalidTokenError:
            return None
        algorithm = header.get("alg")
        if algorithm not in self.algorithms:
            return None  # none, HS*, or one the operator did not allow
        jwk = self._cached_key(header.get("kid")) if cached else self._key(header.get("kid"))
        if jwk is None or jwk.get("alg", algorithm) != algorithm:
            return None
        try:
            key = PyJWK(jwk, algorithm=algorithm)
            claims = jwt.decode(
                token, key, algorithms=[algorithm], issuer=self.issuer, audience=self.audience,
                leeway=LEEWAY, options={"require": ["exp", "sub"] + (["iss"] if self.issuer else [])
                                       + (["aud"] if self.audience else []),
                                       "verify_aud": self.audience is not None})
        except (jwt.PyJWTError, ValueError, TypeError):  # the caller chose the header: any
            return None  # key or token PyJWT will not use is a bad token, never a 500
        subject = claims.get("sub")
        return claims if isinstance(subject, str) and 0 < len(subject) <= 128 \
            and subject.isprintable() else None

    def _cached_key(self, kid) -> dict | None:
        """The cached JWK for this key id; if it is not cached, a fetch (when one is due) runs
        on a thread of its own, for the client's next try."""
        now = self.clock()
        with self._lock:
            jwk = self._keys.get(kid)
            due = jwk is None and not self._fetching and (
                now - self._fetched_at >= self.refresh or now - self._early_at >= UNKNOWN_KID_EVERY)
        if due:
            self.warm(kid)
        return jwk

    def warm(self, kid=None, wait: bool = False) -> None:
        """Fetch the JWKS if a fetch is due (_key decides again under its lock: at most one
        fetch runs): on a thread of its own, or at once with `wait` (a server's start)."""
        if wait:
            self._key(kid)
            return
        threading.Thread(target=self._key, args=(kid,), name="jwks-fetch", daemon=True).start()

    def _key(self, kid) -> dict | None:
        """The JWK for this key id, fetching the JWKS when it is due, or early (at most once
        per UNKNOWN_KID_EVERY) for a key id the cache does not know; while another thread
        fetches, the cached keys."""
        now = self.clock()
        with self._lock:
            due = now - self._fetched_at >= self.refresh
            early = not due and kid not in self._keys and now - self._early_at >= UNKNOWN_KID_EVERY
            if self._fetching or not (due or early):
                return self._keys.get(kid)
            self._fetching = True
            if early:
                self._early_at = now
        keys = None
        try:
            keys = self._fetch()
        finally:
            with self._lock:
                self._fetching = False
                if keys is None:  # failed: the old keys stay, and a fetch is tried in 30 s
                    self._fetched_at = now - self.refresh + UNKNOWN_KID_EVERY
                else:
                    self._keys, self._fetched_at = keys, now
                cached = self._keys
        return cached.get(kid)

    def _fetch(self) -> dict | None:
        """The JWKS's keys by key id, or None when it cannot be read (run outside the lock)."""
        self.fetches += 1
        try:
            document = self._load(self.jwks_url, self.jwks_file)
        except JwksUnavailable as exc:
            logger.warning("JWKS %s unavailable: %s", self.jwks_url or self.jwks_file, exc)
            return None
        return {key.get("kid"): key for key in document["keys"] if isinstance(key, dict)}


def verifier_for(config) -> TokenVerifier | None:
    """The verifier --jwt-* asks for, or None when JWTs are not accepted."""
    if not (config.jwt_jwks_url or config.jwt_jwks_file):
        return None
    return TokenVerifier(jwks_url=config.jwt_jwks_url, jwks_file=config.jwt_jwks_file,
                         issuer=config.jwt_issuer, audience=config.jwt_audience,
                         algorithms=config.jwt_algorithms, own_claim=config.jwt_own_claim)

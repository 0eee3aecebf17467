"""Request bodies before the app sees them (waitress reads a whole body first): a body is
read only for a request whose headers carry a valid key (or that goes to a public endpoint),
and only within a memory budget shared by every body in flight. Its deadline,
--body-timeout, is kept by Service.sweep_slow_clients."""
from __future__ import annotations

import threading

from waitress.utilities import Error

from cylindria.web.app import normalize_path
from cylindria.fleet.credential import HEADER
from cylindria.web.auth import THROTTLED, UNAUTHORIZED

FLEET_HEADER = HEADER.upper().replace("-", "_")  # the fleet credential's, as waitress names it

# A workflow body's peak memory while it is read, parsed and submitted, as a multiple of its
# bytes (measured as the server's RSS for 30 MiB bodies: 9.4x for 180,000 small nodes, 8.4x
# for one long list of numbers, 5x for one long base64 string). An upload goes to temporary
# files: its bytes.
WORKFLOW_COST = 10
UPLOAD_COST = 1
BUSY_RETRY = 5  # seconds a client is told to wait when the budget is spent
KEY_HEADER = "Bearer realm=\"Cylindria\""  # what the app's own 401 says (flask-httpauth)


class KeyRefused(Error):
    """401 from the headers: no valid key for a request with a body (which is not read)."""

    code, reason = 401, "Unauthorized"
    message = UNAUTHORIZED
    headers = (("WWW-Authenticate", KEY_HEADER),)


class Throttled(Error):
    """429: this address sent too many wrong keys (the failure throttle, cylindria/web/throttle.py)."""

    code, reason = 429, "Too Many Requests"
    message = THROTTLED

    def __init__(self, wait: int):
        super().__init__("throttled")
        self.headers = (("Retry-After", str(wait)),)


class Busy(Error):
    """503 busy: the bodies in flight already take the memory budget."""

    code, reason = 503, "Service Unavailable"
    message = "the server is receiving as many request bodies as it has memory for; try again later"
    headers = (("Retry-After", str(BUSY_RETRY)),)


def is_upload(path: str | None) -> bool:
    """True for the asset endpoints, Cylindria's and the Comfy API v2's (case-insensitive, as
    every endpoint name)."""
    path = (path or "").lower()
    return any(path == prefix or path.startswith(prefix + "/")
               for prefix in ("/assets", "/api/v2/assets"))


class BodyBudget:
    """The memory that the request bodies in flight may take, shared by every connection;
    each request's share is kept on it (`reserved`) and given back once by release()."""

    def __init__(self, limit: int):
        self.limit = limit
        self.in_use = 0
        self._lock = threading.Lock()  # released from worker threads, taken on the loop's

    def take(self, request, cost: int) -> bool:
        """Add `cost` bytes to what `request` holds, if the budget has them (or holds
        nothing: a body larger than the whole budget is taken alone)."""
        with self._lock:
            if self.in_use and self.in_use + cost > self.limit:
                return False
            self.in_use += cost
            request.reserved = getattr(request, "reserved", 0) + cost
            return True

    def release(self, request) -> None:
        """Give back everything `request` holds (again: nothing)."""
        with self._lock:
            self.in_use -= getattr(request, "reserved", 0)
            request.reserved = 0


class BodyGate:
    """At the end of a request's headers: may its body be read? A refusal is an Error that
    waitress's error task answers (cylindria.service.server.LoggedErrorTask)."""

    def __init__(self, budget: BodyBudget, check=None, throttle=None, trusted_proxy=None):
        self.budget, self.check, self.throttle = budget, check, throttle
        self.trusted_proxy = trusted_proxy

    def admit(self, request) -> Error | None:
        """None to read the body; else why not (no valid key, or no memory for it)."""
        if not (request.content_length or request.chunked):
            return None
        headers = request.headers
        if self.check is not None and not self.check.allowed(
                request.command, normalize_path(request.path), headers.get("X_API_KEY"),
                headers.get("AUTHORIZATION"), headers.get(FLEET_HEADER)):
            return KeyRefused("no valid key")
        return self.grow(request)

    def grow(self, request) -> Error | None:
        """Charge what the body will cost (from Content-Length, or a chunked body's bytes so
        far); Busy when the budget does not have it."""
        size = max(request.content_length, request.body_bytes_received)
        cost = size * (UPLOAD_COST if is_upload(request.path) else WORKFLOW_COST)
        more = cost - getattr(request, "reserved", 0)
        if more <= 0 or self.budget.take(request, more):
            return None
        return Busy("over the in-flight body budget")

    def answer(self, error: Error, addr, headers: dict) -> Error:
        """The error to answer for a refused key: 429 while the address is throttled, else
        the 401, counted as a failure (as the app counts its own)."""
        if not isinstance(error, KeyRefused) or self.throttle is None:
            return error
        address = self.client_address(addr, headers)
        wait = self.throttle.retry_after(address)
        if wait is not None:
            return Throttled(wait)
        self.throttle.record_failure(address)
        return error

    def client_address(self, addr, headers: dict) -> str:
        """The client's address as the app sees it (waitress takes the last X-Forwarded-For
        entry from a trusted proxy: one proxy is trusted)."""
        peer = addr[0] if isinstance(addr, tuple) else "?"
        if self.trusted_proxy is None or peer != self.trusted_proxy:
            return peer
        forwarded = headers.get("X_FORWARDED_FOR", "").rsplit(",", 1)[-1].strip()
        return forwarded or peer

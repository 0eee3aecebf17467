"""Request bodies cannot hold the server: a body must arrive within the body timeout, a body
without a valid key is refused from its headers (never read), and bodies in flight share a
memory budget (beyond it: 503 busy). Raw sockets on loopback; the body timeout is shortened
through Config.body_timeout."""
from __future__ import annotations

import json
import socket

import pytest
import requests

from cylindria.service.server import Service
from tests.conftest import make_config
from tests import workflows
from tests.helpers import API_KEY, Api, wait_for
from tests.test_hostile_clients import Tricklers, closed_by_peer, connect, read_response
from tests.test_jwt import ed25519_key, jwks, jwt_service, signer, token  # noqa: F401 (fixtures)

SLOW_BODIES = 110  # more than the default connection limit (100)
MIB = 1 << 20


def request_head(path: str, length: int | None, key: str | None = API_KEY,
                 method: str = "PUT") -> bytes:
    """The request line and headers of a body request (chunked when `length` is None)."""
    framing = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    auth = f"X-API-Key: {key}\r\n" if key else ""
    return (f"{method} {path} HTTP/1.1\r\nHost: cylindria\r\n{auth}"
            f"Content-Type: application/json\r\n{framing}\r\n\r\n").encode()


def workflow_of_size(size: int) -> bytes:
    """A valid workflow padded with spaces to exactly `size` bytes."""
    body = json.dumps(workflows.core()).encode()
    return body + b" " * (size - len(body))


def health(url: str) -> int:
    """/health's status, or 0 when it is not answered within 5 s."""
    try:
        return Api(url, key=None).get("/health", timeout=5).status_code
    except requests.RequestException:
        return 0


class SlowBodies(Tricklers):
    """Connections that sent full headers with a key, then one body byte every `pause` s."""

    def __init__(self, port: int, count: int, pause: float = 0.5):
        super().__init__(port, count, pause)
        for n, sock in enumerate(self.socks):
            sock.sendall(request_head(f"/startjob/slow-{n}", 100_000) + b"{")

    def run(self) -> None:
        """One more body byte on every connection still open, then a pause."""
        while not self.stop.wait(self.pause):
            for index in list(self.still_open):
                try:
                    self.socks[index].sendall(b" ")
                except OSError:  # the server closed it
                    self.still_open.discard(index)


def test_slow_bodies_are_cut_off_and_health_is_answered_meanwhile(fakes, tmp_path):
    """110 keyed uploads trickling their bodies (more than the connection limit): each is
    closed once the body timeout passes, and /health is answered all along."""
    config = make_config(fakes, tmp_path, body_timeout=1.0)
    with Service(config) as service, SlowBodies(service.port, SLOW_BODIES) as slow:
        wait_for(lambda: health(service.url) == 200, timeout=30,
                 message="/health to be answered beside slow bodies")
        wait_for(lambda: all(closed_by_peer(s, timeout=0.05) for s in slow.socks), timeout=60,
                 interval=0.5, message="every slow body to be cut off")
        assert service.bodies.in_use == 0


@pytest.mark.parametrize("path, length", [
    ("/assets", 90 * MIB), ("/api/v2/assets", 90 * MIB), ("/startjob/x", 5 * MIB),
    ("/assets", None)], ids=["asset", "v2-asset", "workflow", "chunked"])
def test_a_body_without_a_key_is_refused_from_its_headers(service, path, length):
    """Headers and 64 KiB of a large body without a key: the 401 comes while the client has
    sent no more, and the connection is closed (the body was never waited for)."""
    sock = connect(service.port)
    start = b"10000\r\n" if length is None else b""
    sock.sendall(request_head(path, length, key=None) + start + b"x" * 65536)
    status, headers, body = read_response(sock.makefile("rb"))  # bounded by the socket timeout
    assert status == 401, body
    assert headers.get("www-authenticate", "").startswith("Bearer")
    assert headers.get("connection") == "close"
    answer = json.loads(body)
    code = answer["code"] if "code" in answer else answer["error"]["code"]
    assert code == "unauthorized"
    assert closed_by_peer(sock)
    assert service.bodies.in_use == 0


def test_a_public_endpoint_takes_a_body_without_a_key(service):
    """/health stays keyless even with a body."""
    sock = connect(service.port)
    sock.sendall(request_head("/health", 2, key=None, method="GET") + b"{}")
    status, _, _ = read_response(sock.makefile("rb"))
    assert status == 200


def test_refused_bodies_count_as_failed_keys(service):
    """Wrong keys refused from their headers are throttled like any other: after ten, 429."""
    statuses = []
    for n in range(11):
        with connect(service.port) as sock:
            sock.sendall(request_head(f"/startjob/w{n}", 2, key=f"wrong-key-{n:04d}") + b"{}")
            status, headers, _ = read_response(sock.makefile("rb"))
            statuses.append(status)
    assert statuses == [401] * 10 + [429]
    assert int(headers["retry-after"]) >= 1


def held_body(port: int, job_id: str, size: int) -> socket.socket:
    """A keyed workflow upload whose headers and first byte are sent, the rest held back."""
    sock = connect(port)
    sock.sendall(request_head(f"/startjob/{job_id}", size) + b"{")
    return sock


def test_bodies_beyond_the_budget_are_busy_until_one_ends(fakes, tmp_path):
    """A 1 MiB budget: one 100 KiB workflow in flight (it costs 10x) leaves no room for a
    second (503 busy, Retry-After); once the first is answered, the next is admitted."""
    size = 100 * 1024
    with Service(make_config(fakes, tmp_path, max_inflight_body_mb=1)) as service:
        first = held_body(service.port, "first", size)
        wait_for(lambda: service.bodies.in_use > 0, message="the first body to be admitted")
        with connect(service.port) as second:
            second.sendall(request_head("/startjob/second", size) + workflow_of_size(size))
            status, headers, body = read_response(second.makefile("rb"))
        assert (status, json.loads(body)["code"]) == (503, "busy")
        assert int(headers["retry-after"]) >= 1
        first.sendall(workflow_of_size(size)[1:])
        status, _, _ = read_response(first.makefile("rb"))
        assert status == 201
        first.close()
        wait_for(lambda: service.bodies.in_use == 0, message="the budget to be given back")
        with connect(service.port) as third:
            third.sendall(request_head("/startjob/third", size) + workflow_of_size(size))
            status, _, _ = read_response(third.makefile("rb"))
        assert status == 201


def test_the_budget_is_given_back_on_every_path(fakes, tmp_path):
    """Answered, refused (401, 413, busy), closed by the client mid-body, cut off by the body
    timeout: afterwards nothing of the budget is held."""
    config = make_config(fakes, tmp_path, body_timeout=1.0, max_body_bytes=200 * 1024)
    with Service(config) as service:
        answered = Api(service.url).put("/startjob/ok", data=workflow_of_size(1000))
        assert answered.status_code == 201
        too_large = Api(service.url).put("/startjob/big", data=workflow_of_size(300 * 1024))
        assert too_large.status_code == 413
        unkeyed = Api(service.url, key=None).put("/startjob/nokey", data=workflow_of_size(1000))
        assert unkeyed.status_code == 401
        left = held_body(service.port, "left", 1000)
        wait_for(lambda: service.bodies.in_use > 0, message="the body to be admitted")
        left.close()
        wait_for(lambda: service.bodies.in_use == 0, message="a closed body to give back")
        stalled = held_body(service.port, "stalled", 1000)
        wait_for(lambda: service.bodies.in_use > 0, message="the body to be admitted")
        assert closed_by_peer(stalled, timeout=30), "the stalled body was never cut off"
        wait_for(lambda: service.bodies.in_use == 0, message="a cut body to give back")
        stalled.close()


def test_a_jwt_is_checked_from_the_headers_against_the_cached_keys(jwt_service, signer):
    """A valid JWT's body is read (201); one signed by a key the JWKS does not hold is
    refused from its headers, its body never waited for."""
    valid = token(signer[0])
    body = workflow_of_size(2000)
    with connect(jwt_service.port) as sock:
        sock.sendall(request_head("/startjob/jwt-ok", len(body), key=None).replace(
            b"\r\n\r\n", f"\r\nAuthorization: Bearer {valid}\r\n\r\n".encode()) + body)
        assert read_response(sock.makefile("rb"))[0] == 201
    forged = token(ed25519_key("k1")[0])
    with connect(jwt_service.port) as sock:
        sock.sendall(request_head("/startjob/jwt-forged", 5 * MIB, key=None).replace(
            b"\r\n\r\n", f"\r\nAuthorization: Bearer {forged}\r\n\r\n".encode()) + b"x" * 65536)
        assert read_response(sock.makefile("rb"))[0] == 401

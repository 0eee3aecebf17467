"""Downloads whose clients never read: they hold no worker thread, are capped per client, and
are cut after --send-timeout without progress (assets, job outputs, the v2 content routes)."""
from __future__ import annotations

import socket

from cylindria.service.server import Service
from tests import workflows
from tests.conftest import make_config
from tests.helpers import Api, wait_for

BIG = 40 * 1024 * 1024  # well past waitress's 16 MiB high watermark
DATA = bytes(range(256)) * (BIG // 256)
KEYS = {"bob": "bob-key-0123456789", "carol": "carol-key-0123456789",
        "alice": "alice-key-0123456789"}


def config_for(fakes, tmp_path, **overrides):
    """Three named clients and few worker threads."""
    return make_config(fakes, tmp_path, api_keys=tuple(f"{n}:{k}" for n, k in KEYS.items()),
                       **overrides)


def as_client(service: Service, name: str) -> Api:
    return Api(service.url, KEYS[name])


def big_asset(service: Service) -> str:
    """Bob's 40 MiB asset: its id."""
    answer = as_client(service, "bob").request("POST", "/assets?name=big.bin", data=DATA)
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def stalled(service: Service, path: str, client: str, byte_range: str | None = None,
            then: bytes = b"") -> socket.socket:
    """A GET whose client reads its status line and nothing more (a tiny receive buffer);
    `then`: bytes pipelined behind the request on the same connection."""
    conn = socket.socket()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    conn.settimeout(30)
    conn.connect(("127.0.0.1", service.port))
    ranged = f"Range: {byte_range}\r\n" if byte_range else ""
    conn.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEYS[client]}\r\n{ranged}\r\n"
                 .encode() + then)
    return conn


def status_of(conn: socket.socket) -> int:
    """The answer's status code, read from its first line (the rest left unread)."""
    head = b""
    while b"\r\n" not in head:
        chunk = conn.recv(64)
        assert chunk, "closed before the status line"
        head += chunk
    return int(head.split(b" ", 2)[1])


def read_to_end(conn: socket.socket) -> int:
    """How many bytes arrive until the server's close (a reset counts as the close)."""
    received = 0
    try:
        while chunk := conn.recv(1 << 20):
            received += len(chunk)
    except ConnectionResetError:
        pass
    return received


def closed_after_status(conn: socket.socket) -> int:
    """The status of an answer whose client then goes away without reading the body."""
    status = status_of(conn)
    conn.close()
    return status


def others_are_served(service: Service) -> None:
    """/health (no key) and Alice's /jobstatus answer while Bob's downloads stall."""
    assert Api(service.url, None).get("/health", timeout=10).status_code == 200
    assert as_client(service, "alice").get("/jobstatus/alicejob", timeout=10).status_code == 200


def test_stalled_asset_downloads_hold_no_worker_thread(fakes, tmp_path):
    with Service(config_for(fakes, tmp_path, threads=4)) as service:
        as_client(service, "alice").put("/startjob/alicejob", json=workflows.core("alicejob"))
        asset = big_asset(service)
        health = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"  # pipelined behind each download
        path, v2_path = f"/assets/{asset}/content", f"/api/v2/assets/{asset}/content"
        conns = [stalled(service, path, "bob", "bytes=0-", health),
                 stalled(service, path, "bob", "bytes=1000-", health),
                 stalled(service, path, "bob", then=health),
                 stalled(service, path, "bob", then=health),
                 stalled(service, path, "carol", "bytes=0-", health),
                 stalled(service, v2_path, "carol", "bytes=7-", health),
                 stalled(service, v2_path, "carol", then=health)]
        # Seven answers begun with four threads: each thread is free once its headers are out.
        assert [status_of(c) for c in conns] == [206, 206, 200, 200, 206, 206, 200]
        others_are_served(service)
        for conn in conns:
            conn.close()


def test_a_clients_downloads_are_capped_and_a_stalled_one_is_cut(fakes, tmp_path):
    config = config_for(fakes, tmp_path, threads=4, max_downloads_per_client=2, send_timeout=1.0)
    with Service(config) as service:
        asset = big_asset(service)
        path = f"/assets/{asset}/content"
        first = stalled(service, path, "bob", "bytes=0-")
        second = stalled(service, path, "bob")
        assert (status_of(first), status_of(second)) == (206, 200)
        bob, alice = as_client(service, "bob"), as_client(service, "alice")
        refused = bob.get(path, headers={"Range": "bytes=0-9"})
        assert refused.status_code == 429, refused.text
        assert refused.json()["code"] == "too_many_downloads"
        assert int(refused.headers["Retry-After"]) > 0
        assert alice.get(path, headers={"Range": "bytes=0-9"}).content == DATA[:10]
        # Bob reads nothing for longer than the send timeout: his downloads are cut, their
        # slots free again.
        wait_for(lambda: bob.get(path, headers={"Range": "bytes=0-9"}).status_code == 206,
                 timeout=30, message="a stalled download to be cut")
        assert read_to_end(first) < BIG  # the server closed it before the end
        first.close()
        second.close()


def test_stalled_output_downloads_hold_no_worker_thread(fakes, tmp_path):
    fake = fakes[0]
    with Service(config_for(fakes, tmp_path, threads=3)) as service:
        bob = as_client(service, "bob")
        as_client(service, "alice").put("/startjob/alicejob", json=workflows.core("alicejob"))
        bob.put("/startjob/bigout", json=workflows.core("bigout"))
        [output] = bob.wait_status("bigout", "completed")["outputs"]
        fake.catalogue.files.put("output", output["subfolder"], output["filename"], DATA)
        conns = [stalled(service, "/jobresult/bigout/0", "bob"),
                 stalled(service, "/jobresult/bigout/0", "bob", "bytes=0-"),
                 stalled(service, "/api/v2/assets/bigout~0/content", "bob", "bytes=5-"),
                 stalled(service, "/api/v2/assets/bigout~0/content", "carol")]
        assert [status_of(c) for c in conns] == [200, 206, 206, 200]
        others_are_served(service)
        ranged = bob.get("/jobresult/bigout/0", headers={"Range": f"bytes={BIG - 10}-"})
        assert (ranged.status_code, ranged.content) == (206, DATA[-10:])
        assert ranged.headers["Content-Range"] == f"bytes {BIG - 10}-{BIG - 1}/{BIG}"
        for conn in conns:
            conn.close()


def test_every_way_a_download_ends_gives_its_slot_back(fakes, tmp_path):
    with Service(config_for(fakes, tmp_path, threads=4)) as service:
        bob = as_client(service, "bob")
        small = bytes(range(256)) * 64
        asset = bob.request("POST", "/assets?name=small.bin", data=small).json()
        bob.put("/startjob/out", json=workflows.core("out"))
        bob.wait_status("out", "completed")
        path = f"/assets/{asset['id']}/content"

        def in_flight() -> int:
            return service.app.extensions["cylindria_downloads"].in_flight("bob")

        endings = [
            lambda: bob.get(path).content == small,
            lambda: bob.get(path, headers={"Range": "bytes=1000-1009"}).content == small[1000:1010],
            lambda: bob.request("HEAD", path).status_code == 200,
            lambda: bob.get(path, headers={"If-None-Match": bob.get(path).headers["ETag"]}
                            ).status_code == 304,
            lambda: bob.get(path, headers={"Range": "bytes=99999-"}).status_code == 416,
            lambda: bob.get("/jobresult/out/0").status_code == 200,
            lambda: bob.get("/jobresult/out/0", headers={"Range": "bytes=99999999-"}
                            ).status_code == 416,
            lambda: bob.get("/api/v2/assets/out~0/content", headers={"Range": "bytes=0-7"}
                            ).status_code == 206,
            lambda: closed_after_status(stalled(service, path, "bob", "bytes=0-")) == 206,
        ]
        for number, ending in enumerate(endings):
            assert ending(), number
            wait_for(lambda: in_flight() == 0, message=f"the slot of ending {number} back")

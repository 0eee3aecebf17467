"""A client that never finishes its headers loses its connection; others are served meanwhile."""
import socket

from cylindria.service.server import Service
from tests.conftest import make_config
from tests.helpers import Api, wait_for


def closed_by_server(conn: socket.socket) -> bool:
    try:
        return conn.recv(1) == b""
    except socket.timeout:
        return False
    except OSError:
        return True


def test_trickling_headers_are_cut_off_and_normal_clients_still_served(fakes, tmp_path):
    config = make_config(fakes, tmp_path, header_timeout=1.0, connection_limit=10)
    with Service(config) as service:
        tricklers = []
        for _ in range(10):  # as many as the connection limit
            conn = socket.create_connection(("127.0.0.1", service.port), timeout=0.1)
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            tricklers.append(conn)
        for conn in tricklers:
            conn.sendall(b"a")  # still sending: never idle, so waitress alone would keep it
        assert wait_for(lambda: Api(service.url).get("/health", timeout=5).status_code == 200,
                        timeout=30)
        assert wait_for(lambda: all(closed_by_server(c) for c in tricklers), timeout=30)
        for conn in tricklers:
            conn.close()

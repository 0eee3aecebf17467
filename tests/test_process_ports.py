"""The test harness's Cylindria process moves to another port when its first start finds the
port it was given taken (free_ports saw it free, another process of the run got it first)."""
from __future__ import annotations

import socket

from tests.conftest import start_fakes
from tests.processes import CylindriaProcess


def test_a_first_start_on_a_taken_port_moves_to_a_free_one(tmp_path):
    [fake] = start_fakes(1)
    node = CylindriaProcess(fake.url, tmp_path / "data", gpus=1)
    node.args += ["--advertise-url", node.url]
    taken = node.port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        try:
            node.start()
            assert node.port != taken and node.url == f"http://127.0.0.1:{node.port}"
            assert node.args[node.args.index("--port") + 1] == str(node.port)
            assert node.args[node.args.index("--advertise-url") + 1] == node.url
        finally:
            node.stop()
            fake.close()

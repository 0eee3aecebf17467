"""`python -m tests.fake_comfy` as a real process: it serves, and a busy port gives one line."""
from __future__ import annotations

import socket
import subprocess
import sys

import requests

from tests.helpers import free_ports, wait_for
from tests.processes import ROOT, terminate

PREFIX = "python -m tests.fake_comfy: error: cannot listen on"


def fake_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the fake's command line to its end."""
    return subprocess.run([sys.executable, "-m", "tests.fake_comfy", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def taken_port(port: int = 0) -> socket.socket:
    """A loopback socket listening on `port` (0: any), so nothing else can bind it."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", port))
    holder.listen()
    return holder


def test_busy_port_exits_2_with_one_line():
    with taken_port() as holder:
        port = holder.getsockname()[1]
        result = fake_cli("--port", str(port))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{PREFIX} 127.0.0.1:{port}: "), lines[0]


def test_busy_second_port_is_the_one_named():
    base = free_ports(2)
    with taken_port(base + 1):
        result = fake_cli("--port", str(base), "--count", "2")
    assert result.returncode == 2
    assert result.stdout.splitlines() == [f"fake ComfyUI 0 listening on http://127.0.0.1:{base}"]
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{PREFIX} 127.0.0.1:{base + 1}: "), lines


def test_serves_until_terminated():
    base = free_ports(2)
    proc = subprocess.Popen([sys.executable, "-m", "tests.fake_comfy", "--port", str(base),
                             "--count", "2"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for port in (base, base + 1):
            wait_for(lambda: answers(f"http://127.0.0.1:{port}/queue"), timeout=60,
                     message=f"the fake on port {port}")
    finally:
        terminate(proc)
    out, err = proc.communicate(timeout=10)
    assert out.splitlines() == [f"fake ComfyUI {n} listening on http://127.0.0.1:{base + n}"
                                for n in (0, 1)]
    assert "Traceback" not in err
    if sys.platform != "win32":  # SIGTERM ends the wait; Windows' terminate() is a kill
        assert proc.returncode == 0


def test_catalogue_flags_shape_each_instance():
    base = free_ports(2)
    proc = subprocess.Popen([sys.executable, "-m", "tests.fake_comfy", "--port", str(base),
                             "--count", "2", "--custom-node", "1:CylCustomInvert",
                             "--without-node", "0:CylFail", "--load-seconds", "0.5",
                             "--costs", "real"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        infos = []
        for port in (base, base + 1):
            url = f"http://127.0.0.1:{port}/object_info"
            wait_for(lambda: answers(url), timeout=60, message=f"the fake on port {port}")
            infos.append(requests.get(url, timeout=10).json())
    finally:
        terminate(proc)
    proc.communicate(timeout=10)
    assert "CylCustomInvert" not in infos[0] and "CylCustomInvert" in infos[1]
    assert "CylFail" not in infos[0] and "CylFail" in infos[1]
    assert [info["CheckpointLoaderSimple"]["load_seconds"] for info in infos] == [0.5, 0.5]


def answers(url: str) -> bool:
    """Whether `url` answers 200."""
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False

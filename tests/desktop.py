"""A desktop for the tester: Xvfb on a display of its own, and a real Cylindria (in front of
the fake ComfyUI) as processes. Used by tests/test_tester_gui.py and tools/tester_screenshot.py.

Needs the Debian package xvfb (``apt-get install -y xvfb``).
"""
from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
KEY = "tester-gui-key-0123456789"
WAIT_S = 20  # upper bound of every wait; never asserted on
SCREEN = (1280, 800)


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """Stop one process we started, by its PID."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def log_tail(path: Path, chars: int = 3000) -> str:
    """The end of a subprocess's log, for failure messages."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


@contextmanager
def xvfb(fbdir: Path | None = None):
    """Start Xvfb on a display it picks itself (-displayfd), yield ':N', stop it. With
    `fbdir`, Xvfb keeps its screen there as an XWD file (Xvfb_screen0) that is always current."""
    read_fd, write_fd = os.pipe()
    keep = ["-fbdir", str(fbdir)] if fbdir is not None else []
    proc = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", f"{SCREEN[0]}x{SCREEN[1]}x24",
         "-nolisten", "tcp", *keep],
        pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_fd)
    try:
        number = _read_display(read_fd)
        if not number.isdigit():
            raise RuntimeError(f"Xvfb did not report its display (exit {proc.poll()})")
        yield f":{number}"
    finally:
        os.close(read_fd)
        stop(proc)


def _read_display(read_fd: int) -> str:
    """The display number Xvfb writes to -displayfd (bounded wait)."""
    number = b""
    deadline = time.monotonic() + WAIT_S
    while not number.endswith(b"\n") and time.monotonic() < deadline:
        ready, _, _ = select.select([read_fd], [], [], 0.2)
        if ready:
            chunk = os.read(read_fd, 16)
            if not chunk:
                break
            number += chunk
    return number.decode().strip()


def start(args: list[str], log: Path) -> subprocess.Popen:
    """Start a Python module or script from the repo root, logging to ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT)


def wait_until_up(proc: subprocess.Popen, log: Path, check) -> None:
    """Wait (bounded) until ``check()`` is true, failing early if the process died."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited {proc.returncode}:\n{log_tail(log)}")
        try:
            if check():
                return
        except (OSError, requests.RequestException):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{proc.args} did not come up:\n{log_tail(log)}")


@contextmanager
def cylindria(work: Path, comfy_port: int, name: str = "cylindria", *flags: str):
    """Run a real Cylindria (one GPU) in front of the ComfyUI at ``comfy_port``; yield its port."""
    port, log = free_port(), work / f"{name}.log"
    proc = start(["cylindria.py", "--host", "127.0.0.1", "--port", str(port),
                  "--comfy-base-url", f"http://127.0.0.1:{comfy_port}", "--numberOfGpus", "1",
                  "--api-key", KEY, "--data-dir", str(work / f"{name}-data"),
                  "--poll-interval", "0.5", *flags], log)
    try:
        url = f"http://127.0.0.1:{port}/health"
        wait_until_up(proc, log, lambda: requests.get(url, timeout=1).status_code == 200)
        yield port
    finally:
        stop(proc)


@contextmanager
def cylindria_with_fake_comfy(work: Path, name: str = "cylindria", *flags: str):
    """Run a fake ComfyUI and a real Cylindria in front of it; yield Cylindria's port."""
    comfy_port, comfy_log = free_port(), work / f"{name}-fake_comfy.log"
    comfy = start(["-m", "tests.fake_comfy", "--port", str(comfy_port), "--count", "1",
                   "--time-scale", "0.05"], comfy_log)
    try:
        wait_until_up(comfy, comfy_log,
                      lambda: socket.create_connection(("127.0.0.1", comfy_port), 1).close() or True)
        with cylindria(work, comfy_port, name, *flags) as port:
            yield port
    finally:
        stop(comfy)


def fill(entry, text: str) -> None:
    """Replace an entry's text as typing would."""
    entry.delete(0, "end")
    entry.insert(0, text)


def pump_until(app, predicate, what: str) -> None:
    """Pump the tester's Tk events until ``predicate()`` holds (bounded wait, not a timing
    assertion); the text window is in the error."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        app.root.update()
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"gave up waiting for {what}; text window:\n{app.output()}")

"""Cylindria as a real process, for tests where a kill or a restart is the point."""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import requests

from tests.helpers import API_KEY, free_ports, wait_for

ROOT = Path(__file__).resolve().parents[1]


class CylindriaProcess:
    """`python cylindria.py ...` on a free loopback port; stopped or killed by its PID."""

    def __init__(self, comfy_url: str, data_dir: Path, gpus: int = 2, poll_interval: float = 0.5,
                 extra: tuple = ()):
        self.port = free_ports(1)
        self.args = [sys.executable, str(ROOT / "cylindria.py"), "--host", "127.0.0.1",
                     "--port", str(self.port), "--numberOfGpus", str(gpus),
                     "--comfy-base-url", comfy_url, "--api-key", API_KEY,
                     "--data-dir", str(data_dir), "--poll-interval", str(poll_interval), *extra]
        self.log_path = Path(data_dir).parent / f"cylindria-{self.port}.log"
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> "CylindriaProcess":
        """Start it and wait until it answers /health."""
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        wait_for(self._healthy, timeout=60, interval=0.05, message="Cylindria to start")
        return self

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"Cylindria exited with {self.proc.returncode}: {self.log()}")
        try:
            return requests.get(self.url + "/health", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def kill(self) -> None:
        """SIGKILL (TerminateProcess on Windows): no clean-up runs."""
        self.proc.kill()
        self.proc.wait(timeout=30)
        self._log.close()

    def pause(self) -> None:
        """SIGSTOP (POSIX only): the process keeps its sockets and database sessions and does
        nothing at all, as a host frozen by its hypervisor or a debugger would."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT: a paused process carries on where it stopped."""
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop it if it still runs."""
        if self.proc is not None:
            terminate(self.proc)
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def terminate(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop a process we started, by its PID: terminate, then kill if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)

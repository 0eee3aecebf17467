"""Cylindria as a real process, for tests where a kill or a restart is the point."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import requests

from tests.helpers import API_KEY, free_ports, wait_for

ROOT = Path(__file__).resolve().parents[1]
PORT_TAKEN = "Address already in use"  # what Cylindria says when its port is taken
PORT_TRIES = 5


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
        self._launches = 0  # starts on this port: only the first may move to another
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> "CylindriaProcess":
        """Start it and wait until it answers /health."""
        return self.launch().wait_started()

    def launch(self) -> "CylindriaProcess":
        """Start it, without waiting (several start at once, then `wait_started` each)."""
        self._launches += 1
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        return self

    def wait_started(self) -> "CylindriaProcess":
        """Wait until it answers /health. At its first start only, a port taken meanwhile
        (free_ports found it free, then another process of the run got it first) is replaced
        by another one; a restart keeps its port, which its URL was given out as."""
        for tries_left in range(PORT_TRIES - 1, -1, -1):
            try:
                wait_for(self._healthy, timeout=60, interval=0.05, message="Cylindria to start")
                return self
            except AssertionError:
                self._log.close()
                if self._launches > 1 or PORT_TAKEN not in self.log() or not tries_left:
                    raise
                self._move_to(free_ports(1))
                self._launches = 0
                self.launch()
        return self

    def _move_to(self, port: int) -> None:
        """Use `port` instead: in the arguments (--port, and the URL advertised) and the URL."""
        old = self.port
        self.args = [str(port) if arg == str(old) else arg.replace(f"127.0.0.1:{old}", f"127.0.0.1:{port}")
                     for arg in self.args]
        self.port, self.url = port, f"http://127.0.0.1:{port}"
        self.log_path = self.log_path.with_name(f"cylindria-{port}.log")

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
        """SIGSTOP: frozen as a process that lost the CPU (or its network) would be; its
        connections stay open, unanswered."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after pause()."""
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Stop it if it still runs."""
        if self.proc is not None:
            terminate(self.proc)
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def stop_all(processes) -> None:
    """Stop several at once: each is asked to stop (by its PID), then each is waited for."""
    for process in processes:
        if process.proc is not None and process.proc.poll() is None:
            process.proc.terminate()
    for process in processes:
        process.stop()


def terminate(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop a process we started, by its PID: terminate, then kill if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)

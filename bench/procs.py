"""The processes a benchmark runs: Cylindria, the baseline app and the load generator.

Every process is started here and stopped here, by its own PID (Popen.terminate/kill).
"""
from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import API_KEY, free_ports
from tests.processes import terminate

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"


def get(port: int, path: str, headers: dict | None = None,
        timeout: float = 5.0) -> tuple[int, bytes]:
    """One GET on loopback: (status, body)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def request_json(port: int, method: str, path: str, body: dict | None = None,
                 headers: dict | None = None, timeout: float = 30.0) -> tuple[int, dict]:
    """One JSON request on loopback: (status, decoded body)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        data = json.dumps(body).encode("utf-8") if body is not None else None
        conn.request(method, path, body=data,
                     headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        raw = response.read()
        return response.status, (json.loads(raw) if raw else {})
    finally:
        conn.close()


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (psutil where installed, else /proc)."""
    try:
        import psutil
    except ImportError:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for process {pid}")
    return psutil.Process(pid).memory_info().rss


class ServerProcess:
    """A server as a child process on a free loopback port; ready once `ready_path` answers 200."""

    def __init__(self, args: list[str], port: int, log_path: Path, ready_path: str = "/health"):
        self.args = args
        self.port = port
        self.log_path = Path(log_path)
        self.ready_path = ready_path
        self.proc: subprocess.Popen | None = None
        self.startup_seconds: float | None = None
        self._log = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self, timeout: float = 120.0) -> "ServerProcess":
        """Start it and wait until it answers; startup_seconds is spawn-to-first-answer."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        began = time.perf_counter()
        self.proc = subprocess.Popen(self.args, cwd=ROOT, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = began + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.args[1]} exited with {self.proc.returncode}; "
                                   f"log: {self.log_path}\n{self.log()[-2000:]}")
            try:
                if get(self.port, self.ready_path, timeout=1.0)[0] == 200:
                    self.startup_seconds = time.perf_counter() - began
                    return self
            except OSError:
                pass
            time.sleep(0.005)
        self.stop()
        raise RuntimeError(f"{self.args[1]} did not answer within {timeout:.0f}s; "
                           f"log: {self.log_path}")

    def rss(self) -> int:
        """Its resident memory now."""
        return rss_bytes(self.proc.pid)

    def kill(self) -> None:
        """SIGKILL by PID: no clean-up runs (a crash)."""
        self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        """Terminate it by PID (kill if it lingers)."""
        if self.proc is not None:
            terminate(self.proc)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def cylindria(comfy_url: str, data_dir: Path, gpus: int = 1, websocket: bool = True,
              poll_interval: float = 5.0, threads: int = 16,
              log_level: str = "INFO", serve_flags: tuple = (), api_key: str = API_KEY,
              extra: tuple = ()) -> ServerProcess:
    """`python cylindria.py ...` (or bench.serve for poll-only tracking, or with other
    `serve_flags` of bench.serve, e.g. ("--profile", path)), not yet started; `api_key` its
    --api-key (named and own keys: "name:key:own,..."), `extra` more of its flags."""
    port = free_ports(1)
    entry = [str(ROOT / "cylindria.py")]
    if not websocket or serve_flags:
        entry = ["-m", "bench.serve", *([] if websocket else ["--no-websocket"]), *serve_flags]
    args = [sys.executable, *entry, "--host", HOST, "--port", str(port),
            "--numberOfGpus", str(gpus), "--comfy-base-url", comfy_url, "--api-key", api_key,
            "--data-dir", str(data_dir), "--poll-interval", str(poll_interval),
            "--threads", str(threads), "--log-level", log_level, *extra]
    return ServerProcess(args, port, Path(data_dir).parent / f"cylindria-{port}.log")


def minimal_app(work_dir: Path, threads: int = 16, comfy_url: str | None = None,
                name_threads: bool = False) -> ServerProcess:
    """The baseline: a minimal Flask app under waitress (bench.minimal), not yet started."""
    port = free_ports(1)
    args = [sys.executable, "-m", "bench.minimal", "--port", str(port), "--threads", str(threads)]
    if name_threads:
        args.append("--name-threads")
    if comfy_url:
        args += ["--comfy", comfy_url]
    return ServerProcess(args, port, Path(work_dir) / f"minimal-{port}.log", ready_path="/health")


class LoadClient:
    """The load generator process (bench.load): one job in, one result out."""

    def __init__(self):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.load"], cwd=ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def run(self, job: dict) -> dict:
        """Run one job and return its result; a fatal error in the generator raises."""
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the load generator exited with {self.proc.wait()}")
        result = json.loads(line)
        if "fatal" in result:
            raise RuntimeError(f"the load generator failed: {result['fatal']}")
        return result

    def close(self) -> None:
        """Close its stdin (it exits), then make sure by PID."""
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc.stdout.close()

    def __enter__(self) -> "LoadClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def key_headers() -> dict:
    """The headers every Cylindria request carries."""
    return {"X-API-Key": API_KEY}

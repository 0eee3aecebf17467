"""The load generator: a separate process of threads, each with its own keep-alive connections.

Run by bench.procs.LoadClient as `python -m bench.load`; it reads one JSON job per stdin line
and answers one JSON result per stdout line, until stdin closes. Plain http.client (one
persistent HTTP/1.1 connection per thread and port) keeps the client's own cost per request
well below requests', so on a 2-core machine the server, not the client, is what saturates.

A job:
  {"threads": 16, "warmup": 20, "count": 100 | null, "duration": 5.0 | null,
   "templates": [[{"method", "port", "path", "headers", "body", "ok"}...]...],
   "choices": ["job-1", ...]}
Each sample runs one template's steps in order (thread t's i-th sample uses template
(t + i) % len(templates)); "{uid}" in a path becomes a unique id and "{pick}" a random choice.
"""
from __future__ import annotations

import http.client
import json
import random
import secrets
import sys
import threading
import time

HOST = "127.0.0.1"  # loopback only
TIMEOUT = 60.0


class Worker:
    """One client thread: its own connections, its own counters."""

    def __init__(self, index: int, job: dict, tag: str):
        self.index = index
        self.job = job
        self.tag = tag
        self.templates = [[_prepare(step) for step in template] for template in job["templates"]]
        self.choices = job.get("choices") or [""]
        self.random = random.Random(index)
        self.connections: dict[int, http.client.HTTPConnection] = {}
        self.latencies: list[float] = []
        self.statuses: dict[str, int] = {}
        self.errors = 0
        self.first_error: str | None = None
        self.done_at = 0.0
        self._n = 0

    def sample(self) -> bool:
        """Run one sample (all steps of the next template); True when every step went well."""
        template = self.templates[(self.index + self._n) % len(self.templates)]
        uid = f"{self.tag}-{self.index}-{self._n}"
        self._n += 1
        ok = True
        for step in template:
            path = step["path"].replace("{uid}", uid)
            if "{pick}" in path:
                path = path.replace("{pick}", self.random.choice(self.choices))
            ok = self.request(step, path) and ok
        return ok

    def request(self, step: dict, path: str) -> bool:
        """One request on this thread's keep-alive connection to the step's port."""
        port = step["port"]
        try:
            conn = self.connections.get(port)
            if conn is None:
                conn = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT)
                self.connections[port] = conn
            conn.request(step["method"], path, body=step["body"], headers=step["headers"])
            response = conn.getresponse()
            response.read()
            status = response.status
        except (OSError, http.client.HTTPException) as exc:
            self._drop(port)
            self.statuses["exception"] = self.statuses.get("exception", 0) + 1
            self.first_error = self.first_error or f"{step['method']} {path}: {exc!r}"
            return False
        self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
        if status not in step["ok"]:
            self.first_error = self.first_error or f"{step['method']} {path}: HTTP {status}"
            return False
        return True

    def run(self, barrier: threading.Barrier, start: list) -> None:
        """Warm up, wait for every thread, then measure by count or until the deadline."""
        for _ in range(self.job.get("warmup", 0)):
            self.sample()
        self.statuses.clear()
        self.first_error = None
        barrier.wait()
        count, duration = self.job.get("count"), self.job.get("duration")
        deadline = start[0] + duration if duration else None
        n = 0
        while (count is None or n < count) and (deadline is None or time.perf_counter() < deadline):
            began = time.perf_counter()
            ok = self.sample()
            self.latencies.append(time.perf_counter() - began)
            self.errors += 0 if ok else 1
            n += 1
        self.done_at = time.perf_counter()

    def close(self) -> None:
        """Close every connection."""
        for port in list(self.connections):
            self._drop(port)

    def _drop(self, port: int) -> None:
        conn = self.connections.pop(port, None)
        if conn is not None:
            conn.close()


def _prepare(step: dict) -> dict:
    """A step with its body as bytes and its accepted statuses as a set."""
    body = step.get("body")
    return {"method": step["method"], "port": int(step["port"]), "path": step["path"],
            "headers": dict(step.get("headers") or {}),
            "body": body.encode("utf-8") if isinstance(body, str) else None,
            "ok": set(step.get("ok") or (200,))}


def run_job(job: dict) -> dict:
    """Run one job with its threads and return the pooled figures."""
    tag = secrets.token_hex(4)
    workers = [Worker(i, job, tag) for i in range(job["threads"])]
    start: list[float] = [0.0]
    barrier = threading.Barrier(len(workers),
                                action=lambda: start.__setitem__(0, time.perf_counter()))
    threads = [threading.Thread(target=w.run, args=(barrier, start),
                                name=f"load-{w.index}", daemon=True) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for worker in workers:
        worker.close()
    elapsed = max(w.done_at for w in workers) - start[0]
    latencies = [x for w in workers for x in w.latencies]
    statuses: dict[str, int] = {}
    for worker in workers:
        for key, value in worker.statuses.items():
            statuses[key] = statuses.get(key, 0) + value
    return {"count": len(latencies), "errors": sum(w.errors for w in workers),
            "elapsed": elapsed, "throughput": len(latencies) / elapsed if elapsed > 0 else 0.0,
            "latencies": latencies, "statuses": statuses,
            "first_error": next((w.first_error for w in workers if w.first_error), None)}


def main() -> int:
    """Serve jobs from stdin until it closes."""
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            result = run_job(json.loads(line))
        except Exception as exc:  # noqa: BLE001 - the orchestrator shows it and stops
            result = {"fatal": repr(exc)}
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Shared test helpers: free ports, bounded waiting, and a key-carrying API client."""
from __future__ import annotations

import socket
import time

import requests

API_KEY = "test-key-0123456789abcdef"
# seconds: how soon a test's http.server notices shutdown() (serve_forever's default, 0.5 s,
# would be waited out at the end of every test that starts one)
SERVE_POLL = 0.05


def free_ports(count: int = 1) -> int:
    """A port p with p..p+count-1 all free on loopback (GPU n is port p + n)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count > 65535:
            continue
        if all(_is_free(base + n) for n in range(count)):
            return base
    raise RuntimeError("no run of free ports")


def _is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.02, message: str = ""):
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {message or predicate}: last value {last!r}")


class Api:
    """A requests session aimed at one Cylindria, sending the test key."""

    def __init__(self, base_url: str, key: str | None = API_KEY):
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        self.session.trust_env = False
        if key:
            self.session.headers["X-API-Key"] = key

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return self.session.request(method, self.base_url + path, **kwargs)

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def put(self, path: str, **kwargs) -> requests.Response:
        return self.request("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def status(self, job_id: str) -> dict:
        return self.get(f"/jobstatus/{job_id}").json()

    def wait_status(self, job_id: str, wanted, timeout: float = 20.0) -> dict:
        """Wait until the job's status is one of `wanted`; returns the job."""
        wanted = {wanted} if isinstance(wanted, str) else set(wanted)
        return wait_for(lambda: (lambda j: j if j.get("status") in wanted else None)(
            self.status(job_id)), timeout, message=f"{job_id} to be {wanted}")


def lose_a_finished_job(service, fake, api: "Api", job_id: str) -> None:
    """Submit `job_id` (pinned to GPU 0, `fake`), let ComfyUI finish it, then stop that ComfyUI
    before Cylindria learns the end (no websocket, no poll): the next poll finds it `lost`,
    though ComfyUI's history (kept over a restart with keep_state) says it completed."""
    from tests import workflows
    poller = service.context.tracker.poller
    # The poller's first tick polls every GPU right after start-up reconciliation: over before
    # the job is sent, or it may learn the end before ComfyUI is stopped (no `lost` then).
    wait_for(lambda: poller.ticks >= 1 and poller.idle(), message="the poller's first tick")
    api.put(f"/startjob/{job_id}", json=workflows.core(job_id))
    wait_for(lambda: fake.prompts_received() and requests.get(
        f"{fake.url}/history/{fake.prompts_received()[0]}", timeout=5).json())
    fake.stop()
    service.context.tracker.poller.request(0)
    api.wait_status(job_id, "lost")


"""The two servers tests/test_comfy_sdk.py points the comfy-sdk client at.

`target` is a parametrized fixture: each test runs once against
- "cylindria": the real Cylindria (cylindria.service.server.Service) in front of two fake ComfyUIs (GPUs),
- "proxy": Comfy-Org's reference server comfy-api-proxy 0.1.6 (a subprocess of this test)
  in front of one fake ComfyUI, with --token so it checks the key like Cylindria does.

Both answer the Comfy API v2 under <base_url>/api/v2; the SDK adds that prefix itself.
"""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import requests

from cylindria.service.server import Service
from tests.conftest import TIME_SCALE, make_config, start_fakes
from tests.fake_comfy import FakeComfy, RecordedRequest
from tests.helpers import API_KEY, Api, free_ports, wait_for

PROXY_CLI = Path(sys.executable).with_name("comfy-api-proxy")
STARTUP_TIMEOUT = 30.0


@dataclasses.dataclass
class Target:
    """One running v2 server and the fake ComfyUIs behind it."""

    name: str  # "cylindria" or "proxy"
    base_url: str  # http://127.0.0.1:<port>, without /api/v2
    key: str
    fakes: list[FakeComfy]
    data_dir: Path | None = None  # Cylindria's data dir (the proxy's is its --state-dir)
    _restart: Callable[..., str] | None = dataclasses.field(default=None, repr=False)

    def gpu_of(self, job_id: str) -> int:
        """The GPU that ran (or runs) a job: Cylindria's own GET /jobstatus/<id>."""
        assert self.name == "cylindria", "only Cylindria has GPUs to ask about"
        answer = Api(self.base_url, self.key).get(f"/jobstatus/{job_id}")
        assert answer.status_code == 200, answer.text
        return answer.json()["gpu_id"]

    def restart(self, **overrides) -> None:
        """Stop the server and start it again with these Config fields changed (Cylindria
        only): same fakes, same data dir, a new port (base_url follows)."""
        assert self._restart is not None, f"{self.name} cannot be restarted with a new config"
        self.base_url = self._restart(**overrides)

    def prompts_received(self) -> list[str]:
        """Every prompt id any of the target's ComfyUIs accepted, in GPU order."""
        return [prompt for fake in self.fakes for prompt in fake.prompts_received()]

    def prompt_posts(self) -> list[RecordedRequest]:
        """Every POST /prompt any of the target's ComfyUIs received (accepted or not)."""
        return [r for fake in self.fakes for r in fake.requests()
                if r.method == "POST" and r.path in ("/prompt", "/api/prompt")]


@pytest.fixture(params=["cylindria", "proxy"])
def target(request, tmp_path):
    """A fresh server of each kind, stopped (and its fakes closed) after the test."""
    start = cylindria_target if request.param == "cylindria" else proxy_target
    with start(tmp_path) as running:
        yield running


class cylindria_target:
    """Cylindria with two fake GPUs: `with cylindria_target(tmp_path) as target:`."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.fakes: list[FakeComfy] = []
        self.service: Service | None = None

    def _start(self, **overrides) -> str:
        self._stop_service()
        config = make_config(self.fakes, self.tmp_path, **overrides)
        self.service = Service(config)
        self.service.__enter__()
        return self.service.url

    def _stop_service(self) -> None:
        service, self.service = self.service, None
        if service is not None:
            service.__exit__(None, None, None)

    def __enter__(self) -> Target:
        self.fakes = start_fakes(2)
        try:
            url = self._start()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return Target("cylindria", url, API_KEY, self.fakes,
                      data_dir=self.service.context.config.data_dir, _restart=self._start)

    def __exit__(self, *exc) -> None:
        try:
            self._stop_service()
        finally:
            for fake in self.fakes:
                fake.close()


class proxy_target:
    """comfy-api-proxy (a subprocess, stopped by its pid) in front of one fake ComfyUI."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.fake: FakeComfy | None = None
        self.process: subprocess.Popen | None = None
        self.log_path = tmp_path / "comfy-api-proxy.log"

    def __enter__(self) -> Target:
        self.fake = start_fakes(1, TIME_SCALE)[0]
        try:
            url = self._start_proxy()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return Target("proxy", url, API_KEY, [self.fake], data_dir=self.tmp_path / "proxy-state")

    def _start_proxy(self) -> str:
        for _ in range(5):  # the free port may be taken before the proxy binds it
            port = free_ports(1)
            url = f"http://127.0.0.1:{port}"
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    [str(PROXY_CLI), "--comfyui", self.fake.url, "--host", "127.0.0.1",
                     "--port", str(port), "--token", API_KEY,
                     "--state-dir", str(self.tmp_path / "proxy-state")],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            if wait_for(lambda: self.process.poll() is not None or _healthy(url),
                        STARTUP_TIMEOUT, interval=0.05, message="comfy-api-proxy to answer") \
                    and self.process.poll() is None:
                return url
            self._stop_proxy()
        raise RuntimeError(f"comfy-api-proxy did not start: {self.log_path.read_text()[-2000:]}")

    def _stop_proxy(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()  # this pid only
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def __exit__(self, *exc) -> None:
        try:
            self._stop_proxy()
        finally:
            if self.fake is not None:
                self.fake.close()


def _healthy(url: str) -> bool:
    try:
        with requests.Session() as session:
            session.trust_env = False
            return session.get(url + "/api/v2/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False

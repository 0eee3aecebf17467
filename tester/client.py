"""HTTP client for Cylindria's endpoints; every call returns a ``Result``, never raises."""

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import requests

from tester.upload import MultipartFile

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = (5.0, 30.0)  # (connect, read) seconds
STREAM_TIMEOUT = (5.0, 45.0)  # the server sends a keep-alive every 15 s: three missed is a dead stream
_ERRNO_RE = re.compile(r"\[Errno -?\d+\] ([^'\"\)]+)")


@dataclass
class Result:
    """One request's outcome: an HTTP answer (``status``) or a failure (``error_text``)."""

    method: str
    url: str
    status: int | None
    elapsed_ms: float
    reason: str = ""
    body: str = ""
    data: Any = None
    is_json: bool = False
    error_text: str | None = None

    @property
    def ok(self) -> bool:
        """True for a 2xx answer."""
        return self.status is not None and 200 <= self.status < 300


def build_base_url(url: str, port: str | int | None) -> str:
    """Join the URL and port fields into a base URL like ``http://host:8000`` (ValueError if bad)."""
    url = (url or "").strip()
    if not url:
        raise ValueError("the URL is empty")
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"the URL must start with http:// or https://, not {parts.scheme}://")
    if not parts.hostname:
        raise ValueError(f"no host name in the URL {url!r}")
    port_text = str(port if port is not None else "").strip()
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"the port must be a number from 1 to 65535, not {port_text!r}")
        host = parts.hostname
        if ":" in host:  # an IPv6 literal needs its brackets back
            host = f"[{host}]"
        netloc = f"{host}:{int(port_text)}"
    else:
        netloc = parts.netloc
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def describe_error(exc: requests.RequestException, timeout: Any = None) -> str:
    """Turn a requests exception into one readable line."""
    text = str(exc)
    if isinstance(exc, requests.Timeout):
        kind = "connect timeout" if isinstance(exc, requests.ConnectTimeout) else "timeout"
        return f"{kind}: no answer within {_timeout_text(exc, timeout)}"
    if isinstance(exc, requests.ConnectionError):
        match = _ERRNO_RE.search(text)
        why = match.group(1).strip() if match else type(_root_cause(exc)).__name__
        return f"connection error: {why}"
    return f"{type(exc).__name__}: {text}"


def _timeout_text(exc: requests.Timeout, timeout: Any) -> str:
    """Say which timeout ran out, in seconds."""
    if isinstance(timeout, tuple):
        timeout = timeout[0] if isinstance(exc, requests.ConnectTimeout) else timeout[1]
    return f"{timeout:g} s" if isinstance(timeout, (int, float)) else "the time limit"


def _root_cause(exc: BaseException) -> BaseException:
    """Follow ``__cause__``/``__context__`` down to the first exception."""
    seen = set()
    while (exc.__cause__ or exc.__context__) and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return exc


class Client:
    """Talks to one Cylindria; ``api_key`` goes out as ``X-API-Key`` when set."""

    def __init__(self, base_url: str, api_key: str = "", timeout: Any = DEFAULT_TIMEOUT):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    def server_status(self, gpu_id: str | int = 0) -> Result:
        """GET /serverstatus?GpuId=n."""
        return self.request("GET", "/serverstatus", params={"GpuId": gpu_id})

    def start_job(self, job_id: str, workflow: bytes, gpu_id: str | int = 0,
                  priority: int | None = None) -> Result:
        """PUT /startjob/<job_id>/?GpuId=n|auto[&priority=p] with the workflow JSON as body."""
        path = f"/startjob/{quote(job_id, safe='')}/"
        params: dict[str, Any] = {"GpuId": gpu_id}
        if priority is not None:
            params["priority"] = priority
        return self.request("PUT", path, params=params, body=workflow)

    def models(self) -> Result:
        """GET /models: every model folder, each file with the GPUs whose ComfyUI has it."""
        return self.request("GET", "/models")

    def fleet(self) -> Result:
        """GET /fleet: every node sharing the server's database, with its lease and GPUs."""
        return self.request("GET", "/fleet")

    def job_status(self, job_id: str) -> Result:
        """GET /jobstatus/<job_id>/."""
        return self.request("GET", f"/jobstatus/{quote(job_id, safe='')}/")

    def upload_asset(self, path: str | Path) -> Result:
        """POST /assets with the file at ``path`` as the multipart part ``file``, streamed from disk."""
        try:
            body = MultipartFile(path)
        except OSError as exc:
            return Result("POST", self.base_url + "/assets", None, 0.0,
                          error_text=f"cannot read {path}: {exc.strerror or exc}")
        with body:
            return self.request("POST", "/assets", body=body, content_type=body.content_type)

    def open_events(self, job_id: str) -> tuple[Result, requests.Response | None]:
        """GET /jobevents/<job_id>/: the answer, and the response to read the events from.

        The response is None unless the server answered with an event stream; the Result then
        holds the whole answer (a 429 too_many_streams, say), as ``request`` gives it.
        """
        path = f"/jobevents/{quote(job_id, safe='')}/"
        result, resp = self._send("GET", path, accept="text/event-stream", stream=True,
                                  timeout=STREAM_TIMEOUT)
        if resp is None:
            return result, None
        if result.ok and resp.headers.get("Content-Type", "").startswith("text/event-stream"):
            return result, resp
        with resp:
            return self._read_body(result, resp), None

    def request(self, method: str, path: str, params: dict | None = None, body: Any = None,
                content_type: str = "application/json") -> Result:
        """Send one request and return its Result; network failures become ``error_text``."""
        result, resp = self._send(method, path, params, body, content_type)
        return result if resp is None else self._read_body(result, resp)

    def _send(self, method: str, path: str, params: dict | None = None, body: Any = None,
              content_type: str | None = None, accept: str = "application/json",
              stream: bool = False, timeout: Any = None) -> tuple[Result, requests.Response | None]:
        """Send one request: the Result so far (no body yet) and the response, or a failure."""
        url = self.base_url + path
        shown = requests.Request(method, url, params=params).prepare().url
        headers = {"Accept": accept}
        if self.api_key:
            headers["X-API-Key"] = self.api_key
        if body is not None:
            headers["Content-Type"] = content_type
        timeout = timeout or self.timeout
        start = time.perf_counter()
        try:
            resp = requests.request(method, url, params=params, data=body, headers=headers,
                                    timeout=timeout, stream=stream)
        except requests.RequestException as exc:
            elapsed = (time.perf_counter() - start) * 1000
            return Result(method, shown, None, elapsed, error_text=describe_error(exc, timeout)), None
        elapsed = (time.perf_counter() - start) * 1000
        return Result(method, shown, resp.status_code, elapsed, reason=resp.reason or ""), resp

    @staticmethod
    def _read_body(result: Result, resp: requests.Response) -> Result:
        """Add the answer's body to its Result, parsed as JSON when it is JSON."""
        try:
            result.body = resp.text
        except requests.RequestException as exc:  # only a streamed body is read this late
            result.status, result.error_text = None, describe_error(exc)
            return result
        try:
            result.data = json.loads(result.body)
            result.is_json = True
        except ValueError:
            pass
        return result

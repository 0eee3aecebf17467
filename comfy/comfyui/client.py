"""HTTP to one ComfyUI: only the calls the contract needs, always with a timeout."""
from __future__ import annotations

import logging
import threading
from typing import Any
from urllib.parse import quote

import requests
from urllib3.exceptions import NewConnectionError

from comfy.encoding import from_json, to_json
from comfy.comfyui.errors import ComfyBadResponse, ComfyRejected, ComfyTimeout, ComfyUnreachable
from comfy.comfyui.queue import QueueSnapshot

logger = logging.getLogger(__name__)

USER_AGENT = "Cylindria"
HEADERS = {"User-Agent": USER_AGENT, "Accept": "application/json"}
JSON_HEADERS = {**HEADERS, "Content-Type": "application/json"}
FIXED_PATHS = frozenset({"/prompt", "/queue", "/system_stats", "/interrupt", "/object_info"})


class ComfyClient:
    """Calls ComfyUI's unprefixed paths; one requests.Session per calling thread."""

    def __init__(self, base_url: str, gpu_id: int = 0, connect_timeout: float = 2.0,
                 read_timeout: float = 10.0, submit_timeout: float = 60.0):
        self.base_url = base_url.rstrip("/")
        self.gpu_id = gpu_id
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.submit_timeout = submit_timeout
        self._local = threading.local()

    def _session(self) -> requests.Session:
        """The calling thread's own session (requests.Session is not thread-safe)."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False  # ComfyUI is on loopback: no proxy may sit in between
            self._local.session = session
            self._local.templates = {}
        return session

    def _prepared(self, method: str, path: str, body, params: dict | None,
                  files: dict | None = None, extra: dict | None = None) -> requests.PreparedRequest:
        """The request, prepared. The fixed paths' requests are prepared once per thread and
        copied: preparing one (URL parsing, header and setting merges) costs about a third
        of a whole call to ComfyUI in requests' own CPU time."""
        headers = JSON_HEADERS if body is not None else HEADERS
        if extra:
            headers = {**headers, **extra}
        if files is not None:  # multipart: requests writes the boundary and Content-Type
            return requests.Request(method, self.base_url + path, headers=HEADERS, data=body,
                                    files=files).prepare()
        if path not in FIXED_PATHS or params is not None:
            return requests.Request(method, self.base_url + path, headers=headers, data=body,
                                    params=params).prepare()
        templates = self._local.templates
        template = templates.get((method, path))
        if template is None:
            template = templates[(method, path)] = requests.Request(
                method, self.base_url + path, headers=headers).prepare()
        prepared = template.copy()
        if body is not None:
            prepared.prepare_body(body, None)  # sets Content-Length
        return prepared

    def _request(self, method: str, path: str, read_timeout: float | None = None,
                 body=None, params: dict | None = None, stream: bool = False,
                 files: dict | None = None, headers: dict | None = None) -> requests.Response:
        """One HTTP call with a timeout; requests' failures become comfy.comfyui.errors.

        Only what is built here is sent (never anything a client gave us: a browser Origin
        makes ComfyUI answer 403), and redirects are not followed: nothing but the
        documented operations may reach ComfyUI, and ComfyUI redirects none of them.
        """
        timeout = (self.connect_timeout, read_timeout or self.read_timeout)
        try:
            session = self._session()
            return session.send(self._prepared(method, path, body, params, files, headers),
                                timeout=timeout,
                                stream=stream, allow_redirects=False)
        except requests.ConnectTimeout as exc:
            raise ComfyTimeout(f"ComfyUI at {self.base_url} did not accept the connection in time",
                               self.gpu_id) from exc
        except requests.Timeout as exc:
            raise ComfyTimeout(f"ComfyUI at {self.base_url} did not answer in time",
                               self.gpu_id, may_have_run=True) from exc
        except requests.ConnectionError as exc:
            raise ComfyUnreachable(f"ComfyUI at {self.base_url} cannot be reached", self.gpu_id,
                                   may_have_run=not _refused(exc)) from exc
        except requests.RequestException as exc:
            raise ComfyBadResponse(f"ComfyUI at {self.base_url} failed: {exc}", self.gpu_id,
                                   may_have_run=True) from exc

    def _json(self, response: requests.Response, path: str) -> Any:
        """The body as JSON, or ComfyBadResponse when it is not a 200 JSON answer."""
        if response.status_code != 200:
            raise ComfyBadResponse(
                f"ComfyUI answered {response.status_code} to {path}", self.gpu_id)
        try:
            return from_json(response.content)
        except ValueError as exc:
            # A 200 was sent, so ComfyUI did what was asked; only its answer is broken.
            raise ComfyBadResponse(f"ComfyUI answered {path} with invalid JSON", self.gpu_id,
                                   may_have_run=True) from exc

    def submit(self, payload: dict) -> dict:
        """POST /prompt; returns ComfyUI's answer ({"prompt_id", "number", "node_errors"})."""
        response = self._request("POST", "/prompt", read_timeout=self.submit_timeout,
                                 body=to_json(payload))
        if response.status_code == 400:
            body = _json_or_none(response)
            if isinstance(body, dict) and "error" in body:
                raise ComfyRejected("ComfyUI refused the prompt", body.get("error"),
                                    body.get("node_errors") or {}, self.gpu_id)
        answer = self._json(response, "/prompt")
        if not isinstance(answer, dict) or not isinstance(answer.get("prompt_id"), str):
            raise ComfyBadResponse("ComfyUI's answer to /prompt has no prompt_id", self.gpu_id,
                                   may_have_run=True)
        return answer

    def queue(self, timeout: float | None = None) -> QueueSnapshot:
        """GET /queue, parsed."""
        body = self._json(self._request("GET", "/queue", read_timeout=timeout), "/queue")
        try:
            return QueueSnapshot.from_json(body)
        except (TypeError, ValueError, KeyError, IndexError) as exc:
            raise ComfyBadResponse("ComfyUI's /queue answer has an unknown shape", self.gpu_id) from exc

    def history(self, prompt_id: str) -> dict | None:
        """GET /history/<id>: the prompt's entry, or None while queued, running or unknown."""
        body = self._json(self._request("GET", f"/history/{prompt_id}"), "/history")
        if not isinstance(body, dict):
            raise ComfyBadResponse("ComfyUI's /history answer is not an object", self.gpu_id)
        entry = body.get(prompt_id)
        return entry if isinstance(entry, dict) else None

    def system_stats(self, timeout: float | None = None) -> dict:
        """GET /system_stats (expensive for ComfyUI: callers cache it)."""
        body = self._json(self._request("GET", "/system_stats", read_timeout=timeout),
                          "/system_stats")
        if not isinstance(body, dict):
            raise ComfyBadResponse("ComfyUI's /system_stats answer is not an object", self.gpu_id)
        return body

    def object_info(self) -> dict:
        """GET /object_info: every node class installed (large: read once per connection)."""
        body = self._json(self._request("GET", "/object_info", read_timeout=max(self.read_timeout, 30.0)),
                          "/object_info")
        if not isinstance(body, dict):
            raise ComfyBadResponse("ComfyUI's /object_info answer is not an object", self.gpu_id)
        return body

    def model_folders(self, timeout: float | None = None) -> list[str]:
        """GET /models: the names of the model folders ComfyUI knows ("checkpoints", ...)."""
        body = self._json(self._request("GET", "/models", read_timeout=timeout), "/models")
        if not isinstance(body, list) or not all(isinstance(name, str) for name in body):
            raise ComfyBadResponse("ComfyUI's /models answer is not a list of names", self.gpu_id)
        return body

    def model_files(self, folder: str, timeout: float | None = None) -> list[str] | None:
        """GET /models/<folder>: the file names ComfyUI gives, relative to the folder (as it
        spells them: "sdxl/a.safetensors", or with backslashes on Windows); None on its 404
        (a folder it does not know)."""
        path = "/models/" + quote(folder, safe="")
        response = self._request("GET", path, read_timeout=timeout)
        if response.status_code == 404:
            return None
        body = self._json(response, "/models/<folder>")
        if not isinstance(body, list) or not all(isinstance(name, str) for name in body):
            raise ComfyBadResponse("ComfyUI's /models/<folder> answer is not a list of names",
                                   self.gpu_id)
        return body

    def upload_image(self, file, name: str, subfolder: str, content_type: str) -> dict:
        """POST /upload/image (multipart, type input, overwrite): one of Cylindria's own
        asset files, under its own name; returns ComfyUI's {"name", "subfolder", "type"}."""
        response = self._request(
            "POST", "/upload/image", read_timeout=max(self.read_timeout, 60.0),
            body={"type": "input", "subfolder": subfolder, "overwrite": "true"},
            files={"image": (name, file, content_type)})
        body = self._json(response, "/upload/image")
        if not isinstance(body, dict) or body.get("name") != name:
            raise ComfyBadResponse("ComfyUI stored the upload under another name", self.gpu_id)
        return body

    def delete_queued(self, prompt_ids: list[str]) -> None:
        """POST /queue {"delete": [...]}: removes pending prompts (running ones need interrupt)."""
        response = self._request("POST", "/queue", body=to_json({"delete": list(prompt_ids)}))
        if response.status_code != 200:
            raise ComfyBadResponse(f"ComfyUI answered {response.status_code} to /queue delete",
                                   self.gpu_id)

    def interrupt(self, prompt_id: str) -> None:
        """POST /interrupt naming the prompt, so another prompt is never interrupted by mistake."""
        response = self._request("POST", "/interrupt", body=to_json({"prompt_id": prompt_id}))
        if response.status_code != 200:
            raise ComfyBadResponse(f"ComfyUI answered {response.status_code} to /interrupt",
                                   self.gpu_id)

    def view(self, filename: str, subfolder: str, kind: str,
             byte_range: str | None = None) -> requests.Response:
        """GET /view as a stream; the caller must close the response. With `byte_range`
        (`bytes=...`, built by Cylindria), the answer may be 206 or 416 as well as 200."""
        params = {"filename": filename, "subfolder": subfolder, "type": kind}
        headers = {"Range": byte_range} if byte_range else None
        response = self._request("GET", "/view", params=params, stream=True, headers=headers)
        if response.status_code not in ((200, 206, 416) if byte_range else (200,)):
            response.close()
            raise ComfyBadResponse(f"ComfyUI answered {response.status_code} to /view",
                                   self.gpu_id)
        return response

    def view_size(self, filename: str, subfolder: str, kind: str,
                  timeout: float | None = None) -> int | None:
        """The size of an output file (HEAD /view), or None if ComfyUI does not say."""
        params = {"filename": filename, "subfolder": subfolder, "type": kind}
        response = self._request("HEAD", "/view", read_timeout=timeout, params=params)
        length = response.headers.get("Content-Length", "")
        if response.status_code != 200 or not length.isdigit():
            return None
        return int(length)

    def close(self) -> None:
        """Close the calling thread's session."""
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()
            self._local.session = None


def _refused(exc: requests.ConnectionError) -> bool:
    """True when the connection was never made, so ComfyUI cannot have seen the request."""
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, NewConnectionError)


def _json_or_none(response: requests.Response) -> Any:
    """The body as JSON, or None."""
    try:
        return from_json(response.content)
    except ValueError:
        return None

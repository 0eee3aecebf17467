"""One JSON error shape, made by one function, used by every handler."""
from __future__ import annotations

import logging
import re

from typing import Callable

from flask import Flask, current_app, has_request_context, jsonify, request
from werkzeug.exceptions import HTTPException

from comfy.dispatch.cancel import CancelRaced
from comfy.comfyui.errors import ComfyBadResponse, ComfyError, ComfyRejected, ComfyUnreachable
from comfy.inputs.workflow import WorkflowError
from cylindria.fleet.peers import NodeUnreachable
from cylindria.storage import StorageUnavailable

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5


class ApiError(Exception):
    """An answer the client must get as the contract's JSON error."""

    def __init__(self, status: int, code: str, message: str, details=None, headers=None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details, self.headers = details, headers or {}


# Path prefix -> the error shape of the API surface mounted there (the Comfy API v2 has its
# own envelope and codes). Filled once by the app factory; read by every error answer.
_SHAPES: dict[str, Callable] = {}


def register_shape(prefix: str, shape: Callable[[int, str, str, object], tuple[int, dict]]) -> None:
    """Errors under `prefix` are answered as `shape(status, code, message, details)` gives:
    (status, body)."""
    _SHAPES[prefix] = shape


def error_body(path: str | None, status: int, code: str, message: str,
               details=None) -> tuple[int, dict]:
    """(status, body) of an error answered on `path`: the contract's shape, or the one of the
    API surface the path belongs to."""
    for prefix, shape in _SHAPES.items():
        if path is not None and (path == prefix or path.startswith(prefix + "/")):
            return shape(status, code, message, details)
    body = {"error": message, "code": code}
    if details is not None:
        body["details"] = details
    return status, body


def error_response(status: int, code: str, message: str, details=None, headers=None):
    """`{"error", "code", "details"?}` with the given status (or the shape of the surface
    the request was made to)."""
    path = request.path if has_request_context() else None
    status, body = error_body(path, status, code, message, details)
    response = jsonify(body)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _http_error(exc: HTTPException):
    """Flask's own errors (404, 405, 413, ...) in the same shape."""
    code = re.sub(r"[^a-z0-9]+", "_", (exc.name or "error").lower()).strip("_")
    code = {"request_entity_too_large": "payload_too_large", "content_too_large": "payload_too_large"
            }.get(code, code)
    message = {404: "no such endpoint", 405: "method not allowed for this endpoint",
               413: "request body is larger than the limit"}.get(exc.code, exc.description)
    headers = {"Allow": exc.valid_methods and ", ".join(exc.valid_methods)} \
        if getattr(exc, "valid_methods", None) else None
    details = {"limit_bytes": current_app.config["MAX_CONTENT_LENGTH"]} if exc.code == 413 else None
    return error_response(exc.code or 500, code, message, details, headers)


def _comfy_error(exc: ComfyError):
    """ComfyUI's failures: refused prompts 400, unusable answers 502, silence 503."""
    if isinstance(exc, ComfyRejected):
        return error_response(400, "comfy_rejected", "ComfyUI refused the prompt",
                              {"error": exc.error, "node_errors": exc.node_errors})
    gpu = f" on GPU {exc.gpu_id}" if exc.gpu_id is not None else ""
    if isinstance(exc, ComfyUnreachable):
        return error_response(503, "comfy_unreachable", f"ComfyUI{gpu} cannot be reached",
                              headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    if isinstance(exc, ComfyBadResponse):
        return error_response(502, "comfy_bad_response", f"ComfyUI{gpu} answered something unusable")
    return error_response(502, "comfy_bad_response", f"ComfyUI{gpu} failed")


def _database_unavailable(exc: StorageUnavailable):
    """The store of record cannot be reached: nothing was accepted, the client retries."""
    return error_response(503, "database_unavailable",
                          "Cylindria's database cannot be reached; nothing was accepted, "
                          "try again shortly", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def _node_unreachable(exc: NodeUnreachable):
    """The node holding a job's outputs, or the GPU a job is pinned to, cannot be asked now
    (it is down, or its lease ended)."""
    logger.info("%s", exc)
    return error_response(503, "node_unreachable",
                          f"node {exc.node} cannot be reached ({exc.reason}); try again shortly",
                          {"node": exc.node},
                          headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def _unexpected(exc: Exception):
    """A bug: the traceback goes to the log, the client gets a plain 500."""
    logger.exception("unhandled error while serving a request")
    return error_response(500, "internal_error", "internal server error")


def init_app(app: Flask) -> None:
    """Register the handlers."""
    app.register_error_handler(
        ApiError, lambda e: error_response(e.status, e.code, e.message, e.details, e.headers))
    app.register_error_handler(
        WorkflowError, lambda e: error_response(400, e.code, e.message, e.details))
    app.register_error_handler(ComfyError, _comfy_error)
    app.register_error_handler(StorageUnavailable, _database_unavailable)
    app.register_error_handler(NodeUnreachable, _node_unreachable)
    app.register_error_handler(CancelRaced, lambda e: error_response(
        503, "comfy_unreachable", str(e), headers={"Retry-After": "1"}))
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)

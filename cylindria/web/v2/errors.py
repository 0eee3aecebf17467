"""The Comfy API v2's error envelope, `{"error": {"code", "message", "details"}}`, and its
codes: Cylindria's own errors (raised by the same core for every surface) translated."""
from __future__ import annotations

from cylindria.web.errors import ApiError

# (Cylindria's status, code) or its code alone -> (v2 status, v2 code). What is not listed
# keeps its status and code (unauthorized, queue_full, too_many_streams, ...).
BY_STATUS_AND_CODE = {
    (400, "asset_not_found"): (422, "missing_asset"),  # a workflow's reference
    (404, "asset_not_found"): (404, "not_found"),
}
BY_CODE = {
    "job_not_found": (404, "not_found"),
    "output_not_found": (404, "not_found"),
    "invalid_workflow": (422, "invalid_workflow"),
    "ui_format_workflow": (422, "workflow_format_ui"),
    "comfy_rejected": (422, "invalid_workflow"),
    "file_not_allowed": (422, "file_not_allowed"),  # a workflow fault, as v2 answers them
    "invalid_json": (400, "invalid_request"),
    "invalid_parameter": (400, "invalid_request"),
    "invalid_job_id": (400, "invalid_request"),
    "invalid_asset": (400, "invalid_request"),
    "comfy_unreachable": (503, "upstream_unreachable"),
    "comfy_bad_response": (502, "upstream_error"),
}


def envelope(status: int, code: str, message: str, details=None) -> tuple[int, dict]:
    """(status, body) of an error on the v2 surface."""
    status, code = BY_STATUS_AND_CODE.get((status, code)) or BY_CODE.get(code) or (status, code)
    if details is not None and not isinstance(details, dict):
        details = {"value": details}
    return status, {"error": {"code": code, "message": message, "details": details}}


def invalid_request(message: str, field: str | None = None) -> ApiError:
    """400 invalid_request (a body field of the wrong shape)."""
    return ApiError(400, "invalid_request", message, {"field": field} if field else None)


def not_found(what: str) -> ApiError:
    """404 not_found."""
    return ApiError(404, "not_found", f"{what} not found")

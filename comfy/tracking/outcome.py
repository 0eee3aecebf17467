"""Read a prompt's outputs and final outcome from what ComfyUI reports."""
from __future__ import annotations

import math

from comfy.jobs.job import JobStatus


def files_from_output(node_id: str, output) -> list[dict]:
    """The files one node reported, under every key ComfyUI uses, leaving out temp previews."""
    files = []
    if not isinstance(output, dict):
        return files
    for entries in output.values():
        for entry in entries if isinstance(entries, list) else ():
            if isinstance(entry, dict) and isinstance(entry.get("filename"), str) \
                    and entry.get("type", "output") != "temp":
                files.append({"node_id": str(node_id), "filename": entry["filename"],
                              "subfolder": str(entry.get("subfolder") or ""),
                              "type": str(entry.get("type") or "output")})
    return files


def files_from_history(outputs) -> list[dict]:
    """Every output file of a history entry's `outputs` object."""
    files = []
    for node_id, output in (outputs.items() if isinstance(outputs, dict) else ()):
        files.extend(files_from_output(node_id, output))
    return files


def error_from_message(data: dict) -> dict:
    """The contract's error object from an execution_error message."""
    return {"type": data.get("exception_type") or "execution_error",
            "message": str(data.get("exception_message") or "").strip() or "execution failed",
            "node_id": _str_or_none(data.get("node_id")),
            "node_type": _str_or_none(data.get("node_type"))}


def lost_error(gpu_index: int, why: str) -> dict:
    """The error object of a lost job."""
    return {"type": "lost", "node_id": None, "node_type": None,
            "message": f"ComfyUI on GPU {gpu_index} {why}"}


def send_failed_error(gpu_index: int, why: str, attempts: int) -> dict:
    """The error object of a job whose every send failed (ComfyUI answered its POST with an
    error that is no validation refusal, or Cylindria could not send it)."""
    return {"type": "send_failed", "node_id": None, "node_type": None,
            "message": f"the job could not be sent on any of its {attempts} attempts; "
                       f"the last one, to GPU {gpu_index}: {why}"}


def rejected_error(message: str, error, node_errors: dict) -> dict:
    """The error object of a job ComfyUI refused when it was sent (validation): its first
    refused node named, ComfyUI's whole answer in `details`."""
    node_id = next(iter(node_errors), None) if isinstance(node_errors, dict) else None
    node = node_errors.get(node_id) if node_id is not None else None
    reason = error.get("message") if isinstance(error, dict) else error
    return {"type": "comfy_rejected", "message": f"{message}: {reason or 'invalid prompt'}",
            "node_id": _str_or_none(node_id),
            "node_type": _str_or_none(node.get("class_type")) if isinstance(node, dict) else None,
            "details": {"error": error, "node_errors": node_errors}}


def outcome_from_history(entry: dict) -> tuple[JobStatus, dict | None, list[dict]]:
    """(status, error, outputs) of a finished prompt's history entry.

    ComfyUI's status_str is "error" for an interrupt too, so the last execution message
    decides between failed and cancelled.
    """
    status = entry.get("status") if isinstance(entry.get("status"), dict) else {}
    last_type, last_data = _last_execution_message(status.get("messages"))
    if status.get("status_str") == "success" or last_type == "execution_success":
        return JobStatus.COMPLETED, None, files_from_history(entry.get("outputs"))
    if last_type == "execution_interrupted":
        return JobStatus.CANCELLED, None, []
    if last_type == "execution_error":
        return JobStatus.FAILED, error_from_message(last_data), []
    return JobStatus.FAILED, {"type": "unknown", "node_id": None, "node_type": None,
                              "message": "ComfyUI recorded the prompt as not successful"}, []


def times_from_history(entry: dict) -> tuple[float | None, float | None]:
    """(started, ended) in epoch seconds, from the timestamps (epoch ms) ComfyUI put on the
    entry's execution_start and on its final message; None where absent or not a time."""
    status = entry.get("status") if isinstance(entry.get("status"), dict) else {}
    messages = status.get("messages")
    started = None
    for message in messages if isinstance(messages, list) else []:
        if isinstance(message, list) and len(message) == 2 and message[0] == "execution_start":
            started = _seconds(message[1])
            break
    return started, _seconds(_last_execution_message(messages)[1])


def _seconds(data) -> float | None:
    """A message's `timestamp` (epoch ms) in seconds, if it is a plausible time."""
    stamp = data.get("timestamp") if isinstance(data, dict) else None
    if isinstance(stamp, bool) or not isinstance(stamp, (int, float)) or not math.isfinite(stamp):
        return None
    return stamp / 1000.0 if stamp > 0 else None


def _last_execution_message(messages) -> tuple[str | None, dict]:
    """The last of execution_success / _error / _interrupted in a history's messages."""
    final = ("execution_success", "execution_error", "execution_interrupted")
    for message in reversed(messages if isinstance(messages, list) else []):
        if isinstance(message, list) and len(message) == 2 and message[0] in final:
            return message[0], message[1] if isinstance(message[1], dict) else {}
    return None, {}


def _str_or_none(value) -> str | None:
    """Node ids and types as strings, absent ones as None."""
    return None if value is None else str(value)

"""What each ComfyUI websocket message does to a job: one small store change per message."""
from __future__ import annotations

import logging
import time
from typing import Callable

from comfy.jobs.job import Job, JobStatus
from comfy.tracking.outcome import error_from_message, files_from_output, outcome_from_history, times_from_history
from comfy.jobs.store import JobStore

logger = logging.getLogger(__name__)


def finish(status: JobStatus, error: dict | None = None, outputs: list | None = None,
           when: float | None = None) -> Callable[[Job], None]:
    """An edit that ends a job; `outputs` None keeps what the websocket already delivered."""
    def edit(job: Job) -> None:
        job.status = status
        job.finished_at = when or time.time()
        job.error = error
        if outputs is not None:
            job.outputs = tuple(outputs)
        if status == JobStatus.COMPLETED:
            job.nodes_done = max(job.nodes_done, job.nodes_total)
        job.queue_position = None
        job.progress_node = None
        job.done_nodes = frozenset()
    return edit


def finish_from_history(entry: dict) -> Callable[[Job], None]:
    """An edit that ends a job as ComfyUI's history entry records it, with its true times:
    a job whose websocket messages were missed (socket down, Cylindria restarted) still gets
    when it started and ended, not when Cylindria happened to look."""
    status, error, outputs = outcome_from_history(entry)
    started, ended = times_from_history(entry)
    end = finish(status, error, outputs, when=ended)

    def edit(job: Job) -> None:
        if job.started_at is None and started is not None:
            # ComfyUI's clock (ms, truncated) may read a little behind the one that stamped
            # the submission: a job never shows as started before it was submitted.
            job.started_at = max(started, job.submitted_at)
        end(job)
        job.finished_at = max(job.finished_at, job.started_at or job.submitted_at)
    return edit


def start_running(job: Job) -> None:
    """The prompt left the queue and runs now."""
    job.status = JobStatus.RUNNING
    job.queue_position = None
    if job.started_at is None:
        job.started_at = time.time()


def _mark_done(job: Job, nodes) -> None:
    """Count nodes as done (cached, executed, or left behind by the next one)."""
    job.done_nodes = job.done_nodes.union(str(n) for n in nodes)
    job.nodes_done = len(job.done_nodes)


def _on_cached(data: dict) -> Callable[[Job], None]:
    def edit(job: Job) -> None:
        start_running(job)
        _mark_done(job, data.get("nodes") or ())
    return edit


def _on_executing(data: dict) -> Callable[[Job], None]:
    node = data.get("node")
    if node is None:
        return finish(JobStatus.COMPLETED)

    def edit(job: Job) -> None:
        start_running(job)
        if job.progress_node is not None and job.progress_node != str(node):
            _mark_done(job, [job.progress_node])
        job.progress_node, job.progress_value, job.progress_max = str(node), 0.0, 0.0
    return edit


def _on_progress(data: dict) -> Callable[[Job], None]:
    def edit(job: Job) -> None:
        start_running(job)
        job.progress_value = _number(data.get("value"))
        job.progress_max = _number(data.get("max"))
        if data.get("node") is not None:
            job.progress_node = str(data["node"])
    return edit


def _on_executed(data: dict) -> Callable[[Job], None]:
    node = str(data.get("node"))
    files = files_from_output(node, data.get("output"))

    def edit(job: Job) -> None:
        start_running(job)
        _mark_done(job, [node])
        known = {(o["node_id"], o["filename"], o["subfolder"], o["type"]) for o in job.outputs}
        new = [f for f in files if (f["node_id"], f["filename"], f["subfolder"], f["type"]) not in known]
        job.outputs = job.outputs + tuple(new)
    return edit


HANDLERS: dict[str, Callable[[dict], Callable[[Job], None]]] = {
    "execution_start": lambda data: start_running,
    "execution_cached": _on_cached,
    "executing": _on_executing,
    "progress": _on_progress,
    "executed": _on_executed,
    "execution_success": lambda data: finish(JobStatus.COMPLETED),
    "execution_error": lambda data: finish(JobStatus.FAILED, error_from_message(data)),
    "execution_interrupted": lambda data: finish(JobStatus.CANCELLED),
}


# The messages that end a prompt: ComfyUI is done with it (`executing` with no node is the
# end marker of ComfyUIs older than execution_success, and follows it in newer ones).
_ENDS = frozenset({"execution_success", "execution_error", "execution_interrupted"})


def ended_prompt(message: dict) -> str | None:
    """The prompt id a message says ComfyUI finished with, or None."""
    data = message.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("prompt_id"), str):
        return None
    kind = message.get("type")
    if kind in _ENDS or (kind == "executing" and data.get("node") is None):
        return data["prompt_id"]
    return None


def handle_message(store: JobStore, gpu_id: int, message: dict) -> Job | None:
    """Apply one decoded websocket message; messages for prompts that are not ours are ignored."""
    handler = HANDLERS.get(message.get("type"))
    data = message.get("data")
    if handler is None or not isinstance(data, dict) or not isinstance(data.get("prompt_id"), str):
        return None
    return store.change_by_prompt(gpu_id, data["prompt_id"], handler(data))


def _number(value) -> float:
    """A progress value as a float (ComfyUI sends ints or floats)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0

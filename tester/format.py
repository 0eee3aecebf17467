"""Turning Results into the lines shown in the tester's text window."""

import json
from datetime import datetime
from typing import Any

from tester.client import Result

MAX_BODY_CHARS = 4000  # a non-JSON body (an HTML error page, say) is cut here

# Tags the text window knows how to colour.
HEADER, OK, ERROR, INFO, BODY = "header", "ok", "error", "info", "body"

Lines = list[tuple[str, str]]


def pretty_json(data: Any) -> str:
    """Indent JSON data for reading, keeping non-ASCII characters as they are."""
    return json.dumps(data, indent=2, ensure_ascii=False)


def header(title: str, now: datetime | None = None) -> tuple[str, str]:
    """The first line of every entry: the local time and what was done."""
    now = now or datetime.now()
    return f"── {now:%H:%M:%S}  {title} ──", HEADER


def status_line(result: Result) -> tuple[str, str]:
    """One line: ``HTTP 201 CREATED · 12 ms``, or the connection error and its time."""
    ms = f"{result.elapsed_ms:.0f} ms"
    if result.status is None:
        return f"{result.error_text} · {ms}", ERROR
    reason = f" {result.reason}" if result.reason else ""
    return f"HTTP {result.status}{reason} · {ms}", OK if result.ok else ERROR


def error_summary(result: Result) -> str | None:
    """For an error answer in the contract's shape, ``code: sentence``; otherwise None."""
    data = result.data
    if result.ok or not isinstance(data, dict) or "error" not in data:
        return None
    code = data.get("code")
    return f"{code}: {data['error']}" if code else str(data["error"])


def gpu_text(gpu_id: Any) -> str:
    """``GPU 1``, or ``GPU -`` for a job held in Cylindria's queue (GpuId=auto, not sent yet)."""
    return "GPU -" if gpu_id is None else f"GPU {gpu_id}"


def is_job(data: Any) -> bool:
    """Tell whether an answer's data is a job view (startjob, jobstatus)."""
    return isinstance(data, dict) and "job_id" in data and "status" in data


def job_summary(job: dict, status: str | None = None) -> str:
    """Where a job stands, e.g. ``queued · GPU - · queue position 2 · priority 5 · attempts 0``.

    ``status`` replaces the job's own (the watch shows ``running 40%``); priority and attempts
    appear when the server sends them.
    """
    parts = [status or str(job.get("status", "?")), gpu_text(job.get("gpu_id"))]
    position = job.get("queue_position")
    if job.get("status") == "queued" and position is not None:
        parts.append(f"queue position {position}")
    parts.extend(f"{name} {job[name]}" for name in ("priority", "attempts")
                 if job.get(name) is not None)
    return " · ".join(parts)


def is_asset(data: Any) -> bool:
    """Tell whether an answer's data is an asset (an upload's answer)."""
    return isinstance(data, dict) and all(key in data for key in ("id", "hash", "size_bytes"))


def asset_summary(asset: dict) -> str:
    """One line about an uploaded asset, e.g. ``asset 9f86… · cat.png · 1,234 bytes · new``."""
    size = asset.get("size_bytes")
    size_text = f"{size:,} bytes" if isinstance(size, int) else f"{size} bytes"
    fresh = "new" if asset.get("created_new") else "already stored (created_new: false)"
    return f"asset {asset['id']} · {asset.get('name')} · {size_text} · {fresh}"


def asset_reference(asset: dict) -> str:
    """The input value by which a workflow refers to the asset."""
    return json.dumps({"__type": "core/ASSET", "info": {"id": asset["id"]}})


def is_models(data: Any) -> bool:
    """Tell whether an answer's data is the model list (GET /models)."""
    return isinstance(data, dict) and isinstance(data.get("folders"), dict)


def model_lines(data: dict) -> Lines:
    """The model list as an operator reads it: each folder with its count, then each file with
    the GPUs that have it, e.g. ``  sdxl.safetensors · GPU 0, 1``."""
    folders = data["folders"]
    files = sum(len(models) for models in folders.values() if isinstance(models, list))
    lines = [(f"{len(folders)} model folders, {files} files", INFO)]
    for folder in sorted(folders):
        models = folders[folder] if isinstance(folders[folder], list) else []
        lines.append((f"{folder} ({len(models) or 'none'})", INFO))
        for model in models:
            gpus = ", ".join(str(gpu) for gpu in model.get("gpus", ()))
            lines.append((f"  {model.get('name')} · GPU {gpus or '-'}", BODY))
    return lines


def is_fleet(data: Any) -> bool:
    """Tell whether an answer's data is the fleet (GET /fleet)."""
    return isinstance(data, dict) and isinstance(data.get("nodes"), list) and "node" in data


def fleet_lines(data: dict) -> Lines:
    """The fleet as an operator reads it: each node with its lease and held jobs (a node whose
    lease ran out in red), then each of its GPUs, e.g. ``  GPU 0 · reachable · 1 running``."""
    nodes = [node for node in data["nodes"] if isinstance(node, dict)]
    live = sum(1 for node in nodes if node.get("live"))
    lines = [(f"{len(nodes)} node(s), {live} live · answered by {data.get('node')}", INFO)]
    for node in nodes:
        state = "live" if node.get("live") else "gone"
        lines.append((f"{node.get('node')} · {state} · lease {node.get('lease_age_seconds')}s "
                      f"of {node.get('lease_seconds')}s · {node.get('held_jobs')} held · "
                      f"{node.get('advertise_url')}", INFO if node.get("live") else ERROR))
        for gpu in node.get("gpus") or ():
            reachable = "reachable" if gpu.get("reachable") else "unreachable"
            lines.append((f"  GPU {gpu.get('gpu_id')} · {reachable} · websocket "
                          f"{gpu.get('websocket')} · {gpu.get('running')} running · "
                          f"{gpu.get('queue_length')} queued", BODY))
    return lines


def body_lines(result: Result) -> Lines:
    """The answer's body: pretty JSON, or the text cut to MAX_BODY_CHARS."""
    if result.status is None:
        return []
    if result.is_json:
        return [(pretty_json(result.data), BODY)]
    if not result.body:
        return [("(empty body)", INFO)]
    text = result.body
    note = f"(not JSON, {len(text)} characters)"
    if len(text) > MAX_BODY_CHARS:
        text = text[:MAX_BODY_CHARS] + " …"
    return [(note, INFO), (text, BODY)]


def format_lines(title: str, result: Result, now: datetime | None = None) -> Lines:
    """Every line of one result as (text, tag) pairs, in display order."""
    lines = [header(title, now), (f"{result.method} {result.url}", INFO), status_line(result)]
    summary = error_summary(result)
    if summary:
        lines.append((summary, ERROR))
    elif result.ok and is_job(result.data):
        lines.append((job_summary(result.data), INFO))
    elif result.ok and is_asset(result.data):
        lines.append((asset_summary(result.data), INFO))
    elif result.ok and is_models(result.data):  # a listing, not its JSON: it may be long
        return lines + model_lines(result.data)
    elif result.ok and is_fleet(result.data):
        return lines + fleet_lines(result.data)
    return lines + body_lines(result)


def format_note(title: str, message: str, tag: str = ERROR, now: datetime | None = None) -> Lines:
    """An entry that is only a message, e.g. a file refused before sending."""
    return [header(title, now), (message, tag)]


def as_text(lines: Lines) -> str:
    """Join (text, tag) pairs into plain text, one per line."""
    return "\n".join(text for text, _ in lines)

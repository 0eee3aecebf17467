"""A job as a row and back, the same for every backend (each binds these values its way)."""
from __future__ import annotations

import json
from collections import Counter

from comfy.jobs import FINISHED, Job, JobStatus

COLUMNS = ("job_id", "gpu_id", "prompt_id", "fingerprint", "status", "number", "submitted_at",
           "started_at", "finished_at", "error", "outputs", "warnings", "cancel_requested",
           "nodes_done", "nodes_total", "auto", "priority", "attempts", "held_at", "labels",
           "webhook", "submitted_by")
DURABLE = COLUMNS[1:]  # what an update writes (the job id names the row)
JSON_COLUMNS = frozenset({"error", "outputs", "warnings", "labels"})
FLAGS = frozenset({"cancel_requested", "auto"})
FINISHED_VALUES = tuple(sorted(status.value for status in FINISHED))
HELD = JobStatus.HELD.value
# SQL fragments the backends share (constants, never input): the finished statuses as a list
# of literals, an asset's columns and tables in Asset's order, an event's in OutboxRow's.
FINISHED_LIST = ", ".join(f"'{value}'" for value in FINISHED_VALUES)
ASSET_FROM = ("a.id, a.hash, a.name, f.size_bytes, f.content_type, a.created_at, a.used_at, "
              "a.owner FROM assets AS a JOIN asset_files AS f ON f.hash = a.hash")
EVENT_FROM = ("id, job_id, url, event, body, created_at, attempts, due_at, client, last_error, "
              "delivered_at, given_up_at FROM webhook_outbox")
NO_GPU = "none"  # the GPU of a job never sent to one (a held GpuId=auto job cancelled)
RETIRED_PREFIX = "retired:"
STATUS = {status.value: status for status in JobStatus}


def values(job: Job, names=COLUMNS, flags_as_int: bool = True) -> list:
    """The named fields of a job as a database stores them (JSON text; flags as 0/1 for
    SQLite, as booleans for PostgreSQL)."""
    return [_to_db(name, getattr(job, name), flags_as_int) for name in names]


def _to_db(name: str, value, flags_as_int: bool):
    """One field as stored."""
    if name in JSON_COLUMNS:
        return None if value is None else json.dumps(list(value) if name == "outputs" else value)
    if name == "status":
        return value.value
    if name in FLAGS:
        return int(value) if flags_as_int else bool(value)
    return value


def to_job(row) -> Job:
    """A row of (seq, *COLUMNS) as a Job (positionally: a start loads every row through here)."""
    (seq, job_id, gpu_id, prompt_id, fingerprint, status, number, submitted_at, started_at,
     finished_at, error, outputs, warnings, cancel_requested, nodes_done, nodes_total,
     auto, priority, attempts, held_at, labels, webhook, submitted_by) = row
    return Job(job_id, gpu_id, prompt_id, fingerprint, STATUS[status], number, submitted_at,
               started_at, finished_at, _json_or_none(error),
               tuple(json.loads(outputs)) if outputs else (), _json_or_none(warnings),
               bool(cancel_requested), nodes_done, nodes_total, bool(auto), priority, attempts,
               held_at, _json_or_none(labels), webhook, submitted_by, seq)


def retired_key(gpu_id: int | None, status: str) -> str:
    """The meta key counting the jobs of a GPU and status that retention removed."""
    return f"{RETIRED_PREFIX}{NO_GPU if gpu_id is None else gpu_id}:{status}"


def retired_counts(rows) -> Counter:
    """(gpu, status) -> count, from (key, value) rows of the retired counters."""
    counts = Counter()
    for key, value in rows:
        _, gpu, status = key.split(":")
        counts[(None if gpu == NO_GPU else int(gpu), STATUS[status])] = int(value)
    return counts


def deleted_counts(rows) -> Counter:
    """(gpu, status) -> deleted, from (gpu_id, status, ...) rows a delete returned."""
    return Counter((row[0], STATUS[row[1]]) for row in rows)


def _json_or_none(text: str | None):
    """A JSON column's value."""
    return None if text is None else json.loads(text)

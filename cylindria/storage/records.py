"""A job as a row and back, the same for every backend (each binds these values its way)."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

from comfy.jobs.job import FINISHED, Job, JobStatus

COLUMNS = ("job_id", "gpu_id", "prompt_id", "fingerprint", "status", "number", "submitted_at",
           "started_at", "finished_at", "error", "outputs", "warnings", "cancel_requested",
           "nodes_done", "nodes_total", "auto", "priority", "attempts", "held_at", "labels",
           "webhook", "submitted_by", "node", "fence")
# What an update writes: the job id names the row, and the fence (Job.fence) is the row's
# owner token, which a write names and never sets (only a takeover raises it).
DURABLE = COLUMNS[1:-1]
JSON_COLUMNS = frozenset({"error", "outputs", "warnings", "labels"})
FLAGS = frozenset({"cancel_requested", "auto"})
FINISHED_VALUES = tuple(sorted(status.value for status in FINISHED))
HELD = JobStatus.HELD.value
# SQL fragments the backends share (constants, never input): the finished statuses as a list
# of literals, an asset's columns and tables in Asset's order, an event's in OutboxRow's.
FINISHED_LIST = ", ".join(f"'{value}'" for value in FINISHED_VALUES)
ASSET_FROM = ("a.id, a.hash, a.name, f.size_bytes, f.content_type, a.created_at, a.used_at, "
              "a.owner FROM assets AS a JOIN asset_files AS f ON f.hash = a.hash")
# Without claimed_by and claimed_until (schema 3): a claim is one node's try under way, never
# carried by `db copy`; the copied events are unclaimed, due for the target's senders.
EVENT_COLUMNS = ("id", "job_id", "url", "event", "body", "created_at", "attempts", "due_at",
                 "client", "last_error", "delivered_at", "given_up_at")
EVENT_FROM = f"{', '.join(EVENT_COLUMNS)} FROM webhook_outbox"
NO_CURSOR = 2 ** 63 - 1  # a page's `before` when none is given: after every seq
NO_GPU = "none"  # the GPU of a job never sent to one (a held GpuId=auto job cancelled)
RETIRED_PREFIX = "retired:"
STATUS = {status.value: status for status in JobStatus}
SCHEMA_VERSION_KEY = "schema_version"  # each backend's own: never copied between stores


@dataclass(frozen=True)
class Kind:
    """One kind of row of a whole store, as `cylindria db copy` reads and writes it."""

    table: str
    columns: tuple
    order: str  # the order rows are read in (jobs by seq: the held queue's order)
    where: str = "TRUE"


# A whole store, kind by kind, in the order a copy writes them (a row before those naming it).
WHOLE = {
    "jobs": Kind("jobs", ("seq",) + COLUMNS, "seq"),
    "workflows": Kind("workflows", ("job_id", "body"), "job_id"),
    "asset_files": Kind("asset_files", ("hash", "size_bytes", "content_type"), "hash"),
    "assets": Kind("assets", ("id", "owner", "hash", "name", "created_at", "used_at"),
                   "created_at, id"),
    "asset_uses": Kind("asset_uses", ("asset_id", "job_id", "fingerprint"),
                       "asset_id, job_id, fingerprint"),
    "events": Kind("webhook_outbox", EVENT_COLUMNS, "created_at, id"),
    "meta": Kind("meta", ("key", "value"), "key", f"key <> '{SCHEMA_VERSION_KEY}'"),
}
# The bytes of the asset files, in rows of (hash, n, bytes) of at most CHUNK_BYTES each: a
# kind of its own, outside WHOLE, since only a store whose database holds the bytes
# (AssetRows.holds_bytes) has their rows; `db copy` reads them with AssetRows.read_file.
CHUNKS = "asset_chunks"
CHUNK_BYTES = 1024 * 1024
# The statement each backend writes a copied row of a kind with (jobs and meta: by the mode).
WHOLE_WRITES = {"workflows": "whole_workflow", "asset_files": "add_file", "assets": "add_asset",
                "asset_uses": "add_use", "events": "whole_event", CHUNKS: "add_chunk"}
# What a whole store holds, in one statement for both engines (run without parameters).
COUNT_WHOLE = ("SELECT (SELECT COUNT(*) FROM jobs), "
               f"(SELECT COUNT(*) FROM jobs WHERE status = '{HELD}'), "
               "(SELECT COUNT(*) FROM workflows), (SELECT COUNT(*) FROM asset_files), "
               "(SELECT COALESCE(SUM(size_bytes), 0) FROM asset_files), "
               "(SELECT COUNT(*) FROM assets), (SELECT COUNT(*) FROM asset_uses), "
               "(SELECT COUNT(*) FROM webhook_outbox), "
               "(SELECT COUNT(*) FROM webhook_outbox WHERE due_at IS NOT NULL), "
               f"(SELECT COUNT(*) FROM meta WHERE key LIKE '{RETIRED_PREFIX}%')")
_FLAG_INDEXES = tuple(1 + COLUMNS.index(name) for name in sorted(FLAGS))


def whole_select(kind: str) -> str:
    """The statement that reads every row of a kind (the same on every engine)."""
    k = WHOLE[kind]
    return f"SELECT {', '.join(k.columns)} FROM {k.table} WHERE {k.where} ORDER BY {k.order}"


def portable(kind: str, row) -> tuple:
    """A row as every backend writes it: flags as booleans, blobs as bytes."""
    row = list(row)
    if kind == "jobs":
        for index in _FLAG_INDEXES:
            row[index] = bool(row[index])
    elif kind in ("workflows", "events"):
        blob = WHOLE[kind].columns.index("body")
        row[blob] = bytes(row[blob])
    return tuple(row)


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
     auto, priority, attempts, held_at, labels, webhook, submitted_by, node, fence) = row
    return Job(job_id, gpu_id, prompt_id, fingerprint, STATUS[status], number, submitted_at,
               started_at, finished_at, _json_or_none(error),
               tuple(json.loads(outputs)) if outputs else (), _json_or_none(warnings),
               bool(cancel_requested), nodes_done, nodes_total, bool(auto), priority, attempts,
               held_at, _json_or_none(labels), webhook, submitted_by, node, fence, seq)


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

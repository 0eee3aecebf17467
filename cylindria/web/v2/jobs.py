"""Comfy API v2 jobs: submit, list, get, workflow, cancel and live events.

A v2 job is a GpuId=auto job of the same store and dispatcher as /startjob's (its id answers
on /jobstatus too); this module only reads v2's requests and writes v2's shapes.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from pathlib import Path

from flask import Blueprint, current_app, jsonify, request

from comfy.dispatch.cancel import JobFinished, JobGone, cancel_anywhere
from comfy.jobs.job import Job
from comfy.private import kept_private
from comfy.dispatch.submit import JobIdConflict
from comfy.inputs.workflow import SECRET_EXTRA_KEYS, WorkflowError, load_json, refuse_ui_format, workflow_of
from cylindria.web.context import ctx, wait_until_reconciled
from cylindria.web.errors import ApiError
from cylindria.web.lookup import held_position, listed_by, submitter, visible
from cylindria.web.params import JOB_ID, PRIORITY_RANGE
from cylindria.web.streams import event, event_stream
from cylindria.web.submission import accepting, hold, request_body, with_webhook
from cylindria.web.v2.errors import invalid_request, not_found
from cylindria.web.v2.headers import idempotency_key
from cylindria.web.v2.shapes import STATUS, TERMINAL, progress, shapes_now, status
from cylindria.web.views import queue_position

bp = Blueprint("v2_jobs", __name__)
bp.before_request(wait_until_reconciled)

SETTLE_WAIT = 90.0  # seconds a cancel waits for a submission still under way
# Idempotency keys name jobs: the same client's same key is the same job id, so the store's
# own exactly-once (same id, same workflow: the job; another workflow: refused) does the rest.
# The id is an HMAC of (client, key) under this installation's secret, kept in the data dir:
# another client cannot compute it, so cannot take it first (startjob chooses ids freely).
ID_SECRET_FILE = "idempotency_secret"
ID_SECRET = "cylindria_v2_id_secret"  # app.extensions key
# Before that, ids were uuid5 of (client, key) in this namespace: a key's job from then is
# still found under it, if the same client submitted it.
LEGACY_NAMESPACE = uuid.UUID("6c1d3a1e-4f0b-5a51-9c8e-3f2b7d0c9a11")
MAX_LABELS, MAX_LABEL_KEY, MAX_LABEL_VALUE = 16, 64, 512
LABEL_KEY = re.compile(r"[A-Za-z0-9_.:/-]{1,%d}" % MAX_LABEL_KEY)
PAGE_DEFAULT, PAGE_MAX = 50, 100
RESERVED = ("inputs",)  # the v2 contract refuses it today


@bp.record_once
def _load_id_secret(state) -> None:
    """Read (or make, on the first start) the secret v2 job ids are derived with."""
    data_dir = state.app.extensions["cylindria"].config.data_dir
    state.app.extensions[ID_SECRET] = id_secret(Path(data_dir))


def id_secret(data_dir: Path) -> bytes:
    """This installation's secret for v2 job ids (32 random bytes, generated once)."""
    text = kept_private(data_dir / ID_SECRET_FILE, lambda: secrets.token_hex(32), _read_secret)
    return bytes.fromhex(text)


def _read_secret(path: Path) -> str:
    """The secret file's 64 hex digits, or "" (then a new secret is made) for anything else."""
    text = path.read_text(encoding="utf-8", errors="replace").strip()
    return text if re.fullmatch(r"[0-9a-f]{64}", text) else ""


def keyed_job_id(secret: bytes, client: str, key: str) -> str:
    """The job id of a client's Idempotency-Key: a UUID only the secret's holder computes."""
    digest = hmac.new(secret, f"{client}\0{key}".encode("utf-8", "surrogateescape"),
                      hashlib.sha256).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def job_id_for(client: str | None, key: str | None) -> str:
    """The job id a submission gets: its key's (the same job again for the same client and
    key, also one submitted before ids were HMACs), or a new random one without a key."""
    if not key:
        return str(uuid.uuid4())
    legacy = str(uuid.uuid5(LEGACY_NAMESPACE, f"{client or ''}\0{key}"))
    existing = ctx().store.get(legacy)
    if existing is not None and existing.submitted_by == client:
        return legacy
    return keyed_job_id(current_app.extensions[ID_SECRET], client or "", key)


@bp.post("/jobs")
def submit():
    """POST /jobs: the workflow held in Cylindria's queue for whichever GPU is ready first.
    201 with the job; a retry with the same Idempotency-Key and body is answered with the
    same job (Idempotency-Replayed: true) and never runs it twice."""
    context = ctx()
    document = load_json(request_body())
    if not isinstance(document, dict):
        raise invalid_request("the body must be a JSON object with a 'workflow'")
    for name in RESERVED:
        if document.get(name) is not None:
            raise ApiError(422, "invalid_workflow", f"'{name}' is reserved and not accepted")
    graph = document.get("workflow")
    if not isinstance(graph, dict):
        raise ApiError(422, "invalid_workflow", "missing 'workflow' (an API-format graph)")
    refuse_ui_format(graph)
    labels, priority = _labels(document.get("metadata")), _priority(document.get("priority"))
    workflow = with_webhook(context, workflow_of(graph, _extra_data(document.get("extra_data"))),
                            document.get("webhook_url"), request.args.get("webhook"))
    key, client = idempotency_key(), submitter()
    # A key is the client's own: two clients choosing the same key submit two jobs.
    job_id = job_id_for(client, key)
    try:
        with accepting(context, job_id, workflow):
            job, created = hold(context, job_id, workflow, priority, labels, client)
    except JobIdConflict:
        raise _key_reused() from None
    if not created and ((job.labels or {}) != labels or job.priority != priority
                        or not visible(job)):
        raise _key_reused()
    response = jsonify(shapes_now().job(job, held_position(job)))
    response.status_code = 201
    if not created:
        response.headers["Idempotency-Replayed"] = "true"
    return response


@bp.get("/jobs")
def list_jobs():
    """GET /jobs: newest first, `limit` per page (1..100, default 50), `cursor` from the
    previous page's `next_cursor`, filtered by `status` (comma separated) and by labels
    (`metadata[<key>]=<value>`, every pair must match)."""
    context = ctx()
    args = request.args
    limit = _whole(args.get("limit"), "limit", PAGE_DEFAULT, 1, PAGE_MAX)
    cursor = args.get("cursor")
    if cursor is not None and not re.fullmatch(r"[1-9][0-9]{0,18}", cursor):
        raise ApiError(400, "invalid_cursor", "'cursor' is not one this server gave")
    wanted = None
    if "status" in args:
        wanted = set(args["status"].split(","))
        known = set(STATUS.values()) | {"canceling", "expired"}
        if wanted - known:
            raise invalid_request(f"'status' must be v2 statuses separated by commas, not "
                                  f"{', '.join(sorted(wanted - known))[:200]!r}", "status")
    # A label filter on a key no job could have is no error: it matches no job.
    filters = [(match.group(1), value) for name, value in args.items(multi=True)
               if (match := re.fullmatch(r"metadata\[(.*)\]", name)) is not None]

    owner = listed_by(None)

    def matches(job: Job) -> bool:
        labels = job.labels or {}
        return (wanted is None or status(job) in wanted) and \
            all(labels.get(k) == v for k, v in filters)
    page, next_before = context.store.page(None, None, limit, int(cursor) if cursor else None,
                                           match=matches if wanted or filters else None,
                                           submitted_by=owner)
    shapes = shapes_now()
    return jsonify({"jobs": [shapes.summary(job, held_position(job)) for job in page],
                    "next_cursor": str(next_before) if next_before else None})


@bp.get("/jobs/<job_id>")
def get_job(job_id: str):
    """GET /jobs/{id}: the whole job, outputs included."""
    job = _known(job_id, anywhere=True)
    return jsonify(shapes_now().job(job, held_position(job)))


@bp.get("/jobs/<job_id>/workflow")
def get_workflow(job_id: str):
    """GET /jobs/{id}/workflow: the API-format graph as the client sent it (asset references
    as written; credentials never kept)."""
    job = _known(job_id, anywhere=True)
    body = ctx().store.workflow(job.job_id)
    if body is None:
        raise not_found("the job's workflow (a job finished before this Cylindria version "
                        "kept workflows has none):")
    try:
        document = load_json(body)
    except WorkflowError:
        raise not_found("a readable workflow for this job") from None
    graph = document["prompt"] if isinstance(document.get("prompt"), dict) else document
    return jsonify({"workflow": graph, "format": "api"})


@bp.post("/jobs/<job_id>/cancel")
def cancel(job_id: str):
    """POST /jobs/{id}/cancel: idempotent; answers the job `canceled`, `canceling` (ComfyUI
    is interrupting it), or as it ended."""
    context = ctx()
    job = _known(job_id, anywhere=True)
    try:
        job, _ = cancel_anywhere(context.store, context.gpus, job, SETTLE_WAIT)
    except JobGone:
        raise not_found("job") from None
    except JobFinished as exc:
        job = exc.job
    return jsonify(shapes_now().job(job, held_position(job)))


@bp.get("/jobs/<job_id>/events")
def events(job_id: str):
    """GET /jobs/{id}/events: v2's Server-Sent Events: `status` at once and at each change,
    `progress` (at most 4 a second), `output` as each output is written; ends after the
    terminal status. No `preview`: Cylindria drops ComfyUI's preview frames unread."""
    context = ctx()
    job = _known(job_id, anywhere=True)
    shapes = shapes_now()
    shown_outputs = [0]

    def render(kind: str, job: Job) -> bytes:
        frames = []
        for index in range(shown_outputs[0], len(job.outputs)):
            frames.append(event("output", shapes.output(job, index)))
        shown_outputs[0] = len(job.outputs)
        snapshot = progress(job)
        if kind == "status":
            position = queue_position(job, held_position(job, context))
            frames.append(event("status", {"status": status(job), "queue_position": position}))
            if snapshot is not None and status(job) not in TERMINAL:
                frames.append(event("progress", snapshot))
        elif snapshot is not None:
            frames.append(event("progress", snapshot))
        return b"".join(frames)
    return event_stream(context, job.job_id, render)


def _known(job_id: str, anywhere: bool = False) -> Job:
    """The job under this id, or 404 not_found (an id that could never exist included).
    `anywhere`: of any node of the fleet (see lookup.known_job); else one held here."""
    store = ctx().store
    job = (store.lookup if anywhere else store.get)(job_id) if JOB_ID.fullmatch(job_id) else None
    if job is None or not visible(job):
        raise not_found("job")
    return job


def _labels(value) -> dict:
    """`metadata`: string labels, at most 16, keys of letters, digits and _ . : / -."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(422, "metadata_invalid", "'metadata' must be an object of string labels")
    if len(value) > MAX_LABELS:
        raise ApiError(422, "metadata_invalid",
                       f"'metadata' has {len(value)} labels; at most {MAX_LABELS} are kept")
    for key, text in value.items():
        if not LABEL_KEY.fullmatch(key):
            raise ApiError(422, "metadata_invalid", f"label key {key[:80]!r} must be 1 to "
                           f"{MAX_LABEL_KEY} of A-Z a-z 0-9 _ . : / -", {"key": key[:80]})
        if not isinstance(text, str) or len(text) > MAX_LABEL_VALUE:
            raise ApiError(422, "metadata_invalid", f"label {key!r} must be a string of at most "
                           f"{MAX_LABEL_VALUE} characters", {"key": key})
    return dict(value)


def _priority(value) -> int:
    """`priority`: an integer from -100 to 100 (higher is sent first), default 0."""
    low, high = PRIORITY_RANGE
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ApiError(422, "invalid_request", f"'priority' must be an integer from {low} to "
                       f"{high}", {"field": "priority"})
    return value


def _extra_data(value) -> dict:
    """`extra_data`: only the credentials partner nodes authenticate with, as strings."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not value or set(value) - SECRET_EXTRA_KEYS \
            or not all(isinstance(v, str) and v for v in value.values()):
        raise invalid_request("'extra_data' accepts only "
                              f"{' and '.join(sorted(SECRET_EXTRA_KEYS))}, as strings",
                              "extra_data")
    return dict(value)


def _key_reused() -> ApiError:
    """422 idempotency_key_reuse: the key names a job submitted with another body."""
    return ApiError(422, "idempotency_key_reuse", "this Idempotency-Key was used for a "
                    "different request; use a new key for a new job")


def _whole(text: str | None, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within [low, high]."""
    if text is None:
        return default
    if not re.fullmatch(r"[0-9]{1,6}", text) or not low <= int(text) <= high:
        raise invalid_request(f"'{name}' must be an integer from {low} to {high}", name)
    return int(text)

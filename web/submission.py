"""Taking a job in, for every surface that submits one (startjob, the Comfy API v2): its
asset references checked and recorded, its credentials held in memory, and a GpuId=auto job
checked against what the GPUs have installed before it is held in Cylindria's queue."""
from __future__ import annotations

import time
from contextlib import contextmanager

from flask import request

from comfy.catalogue import check_workflow, needs_of
from comfy.placing import AssetNotFound, references, resolve
from comfy.submit import QueueFull, hold_job
from comfy.workflow import Workflow
from web.errors import ApiError
from webhooks.address import InvalidWebhook

QUEUE_FULL_RETRY = 5  # seconds a client is told to wait when Cylindria's queue is full
FIRST_CATALOGUE_WAIT = 5.0  # seconds a GpuId=auto submission waits for the first node classes
# ... and only this long after the start: a ComfyUI that has never answered since (hung, or
# answering garbage) is not waited for by every submission, for as long as that lasts.
START_WINDOW = 60.0


def request_body() -> bytes:
    """The request's body as one bytes object, read once: werkzeug's get_data() holds a second
    copy while it joins what it read (30 MiB more for a 30 MiB workflow)."""
    request.stream  # Flask's body limit: its 413 comes from here, before a byte is read
    length = request.content_length or 0  # waitress gives every body one, chunked ones too
    return request.environ["wsgi.input"].read(length) if length else b""


@contextmanager
def accepting(context, job_id: str, workflow: Workflow):
    """Around one submission: its assets are checked and recorded (yields True if it has
    any), its credentials held for the dispatcher; a refused submission leaves neither."""
    uses_assets = note_assets(context, job_id, workflow)
    context.secrets.keep(job_id, workflow.withheld)
    try:
        yield uses_assets
    except AssetNotFound as exc:  # deleted while this submission was under way
        context.secrets.refused(job_id)
        raise asset_missing(exc) from None
    except BaseException:
        context.secrets.refused(job_id)
        raise


def note_assets(context, job_id: str, workflow: Workflow) -> bool:
    """Check the workflow's asset references (400 asset_not_found for one Cylindria does not
    hold: no job) and record that this job needs them; True if it has any. A retry of a
    job that exists is answered with the job even if its assets are gone by now."""
    if not references(workflow.prompt):
        return False
    try:
        resolved = resolve(workflow.prompt, context.assets)
    except AssetNotFound as exc:
        if context.store.get(job_id) is not None:
            return True  # the job's own answer (200, or 409 for another workflow) follows
        raise asset_missing(exc) from None
    context.assets.use(job_id, workflow.fingerprint, resolved.values())
    return True


def asset_missing(exc: AssetNotFound) -> ApiError:
    """400 asset_not_found naming the reference."""
    return ApiError(400, "asset_not_found", f"node {exc.node_id} input {exc.input} refers to an "
                    "asset Cylindria does not hold",
                    {"node_id": exc.node_id, "input": exc.input, "info": exc.info})


def hold(context, job_id: str, workflow: Workflow, priority: int, labels: dict | None = None,
         submitted_by: str | None = None):
    """GpuId=auto: check the workflow against what the reachable GPUs have installed, then
    hold it in Cylindria's queue (201 before any GPU has it). Returns (job, created)."""
    existing = context.store.get(job_id)
    if existing is None:  # a retry is answered whatever the GPUs look like now
        check_workflow(workflow.prompt, catalogues(context.gpus))
        context.dispatcher.remember(job_id, workflow.fingerprint, needs_of(workflow.prompt))
    try:
        return hold_job(context.store, job_id, workflow, priority, context.config.max_queued,
                        labels, submitted_by)
    except QueueFull as exc:
        context.dispatcher.forget(job_id, workflow.fingerprint)
        raise ApiError(429, "queue_full", f"Cylindria's queue is full ({exc.limit} jobs held); "
                       "try again later", {"max_queued": exc.limit},
                       headers={"Retry-After": str(QUEUE_FULL_RETRY)}) from None
    except BaseException:  # another workflow won this id, say: what we remembered goes
        context.dispatcher.forget(job_id, workflow.fingerprint)
        raise


def with_webhook(context, workflow: Workflow, *given) -> Workflow:
    """The workflow with the webhook the client gave (the query's, or the body's; the same
    URL if both), checked: 400 invalid_webhook for a URL Cylindria will not call."""
    given = [url for url in given if url is not None]
    if not given:
        return workflow
    if not all(isinstance(url, str) for url in given):
        raise ApiError(400, "invalid_webhook", "the webhook must be a URL string")
    if len(set(given)) > 1:
        raise ApiError(400, "invalid_webhook", "two different webhooks were given; send one")
    url = given[0]
    try:
        target = context.webhooks.check(url)
    except InvalidWebhook as exc:
        raise ApiError(400, "invalid_webhook", str(exc)) from None
    return workflow.with_webhook(target.url)


def catalogues(gpus) -> list:
    """The node classes of the reachable GPUs, to check a GpuId=auto workflow against. Just
    after a start, a GPU not known to be down may not have had its classes read yet (or not
    even its first answer, under load): the submission then waits for that first read
    (briefly), rather than hold a workflow no GPU could run unchecked."""
    now = time.monotonic()
    deadline = now + FIRST_CATALOGUE_WAIT
    for gpu in gpus:
        if gpu.reachable is not False and gpu.catalogue is None \
                and now - gpu.created_at < START_WINDOW:
            gpu.catalogue_tried.wait(max(0.0, deadline - time.monotonic()))
    return [gpu.catalogue for gpu in gpus if gpu.reachable and gpu.catalogue is not None]

"""Taking a job in, for every surface that submits one (startjob, the Comfy API v2): the
files it reads checked, its asset references checked and recorded, and a GpuId=auto job
checked against what the GPUs have installed before it is held in Cylindria's queue. (Its
credentials are bound to the job by the store, in the step that creates it: comfy.jobs.withheld.)

A workflow's own faults are answered the same whether or not another client's job holds the
id (an own client must not learn which ids exist): only a job the client may see answers a
retry in their stead."""
from __future__ import annotations

import time
from contextlib import contextmanager
from functools import partial

from flask import request

from comfy.comfyui.catalogue import check_workflow, needs_of
from comfy.inputs.assetfiles import AssetUnavailable
from comfy.inputs.fileinputs import FileNotAllowed, check_files, merged, owns_output
from comfy.inputs.placing import AssetNotFound, references, resolve
from comfy.dispatch.submit import QueueFull, hold_job
from comfy.inputs.workflow import Workflow, WorkflowError
from cylindria.web.assets import viewer
from cylindria.web.auth import current_client
from cylindria.web.errors import ApiError
from cylindria.web.lookup import visible
from cylindria.webhooks.address import InvalidWebhook

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
def accepting(context, job_id: str, workflow: Workflow, gpu_id: int | None = None):
    """Around one submission to GPU `gpu_id` (None: GpuId=auto): the files it reads checked,
    its assets checked and held (yields True if it has any); an asset deleted meanwhile is 400
    asset_not_found, and a refused submission leaves no use."""
    check_file_inputs(context, job_id, workflow, gpu_id)
    with assets_held(context, job_id, workflow) as uses_assets:
        try:
            yield uses_assets
        except AssetNotFound as exc:  # deleted while this submission was under way
            raise asset_missing(exc) from None
        except AssetUnavailable as exc:  # its bytes could not be had when it was sent
            raise ApiError(409, "asset_on_other_node", str(exc)) from None


def check_file_inputs(context, job_id: str, workflow: Workflow, gpu_id: int | None) -> None:
    """400 file_not_allowed for an input naming a path outside ComfyUI's folders, or, for an
    own client, a file input naming anything but its own assets and its own jobs' outputs."""
    client = current_client()
    own_output = None  # any key but an own one may name any file in ComfyUI's folders
    if client is not None and client.own:
        own_output = partial(_owns_output, context, client.name, gpu_id)
    # Every GPU's marks, pinned or not: a superset only refuses more, and a GPU's catalogue
    # may change (a restarted ComfyUI) before a held or requeued job is sent.
    file_inputs = merged(gpu.catalogue.file_inputs for gpu in context.gpus
                         if gpu.catalogue is not None)
    try:
        check_files(workflow.prompt, file_inputs, own_output)
    except FileNotAllowed as exc:
        if not retried(context, job_id):
            raise ApiError(400, "file_not_allowed", str(exc),
                           {"node_id": exc.node_id, "input": exc.input}) from None


def _owns_output(context, client: str, gpu_id: int | None, subfolder: str, filename: str) -> bool:
    """Whether this output file is the client's own (the store's jobs read afresh per file)."""
    return owns_output(context.store.jobs(), client, gpu_id, subfolder, filename)


@contextmanager
def assets_held(context, job_id: str, workflow: Workflow):
    """Check the workflow's asset references (400 asset_not_found for one the client may not
    use: no job) and hold them for this submission while it runs, so a delete meanwhile is
    409; yields True if it has any. Once it ends, the uses are its job's, or go if it made
    none. A retry of a job the client may see is answered with the job even if its assets
    are gone."""
    if not references(workflow.prompt):
        yield False
        return
    try:
        note_assets(context, job_id, workflow)
        recorded = True
    except AssetNotFound as exc:
        if not retried(context, job_id):
            raise asset_missing(exc) from None
        recorded = False  # the job's own answer (200, or 409 for another workflow) follows
    try:
        yield True
    finally:
        if recorded:
            context.assets.settle(job_id, workflow.fingerprint, context.store)


class AssetElsewhere(AssetNotFound):
    """An asset whose file this node neither has nor can fetch from the database: another
    node kept it on its own disk before the fleet's database held asset files, and has not
    shared it yet (it does at its next start)."""


def note_assets(context, job_id: str, workflow: Workflow) -> None:
    """Record that this submission needs the assets its references name among those the
    client may see (AssetNotFound for the first it may not use, or one deleted meanwhile;
    AssetElsewhere for one whose file is only on another node's disk)."""
    resolved = resolve(workflow.prompt, context.assets, viewer())
    for (node_id, name), asset in resolved.items():
        # No bytes to be had and still a row (not deleted meanwhile): another node's file.
        if not context.assets.available(asset) and context.assets.get(asset.id) is not None:
            raise AssetElsewhere(node_id, name, workflow.prompt[node_id]["inputs"][name]["info"])
    gone = context.assets.use(job_id, workflow.fingerprint, resolved.values())
    for (node_id, name), asset in resolved.items():
        if asset in gone:
            raise AssetNotFound(node_id, name, workflow.prompt[node_id]["inputs"][name]["info"])


def retried(context, job_id: str) -> bool:
    """Whether the id holds a job the client may see: its own answer (200, or 409 for another
    workflow) then follows whatever the workflow's faults. Another own client's job is as if
    it did not exist, so the fault is answered as it would be for a free id. Any node's job
    counts: a retry may go to any node of a fleet."""
    existing = context.store.lookup(job_id)
    return existing is not None and visible(existing)


def asset_missing(exc: AssetNotFound) -> ApiError:
    """400 asset_not_found naming the reference; 409 asset_on_other_node for an asset whose
    file only another node's disk holds."""
    details = {"node_id": exc.node_id, "input": exc.input, "info": exc.info}
    if isinstance(exc, AssetElsewhere):
        return ApiError(409, "asset_on_other_node", f"node {exc.node_id} input {exc.input} "
                        "refers to an asset whose file is only on the disk of the node it was "
                        "uploaded to (kept there before the fleet's database held asset files; "
                        "that node writes it to the database at its next start): upload it "
                        "again, or pin the job to that node", details)
    return ApiError(400, "asset_not_found", f"node {exc.node_id} input {exc.input} refers to an "
                    "asset Cylindria does not hold", details)


def hold(context, job_id: str, workflow: Workflow, priority: int, labels: dict | None = None,
         submitted_by: str | None = None):
    """GpuId=auto: check the workflow against what the reachable GPUs have installed, then
    hold it in Cylindria's queue (201 before any GPU has it). Returns (job, created)."""
    remembered = False
    local = context.store.get(job_id)
    # A retry is answered whatever the GPUs look like now. Whether the id is another node's
    # job is asked of the database only when the workflow fails the check: a new id (nearly
    # every submission) costs no read before its insert.
    if local is None or not visible(local):
        try:
            check_workflow(workflow.prompt, catalogues(context.gpus))
        except WorkflowError:
            if not retried(context, job_id):
                raise
        else:
            context.dispatcher.remember(job_id, workflow.fingerprint, needs_of(workflow.prompt))
            remembered = True
    try:
        job, created = hold_job(context.store, job_id, workflow, priority,
                                context.config.max_queued, labels, submitted_by)
    except QueueFull as exc:
        context.dispatcher.forget(job_id, workflow.fingerprint)
        raise ApiError(429, "queue_full", f"Cylindria's queue is full ({exc.limit} jobs held); "
                       "try again later", {"max_queued": exc.limit},
                       headers={"Retry-After": str(QUEUE_FULL_RETRY)}) from None
    except BaseException:  # another workflow won this id, say: what we remembered goes
        context.dispatcher.forget(job_id, workflow.fingerprint)
        raise
    if remembered and not created and context.store.get(job_id) is None:
        context.dispatcher.forget(job_id, workflow.fingerprint)  # another node's job: not ours
    return job, created


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

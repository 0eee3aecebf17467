"""Submitting exactly once: record the job, POST it, record the outcome, settle any doubt."""
from __future__ import annotations

import logging
import time
import uuid

from comfy.comfyui.errors import ComfyBadResponse, ComfyError, ComfyRejected, ComfyTimeout, ComfyUnreachable
from comfy.inputs.assets import AssetStore
from comfy.tracking.events import finish
from comfy.comfyui.gpu import Gpu
from comfy.dispatch.held import MAX_ATTEMPTS, send_failed, unsent
from comfy.jobs.job import Job, JobStatus
from comfy.tracking.outcome import rejected_error
from comfy.inputs.placing import AssetNotFound, place, resolve, with_files
from comfy.tracking.reconcile import Seen, judge
from comfy.jobs.store import JobStore
from comfy.inputs.workflow import Workflow
from cylindria.storage import StorageUnavailable

logger = logging.getLogger(__name__)

RECHECK_WAIT = 2.0  # seconds before a second look for a prompt a POST without answer sent


class JobIdConflict(Exception):
    """The job id is taken by a different workflow."""

    def __init__(self, job: Job):
        super().__init__(f"job id {job.job_id} is already used for a different workflow")
        self.job = job


class SubmissionUnsettled(ComfyTimeout):
    """An earlier attempt's fate is still unknown because ComfyUI does not answer."""


class QueueFull(Exception):
    """Cylindria's own queue holds --max-queued jobs."""

    def __init__(self, limit: int):
        super().__init__(f"Cylindria's queue holds {limit} jobs, its limit")
        self.limit = limit


def submit_job(store: JobStore, gpus: list[Gpu], job_id: str, workflow: Workflow,
               gpu_id: int, wait: float = 90.0, priority: int = 0,
               assets: AssetStore | None = None,
               submitted_by: str | None = None) -> tuple[Job, bool]:
    """Run the job at most once on GPU `gpu_id`, now. Returns (job, created).
    A refused submission leaves nothing behind. `priority` orders the job in Cylindria's
    queue should its ComfyUI die under it and it wait there to be sent again."""
    for _ in range(3):
        result = _submit_once(store, gpus, job_id, workflow, gpu_id, wait, priority, assets,
                              submitted_by)
        if result is not None:
            return result
    raise SubmissionUnsettled("the job's earlier submission is still being settled")


def hold_job(store: JobStore, job_id: str, workflow: Workflow, priority: int,
             max_queued: int, labels: dict | None = None,
             submitted_by: str | None = None, settle_wait: float = 90.0) -> tuple[Job, bool]:
    """Put a GpuId=auto job in Cylindria's own queue (durably, before the caller answers 201);
    the dispatcher sends it when a GPU is ready. Returns (job, created); a retry of the same
    id and workflow gets the job as it is now, whatever became of it."""
    def admit(held: int) -> None:
        if held >= max_queued:
            raise QueueFull(max_queued)
    job = Job(job_id=job_id, gpu_id=None, prompt_id=None, fingerprint=workflow.fingerprint,
              status=JobStatus.HELD, nodes_total=len(workflow.prompt), submitted_at=time.time(),
              auto=True, priority=priority, labels=labels or None, webhook=workflow.webhook,
              submitted_by=submitted_by)
    job.held_at = job.submitted_at
    existing, created = store.reserve(job, workflow.source, admit, workflow.withheld)
    if not created and existing.fingerprint != workflow.fingerprint:
        raise JobIdConflict(existing)
    if not created and store.in_flight(job_id):
        # The dispatcher's POST of it is under way: answer once it is settled, never with a
        # prompt ComfyUI may not get (a refused send puts the job back in the queue).
        existing = store.wait_settled(job_id, settle_wait) or existing
    return existing, created


def _submit_once(store: JobStore, gpus: list[Gpu], job_id: str, workflow: Workflow,
                 gpu_id: int, wait: float, priority: int,
                 assets: AssetStore | None, submitted_by: str | None) -> tuple[Job, bool] | None:
    """One attempt: reserve the id, then POST or settle."""
    job = Job(job_id=job_id, gpu_id=gpu_id, prompt_id=str(uuid.uuid4()),
              fingerprint=workflow.fingerprint, nodes_total=len(workflow.prompt),
              submitted_at=time.time(), attempts=1, priority=priority, webhook=workflow.webhook,
              submitted_by=submitted_by)
    existing, created = store.reserve(job, workflow.source, withheld=workflow.withheld)
    if created:
        posted = post(store, gpus[gpu_id], existing, workflow, assets)
        # None: another node took the job over while this one could not renew its lease
        # (paused, or cut off, mid-POST): the client is answered with the job it holds now.
        return posted or store.lookup(job_id), True
    if existing.fingerprint != workflow.fingerprint:
        raise JobIdConflict(existing)
    if existing.status != JobStatus.SUBMITTING:
        return existing, False
    if existing.node != store.node:
        # Another node's POST of it is under way: only that node can settle it (with its
        # own ComfyUI); the client retries shortly and gets the job as it settled.
        raise SubmissionUnsettled(f"job {job_id} is being submitted by node {existing.node}")
    settled = _settle_earlier(store, gpus[existing.gpu_id], existing, wait)
    if settled is None:
        return None  # the earlier attempt was dropped: try again, this one goes through as new
    if settled.fingerprint != workflow.fingerprint:
        raise JobIdConflict(settled)  # dropped meanwhile, and the id taken by another workflow
    return settled, False


def _settle_earlier(store: JobStore, gpu: Gpu, job: Job, wait: float) -> Job | None:
    """A retry met a job still `submitting`: wait for its POST, or settle it with ComfyUI now."""
    if store.in_flight(job.job_id):
        job = store.wait_settled(job.job_id, wait)
    if job is not None and job.status == JobStatus.SUBMITTING and job.gpu_id == gpu.index \
            and not store.in_flight(job.job_id):
        # Never sent, or sent and its answer not recorded (the database failed meanwhile):
        # ComfyUI says which (a database still down: 503 database_unavailable).
        job = settle_submission(store, gpu, job, None)
    if job is not None and job.status == JobStatus.SUBMITTING:
        raise SubmissionUnsettled("the job's earlier submission is still being settled", gpu.index)
    return job


def post(store: JobStore, gpu: Gpu, job: Job, workflow: Workflow,
         assets: AssetStore | None = None, max_attempts: int = MAX_ATTEMPTS) -> Job:
    """POST the prompt of this submission and record what happened; raise what the client
    (or the dispatcher) must be told. The job is `submitting` and marked in flight. With
    `assets`, the workflow's asset references are placed in that ComfyUI first."""
    sent_at = time.monotonic()  # ComfyUI's enqueue broadcast may arrive before its answer
    try:
        answer = _send(gpu, job, workflow, assets)
    except AssetNotFound as exc:  # deleted between the submission's check and this send
        if job.owed:
            store.change(job.job_id, finish(JobStatus.FAILED, {
                "type": "asset_not_found", "message": f"the job's asset is gone: {exc}",
                "node_id": exc.node_id, "node_type": None}), prompt_id=job.prompt_id)
        else:
            store.discard(job.job_id, job.prompt_id)
        raise
    except ComfyRejected as exc:
        if job.owed:  # a held job: the client has its 201 already, the job fails
            store.change(job.job_id, finish(JobStatus.FAILED, rejected_error(
                "ComfyUI refused the prompt", exc.error, exc.node_errors)), prompt_id=job.prompt_id)
        else:
            store.discard(job.job_id, job.prompt_id)
        raise
    except ComfyError as exc:
        if isinstance(exc, ComfyUnreachable):
            gpu.saw_failure(refused=exc.refused)
        if exc.may_have_run:
            settle_submission(store, gpu, job, exc, max_attempts)
        elif isinstance(exc, ComfyBadResponse):  # an error answer: ComfyUI got it, and failed
            send_failed(store, job, str(exc), max_attempts)
        else:
            unsent(store, job)
        raise
    except StorageUnavailable:  # an asset's row unreadable: nothing reached ComfyUI
        raise
    except Exception as exc:
        # Not one of ComfyUI's failures: Cylindria could not send it (an asset's file is
        # gone, say). Nothing reached ComfyUI, but the next try would fail the same way.
        send_failed(store, job, f"Cylindria could not send it: {exc!r}", max_attempts)
        raise
    else:
        # Set before the job leaves in-flight, so the poller never judges it half-done.
        gpu.last_submit_at = max(gpu.last_submit_at, sent_at)
        gpu.saw_answer()
        try:
            return accept(store, gpu, job, answer)
        except StorageUnavailable:
            if str(answer.get("prompt_id")) != job.prompt_id:
                raise
            # ComfyUI has the prompt and the job's row is durable (submitting, under this
            # prompt id): the submission stands, never a 503 for a job that runs. The
            # settlers record ComfyUI's answer once the database is back.
            return store.get(job.job_id) or job
    finally:
        store.release(job.job_id, job.prompt_id)


def _send(gpu: Gpu, job: Job, workflow: Workflow, assets: AssetStore | None) -> dict:
    """POST /prompt, the workflow's assets uploaded to this ComfyUI first. A refusal naming
    one of them (its input folder was emptied without a restart) uploads them again and
    sends once more: ComfyUI queued nothing, so the same prompt_id goes again."""
    resolved = resolve(workflow.prompt, assets) if assets is not None else {}
    if not resolved:
        return gpu.client.submit(workflow.payload(gpu.client_id, job.prompt_id))
    payload = workflow.payload(gpu.client_id, job.prompt_id,
                               with_files(workflow.prompt, resolved))
    place(gpu, assets, resolved.values())
    try:
        return gpu.client.submit(payload)
    except ComfyRejected as exc:
        if not _names_a_file(exc, resolved.values()):
            raise
    logger.info("job %s: ComfyUI on GPU %d lacks an asset file; uploading it again",
                job.job_id, gpu.index)
    gpu.placed.clear()
    place(gpu, assets, resolved.values())
    return gpu.client.submit(payload)


def _names_a_file(exc: ComfyRejected, assets) -> bool:
    """True when ComfyUI's refusal mentions one of these asset files."""
    text = str(exc.node_errors) + str(exc.error)
    return any(asset.comfy_name in text for asset in assets)


def accept(store: JobStore, gpu: Gpu, job: Job, answer: dict) -> Job:
    """Record ComfyUI's 200 answer for this submission; the websocket may already have moved
    the job further. Only the caller, whose POST this was, accepts it, while the submission
    is in flight: no settler judges an in-flight submission, so none can have dropped it."""
    number = answer.get("number")
    number = float(number) if isinstance(number, (int, float)) else None
    ahead = store.ahead_of(gpu.index) + gpu.foreign_before(number)

    def edit(current: Job) -> None:
        current.prompt_id = str(answer["prompt_id"])  # older ComfyUI ignores ours, picks its own
        current.number = number
        current.warnings = answer.get("node_errors") or None
        if current.status == JobStatus.SUBMITTING:
            current.status = JobStatus.QUEUED
            current.queue_position = ahead
    return store.change(job.job_id, edit, prompt_id=job.prompt_id)


def settle_submission(store: JobStore, gpu: Gpu, job: Job, cause: Exception | None,
                      max_attempts: int = MAX_ATTEMPTS) -> Job | None:
    """Decide a submission whose POST had no clear answer (comfy.tracking.reconcile.judge): adopt it
    if ComfyUI has the prompt, drop it (or put it back in Cylindria's queue, if owed) if
    ComfyUI does not, keep it `submitting` while ComfyUI cannot say. A POST that ComfyUI
    answered unusably and that it does not have counts as an attempt (held.send_failed).

    None when it was dropped, here or meanwhile by another settler: the id may already
    hold a newer submission."""
    try:
        seen = _look(gpu, job)
    except ComfyTimeout:
        logger.warning("job %s: ComfyUI on GPU %d does not answer; submission left to settle",
                       job.job_id, gpu.index)
        return _still(store, job)
    except ComfyUnreachable as exc:
        if not exc.refused:
            return _still(store, job)
        seen = None  # refused: the process is gone, and any prompt it had with it
    except ComfyBadResponse:
        return _still(store, job)
    if not isinstance(cause, ComfyBadResponse):
        return judge(gpu, store, job, seen)
    return judge(gpu, store, job, seen,
                 never_got=lambda s, j: send_failed(s, j, str(cause), max_attempts))


def _look(gpu: Gpu, job: Job) -> Seen:
    """ComfyUI's queue, looked at twice before a submission is judged never received:
    ComfyUI's POST /prompt handler awaits the prompt's validation before it queues it, and
    answers /queue and /history meanwhile, so a POST that timed out (or broke) may still be
    in its hands, in neither. Validation of a prompt takes milliseconds to seconds, so a
    second look RECHECK_WAIT later finds it queued (or refused: in neither, rightly)."""
    seen = Seen(gpu.client.queue())
    if job.prompt_id in seen.items or gpu.client.history(job.prompt_id) is not None:
        return seen
    time.sleep(RECHECK_WAIT)
    return Seen(gpu.client.queue())


def _still(store: JobStore, job: Job) -> Job | None:
    """This submission as it stands now, or None if it is no longer the one under its id."""
    current = store.get(job.job_id)
    return current if current is not None and current.prompt_id == job.prompt_id else None

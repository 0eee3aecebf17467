"""Submitting exactly once: record the job, POST it, record the outcome, settle any doubt."""
from __future__ import annotations

import logging
import time
import uuid

from comfy.errors import ComfyBadResponse, ComfyError, ComfyRejected, ComfyTimeout, ComfyUnreachable
from comfy.events import finish_from_history, start_running
from comfy.gpu import Gpu
from comfy.jobs import Job, JobStatus
from comfy.store import JobStore
from comfy.workflow import Workflow

logger = logging.getLogger(__name__)


class JobIdConflict(Exception):
    """The job id is taken by a different workflow."""

    def __init__(self, job: Job):
        super().__init__(f"job id {job.job_id} is already used for a different workflow")
        self.job = job


class NoGpuReachable(ComfyUnreachable):
    """GpuId=auto found every GPU's ComfyUI refusing connections."""


class SubmissionUnsettled(ComfyTimeout):
    """An earlier attempt's fate is still unknown because ComfyUI does not answer."""


def submit_job(store: JobStore, gpus: list[Gpu], job_id: str, workflow: Workflow,
               gpu_id: int | None, wait: float = 90.0) -> tuple[Job, bool]:
    """Run the job at most once on GPU `gpu_id` (None: the least-loaded reachable one).

    Returns (job, created). A refused submission leaves nothing behind. With GPU auto,
    a GPU found refusing connections is skipped and the next least-loaded one tried.
    """
    for _ in range(len(gpus) + 2):
        try:
            result = _submit_once(store, gpus, job_id, workflow, gpu_id, wait)
        except ComfyUnreachable as exc:
            if gpu_id is not None or not exc.refused or isinstance(exc, NoGpuReachable):
                raise
            continue  # that GPU is now marked unreachable: the chooser skips it
        if result is not None:
            return result
    raise SubmissionUnsettled("the job's earlier submission is still being settled")


def _submit_once(store: JobStore, gpus: list[Gpu], job_id: str, workflow: Workflow,
                 gpu_id: int | None, wait: float) -> tuple[Job, bool] | None:
    """One attempt: reserve the id (choosing the GPU if asked), then POST or settle."""
    job = Job(job_id=job_id, gpu_id=gpu_id or 0, prompt_id=str(uuid.uuid4()),
              fingerprint=workflow.fingerprint, nodes_total=len(workflow.prompt),
              submitted_at=time.time())
    choose = least_loaded(gpus) if gpu_id is None else None
    existing, created = store.reserve(job, choose)
    gpu = gpus[existing.gpu_id]
    if created:
        return _post(store, gpu, existing, workflow), True
    if existing.fingerprint != workflow.fingerprint:
        raise JobIdConflict(existing)
    if existing.status != JobStatus.SUBMITTING:
        return existing, False
    settled = _settle_earlier(store, gpu, existing, wait)
    if settled is None:
        return None  # the earlier attempt was dropped: try again, this one goes through as new
    if settled.fingerprint != workflow.fingerprint:
        raise JobIdConflict(settled)  # dropped meanwhile, and the id taken by another workflow
    return settled, False


def least_loaded(gpus: list[Gpu]):
    """A chooser for store.reserve: the reachable GPU with the fewest prompts, lowest id on ties.

    Load is the other clients' prompts from the last /queue plus Cylindria's own unfinished
    jobs counted live, so a burst of submissions spreads before the next poll.
    """
    def choose(unfinished: dict) -> int:
        candidates = [gpu for gpu in gpus if gpu.reachable is not False]
        if not candidates:
            raise NoGpuReachable("no GPU's ComfyUI is reachable")
        return min(candidates,
                   key=lambda gpu: (gpu.foreign_before(None) + unfinished.get(gpu.index, 0),
                                    gpu.index)).index
    return choose


def _settle_earlier(store: JobStore, gpu: Gpu, job: Job, wait: float) -> Job | None:
    """A retry met a job still `submitting`: wait for its POST, or settle it with ComfyUI now."""
    if store.in_flight(job.job_id):
        job = store.wait_settled(job.job_id, wait)
    elif job.gpu_id == gpu.index:
        job = settle_submission(store, gpu, job, None)
    if job is not None and job.status == JobStatus.SUBMITTING:
        raise SubmissionUnsettled("the job's earlier submission is still being settled", gpu.index)
    return job


def _post(store: JobStore, gpu: Gpu, job: Job, workflow: Workflow) -> Job:
    """POST the prompt and record what happened; raise what the client must be told."""
    sent_at = time.monotonic()  # ComfyUI's enqueue broadcast may arrive before its answer
    try:
        answer = gpu.client.submit(workflow.payload(gpu.client_id, job.prompt_id))
    except ComfyRejected:
        store.discard(job.job_id, job.prompt_id)
        raise
    except ComfyError as exc:
        if isinstance(exc, ComfyUnreachable):
            gpu.saw_failure(refused=exc.refused)
        if exc.may_have_run:
            settle_submission(store, gpu, job, exc)
        else:
            store.discard(job.job_id, job.prompt_id)
        raise
    except Exception:
        # Not one of ComfyUI's failures: requests failed to build the request, so nothing
        # was sent; the job must not stay behind as `submitting`.
        store.discard(job.job_id, job.prompt_id)
        raise
    else:
        # Recorded before the job leaves in-flight, so the poller never judges it half-done.
        gpu.last_submit_at = max(gpu.last_submit_at, sent_at)
        gpu.saw_answer()
        return accept(store, gpu, job, answer)
    finally:
        store.release(job.job_id, job.prompt_id)


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


def settle_submission(store: JobStore, gpu: Gpu, job: Job, cause: Exception | None) -> Job | None:
    """Decide a submission whose POST had no clear answer: adopt it if ComfyUI has the prompt,
    drop it if ComfyUI does not, keep it `submitting` while ComfyUI cannot say.

    Every decision lands on this submission only (its prompt_id). None when it was dropped,
    here or meanwhile by another settler: the id may already hold a newer submission."""
    try:
        snapshot = gpu.client.queue()
        item = snapshot.items().get(job.prompt_id)
        if item is not None:
            running = item in snapshot.running
            return _adopt(store, job, item.number, running)
        entry = gpu.client.history(job.prompt_id)
    except ComfyTimeout:
        logger.warning("job %s: ComfyUI on GPU %d does not answer; submission left to settle",
                       job.job_id, gpu.index)
        return _still(store, job)
    except ComfyUnreachable as exc:
        if not exc.refused:
            return _still(store, job)
        entry = None  # refused: the process is gone, and any prompt it had with it
    except ComfyBadResponse:
        return _still(store, job)
    if entry is not None:
        _adopt(store, job, None, False)
        return store.change(job.job_id, finish_from_history(entry), prompt_id=job.prompt_id)
    if store.discard(job.job_id, job.prompt_id):
        logger.info("job %s: ComfyUI on GPU %d never got prompt %s (%s); dropped",
                    job.job_id, gpu.index, job.prompt_id, cause or "found at settlement")
    return None


def _adopt(store: JobStore, job: Job, number: float | None, running: bool) -> Job:
    """ComfyUI has the prompt: the job is accepted after all."""
    def edit(current: Job) -> None:
        current.number = number if number is not None else current.number
        if running:
            start_running(current)
        elif current.status == JobStatus.SUBMITTING:
            current.status = JobStatus.QUEUED
    adopted = store.change(job.job_id, edit, prompt_id=job.prompt_id)
    if adopted is not None:
        logger.info("job %s: ComfyUI on GPU %d has the prompt; adopted", job.job_id, job.gpu_id)
    return adopted


def _still(store: JobStore, job: Job) -> Job | None:
    """This submission as it stands now, or None if it is no longer the one under its id."""
    current = store.get(job.job_id)
    return current if current is not None and current.prompt_id == job.prompt_id else None

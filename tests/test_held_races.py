"""Cylindria's own queue and the submissions around it, with the interleavings of issue 25's
review forced by events and stand-ins (no sleeps, no timing): credentials bound to the job
that was created, attempts that end, pinned jobs that wait only for a GPU that is down,
cancels that hold, and a timed-out POST looked for twice."""
from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import pytest
from flask import Flask

from comfy.dispatch import submit
from comfy.dispatch.dispatcher import Dispatcher
from comfy.comfyui.errors import ComfyBadResponse, ComfyTimeout, ComfyUnreachable
from comfy.tracking.events import finish
from comfy.comfyui.gpu import Gpu
from comfy.jobs.job import Job, JobStatus
from comfy.comfyui.queue import QueueItem, QueueSnapshot
from comfy.tracking.reconcile import reconcile_gpu
from comfy.jobs.store import JobStore
from comfy.dispatch.submit import accept, submit_job
from comfy.jobs.withheld import WithheldSecrets
from comfy.inputs.workflow import parse_workflow
from cylindria.storage import JobRows
from tests import workflows
from tests.test_dispatch_races import WAIT, ready_gpu


class StandIn:
    """A ComfyUI client: POST answers what `answer` gives (or raises it); /queue lists what it
    accepted; /history knows nothing. Counts POSTs."""

    def __init__(self, answer=None):
        self.answer = answer
        self.posts: list[dict] = []
        self.accepted: list[str] = []
        self.lock = threading.Lock()

    def submit(self, payload: dict) -> dict:
        with self.lock:
            self.posts.append(payload)
        if isinstance(self.answer, BaseException):
            raise self.answer
        with self.lock:
            self.accepted.append(payload["prompt_id"])
            return {"prompt_id": payload["prompt_id"], "number": len(self.accepted), "node_errors": {}}

    def queue(self) -> QueueSnapshot:
        with self.lock:
            return QueueSnapshot((), tuple(QueueItem(n, p, {}, ()) for n, p in enumerate(self.accepted)))

    def history(self, prompt_id: str) -> dict | None:
        return None


def core(job_id: str, extra: dict | None = None):
    body = {"prompt": workflows.core(job_id), "extra_data": extra} if extra else workflows.core(job_id)
    return parse_workflow(json.dumps(body).encode())


# -- item 14: one client's partner key never goes with another client's job -------------------
class OrderedStore(JobStore):
    """The real store; the reservation of thread "first" waits until "second" reaches its own,
    and "second"'s waits until "first" has reserved: both submissions are past everything they
    do before reserving when the first one creates the job."""

    def __init__(self, rows: JobRows):
        super().__init__(rows)
        self.arrived = {"first": threading.Event(), "second": threading.Event()}
        self.first_reserved = threading.Event()

    def reserve(self, job, workflow, *args, **kwargs):
        name = threading.current_thread().name
        self.arrived[name].set()
        if name == "first":
            assert self.arrived["second"].wait(WAIT)
            try:
                return super().reserve(job, workflow, *args, **kwargs)
            finally:
                self.first_reserved.set()
        assert self.first_reserved.wait(WAIT)
        return super().reserve(job, workflow, *args, **kwargs)


@pytest.fixture
def store(backend):
    """The real store, on every backend."""
    return JobStore(backend.open().jobs)


def test_the_job_created_keeps_its_own_clients_partner_key(backend):
    """Two clients submit one new job id with different partner keys at once; the second is
    the last to pass everything before the reservation, the first creates the job. The job
    must carry the first client's key (the second's submission created nothing)."""
    from cylindria.web.submission import accepting, hold
    store = OrderedStore(backend.open().jobs)
    gpu = ready_gpu(0, StandIn())
    dispatcher = Dispatcher([gpu], store)
    context = SimpleNamespace(store=store, gpus=[gpu], dispatcher=dispatcher, assets=None,
                              secrets=WithheldSecrets(store), config=SimpleNamespace(max_queued=10))
    results = {}

    def submit_as(name: str, key: str) -> None:
        workflow = core("contested", {"api_key_comfy_org": key})
        # accepting() reads who is asking (the file-input check): a request of no named client
        with Flask("submission").test_request_context(), accepting(context, "contested", workflow):
            results[name] = hold(context, "contested", workflow, 0)

    first = threading.Thread(target=submit_as, args=("first", "alice's key"), name="first")
    first.start()
    assert store.arrived["first"].wait(WAIT)
    second = threading.Thread(target=submit_as, args=("second", "bob's key"), name="second")
    second.start()
    for thread in (first, second):
        thread.join(WAIT)
        assert not thread.is_alive()
    assert results["first"][1] is True and results["second"][1] is False
    assert context.secrets.get("contested") == {"api_key_comfy_org": "alice's key"}
    dispatcher.stop()


# -- item 15: attempts that end -----------------------------------------------------------------
@pytest.mark.parametrize("failure", [
    ComfyBadResponse("ComfyUI answered 500 to /prompt", 0),
    ComfyBadResponse("ComfyUI answered 400 to /prompt", 0),  # a 400 without `error`
    FileNotFoundError("an asset's file is gone"),  # not one of ComfyUI's failures
], ids=["500", "400-without-error", "local-exception"])
def test_a_send_that_keeps_failing_ends_the_job_after_its_attempts(store, failure):
    """Each failed send counts as an attempt and rests the GPU; after --max-attempts sends
    the job is failed with the reason, and is never sent again."""
    comfy = StandIn(failure)
    dispatcher = Dispatcher([ready_gpu(0, comfy)], store)  # --max-attempts 3, the default
    gpu = dispatcher.gpus[0]
    try:
        submit.hold_job(store, "doomed", core("doomed"), priority=0, max_queued=10)
        dispatcher._sync("doomed")
        for turn in range(5):
            dispatcher.dispatch_once()
            store.wait_settled("doomed", WAIT)
            if turn < 3:
                assert gpu.resting_until > time.monotonic(), "the GPU was not rested"
            gpu.resting_until = float("-inf")  # the rest is over (the test stands for the clock)
        job = store.get("doomed")
        assert len(comfy.posts) == 3
        assert job.status == JobStatus.FAILED and job.attempts == 3
        assert job.error["type"] == "send_failed" and str(failure) in job.error["message"]
    finally:
        dispatcher.stop()


# -- item 16: a pinned job waits only for a GPU that is down ------------------------------------
def requeued_pinned(store: JobStore, job_id: str, held_for: float) -> Job:
    """A job pinned to GPU 0 whose ComfyUI died under it, held `held_for` seconds ago."""
    workflow = core(job_id)
    job, _ = store.reserve(Job(job_id=job_id, gpu_id=0, prompt_id=f"p-{job_id}",
                               fingerprint=workflow.fingerprint, attempts=1), workflow.source)
    store.release(job_id, job.prompt_id)
    store.change(job_id, lambda j: setattr(j, "status", JobStatus.QUEUED))
    from comfy.dispatch.held import died_under
    died_under(store, store.get(job_id), max_attempts=3)

    def backdate(j: Job) -> None:
        j.held_at = time.time() - held_for
    return store.change(job_id, backdate)


def steady_pinned_load(store: JobStore, gpu: Gpu, job_id: str) -> None:
    """A fresh pinned submission accepted by GPU 0's ComfyUI (it skips Cylindria's queue)."""
    workflow = core(job_id)
    job, _ = store.reserve(Job(job_id=job_id, gpu_id=0, prompt_id=f"p-{job_id}",
                               fingerprint=workflow.fingerprint), workflow.source)
    accept(store, gpu, job, gpu.client.submit({"prompt_id": job.prompt_id}))
    store.release(job_id, job.prompt_id)


def test_a_requeued_pinned_job_is_not_lost_nor_starved_while_its_gpu_is_up(store):
    """GPU 0 never went away and is kept full by fresh pinned submissions: the requeued
    pinned job, held longer than --requeue-wait, is sent, not declared lost."""
    comfy = StandIn()
    dispatcher = Dispatcher([ready_gpu(0, comfy)], store, depth=1, requeue_wait=300.0)
    try:
        steady_pinned_load(store, dispatcher.gpus[0], "fresh")
        requeued_pinned(store, "again", held_for=1000.0)
        dispatcher._sync("again")
        assert dispatcher.dispatch_once() == 1
        job = store.wait_settled("again", WAIT)
        assert job.status == JobStatus.QUEUED and job.attempts == 2
    finally:
        dispatcher.stop()


def test_requeue_wait_counts_from_when_the_gpu_became_unreachable(store):
    """Held long ago, but GPU 0 refuses connections only since just now: the job waits; once
    GPU 0 has been down for --requeue-wait, it is lost."""
    dispatcher = Dispatcher([ready_gpu(0, StandIn())], store, requeue_wait=300.0)
    gpu = dispatcher.gpus[0]
    try:
        requeued_pinned(store, "waiting", held_for=1000.0)
        dispatcher._sync("waiting")
        gpu.saw_failure(refused=True)
        assert dispatcher.dispatch_once() == 0
        assert store.get("waiting").status == JobStatus.HELD
        gpu.unreachable_since -= 301.0  # down for longer than --requeue-wait by now
        dispatcher._next_expiry = 0.0
        dispatcher.dispatch_once()
        job = store.get("waiting")
        assert job.status == JobStatus.LOST and "did not come back" in job.error["message"]
    finally:
        dispatcher.stop()


# -- item 17: a cancelled job never runs again --------------------------------------------------
class CancelledMeanwhile(StandIn):
    """/queue: a client's cancel of the running job lands, then ComfyUI refuses connections."""

    def __init__(self, store: JobStore, job_id: str):
        super().__init__()
        self.store, self.job_id = store, job_id

    def queue(self) -> QueueSnapshot:
        self.store.change(self.job_id, lambda j: setattr(j, "cancel_requested", True))
        raise ComfyUnreachable("connection refused", 0)


def test_a_cancel_requested_after_the_poll_read_the_job_is_kept(store):
    """The poll read the running job, then the client's cancel was recorded, then /queue was
    refused: the job must end cancelled, not go back to the queue to run again."""
    workflow = core("stop-me")
    job, _ = store.reserve(Job(job_id="stop-me", gpu_id=0, prompt_id="p-stop", auto=True,
                               fingerprint=workflow.fingerprint, attempts=1), workflow.source)
    store.release("stop-me", "p-stop")
    store.change("stop-me", lambda j: setattr(j, "status", JobStatus.RUNNING))
    gpu = ready_gpu(0, CancelledMeanwhile(store, "stop-me"))
    reconcile_gpu(gpu, store, max_attempts=3)
    assert store.get("stop-me").status == JobStatus.CANCELLED


def test_a_held_job_whose_cancel_was_requested_is_never_sent(store):
    comfy = StandIn()
    dispatcher = Dispatcher([ready_gpu(0, comfy)], store)
    try:
        submit.hold_job(store, "asked", core("asked"), priority=0, max_queued=10)
        store.change("asked", lambda j: setattr(j, "cancel_requested", True))
        dispatcher._sync("asked")
        assert dispatcher.dispatch_once() == 0
        assert comfy.posts == [] and store.get("asked").status == JobStatus.CANCELLED
    finally:
        dispatcher.stop()


# -- item 20: a timed-out POST is looked for twice before it is dropped -------------------------
class StillValidating(StandIn):
    """POST times out while ComfyUI still validates the prompt: the first /queue does not list
    it yet, the next one does (ComfyUI queued it once its validation was over)."""

    def __init__(self):
        super().__init__(ComfyTimeout("ComfyUI did not answer in time", 0, may_have_run=True))
        self.looks = 0

    def queue(self) -> QueueSnapshot:
        self.looks += 1
        if self.looks == 2:
            self.accepted.append(self.posts[-1]["prompt_id"])
        return super().queue()


def test_a_timed_out_post_found_on_the_second_look_is_adopted(store, monkeypatch):
    monkeypatch.setattr(submit, "RECHECK_WAIT", 0.0, raising=False)
    comfy = StillValidating()
    with pytest.raises(ComfyTimeout):
        submit_job(store, [ready_gpu(0, comfy)], "slow-check", core("slow-check"), 0, wait=WAIT)
    job = store.get("slow-check")
    assert job is not None and job.status == JobStatus.QUEUED
    assert job.prompt_id == comfy.accepted[0] and len(comfy.posts) == 1

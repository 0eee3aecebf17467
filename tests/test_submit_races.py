"""Exactly once, with the interleavings that broke it forced by events (no sleeps, no timing).

The fault soak once answered 201 twice for one job id, with two prompts: a retry settled a
`submitting` record it had read earlier, found ComfyUI without that prompt and dropped the
job by id; by then the id held a newer submission whose POST was under way, and that one
was deleted, so its prompt ran untracked and the id was created a third time.
"""
from __future__ import annotations

import json
import threading

import pytest

from comfy.comfyui.gpu import Gpu
from comfy.jobs.job import Job, JobStatus
from comfy.comfyui.queue import QueueSnapshot
from comfy.tracking.reconcile import Seen, judge
from comfy.jobs.store import JobStore
from comfy.dispatch.submit import submit_job
from comfy.inputs.workflow import parse_workflow
from cylindria.storage import JobRows
from tests import workflows

WAIT = 10.0  # seconds any step may take before the test fails instead of hanging
SLOW = "slow-settler"  # the thread whose settlement is held back


class DummyComfy:
    """A ComfyUI client whose calls can be held at gates: knows no prompt until one is POSTed."""

    def __init__(self):
        self.received: list[str] = []
        self.queue_asked = {SLOW: threading.Event()}
        self.queue_gate = {SLOW: threading.Event()}
        self.posting = threading.Event()
        self.post_gate = threading.Event()

    def queue(self) -> QueueSnapshot:
        name = threading.current_thread().name
        if name in self.queue_gate:
            self.queue_asked[name].set()
            assert self.queue_gate[name].wait(WAIT)
        return QueueSnapshot((), ())

    def history(self, prompt_id: str) -> dict | None:
        return None

    def submit(self, payload: dict) -> dict:
        prompt_id = payload["prompt_id"]
        self.posting.set()
        assert self.post_gate.wait(WAIT)
        self.received.append(prompt_id)
        return {"prompt_id": prompt_id, "number": len(self.received), "node_errors": {}}


class ObservedStore(JobStore):
    """The real store, telling the test when the slow settler's discard has been decided."""

    def __init__(self, rows: JobRows):
        super().__init__(rows)
        self.slow_discarded = threading.Event()

    def discard(self, job_id: str, prompt_id: str) -> bool:
        result = super().discard(job_id, prompt_id)
        if threading.current_thread().name == SLOW:
            self.slow_discarded.set()
        return result


@pytest.fixture
def store(backend):
    """The real store, on every backend."""
    return ObservedStore(backend.open().jobs)


@pytest.fixture
def comfy():
    return DummyComfy()


@pytest.fixture
def gpu(comfy):
    return Gpu(0, "http://127.0.0.1:1", "cylindria-test-gpu0", client=comfy)


def left_submitting(store: JobStore, workflow, prompt_id: str = "p-first") -> None:
    """An earlier attempt whose POST ended without a clear answer: `submitting`, not in flight."""
    store.reserve(Job(job_id="dup", gpu_id=0, prompt_id=prompt_id, fingerprint=workflow.fingerprint), b"{}")
    store.release("dup", prompt_id)


def run(name: str, results: dict, store, gpu, workflow) -> threading.Thread:
    """submit_job on a named thread; its answer (or exception) lands in results[name]."""
    def target():
        try:
            results[name] = submit_job(store, [gpu], "dup", workflow, 0, wait=WAIT)
        except Exception as exc:  # the assertion below shows it
            results[name] = exc
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


def test_a_slow_settler_never_drops_the_newer_submission_under_its_id(store, gpu, comfy):
    """Two retries meet the same undecided record; the slow one's verdict lands last."""
    workflow = parse_workflow(json.dumps(workflows.core("race")).encode())
    left_submitting(store, workflow)
    results: dict = {}
    slow = run(SLOW, results, store, gpu, workflow)
    assert comfy.queue_asked[SLOW].wait(WAIT)  # the slow retry is judging p-first now
    fast = run("fast-retry", results, store, gpu, workflow)
    assert comfy.posting.wait(WAIT)  # the fast one dropped p-first and POSTs its own prompt
    newer = store.get("dup")
    assert newer.prompt_id != "p-first" and store.in_flight("dup")

    comfy.queue_gate[SLOW].set()  # the slow verdict on p-first lands while the POST is under way
    assert store.slow_discarded.wait(WAIT)
    assert store.get("dup").prompt_id == newer.prompt_id, "the newer submission was deleted"
    comfy.post_gate.set()
    for thread in (slow, fast):
        thread.join(WAIT)
        assert not thread.is_alive()

    assert not isinstance(results[SLOW], Exception), results[SLOW]
    assert not isinstance(results["fast-retry"], Exception), results["fast-retry"]
    answers = [results[SLOW], results["fast-retry"]]
    assert sorted(created for _, created in answers) == [False, True]
    assert {job.prompt_id for job, _ in answers} == {newer.prompt_id}
    assert comfy.received == [newer.prompt_id]
    final = store.get("dup")
    assert final.prompt_id == newer.prompt_id and final.status == JobStatus.QUEUED
    assert not store.in_flight("dup")


def test_a_stale_poll_verdict_never_drops_a_submission_in_flight(store, gpu, comfy):
    """The poller judged p-first before a retry dropped it and POSTs p-second under the id."""
    workflow = parse_workflow(json.dumps(workflows.core("race")).encode())
    left_submitting(store, workflow)
    stale = store.get("dup")
    assert store.discard("dup", "p-first")  # a retry's settlement, then its new submission:
    store.reserve(Job(job_id="dup", gpu_id=0, prompt_id="p-second", fingerprint=workflow.fingerprint), b"{}")
    judge(gpu, store, stale, Seen(comfy.queue()))  # the poller's verdict on what it read before
    job = store.get("dup")
    assert job.prompt_id == "p-second" and job.status == JobStatus.SUBMITTING
    assert store.in_flight("dup")

"""Cylindria's own queue, with the interleavings that could break it forced by events.

Each test holds one side at a gate (no sleeps, no timing) and checks that whatever lands
late lands on the submission it was about, or nowhere.
"""
from __future__ import annotations

import json
import threading

import pytest

from comfy.comfyui.catalogue import Catalogue, NodeClass
from comfy.dispatch.dispatcher import Dispatcher
from comfy.comfyui.errors import ComfyUnreachable
from comfy.comfyui.gpu import Gpu
from comfy.comfyui.listener import Listener
from comfy.dispatch.held import cancel_held, died_under
from comfy.jobs.job import JobStatus
from comfy.tracking.events import finish
from comfy.comfyui.queue import QueueItem, QueueSnapshot
from comfy.tracking.reconcile import reconcile_gpu
from comfy.jobs.store import JobStore
from tests.backends import sqlite_storage
from comfy.dispatch.submit import hold_job
from comfy.inputs.workflow import parse_workflow
from tests import workflows

WAIT = 10.0  # seconds any step may take before the test fails instead of hanging
CORE = Catalogue({"EmptyImage": NodeClass(("width", "height"), False),
                  "ImageInvert": NodeClass(("image",), False),
                  "SaveImage": NodeClass(("images",), True)})


class GatedComfy:
    """A ComfyUI client: POSTs wait at a gate; /queue lists what it accepted, or refuses."""

    def __init__(self):
        self.accepted: list[str] = []
        self.threads: list[tuple[str, str]] = []  # (prompt id, the thread that POSTed it)
        self.posting = threading.Event()
        self.gate = threading.Event()
        self.refuse = False
        self.lock = threading.Lock()

    def submit(self, payload: dict) -> dict:
        self.threads.append((payload["prompt_id"], threading.current_thread().name))
        self.posting.set()
        assert self.gate.wait(WAIT)
        if self.refuse:
            raise ComfyUnreachable("connection refused", 0)
        with self.lock:
            self.accepted.append(payload["prompt_id"])
            return {"prompt_id": payload["prompt_id"], "number": len(self.accepted), "node_errors": {}}

    def queue(self) -> QueueSnapshot:
        if self.refuse:
            raise ComfyUnreachable("connection refused", 0)
        with self.lock:
            return QueueSnapshot((), tuple(QueueItem(n, p, {}, ()) for n, p in enumerate(self.accepted)))

    def history(self, prompt_id: str) -> dict | None:
        return None


@pytest.fixture
def store(tmp_path):
    return JobStore(sqlite_storage(tmp_path).jobs)


def ready_gpu(index: int, client) -> Gpu:
    gpu = Gpu(index, f"http://127.0.0.1:{9 + index}", f"test-gpu{index}", client=client)
    gpu.reachable = True
    gpu.set_catalogue(CORE)
    return gpu


def hold(store: JobStore, job_id: str):
    workflow = parse_workflow(json.dumps(workflows.core(job_id)).encode())
    return hold_job(store, job_id, workflow, priority=0, max_queued=100)[0]


@pytest.fixture
def dispatcher(store):
    comfy = GatedComfy()
    dispatcher = Dispatcher([ready_gpu(0, comfy)], store, depth=2)
    dispatcher.comfy = comfy
    yield dispatcher
    comfy.gate.set()
    dispatcher.stop()


def test_a_cancel_meeting_a_send_under_way_leaves_the_job_to_comfyui(store, dispatcher):
    """The dispatcher claimed the job and its POST is under way when the cancel comes: the
    cancel must not mark it cancelled (ComfyUI will run it), and the send is not lost."""
    job = hold(store, "racing")
    dispatcher._sync("racing")
    assert dispatcher.dispatch_once() == 1
    assert dispatcher.comfy.posting.wait(WAIT)
    after = cancel_held(store, store.get("racing"))
    assert after.status == JobStatus.SUBMITTING and not after.cancel_requested
    dispatcher.comfy.gate.set()
    assert store.wait_settled("racing", WAIT).status == JobStatus.QUEUED
    assert dispatcher.comfy.accepted == [store.get("racing").prompt_id]
    assert job.prompt_id is None


def test_a_send_under_way_is_never_judged_by_a_poll(store, dispatcher):
    """Between the claim and ComfyUI's answer, a poll that finds no such prompt in ComfyUI's
    queue must leave the submission alone (the claim marks it in flight in the same step)."""
    hold(store, "in-flight")
    dispatcher._sync("in-flight")
    assert dispatcher.dispatch_once() == 1
    assert dispatcher.comfy.posting.wait(WAIT)
    assert store.settled_active(0) == []
    reconcile_gpu(dispatcher.gpus[0], store)  # /queue does not list it yet
    claimed = store.get("in-flight")
    assert claimed.status == JobStatus.SUBMITTING and claimed.attempts == 1
    dispatcher.comfy.gate.set()
    assert store.wait_settled("in-flight", WAIT).status == JobStatus.QUEUED


def test_a_late_death_verdict_about_one_attempt_never_lands_on_the_next(store, dispatcher):
    """Two polls read the job while attempt 1 ran; the first finds ComfyUI dead and puts it
    back in the queue, the dispatcher sends attempt 2; the second poll's verdict about
    attempt 1 arrives then, and must change nothing."""
    dispatcher.comfy.gate.set()
    hold(store, "twice")
    dispatcher._sync("twice")
    assert dispatcher.dispatch_once() == 1
    first = store.wait_settled("twice", WAIT)
    assert first.status == JobStatus.QUEUED and first.attempts == 1
    assert died_under(store, first, max_attempts=3).status == JobStatus.HELD
    assert dispatcher.dispatch_once() == 1
    second = store.wait_settled("twice", WAIT)
    assert second.prompt_id != first.prompt_id and second.attempts == 2
    assert died_under(store, first, max_attempts=3) is None  # the stale verdict
    now = store.get("twice")
    assert (now.status, now.prompt_id, now.attempts) == (JobStatus.QUEUED, second.prompt_id, 2)


def test_observers_told_out_of_order_leave_the_queue_true(store, dispatcher):
    """Observers run outside the store's lock, so the dispatcher may hear of a job's claim
    before it hears that the job was held: the queue must end up without it."""
    dispatcher.comfy.gate.set()
    held = hold(store, "out-of-order")
    dispatcher._sync("out-of-order")
    assert dispatcher.dispatch_once() == 1
    claimed = store.wait_settled("out-of-order", WAIT)
    dispatcher._observed(held, claimed)  # the claim's news
    dispatcher._observed(None, held)  # the hold's news, arriving last
    assert dispatcher.position("out-of-order") is None


def test_a_send_comfyui_refuses_goes_back_to_the_queue_without_counting(store, dispatcher):
    """Connection refused on the POST: ComfyUI never got it, so it is not an attempt; the job
    is held again, first in line, and the GPU is no longer taken for ready."""
    dispatcher.comfy.refuse = True
    dispatcher.comfy.gate.set()
    hold(store, "refused")
    dispatcher._sync("refused")
    assert dispatcher.dispatch_once() == 1
    job = store.wait_settled("refused", WAIT)
    assert (job.status, job.attempts, job.prompt_id, job.gpu_id) == (JobStatus.HELD, 0, None, None)
    assert dispatcher.gpus[0].reachable is False
    assert dispatcher.dispatch_once() == 0 and dispatcher.position("refused") == 0


def test_two_sends_to_one_gpu_reach_it_in_the_order_they_were_chosen(store, dispatcher):
    """The first POST is held at the gate when the second job is claimed for the same GPU:
    the second must wait behind it (one sender per GPU), or ComfyUI could queue them the
    other way round, against priority and model affinity."""
    for job_id in ("first", "second"):
        hold(store, job_id)
        dispatcher._sync(job_id)
    assert dispatcher.dispatch_once() == 2
    assert dispatcher.comfy.posting.wait(WAIT)
    claimed = [store.get(job_id).prompt_id for job_id in ("first", "second")]
    dispatcher.comfy.gate.set()
    for job_id in ("first", "second"):
        assert store.wait_settled(job_id, WAIT).status == JobStatus.QUEUED
    assert dispatcher.comfy.accepted == claimed
    assert len({thread for _, thread in dispatcher.comfy.threads}) == 1


def test_the_queue_limit_holds_under_concurrent_submissions(store):
    """Eight submissions at once against room for three: exactly three are held."""
    barrier = threading.Barrier(8)
    results = []

    def submit(n: int) -> None:
        workflow = parse_workflow(b'{"1": {"class_type": "SaveImage", "inputs": {"n": %d}}}' % n)
        barrier.wait(WAIT)
        try:
            results.append(hold_job(store, f"limit-{n}", workflow, 0, max_queued=3)[1])
        except Exception as exc:  # QueueFull
            results.append(type(exc).__name__)

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert sorted(map(str, results)) == ["QueueFull"] * 5 + ["True"] * 3
    assert store.held() == 3


def test_a_retry_meeting_a_send_under_way_is_answered_once_it_settles(store, dispatcher):
    """A client retries a held job while the dispatcher's POST of it is under way: the answer
    must wait for that POST, never name a prompt ComfyUI may not get. Here ComfyUI refuses
    it (it died): the job is back in the queue, and the answer says so, with no prompt."""
    hold(store, "retried")
    dispatcher._sync("retried")
    assert dispatcher.dispatch_once() == 1
    assert dispatcher.comfy.posting.wait(WAIT)
    real_wait = store.wait_settled

    def settle_after_refusal(job_id, timeout):  # the retry is waiting: now ComfyUI refuses
        dispatcher.comfy.refuse = True
        dispatcher.comfy.gate.set()
        return real_wait(job_id, timeout)
    store.wait_settled = settle_after_refusal
    workflow = parse_workflow(json.dumps(workflows.core("retried")).encode())
    answer, created = hold_job(store, "retried", workflow, priority=0, max_queued=100)
    assert not created and answer.status == JobStatus.HELD and answer.prompt_id is None
    assert dispatcher.comfy.accepted == []


def test_an_auto_submission_just_after_start_waits_for_the_first_node_classes():
    """A GPU is reachable, its /object_info still being read, when a GpuId=auto workflow
    arrives: the check waits for the classes instead of holding the workflow unchecked."""
    from cylindria.web.submission import catalogues
    gpu = Gpu(0, "http://127.0.0.1:9", "test-gpu0", client=GatedComfy())
    gpu.reachable = True
    read = threading.Event()

    class ReadWhileWaiting(threading.Event):
        def wait(self, timeout=None):  # the poller delivers the classes while we wait
            read.set()
            gpu.set_catalogue(CORE)
            return super().wait(timeout)
    gpu.catalogue_tried = ReadWhileWaiting()
    assert catalogues([gpu]) == [CORE] and read.is_set()
    down = Gpu(1, "http://127.0.0.1:10", "test-gpu1", client=GatedComfy())
    down.reachable = False  # known to refuse connections: nothing to wait for
    assert catalogues([down]) == []


def test_a_comfyui_silent_since_long_after_the_start_is_not_waited_for():
    """Reachability still unknown (never answered: hung, or answering garbage) well after the
    start: a submission does not wait for classes that are not coming."""
    from cylindria.web.submission import START_WINDOW, catalogues
    silent = Gpu(0, "http://127.0.0.1:9", "test-gpu0", client=GatedComfy())
    silent.created_at -= START_WINDOW + 1

    class NeverRead(threading.Event):
        def wait(self, timeout=None):
            raise AssertionError("waited for a GPU silent since long after the start")
    silent.catalogue_tried = NeverRead()
    assert catalogues([silent]) == []


def test_a_submission_refused_for_a_full_queue_leaves_nothing_remembered(store, dispatcher):
    from types import SimpleNamespace

    from cylindria.web.errors import ApiError
    from cylindria.web.submission import hold as hold_auto
    context = SimpleNamespace(store=store, gpus=dispatcher.gpus, dispatcher=dispatcher,
                              config=SimpleNamespace(max_queued=1))
    hold_auto(context, "fits", parse_workflow(json.dumps(workflows.core("fits")).encode()), 0)
    with pytest.raises(ApiError) as refused:
        hold_auto(context, "refused", parse_workflow(json.dumps(workflows.core("r")).encode()), 0)
    assert refused.value.status == 429
    assert "refused" not in dispatcher._needs and store.get("refused") is None


def test_a_submission_that_lost_the_race_for_its_id_lends_the_winner_no_needs(store, dispatcher):
    """Two submissions of one job id with different workflows: both remember their needs
    before either is held, the loser last. The held job's needs are its own workflow's."""
    from comfy.comfyui.catalogue import needs_of
    winner = parse_workflow(json.dumps(workflows.core("winner")).encode())
    loser = parse_workflow(json.dumps({"1": {"class_type": "OnlyOnGpu9", "inputs": {}}}).encode())
    dispatcher.remember("contested", winner.fingerprint, needs_of(winner.prompt))
    dispatcher.remember("contested", loser.fingerprint, needs_of(loser.prompt))
    job, created = hold_job(store, "contested", winner, priority=0, max_queued=100)
    assert created
    assert dispatcher._needs_of(job) == needs_of(winner.prompt)
    dispatcher.forget("contested", loser.fingerprint)  # its refusal takes nothing of the winner's
    assert dispatcher._needs_of(job) == needs_of(winner.prompt)


class GatedEnds:
    """A store of record whose write of a job's end waits at a gate."""

    def __init__(self, rows):
        self._rows = rows
        self.writing_end = threading.Event()
        self.gate = threading.Event()

    def __getattr__(self, name):
        return getattr(self._rows, name)

    def update(self, job, events=()):
        if job.status.finished:
            self.writing_end.set()
            assert self.gate.wait(WAIT)
        return self._rows.update(job, events)


def test_a_gpu_whose_prompt_ended_takes_the_next_job_while_the_end_is_written(tmp_path):
    """At --gpu-queue-depth 1 the next job's claim and POST run beside the write of the last
    one's end (ComfyUI is done with it: the listener marks the GPU as having room before the
    write), not after it; once the end is written, the GPU counts that one job, not less."""
    rows = GatedEnds(sqlite_storage(tmp_path).jobs)
    store = JobStore(rows)
    comfy = GatedComfy()
    comfy.gate.set()
    gpu = ready_gpu(0, comfy)
    dispatcher = Dispatcher([gpu], store, depth=1)
    room = threading.Event()
    listener = Listener(gpu, store, lambda index: None, on_room=room.set)
    try:
        for job_id in ("first", "second"):
            hold(store, job_id)
            dispatcher._sync(job_id)
        assert dispatcher.dispatch_once() == 1
        first = store.wait_settled("first", WAIT)
        listener.handle_message(json.dumps({"type": "execution_start",
                                            "data": {"prompt_id": first.prompt_id}}))
        assert store.get("first").status == JobStatus.RUNNING
        assert dispatcher.dispatch_once() == 0  # depth 1: the GPU is busy
        ending = threading.Thread(target=listener.handle_message, args=(json.dumps(
            {"type": "execution_success", "data": {"prompt_id": first.prompt_id}}),))
        ending.start()
        assert rows.writing_end.wait(WAIT) and room.is_set()
        assert store.get("first").status == JobStatus.RUNNING  # its end not written yet
        assert dispatcher.dispatch_once() == 1  # the next job goes meanwhile
        assert store.wait_settled("second", WAIT).status == JobStatus.QUEUED
        assert comfy.accepted == [first.prompt_id, store.get("second").prompt_id]
        rows.gate.set()
        ending.join(WAIT)
        assert store.get("first").status == JobStatus.COMPLETED and not gpu.ending
        assert dispatcher._load() == {0: 1}  # the second job only
    finally:
        rows.gate.set()
        dispatcher.stop()


def test_an_end_written_before_the_listener_lets_go_is_not_counted_twice(store):
    """The end is written (the job no longer counts on its GPU) while the listener still
    marks its prompt as ending: the GPU's load is 0, not -1 (which would send one job too
    many)."""
    comfy = GatedComfy()
    comfy.gate.set()
    gpu = ready_gpu(0, comfy)
    dispatcher = Dispatcher([gpu], store, depth=1)
    try:
        hold(store, "only")
        dispatcher._sync("only")
        assert dispatcher.dispatch_once() == 1
        job = store.wait_settled("only", WAIT)
        gpu.ending.add(job.prompt_id)
        assert dispatcher._load() == {0: 0}  # ended, its end not written: room
        store.change("only", finish(JobStatus.COMPLETED), prompt_id=job.prompt_id)
        assert dispatcher._load() == {0: 0}
    finally:
        dispatcher.stop()

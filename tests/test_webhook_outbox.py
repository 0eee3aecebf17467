"""The webhook outbox's rows and the retry schedule, as plain logic: an event is committed with
the status change that causes it, or not at all (on every backend)."""
from __future__ import annotations

import sqlite3
import time

import psycopg
import pytest

from comfy.tracking.events import finish, finish_from_history, start_running
from comfy.jobs.job import Job, JobStatus
from comfy.jobs.retention import RetentionSweep
from comfy.jobs.store import JobStore
from cylindria.storage import OutboxRow
from cylindria.webhooks.outbox import Outbox, shown_url
from cylindria.webhooks.schedule import DELAYS, GIVE_UP_AFTER, JITTER, next_try


@pytest.fixture
def path(backend):
    """Where the test's store lives (the name the tests were written with)."""
    return backend


def stored(backend, outbox_render=lambda job: {"job_id": job.job_id, "status": job.status.public},
           retention=None):
    storage = backend.open(retention)
    store = JobStore(storage.jobs)
    outbox = Outbox(storage.outbox, outbox_render)
    store.commit_with(outbox.rows_for)
    return store, outbox


def queued_job(store, job_id="j", webhook="http://receiver.example/h"):
    store.reserve(Job(job_id=job_id, gpu_id=0, prompt_id="p", fingerprint="f", webhook=webhook), b"{}")
    store.release(job_id, "p")
    store.change(job_id, lambda job: setattr(job, "status", JobStatus.QUEUED))


def running(job):
    job.status = JobStatus.RUNNING


def test_start_and_end_each_commit_one_event_and_other_changes_none(path):
    store, outbox = stored(path)
    queued_job(store)
    assert outbox.depth() == 0  # submitting -> queued: no event
    store.change("j", running)
    store.change("j", lambda job: setattr(job, "nodes_done", 2))  # not a status change
    store.change("j", finish(JobStatus.COMPLETED))
    events = outbox.due(float("inf"), 10)
    assert [e.event for e in events] == ["job.started", "job.completed"]
    assert all(e.url == "http://receiver.example/h" and e.attempts == 0 for e in events)
    assert b'"status":"completed"' in events[1].body.replace(b" ", b"")


def test_a_job_without_a_webhook_writes_no_event(path):
    store, outbox = stored(path)
    queued_job(store, webhook=None)
    store.change("j", running)
    store.change("j", finish(JobStatus.FAILED, {"type": "x"}))
    assert outbox.depth() == 0 and outbox.summary(store.get("j")) is None


def test_an_event_that_cannot_be_written_takes_the_status_change_with_it(path):
    """The same transaction: when the event's INSERT fails, the change is not committed."""
    store, outbox = stored(path)
    queued_job(store)
    twice = OutboxRow("msg_twice", "j", "http://receiver.example/h", "job.started", b"{}", 1.0,
                      due_at=1.0)
    store.commit_with(lambda old, new: [twice, twice])  # the second breaks the primary key
    with pytest.raises((sqlite3.IntegrityError, psycopg.IntegrityError)):
        store.change("j", running)
    assert store.get("j").status is JobStatus.QUEUED  # not published either
    reopened = path.open()
    assert JobStore(reopened.jobs).get("j").status is JobStatus.QUEUED
    assert reopened.outbox.depth() == 0


def test_settled_events_sum_up_in_the_view(path):
    store, outbox = stored(path)
    queued_job(store, webhook="https://user:pw@receiver.example/h?token=t")
    store.change("j", running)
    store.change("j", finish(JobStatus.COMPLETED))
    started, completed = outbox.due(float("inf"), 10)
    outbox.retry(started.id, "HTTP 500", 0.0)
    outbox.delivered(started.id, 1.0)
    outbox.give_up(completed.id, "ConnectionRefused", 2.0)
    assert outbox.summary(store.get("j")) == {
        "url": "https://receiver.example/h", "events": 2, "delivered": False, "attempts": 3,
        "given_up": True, "last_error": "ConnectionRefused"}
    assert outbox.depth() == 0 and outbox.next_due() is None


def test_due_skips_events_being_tried(path):
    store, outbox = stored(path)
    queued_job(store)
    store.change("j", running)
    [event] = outbox.due(float("inf"), 10)
    assert outbox.due(float("inf"), 10, skip={event.id}) == []


@pytest.mark.parametrize("url, shown", [
    ("http://h/p?q=1", "http://h/p"), ("https://u:p@h:8443/p", "https://h:8443/p")])
def test_urls_are_shown_without_query_or_credentials(url, shown):
    assert shown_url(url) == shown


def test_the_schedule_backs_off_with_jitter_then_gives_up_after_a_day():
    low, high = (lambda a, b: a), (lambda a, b: b)
    for tries, delay in enumerate(DELAYS + (DELAYS[-1],) * 3, start=1):
        assert next_try(0.0, 100.0, tries, spread=low) == pytest.approx(100.0 + delay * (1 - JITTER))
        assert next_try(0.0, 100.0, tries, spread=high) == pytest.approx(100.0 + delay * (1 + JITTER))
    assert next_try(0.0, GIVE_UP_AFTER - 1.0, 9, spread=low) is None
    assert next_try(0.0, GIVE_UP_AFTER - 3600.0, 9, spread=low) is not None


def test_a_start_learnt_only_with_the_end_still_sends_job_started_first(path):
    """The websocket was behind: the poller found the job finished in ComfyUI's history."""
    store, outbox = stored(path)
    queued_job(store)

    def ended_while_unseen(job):
        job.started_at = 5.0
        finish(JobStatus.COMPLETED)(job)
    store.change("j", ended_while_unseen)
    assert [e.event for e in outbox.due(float("inf"), 10)] == ["job.started", "job.completed"]


def test_a_revived_lost_job_sends_its_true_end_but_no_second_job_started(path):
    """It ran (job.started sent), its GPU went away (job.lost), then ComfyUI came back and its
    history told the true end (comfy/tracking/reconcile.py's revival): job.completed follows, and the
    start, already announced, is not announced again."""
    store, outbox = stored(path)
    queued_job(store)
    store.change("j", start_running)
    store.change("j", finish(JobStatus.LOST, {"type": "lost"}))
    entry = {"status": {"status_str": "success", "completed": True, "messages": [
        ["execution_start", {"prompt_id": "p", "timestamp": 1}],
        ["execution_success", {"prompt_id": "p", "timestamp": 2}]]}, "outputs": {}}
    assert store.change("j", finish_from_history(entry), allow_finished=True).status \
        is JobStatus.COMPLETED
    assert [e.event for e in outbox.due(float("inf"), 10)] == [
        "job.started", "job.lost", "job.completed"]


def test_a_job_lost_before_it_was_seen_running_gets_one_job_started_when_revived(path):
    """Lost while queued (no start announced), found completed later: its start once."""
    store, outbox = stored(path)
    queued_job(store)
    store.change("j", finish(JobStatus.LOST, {"type": "lost"}))

    def ended_while_unseen(job):
        job.started_at = 5.0
        finish(JobStatus.COMPLETED)(job)
    store.change("j", ended_while_unseen, allow_finished=True)
    assert [e.event for e in outbox.due(float("inf"), 10)] == [
        "job.lost", "job.started", "job.completed"]


def test_a_job_that_never_ran_sends_only_its_end(path):
    store, outbox = stored(path)
    queued_job(store)
    store.change("j", finish(JobStatus.CANCELLED))
    assert [e.event for e in outbox.due(float("inf"), 10)] == ["job.cancelled"]


def test_the_retention_sweep_takes_a_jobs_settled_events_with_it_and_delivers_a_pending_one(path):
    """Settled events leave in the sweep's transaction with their job; one still due is not
    lost with it: it is tried on (the contract's day of retries), and goes once settled."""
    day = 86400.0
    store, outbox = stored(path, retention=day)
    for job_id in ("settled", "pending"):
        queued_job(store, job_id)
        store.change(job_id, finish(JobStatus.COMPLETED, when=time.time() - 2 * day))
    settled, pending = outbox.due(float("inf"), 10)
    outbox.delivered(settled.id, time.time())
    events = path.open().outbox
    sweep = RetentionSweep(store, path.open(day).jobs, day)
    try:
        assert sweep.sweep_once() == 2 and store.get("pending") is None
        assert events.of_job("settled", settled.url) == []
        assert [e.id for e in events.of_job("pending", pending.url)] == [pending.id]
        assert [e.id for e in outbox.due(float("inf"), 10)] == [pending.id]
        outbox.delivered(pending.id, time.time())  # its job is gone: nothing else would remove it
        assert events.of_job("pending", pending.url) == []
    finally:
        sweep.stop()


def test_each_event_carries_its_jobs_client(path):
    store, outbox = stored(path)
    store.reserve(Job(job_id="named", gpu_id=0, prompt_id="p", fingerprint="f",
                      webhook="http://receiver.example/h", submitted_by="alice"), b"{}")
    store.release("named", "p")
    store.change("named", finish(JobStatus.CANCELLED))
    queued_job(store, "unnamed")
    store.change("unnamed", finish(JobStatus.CANCELLED))
    assert [(e.job_id, e.client) for e in outbox.due(float("inf"), 10)] == [
        ("named", "alice"), ("unnamed", "")]

"""Interleavings of the webhook sender, forced with events (never sleeps)."""
from __future__ import annotations

import threading

from comfy.tracking.events import finish
from comfy.jobs.job import Job, JobStatus
from comfy.jobs.store import JobStore
from tests.backends import sqlite_storage
from tests.webhook_receiver import Receiver
from cylindria.webhooks.outbox import Outbox
from cylindria.webhooks.sender import WebhookSender

SECRET = "whsec_" + "QUJD" * 8


def test_an_event_whose_outcome_is_being_recorded_is_not_picked_again(tmp_path):
    """A pass that runs while a delivered event's outcome is written must not see it as
    still due and send it a second time (the event stays "being tried" until recorded)."""
    receiver = Receiver().start()
    storage = sqlite_storage(tmp_path)
    store = JobStore(storage.jobs)
    outbox = Outbox(storage.outbox, lambda job: {"job_id": job.job_id})
    store.commit_with(outbox.rows_for)
    store.reserve(Job(job_id="j", gpu_id=0, prompt_id="p", fingerprint="f",
                      webhook=f"{receiver.url}/h"), b"{}")
    store.release("j", "p")
    store.change("j", finish(JobStatus.COMPLETED))
    sender = WebhookSender(outbox, SECRET, allow_private=True)
    recording, go_on = threading.Event(), threading.Event()
    real_delivered = outbox.delivered

    def delivered_slowly(event_id, now):
        recording.set()
        assert go_on.wait(10)
        real_delivered(event_id, now)
    outbox.delivered = delivered_slowly
    try:
        assert sender.deliver_once(wait=False) == 1
        assert recording.wait(10)  # the POST is done; its outcome is being written
        assert sender.deliver_once(wait=False) == 0  # a second pass in between starts nothing
        go_on.set()
        sender.stop(timeout=1.0)
        sender._workers.shutdown(wait=True)
        assert len(receiver.received) == 1 and outbox.depth() == 0
    finally:
        go_on.set()
        receiver.stop()

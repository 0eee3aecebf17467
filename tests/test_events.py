"""Websocket messages applied to jobs, replayed from the real recordings."""
import json
from pathlib import Path

import pytest

from comfy.tracking.events import handle_message
from comfy.jobs.job import Job, JobStatus
from comfy.jobs.store import JobStore
from tests.backends import sqlite_storage

RECORDINGS = Path(__file__).parent / "recordings"


def recorded_messages(scenario: str, channel: str = "ws:main") -> list[dict]:
    events = json.loads((RECORDINGS / f"scenario-{scenario}.json").read_text())
    return [{"type": e["type"], "data": e["data"]} for e in events
            if e.get("channel") == channel and not e["type"].startswith("<")]


def first_prompt_id(messages) -> str:
    return next(m["data"]["prompt_id"] for m in messages if m["type"] == "execution_start")


@pytest.fixture
def store(tmp_path):
    return JobStore(sqlite_storage(tmp_path).jobs)


def track(store, messages, nodes_total=3) -> Job:
    prompt_id = first_prompt_id(messages)
    store.reserve(Job(job_id="j", gpu_id=0, prompt_id=prompt_id, fingerprint="f",
                      nodes_total=nodes_total), b"{}")
    store.release("j", prompt_id)
    store.change("j", lambda job: setattr(job, "status", JobStatus.QUEUED))
    return prompt_id


def test_success_walks_running_to_completed_with_outputs(store):
    messages = recorded_messages("success")
    track(store, messages)
    seen = []
    for message in messages:
        handle_message(store, 0, message)
        seen.append(store.get("j").status)
    assert JobStatus.RUNNING in seen and seen[-1] == JobStatus.COMPLETED
    job = store.get("j")
    assert job.outputs == ({"node_id": "3", "filename": "cyl_00001_.png", "subfolder": "",
                            "type": "output"},)
    assert job.progress()["percent"] == 100.0 and job.nodes_done == 3


def test_progress_follows_real_progress_messages_and_stays_below_100(store):
    messages = recorded_messages("progress")
    track(store, messages)
    percents = []
    for message in messages:
        handle_message(store, 0, message)
        job = store.get("j")
        if message["type"] == "progress":
            assert (job.progress_value, job.progress_max) == (message["data"]["value"], 8)
            percents.append(job.progress()["percent"])
    assert percents == sorted(percents) and max(percents) < 100
    assert percents[0] > 100 / 3  # node 1 done, node 2 one step in


def test_error_fails_with_the_node_error_and_later_messages_do_not_undo_it(store):
    messages = recorded_messages("error")
    track(store, messages)
    for message in messages:
        handle_message(store, 0, message)
    job = store.get("j")
    assert job.status == JobStatus.FAILED
    assert job.error == {"type": "RuntimeError", "message": "CylFail: intentional failure",
                         "node_id": "2", "node_type": "CylFail"}


def test_interrupt_is_cancelled(store):
    messages = recorded_messages("interrupt")
    prompt_id = track(store, messages)
    for message in messages:
        if message["data"].get("prompt_id") in (prompt_id, None):
            handle_message(store, 0, message)
    assert store.get("j").status == JobStatus.CANCELLED


def test_cached_run_counts_cached_nodes_as_done_and_completes(store):
    messages = recorded_messages("cached")
    starts = [m for m in messages if m["type"] == "execution_start"]
    cached_run = [m for m in messages if m["data"].get("prompt_id") == starts[1]["data"]["prompt_id"]]
    track(store, cached_run)
    for message in cached_run:
        handle_message(store, 0, message)
    job = store.get("j")
    assert job.status == JobStatus.COMPLETED and job.nodes_done == 3 and job.outputs


def test_messages_for_other_prompts_or_gpus_are_ignored(store):
    messages = recorded_messages("success")
    track(store, messages)
    for message in messages:
        handle_message(store, 1, message)
    handle_message(store, 0, {"type": "execution_success", "data": {"prompt_id": "someone-else"}})
    handle_message(store, 0, {"type": "status", "data": {"status": {}}})
    handle_message(store, 0, {"type": "executing", "data": "junk"})
    assert store.get("j").status == JobStatus.QUEUED


def test_times_from_history_never_precede_the_submission(store):
    """ComfyUI's history stamps (its own clock, truncated to ms) a few ms before Cylindria
    stamped the submission: the job still reads submitted <= started <= finished."""
    from comfy.tracking.events import finish_from_history
    store.reserve(Job(job_id="h", gpu_id=0, prompt_id="ph", fingerprint="f", submitted_at=1000.0), b"{}")
    store.release("h", "ph")
    entry = {"status": {"status_str": "success", "completed": True, "messages": [
        ["execution_start", {"prompt_id": "ph", "timestamp": 999994}],
        ["execution_success", {"prompt_id": "ph", "timestamp": 999996}]]}, "outputs": {}}
    job = store.change("h", finish_from_history(entry))
    assert job.status == JobStatus.COMPLETED
    assert job.submitted_at <= job.started_at <= job.finished_at

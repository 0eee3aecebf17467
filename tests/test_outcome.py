"""Reading outputs and outcomes from ComfyUI's messages and history (recorded shapes)."""
import json
from pathlib import Path

from comfy.tracking.events import finish_from_history
from comfy.jobs.job import Job, JobStatus
from comfy.tracking.outcome import files_from_output, outcome_from_history, times_from_history

RECORDINGS = Path(__file__).parent / "recordings"


def recorded_history(scenario: str) -> dict:
    """The first /history/<id> entry with content in a recording."""
    for event in json.loads((RECORDINGS / f"scenario-{scenario}.json").read_text()):
        if event.get("channel") == "http" and event["request"]["path"].startswith("/history/") \
                and event.get("response"):
            return next(iter(event["response"].values()))
    raise AssertionError(f"no history in {scenario}")


def test_success_history_gives_completed_with_outputs():
    status, error, outputs = outcome_from_history(recorded_history("success"))
    assert status == JobStatus.COMPLETED and error is None
    assert outputs == [{"node_id": "3", "filename": "cyl_00001_.png", "subfolder": "",
                        "type": "output"}]


def test_error_history_gives_failed_with_the_node_error():
    status, error, outputs = outcome_from_history(recorded_history("error"))
    assert status == JobStatus.FAILED and outputs == []
    assert error == {"type": "RuntimeError", "message": "CylFail: intentional failure",
                     "node_id": "2", "node_type": "CylFail"}


def test_interrupt_history_is_cancelled_although_status_str_says_error():
    entry = recorded_history("interrupt")
    assert entry["status"]["status_str"] == "error"
    status, error, _ = outcome_from_history(entry)
    assert status == JobStatus.CANCELLED and error is None


def test_every_output_key_is_read_and_temp_files_left_out():
    output = {"images": [{"filename": "a.png", "subfolder": "s", "type": "output"},
                         {"filename": "p.png", "subfolder": "", "type": "temp"}],
              "gifs": [{"filename": "b.webp", "subfolder": "", "type": "output"}],
              "audio": [{"filename": "c.flac", "subfolder": "", "type": "output"}],
              "text": ["not a file"]}
    names = [f["filename"] for f in files_from_output("9", output)]
    assert names == ["a.png", "b.webp", "c.flac"]


def test_history_gives_the_recorded_start_and_end_in_seconds():
    entry = recorded_history("success")
    messages = dict(entry["status"]["messages"])
    started, ended = times_from_history(entry)
    assert started == messages["execution_start"]["timestamp"] / 1000
    assert ended == messages["execution_success"]["timestamp"] / 1000
    assert times_from_history(recorded_history("interrupt"))[1] == \
        dict(recorded_history("interrupt")["status"]["messages"])["execution_interrupted"]["timestamp"] / 1000


def test_missing_or_absurd_timestamps_give_no_time():
    for stamp in (None, "1795386940970", True, float("nan"), -5, 0):
        entry = {"status": {"status_str": "success", "messages": [
            ["execution_start", {"timestamp": stamp}], ["execution_success", {"timestamp": stamp}]]}}
        assert times_from_history(entry) == (None, None)
    assert times_from_history({}) == (None, None)


def test_a_job_finished_from_history_gets_the_recorded_times_but_keeps_a_seen_start():
    entry = recorded_history("success")
    started, ended = times_from_history(entry)
    missed = Job(job_id="a", gpu_id=0, prompt_id="p", fingerprint="f", status=JobStatus.QUEUED)
    finish_from_history(entry)(missed)
    assert (missed.status, missed.started_at, missed.finished_at) == \
        (JobStatus.COMPLETED, started, ended)
    seen = Job(job_id="b", gpu_id=0, prompt_id="p", fingerprint="f", status=JobStatus.RUNNING,
               started_at=123.0)
    finish_from_history(entry)(seen)
    assert seen.started_at == 123.0 and seen.finished_at == ended

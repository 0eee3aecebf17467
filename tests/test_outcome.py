"""Reading outputs and outcomes from ComfyUI's messages and history (recorded shapes)."""
import json
from pathlib import Path

from comfy.jobs import JobStatus
from comfy.outcome import files_from_output, outcome_from_history

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

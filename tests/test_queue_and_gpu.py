"""Pure helpers: ComfyUI's /queue parsed, nodes to run, GPU addresses."""
import json
from pathlib import Path

from comfy.comfyui.gpu import gpu_base_url
from comfy.comfyui.queue import QueueSnapshot, nodes_needed

RECORDINGS = Path(__file__).parent / "recordings"


def recorded_busy_queue() -> dict:
    events = json.loads((RECORDINGS / "scenario-queue.json").read_text())
    return next(e["response"] for e in events if e.get("channel") == "http"
                and e["request"]["path"] == "/queue" and e["response"]["queue_pending"])


def test_recorded_queue_gives_positions_with_the_running_one_counted():
    snapshot = QueueSnapshot.from_json(recorded_busy_queue())
    assert len(snapshot.running) == 1 and len(snapshot.pending) == 2
    positions = snapshot.positions()
    assert sorted(positions.values()) == [1, 2]
    assert snapshot.running[0].prompt_id not in positions
    assert [i.number for i in snapshot.pending] == sorted(i.number for i in snapshot.pending)


def test_nodes_to_run_are_the_outputs_and_their_ancestors():
    prompt = {"1": {"class_type": "A", "inputs": {}},
              "2": {"class_type": "B", "inputs": {"x": ["1", 0], "size": [512, 512]}},
              "3": {"class_type": "Save", "inputs": {"images": ["2", 0]}},
              "4": {"class_type": "Unused", "inputs": {"x": ["1", 0]}}}
    assert nodes_needed(prompt, ["3"]) == {"1", "2", "3"}
    assert nodes_needed(prompt, ["missing"]) == set()


def test_gpu_n_is_the_base_url_with_port_plus_n():
    assert gpu_base_url("http://127.0.0.1:8188", 3) == "http://127.0.0.1:8191"
    assert gpu_base_url("http://localhost", 1) == "http://localhost:81"
    assert gpu_base_url("https://[::1]:9000/comfy/", 2) == "https://[::1]:9002/comfy"

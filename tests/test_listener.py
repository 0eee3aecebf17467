"""The websocket listener's one step: frames in, store changes out (no socket needed)."""
import json

from comfy.comfyui.gpu import Gpu
from comfy.jobs.job import Job, JobStatus
from comfy.comfyui.listener import Listener
from comfy.jobs.store import JobStore
from cylindria.storage import StorageUnavailable
from tests.backends import sqlite_storage


def make_listener(tmp_path):
    store = JobStore(sqlite_storage(tmp_path).jobs)
    store.reserve(Job(job_id="j", gpu_id=0, prompt_id="p", fingerprint="f"), b"{}")
    store.release("j", "p")
    asked = []
    return Listener(Gpu(0, "http://127.0.0.1:1", "cid"), store, asked.append), store, asked


def test_text_messages_reach_the_store_and_noise_is_never_parsed(tmp_path):
    listener, store, _ = make_listener(tmp_path)
    listener.handle_frame(None, json.dumps({"type": "progress_state", "data": "not even an object"}))
    listener.handle_frame(None, b"\x00\x00\x00\x01\x00\x00\x00\x01\xff\xd8", 2)  # a preview
    listener.handle_frame(None, b"\xff\xfe not utf-8", 1)
    listener.handle_frame(None, "not json")
    assert store.get("j").status == JobStatus.SUBMITTING
    listener.handle_frame(None, json.dumps({"type": "execution_success",
                                            "data": {"prompt_id": "p"}}).encode(), 1, True)
    assert store.get("j").status == JobStatus.COMPLETED


def test_connect_and_drop_ask_for_a_reconciliation(tmp_path):
    listener, _, asked = make_listener(tmp_path)
    listener.handle_open()
    assert asked == [0] and listener.gpu.websocket_connected
    listener.handle_close()
    assert asked == [0, 0] and not listener.gpu.websocket_connected
    listener.handle_close()  # already down: no second request
    assert asked == [0, 0]


def test_backoff_grows_to_its_cap_with_jitter(tmp_path):
    listener, _, _ = make_listener(tmp_path)
    delays = [listener._next_backoff() for _ in range(8)]
    assert all(0 < d <= listener.backoff_max for d in delays)
    assert max(delays[5:]) > max(delays[:2])
    listener.handle_open()
    assert listener._next_backoff() <= listener.backoff_initial


def test_silence_after_a_submission_reopens_the_socket(tmp_path):
    listener, _, _ = make_listener(tmp_path)
    listener.handle_open()
    gpu = listener.gpu
    gpu.last_frame_at, gpu.last_submit_at = 10.0, 20.0
    assert not listener.check_deaf(21.0)  # ComfyUI's status broadcast may still be on its way
    assert listener.check_deaf(24.0)  # nothing since the submission: ComfyUI forgot the socket
    assert not listener.check_deaf(25.0)  # once per silence
    gpu.last_submit_at, gpu.last_frame_at = 30.0, 30.5
    assert not listener.check_deaf(40.0)  # a frame came after the submission: alive


class FlakyRows:
    """A store of record that is unavailable while `down`."""

    def __init__(self, rows):
        self._rows = rows
        self.down = False

    def __getattr__(self, name):
        return getattr(self._rows, name)

    def update(self, job, events=()):
        if self.down:
            raise StorageUnavailable("the database is unavailable")
        return self._rows.update(job, events)


def test_a_prompt_with_a_message_not_recorded_ends_from_comfyuis_history(tmp_path):
    """The database was down when ComfyUI started the prompt and sent its output: that change
    was never recorded. Ended from execution_success, the job would be `completed` with no
    outputs; instead the GPU is reconciled (its end read from the history, outputs and all),
    and every later end message of that prompt leaves the job to the reconciliation."""
    rows = FlakyRows(sqlite_storage(tmp_path).jobs)
    store = JobStore(rows)
    store.reserve(Job(job_id="j", gpu_id=0, prompt_id="p", fingerprint="f"), b"{}")
    store.release("j", "p")
    asked = []
    listener = Listener(Gpu(0, "http://127.0.0.1:1", "cid"), store, asked.append)
    rows.down = True
    listener.handle_message(json.dumps({"type": "executed", "data": {
        "prompt_id": "p", "node": "9", "output": {"images": [
            {"filename": "a.png", "subfolder": "", "type": "output"}]}}}))
    assert store.get("j").status == JobStatus.SUBMITTING  # nothing of it recorded
    rows.down = False
    for end in ({"type": "execution_success", "data": {"prompt_id": "p"}},
                {"type": "executing", "data": {"prompt_id": "p", "node": None}}):
        listener.handle_message(json.dumps(end))
    assert store.get("j").status == JobStatus.SUBMITTING and asked == [0, 0]
    listener.handle_message(json.dumps({"type": "execution_success",
                                        "data": {"prompt_id": "q"}}))  # another prompt: as ever
    listener.handle_open()  # a reconnect reconciles everything: nothing is kept
    assert listener._unrecorded == {}

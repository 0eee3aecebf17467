"""Live tracking against fake GPUs with real sockets: websocket, poller, reconciliation."""
import threading
import time

import requests

from comfy.comfyui import listener as listener_module
from comfy.comfyui.gpu import Gpu
from comfy.comfyui.status import iso_time
from cylindria.service.server import Service
from tests import workflows
from tests.conftest import make_config
from tests.helpers import Api, lose_a_finished_job, wait_for


def watch(api, job_id, until=("completed", "failed", "cancelled", "lost"), timeout=30):
    """Every answer /jobstatus gave while the job ran."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api.status(job_id)
        seen.append(job)
        if job["status"] in until:
            return seen
        time.sleep(0.01)
    raise AssertionError(f"{job_id} did not end: {seen[-1]}")


def test_job_walks_queued_running_completed_with_real_progress(api, fake):
    fake.hold = True
    api.put("/startjob/walk", json=workflows.slow(seconds=30, steps=8))  # 1.5 s at time_scale
    first = api.status("walk")  # read while ComfyUI holds it: the walk's first step, for sure
    assert first["status"] == "queued"
    fake.hold = False
    seen = [first, *watch(api, "walk")]
    statuses = [s["status"] for s in seen]
    assert statuses[0] == "queued" and "running" in statuses and statuses[-1] == "completed"
    steps = [s["progress"] for s in seen if s["status"] == "running" and s["progress"]["max"] == 8]
    assert steps and all(1 <= p["value"] <= 8 and p["node"] == "2" for p in steps if p["value"])
    percents = [s["progress"]["percent"] for s in seen]
    assert percents == sorted(percents) and percents[-1] == 100
    assert seen[-1]["outputs"][0]["filename"].startswith("cyl_slow")


def test_interrupt_from_comfy_ends_cancelled(api, fake):
    api.put("/startjob/stopped", json=workflows.slow(seconds=200))
    api.wait_status("stopped", "running")
    requests.post(fake.url + "/interrupt", timeout=10)
    assert api.wait_status("stopped", "cancelled")["error"] is None


def test_cached_rerun_completes(api):
    api.put("/startjob/first", json=workflows.core("again"))
    api.wait_status("first", "completed")
    api.put("/startjob/second", json=workflows.core("again"))
    job = api.wait_status("second", "completed")
    assert job["progress"]["nodes_done"] == 3 and job["outputs"]


def test_cut_websocket_poller_finishes_the_job_and_socket_comes_back(api, service, fake):
    client_id = service.context.gpus[0].client_id
    wait_for(lambda: client_id in fake.ws_client_ids())
    api.put("/startjob/cut", json=workflows.slow(seconds=20))
    api.wait_status("cut", "running")
    fake.ws_silent = True
    fake.drop_websockets()
    job = api.wait_status("cut", "completed", timeout=20)
    assert job["outputs"]
    fake.ws_silent = False
    wait_for(lambda: client_id in fake.ws_client_ids(), message="websocket to reconnect")
    wait_for(lambda: api.get("/serverstatus").json()["websocket"] == "connected")


def test_silent_websocket_poll_alone_reaches_the_true_end(api, fake):
    fake.ws_silent = True
    fake.drop_websockets()
    api.put("/startjob/silent-ok", json=workflows.core("silent"))
    api.put("/startjob/silent-fail", json=workflows.fail())
    done = api.wait_status("silent-ok", "completed")
    assert done["outputs"]
    assert api.wait_status("silent-fail", "failed")["error"]["node_type"] == "CylFail"
    # No message was seen: the times are the ones ComfyUI's history recorded.
    prompt_id = done["prompt_id"]
    entry = requests.get(f"{fake.url}/history/{prompt_id}", timeout=5).json()[prompt_id]
    messages = dict(entry["status"]["messages"])
    assert done["started_at"] == iso_time(messages["execution_start"]["timestamp"] / 1000)
    assert done["finished_at"] == iso_time(messages["execution_success"]["timestamp"] / 1000)


def test_poll_only_mode_tracks_everything(fakes, tmp_path):
    config = make_config(fakes, tmp_path, websocket=False)
    with Service(config) as service:
        api = Api(service.url)
        api.put("/startjob/p1", json=workflows.slow(seconds=10))
        assert api.wait_status("p1", "completed")["progress"]["percent"] == 100


def test_stopped_comfy_loses_its_jobs_and_the_other_gpu_is_untouched(fakes, tmp_path):
    """With no attempt left (--max-attempts 1), a job whose ComfyUI stopped is lost at once;
    with attempts left it is sent again (tests/test_auto_gpu.py)."""
    with Service(make_config(fakes, tmp_path, max_attempts=1)) as service:
        api = Api(service.url)
        api.put("/startjob/doomed?GpuId=0", json=workflows.slow(seconds=200))
        api.put("/startjob/fine?GpuId=1", json=workflows.slow(seconds=20))
        api.wait_status("doomed", "running")
        fakes[0].stop()
        job = api.wait_status("doomed", "lost", timeout=10)
        assert job["error"]["type"] == "lost"
        assert api.get("/serverstatus?GpuId=0").json()["reachable"] is False
        assert api.wait_status("fine", "completed")["outputs"]
        fakes[0].restart()
        assert api.status("doomed")["status"] == "lost"
        api.put("/startjob/after?GpuId=0", json=workflows.core("after"))
        assert api.wait_status("after", "completed")


def test_lost_job_gets_its_true_end_when_comfy_returns_with_history(fakes, tmp_path):
    config = make_config(fakes, tmp_path, poll_interval=3600, websocket=False, max_attempts=1)
    with Service(config) as service:
        api = Api(service.url)
        lose_a_finished_job(service, fakes[0], api, "back")
        fakes[0].restart(keep_state=True)
        service.context.tracker.poller.request(0)
        assert api.wait_status("back", "completed")["outputs"]


def test_stop_ends_every_thread_within_its_timeout(fakes, tmp_path):
    service = Service(make_config(fakes, tmp_path)).serve_in_thread()
    Api(service.url).put("/startjob/x", json=workflows.slow(seconds=100))
    wait_for(lambda: service.context.gpus[0].websocket_connected)
    assert service.stop() is True
    alive = [t.name for t in threading.enumerate() if t.name.startswith("cylindria-") and t.is_alive()]
    assert alive == []


def test_a_job_waiting_in_a_quiet_queue_does_not_look_like_a_deaf_socket(api, service, fake,
                                                                         monkeypatch):
    monkeypatch.setattr(listener_module, "DEAF_AFTER", 1.0)  # 3 s in production
    listener = service.context.tracker.listeners[0]
    wait_for(lambda: listener.gpu.websocket_connected)
    connects = listener.connects
    fake.hold = True  # it waits: after ComfyUI's enqueue broadcast, nothing more is sent
    api.put("/startjob/quiet", json=workflows.core("quiet"))
    time.sleep(2.5)  # past DEAF_AFTER, and a watchdog round (every second) or two
    assert listener.connects == connects and listener.gpu.websocket_connected


def test_a_socket_shown_connected_has_its_connect_counted(fakes, tmp_path, monkeypatch):
    """Whoever sees `websocket_connected` turn true finds that connect in `listener.connects`
    already (a test read 0 there on a busy machine: the flag was set before the count moved).
    The reader is run inside the setter, right after the flag turns, before the listener goes on."""
    seen = []
    set_websocket = Gpu.set_websocket

    def set_and_read(gpu, connected):
        set_websocket(gpu, connected)
        if connected:
            seen.append(listeners[gpu.index].connects)

    monkeypatch.setattr(Gpu, "set_websocket", set_and_read)
    service = Service(make_config(fakes, tmp_path))
    listeners = service.context.tracker.listeners
    with service:
        wait_for(lambda: len(seen) >= len(listeners), message="every websocket connected")
    assert 0 not in seen


def test_a_job_sent_right_after_comfy_came_back_is_followed_at_once(fakes, tmp_path):
    """ComfyUI restarted while the websocket waits out a long backoff: the first answer from
    ComfyUI (the accepted submission) reconnects it now, so the job's end is seen through the
    socket, not at the end of the backoff nor at the next poll (both an hour away here)."""
    with Service(make_config(fakes, tmp_path, poll_interval=3600.0)) as service:
        api, gpu = Api(service.url), service.context.gpus[0]
        wait_for(lambda: gpu.websocket_connected, timeout=10)
        time.sleep(0.3)  # the start-up reconciliation is over; the next poll is an hour away
        for listener in service.context.tracker.listeners:
            listener.backoff_initial = listener._backoff = listener.backoff_max = 3600.0
        fakes[0].stop()
        wait_for(lambda: not gpu.websocket_connected, timeout=10)
        fakes[0].restart(keep_state=False)
        assert api.put("/startjob/after-restart", json=workflows.core("back")).status_code == 201
        api.wait_status("after-restart", "completed", timeout=30)
        assert gpu.websocket_connected

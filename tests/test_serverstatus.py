"""GET /serverstatus: live answers, reachability, and a bounded cost for ComfyUI."""
import math
import threading
import time

from tests import workflows
from tests.helpers import wait_for


def test_reachable_gpu_answers_every_field(api, service, fakes):
    status = api.get("/serverstatus?GpuId=1").json()
    assert status["gpu_id"] == 1 and status["comfy_url"] == fakes[1].url
    assert status["reachable"] is True and status["status"] == "ok"
    assert status["queue"] == {"running": 0, "pending": 0} and status["running_job_id"] is None
    assert status["system"]["system"]["comfyui_version"]
    assert status["checked_at"].endswith("Z")
    wait_for(lambda: api.get("/serverstatus?GpuId=1").json()["websocket"] == "connected")


def test_running_job_and_queue_counts_are_live(api, fake):
    api.put("/startjob/long", json=workflows.slow(seconds=60))
    # Held only once "long" runs: held earlier, the fake would keep both pending.
    api.wait_status("long", "running")
    fake.hold = True
    api.put("/startjob/waiting", json=workflows.slow(seconds=61))
    status = wait_for(lambda: (lambda s: s if s["running_job_id"] else None)(
        api.get("/serverstatus").json()))
    assert status["running_job_id"] == "long" and status["queue"] == {"running": 1, "pending": 1}


def test_unreachable_gpu_is_still_200(api, fakes):
    fakes[1].stop()
    response = api.get("/serverstatus?gpu_id=1")
    assert response.status_code == 200
    status = response.json()
    assert (status["reachable"], status["status"], status["system"]) == (False, "unreachable", None)


def test_system_stats_is_asked_at_most_once_a_second_however_many_clients(api, fake):
    before, started = fake.system_stats_calls, time.monotonic()
    threads = [threading.Thread(target=lambda: [api.get("/serverstatus") for _ in range(5)])
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    # ComfyUI may be asked at most once per started second, however many answers were given.
    assert 1 <= fake.system_stats_calls - before <= math.ceil(elapsed) + 1


def test_bad_gpu_id_is_400(api):
    response = api.get("/serverstatus?GpuId=7")
    assert response.status_code == 400 and response.json()["code"] == "invalid_gpu_id"

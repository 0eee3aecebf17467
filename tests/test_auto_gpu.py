"""GpuId=auto: Cylindria's own queue, sent to the GPUs as they become ready (late binding)."""
from __future__ import annotations

import threading

from comfy.dispatch.dispatcher import ending
from cylindria.service.server import Service
from tests import workflows
from tests.conftest import make_config
from tests.fake_comfy import FakeComfy
from tests.helpers import Api, free_ports, wait_for
from tests.processes import CylindriaProcess


def serve(fakes, tmp_path, **overrides) -> Service:
    """A real Cylindria in front of these fakes, with these settings (started by `with`)."""
    return Service(make_config(fakes, tmp_path, **overrides))


def wait_reachable(service: Service, *indexes: int) -> None:
    """Until Cylindria has seen these GPUs answer and read their node classes."""
    gpus = service.context.gpus
    wait_for(lambda: all(gpus[i].reachable and gpus[i].catalogue is not None for i in indexes),
             timeout=20, message="GPUs checked")


def only_gpu0_holding(fakes) -> None:
    """GPU 1's ComfyUI down, GPU 0's taking prompts but not starting them."""
    fakes[1].stop()
    fakes[0].hold = True


def prompts_on(fake: FakeComfy) -> list[str]:
    """The prompt ids a fake was sent, in order."""
    return fake.prompts_received()


def sent_ids(api: Api, job_ids) -> dict[str, str]:
    """job id -> its current prompt id."""
    return {job_id: api.get(f"/jobstatus/{job_id}").json()["prompt_id"] for job_id in job_ids}


class Timeline:
    """Store observer: at every job that ends, what Cylindria holds and each GPU has."""

    def __init__(self, service: Service):
        self.store = service.context.store
        self.gpus = service.context.gpus
        self.lock = threading.Lock()
        self.at_ends: list[tuple[int, int, dict]] = []  # (gpu that ended a job, held, per GPU)
        self.most: dict[int, int] = {}  # the most prompts each GPU held at once
        self.store.observe(self.changed)

    def in_comfy(self, gpu: int, unfinished: int) -> int:
        """What a ComfyUI holds of ours: our unfinished jobs on it, less those whose prompt it
        said it ended while their end is still being written (read after the counts)."""
        return unfinished - ending(self.store, self.gpus[gpu])

    def changed(self, old, new) -> None:
        per_gpu, held = self.store.unfinished_per_gpu(), self.store.held()
        with self.lock:
            for gpu, n in per_gpu.items():
                self.most[gpu] = max(self.most.get(gpu, 0), self.in_comfy(gpu, n))
            if new.status.finished and new.gpu_id is not None:
                self.at_ends.append((new.gpu_id, held, dict(per_gpu)))


def test_an_auto_job_is_held_then_sent_with_its_own_prompt(tmp_path, fakes):
    with serve(fakes, tmp_path) as service:
        api = Api(service.url)
        wait_reachable(service, 0, 1)
        answer = api.put("/startjob/first?GpuId=auto", json=workflows.core("first"))
        assert answer.status_code == 201
        body = answer.json()
        assert body["status"] == "queued" and body["priority"] == 0 and body["accepted"] is True
        assert body["gpu_id"] in (None, 0) and body["attempts"] in (0, 1)
        done = api.wait_status("first", "completed")
        assert done["gpu_id"] == 0 and done["attempts"] == 1  # both idle: the lowest id
        assert prompts_on(fakes[0]) == [done["prompt_id"]]
        again = api.put("/startjob/first?GpuId=auto", json=workflows.core("first"))
        assert again.status_code == 200 and again.json()["prompt_id"] == done["prompt_id"]
        assert api.put("/startjob/first?GpuId=auto", json=workflows.core("other")).status_code == 409


def test_mixed_lengths_never_idle_a_gpu_while_jobs_are_held(tmp_path, fakes):
    """10 jobs over 2 GPUs, ended one at a time in an uneven order (as mixed lengths end):
    each end sends a held job to that GPU at once (the dispatcher's periodic pass and the
    poller are an hour away), so whenever a GPU ends a job while jobs are held, it still has one to run; no
    ComfyUI ever holds more than --gpu-queue-depth. The test decides when each prompt ends
    (a timed race between a refill and the GPU's next end failed on a loaded machine)."""
    gates = [threading.Semaphore(0) for _ in fakes]
    for fake, gate in zip(fakes, gates):
        fake.hold, fake.end_gate = True, gate
    with serve(fakes, tmp_path, gpu_queue_depth=2, poll_interval=3600.0) as service:
        api, store = Api(service.url), service.context.store
        wait_reachable(service, 0, 1)
        service.context.dispatcher.tick = 3600.0  # with the poll: nothing but the ends refills
        timeline = Timeline(service)
        ids = [f"mix-{n}" for n in range(10)]
        for job_id in ids:
            assert api.put(f"/startjob/{job_id}?GpuId=auto",
                           json=workflows.slow(1, steps=2, prefix=job_id)).status_code == 201
        wait_for(lambda: store.held() == 6, message="4 sent, 6 held")
        for fake in fakes:
            fake.hold = False
        order = [0, 1, 1, 0, 0, 0, 1, 0, 0, 1]  # the 6 refills go where the ends were
        for n, gpu in enumerate(order):
            gates[gpu].release()
            wait_for(lambda: len(timeline.at_ends) == n + 1, message=f"end {n + 1} on GPU {gpu}")
            wait_for(lambda: store.held() == 0 or store.unfinished_per_gpu()[gpu] == 2,
                     message=f"a held job sent to GPU {gpu} after its end")
        for job_id in ids:
            assert api.wait_status(job_id, "completed")["attempts"] == 1
    assert [gpu for gpu, _, _ in timeline.at_ends] == order
    assert max(timeline.most.values()) <= 2
    for gpu, held, per_gpu in timeline.at_ends:
        assert held == 0 or per_gpu.get(gpu, 0) >= 1, (gpu, held, per_gpu)
    sent = prompts_on(fakes[0]) + prompts_on(fakes[1])
    assert len(sent) == len(set(sent)) == 10
    assert [len(prompts_on(f)) for f in fakes] == [6, 4]


def test_higher_priority_goes_first_equal_priorities_keep_arrival_order(tmp_path, fakes):
    only_gpu0_holding(fakes)
    with serve(fakes, tmp_path, gpu_queue_depth=1) as service:
        api = Api(service.url)
        wait_reachable(service, 0)
        order = [("p-first", 0), ("p-low-a", -5), ("p-mid-a", 0), ("p-mid-b", 0), ("p-high", 50),
                 ("p-low-b", -5)]
        for job_id, priority in order:
            assert api.put(f"/startjob/{job_id}?GpuId=auto&priority={priority}",
                           json=workflows.core(job_id)).status_code == 201
        wait_for(lambda: service.context.store.held() == 5, message="one sent, five held")
        positions = {job_id: api.get(f"/jobstatus/{job_id}").json()["queue_position"]
                     for job_id, _ in order[1:]}
        assert positions == {"p-high": 0, "p-mid-a": 1, "p-mid-b": 2, "p-low-a": 3, "p-low-b": 4}
        high = api.get("/jobstatus/p-high").json()
        assert high["gpu_id"] is None and high["prompt_id"] is None and high["priority"] == 50
        fakes[0].hold = False
        for job_id, _ in order:
            api.wait_status(job_id, "completed")
        ran = sent_ids(api, [job_id for job_id, _ in order])
    expected = ["p-first", "p-high", "p-mid-a", "p-mid-b", "p-low-a", "p-low-b"]
    assert prompts_on(fakes[0]) == [ran[job_id] for job_id in expected]


def test_bad_priority_is_400_and_leaves_no_job(tmp_path, fakes):
    with serve(fakes, tmp_path) as service:
        api = Api(service.url)
        for bad in ("101", "-101", "high", "1.5", ""):
            answer = api.put(f"/startjob/bad-prio?GpuId=auto&priority={bad}", json=workflows.core())
            assert answer.status_code == 400 and answer.json()["code"] == "invalid_parameter"
        assert api.get("/jobstatus/bad-prio").status_code == 404


def test_a_held_job_cancelled_never_reaches_comfyui(tmp_path, fakes):
    for fake in fakes:
        fake.hold = True
    with serve(fakes, tmp_path, gpu_queue_depth=1) as service:
        api = Api(service.url)
        wait_reachable(service, 0, 1)
        for job_id in ("busy-0", "busy-1", "held"):
            assert api.put(f"/startjob/{job_id}?GpuId=auto", json=workflows.core(job_id)).status_code == 201
        wait_for(lambda: service.context.store.held() == 1, message="two sent, one held")
        cancelled = api.delete("/job/held")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert api.delete("/job/held").status_code == 409
        for fake in fakes:
            fake.hold = False
        api.wait_status("busy-0", "completed")
        api.wait_status("busy-1", "completed")
        assert api.get("/jobstatus/held").json()["attempts"] == 0
    assert len(prompts_on(fakes[0]) + prompts_on(fakes[1])) == 2


def test_a_node_class_on_one_gpu_runs_only_there_and_one_nowhere_is_400(tmp_path):
    base = free_ports(2)
    fakes = [FakeComfy(port=base, time_scale=0.05).start(),
             FakeComfy(port=base + 1, time_scale=0.05, custom_nodes=("CylCustomInvert",)).start()]
    try:
        with serve(fakes, tmp_path) as service:
            api = Api(service.url)
            wait_reachable(service, 0, 1)
            for n in range(4):
                assert api.put(f"/startjob/custom-{n}?GpuId=auto",
                               json=workflows.custom_invert(f"c{n}")).status_code == 201
            for n in range(4):
                assert api.wait_status(f"custom-{n}", "completed")["gpu_id"] == 1
            nowhere = workflows.core("nowhere")
            nowhere["2"]["class_type"] = "NoSuchNode"
            answer = api.put("/startjob/nowhere?GpuId=auto", json=nowhere)
            assert answer.status_code == 400 and answer.json()["code"] == "invalid_workflow"
            assert answer.json()["details"]["node_id"] == "2" and "NoSuchNode" in answer.json()["error"]
            missing = api.put("/startjob/missing?GpuId=auto", json=workflows.invalid())
            assert missing.status_code == 400 and missing.json()["code"] == "invalid_workflow"
            assert missing.json()["details"]["reason"] == "missing_required_input"
            assert api.get("/jobstatus/nowhere").status_code == 404
        assert prompts_on(fakes[0]) == []
    finally:
        for fake in fakes:
            fake.close()


def test_a_prompt_comfyui_refuses_when_sent_fails_with_its_node_errors(tmp_path, fakes):
    with serve(fakes, tmp_path) as service:
        api = Api(service.url)
        wait_reachable(service, 0, 1)
        workflow = workflows.core("refused")
        workflow["1"]["inputs"]["width"] = -4  # below EmptyImage's min: only ComfyUI checks values
        assert api.put("/startjob/refused?GpuId=auto", json=workflow).status_code == 201
        failed = api.wait_status("refused", "failed")
        assert failed["error"]["type"] == "comfy_rejected"
        assert "1" in failed["error"]["details"]["node_errors"]


def test_jobs_of_a_comfyui_that_died_are_sent_again_elsewhere(tmp_path, fakes):
    """ComfyUI 0 killed with three auto jobs on it: they finish on GPU 1 with attempts 2;
    none is lost, none ran twice on a live ComfyUI."""
    only_gpu0_holding(fakes)
    with serve(fakes, tmp_path, gpu_queue_depth=3) as service:
        api = Api(service.url)
        wait_reachable(service, 0)
        ids = [f"dies-{n}" for n in range(3)]
        for job_id in ids:
            assert api.put(f"/startjob/{job_id}?GpuId=auto", json=workflows.core(job_id)).status_code == 201
        wait_for(lambda: len(prompts_on(fakes[0])) == 3, message="all three on GPU 0")
        first = sent_ids(api, ids)
        fakes[1].start()
        fakes[0].stop()
        finished = [api.wait_status(job_id, "completed") for job_id in ids]
    assert [job["gpu_id"] for job in finished] == [1, 1, 1]
    assert [job["attempts"] for job in finished] == [2, 2, 2]
    assert all(job["prompt_id"] != first[job["job_id"]] for job in finished)
    assert sorted(prompts_on(fakes[1])) == sorted(job["prompt_id"] for job in finished)


def test_a_job_sent_as_many_times_as_allowed_is_lost(tmp_path, fakes):
    only_gpu0_holding(fakes)
    with serve(fakes, tmp_path, max_attempts=1) as service:
        api = Api(service.url)
        wait_reachable(service, 0)
        assert api.put("/startjob/once?GpuId=auto", json=workflows.core("once")).status_code == 201
        wait_for(lambda: len(prompts_on(fakes[0])) == 1, message="sent to GPU 0")
        fakes[0].stop()
        lost = api.wait_status("once", "lost")
        assert lost["attempts"] == 1 and "attempt 1 of 1" in lost["error"]["message"]


def test_a_pinned_job_waits_for_its_own_gpu_to_come_back(tmp_path, fakes):
    fakes[0].hold = True
    with serve(fakes, tmp_path) as service:
        api = Api(service.url)
        wait_reachable(service, 0, 1)
        assert api.put("/startjob/pinned?GpuId=0&priority=7",
                       json=workflows.core("pinned")).status_code == 201
        fakes[0].stop()
        wait_for(lambda: api.get("/jobstatus/pinned").json()["prompt_id"] is None,
                 message="back in Cylindria's queue")
        held = api.get("/jobstatus/pinned").json()
        assert held["status"] == "queued" and held["gpu_id"] == 0 and held["attempts"] == 1
        assert held["priority"] == 7
        fakes[0].hold = False
        fakes[0].start()
        done = api.wait_status("pinned", "completed")
    assert done["gpu_id"] == 0 and done["attempts"] == 2
    assert prompts_on(fakes[1]) == []


def test_a_pinned_job_whose_gpu_stays_down_is_lost_after_the_wait(tmp_path, fakes):
    fakes[0].hold = True
    with serve(fakes, tmp_path, requeue_wait=0.5) as service:
        api = Api(service.url)
        wait_reachable(service, 0)
        assert api.put("/startjob/stranded?GpuId=0", json=workflows.core("s")).status_code == 201
        fakes[0].stop()
        lost = api.wait_status("stranded", "lost")
        assert "did not come back" in lost["error"]["message"]
    assert prompts_on(fakes[1]) == []


def test_no_gpu_reachable_the_job_is_held_and_runs_once_one_starts(tmp_path, fakes):
    for fake in fakes:
        fake.stop()
    with serve(fakes, tmp_path) as service:
        api = Api(service.url)
        answer = api.put("/startjob/waiting?GpuId=auto", json=workflows.core("waiting"))
        assert answer.status_code == 201
        body = answer.json()
        assert (body["status"], body["gpu_id"], body["prompt_id"], body["queue_position"]) == \
            ("queued", None, None, 0)
        fakes[1].start()
        done = api.wait_status("waiting", "completed")
    assert done["gpu_id"] == 1 and prompts_on(fakes[1]) == [done["prompt_id"]]


def test_queue_full_at_the_limit(tmp_path, fakes):
    for fake in fakes:
        fake.stop()
    with serve(fakes, tmp_path, max_queued=2) as service:
        api = Api(service.url)
        for job_id in ("q-1", "q-2"):
            assert api.put(f"/startjob/{job_id}?GpuId=auto", json=workflows.core(job_id)).status_code == 201
        full = api.put("/startjob/q-3?GpuId=auto", json=workflows.core("q-3"))
        assert full.status_code == 429 and full.json()["code"] == "queue_full"
        assert int(full.headers["Retry-After"]) > 0
        assert api.get("/jobstatus/q-3").status_code == 404
        assert api.put("/startjob/q-1?GpuId=auto", json=workflows.core("q-1")).status_code == 200
        ready = api.get("/ready")
        assert ready.status_code == 503 and ready.json()["queue"]["full"] is True
        assert api.delete("/job/q-2").status_code == 200
        assert api.put("/startjob/q-3?GpuId=auto", json=workflows.core("q-3")).status_code == 201


def test_held_jobs_survive_a_kill_of_cylindria_and_are_each_sent_once(tmp_path, fakes):
    for fake in fakes:
        fake.hold = True
    data_dir = tmp_path / "data"
    first = CylindriaProcess(fakes[0].url, data_dir, extra=("--gpu-queue-depth", "1")).start()
    try:
        api = Api(first.url)
        wait_for(lambda: api.get("/ready").status_code == 200, message="ready")
        ids = [f"survivor-{n}" for n in range(6)]
        for job_id in ids:
            assert api.put(f"/startjob/{job_id}?GpuId=auto", json=workflows.core(job_id)).status_code == 201
        wait_for(lambda: len(prompts_on(fakes[0]) + prompts_on(fakes[1])) == 2, message="two sent")
        first.kill()
    finally:
        first.stop()
    second = CylindriaProcess(fakes[0].url, data_dir, extra=("--gpu-queue-depth", "1")).start()
    try:
        api = Api(second.url)
        for fake in fakes:
            fake.hold = False
        done = [api.wait_status(job_id, "completed") for job_id in ids]
    finally:
        second.stop()
    sent = prompts_on(fakes[0]) + prompts_on(fakes[1])
    assert len(sent) == len(set(sent)) == 6
    assert sorted(sent) == sorted(job["prompt_id"] for job in done)


def test_serverstatus_all(api, fakes):
    fakes[1].stop()
    answer = api.get("/serverstatus?GpuId=all").json()
    assert [g["gpu_id"] for g in answer["gpus"]] == [0, 1]
    assert [g["reachable"] for g in answer["gpus"]] == [True, False]


def metric(text: str, name: str) -> float:
    """The value of one sample line of /metrics (0 if absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_jobs_of_one_checkpoint_stay_where_it_is_loaded(tmp_path, fakes):
    """Two checkpoints interleaved over two GPUs: each GPU keeps one checkpoint while both
    kinds wait (a GPU left with nothing of its own takes the other kind rather than idle,
    at most once each at the end); the model-affinity figures of /metrics count the loads."""
    for fake in fakes:
        fake.hold = True
    with serve(fakes, tmp_path, gpu_queue_depth=2) as service:
        api = Api(service.url)
        wait_reachable(service, 0, 1)
        ckpts = ["sd15.safetensors", "sdxl.safetensors"] * 5
        ids = [f"ckpt-{n}" for n in range(len(ckpts))]
        for job_id, ckpt in zip(ids, ckpts):
            assert api.put(f"/startjob/{job_id}?GpuId=auto",
                           json=workflows.checkpoint(ckpt, seconds=1, prefix=job_id)).status_code == 201
        wait_for(lambda: service.context.store.held() == 6, message="4 sent, 6 held")
        text = api.get("/metrics").text
        assert metric(text, "cylindria_jobs_held") == 6
        for fake in fakes:
            fake.hold = False
        gpus = {job_id: api.wait_status(job_id, "completed")["gpu_id"] for job_id in ids}
        text = api.get("/metrics").text
    assert [gpus[job_id] for job_id in ids[:4]] == [0, 1, 0, 1]  # sent before any ended
    loads = sum(fake.model_loads for fake in fakes)
    assert 2 <= loads <= 4
    assert metric(text, 'cylindria_model_affinity_total{result="miss"}') == loads
    assert metric(text, 'cylindria_model_affinity_total{result="hit"}') == 10 - loads
    assert metric(text, 'cylindria_job_sends_total{gpu="0"}') + \
        metric(text, 'cylindria_job_sends_total{gpu="1"}') == 10
    assert metric(text, "cylindria_job_held_seconds_count") == 10
    assert metric(text, "cylindria_jobs_held") == 0


def test_requeues_are_counted_per_gpu(tmp_path, fakes):
    only_gpu0_holding(fakes)
    with serve(fakes, tmp_path) as service:
        api = Api(service.url)
        wait_reachable(service, 0)
        assert api.put("/startjob/counted?GpuId=auto", json=workflows.core("counted")).status_code == 201
        wait_for(lambda: len(prompts_on(fakes[0])) == 1, message="sent to GPU 0")
        fakes[1].start()
        fakes[0].stop()
        assert api.wait_status("counted", "completed")["attempts"] == 2
        text = api.get("/metrics").text
    assert metric(text, 'cylindria_job_requeues_total{gpu="0"}') == 1
    assert metric(text, 'cylindria_job_sends_total{gpu="1"}') == 1
    # Counted when accepted, under the GPU asked for (none: auto), so the count never moves.
    assert metric(text, 'cylindria_jobs_submitted_total{gpu="none"}') == 1


def test_a_job_held_before_any_gpu_answered_fails_if_no_gpu_has_its_node(tmp_path, fakes):
    """Held while no GPU could tell what it has installed; once every GPU has: nobody has
    the class, so it fails rather than wait for ever (it would have been a 400 at once)."""
    for fake in fakes:
        fake.stop()
    with serve(fakes, tmp_path) as service:
        api = Api(service.url)
        workflow = workflows.core("nowhere-yet")
        workflow["2"]["class_type"] = "NoSuchNode"
        assert api.put("/startjob/nowhere-yet?GpuId=auto", json=workflow).status_code == 201
        fakes[0].start()
        fakes[1].start()
        failed = api.wait_status("nowhere-yet", "failed")
        assert failed["error"]["type"] == "invalid_workflow" and "NoSuchNode" in failed["error"]["message"]
        assert failed["attempts"] == 0
    assert prompts_on(fakes[0]) + prompts_on(fakes[1]) == []

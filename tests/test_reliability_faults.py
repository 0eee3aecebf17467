"""Faults under load: ComfyUIs killed and restarted, websockets dropped, Cylindria SIGKILLed.

The 50 clients of tests/test_reliability_load.py keep going throughout (retrying the same
request while Cylindria is down). After every fault: no accepted job is missing from /jobs,
no job stays queued/running once its prompt is gone from ComfyUI, and no job is reported
completed that failed (or failed that completed). At the end, each job ran at most once per
life of its ComfyUI, and `lost` only ever marks a job whose ComfyUI was killed after it was
submitted. The normal suite injects each fault twice, its clients pausing 0.1 s
between operations; `pytest --soak` runs them at full pace for 60 s and at least five rounds.
"""
from __future__ import annotations

import time
from collections import Counter

import requests
import websocket

from cylindria.service.server import Service
from tests import workflows
from tests.conftest import make_config
from tests.helpers import Api, wait_for
from tests.processes import CylindriaProcess
from tests.test_reliability_load import (CLIENT_TIMEOUT, LoadRun, Target, all_jobs,
                                         check_final, epoch_seconds, figures, prompts_by_job,
                                         wait_all_final)

SHORT_ROUNDS, SOAK_ROUNDS, SOAK_SECONDS = 2, 5, 60.0
UNFINISHED = "submitting,queued,running"
SHORT_PAUSE = 0.1  # seconds between a client's operations in the short form
DOWN_SECONDS = 0.7  # how long a killed ComfyUI stays down: submissions meet a refused port
# Bound for a job whose prompt is gone to get its final status. Generous: the machine is
# shared, and a socket ComfyUI silently forgot (see the last test) is noticed only after a
# few seconds, meanwhile the poller tracks alone, one /history call per job, behind the load.
SETTLE_TIMEOUT = 30.0


class ComfyFaults:
    """Kills of ComfyUIs and drops of their websockets under `load`: injects them, remembers
    when each happened, and checks the invariants after each against the Cylindria at the
    subclass's `url` (one host, or any node of a fleet)."""

    # Whether each check lists every job to find an accepted one missing (the clients' own
    # status reads find one too: 404 for an accepted id).
    list_every_check = True

    def __init__(self, fakes, load: LoadRun):
        self.fakes, self.load = fakes, load
        self.kills: dict[int, list[float]] = {gpu: [] for gpu in range(len(fakes))}
        # Per ComfyUI, how many prompts it had accepted when each of its lives ended.
        self.epoch_marks: dict[int, list[int]] = {gpu: [] for gpu in range(len(fakes))}
        self.counts: Counter = Counter()
        self.check_seconds: list[float] = []  # how long each check waited for the invariants

    def kill_comfy(self, gpu: int) -> None:
        """Like SIGKILL of one ComfyUI: its queue and history die with it; then it comes back."""
        fake = self.fakes[gpu]
        self.kills[gpu].append(time.time())
        fake.stop()
        # Counted after the kill: from here on the fake accepts nothing until it is back.
        self.epoch_marks[gpu].append(len(fake.prompts_received()))
        time.sleep(DOWN_SECONDS)
        fake.restart(keep_state=False)
        self.counts["comfy_kills"] += 1

    def drop_websockets(self) -> None:
        """Every GPU's websocket aborted without a close frame (ComfyUI replays nothing)."""
        for fake in self.fakes:
            fake.drop_websockets()
        self.counts["websocket_drops"] += len(self.fakes)

    def check(self) -> None:
        """The invariants that must hold after every fault."""
        started, url = time.monotonic(), self.url
        if self.list_every_check:
            with self.load.lock:
                accepted = set(self.load.accepted)
            assert sorted(accepted - set(all_jobs(url))) == [], "accepted jobs missing from /jobs"
        gone = gone_but_unfinished(all_jobs(url, UNFINISHED), self.fakes)
        wait_for(lambda: not (still_unfinished(url, gone)), timeout=SETTLE_TIMEOUT, interval=0.3,
                 message=f"jobs whose prompt left ComfyUI to end: {sorted(gone.items())[:10]}")
        assert self.load.problems == []
        self.check_seconds.append(round(time.monotonic() - started, 1))


class Faults(ComfyFaults):
    """The one-host faults: those of ComfyFaults, and Cylindria itself SIGKILLed."""

    def __init__(self, fakes, load: LoadRun, data_dir, extra: tuple = ()):
        super().__init__(fakes, load)
        self.data_dir, self.extra = data_dir, extra
        self.cylindria = CylindriaProcess(fakes[0].url, data_dir, extra=extra).start()

    @property
    def url(self) -> str:
        """The one Cylindria (a new port after each kill)."""
        return self.cylindria.url

    def kill_cylindria(self) -> None:
        """SIGKILL Cylindria mid-load and start it again on the same data dir."""
        self.cylindria.kill()
        self.cylindria = CylindriaProcess(self.fakes[0].url, self.data_dir,
                                          extra=self.extra).start()
        self.load.target.url = self.cylindria.url
        self.counts["cylindria_kills"] += 1

    def lost_ok(self, job: dict) -> bool:
        """`lost` is true only of a job whose ComfyUI was killed after it was submitted."""
        submitted = epoch_seconds(job["submitted_at"])
        return any(kill >= submitted - 1.0 for kill in self.kills[job["gpu_id"]])


def live_prompts(fake) -> set[str] | None:
    """Prompt ids in a fake's queue (running or pending); None while it is down."""
    try:
        body = requests.get(fake.url + "/queue", timeout=CLIENT_TIMEOUT).json()
    except requests.ConnectionError:
        return None
    return {item[1] for item in body["queue_running"] + body["queue_pending"]}


def gone_but_unfinished(jobs: dict[str, dict], fakes) -> dict[str, str]:
    """Jobs Cylindria shows queued/running although their prompt is not in ComfyUI's queue:
    job id -> that prompt (a held job has none: it is in Cylindria's own queue).

    Read after /jobs, so a prompt that ended in between shows up here for a moment: the
    check is that each of these prompts is soon settled, not that there are none.
    """
    # Prompt ids are UUIDs: one set for every GPU's (and node's) queue.
    queued = set().union(*(live_prompts(fake) or set() for fake in fakes))
    return {job_id: job["prompt_id"] for job_id, job in jobs.items()
            if job["status"] in ("queued", "running") and job["prompt_id"] is not None
            and job["prompt_id"] not in queued}


def still_unfinished(url: str, gone: dict[str, str]) -> set[str]:
    """Those jobs still unfinished on the prompt that was gone (a job whose ComfyUI died
    and that went back to Cylindria's queue, or was sent again, is settled: its prompt
    changed)."""
    return {job_id for job_id, job in all_jobs(url, UNFINISHED).items()
            if gone.get(job_id) is not None and job["prompt_id"] == gone[job_id]}


def duplicates_within_a_life(faults: Faults) -> dict:
    """Jobs whose prompt one ComfyUI accepted twice before it was killed: GPU work done twice."""
    found = {}
    for gpu, fake in enumerate(faults.fakes):
        marks = faults.epoch_marks[gpu]
        lives: Counter = Counter()
        order = {p: n for n, p in enumerate(fake.prompts_received())}
        for job_id, prompt_ids in prompts_by_job(fake).items():
            for prompt_id in prompt_ids:
                life = sum(1 for mark in marks if order[prompt_id] >= mark)
                lives[(job_id, life)] += 1
        found.update({key: n for key, n in lives.items() if n > 1})
    return found


def run_rounds(faults: Faults, rounds: int, min_seconds: float) -> None:
    """Every kind of fault in turn, checking the invariants after each."""
    started, done = time.monotonic(), 0
    while done < rounds or time.monotonic() - started < min_seconds:
        for gpu in range(len(faults.fakes)):
            faults.kill_comfy(gpu)
            faults.check()
        faults.drop_websockets()
        faults.check()
        faults.kill_cylindria()
        faults.check()
        done += 1


def test_no_job_is_lost_or_misreported_through_kills_and_drops(fakes, tmp_path, soak,
                                                               database_flags):
    """Kills of each ComfyUI and of Cylindria, websocket drops, all under 50 clients' load."""
    data_dir = tmp_path / "data"
    # The short form gives each client a think time: the 2-core CI machine then has room to
    # inject faults and check after each within seconds; --soak runs at full pace.
    load = LoadRun(Target(""), faults=True, seed=9, pause=0.0 if soak else SHORT_PAUSE)
    faults = Faults(fakes, load, data_dir, database_flags)
    load.target.url = faults.cylindria.url
    load.start()
    try:
        time.sleep(1.0)  # some jobs in every state before the first fault
        run_rounds(faults, SOAK_ROUNDS if soak else SHORT_ROUNDS, SOAK_SECONDS if soak else 0.0)
        load.stop()
        jobs = wait_all_final(faults.cylindria.url, timeout=120 if soak else 60)
    finally:
        load.stop()
        faults.cylindria.stop()
    print(figures(load, jobs, faults=dict(faults.counts), check_seconds=faults.check_seconds,
                  jobs_missing=len(set(load.accepted) - set(jobs))))
    assert load.problems == []
    assert check_final(load, jobs, fakes, lost_ok=faults.lost_ok) == []
    assert [j for j, a in load.accepted.items() if a.created > 1] == [], "two 201s for one id"
    assert duplicates_within_a_life(faults) == {}
    assert_prompts_came_from_the_fakes(load, jobs, fakes)


def assert_prompts_came_from_the_fakes(load: LoadRun, jobs: dict[str, dict], fakes) -> None:
    """Every accepted job's prompt, and every prompt an answer named, is one that GPU's
    ComfyUI really accepted for that job (a job sent again has one per attempt). An invalid
    workflow accepted unchecked (GpuId=auto just after a restart, see LoadRun.accept) ends
    failed on the prompt that GPU's ComfyUI refused: one it was sent and did not queue."""
    received = [prompts_by_job(fake) for fake in fakes]
    refused = [posted_prompt_ids(fake) - set(fake.prompts_received()) for fake in fakes]

    def came_from_the_fake(job_id: str, gpu: int, prompt_id: str) -> bool:
        if load.accepted[job_id].kind == "invalid":
            return jobs[job_id]["status"] == "failed" and prompt_id in refused[gpu]
        return prompt_id in received[gpu].get(job_id, [])
    unknown = [job_id for job_id, job in jobs.items() if job_id in load.accepted
               and not came_from_the_fake(job_id, job["gpu_id"], job["prompt_id"])]
    named = [job_id for job_id, job in load.accepted.items() if job.prompt_id is not None
             and not came_from_the_fake(job_id, job.gpu_id, job.prompt_id)]
    assert (unknown, named) == ([], [])


def posted_prompt_ids(fake) -> set[str]:
    """Every prompt id POSTed to this fake's /prompt, queued or refused."""
    return {request.json.get("prompt_id") for request in fake.requests()
            if request.method == "POST" and request.path == "/prompt"
            and isinstance(request.json, dict)}


def test_a_websocket_comfy_silently_forgot_is_noticed(fakes, tmp_path):
    """ComfyUI keeps one socket per clientId and, when a socket closes, forgets that clientId
    (server.py pops it by id). After a reconnect that beats the old socket's clean-up (a
    busy ComfyUI, a half-open TCP link) Cylindria's new socket stays open but gets nothing.
    Here a second socket under Cylindria's clientId connects and leaves, which puts ComfyUI
    in that state at once. Cylindria must notice the silence, not leave every job to a poller
    that here runs only every 30 s.
    """
    with Service(make_config(fakes, tmp_path, poll_interval=30.0)) as service:
        gpu, api = service.context.gpus[0], Api(service.url)
        wait_for(lambda: gpu.websocket_connected, timeout=10)
        time.sleep(0.5)  # the start-up reconciliation is over: the next poll is 30 s away
        impostor = websocket.create_connection(gpu.ws_url, timeout=5, suppress_origin=True)
        impostor.recv()  # ComfyUI's greeting: the impostor now holds the clientId
        impostor.close()
        wait_for(lambda: len(fakes[0].ws_client_ids()) == 1, timeout=5)
        job = api.put("/startjob/after-silence", json=workflows.core("silence")).json()
        prompt_id = job["prompt_id"]
        wait_for(lambda: requests.get(f"{fakes[0].url}/history/{prompt_id}", timeout=5).json(),
                 timeout=10, message="ComfyUI to run the prompt")
        api.wait_status("after-silence", "completed", timeout=10)

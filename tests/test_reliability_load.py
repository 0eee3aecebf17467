"""Load: 50 concurrent clients mixing startjob / jobstatus / serverstatus against 2 fake GPUs.

The normal suite runs 5 s of it; `pytest --soak` runs 60 s. Cylindria runs as a real process
(its own interpreter, as in production), the clients and the fake GPUs in this one. Checked:
no 5xx, every accepted job reaches its true final status, and each accepted job reached its
GPU exactly once, also when clients retry the same job id (alone or several at once).

`LoadRun` is also the traffic of tests/test_reliability_faults.py, which injects faults under it.
"""
from __future__ import annotations

import itertools
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

import requests

from tests import workflows
from tests.helpers import API_KEY, wait_for
from tests.processes import CylindriaProcess

CLIENTS = 50
SHORT_SECONDS, SOAK_SECONDS = 5.0, 60.0
KEY = {"X-API-Key": API_KEY}
STATUSES = {"submitting", "queued", "running", "completed", "failed", "cancelled", "lost"}
FINAL = {"completed", "failed", "cancelled", "lost"}
TRUE_END = {"core": "completed", "slow": "completed", "fail": "failed",
            "invalid": "failed"}  # what the fake does (an invalid one: refused when sent)
KINDS, KIND_WEIGHTS = ("core", "slow", "fail", "invalid"), (65, 5, 20, 10)
RECONNECT_WAIT = 60.0  # seconds a client keeps retrying while Cylindria restarts
CLIENT_TIMEOUT = 30.0


def workflow_for(kind: str, job_id: str) -> dict:
    """A workflow whose SaveImage prefix is the job id, so the fake's log names the job."""
    if kind == "invalid":
        return workflows.invalid()  # the fake refuses it: 400 comfy_rejected, no job
    workflow = {"core": workflows.core, "fail": lambda: workflows.fail(f"planned: {job_id}"),
                "slow": lambda: workflows.slow(seconds=2.0, steps=4)}[kind]()
    workflow["3"]["inputs"]["filename_prefix"] = job_id
    return workflow


@dataclass
class Accepted:
    """A job Cylindria accepted (201, or 200 to a retry whose first answer was lost).

    A GpuId=auto job is answered before any GPU has it: its GPU and prompt are None until
    an answer names them."""

    kind: str
    gpu_id: int | None
    prompt_id: str | None
    created: int = 0  # how many 201 answers this id got: exactly one without faults


class Target:
    """Where Cylindria answers now: a restarted process listens on a new port."""

    def __init__(self, url: str):
        self.url = url


class LoadRun:
    """The clients' shared bookkeeping, and the client loop each thread runs."""

    kind_weights = KIND_WEIGHTS  # how often a fresh job is of each of KINDS

    def __init__(self, target: Target, faults: bool = False, seed: int = 8, pause: float = 0.0):
        self.target = target
        self.faults = faults  # with faults, 503 comfy_unreachable and `lost` are legitimate
        self.seed = seed
        self.pause = pause  # seconds each client waits between two operations
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.counts: Counter = Counter()
        self.accepted: dict[str, Accepted] = {}
        self.rejected: set[str] = set()
        self.known: list[tuple[str, str]] = []  # (job id, kind) for jobstatus to ask about
        self.problems: list[str] = []
        self._ids = itertools.count()
        self._shared = itertools.count()
        self._threads: list[threading.Thread] = []

    # -- running ----------------------------------------------------------------------
    def start(self, clients: int = CLIENTS) -> "LoadRun":
        """Start the client threads."""
        for n in range(clients):
            thread = threading.Thread(target=self.client, args=(n,), name=f"load-{n}", daemon=True)
            self._threads.append(thread)
            thread.start()
        return self

    def stop(self) -> None:
        """Tell the clients to finish their current call, and wait for them."""
        self.stop_event.set()
        for thread in self._threads:
            thread.join(RECONNECT_WAIT + CLIENT_TIMEOUT)
            if thread.is_alive():
                self.problem(f"client {thread.name} did not stop")

    def client(self, index: int) -> None:
        """One client: a keep-alive session doing one random operation after another."""
        rng = random.Random(self.seed * 1000 + index)
        session = requests.Session()
        session.trust_env = False
        session.headers.update(KEY)
        while not self.stop_event.wait(self.pause):
            try:
                self.step(rng, session)
            except Exception as exc:  # a crash of the test's own client is a finding too
                self.problem(f"client {index}: {type(exc).__name__}: {exc}")
        session.close()

    def step(self, rng: random.Random, session: requests.Session) -> None:
        """One operation, in the proportions a busy operator's scripts would make."""
        roll = rng.random()
        if roll < 0.28:
            self.start_new(rng, session)
        elif roll < 0.33:
            self.start_shared(session)
        elif roll < 0.73:
            self.check_status(rng, session)
        elif roll < 0.95:
            self.server_status(rng, session)
        else:
            self.list_jobs(session)

    # -- operations -------------------------------------------------------------------
    def start_new(self, rng: random.Random, session: requests.Session) -> None:
        """A fresh job; now and then the client retries it at once as after a timeout."""
        job_id = f"c{next(self._ids)}"
        kind = rng.choices(KINDS, self.kind_weights)[0]
        gpu = self.pick_gpu(rng)
        if self.submit(session, job_id, kind, gpu) and rng.random() < 0.3:
            self.submit(session, job_id, kind, gpu, retry=True)

    def pick_gpu(self, rng: random.Random) -> str:
        """The GpuId of a fresh job: one of the two GPUs, or Cylindria's own queue."""
        return rng.choice(("0", "1", "auto"))

    def start_shared(self, session: requests.Session) -> None:
        """Three consecutive takers share each id: concurrent retries of one job."""
        number = next(self._shared) // 3
        self.submit(session, f"dup{number}", "core", str(number % 2))

    def submit(self, session: requests.Session, job_id: str, kind: str, gpu: str,
               retry: bool = False) -> bool:
        """PUT /startjob and record what it says; True when the job was accepted."""
        response = self.call(session, "PUT", f"/startjob/{job_id}", params={"GpuId": gpu},
                             json=workflow_for(kind, job_id))
        return response is not None and self.judge(job_id, kind, gpu, retry, response)

    def judge(self, job_id: str, kind: str, gpu: str, retry: bool,
              response: requests.Response) -> bool:
        """Record what a startjob answered; True when the job was accepted."""
        body = response.json()
        if response.status_code in (200, 201):
            if retry and response.status_code != 200:
                self.problem(f"retry of {job_id} answered {response.status_code}, not 200")
            self.accept(job_id, kind, body, response.status_code)
            return True
        # Refused by ComfyUI when sent now (pinned), or before it is held (GpuId=auto: checked
        # against the node classes the GPUs have installed).
        refused = response.status_code == 400 and \
            body.get("code") == ("invalid_workflow" if gpu == "auto" else "comfy_rejected")
        if refused and kind == "invalid":
            with self.lock:
                self.rejected.add(job_id)
                self.known.append((job_id, kind))
        elif response.status_code == 429 and body.get("code") == "queue_full" and gpu == "auto":
            pass  # Cylindria's queue is full (pinned jobs keep the GPUs busy): no job, retry later
        elif response.status_code < 500:  # a 5xx was judged by check_server_error already
            self.problem(f"startjob {job_id} ({kind}, GpuId={gpu}): {response.status_code} {body}")
        return False

    def accept(self, job_id: str, kind: str, body: dict, status_code: int) -> None:
        """Record an accepted job; a second answer must name the same prompt."""
        with self.lock:
            job = self.accepted.get(job_id)
            if job is None:
                job = self.accepted[job_id] = Accepted(kind, body["gpu_id"], body["prompt_id"])
                self.known.append((job_id, kind))
            elif job.prompt_id is not None and body["prompt_id"] is not None and \
                    (job.prompt_id, job.gpu_id) != (body["prompt_id"], body["gpu_id"]) and \
                    not self.faults:  # with faults, a job whose ComfyUI died is sent again
                self.problems.append(f"{job_id} answered with another prompt: {body}")
            if body["prompt_id"] is not None:
                job.prompt_id, job.gpu_id = body["prompt_id"], body["gpu_id"]
            job.created += status_code == 201
        # With faults, the contract lets one be accepted unchecked: pinned to a GPU whose
        # ComfyUI is down (held until it is back), or GpuId=auto while no GPU's node classes
        # are known (just after a restart). check_final then requires that it ends failed.
        if kind == "invalid" and not self.faults:
            self.problem(f"{job_id}: a workflow ComfyUI refuses was accepted")
        self.check_truth(job_id, kind, body.get("status"))

    def check_status(self, rng: random.Random, session: requests.Session) -> None:
        """GET /jobstatus of a known job (200, and never a false status) or an unknown one (404)."""
        with self.lock:
            pick = rng.choice(self.known) if self.known and rng.random() < 0.9 else None
        job_id, kind = pick or (f"never-{rng.randrange(10 ** 9)}", None)
        response = self.call(session, "GET", f"/jobstatus/{job_id}")
        if response is None:
            return
        with self.lock:
            expected = 200 if job_id in self.accepted else 404
        if expected == 404 and response.status_code >= 500 and self.tolerated(response):
            # An id this node does not hold may be another node's: while the database is
            # down that cannot be said (503 database_unavailable, judged by check_server_error).
            # A job it holds is answered from memory all along.
            return
        if response.status_code != expected:
            self.problem(f"jobstatus {job_id}: {response.status_code}, expected {expected}")
        elif expected == 200:
            self.check_truth(job_id, kind, response.json()["status"])

    def server_status(self, rng: random.Random, session: requests.Session) -> None:
        """GET /serverstatus for one GPU or all: always 200, reachable or not."""
        response = self.call(session, "GET", "/serverstatus",
                             params={"GpuId": rng.choice(("0", "1", "all"))})
        if response is not None and response.status_code != 200:
            self.problem(f"serverstatus: {response.status_code} {response.text[:200]}")

    def list_jobs(self, session: requests.Session) -> None:
        """GET /jobs, one page."""
        response = self.call(session, "GET", "/jobs", params={"limit": 20})
        # On PostgreSQL the list is the database's (every node's jobs): while it is down, a
        # 503 the run tolerates (judged by check_server_error).
        if response is not None and response.status_code != 200 and \
                not (response.status_code >= 500 and self.tolerated(response)):
            self.problem(f"jobs: {response.status_code} {response.text[:200]}")

    # -- plumbing ---------------------------------------------------------------------
    def call(self, session: requests.Session, method: str, path: str,
             **kwargs) -> requests.Response | None:
        """One request; while Cylindria is down (killed: fault runs only), it is sent again."""
        deadline = time.monotonic() + RECONNECT_WAIT
        endpoint = path.split("/")[1]
        while True:
            try:
                response = session.request(method, self.target.url + path,
                                           timeout=CLIENT_TIMEOUT, **kwargs)
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                self.count(f"{endpoint} connection error")
                if not self.faults or time.monotonic() > deadline:
                    self.problem(f"{method} {path}: connection failed: {exc}")
                    return None
                # Cylindria is being restarted: send it again when it is back. Gently: 50
                # clients spinning fast would starve the fake GPUs sharing this interpreter.
                time.sleep(0.3)
                continue
            except requests.Timeout:
                self.problem(f"{method} {path}: no answer in {CLIENT_TIMEOUT}s")
                return None
            self.count(f"{endpoint} {response.status_code}")
            self.check_server_error(method, path, response)
            return response

    def check_server_error(self, method: str, path: str, response: requests.Response) -> None:
        """No 5xx, but those the run's faults make legitimate (`tolerated`)."""
        if response.status_code >= 500 and not self.tolerated(response):
            self.problem(f"{method} {path}: {response.status_code} {response.text[:300]}")

    def tolerated(self, response: requests.Response) -> bool:
        """A 5xx this run allows: 503 comfy_unreachable while a ComfyUI is down (fault runs)."""
        return self.faults and response.status_code == 503 and \
            _code(response) == "comfy_unreachable"

    def check_truth(self, job_id: str, kind: str | None, status: str | None) -> None:
        """A status Cylindria reports is never false: no failed job completed, nor the reverse."""
        true_end = TRUE_END.get(kind)
        if status not in STATUSES:
            self.problem(f"{job_id}: unknown status {status!r}")
        elif true_end and status in FINAL and status != true_end and \
                not (self.faults and status == "lost"):
            self.problem(f"{job_id} ({kind}) reported {status}, but the fake made it {true_end}")

    def count(self, key: str) -> None:
        """Count one answer (or refused connection) of this kind."""
        with self.lock:
            self.counts[key] += 1

    def problem(self, text: str) -> None:
        """Note something that must not happen; the test fails on any."""
        with self.lock:
            self.problems.append(text)

    @property
    def requests_sent(self) -> int:
        """Every HTTP request the clients sent (refused connections included)."""
        with self.lock:
            return sum(self.counts.values())


def _code(response: requests.Response) -> str | None:
    """The contract's error code of an answer, if it has one."""
    try:
        return response.json().get("code")
    except ValueError:
        return None


# -- what Cylindria and the fakes say afterwards ----------------------------------------
def all_jobs(url: str, status: str | None = None) -> dict[str, dict]:
    """Every job Cylindria lists (of these statuses), by id: all pages of /jobs."""
    jobs, before = {}, None
    while True:
        params = {"limit": 1000, **({"before": before} if before else {}),
                  **({"status": status} if status else {})}
        response = requests.get(url + "/jobs", params=params, headers=KEY, timeout=CLIENT_TIMEOUT)
        assert response.status_code == 200, response.text
        body = response.json()
        jobs.update((job["job_id"], job) for job in body["jobs"])
        before = body["next_before"]
        if not before:
            return jobs


def wait_all_final(url: str, timeout: float) -> dict[str, dict]:
    """Wait until no job of Cylindria's is unfinished; returns them all."""
    def settled():
        """All jobs, once every one has ended."""
        jobs = all_jobs(url)
        return jobs if all(job["status"] in FINAL for job in jobs.values()) else None
    return wait_for(settled, timeout=timeout, interval=0.5, message="every job to end")


def prompts_by_job(fake) -> dict[str, list[str]]:
    """job id -> the prompt ids the fake accepted for it, in order (via the SaveImage prefix)."""
    prefix_of = {}
    for request in fake.requests():
        body = request.json
        if request.method == "POST" and request.path == "/prompt" and isinstance(body, dict):
            prefix = body.get("prompt", {}).get("3", {}).get("inputs", {}).get("filename_prefix")
            prefix_of[body.get("prompt_id")] = prefix
    found: dict[str, list[str]] = {}
    for prompt_id in fake.prompts_received():
        found.setdefault(prefix_of.get(prompt_id, "?"), []).append(prompt_id)
    return found


def fake_outcomes(fake) -> dict[str, str]:
    """prompt id -> the fake's own verdict (success/error) for every prompt in its history."""
    history = requests.get(fake.url + "/history", timeout=CLIENT_TIMEOUT).json()
    return {prompt_id: entry["status"]["status_str"] for prompt_id, entry in history.items()}


def epoch_seconds(iso: str | None) -> float | None:
    """An ISO-8601 UTC time of the API as epoch seconds."""
    if iso is None:
        return None
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def check_final(load: LoadRun, jobs: dict[str, dict], fakes, lost_ok=lambda job: False) -> list:
    """Problems with the end state: missing, wrong or unfinished jobs, and refused ids left."""
    problems = []
    # Prompt ids are UUIDs, unique across GPUs (and nodes): one table for all of them.
    outcomes = {prompt: verdict for fake in fakes for prompt, verdict in fake_outcomes(fake).items()}
    for job_id, accepted in load.accepted.items():
        job = jobs.get(job_id)
        if job is None:
            problems.append(f"{job_id}: accepted, missing from /jobs")
            continue
        verdict = outcomes.get(job["prompt_id"])
        truth = {"success": "completed", "error": "failed"}.get(verdict, TRUE_END[accepted.kind])
        if job["status"] != truth and not (job["status"] == "lost" and lost_ok(job)):
            problems.append(f"{job_id} ({accepted.kind}): {job['status']}, truly {truth}")
        if job["status"] == "completed" and not job["outputs"]:
            problems.append(f"{job_id}: completed without outputs")
    problems += [f"{job_id}: refused, yet listed" for job_id in load.rejected if job_id in jobs]
    return problems


def figures(load: LoadRun, jobs: dict[str, dict], **extra) -> str:
    """One line of figures for docs/reliability.md."""
    statuses = Counter(job["status"] for job in jobs.values())
    line = {"requests": load.requests_sent, "jobs_accepted": len(load.accepted),
            "jobs_refused_by_comfy": len(load.rejected), "final_statuses": dict(statuses),
            "answers": dict(sorted(load.counts.items())), **extra}
    return "RELIABILITY-FIGURES " + json.dumps(line)


# -- the test ---------------------------------------------------------------------------
def test_fifty_clients_lose_nothing_and_run_each_job_once(fakes, tmp_path, soak, database_flags):
    """50 clients for 5 s (60 s with --soak): no 5xx, true ends, each job on its GPU once."""
    cylindria = CylindriaProcess(fakes[0].url, tmp_path / "data", extra=database_flags).start()
    load = LoadRun(Target(cylindria.url)).start()
    try:
        time.sleep(SOAK_SECONDS if soak else SHORT_SECONDS)
        load.stop()
        jobs = wait_all_final(cylindria.url, timeout=120 if soak else 60)
    finally:
        load.stop()
        cylindria.stop()
    print(figures(load, jobs, seconds=SOAK_SECONDS if soak else SHORT_SECONDS))
    assert load.problems == []
    assert check_final(load, jobs, fakes) == []
    assert set(jobs) == set(load.accepted), "Cylindria lists exactly the accepted jobs"
    assert [j for j, a in load.accepted.items() if a.created != 1] == [], "one 201 per job id"
    assert_each_job_ran_once(load, jobs, fakes)


def assert_each_job_ran_once(load: LoadRun, jobs: dict[str, dict], fakes) -> None:
    """The fakes accepted exactly one prompt per accepted job (the one Cylindria reports, and
    the one its answers named), and no other."""
    received = {}
    for gpu, fake in enumerate(fakes):
        for job_id, prompt_ids in prompts_by_job(fake).items():
            received.setdefault(job_id, []).extend((gpu, p) for p in prompt_ids)
    expected = {job_id: [(jobs[job_id]["gpu_id"], jobs[job_id]["prompt_id"])]
                for job_id in load.accepted}
    assert {j: p for j, p in received.items() if len(p) != 1} == {}, "a job ran twice"
    assert received == expected
    named = {job_id: (a.gpu_id, a.prompt_id) for job_id, a in load.accepted.items()
             if a.prompt_id is not None}
    assert {j: p for j, p in named.items() if [p] != expected[j]} == {}

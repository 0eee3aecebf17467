"""The fault soak of tests/test_reliability_faults.py, on a fleet: three Cylindria nodes (real
processes, two fake GPUs each) on one PostgreSQL database, under clients that send every
request to the next node in turn and retry the same job id on another node after a refused
connection, a timeout or a 503 with Retry-After. Fresh jobs are GpuId=auto or pinned to one
node's GPU (GpuId=n to that node, GpuId=<node>:<n> to the others), each with a webhook to a
loopback receiver.

Faults under the load: ComfyUIs killed and restarted, websockets dropped, nodes SIGKILLed and
started again (at once, within their lease; after it ran out; after the jobs pinned to them
waited --requeue-wait too), nodes SIGSTOPped (within their lease, and past it), and (--soak)
two nodes gone at once while the third's ComfyUI dies. A node gone past its lease is struck
busy (jobs queued in its ComfyUIs). Throughout, every node answers for every acknowledged job
(a client's read of one is never a 404). After each fault: no job stays unfinished once its
prompt is gone from ComfyUI. At the end:
every acknowledged job reached its true final status (`lost` only where a fault of a ComfyUI
or node it used explains it), every node lists the same, each job's final webhook event came
under one event id (at-least-once delivery may repeat that id, never send a second event),
and no answer was a 5xx other than 503 with Retry-After (as the clients saw them, and as
every node logged its answers, those to a client that had given up waiting included).

The normal suite runs a short form (a few faults, one of a node); `pytest --soak` runs rounds
of every fault on every node for SOAK_SECONDS at least.
"""
from __future__ import annotations

import itertools
import json
import random
import re
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import cached_property

import requests

from tests.helpers import Api, wait_for
from tests.processes import CylindriaProcess
from tests.test_reliability_database import DEAD_THREAD_SIGNS, threads_alive
from tests.test_reliability_faults import UNFINISHED, ComfyFaults, duplicates_within_a_life
from tests.test_reliability_load import (FINAL, RECONNECT_WAIT, TRUE_END, LoadRun, Target, _code,
                                         all_jobs, check_final, epoch_seconds, figures,
                                         prompts_by_job, workflow_for)
from tests.webhook_receiver import Receiver

NODES, GPUS = ("a", "b", "c"), 2
LEASE = 8.0  # seconds: long enough for a SIGKILLed node to be started again within it
RENEW_EVERY = 2.0  # seconds between a node's renewals: its lease ends this much sooner at most
REQUEUE_WAIT = 8.0  # seconds a job pinned to a node whose lease ended waits for it
FLAGS = ("--node-lease", f"{LEASE:g}s", "--requeue-wait", f"{REQUEUE_WAIT:g}",
         "--webhook-allow-private")
AUTO_SHARE = 0.6  # of fresh jobs sent GpuId=auto; the others pinned to one node's GPU
# Slow jobs more often and longer than on one host (1 s; the fakes' clock runs at 5 %): each
# node has jobs queued and running when a fault strikes it, not only ones just ended.
KIND_WEIGHTS, SLOW_SECONDS = (60, 10, 20, 10), 20.0
NODE_TIMEOUT = 5.0  # seconds a client waits for one node before it asks the next
RETRY_PAUSE = 0.2  # seconds between a client's tries on successive nodes
CLIENTS = {False: 10, True: 32}  # client threads (short form, --soak)
PAUSE = 0.2  # seconds each client waits between two operations
SOAK_ROUNDS, SOAK_SECONDS = 3, 180.0
GAP = {False: 2.0, True: 3.0}  # seconds of load between two faults: new jobs in every state
BUSY = 2.0  # seconds a node's ComfyUIs hold their prompts before it is gone past its lease
WITHIN_LEASE = 3.0  # seconds a node stays SIGSTOPped: its lease holds throughout
PAST_LEASE = LEASE + 2.0  # seconds a node stays down or SIGSTOPped: its lease runs out, and
# the jobs pinned to it still wait (REQUEUE_WAIT - RENEW_EVERY - 2 s longer at the least)
PAST_REQUEUE = LEASE + REQUEUE_WAIT + 3.0  # ... and the jobs pinned to it wait no longer
# How long a node must be gone (as the test measures it: from the fault to its first answer
# after it) for its lease to have ended, and for its pinned jobs' wait too, with a second to
# spare in the lenient direction: a shorter outage explains neither.
LEASE_ENDS_AFTER = LEASE - RENEW_EVERY - 1.0
PINNED_LOST_AFTER = LEASE - RENEW_EVERY + REQUEUE_WAIT - 1.0
FINAL_WAIT = {False: 60, True: 180}  # seconds for every job, then every webhook, to end
FINAL_EVENTS = {f"job.{status}" for status in FINAL}
ACCESS = re.compile(r"cylindria\.access: \S+ \S+ (?P<status>\d{3}) ")  # a node's access log line
MAX_ATTEMPTS = 3  # the nodes' --max-attempts (its default)


def gpu_param(gpu: str, node: str) -> str:
    """The GpuId a job meant for `gpu` ("auto" or "<node>:<n>") is sent with to `node`: a
    node's own GPU is plain n, as the seed's clients say it."""
    owner, _, index = gpu.rpartition(":")
    return index if owner == node else gpu


def fleet_workflow(kind: str, job_id: str) -> dict:
    """The load's workflow of this kind, a slow one lasting SLOW_SECONDS of the fake's clock."""
    workflow = workflow_for(kind, job_id)
    if kind == "slow":
        workflow["2"]["inputs"].update(seconds=SLOW_SECONDS, steps=10)
    return workflow


class FleetLoad(LoadRun):
    """LoadRun's clients and checks, spread over the fleet's nodes."""

    kind_weights = KIND_WEIGHTS

    def __init__(self, nodes: dict[str, CylindriaProcess], webhook_url: str, pause: float):
        super().__init__(Target(""), faults=True, seed=27, pause=pause)
        self.nodes, self.webhook_url = nodes, webhook_url
        self.down: set[str] = set()  # nodes a fault holds down now (killed or paused)
        self.sent: dict[str, tuple[str, str]] = {}  # job id -> (kind, "auto" or "<node>:<n>")
        self.finals: dict[str, str] = {}  # job id -> the first final status a node reported
        self.untolerated: list[str] = []  # 5xx answers but 503 with Retry-After
        self._turn = itertools.count()

    def pick_gpu(self, rng: random.Random) -> str:
        """GpuId=auto, or one GPU of one node."""
        if rng.random() < AUTO_SHARE:
            return "auto"
        return f"{rng.choice(sorted(self.nodes))}:{rng.randrange(GPUS)}"

    def start_shared(self, session: requests.Session) -> None:
        """Three consecutive takers share each id, each through the next node: one job."""
        number = next(self._shared) // 3
        gpu = "auto" if number % 2 else f"{NODES[number % len(NODES)]}:{number % GPUS}"
        self.submit(session, f"dup{number}", "core", gpu)

    def submit(self, session: requests.Session, job_id: str, kind: str, gpu: str,
               retry: bool = False) -> bool:
        """PUT /startjob with the job's webhook, on whichever node answers."""
        with self.lock:
            self.sent.setdefault(job_id, (kind, gpu))
        params = {"webhook": f"{self.webhook_url}/{job_id}"}
        response = self.send(session, "PUT", f"/startjob/{job_id}",
                             lambda node: {**params, "GpuId": gpu_param(gpu, node)},
                             json=fleet_workflow(kind, job_id))
        return response is not None and self.judge(job_id, kind, gpu, retry, response)

    def call(self, session: requests.Session, method: str, path: str, params=None,
             **kwargs) -> requests.Response | None:
        """Any request but a submission: the same on every node."""
        return self.send(session, method, path, lambda node: params, **kwargs)

    def send(self, session: requests.Session, method: str, path: str, params_for,
             **kwargs) -> requests.Response | None:
        """One request, to the next node in turn; on a refused connection, a timeout or a 503
        with Retry-After, to the next, until RECONNECT_WAIT has passed."""
        deadline, endpoint = time.monotonic() + RECONNECT_WAIT, path.split("/")[1]
        while True:
            node = NODES[next(self._turn) % len(NODES)]
            try:
                response = session.request(method, self.nodes[node].url + path,
                                           params=params_for(node), timeout=NODE_TIMEOUT, **kwargs)
            except (requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError) as exc:
                state = "down" if node in self.down else "up"
                self.count(f"{endpoint} {type(exc).__name__} (node {state})")
                response = None
            else:
                code = f" {_code(response)}" if response.status_code >= 500 else ""
                self.count(f"{endpoint} {response.status_code}{code}")
                self.check_server_error(method, path, response)
                if not (response.status_code == 503 and self.tolerated(response)):
                    return response
            if time.monotonic() > deadline:
                if response is None:
                    self.problem(f"{method} {path}: no node answered in {RECONNECT_WAIT}s")
                return response
            time.sleep(RETRY_PAUSE)

    def tolerated(self, response: requests.Response) -> bool:
        """A 503 with a Retry-After of at least a second (a ComfyUI, a node, the database...)."""
        retry_after = response.headers.get("Retry-After", "")
        return response.status_code == 503 and retry_after.isdigit() and int(retry_after) > 0

    def check_server_error(self, method: str, path: str, response: requests.Response) -> None:
        if response.status_code >= 500 and not self.tolerated(response):
            with self.lock:
                self.untolerated.append(f"{method} {path}: {response.status_code}")
        super().check_server_error(method, path, response)

    def check_truth(self, job_id: str, kind: str | None, status: str | None) -> None:
        """Also: once any node has reported a job's final status, no node reports another."""
        super().check_truth(job_id, kind, status)
        if status in FINAL:
            with self.lock:
                first = self.finals.setdefault(job_id, status)
            if first != status:
                self.problem(f"{job_id}: reported {first}, then {status}")


class FleetFaults(ComfyFaults):
    """ComfyFaults on every node's GPUs, and the nodes themselves killed or paused."""

    # A page of 1000 jobs of /jobs takes seconds under this load on a shared 2-core machine:
    # every job is listed once, at the end (and a client's status read of an accepted job
    # that vanished is a 404, a problem at once).
    list_every_check = False

    def __init__(self, nodes: dict[str, CylindriaProcess], load: FleetLoad):
        self.nodes = nodes
        self.index = {(name, gpu): n for n, (name, gpu) in enumerate(
            (name, gpu) for name, node in nodes.items() for gpu in range(len(node.fakes)))}
        super().__init__([fake for node in nodes.values() for fake in node.fakes], load)
        self.outages: dict[str, list[tuple[float, float]]] = {name: [] for name in nodes}
        # ... each (when it ended, seconds it lasted)
        self.gone: list[str] = []  # each outage: node, kind, seconds (for the figures)

    @property
    def url(self) -> str:
        """A node that is up."""
        return next(node.url for name, node in self.nodes.items() if name not in self.load.down)

    def fakes_of(self, name: str) -> list[int]:
        """The indexes in self.fakes of one node's GPUs."""
        return [n for (node, _), n in self.index.items() if node == name]

    def kill_comfy_of(self, name: str, gpu: int) -> None:
        """Kill one node's ComfyUI and start it again (its queue and history gone)."""
        self.kill_comfy(self.index[(name, gpu)])

    def kill_node(self, name: str, down_seconds: float = 0.0, busy: float = 0.0) -> None:
        """SIGKILL a node mid-load (`busy`: see `held`); start it again under its name after
        `down_seconds`."""
        node = self.nodes[name]
        self.gone_for(name, "kill", node.kill, down_seconds, node.start, busy)

    def pause_node(self, name: str, seconds: float, busy: float = 0.0) -> None:
        """SIGSTOP a node mid-load (its sockets and database sessions stay open; `busy`: see
        `held`), SIGCONT it after `seconds`."""
        node = self.nodes[name]

        def resume() -> None:
            node.resume()
            wait_for(lambda: answers(name, node), message=f"{name} to answer again")
        self.gone_for(name, "pause", node.pause, seconds, resume, busy)

    def gone_for(self, name: str, kind: str, leave, seconds: float, come_back,
                 busy: float) -> None:
        """A node gone (`leave`) for `seconds`, then back (`come_back`), the outage noted."""
        with self.held(name, busy):
            began = time.time()
            self.load.down.add(name)
            leave()
            time.sleep(seconds)
            come_back()
            self.back(name, began, kind)

    @contextmanager
    def held(self, name: str, seconds: float):
        """With `seconds`, the node's ComfyUIs start nothing new from `seconds` before the
        fault until it is over (as GPUs busy with long work): it strikes a node with jobs
        queued, pinned and GpuId=auto alike, not one that happens to be idle."""
        fakes = [self.fakes[n] for n in self.fakes_of(name)] if seconds else []
        for fake in fakes:
            fake.hold = True
        try:
            time.sleep(seconds)
            yield
        finally:
            for fake in fakes:
                fake.hold = False

    def back(self, name: str, began: float, kind: str) -> None:
        """A node is up again: note how long it was gone, and whether past its lease."""
        ended = time.time()
        self.load.down.discard(name)
        past = ended - began > LEASE_ENDS_AFTER
        self.outages[name].append((ended, ended - began))
        self.counts[f"node_{kind}s_{'past' if past else 'within'}_lease"] += 1
        self.gone.append(f"{name} {kind} {ended - began:.1f}s")
        if past:  # its jobs may have run elsewhere meanwhile, and on here before it learnt so
            for n in self.fakes_of(name):
                self.epoch_marks[n].append(len(self.fakes[n].prompts_received()))

    def at_once(self, *faults) -> None:
        """Several faults at the same time, each on its own thread; returns once all are over
        (raising what any of them raised)."""
        with ThreadPoolExecutor(len(faults)) as pool:
            list(pool.map(lambda fault: fault(), faults))

    @cached_property
    def received(self) -> dict[str, list[tuple[int, str]]]:
        """job id -> (fake index, prompt id) of every prompt a fake accepted for it (read once,
        after the load)."""
        found: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for n, fake in enumerate(self.fakes):
            for job_id, prompt_ids in prompts_by_job(fake).items():
                found[job_id] += [(n, prompt_id) for prompt_id in prompt_ids]
        return found

    def lost_ok(self, job: dict) -> bool:
        """`lost` only for a job sent MAX_ATTEMPTS times, each time lost by a fault since its
        submission (a kill of a ComfyUI that had it, its node gone past its lease), or for
        one pinned to a node gone past its lease and --requeue-wait since."""
        since = epoch_seconds(job["submitted_at"]) - 1.0
        used = {n for n, _ in self.received.get(job["job_id"], [])}
        nodes = {node for (node, _), n in self.index.items() if n in used}
        gpu = self.load.sent.get(job["job_id"], ("", "auto"))[1]
        pinned = None if gpu == "auto" else gpu.partition(":")[0]
        if pinned is not None and self.gone_since(pinned, since, PINNED_LOST_AFTER):
            return True
        return job["attempts"] >= MAX_ATTEMPTS and (
            any(kill >= since for n in used for kill in self.kills[n])
            or any(self.gone_since(node, since, LEASE_ENDS_AFTER) for node in nodes))

    def gone_since(self, node: str, since: float, longer_than: float) -> bool:
        """Whether the node was gone for longer than that, in an outage that ended after
        `since`."""
        return any(ended >= since and seconds > longer_than
                   for ended, seconds in self.outages[node])

    def ran_twice(self) -> dict[str, list]:
        """Jobs with two prompts in lives of their ComfyUIs that no fault ended: GPU work done
        twice that no kill of a ComfyUI, nor a node gone past its lease, explains."""
        undisturbed: dict[str, list] = {}
        for n, fake in enumerate(self.fakes):
            order = {prompt_id: k for k, prompt_id in enumerate(fake.prompts_received())}
            for job_id, prompt_ids in prompts_by_job(fake).items():
                undisturbed.setdefault(job_id, []).extend(
                    (n, p) for p in prompt_ids
                    if not any(order[p] < mark for mark in self.epoch_marks[n]))
        return {job_id: runs for job_id, runs in undisturbed.items() if len(runs) > 1}


def answers(name: str, node: CylindriaProcess) -> bool:
    """Whether the node answers /health; an AssertionError naming how its process ended (the
    signal, as -n) and its last log lines if it is gone."""
    if node.proc.poll() is not None:
        tail = "\n".join(node.log().splitlines()[-5:])
        raise AssertionError(f"node {name} ended with {node.proc.returncode}; its log ends:\n{tail}")
    try:
        return Api(node.url).get("/health", timeout=5).status_code == 200
    except requests.ConnectionError:
        return False


def run_faults(faults: FleetFaults, soak: bool) -> None:
    """The short form: a ComfyUI killed, the websockets dropped, a node killed and started
    again once its lease ran out; --soak: rounds of every fault, on each node in turn, for
    SOAK_SECONDS at least."""
    if not soak:
        for fault in (lambda: faults.kill_comfy_of("b", 1), faults.drop_websockets,
                      lambda: faults.kill_node("c", PAST_LEASE, busy=BUSY)):
            time.sleep(GAP[soak])
            fault()
            faults.check()
        return
    rng, started, done = random.Random(27), time.monotonic(), 0
    while done < SOAK_ROUNDS or time.monotonic() - started < SOAK_SECONDS:
        name, other, third = (NODES[(done + k) % len(NODES)] for k in range(3))
        for fault in (lambda: faults.kill_comfy_of(name, rng.randrange(GPUS)),
                      lambda: faults.kill_comfy_of(other, rng.randrange(GPUS)),
                      faults.drop_websockets,
                      lambda: faults.kill_node(name),
                      lambda: faults.pause_node(other, WITHIN_LEASE),
                      lambda: faults.kill_node(name, PAST_LEASE, busy=BUSY),
                      lambda: faults.pause_node(other, PAST_LEASE, busy=BUSY),
                      lambda: faults.kill_node(third, PAST_REQUEUE, busy=BUSY),
                      # Two nodes gone at once: the third takes both over, while its own
                      # ComfyUI dies under it too.
                      lambda: faults.at_once(lambda: faults.kill_node(name, PAST_LEASE, BUSY),
                                             lambda: faults.pause_node(other, PAST_LEASE, BUSY),
                                             lambda: faults.kill_comfy_of(third, 0))):
            time.sleep(GAP[soak])
            fault()
            faults.check()
        done += 1


def final_events(receiver: Receiver) -> dict[str, dict[str, str]]:
    """job id -> {webhook-id: event type} of the final events the receiver got for it."""
    found: dict[str, dict[str, str]] = defaultdict(dict)
    for event in list(receiver.received):
        body = json.loads(event.body)
        if body["type"] in FINAL_EVENTS:
            found[event.path.lstrip("/")][event.headers["webhook-id"]] = body["type"]
    return found


def wait_final_events(receiver: Receiver, job_ids: set[str], timeout: float) -> list[str]:
    """Wait until each of these jobs' final event arrived; the jobs still without one."""
    deadline = time.monotonic() + timeout
    while True:
        missing = sorted(job_ids - set(final_events(receiver)))
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(0.5)


def reported_twice(events: dict[str, dict[str, str]], jobs: dict[str, dict]) -> dict:
    """Jobs whose final event came under more than one id, or is not their final status."""
    def final_event(job_id: str) -> set[str]:
        return {f"job.{jobs[job_id]['status']}"} if job_id in jobs else set()
    return {job_id: kinds for job_id, kinds in events.items()
            if len(kinds) != 1 or set(kinds.values()) != final_event(job_id)}


def unacknowledged(load: FleetLoad, jobs: dict[str, dict], lost_ok) -> dict[str, str]:
    """Jobs that exist though no client was told so (each try met a refused connection, a
    timeout or a 503): each must still reach its true end. job id -> its status if it did not."""
    left = {job_id: sent for job_id, sent in load.sent.items()
            if job_id in jobs and job_id not in load.accepted}
    return {job_id: jobs[job_id]["status"] for job_id, (kind, _) in left.items()
            if jobs[job_id]["status"] != TRUE_END[kind]
            and not (jobs[job_id]["status"] == "lost" and lost_ok(jobs[job_id]))}


def served_badly(nodes: dict[str, CylindriaProcess]) -> list[str]:
    """Every 5xx but 503 a node answered (its access log: also those whose client had given up
    waiting, which the clients cannot count), and every error it logged with a traceback."""
    found = []
    for name, node in nodes.items():
        for line in node.log().splitlines():
            answer = ACCESS.search(line)
            if answer and answer["status"] >= "500" and answer["status"] != "503" or \
                    any(sign in line for sign in DEAD_THREAD_SIGNS):
                found.append(f"[{name}] {line}")
    return found


def all_live(node: CylindriaProcess) -> bool:
    """Whether this node's /fleet shows every node of the test live."""
    listed = Api(node.url).get("/fleet").json()["nodes"]
    return {entry["node"]: entry["live"] for entry in listed} == dict.fromkeys(NODES, True)


def evidence(nodes: dict[str, CylindriaProcess], found, lines: int = 15) -> str:
    """The findings (job ids, or lines starting with one), then what each node logged about
    the first few jobs: the lines naming each, in order."""
    findings = sorted(found)
    text = [f"{len(findings)} found: {findings[:20]}"]
    for job_id in {finding.split(" ")[0].rstrip(":") for finding in findings[:5]}:
        named = re.compile(rf"(?<![\w.-]){re.escape(job_id)}(?![\w.-])")
        for name, node in nodes.items():
            text += [f"[{name}] {line}" for line in node.log().splitlines()
                     if named.search(line)][:lines]
    return "\n".join(text)


def test_the_fleet_loses_nothing_and_reports_each_job_once(start_node, soak):
    """Nodes and ComfyUIs killed, websockets dropped, nodes paused, under the clients' load:
    0 missing, 0 reported twice, 0 5xx but 503 with Retry-After."""
    began = time.monotonic()
    receiver = Receiver().start()
    nodes = {name: start_node(name, *FLAGS, gpus=GPUS) for name in NODES}
    for name, node in nodes.items():
        wait_for(lambda: Api(node.url).get("/ready").status_code == 200, timeout=30,
                 interval=0.2, message=f"{name} ready")
    load = FleetLoad(nodes, receiver.url, pause=PAUSE)
    faults = FleetFaults(nodes, load)
    load.start(CLIENTS[soak])
    try:
        run_faults(faults, soak)
        load.stop()
        for name, node in nodes.items():  # every node's threads came through, its lease too
            threads_alive(node, GPUS, load, prefix=f"probe-{name}")
            wait_for(lambda: all_live(node), timeout=LEASE * 3, interval=0.5,
                     message=f"{name} to see every node live")
        wait_for(lambda: not all_jobs(faults.url, UNFINISHED), timeout=FINAL_WAIT[soak],
                 interval=0.5, message="every job to end")
        jobs = all_jobs(faults.url)
        listed = {name: {j: job["status"] for j, job in all_jobs(node.url).items()}
                  for name, node in nodes.items()}
        no_event = wait_final_events(receiver, set(load.sent) & set(jobs), FINAL_WAIT[soak])
    finally:
        load.stop()
        for name in list(load.down):  # a fault cut short: no node stays frozen
            nodes[name].resume()
        receiver.stop()
    events = final_events(receiver)
    twice = reported_twice(events, jobs)
    missing = sorted(set(load.accepted) - set(jobs))
    badly = served_badly(nodes)
    print(figures(load, jobs, faults=dict(faults.counts), check_seconds=faults.check_seconds,
                  node_outages=faults.gone,
                  wall_seconds=round(time.monotonic() - began), jobs_missing=len(missing),
                  jobs_reported_twice=len(twice), untolerated_5xx=len(load.untolerated),
                  logged_5xx_or_tracebacks=len(badly),
                  jobs_unacknowledged=len([j for j in load.sent if j in jobs
                                           and j not in load.accepted]),
                  webhook_requests=len(receiver.received),
                  jobs_sent_to_comfy_again=sum(len(p) > 1 for p in faults.received.values())))
    assert load.problems == []
    assert load.untolerated == []
    assert badly == []
    assert missing == [], evidence(nodes, missing)
    wrong = check_final(load, jobs, faults.fakes, lost_ok=faults.lost_ok)
    assert wrong == [], evidence(nodes, wrong)
    assert [j for j, a in load.accepted.items() if a.created > 1] == [], "two 201s for one id"
    assert unacknowledged(load, jobs, faults.lost_ok) == {}
    assert all(seen == listed["a"] for seen in listed.values()), "the nodes list different jobs"
    assert no_event == [], evidence(nodes, no_event)
    assert twice == {}, evidence(nodes, twice)
    assert duplicates_within_a_life(faults) == {}
    assert faults.ran_twice() == {}

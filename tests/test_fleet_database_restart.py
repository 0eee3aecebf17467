"""PostgreSQL restarted under a fleet (two real node processes, each with its own fake
ComfyUI, on a fresh database of the run's cluster) while clients submit jobs to both nodes
(GpuId=auto, pinned to the node asked, pinned to the other node with GpuId=<node>:0) and read
statuses and lists on both.

Checked: every answer is 201/200, or 503 `database_unavailable` with a Retry-After (never a
500, a 404 for a job acknowledged, or any other code); a submission refused so is retried by
its client until acknowledged; every job acknowledged (201, or 200 for a retry of one the
database kept) completes, on one node, through one prompt sent to that node's own ComfyUI;
and no ComfyUI hears of another node's job. The nodes' leases outlast the outage, so no node
takes another's jobs over (tests/test_fleet_failover.py is about that). One restart with a
few jobs around it; `--soak`: five, 40 jobs acknowledged before, between and after them."""
from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter

import requests

from tests import workflows
from tests.fleet_checks import foreign_requests, job_rows, prompts_not_once
from tests.helpers import API_KEY, wait_for
from tests.test_reliability_load import _code

NODES = ("a", "b")
CLIENTS = 4
RESTARTS = {False: 1, True: 5}  # PostgreSQL restarts in the run (short form, --soak)
BETWEEN = {False: 8, True: 40}  # jobs acknowledged before, between and after the restarts
RECONNECT_WAIT = 60.0  # seconds a node's pool may take to use the database again
RETRY_PAUSE = 0.05  # seconds a client waits before it sends a refused submission again


class FleetLoad:
    """Clients sending each request to a node picked at random; every answer counted by
    phase, every answer the contract does not allow kept in `problems`."""

    def __init__(self, urls: dict[str, str], seed: int = 27):
        self.urls = urls
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.phase = "run0"
        self.answers: Counter = Counter()  # (phase, node, status code) -> answers
        self.refused: Counter = Counter()  # (phase, node) -> 503 database_unavailable
        self.acknowledged: dict[str, str] = {}  # job id -> the phase it was acknowledged in
        self.problems: list[str] = []
        self._threads = [threading.Thread(target=self._client, args=(n,), daemon=True)
                         for n in range(CLIENTS)]

    def start(self) -> "FleetLoad":
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        for thread in self._threads:
            thread.join(RECONNECT_WAIT + 30)

    def acknowledged_in(self, phase: str) -> int:
        with self.lock:
            return sum(1 for seen in self.acknowledged.values() if seen == phase)

    def _client(self, index: int) -> None:
        session = requests.Session()
        session.trust_env = False
        session.headers["X-API-Key"] = API_KEY
        rng = random.Random(index)
        while not self.stopped.is_set():
            self._submit(session, rng)
            for _ in range(3):
                self._read(session, rng)

    def _submit(self, session: requests.Session, rng: random.Random) -> None:
        """One new job, sent again (to any node) until it is acknowledged."""
        job_id = f"r-{uuid.uuid4().hex[:12]}"
        node = rng.choice(NODES)
        gpu = rng.choice(("auto", "0", next(other for other in NODES if other != node) + ":0"))
        deadline = time.monotonic() + RECONNECT_WAIT
        while time.monotonic() < deadline:
            answer = self._call(session, node, "PUT", f"/startjob/{job_id}?GpuId={gpu}",
                                json=workflows.core(job_id))
            if answer is not None and answer.status_code in (200, 201):
                with self.lock:
                    self.acknowledged[job_id] = self.phase
                return
            if answer is None or answer.status_code != 503:
                return  # a problem, noted
            time.sleep(RETRY_PAUSE)
            node = rng.choice(NODES)  # a retry may go to any node
        self._problem(f"{job_id}: never acknowledged within {RECONNECT_WAIT} s")

    def _read(self, session: requests.Session, rng: random.Random) -> None:
        """A status read of an acknowledged job, or a page of the job list."""
        with self.lock:
            known = list(self.acknowledged)
        node = rng.choice(NODES)
        if known and rng.random() < 0.8:
            self._call(session, node, "GET", f"/jobstatus/{rng.choice(known)}")
        else:
            self._call(session, node, "GET", "/jobs?limit=20")

    def _call(self, session, node: str, method: str, path: str, **kwargs):
        """One request; its answer if the contract allows it (else noted, None)."""
        phase = self.phase
        try:
            answer = session.request(method, self.urls[node] + path, timeout=60, **kwargs)
        except requests.RequestException as exc:
            self._problem(f"{phase} {method} {path} on {node}: {exc!r}")
            return None
        with self.lock:
            self.answers[(phase, node, answer.status_code)] += 1
        if answer.status_code in (200, 201):
            return answer
        if refused_for_the_database(answer):
            with self.lock:
                self.refused[(phase, node)] += 1
            return answer
        self._problem(f"{phase} {method} {path} on {node}: {answer.status_code} "
                      f"{answer.text[:300]}")
        return None

    def _problem(self, text: str) -> None:
        with self.lock:
            self.problems.append(text)


def refused_for_the_database(answer: requests.Response) -> bool:
    """503 database_unavailable with a Retry-After of at least a second."""
    retry = answer.headers.get("Retry-After", "")
    return answer.status_code == 503 and _code(answer) == "database_unavailable" \
        and retry.isdigit() and int(retry) > 0


def test_postgresql_restarted_under_a_fleet_loses_nothing_acknowledged(
        postgres_cluster, fleet_database, start_node, soak):
    nodes = start_node.many(NODES, "--node-lease", "5m")
    load = FleetLoad({name: node.url for name, node in nodes.items()}).start()
    try:
        for restart in range(RESTARTS[soak]):
            wait_for(lambda: load.acknowledged_in(f"run{restart}") >= BETWEEN[soak]
                     or load.problems, timeout=RECONNECT_WAIT + 60,
                     message=f"jobs acknowledged before restart {restart}")
            load.phase = f"outage{restart}"  # from the stop's start to the start's end
            postgres_cluster.stop()
            # Down until both nodes have refused a request for it: each met the outage.
            wait_for(lambda: all(load.refused[(f"outage{restart}", name)] for name in NODES)
                     or load.problems, timeout=60,
                     message="each node to refuse a request while PostgreSQL is down")
            postgres_cluster.start()
            load.phase = f"run{restart + 1}"
        wait_for(lambda: load.acknowledged_in(load.phase) >= BETWEEN[soak] or load.problems,
                 timeout=RECONNECT_WAIT + 60, message="jobs acknowledged after the last restart")
    finally:
        load.stop()
        if postgres_cluster.proc is None:  # failed mid-outage: the run's cluster comes back
            postgres_cluster.start()
    print({"answers": dict(sorted(load.answers.items())), "refused": dict(load.refused),
           "acknowledged": Counter(load.acknowledged.values())})
    assert load.problems == []
    for job_id in load.acknowledged:
        wait_for(lambda: any(answered_completed(node.url, job_id) for node in nodes.values()),
                 timeout=RECONNECT_WAIT, interval=0.1, message=f"{job_id} to complete")
    rows = job_rows(fleet_database)
    assert set(rows) == set(load.acknowledged)  # a refused submission left nothing behind
    fakes = {name: node.fake for name, node in nodes.items()}
    assert prompts_not_once(fakes, rows, list(load.acknowledged)) == []
    assert foreign_requests(fakes, rows) == []
    for node in nodes.values():
        assert "Traceback" not in node.log()


def answered_completed(url: str, job_id: str) -> bool:
    answer = requests.get(f"{url}/jobstatus/{job_id}", headers={"X-API-Key": API_KEY}, timeout=30)
    return answer.status_code == 200 and answer.json()["status"] == "completed"

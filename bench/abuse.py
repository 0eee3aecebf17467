"""Group `abuse`: what a hostile client's attack costs everyone else on a shared host (issue 25).

One Cylindria process with two own keys, Alice and Bob, and two fake GPUs. For each attack,
rounds alternate (ABBA) between a quiet phase and a phase with Bob's (or a keyless) attack
running; in both, the load generator (a separate process) times `/health` and Alice's
`/jobstatus` one request at a time. A figure is the worse p99 under attack, held to 1 s
absolute, with its ratio to the same p99 measured quiet in the same run.

The attacks (each a class with start() and stop(); sockets on 127.0.0.1 only):
1. `SlowBodies`: 100 keyless `PUT /startjob` with `Content-Length: 100000`, one byte every 5 s.
2. `StalledDownloads`: 16 `GET /assets/<id>/content` (`Range: bytes=0-`) of Bob's 40 MiB asset,
   never read.
4. `BigBodies`: 12 workflow bodies of the largest size Cylindria takes, sent at once, over and
   over (also: the process's peak RSS, against the in-flight body budget plus 200 MiB).
5. `DeadWebhooks`: 24 jobs of Bob's with webhooks to 4 receivers that accept and never answer
   (also: how long after her job's end Alice's webhook event reaches her receiver).
10. `StreamHog`: Bob opens event streams on his own job, more than there are slots; Alice's
   probe is then `?wait=1` on her finished job, which needs a stream slot.
"""
from __future__ import annotations

import http.client
from abc import ABC, abstractmethod
import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from bench import procs
from bench.core import Bench, Figure, step
from bench.stats import percentile, pooled
from tests.helpers import API_KEY, free_ports

HOST = procs.HOST
ALICE = {"X-API-Key": "abuse-alice-key-0001"}
BOB = {"X-API-Key": "abuse-bob-key-000002"}
KEYS = f"{API_KEY},alice:{ALICE['X-API-Key']}:own,bob:{BOB['X-API-Key']}:own"
P99_LIMIT_MS = 1000.0  # the target: p99 under 1 s while the attack runs
RSS_MARGIN = 200 * 2**20  # peak RSS target: the in-flight body budget plus this
INFLIGHT_BUDGET = 256 * 2**20  # --max-inflight-body-mb's default
WEBHOOK_LIMIT_S = 5.0  # Alice's event within 5 s of her job's end while Bob's receivers hang
ASSET_BYTES = 40 * 2**20  # beyond waitress's 16 MiB output high watermark
ORDER = ("abuse_slow_bodies", "abuse_stalled_downloads", "abuse_big_bodies",
         "abuse_dead_webhooks", "abuse_stream_hog", "abuse_body_rss", "abuse_webhook_share")


def abuse_figures(bench: Bench) -> list[Figure]:
    """Every attack's probe figures, then the peak RSS and the webhook share."""
    quick = bench.profile.name == "quick"
    fakes = bench.fakes(2, time_scale=0.01)
    cyl = bench.server(procs.cylindria(fakes[0].url, bench.data_dir("abuse"), gpus=2,
                                       api_key=KEYS, extra=("--webhook-allow-private",)))
    site = Site(cyl, fakes)
    attacks = [("abuse_slow_bodies", "1: 100 keyless slow bodies", SlowBodies(cyl.port)),
               ("abuse_stalled_downloads", "2: 16 stalled 40 MiB downloads",
                StalledDownloads(cyl.port, site.bob_asset())),
               ("abuse_big_bodies", "4: 12 maximum-size bodies at once",
                BigBodies(cyl.port, body_limit(cyl.port), 4 if quick else 12)),
               ("abuse_dead_webhooks", "5: 24 webhooks to 4 receivers that hang",
                DeadWebhooks(cyl.port)),
               ("abuse_stream_hog", "10: one client opens every stream slot",
                StreamHog(cyl.port, site))]
    figures = [probe_figure(bench, site, key, title, attack) for key, title, attack in attacks]
    cyl.stop()
    figures.append(body_rss(bench, fakes[0], 4 if quick else 12))
    figures.append(webhook_share(bench, fakes))
    return figures


class Site:
    """The victim's side: Alice's finished job, Bob's held job, Bob's asset."""

    def __init__(self, cyl: procs.ServerProcess, fakes: list):
        self.cyl, self.fakes = cyl, fakes
        self.alice_job = f"alice-{time.time_ns()}"
        status, body = procs.request_json(cyl.port, "PUT", f"/startjob/{self.alice_job}?GpuId=0",
                                          core_workflow(), ALICE)
        if status != 201:
            raise RuntimeError(f"Alice's job was refused: {status} {body}")
        wait_ended(cyl.port, self.alice_job, ALICE)

    def bob_asset(self) -> str:
        """Bob's 40 MiB asset's id (uploaded once)."""
        conn = http.client.HTTPConnection(HOST, self.cyl.port, timeout=120)
        try:
            conn.request("POST", "/assets?name=big.bin", body=b"\0" * ASSET_BYTES,
                         headers={**BOB, "Content-Type": "application/octet-stream"})
            response = conn.getresponse()
            body = json.loads(response.read())
        finally:
            conn.close()
        if response.status not in (200, 201):
            raise RuntimeError(f"Bob's asset was refused: {response.status} {body}")
        return body["id"]

    def probes(self, bench: Bench, wait: bool) -> dict:
        """/health, then Alice's /jobstatus (with ?wait=1 when `wait`), timed one at a time."""
        seconds = 0.5 if bench.profile.name == "quick" else 3.0
        status = f"/jobstatus/{self.alice_job}" + ("?wait=1" if wait else "")
        return {name: bench.load.run({"threads": 1, "warmup": 2, "count": None,
                                      "duration": seconds, "choices": [],
                                      "templates": [[step("GET", self.cyl.port, path, headers)]]})
                for name, path, headers in (("health", "/health", {}),
                                            ("jobstatus", status, ALICE))}


def body_limit(port: int) -> int:
    """The largest workflow body Cylindria takes, as its own 413 answer says (no body sent)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.putrequest("PUT", "/startjob/limit-probe?GpuId=1")
        for name, value in {**BOB, "Content-Type": "application/json",
                            "Content-Length": str(2**40)}.items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        body = json.loads(response.read())
    finally:
        conn.close()
    limit = (body.get("details") or {}).get("limit_bytes")
    if response.status != 413 or not limit:
        raise RuntimeError(f"no body limit learnt: {response.status} {body}")
    return int(limit)


def probe_figure(bench: Bench, site: Site, key: str, title: str, attack) -> Figure:
    """Quiet and attacked phases alternated; the worse p99 under attack, its ratio to quiet."""
    wait = isinstance(attack, StreamHog)
    sides: dict[str, list[dict]] = {"quiet": [], "attack": []}
    for round_index in range(min(2, bench.profile.rounds)):
        order = ("quiet", "attack") if round_index % 2 == 0 else ("attack", "quiet")
        for side in order:
            if side == "attack":
                attack.start()
            try:
                sides[side].append(site.probes(bench, wait))
            finally:
                if side == "attack":
                    attack.stop()
    p99 = {side: {name: percentile(pooled([r[name] for r in runs])["latencies"], 99) * 1000
                  for name in ("health", "jobstatus")} for side, runs in sides.items()}
    errors = {side: sum(pooled([r[n] for r in runs])["errors"] for n in ("health", "jobstatus"))
              for side, runs in sides.items()}
    worst = max(p99["attack"].values())
    ratio = worst / max(max(p99["quiet"].values()), 1e-6)
    figure = Figure(key, f"attack {title}: /health, Alice's /jobstatus p99",
                    _shown(p99["quiet"]), _shown(p99["attack"]) + f" ({ratio:.2f}x quiet)",
                    worst, "ms", "<=", P99_LIMIT_MS,
                    {"quiet_p99_ms": p99["quiet"], "attack_p99_ms": p99["attack"],
                     "ratio_to_quiet": ratio, "errors": errors,
                     "attack": attack.summary()})
    figure.condition = ", no failed probe"
    if errors["attack"] or errors["quiet"]:
        figure.also = f"{errors['attack']} probes failed under attack, {errors['quiet']} quiet"
    return figure


def _shown(p99: dict) -> str:
    return f"health {p99['health']:.1f} ms, status {p99['jobstatus']:.1f} ms"


# -- the attacks ------------------------------------------------------------------------------

class Attack(ABC):
    """Threads that keep an attack up between start() and stop()."""

    def __init__(self, port: int):
        self.port = port
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.counts: dict[str, int] = {}
        self._changed = threading.Condition()
        self._socks: list[socket.socket] = []  # held open until stop()

    def start(self) -> None:
        self._stop.clear()
        self.begin()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        self._threads.clear()
        self.end()

    @abstractmethod
    def begin(self) -> None:
        """Open the attack (its threads, its sockets)."""

    def end(self) -> None:
        """What stop() undoes beyond the threads: the sockets held open are closed."""
        for sock in self._socks:
            sock.close()
        self._socks.clear()

    def spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True,
                                  name=f"{type(self).__name__}-{len(self._threads)}")
        self._threads.append(thread)
        thread.start()

    def count(self, name: str) -> None:
        with self._changed:
            self.counts[name] = self.counts.get(name, 0) + 1
            self._changed.notify_all()

    def wait_answers(self, total: int, timeout: float) -> None:
        """Wait until the attack has had `total` outcomes counted (answers, errors)."""
        with self._changed:
            self._changed.wait_for(lambda: sum(self.counts.values()) >= total, timeout)

    def summary(self) -> dict:
        return dict(self.counts)


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class SlowBodies(Attack):
    """100 keyless PUTs whose bodies trickle in at a byte every 5 s."""

    SOCKETS, LENGTH, PACE = 100, 100_000, 5.0

    def begin(self) -> None:
        self.spawn(self._run)

    def _run(self) -> None:
        socks = []
        for n in range(self.SOCKETS):
            try:
                sock = _connect(self.port)
                sock.sendall((f"PUT /startjob/slow-{n} HTTP/1.1\r\nHost: x\r\n"
                              f"Content-Type: application/json\r\n"
                              f"Content-Length: {self.LENGTH}\r\n\r\n").encode())
                socks.append(sock)
                self.count("opened")
            except OSError:
                self.count("refused")
        while not self._stop.wait(self.PACE):
            for sock in list(socks):
                try:
                    sock.sendall(b"{")
                except OSError:
                    socks.remove(sock)
                    self.count("cut by the server")
        for sock in socks:
            sock.close()


class StalledDownloads(Attack):
    """16 ranged downloads of Bob's big asset that are never read."""

    SOCKETS = 16

    def __init__(self, port: int, asset_id: str):
        super().__init__(port)
        self.asset_id = asset_id

    def begin(self) -> None:
        for _ in range(self.SOCKETS):
            try:
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.settimeout(10)
                sock.connect((HOST, self.port))
                sock.sendall((f"GET /assets/{self.asset_id}/content HTTP/1.1\r\nHost: x\r\n"
                              f"X-API-Key: {BOB['X-API-Key']}\r\nRange: bytes=0-\r\n\r\n")
                             .encode())
                self._socks.append(sock)
                self.count("opened")
            except OSError:
                self.count("refused")


class BigBodies(Attack):
    """`senders` threads, each sending the largest body Cylindria takes, again and again."""

    def __init__(self, port: int, limit: int, senders: int):
        super().__init__(port)
        self.senders = senders
        self.body = big_workflow(limit - 4096)

    def begin(self) -> None:
        for n in range(self.senders):
            self.spawn(self._send, n)

    def _send(self, n: int) -> None:
        round_ = 0
        while not self._stop.is_set():
            round_ += 1
            conn = http.client.HTTPConnection(HOST, self.port, timeout=120)
            try:
                conn.request("PUT", f"/startjob/big-{n}-{round_}-{time.time_ns()}?GpuId=auto",
                             body=self.body, headers={**BOB, "Content-Type": "application/json"})
                self.count(str(conn.getresponse().status))
            except (OSError, http.client.HTTPException):
                self.count("connection error")
            finally:
                conn.close()


class DeadWebhooks(Attack):
    """Bob's 24 jobs with webhooks to 4 loopback receivers that accept and never answer."""

    JOBS, RECEIVERS = 24, 4

    def __init__(self, port: int):
        super().__init__(port)
        self._receivers: list[HangingReceiver] = []

    def begin(self) -> None:
        self._receivers = [HangingReceiver().start() for _ in range(self.RECEIVERS)]
        for n in range(self.JOBS):
            url = self._receivers[n % self.RECEIVERS].url
            status, _ = procs.request_json(
                self.port, "PUT", f"/startjob/bob-hook-{time.time_ns()}-{n}?GpuId=auto&webhook={url}",
                core_workflow(), BOB)
            self.count(str(status))

    def end(self) -> None:
        for receiver in self._receivers:
            receiver.stop()
        self._receivers.clear()


class StreamHog(Attack):
    """Bob's event streams on his own held job, more than the server has slots for."""

    STREAMS = 8

    def __init__(self, port: int, site: Site):
        super().__init__(port)
        self.site = site

    def begin(self) -> None:
        fake = self.site.fakes[1]
        fake.hold = True  # Bob's job waits in GPU 1's queue: his streams stay open
        job = f"bob-held-{time.time_ns()}"
        procs.request_json(self.port, "PUT", f"/startjob/{job}?GpuId=1", core_workflow(), BOB)
        for _ in range(self.STREAMS):
            sock = _connect(self.port)
            sock.sendall((f"GET /jobevents/{job} HTTP/1.1\r\nHost: x\r\n"
                          f"X-API-Key: {BOB['X-API-Key']}\r\n\r\n").encode())
            status = sock.recv(64).split(b" ")[1:2]
            self.count(status[0].decode() if status else "closed")
            self._socks.append(sock)

    def end(self) -> None:
        super().end()
        self.site.fakes[1].hold = False


class HangingReceiver:
    """A loopback listener that accepts connections and never answers them."""

    def __init__(self):
        self.port = free_ports(1)
        self._listener = socket.create_server((HOST, self.port), backlog=128)
        self._stop = threading.Event()
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True, name="hanging")

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/hook"

    def start(self) -> "HangingReceiver":
        self._listener.settimeout(0.2)
        self._thread.start()
        return self

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
                self._held.append(conn)
            except TimeoutError:
                continue
            except OSError:
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()
        for conn in self._held:
            conn.close()


class Receiver:
    """A loopback receiver that answers 204 and notes when each event arrived."""

    def __init__(self):
        self.arrivals: dict[str, float] = {}
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(204)
                self.end_headers()
                with receiver.arrived:
                    receiver.arrivals[f"{body['type']}:{body['data']['job_id']}"] = \
                        time.perf_counter()
                    receiver.arrived.notify_all()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((HOST, free_ports(1)), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                       name="receiver")
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server.server_address[1]}/hook"

    def wait(self, key: str, timeout: float) -> float | None:
        """When the event `key` (type:job id) arrived, waiting up to `timeout` seconds."""
        with self.arrived:
            self.arrived.wait_for(lambda: key in self.arrivals, timeout)
            return self.arrivals.get(key)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- the two figures of their own ------------------------------------------------------------

def body_rss(bench: Bench, fake, senders: int) -> Figure:
    """A fresh Cylindria's peak RSS (VmHWM) after `senders` maximum-size bodies at once."""
    cyl = bench.server(procs.cylindria(fake.url, bench.data_dir("abuse-rss"), gpus=2,
                                       api_key=KEYS))
    idle = procs.rss_bytes(cyl.pid)
    attack = BigBodies(cyl.port, body_limit(cyl.port), senders)
    attack.start()
    attack.wait_answers(senders * (1 if bench.profile.name == "quick" else 3), timeout=300)
    attack.stop()
    peak = peak_rss(cyl.pid)
    cyl.stop()
    limit = (INFLIGHT_BUDGET + RSS_MARGIN) / 2**20
    return Figure("abuse_body_rss", f"peak RSS, {senders} maximum-size bodies at once "
                  f"({len(attack.body) / 2**20:.1f} MiB each)",
                  f"{idle / 2**20:.0f} MiB idle", f"{peak / 2**20:.0f} MiB peak",
                  peak / 2**20, "MiB", "<=", limit,
                  {"idle_rss": idle, "peak_rss": peak, "body_bytes": len(attack.body),
                   "answers": attack.summary()})


def peak_rss(pid: int) -> int:
    """The process's peak resident set (Linux VmHWM; elsewhere its RSS now)."""
    if sys.platform.startswith("linux"):
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return procs.rss_bytes(pid)


def webhook_share(bench: Bench, fakes: list) -> Figure:
    """Alice's webhook: from her job's end to her receiver, quiet and while Bob's 24 webhooks
    hang on 4 receivers (the fair share of the sender's workers)."""
    cyl = bench.server(procs.cylindria(fakes[0].url, bench.data_dir("abuse-hooks"), gpus=2,
                                       api_key=KEYS, extra=("--webhook-allow-private",)))
    receiver = Receiver()
    attack = DeadWebhooks(cyl.port)
    delays: dict[str, list[float]] = {"quiet": [], "attack": []}
    try:
        for round_index in range(min(2, bench.profile.rounds)):
            for side in (("quiet", "attack") if round_index % 2 == 0 else ("attack", "quiet")):
                if side == "attack":
                    attack.start()
                try:
                    delays[side].append(_alice_delivery(cyl.port, receiver))
                finally:
                    if side == "attack":
                        attack.stop()
    finally:
        receiver.stop()
        cyl.stop()
    worst = max(delays["attack"])
    return Figure("abuse_webhook_share", "Alice's webhook after her job's end, while Bob's "
                  "24 webhooks hang on 4 receivers", f"{max(delays['quiet']) * 1000:.0f} ms quiet",
                  f"{worst * 1000:.0f} ms", worst, "s", "<=", WEBHOOK_LIMIT_S,
                  {"delays_s": delays, "attack": attack.summary()})


def _alice_delivery(port: int, receiver: Receiver) -> float:
    """Seconds from Alice's job being seen completed to its job.completed event's arrival."""
    job = f"alice-hook-{time.time_ns()}"
    status, body = procs.request_json(port, "PUT", f"/startjob/{job}?GpuId=0&webhook={receiver.url}",
                                      core_workflow(), ALICE)
    if status != 201:
        raise RuntimeError(f"Alice's webhook job was refused: {status} {body}")
    ended = wait_ended(port, job, ALICE)
    arrived = receiver.wait(f"job.completed:{job}", 120.0)
    if arrived is None:
        raise RuntimeError(f"Alice's job.completed for {job} never arrived")
    return max(0.0, arrived - ended)


# -- small helpers ----------------------------------------------------------------------------

def core_workflow() -> dict:
    """A small workflow the fake runs quickly."""
    from tests import workflows
    return workflows.core()


def big_workflow(size: int) -> bytes:
    """An API-format workflow of about `size` bytes made of many small nodes (the costliest
    shape to parse: an object per node and per input), of a class no GPU knows, so a
    GpuId=auto submission of it is parsed whole, then refused before anything reaches ComfyUI."""
    node = '"n%d": {"class_type": "CylAbuse", "inputs": {"image": ["n0", 0], "value": %d}}'
    parts, length, n = [], 2, 0
    while length < size:
        part = node % (n, n)
        parts.append(part)
        length += len(part) + 2
        n += 1
    return ("{" + ", ".join(parts) + "}").encode()


def wait_ended(port: int, job: str, headers: dict, timeout: float = 120.0) -> float:
    """Wait (?wait= long-polls) until the job has ended; when it was first seen ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = procs.request_json(port, "GET", f"/jobstatus/{job}?wait=10", None,
                                          headers, timeout=30)
        if body.get("status") in ("completed", "failed", "cancelled", "lost"):
            if body["status"] != "completed":
                raise RuntimeError(f"job {job} ended {body['status']}: {body.get('error')}")
            return time.perf_counter()
    raise RuntimeError(f"job {job} did not end in {timeout:.0f} s")

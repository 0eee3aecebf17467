"""The webhooks group: jobs submitted with `PUT /startjob/<id>?webhook=<url>` (signed events
written to a SQLite outbox with the job's change, POSTed by a sender thread) against the same
jobs without a webhook, measured in the same run.

Cylindria runs as a real process with `--webhook-allow-private` (every receiver is on
127.0.0.1), a fresh one on an empty data dir for every round. Its six GPUs are fakes on
consecutive loopback ports: two "probe" GPUs in this process (TimedFake: the completion
group's clock) and four "burst" GPUs in a process of their own (`python -m bench.webhooks`),
as ComfyUI is: running a thousand prompts in a second takes a core's worth of the fakes'
Python, which must not hold this process's GIL while it times the probes.

- Completion latency of other jobs during a burst: N jobs (EmptyImage -> CylSleepProgress ->
  SaveImage, each with its own sleep and prefix so that the fake's output cache never skips
  one) are PUT to the held burst GPUs by 32 keep-alive clients, each with a webhook to a
  slow receiver (it waits 50 ms before every 200) or, on the baseline side, without one;
  then the burst GPUs are released and end them all in about a second. Meanwhile jobs
  without a webhook run on the probe GPUs, one at a time on each, timed as the completion
  group times them: the fake's execution_success delivered -> /jobstatus first says
  completed (a watcher polls every ms). The figure is the p99 of the probes that ended
  while Cylindria tracked the burst (the release -> /metrics first counting every burst
  job finished, looked at every 50 ms), with webhooks over without, pooled over ABBA rounds.
- The same for the probes of the AFTER seconds that follow: with webhooks the outbox is
  still draining to the slow receiver then; without, Cylindria is idle.
- Delivered: the slow receiver counts distinct webhook-ids by type. Every job's
  job.completed must arrive and the outbox must then be empty (/metrics). The drain time
  runs from the release to the receiver's answer to the last event; the receiver's pace
  bounds it: 2N events x 50 ms / 4 (the sender's tries at once per receiver). A job whose
  end Cylindria reads from ComfyUI's history before its websocket said it runs goes
  queued -> completed, and has no job.started: those are counted, not required.
- Latency to a receiver: jobs one at a time on the probe GPUs, each with a webhook to a
  receiver that answers at once; from the fake's execution_success to the arrival of the
  job's job.completed at the receiver (both on this process's perf_counter), p99 and p50.
  The details split it at the job view's finished_at (when Cylindria recorded the end).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

from bench import procs
from bench.core import JSON_HEADERS, Bench, Figure, check_errors, step, wait_websockets
from bench.dispatch import abba, clients_job, wait_until
from bench.fakes import TimedFake, close_all
from bench.procs import HOST, ROOT, key_headers
from bench.stats import percentile, spread
from tests import workflows
from tests.helpers import free_ports
from tests.processes import terminate
from cylindria.webhooks.sender import PER_RECEIVER

BURST = {"full": 1000, "quick": 40}  # jobs ending at once, with or without a webhook
ROUNDS = {"full": 4, "quick": 1}  # ABBA rounds of each side
AFTER = {"full": 2.0, "quick": 0.2}  # seconds the probes go on after the burst
FAST_JOBS = {"full": 200, "quick": 6}  # jobs timed to the instant receiver
WARMUP = 5  # jobs to the instant receiver before the timed ones (its connection opened)
PROBE_GPUS, BURST_GPUS = 2, 4  # GpuId 0..1 in this process, 2..5 in the burst process
CLIENTS = 32  # keep-alive clients submitting the burst
SLOW = 0.05  # seconds the slow receiver waits before every answer
SETTLE = 0.5  # seconds between the burst's submission and its release
BURST_SLEEP = 0.0  # seconds each burst job sleeps, plus k us: its own, never a cached one
SCRAPE = 0.05  # seconds between two looks at /metrics while the burst is tracked
COMPLETION_LIMIT = 1.2
LATENCY_LIMIT_MS = 50.0  # as the completion figure: a receiver hears of an end as soon as a poller
ORDER = ("webhooks_completion_burst", "webhooks_completion_drain", "webhooks_delivered",
         "webhooks_latency")
METRIC = r"^{}(?:\{{[^}}]*\}})? (\S+)$"
FINISHED = re.compile(r'^cylindria_jobs_finished_total\{gpu="(\d+)",status="\w+"\} (\S+)$', re.M)


def webhook_figures(bench: Bench) -> list[Figure]:
    """Completion latency of other jobs during a burst with webhooks, the burst's events
    delivered, and the latency from a job's end to its event at a receiver."""
    profile = bench.profile.name
    probes, burst = start_gpus(bench)
    slow = Receiver(SLOW).start()
    bench.stack.callback(slow.stop)
    rounds: dict[str, list[dict]] = {"baseline": [], "webhooks": []}
    for index, side in abba(list(rounds), ROUNDS[profile]):
        hook = slow.url if side == "webhooks" else None
        rounds[side].append(burst_round(bench, probes, burst, slow, hook, f"{side}-{index}"))
    slow.stop()
    fast = Receiver().start()
    bench.stack.callback(fast.stop)
    latencies = receiver_latencies(bench, probes, fast)
    fast.stop()
    count = BURST[profile]
    return [completion_figure(count, rounds), drain_figure(AFTER[profile], rounds),
            delivered_figure(count, rounds["webhooks"]), latency_figure(latencies)]


# -- the GPUs ------------------------------------------------------------------------------------

def start_gpus(bench: Bench) -> tuple[list[TimedFake], "BurstGpus"]:
    """The probe GPUs here and the burst GPUs in their own process, on consecutive ports."""
    base = free_ports(PROBE_GPUS + BURST_GPUS)
    probes = []
    bench.stack.callback(close_all, probes)
    for n in range(PROBE_GPUS):
        probes.append(TimedFake(port=base + n).start())
    burst = BurstGpus(base + PROBE_GPUS, BURST_GPUS, bench.work_dir / "webhooks-burst.log")
    bench.stack.callback(burst.stop)
    return probes, burst.start()


class BurstGpus:
    """The burst's fake GPUs in a process of their own, held until release(): one JSON line in,
    one out, as bench.load; stopped by its PID."""

    def __init__(self, port: int, count: int, log_path: Path):
        self.port, self.count, self.log_path = port, count, Path(log_path)
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def ports(self) -> list[int]:
        """Their ports (GpuId PROBE_GPUS on)."""
        return [self.port + n for n in range(self.count)]

    def start(self) -> "BurstGpus":
        """Start them and wait until every one listens (held)."""
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.webhooks", "--port", str(self.port), "--count",
             str(self.count)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._log, text=True)
        self._answer()
        return self

    def release(self, jobs: int, timeout: float) -> dict:
        """Let them run until `jobs` more prompts have ended, then hold them again: when the
        first and the last ended, in seconds after the release."""
        self.proc.stdin.write(json.dumps({"release": jobs, "timeout": timeout}) + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def clear(self) -> None:
        """Forget their history (POST /history clear), as an operator would between runs."""
        for port in self.ports:
            procs.request_json(port, "POST", "/history", {"clear": True})

    def _answer(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the burst GPUs exited with {self.proc.poll()}; log: "
                               f"{self.log_path}")
        answer = json.loads(line)
        if "fatal" in answer:
            raise RuntimeError(f"the burst GPUs failed: {answer['fatal']}")
        return answer

    def stop(self) -> None:
        """Close its stdin (it exits), then make sure by its PID."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.stdin.close()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    terminate(self.proc)
            self.proc.stdout.close()
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


def serve_burst(argv: list[str] | None = None) -> int:
    """The burst process: `count` held fakes from `port` on; runs one burst per stdin line."""
    parser = argparse.ArgumentParser(prog="python -m bench.webhooks",
                                     description=serve_burst.__doc__)
    parser.add_argument("--port", type=int, required=True, help="the first fake's port")
    parser.add_argument("--count", type=int, required=True, help="fakes on consecutive ports")
    args = parser.parse_args(argv)
    fakes: list[TimedFake] = []
    try:
        for n in range(args.count):
            fakes.append(TimedFake(port=args.port + n).start())
            fakes[-1].hold = True
        _say({"ports": [fake.port for fake in fakes]})
        for line in sys.stdin:
            request = json.loads(line)
            _say(run_burst(fakes, request["release"], request["timeout"]))
    except Exception as exc:  # noqa: BLE001 - reported to the bench, which stops
        _say({"fatal": repr(exc)})
        return 1
    finally:
        close_all(fakes)
    return 0


def run_burst(fakes: list[TimedFake], jobs: int, timeout: float) -> dict:
    """Release the held fakes; once `jobs` more prompts have ended, hold them again."""
    before = {fake.port: set(fake.success_at) for fake in fakes}
    began = time.perf_counter()
    for fake in fakes:
        fake.hold = False

    def ended() -> list[float]:
        return [at - began for fake in fakes for prompt_id, at in list(fake.success_at.items())
                if prompt_id not in before[fake.port]]
    wait_until(lambda: len(ended()) >= jobs, timeout,
               f"the burst GPUs did not end {jobs} prompts in {timeout:.0f} s", pause=0.005)
    for fake in fakes:
        fake.hold = True
    ends = sorted(ended())
    return {"first": ends[0], "last": ends[-1], "ended": len(ends)}


def _say(answer: dict) -> None:
    """One answer line to the bench."""
    print(json.dumps(answer), flush=True)


# -- the receivers ----------------------------------------------------------------------------

class Receiver:
    """A webhook receiver on a loopback port (keep-alive HTTP/1.1, as a real one): waits
    `delay` seconds, then answers 200. Notes every event by webhook-id, and when each job's
    job.completed arrived (time.perf_counter(), the body read) with its data.finished_at."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.port = 0
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.reset()

    @property
    def url(self) -> str:
        """The webhook URL to give a job."""
        return f"http://{HOST}:{self.port}/hook"

    def reset(self) -> None:
        """Forget what arrived so far (a new round)."""
        with self._lock:
            self.events: dict[str, str] = {}  # webhook-id -> type
            self.completed: dict[str, tuple[float, str]] = {}  # job -> (arrival, finished_at)
            self.posts = 0  # every POST, repeated tries included
            self.answered_at = 0.0  # the last answer

    def start(self) -> "Receiver":
        """Listen on a free loopback port, serving from a thread of its own."""
        self._server = _Server((HOST, 0), _Handler)
        self._server.receiver = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name=f"bench-receiver-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            self._thread.join(timeout)

    def arrived(self, webhook_id: str, body: bytes) -> None:
        """One POST's body has been read."""
        now = time.perf_counter()
        event = json.loads(body)
        with self._lock:
            self.posts += 1
            self.events[webhook_id] = event["type"]
            if event["type"] == "job.completed":
                self.completed.setdefault(event["data"]["job_id"],
                                          (now, event["data"]["finished_at"]))

    def answered(self) -> None:
        """One POST has been answered."""
        with self._lock:
            self.answered_at = time.perf_counter()

    def count(self, kind: str | None = None) -> int:
        """Distinct events arrived (of one type)."""
        with self._lock:
            return sum(1 for t in self.events.values() if kind is None or t == kind)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A sender that hangs up mid-answer (its Cylindria stopped) is no error here."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the sender reuses its connections

    def do_POST(self) -> None:
        receiver = self.server.receiver
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        receiver.arrived(self.headers.get("webhook-id", ""), body)
        if receiver.delay:
            time.sleep(receiver.delay)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
        receiver.answered()

    def log_message(self, *args) -> None:
        pass


# -- the burst rounds ---------------------------------------------------------------------------

def start_cylindria(bench: Bench, probes: list[TimedFake], name: str) -> procs.ServerProcess:
    """A Cylindria on a new data dir for all six GPUs, allowed to call loopback receivers."""
    process = procs.cylindria(probes[0].url, bench.data_dir(f"webhooks-{name}"),
                              gpus=PROBE_GPUS + BURST_GPUS)
    process.args.append("--webhook-allow-private")
    bench.server(process)
    wait_websockets(process, PROBE_GPUS + BURST_GPUS)
    return process


def burst_round(bench: Bench, probes: list[TimedFake], burst: BurstGpus, receiver: Receiver,
                hook: str | None, name: str) -> dict:
    """One round on a fresh Cylindria: the burst submitted (with webhooks to `hook`, or
    none), released while the probes run; their latencies, the burst's span, the drain."""
    count = BURST[bench.profile.name]
    receiver.reset()
    cyl = start_cylindria(bench, probes, name)
    try:
        submit_burst(bench, cyl, count, hook)
        time.sleep(SETTLE)  # the submissions' own aftermath (logs, queue messages) first
        result = probed_burst(bench, cyl, probes, burst, count)
        if hook is not None:
            result.update(drain(cyl, receiver, count, result["began"], result["ended"]))
    finally:
        cyl.stop()
        burst.clear()
        for fake in probes:
            procs.request_json(fake.port, "POST", "/history", {"clear": True})
    return result


def probed_burst(bench: Bench, cyl: procs.ServerProcess, probes: list[TimedFake],
                 burst: BurstGpus, count: int) -> dict:
    """The burst released while the probes run, until AFTER seconds past its tracked end:
    the probes' latencies during the burst and after it, and Cylindria's share of a core."""
    probers = [Prober(cyl.port, fake, gpu) for gpu, fake in enumerate(probes)]
    for prober in probers:
        prober.start()
    try:
        cpu = [cpu_seconds(cyl.pid)]
        began = time.perf_counter()
        span = burst.release(count, timeout=120.0)
        ended = tracked(cyl, count, timeout=120.0)
        cpu.append(cpu_seconds(cyl.pid))
        time.sleep(max(0.0, ended + AFTER[bench.profile.name] - time.perf_counter()))
        cpu.append(cpu_seconds(cyl.pid))
        quiet = time.perf_counter()
    finally:
        stop_all(probers)
    samples = sorted(sample for prober in probers for sample in prober.samples)
    return {"during": window(samples, began, ended), "after": window(samples, ended, quiet),
            "span": span, "tracked_s": ended - began, "began": began, "ended": ended,
            "cpu_during": (cpu[1] - cpu[0]) / (ended - began),
            "cpu_after": (cpu[2] - cpu[1]) / (quiet - ended)}


def submit_burst(bench: Bench, cyl: procs.ServerProcess, count: int, hook: str | None) -> None:
    """`count` jobs PUT to the held burst GPUs by CLIENTS keep-alive clients, all 201."""
    tag = uuid.uuid4().hex[:8]
    query = f"&webhook={quote(hook, safe='')}" if hook else ""
    headers = {**key_headers(), **JSON_HEADERS}
    templates: list[list[dict]] = [[] for _ in range(CLIENTS)]
    for k in range(count):
        gpu = PROBE_GPUS + k % BURST_GPUS
        templates[k % CLIENTS].append(step(
            "PUT", cyl.port, f"/startjob/burst-{tag}-{k}?GpuId={gpu}{query}", headers,
            workflows.slow(BURST_SLEEP + k * 1e-6, 1, prefix=f"burst_{tag}_{k}"), ok=(201,)))
    check_errors("webhooks burst submission", bench.load.run(clients_job(templates)))


def tracked(cyl: procs.ServerProcess, count: int, timeout: float) -> float:
    """When (time.perf_counter()) /metrics first showed every burst job finished: Cylindria's
    end of the burst, which its websockets may track well after the fakes' own."""
    deadline = time.perf_counter() + timeout
    while True:
        now = time.perf_counter()
        if finished(metrics(cyl.port), range(PROBE_GPUS, PROBE_GPUS + BURST_GPUS)) >= count:
            return now
        if now > deadline:
            raise RuntimeError(f"Cylindria did not record the burst's end in {timeout:.0f} s; "
                               f"log: {cyl.log_path}")
        time.sleep(SCRAPE)


def finished(text: str, gpus) -> int:
    """Jobs of these GPUs finished, whatever their status, as a /metrics text counts them."""
    wanted = {str(gpu) for gpu in gpus}
    return int(sum(float(value) for gpu, value in FINISHED.findall(text) if gpu in wanted))


def window(samples: list[tuple[float, float]], began: float, ended: float) -> list[float]:
    """The latencies of the probes that ended in [began, ended]; if none did (a tiny burst,
    --quick), the first one that ended after `began`, so that the figure has numbers."""
    inside = [latency for end, latency in samples if began <= end <= ended]
    if inside:
        return inside
    return [latency for end, latency in samples if end >= began][:1]


def drain(cyl: procs.ServerProcess, receiver: Receiver, count: int, began: float,
          ended: float) -> dict:
    """Wait until every job's job.completed has arrived and the outbox is empty (or for
    three times the receiver's pace, plus a minute); what arrived, and what Cylindria's
    /metrics says of its outbox then."""
    bound = 2 * count * SLOW / PER_RECEIVER  # a job.started and a job.completed per job
    deadline = time.monotonic() + 3 * bound + 60.0
    while receiver.count("job.completed") < count and time.monotonic() < deadline:
        time.sleep(0.05)
    while sample(metrics(cyl.port), "cylindria_webhook_outbox_depth") \
            and time.monotonic() < deadline:
        time.sleep(0.05)  # job.started events left, or the last answer not yet settled
    text, answered = metrics(cyl.port), receiver.answered_at
    delivery = sample(text, "cylindria_webhook_delivery_seconds_sum")
    return {"events": receiver.count(), "completed_events": receiver.count("job.completed"),
            "started_events": receiver.count("job.started"), "posts": receiver.posts,
            "completed_jobs": len(receiver.completed), "drain_s": answered - began,
            "drain_after_tracked_s": answered - ended, "bound_s": bound,
            "outbox_depth": sample(text, "cylindria_webhook_outbox_depth"),
            "delivered_total": sample(text, "cylindria_webhook_delivered_total"),
            "failed_attempts_total": sample(text, "cylindria_webhook_failed_attempts_total"),
            "delivery_seconds_mean": delivery / max(1.0, sample(
                text, "cylindria_webhook_delivery_seconds_count"))}


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used so far, user and system (psutil where installed, else
    Linux's /proc)."""
    try:
        import psutil
    except ImportError:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def metrics(port: int) -> str:
    """Cylindria's /metrics text."""
    status, body = procs.get(port, "/metrics", key_headers(), timeout=30.0)
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    return body.decode("utf-8")


def sample(text: str, name: str) -> float:
    """One unlabelled sample of a /metrics text."""
    found = re.search(METRIC.format(re.escape(name)), text, re.M)
    if found is None:
        raise RuntimeError(f"/metrics has no {name}")
    return float(found.group(1))


class Prober:
    """Jobs without a webhook, one at a time on one probe GPU, timed as the completion group
    times them: start(), stop(timeout), probe_once(); `samples`: (end, latency) in seconds,
    the end on the fake's clock (time.perf_counter())."""

    def __init__(self, port: int, fake: TimedFake, gpu: int):
        self.port, self.fake, self.gpu = port, fake, gpu
        self.samples: list[tuple[float, float]] = []
        self.failure: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.run, name=f"bench-probe-{gpu}", daemon=True)

    def start(self) -> None:
        """Start probing on a thread of its own."""
        self._thread.start()

    def run(self) -> None:
        """Probe until stopped; the first failure ends it (stop() raises it)."""
        while not self._stop.is_set():
            try:
                self.probe_once()
            except Exception as exc:  # noqa: BLE001 - raised again by stop()
                self.failure = f"probe on GPU {self.gpu} failed: {exc!r}"
                return

    def probe_once(self) -> None:
        """One job: held until its watcher polls, so the watcher's first look is before its end."""
        from bench.figures import StatusWatcher, success_time  # bench.figures imports this module
        self.fake.hold = True
        job_id = f"probe-{uuid.uuid4().hex[:12]}"
        status, body = procs.request_json(self.port, "PUT", f"/startjob/{job_id}?GpuId={self.gpu}",
                                          workflows.core(), key_headers())
        if status != 201:
            raise RuntimeError(f"startjob answered {status}: {body}")
        watcher = StatusWatcher(self.port, job_id, 0.001)
        watcher.start()
        watcher.polling.wait(10)
        self.fake.hold = False
        watcher.join()
        if watcher.failure:
            raise RuntimeError(watcher.failure)
        ended = success_time(self.fake, body["prompt_id"])
        self.samples.append((ended, watcher.seen_at - ended))

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the job under way; raise the failure that ended it, if one did."""
        self._stop.set()
        self._thread.join(timeout)
        self.fake.hold = False
        if self._thread.is_alive():
            raise RuntimeError(f"the probe on GPU {self.gpu} did not stop in {timeout:.0f} s")
        if self.failure:
            raise RuntimeError(self.failure)


def stop_all(probers: list[Prober]) -> None:
    """Stop every prober, then raise what ended any of them early."""
    failures = []
    for prober in probers:
        try:
            prober.stop()
        except RuntimeError as exc:
            failures.append(str(exc))
    if failures:
        raise RuntimeError("; ".join(failures))


# -- the instant receiver -----------------------------------------------------------------------

def receiver_latencies(bench: Bench, probes: list[TimedFake],
                       receiver: Receiver) -> list[tuple[float, float]]:
    """Jobs one at a time, taking turns on the probe GPUs, each with a webhook to `receiver`:
    (end -> arrival of its job.completed, end -> finished_at) in seconds, per job."""
    from bench.figures import success_time  # bench.figures imports this module
    hook = quote(receiver.url, safe="")
    cyl = start_cylindria(bench, probes, "instant")
    wall = time.time() - time.perf_counter()  # finished_at is wall-clock time, in ms
    samples = []
    try:
        for n in range(WARMUP + FAST_JOBS[bench.profile.name]):
            gpu = n % PROBE_GPUS
            job_id = f"hooked-{uuid.uuid4().hex[:12]}"
            status, body = procs.request_json(
                cyl.port, "PUT", f"/startjob/{job_id}?GpuId={gpu}&webhook={hook}",
                workflows.core(), key_headers())
            if status != 201:
                raise RuntimeError(f"startjob answered {status}: {body}")
            wait_until(lambda: job_id in receiver.completed, 30.0,
                       f"job {job_id}'s job.completed never arrived; log: {cyl.log_path}",
                       pause=0.001)
            ended = success_time(probes[gpu], body["prompt_id"])
            arrival, finished_at = receiver.completed[job_id]
            recorded = datetime.fromisoformat(finished_at).timestamp() - wall
            if n >= WARMUP:
                samples.append((arrival - ended, recorded - ended))
    finally:
        cyl.stop()
    return samples


# -- the figures --------------------------------------------------------------------------------

def ms(seconds: float) -> float:
    """Seconds in milliseconds."""
    return seconds * 1000


def completion_figure(count: int, rounds: dict[str, list[dict]]) -> Figure:
    """p99 of the probes that ended while the burst was tracked, with webhooks over without."""
    figure = probe_ratio(
        "webhooks_completion_burst",
        f"completion p99 of other jobs while {count:,} jobs with webhooks end (50 ms receiver)",
        rounds, "during")
    figure.details.update(
        {"burst_s": per_side(rounds, lambda r: r["span"]["last"]),
         "burst_is": "the burst GPUs' release -> their last execution_success",
         "tracked_s": per_side(rounds, lambda r: r["tracked_s"]),
         "tracked_is": "the release -> /metrics first counting every burst job finished: the "
                       "probes' window", "probe_gpus": PROBE_GPUS, "burst_gpus": BURST_GPUS,
         "receiver_delay_s": SLOW})
    return figure


def drain_figure(seconds: float, rounds: dict[str, list[dict]]) -> Figure:
    """p99 of the probes that ended in the seconds after the burst was tracked: with
    webhooks, while the outbox drains to the slow receiver; without, on an idle Cylindria."""
    return probe_ratio("webhooks_completion_drain", "completion p99 of other jobs while the "
                       f"outbox drains ({seconds:g} s after the burst)", rounds, "after")


def probe_ratio(key: str, title: str, rounds: dict[str, list[dict]], part: str) -> Figure:
    """The probes' p99 in one part of the rounds, with webhooks over without (pooled)."""
    pooled = {side: [x for r in results for x in r[part]] for side, results in rounds.items()}
    p99 = {side: percentile(values, 99) for side, values in pooled.items()}
    p50 = {side: percentile(values, 50) for side, values in pooled.items()}
    per_round = [percentile(h[part], 99) / percentile(b[part], 99)
                 for b, h in zip(rounds["baseline"], rounds["webhooks"])]
    return Figure(
        key, title, f"{ms(p99['baseline']):.1f} ms without webhooks",
        f"{ms(p99['webhooks']):.1f} ms (p50 {ms(p50['webhooks']):.1f} vs "
        f"{ms(p50['baseline']):.1f})", p99["webhooks"] / p99["baseline"], "x", "<=",
        COMPLETION_LIMIT,
        {"baseline_p99_ms": ms(p99["baseline"]), "webhooks_p99_ms": ms(p99["webhooks"]),
         "baseline_p50_ms": ms(p50["baseline"]), "webhooks_p50_ms": ms(p50["webhooks"]),
         "p50_ratio": p50["webhooks"] / p50["baseline"],
         "samples": {side: len(values) for side, values in pooled.items()},
         "round_samples": per_side(rounds, lambda r: len(r[part])),
         "round_ratios": per_round, "round_spread": spread(per_round),
         "cylindria_cpu_share": per_side(rounds, lambda r: r[f"cpu_{part}"]),
         "cylindria_cpu_is": "Cylindria's CPU seconds over the part's wall seconds (1.0: a core)"})


def per_side(rounds: dict[str, list[dict]], value) -> dict[str, list]:
    """value(round) of every round, by side."""
    return {side: [value(r) for r in results] for side, results in rounds.items()}


def delivered_figure(count: int, rounds: list[dict]) -> Figure:
    """Every job's job.completed delivered (the worse round), nothing left in the outbox, and
    how long the outbox took to drain."""
    worst = min(r["completed_jobs"] for r in rounds)
    started = min(r["started_events"] for r in rounds)
    drains = [r["drain_s"] for r in rounds]
    bound = rounds[0]["bound_s"]
    figure = Figure(
        "webhooks_delivered", f"job.completed of {count:,} jobs delivered to a 50 ms receiver",
        f"its pace: {bound:.1f} s for 2 events a job",
        f"drained in {max(drains):.1f} s; job.started {started} of {count}", worst, "jobs",
        ">=", count,
        {"drain_s": drains, "drain_after_tracked_s": [r["drain_after_tracked_s"] for r in rounds],
         "bound_s": bound, "drain_over_bound": [d / bound for d in drains],
         "statistic": "the worse round", **{key: [r[key] for r in rounds] for key in (
             "events", "started_events", "completed_events", "completed_jobs", "posts",
             "delivered_total", "failed_attempts_total", "outbox_depth",
             "delivery_seconds_mean")},
         "started_is": "a job whose end Cylindria's poller read from ComfyUI's history before "
                       "its lagging websocket said it runs goes queued -> completed: no "
                       "job.started is written for it"},
        condition=", outbox empty")
    left = [r["outbox_depth"] for r in rounds if r["outbox_depth"]]
    if left:
        figure.also = f"{max(left):.0f} events left in the outbox"
    return figure


def latency_figure(samples: list[tuple[float, float]]) -> Figure:
    """p99 (and p50) from a job's end to its job.completed at an instant receiver."""
    arrival = [a * 1000 for a, _ in samples]
    recorded = [r * 1000 for _, r in samples]
    rest = [(a - r) * 1000 for a, r in samples]
    return Figure(
        "webhooks_latency", "webhook latency p99, a job's end -> job.completed at the receiver",
        f"Cylindria records the end: p50 {percentile(recorded, 50):.1f} ms",
        f"p50 {percentile(arrival, 50):.1f} ms", percentile(arrival, 99), "ms", "<=",
        LATENCY_LIMIT_MS,
        {"p50_ms": percentile(arrival, 50), "p99_ms": percentile(arrival, 99),
         "max_ms": max(arrival), "samples": len(arrival),
         "recorded_p50_ms": percentile(recorded, 50), "recorded_p99_ms": percentile(recorded, 99),
         "recorded_to_arrival_p50_ms": percentile(rest, 50),
         "recorded_to_arrival_p99_ms": percentile(rest, 99),
         "recorded_is": "the fake's execution_success -> the job view's finished_at (when "
                        "Cylindria recorded the end; wall clock, 1 ms resolution)"})


if __name__ == "__main__":
    sys.exit(serve_burst())

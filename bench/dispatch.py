"""The dispatch group: Cylindria's own queue (`GpuId=auto`) against the GPU a client picks at
submission, on fake GPUs whose jobs really take their time (time_scale 1.0).

Cylindria runs as a real process (a fresh one with an empty data dir for every run); the fakes
run in this process on consecutive loopback ports, and every time comes from their own
history (ComfyUI's `execution_start` / `execution_success` timestamps) or from when they
accepted a prompt (DispatchFake), all on time.time().

- Makespan: N jobs with log-normal durations (mean 0.3 s, sigma 1.0, seeded: the same jobs on
  every side), submitted back to back by one client in job order, on 4 GPUs; from the first
  PUT to the last job's end, over the lower bound max(sum / 4, longest) of the run's own
  execution times (what ComfyUI says each job took: the fake's own per-step overhead is in
  the bound, not counted as idle). Baseline: the same jobs through the same Cylindria pinned
  with GpuId cycling 0..3, the choice a client without Cylindria's queue makes.
- Idle gap: in the GpuId=auto runs, per GPU, from one job's end to the next one's start while
  jobs were still held (the job ended before the last prompt reached a ComfyUI); a GPU that
  ends a job then and gets no other counts until that last send. With --gpu-queue-depth 2
  and 1 (at 1 every gap holds Cylindria's whole reaction: end -> websocket -> dispatcher ->
  POST). Baseline: the cycling runs' gaps, the next job already in ComfyUI's own queue.
- Model loads: jobs of two checkpoints interleaved (A, B, A, B...) on 2 GPUs that pay 1 s per
  checkpoint switch. Baseline: the same jobs pinned with GpuId (k // 2) % 2, so that each
  GPU gets A, B, A, B (pinning k % 2 would give each GPU one checkpoint: perfect affinity by
  coincidence of the pattern, not a client's choice). Each pinned GPU runs its queue in
  arrival order, so its count depends on that order only: that side runs at time_scale 0.01
  (10 ms a load) instead of 200 s of loading.
- Accepting at once: M GpuId=auto jobs from 32 keep-alive clients while the GPUs are busy
  (fake.hold): every one answered 201, none failed; the time to accept them all against the
  same PUTs through the stack floor (bench.minimal's pass-through proxy: Flask + waitress +
  requests and nothing else, pinned GpuId cycling 0..3 since it knows no queue), measured in
  alternation. The floor is what this stack costs to take a job and hand it to ComfyUI at
  once; Cylindria instead commits the job to SQLite and holds it, so the ratio is what
  holding costs against the cheapest hand-over.

Every workflow is unique (its sleep's seconds differ), so the fake's output cache (ComfyUI's:
a node whose inputs did not change since the last prompt is not run again) never skips work.
"""
from __future__ import annotations

import heapq
import math
import random
import time
import uuid
from dataclasses import dataclass
from typing import NamedTuple

from bench import procs
from bench.core import (JSON_HEADERS, Bench, Figure, check_errors, clear_queues, step,
                        wait_websockets)
from bench.fakes import TimedFake
from bench.procs import key_headers
from bench.stats import median, percentile
from tests import workflows
from tests.fake_comfy.catalogue import DEFAULT_CHECKPOINTS

GPUS = 4
MEAN, SIGMA, SEED = 0.3, 1.0, 13  # log-normal job durations, seconds
STEPS = 8  # progress steps per job (CylSleepProgress)
JOBS = {"full": 200, "quick": 24}
ROUNDS = {"full": 2, "quick": 1}  # ABBA rounds of every side
SIDES = {"auto": ("auto", 2), "cycling": (None, 2), "auto_depth1": ("auto", 1)}  # GpuId, depth
CHECKPOINTS = ("a.safetensors", "b.safetensors")
LOAD_SECONDS = 1.0  # what a checkpoint switch costs a fake GPU
MODEL_JOBS = {"full": 200, "quick": 20}
MODEL_GPUS = 2
MODEL_JOB_SECONDS = 0.05
PINNED_TIME_SCALE = 0.01  # the pinned model-load side: its count does not depend on time
ACCEPT_JOBS = {"full": 1000, "quick": 100}
ACCEPT_CLIENTS = 32
MAX_QUEUED = 100_000  # --max-queued: far above what any run holds
SETTLE = 0.2  # seconds after every GPU's catalogue was asked for, before a run starts
GAP_LIMIT_MS = 20.0
MAKESPAN_LIMIT = 1.05
LOADS_LIMIT = 4
ORDER = ("dispatch_makespan", "dispatch_idle_gap", "dispatch_idle_gap_depth1",
         "dispatch_model_loads", "dispatch_accept")  # the rows of this group, in order


class DispatchFake(TimedFake):
    """A fake GPU with two more checkpoints that cost LOAD_SECONDS to switch to, noting when it
    accepted each prompt (`sent_at[prompt_id]`, time.time(), as its history's timestamps)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, checkpoints=(*CHECKPOINTS, *DEFAULT_CHECKPOINTS),
                         load_seconds=LOAD_SECONDS, **kwargs)
        self.sent_at: dict[str, float] = {}
        accepted = self._recorder.add_prompt

        def stamped(prompt_id: str) -> None:
            self.sent_at[prompt_id] = time.time()
            accepted(prompt_id)

        self._recorder.add_prompt = stamped


class Execution(NamedTuple):
    """One job on its GPU (time.time() seconds): ComfyUI's execution_start and
    execution_success, and when that ComfyUI accepted its prompt."""

    start: float
    end: float
    sent: float


@dataclass
class Run:
    """One run of jobs to their end: when the first PUT left, when the last prompt reached a
    ComfyUI, each GPU's jobs in order, and what submitting them took."""

    began: float
    last_sent: float
    jobs: list[list[Execution]]
    submit_seconds: float

    @property
    def makespan(self) -> float:
        """From the first PUT to the last job's end."""
        return max(job.end for gpu in self.jobs for job in gpu) - self.began

    @property
    def bound(self) -> float:
        """No schedule of these execution times ends sooner: max(sum / GPUs, longest)."""
        times = [job.end - job.start for gpu in self.jobs for job in gpu]
        return max(sum(times) / len(self.jobs), max(times))

    def gaps(self, held_only: bool) -> list[tuple[float, float]]:
        """(idle, of which without a prompt) seconds of each GPU between two jobs: from one's
        end to the next one's start, and the part of it before the next prompt reached its
        ComfyUI (the rest is ComfyUI's own turnaround). `held_only`: while jobs were still
        held (the job ended before the last send); a GPU then left without a next job counts
        up to that send."""
        gaps = []
        for gpu in self.jobs:
            for job, after in zip(gpu, gpu[1:]):
                if not held_only or job.end < self.last_sent:
                    idle = after.start - job.end
                    gaps.append((idle, min(idle, max(0.0, after.sent - job.end))))
            idle_from = gpu[-1].end if gpu else self.began
            if held_only and idle_from < self.last_sent:
                gaps.append((self.last_sent - idle_from, self.last_sent - idle_from))
        return gaps


def dispatch_figures(bench: Bench) -> list[Figure]:
    """Makespan and idle gaps, model loads, and 1,000 jobs accepted at once."""
    fakes = bench.fakes(GPUS, cls=DispatchFake)
    return [*makespan_figures(bench, fakes), model_loads(bench, fakes[:MODEL_GPUS]),
            accept_all(bench, fakes)]


# -- makespan and idle gaps -------------------------------------------------------------------

def durations(count: int, mean: float = MEAN) -> list[float]:
    """`count` log-normal job durations of mean `mean` seconds, the same every run (the same
    draws whatever the mean: only their scale changes)."""
    chance = random.Random(SEED)
    mu = math.log(mean) - SIGMA ** 2 / 2
    return [chance.lognormvariate(mu, SIGMA) for _ in range(count)]


def makespan_figures(bench: Bench, fakes: list[DispatchFake]) -> list[Figure]:
    """The makespan of GpuId=auto and of GpuId cycling, and the idle gaps at depths 2 and 1."""
    profile = bench.profile.name
    seconds = durations(JOBS[profile])
    names = list(SIDES)
    runs: dict[str, list[Run]] = {name: [] for name in names}
    for index, name in abba(names, ROUNDS[profile]):
        gpu_id, depth = SIDES[name]
        jobs = [(gpu_id or str(k % GPUS), workflows.slow(s, STEPS, prefix=f"dispatch_{k}"))
                for k, s in enumerate(seconds)]
        runs[name].append(timed_run(bench, fakes, jobs, depth, f"makespan-{name}-{index}"))
    base_gaps = [idle * 1000 for run in runs["cycling"] for idle, _ in run.gaps(held_only=False)]
    return [makespan_figure(runs, seconds),
            gap_figure("dispatch_idle_gap", 2, runs["auto"], base_gaps),
            gap_figure("dispatch_idle_gap_depth1", 1, runs["auto_depth1"], base_gaps)]


def makespan_figure(runs: dict[str, list[Run]], seconds: list[float]) -> Figure:
    """GpuId=auto's makespan over its lower bound (the worse round) beside cycling's."""
    ratios = {name: [run.makespan / run.bound for run in side] for name, side in runs.items()}
    worst = {name: max(range(len(values)), key=values.__getitem__)
             for name, values in ratios.items()}
    auto, cycling = runs["auto"][worst["auto"]], runs["cycling"][worst["cycling"]]
    nominal = max(sum(seconds) / GPUS, max(seconds))
    return Figure(
        "dispatch_makespan",
        f"makespan, {len(seconds)} log-normal jobs on {GPUS} GPUs, over its lower bound",
        f"GpuId cycling {ratios['cycling'][worst['cycling']]:.2f}x ({cycling.makespan:.1f} s)",
        f"{auto.makespan:.1f} s, bound {auto.bound:.1f} s", max(ratios["auto"]), "x", "<=",
        MAKESPAN_LIMIT,
        {"round_ratios": ratios, "statistic": "the worse round of each side",
         "makespan_s": {name: [run.makespan for run in side] for name, side in runs.items()},
         "bound_s": {name: [run.bound for run in side] for name, side in runs.items()},
         "submit_s": {name: [run.submit_seconds for run in side] for name, side in runs.items()},
         "nominal_bound_s": nominal, "nominal_sum_s": sum(seconds),
         "longest_s": max(seconds), "jobs": len(seconds), "seed": SEED,
         "greedy_over_nominal_bound": greedy(seconds, GPUS) / nominal,
         "greedy_is": "an instant FIFO dispatcher (each job to the first GPU free, depth 1, in "
                      "job order) on the nominal durations: what no clairvoyance costs"})


def gap_figure(key: str, depth: int, runs: list[Run], base: list[float]) -> Figure:
    """p99 of the GPUs' idle gaps while jobs were held, beside ComfyUI's own between prompts;
    the details split each gap into its part without a prompt there and ComfyUI's turnaround."""
    gaps = sorted((idle * 1000, empty * 1000) for run in runs for idle, empty in
                  run.gaps(held_only=True))
    idle, empty = [g for g, _ in gaps], [e for _, e in gaps]
    p99 = percentile(idle, 99)
    return Figure(
        key, f"idle gap p99 between jobs while jobs are held, --gpu-queue-depth {depth}",
        f"ComfyUI's own {percentile(base, 99):.0f} ms", f"p50 {percentile(idle, 50):.0f}, max "
        f"{max(idle):.0f} ms of {len(idle)}; no prompt p99 {percentile(empty, 99):.0f} ms", p99,
        "ms", "<=", GAP_LIMIT_MS,
        {"gaps_ms": idle, "p99_ms": p99, "p50_ms": percentile(idle, 50),
         "without_prompt_ms": empty, "without_prompt_p99_ms": percentile(empty, 99),
         "without_prompt_gaps": sum(e > 0 for e in empty), "largest_ms": gaps[-5:],
         "without_prompt_is": "the part of a gap before the next prompt reached its ComfyUI "
                              "(Cylindria's reaction); the rest is ComfyUI's own turnaround",
         "baseline_p99_ms": percentile(base, 99), "baseline_max_ms": max(base),
         "baseline_is": "the GpuId cycling runs: every gap, the next job already in ComfyUI's "
                        "queue", "resolution_ms": 1, "depth": depth,
         "makespan_s": [run.makespan for run in runs]})


def greedy(seconds: list[float], gpus: int) -> float:
    """The makespan of sending each job, in order, to the GPU that frees first."""
    free = [0.0] * gpus
    for duration in seconds:
        heapq.heappush(free, heapq.heappop(free) + duration)
    return max(free)


def queued_greedy(seconds: list[float], gpus: int, depth: int) -> float:
    """The makespan of sending each job, in order, to the GPU whose queue (`depth` places,
    the running job's included) opens a place first: a job sent behind a running one waits
    for it even if another GPU frees meanwhile."""
    places = [(0.0, gpu) for gpu in range(gpus) for _ in range(depth)]
    heapq.heapify(places)
    busy_until = [0.0] * gpus
    for duration in seconds:
        opened, gpu = heapq.heappop(places)
        start = max(busy_until[gpu], opened)
        busy_until[gpu] = start + duration
        heapq.heappush(places, (start, gpu))  # its place opens again when it starts
    return max(busy_until)


# -- model loads ------------------------------------------------------------------------------

def model_loads(bench: Bench, fakes: list[DispatchFake]) -> Figure:
    """Checkpoint loads of interleaved jobs of two models: GpuId=auto against pinned."""
    profile = bench.profile.name
    count = MODEL_JOBS[profile]
    loads: dict[str, list[int]] = {"auto": [], "pinned": []}
    per_gpu: dict[str, list[list[int]]] = {"auto": [], "pinned": []}
    spans: list[float] = []
    for index, name in abba(list(loads), ROUNDS[profile]):
        jobs = [("auto" if name == "auto" else str(k // 2 % len(fakes)), workflows.checkpoint(
            CHECKPOINTS[k % 2], MODEL_JOB_SECONDS + k * 1e-5, prefix=f"dispatch_ckpt_{k}"))
            for k in range(count)]
        unload(fakes)
        before = [fake.model_loads for fake in fakes]
        scale = 1.0 if name == "auto" else PINNED_TIME_SCALE
        run = timed_run(bench, fakes, jobs, 2, f"models-{name}-{index}", scale)
        per_gpu[name].append([fake.model_loads - n for fake, n in zip(fakes, before)])
        loads[name].append(sum(per_gpu[name][-1]))
        if name == "auto":
            spans.append(run.makespan)
    nominal = (count * MODEL_JOB_SECONDS / len(fakes)) + LOAD_SECONDS
    return Figure(
        "dispatch_model_loads",
        f"model loads, {count} jobs of 2 checkpoints interleaved on {len(fakes)} GPUs",
        f"pinned, alternating: {max(loads['pinned'])}", f"{max(loads['auto'])} in "
        f"{max(spans):.1f} s", max(loads["auto"]), "loads", "<=", LOADS_LIMIT,
        {"loads": loads, "loads_per_gpu": per_gpu, "statistic": "the worse round of each side",
         "auto_makespan_s": spans, "auto_nominal_makespan_s": nominal,
         "load_seconds": LOAD_SECONDS, "job_seconds": MODEL_JOB_SECONDS,
         "pinned_time_scale": PINNED_TIME_SCALE,
         "pinned_is": "GpuId (k // 2) % 2: each GPU gets A, B, A, B, in arrival order"})


def unload(fakes: list[DispatchFake], timeout: float = 10.0) -> None:
    """POST /free unload_models to every fake, and wait until none holds a model."""
    for fake in fakes:
        procs.request_json(fake.port, "POST", "/free", {"unload_models": True})
    wait_until(lambda: all(fake.last_model is None for fake in fakes), timeout,
               "the fakes did not unload their models")


# -- one run of jobs ----------------------------------------------------------------------------

def timed_run(bench: Bench, fakes: list[DispatchFake], jobs: list[tuple[str, dict]], depth: int,
              name: str, time_scale: float = 1.0, extra: tuple = ()) -> Run:
    """Jobs ((GpuId, workflow)...) PUT back to back by one client, in order, to a fresh
    Cylindria (`extra`: more of its flags); waits until every one ran to its end, then stops
    that Cylindria."""
    cyl = start_cylindria(bench, fakes, name, depth, extra)
    for fake in fakes:
        fake.sent_at.clear()
        fake.time_scale = time_scale
    tag = uuid.uuid4().hex[:8]
    headers = {**key_headers(), **JSON_HEADERS}
    steps = [step("PUT", cyl.port, f"/startjob/{tag}-{k}?GpuId={gpu_id}", headers, workflow,
                  ok=(201,)) for k, (gpu_id, workflow) in enumerate(jobs)]
    try:
        began = time.time()
        result = bench.load.run(clients_job([steps]))
        check_errors(f"dispatch {name}", result)
        wait_done(fakes, len(jobs), cyl)
    finally:
        for fake in fakes:
            fake.time_scale = 1.0
        cyl.stop()
    sent = [at for fake in fakes for at in fake.sent_at.values()]
    return Run(began, max(sent), [executions(fake) for fake in fakes], result["elapsed"])


def start_cylindria(bench: Bench, fakes: list[DispatchFake], name: str,
                    depth: int, extra: tuple = ()) -> procs.ServerProcess:
    """A Cylindria on a new data dir for these GPUs, once it knows every GPU's node classes."""
    process = procs.cylindria(fakes[0].url, bench.data_dir(f"dispatch-{name}"), gpus=len(fakes),
                              extra=extra)
    process.args += ["--gpu-queue-depth", str(depth), "--max-queued", str(MAX_QUEUED)]
    asked = [catalogue_reads(fake) for fake in fakes]
    bench.server(process)
    wait_websockets(process, len(fakes))
    wait_until(lambda: all(catalogue_reads(f) > n for f, n in zip(fakes, asked)), 20.0,
               f"Cylindria never read the GPUs' /object_info; log: {process.log_path}")
    time.sleep(SETTLE)  # the answer parsed and recorded: no GPU waits for its catalogue
    return process


def catalogue_reads(fake: DispatchFake) -> int:
    """GET /object_info the fake answered so far."""
    return sum(1 for r in fake.requests() if r.method == "GET" and r.path.endswith("/object_info"))


def clients_job(templates: list[list[dict]]) -> dict:
    """One keep-alive client per template, each sending its requests once, in order."""
    return {"threads": len(templates), "warmup": 0, "count": 1, "duration": None,
            "templates": templates, "choices": []}


def wait_done(fakes: list[DispatchFake], count: int, cyl: procs.ServerProcess,
              timeout: float = 600.0) -> None:
    """Wait until `count` prompts sent this run have ended on the fakes."""
    wait_until(lambda: sum(pid in fake.success_at for fake in fakes
                           for pid in list(fake.sent_at)) >= count, timeout,
               f"the jobs did not all end in {timeout:.0f} s; log: {cyl.log_path}", pause=0.05)


def wait_until(done, timeout: float, failure: str, pause: float = 0.02) -> None:
    """Poll `done()` until it is true; RuntimeError(failure) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(failure)
        time.sleep(pause)


def abba(names: list[str], rounds: int):
    """(round, side) in the order they run: the sides' order reversed every other round."""
    for index in range(rounds):
        for name in (names if index % 2 == 0 else names[::-1]):
            yield index, name


def executions(fake: DispatchFake) -> list[Execution]:
    """The prompts sent this run, in the order they ran."""
    status, history = procs.request_json(fake.port, "GET", "/history")
    if status != 200:
        raise RuntimeError(f"GET /history of {fake.url} answered {status}")
    spans = []
    for prompt_id, sent in fake.sent_at.items():
        entry = history[prompt_id]["status"]
        stamps = {event: data["timestamp"] / 1000 for event, data in entry["messages"]}
        if entry["status_str"] != "success":
            raise RuntimeError(f"prompt {prompt_id} on {fake.url} ended {entry['status_str']}")
        spans.append(Execution(stamps["execution_start"], stamps["execution_success"], sent))
    return sorted(spans)


# -- accepting at once ------------------------------------------------------------------------

def accept_all(bench: Bench, fakes: list[DispatchFake]) -> Figure:
    """M GpuId=auto jobs from 32 clients at once against the same through the stack floor."""
    profile = bench.profile.name
    count = ACCEPT_JOBS[profile]
    workflow = workflows.core()
    floor = bench.server(procs.minimal_app(bench.work_dir, comfy_url=fakes[0].url))
    results: dict[str, list[dict]] = {"floor": [], "cylindria": []}
    held: list[int] = []
    for fake in fakes:
        fake.hold = True  # every GPU busy: the jobs wait, none runs
    try:
        for index, name in abba(list(results), ROUNDS[profile]):
            if name == "floor":
                results[name].append(accept_round(bench, floor.port, count, workflow, {},
                                                  lambda k: k % len(fakes)))
            else:
                result, kept = accept_cylindria(bench, fakes, count, workflow, index)
                results[name].append(result)
                held.append(kept)
            clear_queues(fakes)
    finally:
        for fake in fakes:
            fake.hold = False
        floor.stop()
    return accept_figure(count, results, held)


def accept_cylindria(bench: Bench, fakes: list[DispatchFake], count: int, workflow: dict,
                     index: int) -> tuple[dict, int]:
    """One round against a fresh Cylindria: its result, and jobs held + sent after it (every
    accepted job is somewhere)."""
    cyl = start_cylindria(bench, fakes, f"accept-{index}", 2)
    for fake in fakes:
        fake.sent_at.clear()
    try:
        result = accept_round(bench, cyl.port, count, workflow, key_headers(), lambda k: "auto")
        status, ready = procs.request_json(cyl.port, "GET", "/ready")
        kept = ready["queue"]["held"] + sum(len(fake.sent_at) for fake in fakes)
    finally:
        cyl.stop()
    return result, kept


def accept_round(bench: Bench, port: int, count: int, workflow: dict, headers: dict,
                 gpu_of) -> dict:
    """`count` PUT /startjob from ACCEPT_CLIENTS clients at once, each its share in order."""
    tag = uuid.uuid4().hex[:8]
    templates: list[list[dict]] = [[] for _ in range(ACCEPT_CLIENTS)]
    for k in range(count):
        templates[k % ACCEPT_CLIENTS].append(step(
            "PUT", port, f"/startjob/{tag}-{k}?GpuId={gpu_of(k)}", {**headers, **JSON_HEADERS},
            workflow, ok=(201,)))
    return bench.load.run(clients_job(templates))


def accept_figure(count: int, results: dict[str, list[dict]], held: list[int]) -> Figure:
    """Jobs accepted (201) in the worse round, the time to accept them all against the floor's."""
    seconds = {name: [r["elapsed"] for r in rounds] for name, rounds in results.items()}
    accepted = min(r["statuses"].get("201", 0) for r in results["cylindria"])
    errors = sum(r["errors"] for rounds in results.values() for r in rounds)
    cyl, floor = median(seconds["cylindria"]), median(seconds["floor"])
    figure = Figure(
        "dispatch_accept", f"{count:,} GpuId=auto jobs from {ACCEPT_CLIENTS} clients at once, "
        "accepted", f"floor {floor:.2f} s", f"all in {cyl:.2f} s ({count / cyl:.0f}/s)",
        accepted, "jobs", ">=", count,
        {"seconds": seconds, "cylindria_over_floor": cyl / floor,
         "round_ratios": [c / f for c, f in zip(seconds["cylindria"], seconds["floor"])],
         "statuses": {name: [r["statuses"] for r in rounds] for name, rounds in results.items()},
         "first_error": next((r["first_error"] for rounds in results.values() for r in rounds
                              if r["first_error"]), None),
         "held_plus_sent": held, "clients": ACCEPT_CLIENTS,
         "floor_is": "bench.minimal's pass-through PUT /startjob, GpuId cycling 0..3"},
        condition=", zero errors")
    lost = [n for n in held if n != count]
    if errors or lost:
        figure.also = f"{errors} errors" if errors else f"held + sent {lost} of {count}"
    return figure

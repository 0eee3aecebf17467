"""What every figure is built from: the profile, the Figure row, the Bench with its processes,
load-generator jobs and the ratio helpers."""
from __future__ import annotations

import json
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from bench import procs, store
from bench.fakes import TimedFake, close_all, start_fakes
from bench.procs import LoadClient, key_headers
from bench.stats import percentile, pooled, spread
from tests.fake_comfy.costs import real_costs

JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Profile:
    """How much to measure: `full` for the real figures, `quick` for CI (no targets then)."""

    name: str
    rounds: int  # baseline and Cylindria alternate this many times (ABBA), pooled at the end
    latency_samples: int  # per side and round, one client, one request at a time
    warmup: int  # samples per client thread before measuring
    duration: float  # seconds per side and round of a throughput phase
    big_store: int
    small_store: int
    startups: int  # start-ups of each store size
    ws_samples: int
    poll_samples: int
    poll_interval: float


FULL = Profile("full", rounds=6, latency_samples=100, warmup=40, duration=3.0, big_store=100_000,
               small_store=100, startups=3, ws_samples=200, poll_samples=20, poll_interval=1.0)
QUICK = Profile("quick", rounds=1, latency_samples=8, warmup=2, duration=0.4, big_store=2_000,
                small_store=100, startups=1, ws_samples=4, poll_samples=2, poll_interval=0.2)


@dataclass(frozen=True)
class Backend:
    """What the fake ComfyUIs cost: nothing (`instant`: the stack's fixed cost shows) or what
    ComfyUI 0.3.64 costs per route, measured again on this kind of machine (`real-cost`,
    tests/recordings/timings-real.json: what Cylindria adds on top of a real ComfyUI shows).
    See bench/README.md, "Two backends"."""

    name: str  # "instant" | "real-cost", as results.json has it
    costs: dict | None = None  # route key -> seconds (tests.fake_comfy.costs), None: instant
    key_suffix: str = ""  # a figure's key in this mode: base key + suffix
    title_suffix: str = ""  # and its title

    def key(self, base: str) -> str:
        """The figure's key in this mode, e.g. startjob_latency_real."""
        return base + self.key_suffix

    def title(self, base: str) -> str:
        """The figure's title in this mode: instant titles stay as they always were."""
        return base + self.title_suffix

    def costs_ms(self, *keys: str) -> dict:
        """The named routes' costs in ms, for a figure's JSON ({} when instant)."""
        if not self.costs:
            return {}
        return {"fake_costs_ms": {key: self.costs.get(key, 0.0) * 1000 for key in keys}}

    def heading(self) -> str:
        """The line above this mode's rows in the table."""
        if not self.costs:
            return "against the instant fake (answers in well under 1 ms)"
        shown = ", ".join(f"{key} {self.costs[key] * 1000:.2f} ms" for key in PROXIED
                          if key in self.costs)
        return f"against ComfyUI's real costs (one request at a time per fake: {shown})"


PROXIED = ("POST /prompt 200", "GET /queue", "GET /system_stats")  # what the figures call
INSTANT = Backend("instant")


def real_backend() -> Backend:
    """Fakes that cost what ComfyUI costs on this kind of machine (timings-real.json's p50s:
    the lower, honest costs, which do not flatter Cylindria's share)."""
    return Backend("real-cost", real_costs(), "_real", ", fake at real cost")


@dataclass
class Figure:
    """One row of the table. A figure with no `limit` is reported, not a target: it is
    measured and shown, and no longer judged (see bench/README.md, "The figures")."""

    key: str
    title: str
    baseline: str
    measured: str
    value: float  # Cylindria against the baseline (a ratio, or a figure in `unit`)
    unit: str
    op: str  # "<=" or ">="
    limit: float | None  # None: reported only
    details: dict = field(default_factory=dict)
    condition: str = ""  # a further part of the target, e.g. ", zero errors"
    also: str | None = None  # that further part, when it failed (e.g. "3 failed submissions")
    backend: str = "instant"  # what the fakes cost: Backend.name
    over_floor: bool = False  # the target is on Cylindria over the stack floor, not on `value`

    @property
    def judged(self) -> float:
        """The number the target is on: `value`, or Cylindria over the stack floor."""
        return self.details["cylindria_over_floor"] if self.over_floor else self.value

    @property
    def met(self) -> bool | None:
        """Whether the target was reached; None for a reported figure (False if it failed
        its further condition, e.g. a failed submission)."""
        if self.limit is None:
            return None if self.also is None else False
        value = self.judged
        reached = value <= self.limit if self.op == "<=" else value >= self.limit
        return reached and self.also is None

    @property
    def target(self) -> str:
        """The target as the table shows it, e.g. '<= 1.5', '<= 50 ms', '<= 1.2 over floor'."""
        if self.limit is None:
            return "reported" + self.condition
        unit = "" if self.unit == "x" else " " + self.unit
        where = " over floor" if self.over_floor else ""
        return f"{self.op} {self.limit:g}{unit}{where}{self.condition}"

    def as_json(self) -> dict:
        """The row as results.json has it: the figure, its target, and the numbers behind it."""
        return {"title": self.title, "backend": self.backend, "value": self.value,
                "unit": self.unit, "target": self.target, "met": self.met,
                "judged_value": self.judged, "failed_condition": self.also,
                "baseline": self.baseline, "measured": self.measured, **self.details}


class Bench:
    """What every group needs: the profile, a work dir, the load generator, and clean-up."""

    def __init__(self, profile: Profile, work_dir: Path, stack: ExitStack):
        self.profile = profile
        self.work_dir = Path(work_dir)
        self.stack = stack
        self.load = stack.enter_context(LoadClient())

    def server(self, process: procs.ServerProcess) -> procs.ServerProcess:
        """Start a server process; it is stopped with the bench at the latest."""
        self.stack.callback(process.stop)
        return process.start()

    def fakes(self, count: int, cls=TimedFake, **kwargs) -> list:
        """Fake ComfyUIs in this process; closed with the bench at the latest."""
        fakes = start_fakes(count, cls=cls, **kwargs)
        self.stack.callback(close_all, fakes)
        return fakes

    def data_dir(self, name: str, jobs: int = 0) -> Path:
        """A fresh data dir holding `jobs` finished jobs."""
        path = self.work_dir / name / "data"
        return store.fill(path, jobs) if jobs else path

    def alternate(self, jobs: dict, before=None, after=None) -> dict[str, list[dict]]:
        """Run each job once per round, order reversed every other round (ABBA), so a drift
        of the shared machine's speed weighs on both sides alike.

        A job may be a callable returning the job (called after `before(name)`), for sides
        whose server is started afresh each round.
        """
        results: dict[str, list[dict]] = {name: [] for name in jobs}
        names = list(jobs)
        for round_index in range(self.profile.rounds):
            for name in (names if round_index % 2 == 0 else names[::-1]):
                if before is not None:
                    before(name)
                job = jobs[name]() if callable(jobs[name]) else jobs[name]
                try:
                    results[name].append(self.load.run(job))
                finally:
                    if after is not None:
                        after(name)
        return results


class FreshCylindria:
    """A Cylindria started with a new, empty data dir for every round, stopped after it: the
    jobs one round leaves queued never weigh on the next."""

    def __init__(self, bench: Bench, comfy_url: str, gpus: int = 1, extra=tuple):
        self.bench, self.comfy_url, self.gpus = bench, comfy_url, gpus
        self.extra = extra  # called at every start: more flags (e.g. a fresh --database)
        self.process: procs.ServerProcess | None = None
        self._n = 0

    @property
    def port(self) -> int:
        """The running one's port."""
        return self.process.port

    def start(self) -> procs.ServerProcess:
        """A new Cylindria on a new data dir, once its websockets are up."""
        self._n += 1
        data_dir = self.bench.data_dir(f"fresh-{id(self)}-{self._n}")
        self.process = self.bench.server(procs.cylindria(self.comfy_url, data_dir, gpus=self.gpus,
                                                         extra=self.extra()))
        wait_websockets(self.process, self.gpus)
        return self.process

    def stop(self) -> None:
        """Stop the running one, if any."""
        if self.process is not None:
            self.process.stop()
            self.process = None


def clear_queues(fakes: list) -> None:
    """Empty the fakes' queues (POST /queue clear), as an operator would between runs."""
    for fake in fakes:
        status, body = procs.request_json(fake.port, "POST", "/queue", {"clear": True})
        if status != 200:
            raise RuntimeError(f"clearing the queue of {fake.url} answered {status}")


def step(method: str, port: int, path: str, headers: dict | None = None, body=None,
         ok: tuple = (200,)) -> dict:
    """One request of a load-generator sample."""
    if body is not None and not isinstance(body, str):
        body = json.dumps(body)
    return {"method": method, "port": port, "path": path, "headers": headers or {}, "body": body,
            "ok": list(ok)}


def latency_job(bench: Bench, templates: list, choices: list | None = None) -> dict:
    """One client, one request at a time."""
    return {"threads": 1, "warmup": bench.profile.warmup,
            "count": bench.profile.latency_samples, "duration": None,
            "templates": templates, "choices": choices or []}


def throughput_job(bench: Bench, threads: int, templates: list,
                   choices: list | None = None) -> dict:
    """`threads` keep-alive clients as fast as they can for the profile's duration."""
    return {"threads": threads, "warmup": bench.profile.warmup, "count": None,
            "duration": bench.profile.duration, "templates": templates, "choices": choices or []}


def check_errors(name: str, result: dict) -> None:
    """A benchmark of failing requests measures nothing: stop with the first error."""
    if result["errors"]:
        raise RuntimeError(f"{name}: {result['errors']} failed requests, first: "
                           f"{result['first_error']}; statuses {result['statuses']}")


def p50_ratio(key: str, title: str, results: dict[str, list[dict]], limit: float | None,
              base: str = "baseline", target: str = "cylindria", over_floor: bool = False) -> Figure:
    """p50 latency of `target` over p50 of `base`, pooled over rounds (the target on that,
    or with `over_floor` on `target` over the "floor" side's p50)."""
    for name, rounds in results.items():
        check_errors(f"{key} ({name})", pooled(rounds))
    p50 = {name: percentile(pooled(rounds)["latencies"], 50) for name, rounds in results.items()}
    per_round = [percentile(t["latencies"], 50) / percentile(b["latencies"], 50)
                 for b, t in zip(results[base], results[target])]
    return Figure(key, title, f"{p50[base] * 1000:.2f} ms", f"{p50[target] * 1000:.2f} ms",
                  p50[target] / p50[base], "x", "<=", limit,
                  {"baseline_p50_ms": p50[base] * 1000, "cylindria_p50_ms": p50[target] * 1000,
                   "baseline_p99_ms": percentile(pooled(results[base])["latencies"], 99) * 1000,
                   "cylindria_p99_ms": percentile(pooled(results[target])["latencies"], 99) * 1000,
                   "round_ratios": per_round, "round_spread": spread(per_round),
                   **_floor(p50.get("floor"), p50[base], p50[target], "p50_ms", 1000)},
                  over_floor=over_floor)


def _floor(floor: float | None, base: float, cyl: float, unit: str, scale: float) -> dict:
    """The stack floor's figures, when it was measured: floor/baseline and Cylindria/floor."""
    if floor is None:
        return {}
    return {f"floor_{unit}": floor * scale, "floor_ratio": floor / base,
            "cylindria_over_floor": cyl / floor}


def throughput_ratio(key: str, title: str, results: dict[str, list[dict]], limit: float | None,
                     over_floor: bool = False) -> Figure:
    """Requests per second of Cylindria over the baseline's, pooled over rounds (the target
    on that, or with `over_floor` on Cylindria over the "floor" side's)."""
    base, cyl = pooled(results["baseline"]), pooled(results["cylindria"])
    per_round = [t["throughput"] / b["throughput"]
                 for b, t in zip(results["baseline"], results["cylindria"])]
    return Figure(key, title, f"{base['throughput']:.0f} req/s", f"{cyl['throughput']:.0f} req/s",
                  cyl["throughput"] / base["throughput"], "x", ">=", limit,
                  {"baseline_rps": base["throughput"], "cylindria_rps": cyl["throughput"],
                   "baseline_errors": base["errors"], "cylindria_errors": cyl["errors"],
                   "cylindria_statuses": cyl["statuses"],
                   "cylindria_first_error": cyl["first_error"],
                   "cylindria_p50_ms": percentile(cyl["latencies"], 50) * 1000,
                   "baseline_p50_ms": percentile(base["latencies"], 50) * 1000,
                   "round_ratios": per_round, "round_spread": spread(per_round),
                   **_floor(pooled(results["floor"])["throughput"] if "floor" in results else None,
                            base["throughput"], cyl["throughput"], "rps", 1)},
                  over_floor=over_floor)


def wait_websockets(cyl: procs.ServerProcess, gpus: int = 1, timeout: float = 20.0) -> None:
    """Wait until Cylindria's websocket to every GPU is up (each connect starts a reconciliation,
    which should not land in a measurement)."""
    deadline = time.monotonic() + timeout
    pending = set(range(gpus))
    while time.monotonic() < deadline:
        for gpu in sorted(pending):
            status, body = procs.request_json(cyl.port, "GET", f"/serverstatus?GpuId={gpu}",
                                              None, key_headers())
            if body.get("websocket") == "connected":
                pending.discard(gpu)
        if not pending:
            return
        time.sleep(0.05)
    raise RuntimeError(f"Cylindria's websockets to GPUs {sorted(pending)} never connected")

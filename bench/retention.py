"""The retention group: a data dir holding 1,000,000 finished jobs that ended 40 days ago,
served with `--retention 30d`, against an empty one.

- First start: the expired rows are not loaded (JobRows.load skips them), so start-up and
  memory should be an empty store's; the sweep then deletes them in the background.
- While the sweep works through the backlog: GET /jobstatus p99 (keep-alive clients on one
  live job) against the same server once the sweep is done, measured in the same run.
- After the sweep: the same process's memory, and a restart on the swept data dir (start-up
  and memory), against an empty store.
"""
from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from bench import procs, store
from bench.core import Bench, Figure, check_errors, step
from bench.procs import key_headers
from bench.stats import median, percentile, pooled
from comfy.jobs.retention import RetentionSweep
from cylindria.storage import DB_FILE_NAME

DAY = 86400.0
RETENTION = "30d"
AGE = 40 * DAY  # the expired jobs ended this long before the run
EXPIRED = {"full": 1_000_000, "quick": 2_000}  # expired jobs in the data dir, by profile
CLIENTS = 4  # keep-alive clients polling /jobstatus during and after the sweep
PER_ROUND = {"full": 100, "quick": 10}  # requests per client and round
AFTER_ROUNDS = {"full": 30, "quick": 1}  # rounds per side after the sweep (at most)
STARTS = {"full": 7, "quick": 1}  # starts per side, ABBA: a start-up differs by ~0.05 s
SWEEP_TIMEOUT = {"full": 900.0, "quick": 60.0}  # seconds the bench waits for the sweep
SETTLE = 0.5  # seconds between /health answering and reading RSS, as the store group does
ORDER = ("retention_startup_first", "retention_rss_first", "retention_sweep",
         "retention_jobstatus_p99", "retention_rss_swept", "retention_startup_swept",
         "retention_rss_restart")  # the rows of this group, in the table's order
REMOVED = re.compile(rb"^cylindria_jobs_removed_total\{[^}]*\} (\S+)$", re.M)


def retention_figures(bench: Bench) -> list[Figure]:
    """Start-up and RSS on the first start and after the sweep, /jobstatus p99 during it."""
    profile = bench.profile
    count, reps = EXPIRED[profile.name], STARTS[profile.name]
    fake = bench.fakes(1)[0]
    live = store.job_id(count)  # one job that ended an hour ago: kept, polled by the clients
    now = time.time()
    empty = store.bulk_fill(bench.work_dir / "retention-empty" / "data", 1, now - 3600, count)
    filled = time.perf_counter()
    pristine = store.bulk_fill(bench.work_dir / "retention-pristine" / "data", count, now - AGE)
    store.bulk_fill(pristine, 1, now - 3600, count)
    fill_seconds = time.perf_counter() - filled

    # (a) First starts, each big one on its own copy of the 40-day-old store; the last big
    # start keeps running: its sweep is the one measured.
    first = timed_starts(bench, fake.url, {
        "empty": lambda rep, kept: empty,
        "big": lambda rep, kept: copy_store(pristine, bench.work_dir / f"retention-first-{rep}"
                                            / "data", move=kept)}, reps, keep="big")
    process = first.kept

    # (b) The sweep under way: /jobstatus rounds back to back until every expired row is gone.
    during, sweep = sweep_rounds(bench, process, live, count, first.kept_since)
    sweep.update(fill_seconds=fill_seconds, expired_jobs=count)

    # (c) After the sweep: the same server against an empty one, round by round (ABBA).
    baseline = bench.server(cylindria(fake.url, empty))
    time.sleep(SETTLE)
    after = {"swept": [], "empty": []}
    for index in range(min(AFTER_ROUNDS[profile.name], max(1, len(during)))):
        for kind in (("swept", "empty") if index % 2 == 0 else ("empty", "swept")):
            server = process if kind == "swept" else baseline
            after[kind].append(bench.load.run(status_job(bench, server.port, live)))
    rss_after = {"swept": rss_reads(process), "empty": rss_reads(baseline)}
    process.stop()
    baseline.stop()

    # (d) Restarts: the swept data dir against the empty one.
    swept = Path(process.args[process.args.index("--data-dir") + 1])
    restart = timed_starts(bench, fake.url, {"empty": lambda rep, kept: empty,
                                             "swept": lambda rep, kept: swept}, reps)

    return [
        ratio("retention_startup_first", f"start-up, {count:,} expired jobs (first start)",
              first.startup["empty"], first.startup["big"], "s"),
        ratio("retention_rss_first", f"RSS, {count:,} expired jobs (first start)",
              first.rss["empty"], first.rss["big"], "MiB"),
        Figure("retention_sweep", f"sweep of {count:,} expired jobs (under /jobstatus load)",
               f"pauses {sweep['pauses_seconds']:.1f} s", f"{sweep['jobs_per_second']:.0f} jobs/s",
               sweep["seconds"], "s", "<=", SWEEP_TIMEOUT[profile.name], sweep),
        p99_ratio(count, during, after),
        ratio("retention_rss_swept", f"RSS after the sweep of {count:,} (same process)",
              rss_after["empty"], rss_after["swept"], "MiB",
              {"note": "both servers after the same /jobstatus rounds; the baseline is an "
                       "empty store started after the sweep"}),
        ratio("retention_startup_swept", f"start-up after the sweep of {count:,} (restart)",
              restart.startup["empty"], restart.startup["swept"], "s"),
        ratio("retention_rss_restart", f"RSS after the sweep of {count:,} (restart)",
              restart.rss["empty"], restart.rss["swept"], "MiB"),
    ]


@dataclass
class Starts:
    """Start-ups (spawn to the first /health 200, seconds) and RSS (bytes, SETTLE s later) per
    side; the server left running, and when it was spawned (time.perf_counter())."""

    startup: dict[str, list[float]]
    rss: dict[str, list[int]]
    kept: procs.ServerProcess | None = None
    kept_since: float = 0.0


def timed_starts(bench: Bench, comfy_url: str, sides: dict, reps: int,
                 keep: str | None = None) -> Starts:
    """`reps` starts of each side, ABBA; `sides`: name -> function(rep, kept) -> its data dir.

    With `keep`, that side's last start is the run's last and is left running; its other data
    dirs are copies made for one start each, removed once their server has stopped.
    """
    names = list(sides)
    starts = Starts({name: [] for name in names}, {name: [] for name in names})
    for rep in range(reps):
        order = names if rep % 2 == 0 else names[::-1]
        if keep is not None and rep == reps - 1:
            order = [name for name in names if name != keep] + [keep]
        for name in order:
            kept = name == keep and rep == reps - 1
            data_dir = sides[name](rep, kept)
            process = bench.server(cylindria(comfy_url, data_dir))
            spawned = time.perf_counter() - process.startup_seconds
            starts.startup[name].append(process.startup_seconds)
            time.sleep(SETTLE)  # as the store group: the start-up's garbage collected first
            starts.rss[name].append(process.rss())
            if kept:
                starts.kept, starts.kept_since = process, spawned
                continue
            process.stop()
            if keep is not None and name == keep:
                shutil.rmtree(data_dir.parent, ignore_errors=True)
    return starts


def cylindria(comfy_url: str, data_dir: Path) -> procs.ServerProcess:
    """Cylindria with `--retention 30d` (the default, said out loud), not yet started."""
    process = procs.cylindria(comfy_url, data_dir)
    process.args += ["--retention", RETENTION]
    return process


def copy_store(source: Path, data_dir: Path, move: bool = False) -> Path:
    """A new data dir holding `source`'s database (moved instead of copied the last time)."""
    data_dir.mkdir(mode=0o700, parents=True)
    (shutil.move if move else shutil.copy2)(source / DB_FILE_NAME, data_dir / DB_FILE_NAME)
    return data_dir


def removed_total(port: int) -> int:
    """The sum of cylindria_jobs_removed_total over every GPU and status (/metrics)."""
    status, body = procs.get(port, "/metrics", key_headers(), timeout=30.0)
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    return int(sum(float(value) for value in REMOVED.findall(body)))


def status_job(bench: Bench, port: int, job_id: str) -> dict:
    """One round: CLIENTS keep-alive clients, PER_ROUND requests each, on one live job."""
    return {"threads": CLIENTS, "warmup": min(bench.profile.warmup, 10),
            "count": PER_ROUND[bench.profile.name], "duration": None,
            "templates": [[step("GET", port, f"/jobstatus/{job_id}", key_headers())]],
            "choices": []}


def sweep_rounds(bench: Bench, process: procs.ServerProcess, job_id: str, count: int,
                 began: float) -> tuple[list[dict], dict]:
    """/jobstatus rounds back to back while the sweep runs; the rounds that ended before it
    was done, and how long it took (from spawn; known to within one round).

    A round during which the sweep ended is left out; if that was the first (a tiny store,
    --quick), it is the only round kept, so that the figure still has numbers.
    """
    deadline = began + SWEEP_TIMEOUT[bench.profile.name]
    during, rss = [], []
    seen_undone = began
    while True:
        result = bench.load.run(status_job(bench, process.port, job_id))
        removed = removed_total(process.port)
        checked = time.perf_counter()
        rss.append(process.rss())
        if removed >= count:
            break
        during.append(result)
        seen_undone = checked
        if checked > deadline:
            raise RuntimeError(f"the retention sweep removed {removed:,} of {count:,} expired "
                               f"jobs in {checked - began:.0f} s; log: {process.log_path}")
    rounds_during = len(during)
    if not during:
        during = [result]
    seconds = checked - began
    pauses = count // RetentionSweep.BATCH * RetentionSweep.PAUSE  # the pacing alone
    return during, {"seconds": seconds, "seconds_at_least": seen_undone - began,
                    "jobs_per_second": count / seconds, "pauses_seconds": pauses,
                    "rounds_during_sweep": rounds_during, "rss_during_mib":
                    [r / 2**20 for r in rss], "removed": removed}


def rss_reads(process: procs.ServerProcess, reads: int = 5) -> list[int]:
    """A few RSS reads 0.1 s apart (the figure takes their median)."""
    values = []
    for _ in range(reads):
        values.append(process.rss())
        time.sleep(0.1)
    return values


def ratio(key: str, title: str, base: list[float], measured: list[float], unit: str,
          details: dict | None = None) -> Figure:
    """Median of `measured` over median of `base` (seconds or bytes), target <= 1.1."""
    scale, shown = (2**20, "MiB") if unit == "MiB" else (1.0, "s")
    b, m = median(base), median(measured)
    return Figure(key, title, f"{b / scale:.2f} {shown}", f"{m / scale:.2f} {shown}", m / b, "x",
                  "<=", 1.1, {"baseline_values": base, "measured_values": measured,
                              "values_in": "bytes" if unit == "MiB" else "s",
                              **(details or {})})


def p99_ratio(count: int, during: list[dict], after: dict[str, list[dict]]) -> Figure:
    """/jobstatus p99 while the sweep runs over the same server's p99 after it."""
    sides = {"during": during, **after}
    for name, rounds in sides.items():
        check_errors(f"retention /jobstatus ({name})", pooled(rounds))
    lat = {kind: pooled(rounds)["latencies"] for kind, rounds in sides.items()}
    p99 = {kind: percentile(values, 99) for kind, values in lat.items()}
    p50 = {kind: percentile(values, 50) for kind, values in lat.items()}
    per_round = {kind: [percentile(r["latencies"], 99) * 1000 for r in rounds]
                 for kind, rounds in sides.items()}
    return Figure(
        "retention_jobstatus_p99",
        f"GET /jobstatus p99 during the sweep, {CLIENTS} clients",
        f"{p99['swept'] * 1000:.2f} ms after", f"{p99['during'] * 1000:.2f} ms",
        p99["during"] / p99["swept"], "x", "<=", 1.2,
        {**{f"{kind}_p99_ms": v * 1000 for kind, v in p99.items()},
         **{f"{kind}_p50_ms": v * 1000 for kind, v in p50.items()},
         **{f"{kind}_samples": len(v) for kind, v in lat.items()},
         "during_over_empty": p99["during"] / p99["empty"],
         "swept_over_empty": p99["swept"] / p99["empty"],
         "round_p99_ms": per_round, "expired_jobs": count,
         "baseline_is": "the same server after its sweep; 'empty_*': an empty store's server "
                        "measured in alternation with it"})

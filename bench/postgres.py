"""The postgres group: Cylindria on PostgreSQL against the same Cylindria on SQLite (its
default), in the same run, the sides alternating (ABBA), on fakes that cost what ComfyUI costs
(bench.core.real_backend()).

- PUT /startjob p50 (core workflow, one client, the GPU busy so only the submit path is timed,
  a fresh Cylindria with a fresh data dir and, on PostgreSQL, a fresh database every round):
  PostgreSQL over SQLite, target <= 1.3.
- GET /jobstatus throughput (16 keep-alive clients over a store of 100 finished jobs, the
  same on both): PostgreSQL over SQLite, target >= 0.9 (reads come from memory on both).
- Makespan with GpuId=auto (bench.dispatch's runs: log-normal jobs on 4 GPUs, each run's
  makespan over its own lower bound): PostgreSQL over SQLite, target <= 1.02.

PostgreSQL is a throwaway cluster of the bench's own (tests.postgres.PostgresCluster: initdb
in a temporary directory, a free loopback port, fsync off as in the tests), stopped at the
group's end. Both engines run on this one host, so PostgreSQL's own processes share its
cores with Cylindria, the fakes and the load generator.
"""
from __future__ import annotations

import itertools
import time

from bench import procs, store
from bench.core import (JSON_HEADERS, Bench, Figure, FreshCylindria, check_errors, clear_queues,
                        latency_job, p50_ratio, real_backend, step, throughput_job,
                        throughput_ratio)
from bench.dispatch import GPUS, JOBS, ROUNDS, STEPS, DispatchFake, abba, durations, timed_run
from bench.procs import key_headers
from bench.stats import median, pooled
from cylindria.storage import open_url
from tests import workflows
from tests.postgres import PostgresCluster

SUBMIT_LIMIT, STATUS_LIMIT, MAKESPAN_LIMIT = 1.3, 0.9, 1.02
SIDES = ("sqlite", "postgresql")
ORDER = ("postgres_startjob_latency", "postgres_jobstatus_throughput", "postgres_makespan")


class Databases:
    """Fresh PostgreSQL databases of one cluster, each a --database flag pair."""

    def __init__(self, cluster: PostgresCluster):
        self.cluster = cluster
        self._n = itertools.count()

    def fresh(self) -> tuple[str, str]:
        """The flags of a new, empty database."""
        return ("--database", self.cluster.create_database(f"bench_{next(self._n)}"))


def postgres_figures(bench: Bench) -> list[Figure]:
    """Submit latency, status throughput and makespan: PostgreSQL over SQLite."""
    cluster = PostgresCluster().start()
    bench.stack.callback(cluster.close)
    databases = Databases(cluster)
    figures = [startjob_latency(bench, databases), jobstatus_throughput(bench, databases),
               makespan(bench, databases)]
    backend = real_backend()
    for figure in figures:  # as bench.figures.mark notes it (which imports this module)
        figure.backend = backend.name
        figure.details.update(backend.costs_ms("POST /prompt 200"))
    return figures


def startjob_latency(bench: Bench, databases: Databases) -> Figure:
    """One client's PUT /startjob p50, a fresh Cylindria of each side every round."""
    fake = bench.fakes(1, costs=real_backend().costs)[0]
    fake.hold = True  # the GPU is busy: prompts queue up, only the submit path is timed
    fresh = {"sqlite": FreshCylindria(bench, fake.url),
             "postgresql": FreshCylindria(bench, fake.url, extra=databases.fresh)}
    workflow, headers = workflows.core(), {**key_headers(), **JSON_HEADERS}

    def job(side: str):
        return lambda: latency_job(bench, [[step("PUT", fresh[side].port,
                                                 "/startjob/{uid}?GpuId=0", headers, workflow,
                                                 ok=(201,))]])
    results = bench.alternate({side: job(side) for side in SIDES},
                              before=lambda side: fresh[side].start(),
                              after=lambda side: (fresh[side].stop(), clear_queues([fake])))
    return p50_ratio("postgres_startjob_latency",
                     "PUT /startjob p50, PostgreSQL over SQLite, fake at real cost", results,
                     SUBMIT_LIMIT, base="sqlite", target="postgresql")


def jobstatus_throughput(bench: Bench, databases: Databases) -> Figure:
    """16 keep-alive clients on /jobstatus of the same 100 finished jobs on each side."""
    count = bench.profile.small_store
    fake = bench.fakes(1, costs=real_backend().costs)[0]
    flags = databases.fresh()
    fill(flags[1], count)
    servers = {"sqlite": bench.server(procs.cylindria(fake.url, bench.data_dir("pg-sqlite", count))),
               "postgresql": bench.server(procs.cylindria(fake.url, bench.data_dir("pg-pg"),
                                                          extra=flags))}
    ids = [store.job_id(n) for n in range(count)]
    results = bench.alternate({
        side: throughput_job(bench, 16, [[step("GET", server.port, "/jobstatus/{pick}",
                                               key_headers())]], ids)
        for side, server in servers.items()})
    for server in servers.values():
        server.stop()
    for side, rounds in results.items():
        check_errors(f"postgres jobstatus throughput ({side})", pooled(rounds))
    figure = throughput_ratio("postgres_jobstatus_throughput",
                              "GET /jobstatus throughput, 16 clients, PostgreSQL over SQLite",
                              {"baseline": results["sqlite"], "cylindria": results["postgresql"]},
                              STATUS_LIMIT)
    figure.details["sides"] = {"baseline": "sqlite", "cylindria": "postgresql"}
    return figure


def fill(url: str, count: int) -> None:
    """`count` finished jobs (bench.store's) in a PostgreSQL database."""
    storage = open_url(url)
    now = time.time()
    try:
        for n in range(count):
            storage.jobs.insert(store.finished_job(n, now), b"{}")
    finally:
        storage.close()


def makespan(bench: Bench, databases: Databases) -> Figure:
    """GpuId=auto's makespan over its run's lower bound, PostgreSQL over SQLite (medians)."""
    profile = bench.profile.name
    fakes = bench.fakes(GPUS, cls=DispatchFake, costs=real_backend().costs)
    seconds = durations(JOBS[profile])
    runs: dict[str, list] = {side: [] for side in SIDES}
    for index, side in abba(list(SIDES), ROUNDS[profile]):
        jobs = [("auto", workflows.slow(s, STEPS, prefix=f"pg_{k}")) for k, s in enumerate(seconds)]
        extra = databases.fresh() if side == "postgresql" else ()
        runs[side].append(timed_run(bench, fakes, jobs, 2, f"pg-{side}-{index}", extra=extra))
    over_bound = {side: [run.makespan / run.bound for run in side_runs]
                  for side, side_runs in runs.items()}
    sqlite, postgresql = median(over_bound["sqlite"]), median(over_bound["postgresql"])
    return Figure(
        "postgres_makespan", f"makespan, {len(seconds)} GpuId=auto jobs on {GPUS} GPUs, "
        "PostgreSQL over SQLite", f"SQLite {sqlite:.3f}x its bound",
        f"PostgreSQL {postgresql:.3f}x its bound", postgresql / sqlite, "x", "<=", MAKESPAN_LIMIT,
        {"over_bound": over_bound, "statistic": "median over rounds of makespan / bound",
         "makespan_s": {side: [run.makespan for run in r] for side, r in runs.items()},
         "bound_s": {side: [run.bound for run in r] for side, r in runs.items()},
         "submit_s": {side: [run.submit_seconds for run in r] for side, r in runs.items()},
         "jobs": len(seconds)})

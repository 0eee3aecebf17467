"""Run the benchmarks, print one table, write bench/results.json.

python -m bench            the full run (a few minutes)
python -m bench --quick    a few seconds, for CI: proves the benchmark still runs; no targets
python bench/run.py ...    the same

The proxy and submit groups run twice by default: against the instant fake, and against
fakes that cost what ComfyUI costs on this kind of machine (timings-real.json; --backend
picks one).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.core import FULL, INSTANT, QUICK, Backend, Bench, Figure, real_backend  # noqa: E402
from bench.figures import COSTED, GROUPS, ORDER  # noqa: E402
from tests.fake_comfy.costs import REAL_TIMINGS  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="tiny samples: checks that everything runs (CI); targets not judged")
    parser.add_argument("--only", action="append", choices=sorted(GROUPS),
                        help="run only this group of figures (repeatable)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, data dirs)")
    parser.add_argument("--backend", choices=("instant", "real", "both"), default="both",
                        help="what the fakes cost in the proxy and submit groups: nothing, "
                             "ComfyUI's real costs (timings-real.json), or both, one after the "
                             "other (default)")
    return parser.parse_args(argv)


def plan(groups: list[str], backend: str) -> list[tuple[str, Backend]]:
    """(group, backend) in the order they run: each group against the instant fake, then, if
    it has that mode, against the real-cost fakes. The other groups (store, completion,
    retention) do not call ComfyUI on the timed path: they have no real-cost mode, and
    `--backend real` leaves them out."""
    real = real_backend() if backend != "instant" else None
    runs = []
    for name in groups:
        if backend != "real":
            runs.append((name, INSTANT))
        if real is not None and name in COSTED:
            runs.append((name, real))
    return runs


def machine() -> dict:
    """What the figures were measured on."""
    return {"cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "machine": platform.machine()}


def format_table(figures: list[Figure], quick: bool, headings: dict[str, str] | None = None) -> str:
    """The figures as a plain-text table; the rows of each backend but the instant one under
    a line of their own (`headings`: backend name -> that line). "stack floor" is the floor
    over the baseline, "over floor" Cylindria over the floor (what Cylindria itself adds)."""
    header = ("figure", "baseline", "Cylindria", "result", "target", "met", "stack floor",
              "over floor")
    rows = [(f.title, f.baseline, f.measured, _value(f), f.target, _met(f, quick),
             _ratio(f.details.get("floor_ratio")), _ratio(f.details.get("cylindria_over_floor")))
            for f in figures]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(row) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()
    lines = [line(header), line(["-" * w for w in widths])]
    shown = INSTANT.name
    for figure, row in zip(figures, rows):
        if figure.backend != shown:
            shown = figure.backend
            lines += ["", (headings or {}).get(shown, shown)]
        lines.append(line(row))
    return "\n".join(lines)


def _cost_table(backends) -> dict:
    """The real costs the costed fakes used, in ms per route key, for results.json."""
    for backend in backends:
        if backend.costs:
            return {"real_costs_ms": {k: v * 1000 for k, v in backend.costs.items()},
                    "real_costs_source": f"tests/recordings/{REAL_TIMINGS} "
                                         "(tests.fake_comfy.costs.real_costs)"}
    return {}


def _met(figure: Figure, quick: bool) -> str:
    """yes / NO (and why), - for a reported figure, or (quick) when targets are not judged."""
    verdict = "(quick)" if quick else {True: "yes", False: "NO", None: "-"}[figure.met]
    return verdict + (f" ({figure.also})" if figure.also else "")


def _ratio(value: float | None) -> str:
    """A ratio column's cell: 1.23x, or empty when the figure has no such ratio."""
    return "" if value is None else f"{value:.2f}x"


def _value(figure: Figure) -> str:
    """The figure's value with its unit."""
    if figure.unit == "x":
        return f"{figure.value:.2f}x"
    return f"{figure.value:.2f} {figure.unit}"


def main(argv: list[str] | None = None) -> int:
    """Run the chosen groups, print the table and write the JSON."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    profile = QUICK if args.quick else FULL
    runs = plan(args.only or list(GROUPS), args.backend)
    if not runs:
        print(f"nothing to run: groups {', '.join(COSTED)} are the ones with a real-cost mode")
        return 2
    backends = {backend.name: backend for _, backend in runs}
    work_dir = Path(tempfile.mkdtemp(prefix="cylindria-bench-"))
    started = time.perf_counter()
    figures: list[Figure] = []
    print(f"Cylindria benchmark ({profile.name}), {os.cpu_count()} cores; work dir {work_dir}",
          flush=True)
    try:
        with ExitStack() as stack:
            bench = Bench(profile, work_dir, stack)
            for name, backend in runs:
                began = time.perf_counter()
                group = GROUPS[name]
                figures += group(bench) if backend is INSTANT else group(bench, backend)
                print(f"  {name} ({backend.name}): {time.perf_counter() - began:.1f} s",
                      flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work_dir, ignore_errors=True)
    figures.sort(key=lambda f: ORDER.index(f.key))
    elapsed = time.perf_counter() - started
    judged = [f for f in figures if f.limit is not None]
    met = sum(bool(f.met) for f in judged)
    print()
    print(format_table(figures, args.quick, {n: b.heading() for n, b in backends.items()}))
    print(f"\n{len(figures)} figures in {elapsed:.0f} s on {os.cpu_count()} cores"
          + ("" if args.quick else f"; {met} of {len(judged)} targets met"))
    result = {"mode": profile.name, "machine": machine(), "seconds": elapsed,
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "targets_judged": not args.quick, "backends": sorted(backends),
              **_cost_table(backends.values()),
              "figures": {f.key: f.as_json() for f in figures}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What each HTTP route cost the recorded ComfyUI 0.3.64, read from tests/recordings at run time.

    costs = recorded_costs()                      # {"POST /prompt 200": 0.0057, "GET /queue": ...}
    cost_of(costs, "GET", "/history/abc", 200)    # seconds, 0.0 for a route with no cost

A route key is "METHOD /path": query strings and the /api prefix are dropped, path parameters
become a placeholder (/history/{id}, /object_info/{class}). POST /prompt also carries the
status ("POST /prompt 200", "POST /prompt 400"): a refused prompt stops at validation and
costs less than an accepted one. A key's cost is the median `elapsed_ms` of its recorded
HTTP events, or, where http-samples.json's `timing` event measured the path 50 times, the
median it gives (several timing paths of one key, e.g. /history and /history?max_items=1:
the median of their medians). Nothing here is a hard-coded number: new recordings give new
costs.

    costs = real_costs()                          # {"POST /prompt 200": 0.0011, ...}

`real_costs()` reads timings-real.json instead: ComfyUI measured again, one instance on a
quiet machine, p50 per route, lower than the first session's medians (recorded with two
instances busy on the same cores). A fake that claims to model ComfyUI should use these, so
that Cylindria's own share is not flattered. A route it did not measure costs nothing there
(a refused POST /prompt, /view, ...). `cost_table(name)` maps the names the CLI and
FakeComfy(costs=...) accept ("none", "recorded", "real") onto these tables.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

RECORDINGS = Path(__file__).resolve().parents[1] / "recordings"
STATUS_KEYED = frozenset({"POST /prompt"})  # routes whose cost depends on the answer's status
PLACEHOLDERS = {"history": "{id}", "object_info": "{class}"}  # /history/<id> -> /history/{id}
REAL_TIMINGS = "timings-real.json"
# Recorded in the second session (2026-12-01, see README.md) on a quieter machine: its costs
# are timings-real.json's (real_costs()); its single samples would move the first session's
# medians, which recorded_costs() stands for (the bench now uses real_costs(): bench/README.md).
LATER_SESSION = frozenset({"scenario-upload-loadimage.json"})
# "POST /prompt (core workflow, accepted)": method, path, optional note in parentheses
ROUTE_NAME = re.compile(r"(?P<method>[A-Z]+) (?P<path>/\S*)(?: \((?P<note>[^)]*)\))?")
REFUSED_WORDS = ("refused", "rejected", "invalid")  # a note saying the prompt was not queued


def route_key(method: str, path: str, status: int | None = None) -> str:
    """The key of a request: "GET /history/{id}", "POST /prompt 400".

    The same normalisation serves the recordings and the fake's requests, so a live
    request finds the key its recorded counterpart was filed under.
    """
    path = urlsplit(path).path or "/"
    if path == "/api" or path.startswith("/api/"):
        path = path[4:] or "/"  # ComfyUI serves every route under /api too
    parts = path.split("/")
    if len(parts) == 3 and parts[1] in PLACEHOLDERS and parts[2]:
        path = f"/{parts[1]}/{PLACEHOLDERS[parts[1]]}"
    key = f"{method.upper()} {path}"
    return f"{key} {status}" if key in STATUS_KEYED and status is not None else key


def recorded_costs(folder: Path | str = RECORDINGS,
                   skip: frozenset[str] = LATER_SESSION) -> dict[str, float]:
    """Seconds per route key, from every recording file in `folder` but `skip` (module doc)."""
    samples: dict[str, list[float]] = defaultdict(list)
    timed: dict[str, list[float]] = defaultdict(list)
    for events in _recordings(Path(folder), skip):
        for event in events:
            if event.get("channel") == "http":
                _add_http(samples, event)
            elif event.get("channel") == "timing":
                _add_timing(timed, event)
    costs = {key: statistics.median(values) / 1000.0 for key, values in samples.items()}
    costs.update({key: statistics.median(values) / 1000.0 for key, values in timed.items()})
    return dict(sorted(costs.items()))


def _recordings(folder: Path, skip: frozenset[str]) -> list[list[dict]]:
    """The event lists of the folder's *.json files; dicts (workflows, object-info.json,
    timings-real.json) are no event lists and are left out, as are the `skip` files."""
    lists = []
    for path in sorted(folder.glob("*.json")):
        if path.name in skip:
            continue
        events = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(events, list):
            lists.append(events)
    return lists


def _add_http(samples: dict[str, list[float]], event: dict) -> None:
    """One recorded exchange; requests that got no answer (server killed) have no cost."""
    elapsed, status = event.get("elapsed_ms"), event.get("status")
    if elapsed is None or status is None:
        return
    request = event["request"]
    samples[route_key(request["method"], request["path"], status)].append(float(elapsed))


def _add_timing(timed: dict[str, list[float]], event: dict) -> None:
    """A `timing` event: medians over many GETs per path, better than the single samples."""
    for result in event.get("data", {}).get("results", []):
        if "median_ms" in result and "path" in result:
            timed[route_key("GET", result["path"], 200)].append(float(result["median_ms"]))


def real_costs(path: Path | str = RECORDINGS / REAL_TIMINGS) -> dict[str, float]:
    """Seconds per route key from timings-real.json's p50s (routes measured in several
    situations, e.g. a finished and an unknown /history/{id}: the median of their p50s)."""
    routes = json.loads(Path(path).read_text(encoding="utf-8"))["routes"]
    timed: dict[str, list[float]] = defaultdict(list)
    for name, timing in routes.items():
        timed[timing_key(name)].append(float(timing["p50_ms"]))
    return dict(sorted((key, statistics.median(values) / 1000.0) for key, values in timed.items()))


def timing_key(name: str) -> str:
    """The route key of a timings-real.json name: "POST /prompt (core workflow, accepted)"
    -> "POST /prompt 200", "GET /history/{id} (unknown)" -> "GET /history/{id}"."""
    match = ROUTE_NAME.fullmatch(name.strip())
    if match is None:
        raise ValueError(f"not a route name: {name!r}")
    note = (match["note"] or "").lower()
    status = 400 if any(word in note for word in REFUSED_WORDS) else 200
    return route_key(match["method"], match["path"], status)


COST_TABLES: dict[str, Callable[[], dict[str, float] | None]] = {
    "none": lambda: None, "recorded": recorded_costs, "real": real_costs}


def cost_table(name: str) -> dict[str, float] | None:
    """The cost table a name stands for: "none" (instant), "recorded" or "real"."""
    if name not in COST_TABLES:
        raise ValueError(f"unknown costs {name!r}: one of {', '.join(COST_TABLES)}")
    return COST_TABLES[name]()


def cost_of(costs: dict[str, float] | None, method: str, path: str,
            status: int | None = None) -> float:
    """Seconds a request costs: its status-keyed cost, else its route's, else 0."""
    if not costs:
        return 0.0
    key = route_key(method, path)
    if status is not None and f"{key} {status}" in costs:
        return costs[f"{key} {status}"]
    return costs.get(key, 0.0)


def is_costed(costs: dict[str, float] | None, method: str, path: str) -> bool:
    """Whether some answer of this route has a cost: only those take the instance's lock
    (a websocket, never costed, must not hold it for the socket's lifetime)."""
    if not costs:
        return False
    key = route_key(method, path)
    return key in costs or any(k.startswith(key + " ") for k in costs)

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
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from urllib.parse import urlsplit

RECORDINGS = Path(__file__).resolve().parents[1] / "recordings"
STATUS_KEYED = frozenset({"POST /prompt"})  # routes whose cost depends on the answer's status
PLACEHOLDERS = {"history": "{id}", "object_info": "{class}"}  # /history/<id> -> /history/{id}


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


def recorded_costs(folder: Path | str = RECORDINGS) -> dict[str, float]:
    """Seconds per route key, from every recording file in `folder` (see the module doc)."""
    samples: dict[str, list[float]] = defaultdict(list)
    timed: dict[str, list[float]] = defaultdict(list)
    for events in _recordings(Path(folder)):
        for event in events:
            if event.get("channel") == "http":
                _add_http(samples, event)
            elif event.get("channel") == "timing":
                _add_timing(timed, event)
    costs = {key: statistics.median(values) / 1000.0 for key, values in samples.items()}
    costs.update({key: statistics.median(values) / 1000.0 for key, values in timed.items()})
    return dict(sorted(costs.items()))


def _recordings(folder: Path) -> list[list[dict]]:
    """The event lists of the folder's *.json files (workflows, which are dicts, left out)."""
    lists = []
    for path in sorted(folder.glob("*.json")):
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

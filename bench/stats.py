"""Small statistics for latencies and alternating rounds."""
from __future__ import annotations

import math


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0..100), nearest-rank on the sorted values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: list[float]) -> float:
    """The 50th percentile, interpolated between the middle two."""
    if not values:
        return math.nan
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def spread(values: list[float]) -> float:
    """(max - min) / median of per-round figures: the run-to-run noise seen within a run."""
    values = [v for v in values if not math.isnan(v)]
    if len(values) < 2:
        return 0.0
    mid = median(values)
    return (max(values) - min(values)) / mid if mid else 0.0


def pooled(results: list[dict]) -> dict:
    """Load-generator results of several rounds as one."""
    latencies = [x for r in results for x in r["latencies"]]
    count = sum(r["count"] for r in results)
    elapsed = sum(r["elapsed"] for r in results)
    statuses: dict[str, int] = {}
    for result in results:
        for key, value in result["statuses"].items():
            statuses[key] = statuses.get(key, 0) + value
    return {"latencies": latencies, "count": count, "elapsed": elapsed,
            "throughput": count / elapsed if elapsed > 0 else 0.0,
            "errors": sum(r["errors"] for r in results), "statuses": statuses,
            "first_error": next((r["first_error"] for r in results if r.get("first_error")), None)}

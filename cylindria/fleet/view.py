"""The fleet as GET /fleet and /metrics show it, read from the nodes' rows."""
from __future__ import annotations

import json
import threading
import time

from comfy.comfyui.status import iso_time
from cylindria.storage import NodeRow, NodeRows

CACHE_SECONDS = 1.5  # how old the rows a scrape reads may be: scrapes never hammer the database


def fleet_view(rows: list[NodeRow], this_node: str) -> dict:
    """{node: this node, nodes: every node by name, live or not}."""
    return {"node": this_node, "nodes": [node_view(row) for row in sorted(rows, key=_name)]}


def node_view(row: NodeRow) -> dict:
    """One node: its lease and what its last renewal said of its GPUs and held jobs."""
    status = said(row)
    return {"node": row.name, "advertise_url": row.advertise_url, "live": row.live,
            "lease_age_seconds": round(max(0.0, row.lease_age), 3),
            "lease_seconds": row.lease_seconds, "started_at": iso_time(row.started_at),
            "gpus": status.get("gpus", []), "held_jobs": status.get("held_jobs", 0)}


def said(row: NodeRow) -> dict:
    """A node's status JSON as written by its lease keeper ({} if unreadable)."""
    try:
        status = json.loads(row.status)
    except ValueError:
        return {}
    return status if isinstance(status, dict) else {}


def _name(row: NodeRow) -> str:
    return row.name


class RecentNodes:
    """The nodes' rows, read again only when the last read is CACHE_SECONDS old (a read that
    fails raises StorageUnavailable and is tried again at the next call)."""

    def __init__(self, rows: NodeRows, max_age: float = CACHE_SECONDS):
        self.rows, self.max_age = rows, max_age
        self._lock = threading.Lock()
        self._read: list[NodeRow] = []
        self._read_at = float("-inf")

    def current(self) -> list[NodeRow]:
        """The rows as of at most max_age seconds ago."""
        with self._lock:  # one scrape reads; a concurrent one waits for its answer
            if time.monotonic() - self._read_at >= self.max_age:
                self._read = self.rows.all()
                self._read_at = time.monotonic()
            return self._read

    def gauges(self) -> tuple[int, int]:
        """(live nodes, held jobs: each live node's own, plus the shared queue once, as the
        node that sees most of it says)."""
        live = [row for row in self.current() if row.live]
        shared = max((int(said(row).get("shared_queue", 0)) for row in live), default=0)
        return len(live), shared + sum(int(said(row).get("held_jobs", 0)) for row in live)

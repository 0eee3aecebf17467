"""This node's membership of the fleet: a lease in the database, renewed every RENEW_EVERY
seconds (more often for a lease shorter than RENEWALS_PER_LEASE of them) with what the other nodes show of it (its GPUs and held jobs, from memory only: a
renewal never asks ComfyUI anything), ended by `leave()` on a clean stop."""
from __future__ import annotations

import hashlib
import json
import logging
import threading
from typing import Callable, Iterable

from comfy.comfyui.gpu import Gpu
from comfy.jobs.job import JobStatus
from comfy.jobs.store import JobStore
from cylindria.storage import NodeRows, StorageUnavailable

logger = logging.getLogger(__name__)

RENEW_EVERY = 2.0  # seconds between renewals (CONTRACT: "renewed every 2 s")
RENEWALS_PER_LEASE = 3  # a lease shorter than 3 renewals is renewed more often: one late
# renewal (a slow database round trip, a busy host) must not end it
_QUEUED = (JobStatus.SUBMITTING, JobStatus.QUEUED)
# Domain separation: a key's hash here is no hash any other part of Cylindria shows.
_KEY_PREFIX = b"cylindria fleet key\0"


def keys_hash(keys: Iterable[str]) -> str:
    """One hash over the sorted hashes of the API keys: equal on nodes given the same keys,
    whatever their order or names; the keys themselves never reach the database."""
    digests = sorted(hashlib.sha256(_KEY_PREFIX + key.encode("utf-8", "surrogateescape"))
                     .hexdigest() for key in keys)
    return hashlib.sha256("\n".join(digests).encode("ascii")).hexdigest()


def node_status(gpus: list[Gpu], store: JobStore) -> dict:
    """What /fleet shows of this node: per GPU its reachability and websocket as the tracker
    last saw them, and Cylindria's own jobs running and queued there; the jobs held for
    this node only (pinned, or carrying credentials only it holds), and the fleet's shared
    queue as this node sees it (the fleet gauge counts it once)."""
    counts = store.counts()
    own, shared = store.held_here()  # the shared queue, held by every node, is counted apart
    return {"gpus": [{"gpu_id": gpu.index, "reachable": gpu.reachable is True,
                      "websocket": "connected" if gpu.websocket_connected else "disconnected",
                      "running": counts.get((gpu.index, JobStatus.RUNNING), 0),
                      "queue_length": sum(counts.get((gpu.index, s), 0) for s in _QUEUED)}
                     for gpu in gpus],
            "held_jobs": own, "shared_queue": shared}


class Membership:
    """The lease keeper: one thread renewing this node's row; built with the core, started
    with the server (given the keys' hash, which the web layer knows), stopped before the
    storage closes."""

    def __init__(self, rows: NodeRows, name: str, advertise_url: str, lease: float,
                 gpus: list[Gpu], store: JobStore,
                 on_taken_over: Callable[[], None] | None = None):
        self.rows, self.name, self.advertise_url, self.lease = rows, name, advertise_url, lease
        self.gpus, self.store = gpus, store
        # Told when a renewal finds that the fleet took jobs from this node meanwhile (its
        # lease had ended: the process paused, or cut off from the database).
        self.on_taken_over = on_taken_over
        self.every = min(RENEW_EVERY, lease / RENEWALS_PER_LEASE)  # seconds between renewals
        self.keys_hash = ""
        self._first = True  # the next renewal is this start's first (started_at: now)
        self._compared = False  # the keys compared with the live nodes' (once, at start)
        self._failing = False  # a renewal failed: logged once until one succeeds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.run, name="cylindria-lease", daemon=True)

    def start(self, keys_hash: str) -> None:
        """Renew once now (so /fleet lists this node from the start), warn if the keys differ
        from the live nodes', then keep renewing on the thread."""
        self.keys_hash = keys_hash
        self.renew_once()
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Stop renewing; a node that was started leaves the fleet (its lease ends now)."""
        self._stop.set()
        if self._thread.ident is None:
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("lease thread did not stop in %.1fs", timeout)
        try:
            self.rows.leave(self.name)
        except StorageUnavailable:  # logged by the storage; the lease ends by itself
            pass

    def run(self) -> None:
        """Renew every `every` seconds until stopped."""
        while not self._stop.wait(self.every):
            self.renew_once()

    def renew_once(self) -> bool:
        """One renewal (and, after this start's first, the keys' comparison); False if it
        failed: logged once, tried again at the next tick."""
        status = json.dumps(node_status(self.gpus, self.store), separators=(",", ":"))
        try:
            taken = self.rows.renew(self.name, self.advertise_url, self.lease, self.keys_hash,
                                    status, first=self._first)
            self._first = False
            if taken:
                logger.warning("node %s: its lease had ended, and the fleet took jobs from it "
                               "meanwhile; letting go of them", self.name)
                if self.on_taken_over is not None:
                    self.on_taken_over()
            if not self._compared:
                self._compared = True
                self.compare_keys()
        except StorageUnavailable:  # the outage itself is logged by the storage
            return self._failed("database unavailable")
        except Exception as exc:  # the thread never dies: the next tick tries again
            return self._failed(f"{type(exc).__name__}: {exc}", trace=True)
        if self._failing:
            self._failing = False
            logger.warning("node %s: lease renewed again", self.name)  # ends the warning above
        return True

    def _failed(self, why: str, trace: bool = False) -> bool:
        """Log a failed renewal, once until one succeeds."""
        if not self._failing:
            self._failing = True
            logger.warning("node %s: lease not renewed (%s); trying again every %.1fs",
                           self.name, why, self.every, exc_info=trace)
        return False

    def compare_keys(self) -> int:
        """Warn when this node's API keys differ from those of live nodes (by hash); how many
        differ."""
        others = [row for row in self.rows.all() if row.live and row.name != self.name]
        differ = sorted(row.name for row in others if row.keys_hash != self.keys_hash)
        if differ:
            logger.warning("the API keys of node %s differ from those of %d of the %d other "
                           "live node(s) (%s): give every node of the fleet the same keys",
                           self.name, len(differ), len(others), ", ".join(differ))
        return len(differ)

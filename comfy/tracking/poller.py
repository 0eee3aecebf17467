"""The scheduler: every poll interval, reconcile every GPU's jobs with its /queue and /history."""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Callable

from comfy.comfyui.catalogue import read_models_into, refresh_catalogue
from comfy.comfyui.gpu import Gpu
from comfy.tracking.reconcile import MAX_ATTEMPTS, reconcile_gpu
from comfy.jobs.store import JobStore
from cylindria.storage import StorageUnavailable

logger = logging.getLogger(__name__)


class Poller:
    """One scheduler thread; each GPU's poll runs on a small pool so a slow GPU delays no other."""

    WATCH_INTERVAL = 1.0  # seconds between calls of `watch` (cheap checks, no I/O)

    def __init__(self, gpus: list[Gpu], store: JobStore, interval: float = 5.0,
                 watch: Callable[[float], None] | None = None,
                 max_attempts: int = MAX_ATTEMPTS, after_check: Callable[[], None] | None = None):
        self.gpus = gpus
        self.store = store
        self.interval = interval
        self.watch = watch
        self.max_attempts = max_attempts
        self.after_check = after_check  # told after every GPU check (the dispatcher's floor)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._wanted: set[int] = set()
        self._running: dict[int, Future] = {}
        self.ticks = 0  # full polls of every GPU begun (the first one right at start)
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(gpus)),
                                        thread_name_prefix="cylindria-poll")
        # Model-file lists (GET /models), read apart from the polls that must not wait for them.
        self._models = ThreadPoolExecutor(max_workers=max(1, len(gpus)),
                                          thread_name_prefix="cylindria-models")
        self._model_reads: list[Future] = []
        self._thread = threading.Thread(target=self.run, name="cylindria-poller", daemon=True)

    def start(self) -> None:
        """Start the scheduler thread."""
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Stop scheduling, and wait for the thread; polls under way end by their own timeouts."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        self._wake.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("poller thread did not stop in %.1fs", timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._models.shutdown(wait=False, cancel_futures=True)  # a read under way ends at
        # its next folder (it watches the stop flag)
        # A poll under way ends with its HTTP call (bounded by the client's timeouts).
        with self._lock:
            under_way = list(self._running.values()) + self._model_reads
        _, late = wait(under_way, max(0.0, deadline - time.monotonic()))
        if late:
            logger.warning("%d GPU poll(s) still waiting for ComfyUI at stop", len(late))
        else:  # every poll and read is over: the workers exit at once
            self._pool.shutdown(wait=True)
            self._models.shutdown(wait=True)

    def idle(self) -> bool:
        """No GPU's poll is under way."""
        return all(future.done() for future in list(self._running.values()))

    def request(self, gpu_index: int) -> None:
        """Reconcile this GPU now (after a websocket connect or drop), not at the next tick."""
        with self._lock:
            self._wanted.add(gpu_index)
        self._wake.set()

    def run(self) -> None:
        """Poll all GPUs each interval; between ticks, serve requests for single GPUs."""
        next_tick = next_watch = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_tick:
                self.poll_once()
                next_tick = now + self.interval
            else:
                self._poll_wanted()
            if self.watch is not None and now >= next_watch:
                self._watch(now)
                next_watch = now + self.WATCH_INTERVAL
            self._wake.wait(max(0.0, min(next_tick, next_watch) - time.monotonic()))
            self._wake.clear()

    def _watch(self, now: float) -> None:
        """Run the watch callback; a failure is logged, never fatal to the scheduler."""
        try:
            self.watch(now)
        except Exception:
            logger.exception("watchdog failed")

    def poll_once(self) -> None:
        """Start one reconciliation of every GPU that is not still busy with the last one."""
        with self._lock:
            self._wanted.clear()
        for gpu in self.gpus:
            self._launch(gpu)
        self.ticks += 1

    def _poll_wanted(self) -> None:
        """Start the reconciliations asked for since the last tick."""
        with self._lock:
            wanted, self._wanted = self._wanted, set()
        for gpu in self.gpus:
            if gpu.index in wanted:
                self._launch(gpu)

    def _launch(self, gpu: Gpu) -> None:
        """Reconcile one GPU on the pool, unless its previous poll is still running."""
        future = self._running.get(gpu.index)
        if future is not None and not future.done():
            with self._lock:
                self._wanted.add(gpu.index)  # run again once the slow one is over
            return
        if self._stop.is_set():
            return
        self._running[gpu.index] = self._pool.submit(self._reconcile, gpu)

    def check(self, gpu: Gpu) -> None:
        """One GPU's check: reconcile its jobs, read its node classes if they are wanted,
        and tell the dispatcher (a GPU may have come back, or room been made on it)."""
        reconcile_gpu(gpu, self.store, self.max_attempts)
        if gpu.reachable:
            refresh_catalogue(gpu, self._read_models_later)
        if self.after_check is not None:
            self.after_check()

    def _read_models_later(self, catalogue, gpu: Gpu) -> None:
        """Read a GPU's model files on the poller's model workers (none once stopping)."""
        with self._lock:
            self._model_reads = [f for f in self._model_reads if not f.done()]
            if self._stop.is_set():
                return
            try:
                self._model_reads.append(
                    self._models.submit(read_models_into, catalogue, gpu, self._stop))
            except RuntimeError:  # shut down meanwhile
                pass

    def _reconcile(self, gpu: Gpu) -> None:
        """One GPU's poll; never lets an exception kill the pool worker silently."""
        try:
            self.check(gpu)
        except StorageUnavailable:  # logged once by the storage; the next poll tries again
            logger.debug("poll of GPU %d: database unavailable", gpu.index)
        except Exception:
            logger.exception("poll of GPU %d failed", gpu.index)
        finally:
            with self._lock:
                again = gpu.index in self._wanted
            if again:
                self._wake.set()

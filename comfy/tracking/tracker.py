"""The tracker: reconciles at start, then keeps every job true with websockets and the poller."""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from comfy.tracking.gone import lose_jobs_of_gone_gpus
from comfy.comfyui.gpu import Gpu
from comfy.comfyui.listener import Listener
from comfy.tracking.poller import Poller
from comfy.tracking.reconcile import MAX_ATTEMPTS
from comfy.jobs.store import JobStore
from cylindria.storage import StorageUnavailable

logger = logging.getLogger(__name__)


class Tracker:
    """Owns the poller thread and one websocket listener thread per GPU."""

    def __init__(self, gpus: list[Gpu], store: JobStore, poll_interval: float = 5.0,
                 websocket: bool = True, max_attempts: int = MAX_ATTEMPTS,
                 after_check: Callable[[], None] | None = None,
                 on_room: Callable[[], None] | None = None):
        self.gpus = gpus
        self.store = store
        self.poller = Poller(gpus, store, poll_interval, watch=self.watch,
                             max_attempts=max_attempts, after_check=after_check)
        self.listeners = [Listener(gpu, store, self.poller.request, on_room=on_room)
                          for gpu in gpus] \
            if websocket else []
        self.started = False
        self.reconciled = threading.Event()  # set once start-up reconciliation is over
        self._stopping = threading.Event()
        self._starter = threading.Thread(target=self._start_tracking, name="cylindria-start",
                                         daemon=True)

    def start(self) -> None:
        """Reconcile and start tracking on a thread of its own, so the server answers
        /health and /ready meanwhile (a slow ComfyUI can make reconciliation take a while)."""
        self._starter.start()
        self.started = True

    def wait_reconciled(self, timeout: float) -> bool:
        """False while start-up reconciliation runs longer than `timeout` seconds; True once it
        is over, or when tracking was never started (an app built without a server)."""
        return not self.started or self.reconciled.is_set() or self.reconciled.wait(timeout)

    def _start_tracking(self) -> None:
        """Settle what happened while Cylindria was down, then start the poller and listeners."""
        try:
            lose_jobs_of_gone_gpus(self.store, len(self.gpus))
            self.reconcile_all()
        except StorageUnavailable:  # the poller's ticks reconcile once it is back
            logger.debug("start-up: database unavailable")
        finally:
            if not self._stopping.is_set():
                self.poller.start()
                for listener in self.listeners:
                    listener.start()
            self.reconciled.set()
            logger.info("start-up reconciliation done; tracking %d unfinished job(s)",
                        len(self.store.active()))

    def watch(self, now: float) -> None:
        """The scheduler's one-second check: reopen any websocket ComfyUI stopped sending to."""
        for listener in self.listeners:
            listener.check_deaf(now)

    def reconcile_all(self) -> None:
        """One reconciliation of every GPU at once; each is bounded by the client's timeouts."""
        with ThreadPoolExecutor(max_workers=len(self.gpus),
                                thread_name_prefix="cylindria-reconcile") as pool:
            for future in [pool.submit(self.poller.check, gpu) for gpu in self.gpus]:
                try:
                    future.result()
                except StorageUnavailable:  # the poller's ticks reconcile once it is back
                    logger.debug("start-up reconciliation: database unavailable")
                except Exception:
                    logger.exception("start-up reconciliation failed")

    def stop(self, timeout: float = 1.0) -> None:
        """Stop every thread: all are told at once, then waited for within `timeout` together."""
        deadline = time.monotonic() + timeout
        self._stopping.set()
        if self._starter.ident is not None:
            self._starter.join(max(0.0, deadline - time.monotonic()))
        for listener in self.listeners:
            listener.signal_stop()
        self.poller.stop(timeout=timeout)
        for listener in self.listeners:
            listener.join(max(0.0, deadline - time.monotonic()))
        self.started = False

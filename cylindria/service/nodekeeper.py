"""Keeping the node name's lock (cylindria/service/instance.py) for the process's life.

The lock is a PostgreSQL session's: when PostgreSQL restarts, or the lock's connection is cut,
the session ends and the lock with it, and a second Cylindria of the same name could start and
dispatch beside this one (work done twice on shared ComfyUIs). The keeper checks the session
every INTERVAL seconds and takes the lock again as soon as the database answers. If another
Cylindria took the name meanwhile, this one must not go on as that node: on_lost is called
(the service stops) and the keeper ends.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

from cylindria.storage.interface import StorageUnavailable
from cylindria.storage.nodelock import NodeTaken, PostgresNodeLock

logger = logging.getLogger(__name__)

INTERVAL = 2.0  # seconds between checks of the lock's session, and between reconnections


class NodeKeeper:
    """One thread keeping a PostgresNodeLock held; on_lost(holder) if another took it."""

    def __init__(self, lock: PostgresNodeLock, on_lost: Callable[[NodeTaken], None],
                 interval: float = INTERVAL):
        self.lock, self.on_lost, self.interval = lock, on_lost, interval
        self.lost = False  # the session is gone and the lock not taken again yet
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.run, name="cylindria-node-lock", daemon=True)

    def start(self) -> None:
        """Start the keeper thread."""
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Stop the thread (it may be the one asking: its on_lost stops the service)."""
        self._stop.set()
        if self._thread.ident is None or self._thread is threading.current_thread():
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("node lock thread did not stop in %.1fs", timeout)

    def run(self) -> None:
        """keep_once() every interval until stopped, or until the name is another's."""
        while not self._stop.wait(self.interval):
            try:
                if not self.keep_once():
                    return
            except Exception:  # never silent, and the next check tries again
                logger.exception("checking the node %s's lock failed", self.lock.node)

    def keep_once(self) -> bool:
        """Check the lock's session, and take the lock again if it is gone. False once another
        session holds the name (on_lost has been called): this process is not that node now."""
        if self.lock.held():
            return True
        if not self.lost:
            self.lost = True
            logger.warning("the node %s's lock was lost with its database session (PostgreSQL "
                           "restarted or the connection was cut): taking it again", self.lock.node)
        try:
            again = self.lock.retake()
        except StorageUnavailable as exc:  # the database is away: the next check tries again
            logger.debug("the node %s's lock cannot be taken again yet: %s", self.lock.node, exc)
            return True
        except NodeTaken as holder:
            self.on_lost(holder)
            return False
        if again:
            self.lost = False
            logger.info("the node %s's lock is held again", self.lock.node)
        return True

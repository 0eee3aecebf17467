"""One running Cylindria per data dir, and per node name on PostgreSQL.

Two processes on one data dir would both dispatch the same held jobs and share one websocket
clientId with ComfyUI; two nodes of one name would do the same across a fleet. The first
start takes the lock and holds it for its life; a second stops at once with one line naming
the first (InstanceBusy is a ConfigError: the start exits 2 with that line).

Both locks end with their holder, however it ends: a process killed with SIGKILL, or a host
that crashed, never leaves a lock that blocks the next start (see each lock for why).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Callable

from comfy.private import private_dir, private_file
from cylindria.config.options import ConfigError, default_node
from cylindria.service.nodekeeper import NodeKeeper
from cylindria.storage.interface import StorageUnavailable
from cylindria.storage.nodelock import NodeTaken, PostgresNodeLock, PsycopgMissing

logger = logging.getLogger(__name__)

LOCK_FILE_NAME = "cylindria.lock"
# Windows locks are mandatory: the locked byte sits far past the holder's PID and host, which
# a second process must still be able to read. (POSIX flock locks the whole file, advisory.)
LOCK_OFFSET = 1 << 30
HOLDER_WAIT = 1.0  # seconds a second start waits for a holder that has the lock to name itself
APP_PREFIX = "cylindria pid="  # the holder's application_name on PostgreSQL


class InstanceBusy(ConfigError):
    """Another running Cylindria holds this data dir or node name."""


class InstanceLock:
    """The locks this process holds for its life; release() gives them all back."""

    def __init__(self, locks: list):
        self.locks = locks

    def keep(self, on_lost: Callable[[str], None]) -> None:
        """Keep the node name's lock (if one is held) through lost database sessions;
        on_lost(line) once another Cylindria took the name meanwhile."""
        for lock in self.locks:
            if isinstance(lock, NodeLock):
                lock.keep(on_lost)

    def release(self) -> None:
        """Give the locks back (the service's shutdown); releasing twice is harmless."""
        for lock in reversed(self.locks):
            lock.release()
        self.locks = []


def take_instance_lock(config) -> InstanceLock:
    """The data dir's lock, and on PostgreSQL (a `database` URL) also the node name's: both
    are this instance's (a node's data dir holds its key, assets and log)."""
    held = [DataDirLock(Path(config.data_dir)).take()]
    database = getattr(config, "database", None)
    if database and not database.startswith("sqlite:"):  # PostgreSQL (a URL or key=value)
        node = getattr(config, "node", None) or default_node()
        try:
            held.append(NodeLock(database, node).take())
        except BaseException:
            held[0].release()
            raise
    return InstanceLock(held)


def holder_record() -> dict:
    """Who holds a lock: this process's PID and host name."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


class DataDirLock:
    """An OS lock on the data dir's lock file, which names the holder.

    The OS drops the lock when its holder's file is closed, which it does for a process that
    ends in any way (SIGKILL and crashes included): the lock file left behind blocks nothing.
    The descriptor is not inherited by child processes (Python opens files non-inheritable),
    so a child that outlives Cylindria cannot keep the lock.
    """

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.path = data_dir / LOCK_FILE_NAME
        self._fd: int | None = None

    def take(self) -> "DataDirLock":
        """Lock, then write our PID and host; InstanceBusy naming the holder if it is taken."""
        private_dir(self.data_dir)
        fd = os.open(private_file(self.path), os.O_RDWR | getattr(os, "O_BINARY", 0))
        if not _lock(fd):
            os.close(fd)
            raise InstanceBusy(f"the data dir {self.data_dir} is in use by "
                               f"{_named(self._holder())} (stop it first, or give another --data-dir)")
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(holder_record()) + "\n").encode("utf-8"))
        self._fd = fd
        return self

    def _holder(self) -> dict:
        """What the holder wrote; it writes right after locking, so an empty file is waited
        for briefly."""
        deadline = time.monotonic() + HOLDER_WAIT
        while True:
            try:
                return json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                if time.monotonic() >= deadline:
                    return {}
            time.sleep(0.02)

    def release(self) -> None:
        """Unlock and close the file; the file stays (deleting it would race a next start)."""
        if self._fd is not None:
            _unlock(self._fd)
            os.close(self._fd)
            self._fd = None


def _named(holder: dict) -> str:
    """'Cylindria PID 1234 on host h', from a holder's record."""
    return (f"Cylindria PID {holder.get('pid', 'unknown')} on host "
            f"{holder.get('host', 'unknown')}")


def _lock(fd: int) -> bool:
    """Take the OS lock without waiting; False if another holds it."""
    if os.name == "nt":
        import msvcrt

        os.lseek(fd, LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        finally:
            os.lseek(fd, 0, os.SEEK_SET)
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _unlock(fd: int) -> None:
    """Give the OS lock back (closing the file would too; this says so at once)."""
    if os.name == "nt":
        import msvcrt

        os.lseek(fd, LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_UN)


class NodeLock:
    """The node name's lock on PostgreSQL (cylindria/storage/nodelock.py holds it: the SQL is
    the storage layer's), with the refusals as the start shows them."""

    def __init__(self, url: str, node: str):
        self.node = node
        self._lock = PostgresNodeLock(url, node, APP_PREFIX + "{pid} host={host}".format(
            **holder_record()))
        self.keeper: NodeKeeper | None = None

    def take(self) -> "NodeLock":
        """Take the node's lock; InstanceBusy naming the holder if another session has it."""
        try:
            self._lock.take()
        except NodeTaken as taken:
            raise InstanceBusy(f"the node {self.node} is in use by {self._named(taken)} "
                               "(stop it first, or give another --node)") from None
        except PsycopgMissing:
            raise ConfigError("a postgresql:// database needs psycopg: "
                              "pip install 'psycopg[binary]'") from None
        except StorageUnavailable as exc:
            raise ConfigError(f"cannot reach the database to take the node {self.node}'s "
                              f"lock: {exc}") from None
        return self

    @staticmethod
    def _named(taken: "NodeTaken") -> str:
        """The holder as the second start's line names it, from its session."""
        if taken.application_name is None and taken.session is None:
            return "another Cylindria"  # gone in between, or not visible to this user
        name = taken.application_name or ""
        if name.startswith(APP_PREFIX):
            pid, _, host = name[len(APP_PREFIX):].partition(" host=")
            return _named({"pid": pid, "host": host or "unknown"})
        return f"database session {taken.session} from {taken.address or 'a local socket'}"

    def keep(self, on_lost: Callable[[str], None]) -> None:
        """Keep the lock for the process's life (NodeKeeper: taken again after its session was
        lost). If another Cylindria took the name meanwhile, an ERROR line names it and
        on_lost(line) is called: this process must stop being this node."""
        def lost(taken: NodeTaken) -> None:
            line = (f"the node {self.node} was taken by {self._named(taken)} while this "
                    "Cylindria's database session was gone: stopping (two of one name would "
                    "do the same work twice)")
            logger.error(line)
            on_lost(line)

        self.keeper = NodeKeeper(self._lock, lost)
        self.keeper.start()

    def release(self) -> None:
        """Stop keeping the lock, then close its connection: the server drops the lock with
        the session."""
        if self.keeper is not None:
            self.keeper.stop()
        self._lock.release()

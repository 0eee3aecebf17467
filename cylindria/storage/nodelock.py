"""A node name's lock on PostgreSQL: one running Cylindria per node name (the service's
instance lock, cylindria/service/instance.py, says what a refusal looks like).

A session-level advisory lock keyed by the node name, on a connection of its own kept open
for the process's life. The server drops the lock with the session: when the holder's
process ends in any way its OS closes the connection and the server ends the session; a host
that vanished (power lost) is noticed through the server's TCP keepalives, after which the
name is free again. The holder names itself in its session's application_name, which a
second start reads from pg_stat_activity: no table is needed.

A session can also end under a running holder (PostgreSQL restarted, the connection cut):
held() notices (one round trip), and retake() takes the lock again on a new connection; the
policy (how often, and what a name taken meanwhile means) is the service's.
"""
from __future__ import annotations

import hashlib
import threading

from cylindria.storage.interface import StorageUnavailable

SQL = {
    "take": "SELECT pg_try_advisory_lock(%s)",
    "alive": "SELECT 1",
    "give": "SELECT pg_advisory_unlock(%s)",
    # The session holding the advisory lock (classid, objid: the key's high and low halves).
    "holder": """
SELECT a.application_name, a.pid, a.client_addr::text
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid::bigint = %s AND l.objid::bigint = %s
""",
}


# The lock connection's settings, unless the URL gives its own: a start and a reconnection
# wait no longer for an unreachable server than the store does (cylindria/storage/postgres.py),
# and a round trip on a connection whose network is cut fails in seconds (Linux), not the
# minutes of TCP's retransmissions.
CONNECTION = {"connect_timeout": 5, "tcp_user_timeout": 10000}


class PsycopgMissing(Exception):
    """A PostgreSQL URL, and no psycopg installed."""


class NodeTaken(Exception):
    """Another session holds the node name's lock: its application_name, backend PID and
    client address, each None where PostgreSQL does not show it."""

    def __init__(self, application_name: str | None, session: int | None, address: str | None):
        super().__init__(application_name or "another session")
        self.application_name, self.session, self.address = application_name, session, address


class PostgresNodeLock:
    """The advisory lock of one node name; `me` is this holder's application_name."""

    def __init__(self, url: str, node: str, me: str):
        self.url, self.node, self.me = url, node, me
        self.key = node_key(node)
        self._conn = None
        self._session: int | None = None  # backend PID of the session that took the lock last
        self._released = False
        self._mutex = threading.Lock()  # release() against a retake() ending on another thread

    def take(self) -> "PostgresNodeLock":
        """Take the lock; NodeTaken if another session holds it, StorageUnavailable if the
        database cannot be reached."""
        self._released = False
        self._hold(self._take_on_new_connection())
        return self

    def held(self) -> bool:
        """Whether the lock's session lives on: its connection open and answering a round trip
        (a live session keeps its session lock; only its end drops it)."""
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            return False
        import psycopg

        try:
            conn.execute(SQL["alive"])
        except psycopg.Error:
            return False
        return True

    def retake(self) -> bool:
        """Once held() is False: take the lock again, on a new connection. True once held;
        False while the lost session itself still holds it (the server has not ended it yet),
        while the holder is gone before it could be named, or once released. NodeTaken if
        another session took it meanwhile; StorageUnavailable while the database is away."""
        if self._released:
            return False
        lost = self._session
        self._drop()
        try:
            conn = self._take_on_new_connection()
        except NodeTaken as taken:
            ours = taken.session == lost and taken.application_name == self.me[:63]
            if taken.session is None or ours:
                return False
            raise
        return self._hold(conn)

    def _take_on_new_connection(self):
        """A new connection holding the lock; NodeTaken naming the holder if it is taken."""
        conn = self._connect()  # PsycopgMissing without psycopg
        import psycopg

        try:
            taken = conn.execute(SQL["take"], (self.key,)).fetchone()[0]
            holder = None if taken else self._holder(conn)
        except psycopg.Error as exc:  # the server went away again (shutting down, say)
            conn.close()
            raise StorageUnavailable(_first_line(exc)) from None
        except BaseException:
            conn.close()
            raise
        if not taken:
            conn.close()
            raise holder
        return conn

    def _hold(self, conn) -> bool:
        """Keep the connection that holds the lock, unless released meanwhile (then closed)."""
        with self._mutex:
            if self._released:
                conn.close()
                return False
            self._conn, self._session = conn, conn.info.backend_pid
            return True

    def _connect(self):
        """The lock's own connection, in autocommit (a session lock outlives transactions)."""
        try:
            import psycopg
            from psycopg.conninfo import conninfo_to_dict
        except ImportError:
            raise PsycopgMissing() from None
        try:
            params = {**CONNECTION, **conninfo_to_dict(self.url)}
            params["application_name"] = self.me[:63]  # PostgreSQL keeps 63 bytes: PID first
            return psycopg.connect(autocommit=True, **params)
        except psycopg.Error as exc:
            raise StorageUnavailable(_first_line(exc)) from None

    def _holder(self, conn) -> NodeTaken:
        """Who holds the lock, as far as this database user may see."""
        high, low = (self.key >> 32) & 0xFFFFFFFF, self.key & 0xFFFFFFFF
        row = conn.execute(SQL["holder"], (high, low)).fetchone()
        return NodeTaken(None, None, None) if row is None else NodeTaken(*row)

    def release(self) -> None:
        """Unlock, then close the lock's connection. The unlock is answered once the lock is
        free, where the session's end frees it a moment after the close: a next take() at
        once must not find it held. A retake() still under way on another thread gives its
        new connection up too."""
        self._released = True
        self._drop(unlock=True)

    def _drop(self, unlock: bool = False) -> None:
        """Close the lock's connection, if it has one (unlocking first if asked)."""
        with self._mutex:
            conn, self._conn = self._conn, None
        if conn is None:
            return
        import psycopg

        try:
            if unlock and not (conn.closed or conn.broken):
                conn.execute(SQL["give"], (self.key,))
        except psycopg.Error:
            pass  # the session is gone or going, and its lock with it
        finally:
            conn.close()


def node_key(node: str) -> int:
    """The 64-bit advisory lock key of a node name (signed, as PostgreSQL's bigint)."""
    digest = hashlib.sha256(b"cylindria node\0" + node.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _first_line(exc: BaseException) -> str:
    """An error's first line (libpq's messages run over several)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

"""A node name's lock on PostgreSQL: one running Cylindria per node name (the service's
instance lock, cylindria/service/instance.py, says what a refusal looks like).

A session-level advisory lock keyed by the node name, on a connection of its own kept open
for the process's life. The server drops the lock with the session: when the holder's
process ends in any way its OS closes the connection and the server ends the session; a host
that vanished (power lost) is noticed through the server's TCP keepalives, after which the
name is free again. The holder names itself in its session's application_name, which a
second start reads from pg_stat_activity: no table is needed.
"""
from __future__ import annotations

import hashlib

from cylindria.storage.interface import StorageUnavailable

SQL = {
    "take": "SELECT pg_try_advisory_lock(%s)",
    # The session holding the advisory lock (classid, objid: the key's high and low halves).
    "holder": """
SELECT a.application_name, a.pid, a.client_addr::text
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid::bigint = %s AND l.objid::bigint = %s
""",
}


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

    def take(self) -> "PostgresNodeLock":
        """Take the lock; NodeTaken if another session holds it, StorageUnavailable if the
        database cannot be reached."""
        conn = self._connect()
        try:
            taken = conn.execute(SQL["take"], (self.key,)).fetchone()[0]
            holder = None if taken else self._holder(conn)
        except BaseException:
            conn.close()
            raise
        if not taken:
            conn.close()
            raise holder
        self._conn = conn
        return self

    def _connect(self):
        """The lock's own connection, in autocommit (a session lock outlives transactions)."""
        try:
            import psycopg
        except ImportError:
            raise PsycopgMissing() from None
        try:  # PostgreSQL keeps 63 bytes of the name: the holder puts its PID first
            return psycopg.connect(self.url, autocommit=True, application_name=self.me[:63])
        except psycopg.Error as exc:
            raise StorageUnavailable(_first_line(exc)) from None

    def _holder(self, conn) -> NodeTaken:
        """Who holds the lock, as far as this database user may see."""
        high, low = (self.key >> 32) & 0xFFFFFFFF, self.key & 0xFFFFFFFF
        row = conn.execute(SQL["holder"], (high, low)).fetchone()
        return NodeTaken(None, None, None) if row is None else NodeTaken(*row)

    def release(self) -> None:
        """Close the lock's connection: the server drops the lock with the session."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def node_key(node: str) -> int:
    """The 64-bit advisory lock key of a node name (signed, as PostgreSQL's bigint)."""
    digest = hashlib.sha256(b"cylindria node\0" + node.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _first_line(exc: BaseException) -> str:
    """An error's first line (libpq's messages run over several)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

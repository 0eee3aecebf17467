"""The embedded backend: one SQLite file in the data dir (the default; nothing to install).

Connections by role, each behind its own lock: the job store's writes (under the store's own
lock as well), workflow reads (read-only: a 32 MiB body never holds the writer), the
retention sweep (a small page cache), the assets and the webhook outbox. SQLite serialises
their writes with its file lock; a statement waits up to BUSY_WAIT for it.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import Counter
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterable, Iterator

from comfy.inputs.assetfiles import file_name, read_chunks
from comfy.inputs.assets import SHARED, Asset
from comfy.jobs.job import Job
from comfy.private import private_dir, private_file, tighten
from cylindria.storage import ASSETS_DIR, records
from cylindria.storage.interface import (Contents, Health, JobIdTaken, NodeRow, OutboxRow, Rework,
                                        SchemaTooNew, StorageUnavailable, Taken, guarded_by)

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 4
# Seconds a statement waits for SQLite's write lock held by another connection (the webhook
# sender's one-UPDATE tries, the retention sweep's batches of 200 rows: milliseconds each).
# The store writes under its lock and nothing retries a failed commit (the state change would
# be lost), so a write waits rather than fail at the first busy moment; status reads
# (JobStore.get) do not take that lock, so they never wait behind it.
BUSY_WAIT = 5.0

_FINISHED, _ASSET, _EVENT = records.FINISHED_LIST, records.ASSET_FROM, records.EVENT_FROM
_NOT_BUSY = ("id NOT IN (SELECT value FROM json_each(:skip)) "
             "AND job_id NOT IN (SELECT value FROM json_each(:jobs)) "
             "AND url NOT IN (SELECT value FROM json_each(:urls)) "
             "AND client NOT IN (SELECT value FROM json_each(:clients))")
_SET_DURABLE = ", ".join(f"{name} = ?" for name in records.DURABLE)
# When a node's jobs may be taken over (see the PostgreSQL backend).
_TAKEN_AFTER = "(MAX(renewed_at, COALESCE(left_at, renewed_at)) + lease_seconds)"

# One row per node (see the PostgreSQL backend's nodes table).
NODES_COLUMNS = """
    name TEXT PRIMARY KEY,
    advertise_url TEXT NOT NULL DEFAULT '',
    started_at REAL NOT NULL,
    renewed_at REAL NOT NULL,
    lease_seconds REAL NOT NULL,
    keys_hash TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL DEFAULT '{}'
"""

# The schema of this version (the tables of every earlier data dir, brought together).
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL UNIQUE,
    gpu_id INTEGER,
    prompt_id TEXT,
    fingerprint TEXT NOT NULL,
    status TEXT NOT NULL,
    number REAL,
    submitted_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    error TEXT,
    outputs TEXT,
    warnings TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    nodes_done INTEGER NOT NULL DEFAULT 0,
    nodes_total INTEGER NOT NULL DEFAULT 0,
    auto INTEGER NOT NULL DEFAULT 0,
    priority INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    held_at REAL,
    labels TEXT,
    webhook TEXT,
    submitted_by TEXT,
    node TEXT,
    fence INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- The workflow of every job (the request body as received, credentials left out): a held
-- job is sent from it, a job whose ComfyUI died is sent again from it, and a client may read
-- it back (GET /api/v2/jobs/<id>/workflow). Deleted with the job's row.
CREATE TABLE IF NOT EXISTS workflows (job_id TEXT PRIMARY KEY, body BLOB NOT NULL);
-- By end time: the sweep finds the oldest finished jobs, and a start loads the unfinished and
-- recent ones, without reading the table whole.
CREATE INDEX IF NOT EXISTS jobs_by_finished_at ON jobs (finished_at);
-- One row per asset file on disk (named by its hash): it goes only once the file is unlinked.
CREATE TABLE IF NOT EXISTS asset_files (
    hash TEXT PRIMARY KEY,
    size_bytes INTEGER NOT NULL,
    content_type TEXT NOT NULL
);
-- An asset as one client sees it: its own id and name over a shared file. `owner` is an own
-- key's name, or '' for the one asset of every key without :own.
CREATE TABLE IF NOT EXISTS assets (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    hash TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at REAL NOT NULL,
    used_at REAL NOT NULL,
    UNIQUE (owner, hash)
);
CREATE INDEX IF NOT EXISTS assets_by_hash ON assets (hash);
CREATE INDEX IF NOT EXISTS assets_by_used_at ON assets (used_at);
-- Which jobs refer to which assets: an asset an unfinished job needs cannot be deleted.
CREATE TABLE IF NOT EXISTS asset_uses (
    asset_id TEXT NOT NULL,
    job_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    PRIMARY KEY (asset_id, job_id, fingerprint)
);
CREATE INDEX IF NOT EXISTS asset_uses_by_job ON asset_uses (job_id);
-- One row per webhook event, written with the status change that causes it.
CREATE TABLE IF NOT EXISTS webhook_outbox (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    url TEXT NOT NULL,
    event TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at REAL NOT NULL,
    due_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    delivered_at REAL,
    given_up_at REAL,
    client TEXT NOT NULL DEFAULT '',
    claimed_by TEXT,
    claimed_until REAL
);
CREATE INDEX IF NOT EXISTS webhook_outbox_due_order ON webhook_outbox (due_at, id)
    WHERE due_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS webhook_outbox_job ON webhook_outbox (job_id);
-- The fleet (CONTRACT "A fleet"): on SQLite a fleet of one node, this one.
CREATE TABLE IF NOT EXISTS nodes ({NODES}, taken_over_at REAL, left_at REAL);
CREATE INDEX IF NOT EXISTS jobs_by_node ON jobs (node) WHERE finished_at IS NULL;
-- Failover (see the PostgreSQL backend's takeovers table): here the statements' shape only, a
-- fleet of one takes nothing from another node.
CREATE TABLE IF NOT EXISTS takeovers ({TAKEOVERS});
CREATE INDEX IF NOT EXISTS takeovers_by_node ON takeovers (node);
"""
# The jobs taken from a node whose lease ended (schema 4).
TAKEOVERS_COLUMNS = """
    job_id TEXT NOT NULL,
    fence INTEGER NOT NULL,
    node TEXT NOT NULL,
    gpu_id INTEGER,
    prompt_id TEXT,
    taken_at REAL NOT NULL,
    PRIMARY KEY (job_id, fence)
"""
SCHEMA = SCHEMA.replace("{NODES}", NODES_COLUMNS).replace("{TAKEOVERS}", TAKEOVERS_COLUMNS)
_SCHEMA_STATEMENTS = [s.strip() for s in SCHEMA.split(";") if s.strip()]
JOBS_TABLE = _SCHEMA_STATEMENTS[0]
# Version -> the statements that bring the schema of the version before to it.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: (f"CREATE TABLE nodes ({NODES_COLUMNS})",
        "ALTER TABLE jobs ADD COLUMN node TEXT",
        "CREATE INDEX jobs_by_node ON jobs (node) WHERE finished_at IS NULL"),
    # The webhook claims of a fleet on PostgreSQL; here only the same shape (one host's
    # sender claims nothing: see SqliteOutboxRows.claim).
    3: ("ALTER TABLE webhook_outbox ADD COLUMN claimed_by TEXT",
        "ALTER TABLE webhook_outbox ADD COLUMN claimed_until REAL"),
    # Failover's fence, takeover mark and taken jobs (see the PostgreSQL backend's version 4).
    4: ("ALTER TABLE jobs ADD COLUMN fence INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE nodes ADD COLUMN taken_over_at REAL",
        "ALTER TABLE nodes ADD COLUMN left_at REAL",
        f"CREATE TABLE takeovers ({TAKEOVERS_COLUMNS})",
        "CREATE INDEX takeovers_by_node ON takeovers (node)"),
}

# Every statement of this backend, by name.
SQL = {
    # meta
    "ping": "SELECT 1 FROM meta LIMIT 1",
    "schema_version": "SELECT value FROM meta WHERE key = 'schema_version'",
    "set_schema_version": "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                          "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    "meta_get": "SELECT value FROM meta WHERE key = ?",
    "meta_add": "INSERT INTO meta (key, value) VALUES (?, ?)",
    "has_meta": "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
    # jobs. Load: two index lookups, not `IS NULL OR >= ?` (which SQLite answers with a full
    # scan): a million expired rows cost a start nothing.
    "load_jobs": f"SELECT seq, {', '.join(records.COLUMNS)} FROM jobs WHERE seq IN ("
                 "SELECT seq FROM jobs WHERE finished_at IS NULL UNION ALL "
                 "SELECT seq FROM jobs WHERE finished_at >= ?) "
                 "AND (node = ? OR node IS NULL) ORDER BY seq",
    "adopt": "UPDATE jobs SET node = ? WHERE node IS NOT ?",
    "job": f"SELECT seq, {', '.join(records.COLUMNS)} FROM jobs "
           "WHERE job_id = ? AND (finished_at IS NULL OR finished_at >= ?)",
    "insert_job": f"INSERT INTO jobs ({', '.join(records.COLUMNS)}) "
                  f"VALUES ({', '.join('?' * len(records.COLUMNS))})",
    "insert_workflow": "INSERT OR REPLACE INTO workflows (job_id, body) VALUES (?, ?)",
    # Every write of a job names its fence (see the PostgreSQL backend).
    "update_job": f"UPDATE jobs SET {_SET_DURABLE} WHERE job_id = ? AND fence = ?",
    "claim_held_job": f"UPDATE jobs SET {_SET_DURABLE} WHERE job_id = ? AND fence = ? "
                      f"AND status = '{records.HELD}'",
    "delete_job": "DELETE FROM jobs WHERE job_id = ? AND fence = ?",
    # Newest first, filtered (a filter not asked for is NULL); the in-memory page is the
    # single host's listing, this one the same over the rows (a fleet of one).
    "page_jobs": f"SELECT seq, {', '.join(records.COLUMNS)} FROM jobs WHERE seq < :before "
                 "AND (:statuses IS NULL OR status IN (SELECT value FROM json_each(:statuses))) "
                 "AND (:gpu IS NULL OR gpu_id = :gpu) AND (:by IS NULL OR submitted_by = :by) "
                 "AND (finished_at IS NULL OR finished_at >= :cutoff) "
                 "ORDER BY seq DESC LIMIT :limit",
    "request_cancel": "UPDATE jobs SET cancel_requested = 1 WHERE job_id = ? "
                      f"AND status NOT IN ({_FINISHED})",
    "cancels_requested": "SELECT job_id FROM jobs WHERE node = ? AND finished_at IS NULL "
                         f"AND cancel_requested AND status NOT IN ({_FINISHED}) ORDER BY seq",
    # Failover, as on PostgreSQL (one writer at a time here: BEGIN IMMEDIATE is the lock).
    "stranded": f"SELECT name FROM nodes WHERE :now > {_TAKEN_AFTER} AND EXISTS "
                "(SELECT 1 FROM jobs WHERE jobs.node = nodes.name AND jobs.finished_at IS NULL "
                f"AND jobs.status NOT IN ({_FINISHED})) ORDER BY name",
    "ended_node": f"SELECT :now - {_TAKEN_AFTER} FROM nodes WHERE name = :name "
                  f"AND :now > {_TAKEN_AFTER}",
    "unfinished_of_node": f"SELECT seq, {', '.join(records.COLUMNS)} FROM jobs WHERE node = ? "
                          f"AND finished_at IS NULL AND status NOT IN ({_FINISHED}) ORDER BY seq",
    "take_job": f"UPDATE jobs SET {_SET_DURABLE}, fence = fence + 1 WHERE job_id = ? AND fence = ?",
    "record_taken": "INSERT INTO takeovers (job_id, fence, node, gpu_id, prompt_id, taken_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
    "mark_taken_over": "UPDATE nodes SET taken_over_at = ? WHERE name = ?",
    "taken_from": "SELECT job_id, fence, gpu_id, prompt_id FROM takeovers WHERE node = ? "
                  "ORDER BY taken_at, job_id",
    "forget_taken": "DELETE FROM takeovers WHERE node = ? AND job_id IN "
                    "(SELECT value FROM json_each(?))",
    "delete_workflow": "DELETE FROM workflows WHERE job_id = ?",
    "workflow": "SELECT body FROM workflows WHERE job_id = ?",
    "expired": "SELECT seq, job_id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ? "
               f"AND status IN ({_FINISHED}) ORDER BY finished_at LIMIT ?",
    "delete_expired_seqs": "DELETE FROM jobs WHERE seq IN (SELECT value FROM json_each(?)) "
                           f"AND finished_at < ? AND status IN ({_FINISHED}) "
                           "RETURNING gpu_id, status, job_id",
    "delete_expired_id": "DELETE FROM jobs WHERE job_id = ? AND finished_at < ? "
                         f"AND status IN ({_FINISHED}) RETURNING gpu_id, status, job_id",
    # A deleted job's delivered and given-up events go with it; one still due stays, to be
    # tried for the day the contract promises, and goes once settled (settled_orphan).
    "delete_settled_events": "DELETE FROM webhook_outbox WHERE job_id = ? AND due_at IS NULL",
    "delete_takeovers": "DELETE FROM takeovers WHERE job_id = ?",  # see the PostgreSQL backend's
    "count_retired": "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) "
                     "DO UPDATE SET value = CAST(value AS INTEGER) + excluded.value",
    "retired": f"SELECT key, value FROM meta WHERE key LIKE '{records.RETIRED_PREFIX}%'",
    # assets
    "asset_by_id": f"SELECT {_ASSET} WHERE a.id = ? ORDER BY a.owner != '', a.created_at LIMIT 1",
    "asset_by_id_of": f"SELECT {_ASSET} WHERE a.id = ? AND a.owner = ? LIMIT 1",
    "asset_by_hash": f"SELECT {_ASSET} WHERE a.hash = ? "
                     "ORDER BY a.owner != '', a.created_at LIMIT 1",
    "asset_by_hash_of": f"SELECT {_ASSET} WHERE a.hash = ? AND a.owner = ? LIMIT 1",
    "add_file": "INSERT OR IGNORE INTO asset_files (hash, size_bytes, content_type) "
                "VALUES (?, ?, ?)",
    "add_asset": "INSERT INTO assets (id, owner, hash, name, created_at, used_at) "
                 "VALUES (?, ?, ?, ?, ?, ?)",
    "remove_asset": "DELETE FROM assets WHERE id = ?",
    "remove_asset_uses": "DELETE FROM asset_uses WHERE asset_id = ?",
    "file_held": "SELECT 1 FROM assets WHERE hash = ? LIMIT 1",
    "files_recorded": "SELECT hash FROM asset_files WHERE hash IN "
                      "(SELECT value FROM json_each(?))",
    "remove_file": "DELETE FROM asset_files WHERE hash = ?",
    "files_unheld": "SELECT hash FROM asset_files WHERE hash NOT IN (SELECT hash FROM assets) "
                    "LIMIT ?",
    "touch_asset": "UPDATE assets SET used_at = ? WHERE id = ?",
    "add_use": "INSERT OR IGNORE INTO asset_uses (asset_id, job_id, fingerprint) VALUES (?, ?, ?)",
    "uses_of": "SELECT job_id, fingerprint FROM asset_uses WHERE asset_id = ?",
    "fingerprints_of": "SELECT fingerprint FROM asset_uses WHERE job_id = ?",
    "remove_uses": "DELETE FROM asset_uses WHERE job_id = ? AND fingerprint = ?",
    "users_ever": "SELECT DISTINCT job_id FROM asset_uses",
    "unused_since": f"SELECT {_ASSET} WHERE a.used_at < ? ORDER BY a.used_at LIMIT ?",
    # the webhook outbox
    "insert_event": "INSERT INTO webhook_outbox (id, job_id, url, event, body, created_at, "
                    "due_at, client) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    "due": f"SELECT {_EVENT} WHERE due_at IS NOT NULL AND due_at <= :now AND {_NOT_BUSY} "
           "ORDER BY due_at, id LIMIT :limit",
    "due_after": f"SELECT {_EVENT} WHERE due_at IS NOT NULL AND due_at <= :now "
                 f"AND (due_at, id) > (:due_at, :id) AND {_NOT_BUSY} "
                 "ORDER BY due_at, id LIMIT :limit",
    "next_due": "SELECT MIN(due_at) FROM webhook_outbox WHERE due_at IS NOT NULL",
    "delivered": "UPDATE webhook_outbox SET due_at = NULL, delivered_at = ?, last_error = NULL, "
                 "attempts = attempts + 1 WHERE id = ?",
    "retry": "UPDATE webhook_outbox SET due_at = ?, last_error = ?, attempts = attempts + 1 "
             "WHERE id = ?",
    "give_up": "UPDATE webhook_outbox SET due_at = NULL, given_up_at = ?, last_error = ?, "
               "attempts = attempts + 1 WHERE id = ?",
    # A settled event whose job the sweep removed while it was due goes too.
    "delete_settled_orphan": "DELETE FROM webhook_outbox WHERE id = ? AND due_at IS NULL "
                             "AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.job_id = "
                             "webhook_outbox.job_id)",
    "depth": "SELECT COUNT(*) FROM webhook_outbox WHERE due_at IS NOT NULL",
    "events_of_job": f"SELECT {_EVENT} WHERE job_id = ? AND url = ? ORDER BY created_at",
    # a whole store (cylindria db copy): read with records.whole_select, written with these
    "whole_contents": records.COUNT_WHOLE,
    "whole_job": f"INSERT INTO jobs (seq, {', '.join(records.COLUMNS)}) "
                 f"VALUES ({', '.join('?' * (1 + len(records.COLUMNS)))})",
    "whole_workflow": "INSERT INTO workflows (job_id, body) VALUES (?, ?)",
    "whole_event": f"INSERT INTO webhook_outbox ({', '.join(records.EVENT_COLUMNS)}) "
                   f"VALUES ({', '.join('?' * len(records.EVENT_COLUMNS))})",
    "meta_set": "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    "meta_keep": "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
    # the fleet's nodes (here a fleet of one), timed by this host's clock, given as :now
    "node_taken_over": "SELECT taken_over_at FROM nodes WHERE name = :name",
    "renew_node": "INSERT INTO nodes (name, advertise_url, started_at, renewed_at, lease_seconds, "
                  "keys_hash, status) VALUES (:name, :url, :now, :now, :lease, :keys, :status) "
                  "ON CONFLICT(name) DO UPDATE SET advertise_url = excluded.advertise_url, "
                  "renewed_at = excluded.renewed_at, lease_seconds = excluded.lease_seconds, "
                  "keys_hash = excluded.keys_hash, status = excluded.status, started_at = "
                  "CASE WHEN :first THEN excluded.started_at ELSE nodes.started_at END, "
                  "taken_over_at = NULL, left_at = NULL",
    "all_nodes": "SELECT name, advertise_url, started_at, renewed_at, lease_seconds, keys_hash, "
                 "status, ? - renewed_at FROM nodes ORDER BY name",
    # A second past the lease's end: no clock's resolution can show a node that left as live.
    "leave_node": "UPDATE nodes SET renewed_at = :now - lease_seconds - 1, left_at = :now "
                  "WHERE name = :name",
    # Data dirs written before schemas had versions, brought to version 1 (once).
    "table_columns": "SELECT name FROM pragma_table_info(?)",
    "drop_old_indexes": "DROP INDEX IF EXISTS jobs_finished_at; "
                        "DROP INDEX IF EXISTS webhook_outbox_due",
    # The first schema (gpu_id and prompt_id NOT NULL, no queue fields): the table moved whole.
    "first_jobs_aside": "DROP INDEX IF EXISTS jobs_by_finished_at; "
                        "ALTER TABLE jobs RENAME TO jobs_first",
    "first_jobs_back": f"INSERT INTO jobs (seq, {', '.join(records.COLUMNS[:15])}) "
                       f"SELECT seq, {', '.join(records.COLUMNS[:15])} FROM jobs_first; "
                       "DROP TABLE jobs_first",
    "add_labels": "ALTER TABLE jobs ADD COLUMN labels TEXT",
    "add_webhook": "ALTER TABLE jobs ADD COLUMN webhook TEXT",
    "add_submitted_by": "ALTER TABLE jobs ADD COLUMN submitted_by TEXT",
    "add_node": "ALTER TABLE jobs ADD COLUMN node TEXT",
    "add_fence": "ALTER TABLE jobs ADD COLUMN fence INTEGER NOT NULL DEFAULT 0",
    # Assets from before owners: those stored so far are the shared ones.
    "unowned_assets_aside": "ALTER TABLE assets RENAME TO assets_unowned",
    "unowned_assets_back": "INSERT OR IGNORE INTO asset_files (hash, size_bytes, content_type) "
                           "SELECT hash, size_bytes, content_type FROM assets_unowned; "
                           "INSERT INTO assets (id, owner, hash, name, created_at, used_at) "
                           f"SELECT id, '{SHARED}', hash, name, created_at, used_at "
                           "FROM assets_unowned; DROP TABLE assets_unowned",
    # An outbox from before events knew their client: filled from the jobs still there.
    "add_event_client": "ALTER TABLE webhook_outbox ADD COLUMN client TEXT NOT NULL DEFAULT ''; "
                        "UPDATE webhook_outbox SET client = COALESCE((SELECT submitted_by "
                        "FROM jobs WHERE jobs.job_id = webhook_outbox.job_id), '')",
}


class _Connection:
    """One SQLite connection and the lock that serialises its users."""

    def __init__(self, path: Path, read_only: bool = False):
        uri = f"{path.resolve().as_uri()}?mode=ro" if read_only else str(path)
        self.conn = sqlite3.connect(uri, uri=read_only, check_same_thread=False,
                                    isolation_level=None, timeout=BUSY_WAIT)
        self.lock = threading.Lock()

    def run(self, name: str, parameters=()) -> sqlite3.Cursor:
        """Execute the named statement (the caller holds the lock)."""
        return self.conn.execute(SQL[name], parameters)

    @contextmanager
    def transaction(self):
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error), the lock held throughout."""
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def close(self) -> None:
        with self.lock:
            self.conn.close()


# SQLite's operational failures (locked past BUSY_WAIT, disk full, I/O error).
_guarded = guarded_by(sqlite3.OperationalError)


class SqliteStorage:
    """Storage in one SQLite file (see cylindria.storage.interface.Storage)."""

    def __init__(self, path: Path, retention: float | None = None, assets: Path | None = None):
        """`assets`: the folder holding the asset files (default: `assets` beside the file)."""
        self.path = Path(path)
        self.name = str(self.path)
        self._make_private()
        self._health = Health(self.name)
        writer = _Connection(self.path)
        # WAL + NORMAL: a commit survives a crash or kill of Cylindria without an fsync per
        # state change (only a power cut can lose the last commits).
        writer.conn.execute("PRAGMA journal_mode=WAL")
        writer.conn.execute("PRAGMA synchronous=NORMAL")
        self._connections = [writer]
        try:
            _migrate(writer.conn)
            sweeper, asset_rows, outbox, nodes = (self._open() for _ in range(4))
            # The sweep's batches touch few pages once: a small cache keeps a sweep of a
            # million rows from leaving 2 MiB of pages behind in a process that runs for months.
            sweeper.conn.execute("PRAGMA cache_size = -256")
        except BaseException:
            self.close()
            raise
        self.meta = SqliteMeta(writer, self._health)
        self.jobs = SqliteJobRows(writer, sweeper, self.path, retention, self._health,
                                  self._connections)
        self.assets = SqliteAssetRows(asset_rows, self._health,
                                      assets or self.path.parent / ASSETS_DIR)
        self.outbox = SqliteOutboxRows(outbox, self._health)
        self.whole = SqliteWholeRows(writer, self.path, self._health)
        self.nodes = SqliteNodeRows(nodes, self._health)

    def cancel_listener(self, name: str) -> None:
        """None: one host's file, no other node to ask it anything."""
        return None

    def _open(self) -> _Connection:
        connection = _Connection(self.path)
        connection.conn.execute("PRAGMA synchronous=NORMAL")
        self._connections.append(connection)
        return connection

    def _make_private(self) -> None:
        """The data dir 0700 and the database 0600 before SQLite opens it: SQLite gives the
        -wal and -shm files it creates the database file's mode (an older start's, tightened)."""
        private_dir(self.path.parent)
        private_file(self.path)
        for suffix in ("-wal", "-shm"):
            tighten(self.path.with_name(self.path.name + suffix))

    def ping(self) -> bool:
        """Whether the file can be read now."""
        try:
            self.meta.ping()
        except StorageUnavailable:
            return False
        return True

    def close(self) -> None:
        """Close every connection."""
        for connection in self._connections:
            connection.close()
        self._connections.clear()


def _migrate(conn: sqlite3.Connection) -> None:
    """Create the schema, or bring an older one to this version; SchemaTooNew for a newer."""
    known = conn.execute(SQL["has_meta"]).fetchone() is not None
    row = conn.execute(SQL["schema_version"]).fetchone() if known else None
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(f"the database was written by a newer Cylindria (schema version "
                           f"{version}; this one knows up to {SCHEMA_VERSION})")
    if version == 0:  # a new file, or one written before schemas had versions
        _create(conn)
        return
    for target in range(version + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        for statement in MIGRATIONS[target]:
            conn.execute(statement)
        conn.execute(SQL["set_schema_version"], (str(target),))
        conn.execute("COMMIT")


def _create(conn: sqlite3.Connection) -> None:
    """Create the schema (or a data dir written before schemas had versions: bring its tables
    to version 1, each step only where a table is of the older shape), in one transaction."""
    def columns(table: str) -> set:
        return {row[0] for row in conn.execute(SQL["table_columns"], (table,))}

    jobs, assets, outbox = columns("jobs"), columns("assets"), columns("webhook_outbox")
    if jobs or assets or outbox:
        logger.info("bringing the database to schema version %d (once)", SCHEMA_VERSION)
    conn.execute("BEGIN IMMEDIATE")
    try:
        _script(conn, "drop_old_indexes")
        if jobs and "held_at" not in jobs:
            _script(conn, "first_jobs_aside")
            conn.execute(JOBS_TABLE)
            _script(conn, "first_jobs_back")
        for added in ("labels", "webhook", "submitted_by", "node", "fence"):
            if jobs and "held_at" in jobs and added not in jobs:
                conn.execute(SQL[f"add_{added}"])
        if "size_bytes" in assets:
            _script(conn, "unowned_assets_aside")
        for statement in _SCHEMA_STATEMENTS:
            conn.execute(statement)
        if "size_bytes" in assets:
            _script(conn, "unowned_assets_back")
        if outbox and "client" not in outbox:
            _script(conn, "add_event_client")
        if outbox and "claimed_by" not in outbox:
            for statement in MIGRATIONS[3]:
                conn.execute(statement)
        conn.execute(SQL["set_schema_version"], (str(SCHEMA_VERSION),))
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _script(conn: sqlite3.Connection, name: str) -> None:
    """Run a named statement list inside the caller's transaction (not executescript, which
    would commit it)."""
    for statement in SQL[name].split("; "):
        conn.execute(statement)


class SqliteMeta:
    """Settings in the meta table."""

    def __init__(self, writer: _Connection, health: Health):
        self._writer, self._health = writer, health

    @_guarded
    def ping(self) -> None:
        """Read the file (StorageUnavailable if it cannot be)."""
        with self._writer.lock:
            self._writer.run("ping").fetchone()

    @_guarded
    def get(self, key: str, default: str) -> str:
        with self._writer.lock:
            row = self._writer.run("meta_get", (key,)).fetchone()
            if row:
                return row[0]
            self._writer.run("meta_add", (key, default))
        return default


class SqliteJobRows:
    """Jobs on the writer connection (the store's), workflows read on their own, the sweep
    on its own."""

    def __init__(self, writer: _Connection, sweeper: _Connection, path: Path,
                 retention: float | None, health: Health, connections: list):
        self._writer, self._sweeper, self._path = writer, sweeper, path
        self.retention = retention  # seconds a finished job is kept; None: for ever
        self._health = health
        self._reader: _Connection | None = None  # opened at the first workflow read
        self._reader_lock = threading.Lock()
        self._connections = connections

    shared = False  # one host's file: every job it holds is in that host's memory

    @_guarded
    def adopt(self, node: str) -> int:
        with self._writer.lock:
            return self._writer.run("adopt", (node, node)).rowcount

    @_guarded
    def load(self, node: str) -> list[Job]:
        with self._writer.lock:
            cursor = self._writer.run("load_jobs", (self._cutoff(), node))
            return [records.to_job(row) for row in cursor]

    @_guarded
    def get(self, job_id: str) -> Job | None:
        with self._writer.lock:
            row = self._writer.run("job", (job_id, self._cutoff())).fetchone()
        return None if row is None else records.to_job(row)

    @_guarded
    def insert(self, job: Job, workflow: bytes) -> int:
        row = records.values(job)
        with self._writer.transaction() as tx:
            try:
                seq = tx.run("insert_job", row).lastrowid
            except sqlite3.IntegrityError:
                if not _delete_expired(tx, "delete_expired_id", job.job_id, self._cutoff()):
                    raise JobIdTaken(job.job_id) from None
                seq = tx.run("insert_job", row).lastrowid
            tx.run("insert_workflow", (job.job_id, workflow))
        return seq

    @_guarded
    def update(self, job: Job, events: Iterable[OutboxRow] = ()) -> bool:
        row = _durable(job)
        events = list(events)
        if not events:
            with self._writer.lock:
                return self._writer.run("update_job", row).rowcount == 1
        with self._writer.transaction() as tx:
            if tx.run("update_job", row).rowcount != 1:
                return False
            _insert_events(tx, events)
        return True

    @_guarded
    def claim_held(self, job: Job, events: Iterable[OutboxRow] = ()) -> bool:
        row = _durable(job)
        with self._writer.transaction() as tx:
            if tx.run("claim_held_job", row).rowcount != 1:
                return False
            _insert_events(tx, list(events))
        return True

    def shared_held(self) -> list[Job]:
        return []  # one host's file: no other node, no shared queue

    @_guarded
    def delete(self, job: Job) -> bool:
        with self._writer.transaction() as tx:
            if tx.run("delete_job", (job.job_id, job.fence)).rowcount != 1:
                return False
            tx.run("delete_workflow", (job.job_id,))
        return True

    @_guarded
    def workflow(self, job_id: str) -> bytes | None:
        with self._reader_lock:
            if self._reader is None:
                self._reader = _Connection(self._path, read_only=True)
                self._connections.append(self._reader)
            with self._reader.lock:
                row = self._reader.run("workflow", (job_id,)).fetchone()
        return None if row is None else bytes(row[0])

    @_guarded
    def expired(self, cutoff: float, limit: int) -> list[tuple[int, str]]:
        with self._sweeper.lock:
            return [tuple(row) for row in self._sweeper.run("expired", (cutoff, limit))]

    @_guarded
    def delete_expired(self, seqs: list[int], cutoff: float) -> Counter:
        if not seqs:
            return Counter()
        with self._sweeper.transaction() as tx:
            return _delete_expired(tx, "delete_expired_seqs", json.dumps(list(seqs)), cutoff)

    @_guarded
    def retired(self) -> Counter:
        with self._sweeper.lock:
            return records.retired_counts(self._sweeper.run("retired"))

    @_guarded
    def page(self, statuses: Iterable[str] | None, gpu_id: int | None, limit: int,
             before: int | None, submitted_by: str | None = None) -> list[Job]:
        parameters = {"before": records.NO_CURSOR if before is None else before,
                      "statuses": None if statuses is None else json.dumps(list(statuses)),
                      "gpu": gpu_id, "by": submitted_by, "cutoff": self._cutoff(),
                      "limit": limit}
        with self._writer.lock:
            return [records.to_job(row) for row in self._writer.run("page_jobs", parameters)]

    @_guarded
    def request_cancel(self, job_id: str) -> bool:
        # One host's file: the node asked is the one holding the job, so nothing to notify.
        with self._writer.lock:
            return self._writer.run("request_cancel", (job_id,)).rowcount == 1

    @_guarded
    def cancels_requested(self, node: str) -> list[str]:
        with self._writer.lock:
            return [row[0] for row in self._writer.run("cancels_requested", (node,))]

    @_guarded
    def stranded(self) -> list[str]:
        with self._writer.lock:
            return [row[0] for row in self._writer.run("stranded", {"now": time.time()})]

    @_guarded
    def take_over(self, node: str, rework: Rework) -> list[tuple[Job, Job]]:
        changed = []
        with self._writer.transaction() as tx:
            now = time.time()
            ended = tx.run("ended_node", {"now": now, "name": node}).fetchone()
            if ended is None:
                return []  # renewed meanwhile
            for row in tx.run("unfinished_of_node", (node,)).fetchall():
                job = records.to_job(row)
                decided = rework(job, ended[0])
                if decided is None:
                    continue
                new, events = decided
                tx.run("take_job", _durable(new))
                new.fence = job.fence + 1
                tx.run("record_taken", (job.job_id, new.fence, node, job.gpu_id, job.prompt_id,
                                        now))
                _insert_events(tx, events)
                changed.append((job, new))
            if changed:
                tx.run("mark_taken_over", (now, node))
        return changed

    @_guarded
    def taken_from(self, node: str) -> list[Taken]:
        with self._writer.lock:
            return [Taken(*row) for row in self._writer.run("taken_from", (node,))]

    @_guarded
    def forget_taken(self, node: str, job_ids: Iterable[str]) -> None:
        with self._writer.lock:
            self._writer.run("forget_taken", (node, json.dumps(list(job_ids))))

    def sweep_turn(self) -> nullcontext:
        """Always this host's turn: one Cylindria per file (the instance lock), one sweep in it."""
        return nullcontext(True)

    def import_rows(self, rows: Iterable[tuple]) -> None:
        """Rows in records.COLUMNS' order, inserted in one transaction (bulk loads)."""
        with self._writer.transaction() as tx:
            tx.conn.executemany(SQL["insert_job"], rows)

    def _cutoff(self) -> float:
        """Finished jobs that ended before this are past retention (-inf: keep all)."""
        return float("-inf") if self.retention is None else time.time() - self.retention


def _delete_expired(tx: _Connection, statement: str, which, cutoff: float) -> Counter:
    """Delete the matching expired rows with their workflows, settled events and takeover
    records, and add them to the durable retired counts (inside the caller's transaction)."""
    rows = tx.run(statement, (which, cutoff)).fetchall()
    for _, _, job_id in rows:
        tx.run("delete_workflow", (job_id,))
        tx.run("delete_settled_events", (job_id,))
        tx.run("delete_takeovers", (job_id,))
    deleted = records.deleted_counts(rows)
    for (gpu, status), n in deleted.items():
        tx.run("count_retired", (records.retired_key(gpu, status.value), n))
    return deleted


def _durable(job: Job) -> list:
    """An update's parameters: the durable fields, then the job id and its fence."""
    return records.values(job, records.DURABLE) + [job.job_id, job.fence]


def _insert_events(tx: _Connection, events: list[OutboxRow]) -> None:
    """Add events inside the caller's transaction."""
    for e in events:
        tx.run("insert_event", (e.id, e.job_id, e.url, e.event, e.body, e.created_at,
                                e.due_at, e.client))


class SqliteAssetRows:
    """Asset rows on a connection of their own; the files' bytes are in the data dir's asset
    folder (one host's store: the asset store writes them there, this reads them)."""

    holds_bytes = False

    def __init__(self, connection: _Connection, health: Health, folder: Path):
        self._c, self._health, self._folder = connection, health, Path(folder)

    @_guarded
    def find(self, *, asset_id: str | None = None, hash_text: str | None = None,
             owner: str | None = None) -> Asset | None:
        name = "asset_by_id" if asset_id is not None else "asset_by_hash"
        key = asset_id if asset_id is not None else hash_text
        with self._c.lock:
            if owner is None:
                row = self._c.run(name, (key,)).fetchone()
            else:
                row = self._c.run(f"{name}_of", (key, owner)).fetchone()
        return None if row is None else Asset(*row)

    @_guarded
    def add_file(self, hash_text: str, size_bytes: int, content_type: str,
                 content: Path | None = None) -> None:
        with self._c.lock:  # the bytes: the folder's file, which the asset store keeps
            self._c.run("add_file", (hash_text, size_bytes, content_type))

    def read_file(self, hash_text: str) -> Iterator[bytes]:
        return read_chunks(self._folder / file_name(hash_text))

    @_guarded
    def stored(self, hashes: list[str]) -> dict[str, bool]:
        with self._c.lock:
            recorded = [row[0] for row in self._c.run("files_recorded", (json.dumps(hashes),))]
        return {hash_text: (self._folder / file_name(hash_text)).is_file()
                for hash_text in recorded}

    @_guarded
    def add(self, asset: Asset) -> None:
        with self._c.lock:
            self._c.run("add_asset", (asset.id, asset.owner, asset.hash, asset.name,
                                      asset.created_at, asset.used_at))

    @_guarded
    def remove(self, asset_id: str) -> None:
        with self._c.transaction() as tx:
            tx.run("remove_asset", (asset_id,))
            tx.run("remove_asset_uses", (asset_id,))

    @_guarded
    def file_held(self, hash_text: str) -> bool:
        with self._c.lock:
            return self._c.run("file_held", (hash_text,)).fetchone() is not None

    @_guarded
    def remove_file(self, hash_text: str) -> None:
        with self._c.lock:
            self._c.run("remove_file", (hash_text,))

    @_guarded
    def files_unheld(self, limit: int) -> list[str]:
        with self._c.lock:
            return [row[0] for row in self._c.run("files_unheld", (limit,))]

    @_guarded
    def touch(self, asset_id: str, when: float) -> None:
        with self._c.lock:
            self._c.run("touch_asset", (when, asset_id))

    @_guarded
    def add_use(self, asset_id: str, job_id: str, fingerprint: str) -> None:
        with self._c.lock:
            self._c.run("add_use", (asset_id, job_id, fingerprint))

    @_guarded
    def uses_of(self, asset_id: str) -> list[tuple[str, str]]:
        with self._c.lock:
            return [tuple(row) for row in self._c.run("uses_of", (asset_id,))]

    @_guarded
    def fingerprints_of(self, job_id: str) -> list[str]:
        with self._c.lock:
            return [row[0] for row in self._c.run("fingerprints_of", (job_id,))]

    @_guarded
    def remove_uses(self, job_id: str, fingerprint: str) -> None:
        with self._c.lock:
            self._c.run("remove_uses", (job_id, fingerprint))

    @_guarded
    def users_ever(self) -> list[str]:
        with self._c.lock:
            return [row[0] for row in self._c.run("users_ever")]

    @_guarded
    def unused_since(self, cutoff: float, limit: int) -> list[Asset]:
        with self._c.lock:
            return [Asset(*row) for row in self._c.run("unused_since", (cutoff, limit))]


class SqliteOutboxRows:
    """The webhook outbox on a connection of its own: the sender's writes never wait for the
    job store's lock, and the store's never for a delivery."""

    def __init__(self, connection: _Connection, health: Health):
        self._c, self._health = connection, health

    @_guarded
    def due(self, now: float, limit: int, *, skip: Iterable[str] = (),
            after: tuple | None = None, jobs: Iterable[str] = (), urls: Iterable[str] = (),
            clients: Iterable[str] = ()) -> list[OutboxRow]:
        parameters = {"now": now, "limit": limit, "skip": json.dumps(list(skip)),
                      "jobs": json.dumps(list(jobs)), "urls": json.dumps(list(urls)),
                      "clients": json.dumps(list(clients))}
        if after is not None:
            parameters["due_at"], parameters["id"] = after
        with self._c.lock:
            rows = self._c.run("due" if after is None else "due_after", parameters).fetchall()
        return [_event(row) for row in rows]

    @_guarded
    def next_due(self) -> float | None:
        with self._c.lock:
            return self._c.run("next_due").fetchone()[0]

    def claim(self, event_id: str, node: str, now: float, seconds: float) -> bool:
        """Always granted, nothing written: one host's file has one sender (the instance
        lock), which never tries an event twice at once; a write per try would only add to
        SQLite's one write lock."""
        return True

    @_guarded
    def delivered(self, event_id: str, now: float) -> None:
        self._settle("delivered", (now, event_id), event_id)

    @_guarded
    def retry(self, event_id: str, error: str, due_at: float) -> None:
        with self._c.lock:
            self._c.run("retry", (due_at, error, event_id))

    @_guarded
    def give_up(self, event_id: str, error: str, now: float) -> None:
        self._settle("give_up", (now, error, event_id), event_id)

    def _settle(self, statement: str, parameters: tuple, event_id: str) -> None:
        """Record a last try; its event goes if the sweep removed its job meanwhile. Two
        one-statement writes, so SQLite's write lock is held no longer than the job store's
        writes can wait."""
        with self._c.lock:
            self._c.run(statement, parameters)
            self._c.run("delete_settled_orphan", (event_id,))

    @_guarded
    def depth(self) -> int:
        with self._c.lock:
            return self._c.run("depth").fetchone()[0]

    @_guarded
    def of_job(self, job_id: str, url: str) -> list[OutboxRow]:
        with self._c.lock:
            return [_event(row) for row in self._c.run("events_of_job", (job_id, url))]


def _event(row) -> OutboxRow:
    """An outbox row as read (body as bytes whatever the driver gives)."""
    return OutboxRow(row[0], row[1], row[2], row[3], bytes(row[4]), *row[5:])


class SqliteNodeRows:
    """The node rows (this node's alone: SQLite is a fleet of one) on a connection of their
    own, so a renewal never waits for the job store's lock."""

    def __init__(self, connection: _Connection, health: Health):
        self._c, self._health = connection, health

    @_guarded
    def renew(self, name: str, advertise_url: str, lease_seconds: float, keys_hash: str,
              status: str, first: bool = False) -> bool:
        with self._c.transaction() as tx:
            mark = tx.run("node_taken_over", {"name": name}).fetchone()
            tx.run("renew_node", {"name": name, "url": advertise_url, "now": time.time(),
                                  "lease": lease_seconds, "keys": keys_hash, "status": status,
                                  "first": first})
        return mark is not None and mark[0] is not None

    @_guarded
    def all(self) -> list[NodeRow]:
        with self._c.lock:
            return [NodeRow(*row) for row in self._c.run("all_nodes", (time.time(),))]

    @_guarded
    def leave(self, name: str) -> None:
        with self._c.lock:
            self._c.run("leave_node", {"now": time.time(), "name": name})


class SqliteWholeRows:
    """The whole store (cylindria db copy): read on a read-only connection of its own,
    written in one transaction on the writer."""

    def __init__(self, writer: _Connection, path: Path, health: Health):
        self._writer, self._path, self._health = writer, path, health

    @_guarded
    def contents(self) -> Contents:
        with self._writer.lock:
            return Contents(*self._writer.run("whole_contents").fetchone())

    def read(self, kind: str, batch: int = 500) -> Iterator[list[tuple]]:
        reader = _Connection(self._path, read_only=True)
        try:
            cursor = reader.conn.execute(records.whole_select(kind))
            while rows := cursor.fetchmany(batch):
                yield [records.portable(kind, row) for row in rows]
        finally:
            reader.close()

    def write(self, batches: Iterable[tuple[str, list[tuple]]], merge: bool) -> None:
        with self._writer.transaction() as tx:
            for kind, rows in batches:
                for name, row in _whole_rows(kind, rows, merge):
                    tx.run(name, row)


def _whole_rows(kind: str, rows: list[tuple], merge: bool) -> Iterator[tuple[str, tuple]]:
    """(statement, parameters) that write a batch of a kind's rows (see WholeRows.write)."""
    for row in rows:
        if kind == "jobs":
            yield ("insert_job", row[1:]) if merge else ("whole_job", row)
        elif kind == "meta" and row[0].startswith(records.RETIRED_PREFIX):
            yield "count_retired", (row[0], int(row[1]))
        elif kind == "meta":
            yield ("meta_keep" if merge else "meta_set"), row
        else:
            yield records.WHOLE_WRITES[kind], row


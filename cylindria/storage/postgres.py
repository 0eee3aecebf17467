"""The PostgreSQL backend (13+): psycopg 3 with its connection pool.

Every call borrows a pooled connection. The pool's connections are in autocommit: a call of
one statement is its own transaction, one round trip (a transaction opened by the driver would
add a BEGIN and a COMMIT, two more, to every write); a call of several statements runs them in
one explicit transaction (`_transaction`: committed as the call returns, rolled back if it
raises), so what it writes lands whole or not at all. A transaction of ours never waits on
anything between its statements, so one left idle longer than IDLE_IN_TRANSACTION belongs to a
process that froze (SIGSTOP, a paused VM) inside it: the server ends it and frees its row
locks, which a takeover of that node's jobs would otherwise wait on. The pool checks a connection before lending it and replaces the
broken ones in the background, so a database that went away and came back is used again
without a restart; meanwhile every call raises StorageUnavailable within POOL_WAIT seconds,
and within DOWN_WAIT once an outage is known (see OutagePool).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterable, Iterator

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool

from comfy.inputs.assetfiles import read_chunks
from comfy.inputs.assets import Asset, SHARED
from comfy.jobs.job import Job, JobStatus
from cylindria.storage import records
from cylindria.storage.interface import (Contents, Health, JobIdTaken, NodeRow, OutboxRow, Rework,
                                        SchemaTooNew, Taken, guarded_by)

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 5
POOL_SIZE = (2, 10)  # connections kept open, and at most
POOL_WAIT = 3.0  # seconds a call waits for a working connection before StorageUnavailable
DOWN_WAIT = 0.1  # the same while the database is known to be down
CONNECT_TIMEOUT = 5  # seconds a new connection may take (unless the URL says otherwise)
# A connection idle longer than this is checked (a round trip) before it is lent; one back
# from use more recently is lent as it is: on a busy host a check per call would add a round
# trip to every write, and a connection the server dropped since fails its call with
# StorageUnavailable (503 with Retry-After) and is then discarded by the pool.
CHECK_AFTER_IDLE = 2.0
MIGRATION_LOCK = 0x6379_6C69  # advisory lock key: one start migrates at a time ("cyli")
SWEEP_LOCK = 0x6379_6C72  # advisory lock key: one retention sweep at a time in a fleet ("cylr")
IDLE_IN_TRANSACTION = 10_000  # ms a transaction may sit idle between two statements (see above)
# Claimed jobs' workflows kept for the read that sends them (within milliseconds): at most
# this many, for at most this many seconds.
CLAIMED_KEPT, CLAIMED_FOR = 64, 10.0

_FINISHED, _ASSET, _EVENT = records.FINISHED_LIST, records.ASSET_FROM, records.EVENT_FROM
_NOT_BUSY = ("id <> ALL(%(skip)s::text[]) AND job_id <> ALL(%(jobs)s::text[]) "
             "AND url <> ALL(%(urls)s::text[]) AND client <> ALL(%(clients)s::text[])")
# A cancel another node asked for (request_cancel) is never written back to false by the
# owner's next write of the job from its memory, which may not know of it yet.
_SET_DURABLE = ", ".join(f"{name} = (jobs.{name} OR %s)" if name == "cancel_requested"
                         else f"{name} = %s" for name in records.DURABLE)
CANCEL_CHANNEL = "cylindria_cancel"  # NOTIFY'd with a job id: its node is to cancel it
HELD_CHANNEL = "cylindria_held"  # NOTIFY'd with a job id: a job entered the shared queue
TAKEN_CHANNEL = "cylindria_taken"  # NOTIFY'd with a job id: a node took it from the shared queue
LISTENER_NAME = "cylindria cancels {node}"  # the listener's application_name
_UNFINISHED = f"status NOT IN ({records.FINISHED_LIST})"
_SHARED_HELD = f"(status = '{records.HELD}' AND auto)"
# Now, in epoch seconds, by the database's clock (clock_timestamp: the time of the statement,
# not of the transaction's start).
_NOW = "extract(epoch FROM clock_timestamp())::double precision"
# When a node's jobs may be taken over: its lease's end, or, for a node that stopped cleanly
# (whose lease ends at once for every other purpose), one lease after it left: a restart
# finds its jobs as it left them. In parentheses: `now - _TAKEN_AFTER` is the time since then.
_TAKEN_AFTER = "(GREATEST(renewed_at, COALESCE(left_at, renewed_at)) + lease_seconds)"
# An event no node is trying: never claimed, or its claim lapsed (its node died mid-try).
_UNCLAIMED = f"(claimed_until IS NULL OR claimed_until < {_NOW})"

# One row per node of the fleet: its lease (renewed_at, by the database's clock, plus
# lease_seconds) and what /fleet shows of it (status: JSON of its GPUs and held jobs).
FLEET_NODES_COLUMNS = """
            name text PRIMARY KEY,
            advertise_url text NOT NULL DEFAULT '',
            started_at double precision NOT NULL,
            renewed_at double precision NOT NULL,
            lease_seconds double precision NOT NULL,
            keys_hash text NOT NULL DEFAULT '',
            status text NOT NULL DEFAULT '{}'"""

# Version -> the statements that bring the schema of the version before to it.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE jobs (
            seq bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            job_id text NOT NULL UNIQUE,
            gpu_id integer,
            prompt_id text,
            fingerprint text NOT NULL,
            status text NOT NULL,
            number double precision,
            submitted_at double precision NOT NULL,
            started_at double precision,
            finished_at double precision,
            error text,
            outputs text,
            warnings text,
            cancel_requested boolean NOT NULL DEFAULT false,
            nodes_done integer NOT NULL DEFAULT 0,
            nodes_total integer NOT NULL DEFAULT 0,
            auto boolean NOT NULL DEFAULT false,
            priority integer NOT NULL DEFAULT 0,
            attempts integer NOT NULL DEFAULT 0,
            held_at double precision,
            labels text,
            webhook text,
            submitted_by text)""",
        "CREATE INDEX jobs_by_finished_at ON jobs (finished_at)",
        "CREATE TABLE workflows (job_id text PRIMARY KEY, body bytea NOT NULL)",
        """CREATE TABLE asset_files (
            hash text PRIMARY KEY,
            size_bytes bigint NOT NULL,
            content_type text NOT NULL)""",
        """CREATE TABLE assets (
            id text PRIMARY KEY,
            owner text NOT NULL,
            hash text NOT NULL,
            name text NOT NULL,
            created_at double precision NOT NULL,
            used_at double precision NOT NULL,
            UNIQUE (owner, hash))""",
        "CREATE INDEX assets_by_hash ON assets (hash)",
        "CREATE INDEX assets_by_used_at ON assets (used_at)",
        """CREATE TABLE asset_uses (
            asset_id text NOT NULL,
            job_id text NOT NULL,
            fingerprint text NOT NULL,
            PRIMARY KEY (asset_id, job_id, fingerprint))""",
        "CREATE INDEX asset_uses_by_job ON asset_uses (job_id)",
        """CREATE TABLE webhook_outbox (
            id text PRIMARY KEY,
            job_id text NOT NULL,
            url text NOT NULL,
            event text NOT NULL,
            body bytea NOT NULL,
            created_at double precision NOT NULL,
            due_at double precision,
            attempts integer NOT NULL DEFAULT 0,
            last_error text,
            delivered_at double precision,
            given_up_at double precision,
            client text NOT NULL DEFAULT '')""",
        "CREATE INDEX webhook_outbox_due_order ON webhook_outbox (due_at, id) "
        "WHERE due_at IS NOT NULL",
        "CREATE INDEX webhook_outbox_job ON webhook_outbox (job_id)",
    ),
    # The fleet (CONTRACT "A fleet"): the nodes sharing this database, each with its lease,
    # and the node each job belongs to (NULL: a job in the shared queue, or written by a
    # Cylindria from before nodes, which the first node to start adopts).
    2: (
        f"""CREATE TABLE nodes ({FLEET_NODES_COLUMNS})""",
        "ALTER TABLE jobs ADD COLUMN node text",
        "CREATE INDEX jobs_by_node ON jobs (node) WHERE finished_at IS NULL",
    ),
    # One webhook sender per event at a time: the node trying an event claims it until a
    # time by the database's clock. No index: the claim is read only on the due rows, which
    # webhook_outbox_due_order finds already.
    3: (
        "ALTER TABLE webhook_outbox ADD COLUMN claimed_by text",
        "ALTER TABLE webhook_outbox ADD COLUMN claimed_until double precision",
    ),
    # Failover (CONTRACT "A fleet"): a job row's fence, raised by each takeover and named by
    # every write of its owner; when a node was last taken over (its next renewal tells it)
    # and when it stopped cleanly; the jobs taken from each node, which it drops from memory
    # and its ComfyUI once back.
    4: (
        "ALTER TABLE jobs ADD COLUMN fence integer NOT NULL DEFAULT 0",
        "ALTER TABLE nodes ADD COLUMN taken_over_at double precision",
        "ALTER TABLE nodes ADD COLUMN left_at double precision",
        """CREATE TABLE takeovers (
            job_id text NOT NULL,
            fence integer NOT NULL,
            node text NOT NULL,
            gpu_id integer,
            prompt_id text,
            taken_at double precision NOT NULL,
            PRIMARY KEY (job_id, fence))""",
        "CREATE INDEX takeovers_by_node ON takeovers (node)",
    ),
    # The asset files' bytes, so a job on any node can use an upload to any other, also once
    # that node is gone: rows of records.CHUNK_BYTES (numbered from 0) per file, written in
    # the transaction that records the file and deleted with its row. Stored EXTERNAL: the
    # files are images, audio and video, already compressed, which TOAST would try again.
    # A file recorded before (its bytes on its node's disk) gains them when that node starts.
    5: (
        """CREATE TABLE asset_chunks (
            hash text NOT NULL,
            n integer NOT NULL,
            bytes bytea NOT NULL,
            PRIMARY KEY (hash, n))""",
        "ALTER TABLE asset_chunks ALTER COLUMN bytes SET STORAGE EXTERNAL",
    ),
}

# Every statement of this backend, by name.
SQL = {
    "ping": "SELECT 1",
    # meta and migrations
    "create_meta": "CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value text NOT NULL)",
    "migration_lock": "SELECT pg_advisory_xact_lock(%s)",
    "schema_version": "SELECT value FROM meta WHERE key = 'schema_version'",
    "set_schema_version": "INSERT INTO meta (key, value) VALUES ('schema_version', %s) "
                          "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    "meta_get": "SELECT value FROM meta WHERE key = %s",
    "meta_add": "INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
    # jobs
    "load_jobs": f"SELECT seq, {', '.join(records.COLUMNS)} FROM jobs "
                 "WHERE (node = %s OR node IS NULL) "
                 "AND (finished_at IS NULL OR finished_at >= %s) ORDER BY seq",
    # Row locks make two starts at once take each unowned row once: the second waits for the
    # first's commit and then finds the row owned (READ COMMITTED re-checks the condition).
    # A held GpuId=auto job of no node is in the shared queue: every node holds it, none adopts it.
    "adopt": f"UPDATE jobs SET node = %s WHERE node IS NULL AND NOT {_SHARED_HELD}",
    "shared_held": f"SELECT seq, {', '.join(records.COLUMNS)} FROM jobs "
                   f"WHERE node IS NULL AND {_SHARED_HELD} ORDER BY seq",
    "job": f"SELECT seq, {', '.join(records.COLUMNS)} FROM jobs "
           "WHERE job_id = %s AND (finished_at IS NULL OR finished_at >= %s)",
    "insert_job": f"INSERT INTO jobs ({', '.join(records.COLUMNS)}) "
                  f"VALUES ({', '.join(['%s'] * len(records.COLUMNS))}) "
                  "ON CONFLICT (job_id) DO NOTHING RETURNING seq",
    # The job and its workflow in one statement (one round trip, not two, on every
    # submission); the workflow only if the job's row was inserted (a taken id writes nothing).
    "insert_job_and_workflow": f"WITH job AS (INSERT INTO jobs ({', '.join(records.COLUMNS)}) "
                               f"VALUES ({', '.join(['%s'] * len(records.COLUMNS))}) "
                               "ON CONFLICT (job_id) DO NOTHING RETURNING seq, job_id), "
                               "body AS (INSERT INTO workflows (job_id, body) "
                               "SELECT job_id, %s FROM job ON CONFLICT (job_id) "
                               "DO UPDATE SET body = excluded.body) SELECT seq FROM job",
    # Every write of a job names its fence: none lands once the fleet has taken the job over.
    "update_job": f"UPDATE jobs SET {_SET_DURABLE} WHERE job_id = %s AND fence = %s",
    # The claim: the row locked only if no one else holds it (SKIP LOCKED: a contested
    # claim fails at once), and written only while it is still held.
    "claim_held_job": f"UPDATE jobs SET {_SET_DURABLE} FROM (SELECT seq FROM jobs "
                      f"WHERE job_id = %s AND fence = %s AND status = '{records.HELD}' "
                      "FOR UPDATE SKIP LOCKED) AS held WHERE jobs.seq = held.seq",
    "delete_job": "DELETE FROM jobs WHERE job_id = %s AND fence = %s",
    # Every node's jobs, newest first: a backward walk of the primary key, filtered (a filter
    # not asked for is NULL, so one statement serves every combination).
    "page_jobs": f"SELECT seq, {', '.join(records.COLUMNS)} FROM jobs WHERE seq < %(before)s "
                 "AND (%(statuses)s::text[] IS NULL OR status = ANY(%(statuses)s::text[])) "
                 "AND (%(gpu)s::integer IS NULL OR gpu_id = %(gpu)s::integer) "
                 "AND (%(by)s::text IS NULL OR submitted_by = %(by)s::text) "
                 "AND (finished_at IS NULL OR finished_at >= %(cutoff)s) "
                 "ORDER BY seq DESC LIMIT %(limit)s",
    "request_cancel": f"UPDATE jobs SET cancel_requested = true WHERE job_id = %s AND {_UNFINISHED}",
    "notify_cancel": f"SELECT pg_notify('{CANCEL_CHANNEL}', %s)",
    "notify_held": f"SELECT pg_notify('{HELD_CHANNEL}', %s)",
    "notify_taken": f"SELECT pg_notify('{TAKEN_CHANNEL}', %s)",
    "listen_cancels": f"LISTEN {CANCEL_CHANNEL}; LISTEN {HELD_CHANNEL}; LISTEN {TAKEN_CHANNEL}",
    "cancels_requested": "SELECT job_id FROM jobs WHERE node = %s AND finished_at IS NULL "
                         f"AND cancel_requested AND {_UNFINISHED} ORDER BY seq",
    # Failover. A node is stranded once its lease has ended with unfinished jobs (those of
    # the jobs_by_node index); its row is locked, only while its lease has still ended, by one
    # taker at a time (SKIP LOCKED: another taker, or its own renewal under way, is never
    # waited for); its jobs' rows are locked for the takeover's transaction, but those locked
    # already, skipped till the next tick: a transaction the stranded node left open (paused,
    # or cut off as it wrote) holds its locks until its session ends, and no taker waits on it.
    "stranded": f"SELECT name FROM nodes WHERE {_NOW} > {_TAKEN_AFTER} AND EXISTS "
                "(SELECT 1 FROM jobs WHERE jobs.node = nodes.name AND jobs.finished_at IS NULL "
                f"AND jobs.{_UNFINISHED}) ORDER BY name",
    "lock_ended_node": f"SELECT {_NOW} - {_TAKEN_AFTER} FROM nodes WHERE name = %s "
                       f"AND {_NOW} > {_TAKEN_AFTER} FOR UPDATE SKIP LOCKED",
    "unfinished_of_node": f"SELECT seq, {', '.join(records.COLUMNS)} FROM jobs WHERE node = %s "
                          f"AND finished_at IS NULL AND {_UNFINISHED} ORDER BY seq "
                          "FOR UPDATE SKIP LOCKED",
    "take_job": f"UPDATE jobs SET {_SET_DURABLE}, fence = fence + 1 WHERE job_id = %s "
                "AND fence = %s",
    "record_taken": "INSERT INTO takeovers (job_id, fence, node, gpu_id, prompt_id, taken_at) "
                    f"VALUES (%s, %s, %s, %s, %s, {_NOW})",
    "mark_taken_over": f"UPDATE nodes SET taken_over_at = {_NOW} WHERE name = %s",
    "taken_from": "SELECT job_id, fence, gpu_id, prompt_id FROM takeovers WHERE node = %s "
                  "ORDER BY taken_at, job_id",
    "forget_taken": "DELETE FROM takeovers WHERE node = %s AND job_id = ANY(%s::text[])",
    "delete_workflows": "DELETE FROM workflows WHERE job_id = ANY(%s::text[])",
    # A reading transaction locks no row: it may wait on its reader as long as that takes (a
    # file streamed to a slow disk, `db copy` writing its target) without IDLE_IN_TRANSACTION.
    "unhurried": "SET LOCAL idle_in_transaction_session_timeout = 0",
    "workflow": "SELECT body FROM workflows WHERE job_id = %s",
    "expired": "SELECT seq, job_id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < %s "
               f"AND status IN ({_FINISHED}) ORDER BY finished_at LIMIT %s",
    "delete_expired_seqs": "DELETE FROM jobs WHERE seq = ANY(%s::bigint[]) AND finished_at < %s "
                           f"AND status IN ({_FINISHED}) RETURNING gpu_id, status, job_id",
    "delete_expired_id": "DELETE FROM jobs WHERE job_id = %s AND finished_at < %s "
                         f"AND status IN ({_FINISHED}) RETURNING gpu_id, status, job_id",
    # A deleted job's delivered and given-up events go with it; one still due stays, to be
    # tried for the day the contract promises, and goes once settled (delete_settled_orphan).
    "delete_settled_events": "DELETE FROM webhook_outbox WHERE job_id = ANY(%s::text[]) "
                             "AND due_at IS NULL",
    # A deleted job's takeover records go with it: a node that comes back later finds its
    # row gone, which lets the job go (a fenced write) just as a record would.
    "delete_takeovers": "DELETE FROM takeovers WHERE job_id = ANY(%s::text[])",
    "count_retired": "INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) "
                     "DO UPDATE SET value = (meta.value::bigint + excluded.value::bigint)::text",
    "retired": f"SELECT key, value FROM meta WHERE key LIKE '{records.RETIRED_PREFIX}%%'",
    # One sweep at a time in a fleet: held by the sweeping session, never waited for.
    "sweep_lock": "SELECT pg_try_advisory_lock(%s)",
    "sweep_unlock": "SELECT pg_advisory_unlock(%s)",
    # assets
    "asset_by_id": f"SELECT {_ASSET} WHERE a.id = %s "
                   f"ORDER BY a.owner <> '{SHARED}', a.created_at LIMIT 1",
    "asset_by_id_of": f"SELECT {_ASSET} WHERE a.id = %s AND a.owner = %s LIMIT 1",
    "asset_by_hash": f"SELECT {_ASSET} WHERE a.hash = %s "
                     f"ORDER BY a.owner <> '{SHARED}', a.created_at LIMIT 1",
    "asset_by_hash_of": f"SELECT {_ASSET} WHERE a.hash = %s AND a.owner = %s LIMIT 1",
    "add_file": "INSERT INTO asset_files (hash, size_bytes, content_type) VALUES (%s, %s, %s) "
                "ON CONFLICT (hash) DO NOTHING",
    "add_asset": "INSERT INTO assets (id, owner, hash, name, created_at, used_at) "
                 "VALUES (%s, %s, %s, %s, %s, %s)",
    "remove_asset": "DELETE FROM assets WHERE id = %s",
    "remove_asset_uses": "DELETE FROM asset_uses WHERE asset_id = %s",
    "file_held": "SELECT 1 FROM assets WHERE hash = %s LIMIT 1",
    "remove_file": "DELETE FROM asset_files WHERE hash = %s",
    # A file's bytes: whether it has them, its row locked so that two nodes adding them at
    # once write them once (the second finds them); each chunk; in order; gone with the row.
    "file_has_bytes": "SELECT EXISTS (SELECT 1 FROM asset_chunks AS c WHERE c.hash = f.hash) "
                      "FROM asset_files AS f WHERE f.hash = %s FOR UPDATE",
    "add_chunk": "INSERT INTO asset_chunks (hash, n, bytes) VALUES (%s, %s, %b) "
                 "ON CONFLICT (hash, n) DO NOTHING",
    "file_chunks": "SELECT bytes FROM asset_chunks WHERE hash = %s ORDER BY n",
    "remove_chunks": "DELETE FROM asset_chunks WHERE hash = %s",
    "files_stored": "SELECT f.hash, EXISTS (SELECT 1 FROM asset_chunks AS c WHERE c.hash = f.hash) "
                    "FROM asset_files AS f WHERE f.hash = ANY(%s::text[])",
    "files_unheld": "SELECT hash FROM asset_files AS f WHERE NOT EXISTS "
                    "(SELECT 1 FROM assets AS a WHERE a.hash = f.hash) LIMIT %s",
    "touch_asset": "UPDATE assets SET used_at = %s WHERE id = %s",
    "add_use": "INSERT INTO asset_uses (asset_id, job_id, fingerprint) VALUES (%s, %s, %s) "
               "ON CONFLICT DO NOTHING",
    "uses_of": "SELECT job_id, fingerprint FROM asset_uses WHERE asset_id = %s",
    "fingerprints_of": "SELECT fingerprint FROM asset_uses WHERE job_id = %s",
    "remove_uses": "DELETE FROM asset_uses WHERE job_id = %s AND fingerprint = %s",
    "users_ever": "SELECT DISTINCT job_id FROM asset_uses",
    "unused_since": f"SELECT {_ASSET} WHERE a.used_at < %s ORDER BY a.used_at LIMIT %s",
    # the webhook outbox
    "insert_event": "INSERT INTO webhook_outbox (id, job_id, url, event, body, created_at, "
                    "due_at, client) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
    # Every node reads every due event (any node can send any): those another node is
    # trying are left out, so no node keeps meeting them.
    "due": f"SELECT {_EVENT} WHERE due_at IS NOT NULL AND due_at <= %(now)s AND {_NOT_BUSY} "
           f"AND {_UNCLAIMED} ORDER BY due_at, id LIMIT %(limit)s",
    "due_after": f"SELECT {_EVENT} WHERE due_at IS NOT NULL AND due_at <= %(now)s "
                 f"AND (due_at, id) > (%(due_at)s, %(id)s) AND {_NOT_BUSY} AND {_UNCLAIMED} "
                 "ORDER BY due_at, id LIMIT %(limit)s",
    "next_due": f"SELECT MIN(due_at) FROM webhook_outbox WHERE due_at IS NOT NULL "
                f"AND {_UNCLAIMED}",
    # The claim: the row locked only if no other node is claiming it (SKIP LOCKED: never
    # waited for), and taken only while the event is still due and unclaimed (READ
    # COMMITTED re-reads the row a claim committed meanwhile, and finds it claimed).
    "claim_event": f"UPDATE webhook_outbox SET claimed_by = %(node)s, claimed_until = {_NOW} "
                   "+ %(seconds)s FROM (SELECT id FROM webhook_outbox WHERE id = %(id)s "
                   f"AND due_at IS NOT NULL AND due_at <= %(now)s AND {_UNCLAIMED} "
                   "FOR UPDATE SKIP LOCKED) AS free WHERE webhook_outbox.id = free.id",
    # A settled try ends its claim.
    "delivered": "UPDATE webhook_outbox SET due_at = NULL, delivered_at = %s, last_error = NULL, "
                 "attempts = attempts + 1, claimed_by = NULL, claimed_until = NULL WHERE id = %s",
    "retry": "UPDATE webhook_outbox SET due_at = %s, last_error = %s, attempts = attempts + 1, "
             "claimed_by = NULL, claimed_until = NULL WHERE id = %s",
    "give_up": "UPDATE webhook_outbox SET due_at = NULL, given_up_at = %s, last_error = %s, "
               "attempts = attempts + 1, claimed_by = NULL, claimed_until = NULL WHERE id = %s",
    "delete_settled_orphan": "DELETE FROM webhook_outbox AS o WHERE o.id = %s AND o.due_at IS NULL "
                             "AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.job_id = o.job_id)",
    "depth": "SELECT COUNT(*) FROM webhook_outbox WHERE due_at IS NOT NULL",
    "events_of_job": f"SELECT {_EVENT} WHERE job_id = %s AND url = %s ORDER BY created_at",
    # a whole store (cylindria db copy): read with records.whole_select, written with these
    "whole_contents": records.COUNT_WHOLE,  # run without parameters: its % is a literal
    "whole_job": f"INSERT INTO jobs (seq, {', '.join(records.COLUMNS)}) "
                 f"VALUES ({', '.join(['%s'] * (1 + len(records.COLUMNS)))})",
    # After jobs written with their own seq, the next job is numbered after them.
    "whole_jobs_numbered": "SELECT setval(pg_get_serial_sequence('jobs', 'seq'), MAX(seq)) "
                           "FROM jobs HAVING MAX(seq) IS NOT NULL",
    "whole_workflow": "INSERT INTO workflows (job_id, body) VALUES (%s, %s)",
    "whole_event": f"INSERT INTO webhook_outbox ({', '.join(records.EVENT_COLUMNS)}) "
                   f"VALUES ({', '.join(['%s'] * len(records.EVENT_COLUMNS))})",
    "meta_set": "INSERT INTO meta (key, value) VALUES (%s, %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    # the fleet's nodes: every time by the database's clock, never a host's
    # A renewal reads (and ends) the mark of a takeover under the row's lock: one racing it
    # waits for the takeover's commit, then sees the mark.
    "node_taken_over": "SELECT taken_over_at FROM nodes WHERE name = %s FOR UPDATE",
    "renew_node": f"INSERT INTO nodes (name, advertise_url, started_at, renewed_at, lease_seconds, "
                  f"keys_hash, status) SELECT %(name)s, %(url)s, now, now, %(lease)s, %(keys)s, "
                  f"%(status)s FROM (SELECT {_NOW} AS now) AS clock ON CONFLICT (name) DO UPDATE SET "
                  "advertise_url = excluded.advertise_url, renewed_at = excluded.renewed_at, "
                  "lease_seconds = excluded.lease_seconds, keys_hash = excluded.keys_hash, "
                  "status = excluded.status, started_at = CASE WHEN %(first)s "
                  "THEN excluded.started_at ELSE nodes.started_at END, taken_over_at = NULL, "
                  "left_at = NULL",
    "all_nodes": "SELECT name, advertise_url, started_at, renewed_at, lease_seconds, keys_hash, "
                 f"status, {_NOW} - renewed_at FROM nodes ORDER BY name",
    # A second past the lease's end: no clock's resolution can show a node that left as live.
    "leave_node": f"UPDATE nodes SET renewed_at = {_NOW} - lease_seconds - 1, left_at = {_NOW} "
                  "WHERE name = %s",
}

# A job's write that also tells every node of it (NOTIFY, sent as the statement commits) when
# it lands, in the same statement: one round trip, where a second statement would need a
# transaction around the two (three more). Its row count is the write's.
def _announcing(statement: str, channel: str, job_id: str = "job_id", also: str = "") -> str:
    return (f"WITH written AS ({statement} RETURNING {job_id} AS job_id) "
            f"SELECT pg_notify('{channel}', job_id){also} FROM written")


SQL.update({
    "insert_held_job": SQL["insert_job_and_workflow"].replace(
        "SELECT seq FROM job", f"SELECT seq, pg_notify('{HELD_CHANNEL}', job_id) FROM job"),
    "update_held_job": _announcing(SQL["update_job"], HELD_CHANNEL),
    # A node's claim of a job of the shared queue brings the job's workflow back with it: it
    # is read next, to send the job (see PostgresJobRows.claim_held).
    "claim_taken_job": _announcing(SQL["claim_held_job"], TAKEN_CHANNEL, "jobs.job_id",
                                   ", (SELECT body FROM workflows AS w WHERE w.job_id = "
                                   "written.job_id)"),
})


def shown(conninfo: str) -> str:
    """The database as logs and errors name it: host, port and name, never a password."""
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "postgresql (unparsable URL)"
    host = params.get("host") or "(PGHOST)"
    port = f":{params['port']}" if params.get("port") else ""
    return f"postgresql://{host}{port}/{params.get('dbname') or '(PGDATABASE)'}"


# A lost or refused connection, a pool with none to lend in time (PoolTimeout and
# PoolClosed are OperationalErrors too), a session the server ended because this process
# froze inside a transaction (IDLE_IN_TRANSACTION; rolled back: nothing of it was written).
_UNAVAILABLE = (psycopg.OperationalError, psycopg.errors.IdleInTransactionSessionTimeout)
_guarded = guarded_by(_UNAVAILABLE)


class OutagePool(ConnectionPool):
    """A pool that waits DOWN_WAIT, not its full timeout, for a connection while the database
    is known to be down: the job store writes under its one lock, so a wait of seconds per
    write would queue every request behind it (all waitress threads stuck on the lock, and
    status reads, which need no database, unanswered for the whole outage). The pool keeps
    reconnecting in the background; the first call that gets a connection ends the outage."""

    def __init__(self, health: Health, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._health = health

    def getconn(self, timeout: float | None = None):
        if timeout is None and self._health.down:
            timeout = DOWN_WAIT
        return super().getconn(timeout)


def check_if_idle(conn) -> None:
    """The pool's check before lending: a round trip only for a connection that has been idle
    (CHECK_AFTER_IDLE); raises for a dead one, which the pool then replaces."""
    if time.monotonic() - getattr(conn, "cylindria_returned_at", 0.0) > CHECK_AFTER_IDLE:
        ConnectionPool.check_connection(conn)


def note_returned(conn) -> None:
    """The pool's reset on return: when this connection was last used."""
    conn.cylindria_returned_at = time.monotonic()


class PostgresStorage:
    """Storage in a PostgreSQL database (see cylindria.storage.interface.Storage)."""

    def __init__(self, conninfo: str, retention: float | None = None,
                 pool_size: tuple[int, int] = POOL_SIZE, wait: float = POOL_WAIT):
        self.name = shown(conninfo)
        self._health = Health(self.name)
        params = conninfo_to_dict(conninfo)
        params.setdefault("connect_timeout", CONNECT_TIMEOUT)
        params.setdefault("application_name", "cylindria")
        self._conninfo = make_conninfo(**params)
        self._pool = OutagePool(self._health, make_conninfo(
            self._conninfo, options=_with_option(params.get("options"),
                                                 "idle_in_transaction_session_timeout",
                                                 IDLE_IN_TRANSACTION)),
            kwargs={"autocommit": True}, min_size=pool_size[0], max_size=pool_size[1],
            timeout=wait, open=False, check=check_if_idle, reset=note_returned,
            name="cylindria")
        try:
            self._pool.open(wait=True, timeout=max(wait, CONNECT_TIMEOUT))
            self._migrate()
        except psycopg.OperationalError as exc:
            self._pool.close()
            raise self._health.failed(exc) from exc
        except BaseException:
            self._pool.close()
            raise
        self.jobs = PostgresJobRows(self._pool, retention, self._health)
        self.assets = PostgresAssetRows(self._pool, self._health)
        self.outbox = PostgresOutboxRows(self._pool, self._health)
        self.meta = PostgresMeta(self._pool, self._health)
        self.whole = PostgresWholeRows(self._pool, self._health)
        self.nodes = PostgresNodeRows(self._pool, self._health)

    def _migrate(self) -> None:
        """Create the schema or bring it to this version, one start at a time (an advisory
        lock held by the transaction); SchemaTooNew for a newer one."""
        with _transaction(self._pool) as conn:
            conn.execute(SQL["migration_lock"], (MIGRATION_LOCK,))
            conn.execute(SQL["create_meta"])
            row = conn.execute(SQL["schema_version"]).fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise SchemaTooNew(f"the database {self.name} was written by a newer Cylindria "
                                   f"(schema version {version}; this one knows up to "
                                   f"{SCHEMA_VERSION})")
            for target in sorted(v for v in MIGRATIONS if version < v <= SCHEMA_VERSION):
                logger.info("database %s: schema version %d", self.name, target)
                for statement in MIGRATIONS[target]:
                    conn.execute(statement)
                conn.execute(SQL["set_schema_version"], (str(target),))

    def ping(self) -> bool:
        """Whether the database answers now (a short wait for a connection)."""
        try:
            with self._pool.connection(timeout=1.0) as conn:
                conn.execute(SQL["ping"])
        except psycopg.Error as exc:
            self._health.failed(exc)
            return False
        self._health.succeeded()
        return True

    def cancel_listener(self, name: str) -> PostgresCancelListener:
        # The pool's Health: one outage is one WARNING (and one "reachable again"), whichever
        # of the pool's calls or the listener meets it first.
        return PostgresCancelListener(self._conninfo, name, self._health)

    def close(self) -> None:
        """Close the pool (and its background workers)."""
        self._pool.close()


class PostgresCancelListener:
    """A connection outside the pool (it stays in LISTEN for as long as the node runs) that
    hears `request_cancel`'s notices. Its outages are its own (its own Health): one lost
    listening connection says nothing of the pool's."""

    def __init__(self, conninfo: str, node: str, health: Health):
        self._conninfo = make_conninfo(conninfo, application_name=LISTENER_NAME.format(node=node))
        self._health = health
        self._conn: psycopg.Connection | None = None

    @_guarded
    def listen(self) -> None:
        self.close()
        conn = psycopg.connect(self._conninfo, autocommit=True)
        try:
            conn.execute(SQL["listen_cancels"])
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    @_guarded
    def wait(self, timeout: float) -> list[tuple[str, str]]:
        if self._conn is None or self._conn.closed:
            raise psycopg.OperationalError("not listening")
        return [(notice.channel, notice.payload)
                for notice in self._conn.notifies(timeout=timeout, stop_after=1)]

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


@contextmanager
def _transaction(pool: ConnectionPool) -> Iterator[psycopg.Connection]:
    """A pooled connection inside one transaction: several statements that land together."""
    with pool.connection() as conn, conn.transaction():
        yield conn


def _with_option(options: str | None, name: str, value) -> str:
    """A connection's `options` (server settings) with one more, unless the URL sets it."""
    options = options or ""
    return options if f"{name}=" in options else f"{options} -c {name}={value}".strip()


class _Rows:
    """Calls that each run in one pooled transaction (one statement: autocommit's own)."""

    def __init__(self, pool: ConnectionPool, health: Health):
        self._pool, self._health = pool, health

    def _one(self, name: str, parameters=()):
        """The first row of a named statement, in a transaction of its own."""
        with self._pool.connection() as conn:
            return conn.execute(SQL[name], parameters).fetchone()

    def _all(self, name: str, parameters=()) -> list:
        """Every row of a named statement, in a transaction of its own."""
        with self._pool.connection() as conn:
            return conn.execute(SQL[name], parameters).fetchall()

    def _run(self, name: str, parameters=()) -> int:
        """A named statement's row count, in a transaction of its own."""
        with self._pool.connection() as conn:
            return conn.execute(SQL[name], parameters).rowcount


class PostgresMeta(_Rows):
    """Settings in the meta table."""

    @_guarded
    def get(self, key: str, default: str) -> str:
        with _transaction(self._pool) as conn:
            conn.execute(SQL["meta_add"], (key, default))
            return conn.execute(SQL["meta_get"], (key,)).fetchone()[0]


class PostgresJobRows(_Rows):
    """Jobs, workflows and retention counters."""

    def __init__(self, pool: ConnectionPool, retention: float | None, health: Health):
        super().__init__(pool, health)
        self.retention = retention  # seconds a finished job is kept; None: for ever
        self._claimed = _Claimed(CLAIMED_KEPT, CLAIMED_FOR)

    shared = True  # the fleet's database: other nodes write it too

    @_guarded
    def adopt(self, node: str) -> int:
        return self._run("adopt", (node,))

    @_guarded
    def load(self, node: str) -> list[Job]:
        return [records.to_job(row) for row in self._all("load_jobs", (node, self._cutoff()))]

    @_guarded
    def get(self, job_id: str) -> Job | None:
        row = self._one("job", (job_id, self._cutoff()))
        return None if row is None else records.to_job(row)

    @_guarded
    def insert(self, job: Job, workflow: bytes) -> int:
        row = [*records.values(job, flags_as_int=False), workflow]
        statement = "insert_held_job" if _enters_queue(job) else "insert_job_and_workflow"
        with self._pool.connection() as conn:
            inserted = conn.execute(SQL[statement], row).fetchone()
            if inserted is None:  # the id is taken: by a job past retention, it gives way
                with conn.transaction():
                    if _delete_expired(conn, "delete_expired_id", job.job_id, self._cutoff()):
                        inserted = conn.execute(SQL[statement], row).fetchone()
            if inserted is None:
                raise JobIdTaken(job.job_id)
        return inserted[0]

    @_guarded
    def update(self, job: Job, events: Iterable[OutboxRow] = ()) -> bool:
        # A job put back in the shared queue is announced to every node.
        return self._write("update_held_job" if _enters_queue(job) else "update_job", job,
                           events)

    @_guarded
    def claim_held(self, job: Job, events: Iterable[OutboxRow] = ()) -> bool:
        if job.node is None:
            return self._write("claim_held_job", job, events)
        # A job out of the shared queue (a node's now): the others drop it. Its workflow,
        # which the claiming node reads next to send it, comes back in the same round trip
        # and is kept for that read.
        events = list(events)
        with self._pool.connection() as conn, \
                (conn.transaction() if events else nullcontext()):
            row = conn.execute(SQL["claim_taken_job"], _durable(job)).fetchone()
            if row is None:
                return False
            _insert_events(conn, events)
        if row[1] is not None:
            self._claimed.put(job.job_id, bytes(row[1]))
        return True

    def _write(self, statement: str, job: Job, events: Iterable[OutboxRow]) -> bool:
        """A fenced write of a job's row (its statement announces what it must) and, only if
        it landed, its events with it: without events one statement, one round trip."""
        events = list(events)
        with self._pool.connection() as conn:
            if not events:
                return conn.execute(SQL[statement], _durable(job)).rowcount == 1
            with conn.transaction():
                if conn.execute(SQL[statement], _durable(job)).rowcount != 1:
                    return False
                _insert_events(conn, events)
        return True

    @_guarded
    def shared_held(self) -> list[Job]:
        return [records.to_job(row) for row in self._all("shared_held")]

    @_guarded
    def delete(self, job: Job) -> bool:
        with _transaction(self._pool) as conn:
            if conn.execute(SQL["delete_job"], (job.job_id, job.fence)).rowcount != 1:
                return False
            conn.execute(SQL["delete_workflows"], ([job.job_id],))
        return True

    def workflow(self, job_id: str) -> bytes | None:
        # Not guarded as a whole: one kept from its claim reached no database, and must not
        # count as a call that did (it would end an outage in the log while one lasts).
        body = self._claimed.pop(job_id)
        return body if body is not None else self._stored_workflow(job_id)

    @_guarded
    def _stored_workflow(self, job_id: str) -> bytes | None:
        row = self._one("workflow", (job_id,))
        return None if row is None else bytes(row[0])

    @_guarded
    def expired(self, cutoff: float, limit: int) -> list[tuple[int, str]]:
        return [tuple(row) for row in self._all("expired", (cutoff, limit))]

    def delete_expired(self, seqs: list[int], cutoff: float) -> Counter:
        # Nothing to delete reaches no database (see workflow).
        return self._delete_expired(list(seqs), cutoff) if seqs else Counter()

    @_guarded
    def _delete_expired(self, seqs: list[int], cutoff: float) -> Counter:
        with _transaction(self._pool) as conn:
            return _delete_expired(conn, "delete_expired_seqs", seqs, cutoff)

    @_guarded
    def retired(self) -> Counter:
        return records.retired_counts(self._all("retired"))

    @_guarded
    def page(self, statuses: Iterable[str] | None, gpu_id: int | None, limit: int,
             before: int | None, submitted_by: str | None = None) -> list[Job]:
        if submitted_by is not None and "\0" in submitted_by:
            return []  # no row's name holds a NUL (PostgreSQL's text cannot), nor may a parameter
        rows = self._all("page_jobs", {
            "before": records.NO_CURSOR if before is None else before,
            "statuses": None if statuses is None else list(statuses), "gpu": gpu_id,
            "by": submitted_by, "cutoff": self._cutoff(), "limit": limit})
        return [records.to_job(row) for row in rows]

    @_guarded
    def request_cancel(self, job_id: str) -> bool:
        with _transaction(self._pool) as conn:
            if conn.execute(SQL["request_cancel"], (job_id,)).rowcount != 1:
                return False
            conn.execute(SQL["notify_cancel"], (job_id,))  # sent when this commits
        return True

    @_guarded
    def cancels_requested(self, node: str) -> list[str]:
        return [row[0] for row in self._all("cancels_requested", (node,))]

    @_guarded
    def stranded(self) -> list[str]:
        return [row[0] for row in self._all("stranded")]

    @_guarded
    def take_over(self, node: str, rework: Rework) -> list[tuple[Job, Job]]:
        changed = []
        with _transaction(self._pool) as conn:
            ended = conn.execute(SQL["lock_ended_node"], (node,)).fetchone()
            if ended is None:
                return []  # renewed meanwhile, or another node is taking it over
            for row in conn.execute(SQL["unfinished_of_node"], (node,)).fetchall():
                job = records.to_job(row)
                decided = rework(job, ended[0])
                if decided is None:
                    continue
                new, events = decided
                conn.execute(SQL["take_job"], _durable(new))  # its row is locked: it lands
                new.fence = job.fence + 1
                conn.execute(SQL["record_taken"], (job.job_id, new.fence, node, job.gpu_id,
                                                   job.prompt_id))
                _insert_events(conn, events)
                _notify_shared(conn, new)
                changed.append((job, new))
            if changed:
                conn.execute(SQL["mark_taken_over"], (node,))
        return changed

    @_guarded
    def taken_from(self, node: str) -> list[Taken]:
        return [Taken(*row) for row in self._all("taken_from", (node,))]

    @_guarded
    def forget_taken(self, node: str, job_ids: Iterable[str]) -> None:
        self._run("forget_taken", (node, list(job_ids)))

    @contextmanager
    def sweep_turn(self) -> Iterator[bool]:
        """A session-level advisory lock on a connection of the pool, held for the sweep's
        pass (in autocommit: no transaction stays open meanwhile), released after."""
        conn = self._take_sweep_lock()
        if conn is None:
            yield False
            return
        try:
            yield True
        finally:
            _give_back_sweep_lock(self._pool, conn)

    @_guarded
    def _take_sweep_lock(self) -> psycopg.Connection | None:
        """A connection holding the sweep lock, or None if another node's session holds it."""
        conn = self._pool.getconn()
        try:
            ours = conn.execute(SQL["sweep_lock"], (SWEEP_LOCK,)).fetchone()[0]
        except BaseException:
            self._pool.putconn(conn)
            raise
        if not ours:
            self._pool.putconn(conn)
            return None
        return conn

    def _cutoff(self) -> float:
        """Finished jobs that ended before this are past retention (-inf: keep all)."""
        return float("-inf") if self.retention is None else time.time() - self.retention


class _Claimed:
    """Workflows that came back with claims, by job id, until read. A claim whose job was
    never sent (cancelled meanwhile) leaves its workflow here: the oldest go past `size`,
    and none is used `seconds` after its claim (its job may have ended and its id been
    taken by another workflow since)."""

    def __init__(self, size: int, seconds: float):
        self._size, self._seconds = size, seconds
        self._bodies: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, job_id: str, body: bytes) -> None:
        with self._lock:
            self._bodies[job_id] = (time.monotonic() + self._seconds, body)
            while len(self._bodies) > self._size:
                self._bodies.popitem(last=False)

    def pop(self, job_id: str) -> bytes | None:
        with self._lock:
            until, body = self._bodies.pop(job_id, (0.0, None))
        return body if time.monotonic() < until else None


def _give_back_sweep_lock(pool: ConnectionPool, conn: psycopg.Connection) -> None:
    """Release the sweep lock and return its connection; one that cannot release it is
    closed (its session's end releases the lock), never lent again still holding it."""
    try:
        conn.execute(SQL["sweep_unlock"], (SWEEP_LOCK,))
    except psycopg.Error:
        conn.close()
    finally:
        pool.putconn(conn)


def _notify_shared(conn: psycopg.Connection, job: Job) -> None:
    """Tell every node (when the caller's transaction commits) of a job now in the shared
    queue."""
    if _enters_queue(job):
        conn.execute(SQL["notify_held"], (job.job_id,))


def _enters_queue(job: Job) -> bool:
    """Whether a job written as it is now is in the shared queue: held, GpuId=auto, of no
    node (every node is told of it)."""
    return job.node is None and job.auto and job.status == JobStatus.HELD


def _durable(job: Job) -> list:
    """An update's parameters: the durable fields, then the job id and its fence."""
    return records.values(job, records.DURABLE, flags_as_int=False) + [job.job_id, job.fence]


def _delete_expired(conn: psycopg.Connection, statement: str, which, cutoff: float) -> Counter:
    """Delete the matching expired rows with their workflows, settled events and takeover
    records, and add them to the durable retired counts (inside the caller's transaction)."""
    rows = conn.execute(SQL[statement], (which, cutoff)).fetchall()
    if not rows:
        return Counter()
    job_ids = [job_id for _, _, job_id in rows]
    conn.execute(SQL["delete_workflows"], (job_ids,))
    conn.execute(SQL["delete_settled_events"], (job_ids,))
    conn.execute(SQL["delete_takeovers"], (job_ids,))
    deleted = records.deleted_counts(rows)
    for (gpu, status), n in deleted.items():
        conn.execute(SQL["count_retired"], (records.retired_key(gpu, status.value), str(n)))
    return deleted


def _insert_events(conn: psycopg.Connection, events: Iterable[OutboxRow]) -> None:
    """Add events inside the caller's transaction."""
    rows = [(e.id, e.job_id, e.url, e.event, e.body, e.created_at, e.due_at, e.client)
            for e in events]
    if rows:
        with conn.cursor() as cursor:
            cursor.executemany(SQL["insert_event"], rows)


class PostgresAssetRows(_Rows):
    """Asset rows, and their files' bytes in asset_chunks."""

    holds_bytes = True

    @_guarded
    def find(self, *, asset_id: str | None = None, hash_text: str | None = None,
             owner: str | None = None) -> Asset | None:
        name = "asset_by_id" if asset_id is not None else "asset_by_hash"
        key = asset_id if asset_id is not None else hash_text
        row = self._one(name, (key,)) if owner is None else self._one(f"{name}_of", (key, owner))
        return None if row is None else Asset(*row)

    @_guarded
    def add_file(self, hash_text: str, size_bytes: int, content_type: str,
                 content: Path | None = None) -> None:
        with _transaction(self._pool) as conn:
            conn.execute(SQL["add_file"], (hash_text, size_bytes, content_type))
            if content is None or conn.execute(SQL["file_has_bytes"], (hash_text,)).fetchone()[0]:
                return
            for n, chunk in enumerate(read_chunks(content)):
                conn.execute(SQL["add_chunk"], (hash_text, n, chunk))

    def read_file(self, hash_text: str) -> Iterator[bytes]:
        # A generator: the connection is taken at the first chunk and held until the last
        # (one transaction, so a removal meanwhile never cuts a file short), each chunk
        # fetched on its own from a server-side cursor, in binary (no hex copy).
        try:
            with _transaction(self._pool) as conn, \
                    conn.cursor(name="file_chunks", binary=True) as cursor:
                conn.execute(SQL["unhurried"])
                cursor.execute(SQL["file_chunks"], (hash_text,))
                found = False
                while (row := cursor.fetchone()) is not None:
                    found = True
                    yield bytes(row[0])
        except _UNAVAILABLE as exc:
            raise self._health.failed(exc) from exc
        self._health.succeeded()
        if not found:
            raise FileNotFoundError(f"the database {self._health.name} holds no bytes of "
                                    f"{hash_text}")

    @_guarded
    def stored(self, hashes: list[str]) -> dict[str, bool]:
        return dict(self._all("files_stored", (list(hashes),)))

    @_guarded
    def add(self, asset: Asset) -> None:
        self._run("add_asset", (asset.id, asset.owner, asset.hash, asset.name,
                                asset.created_at, asset.used_at))

    @_guarded
    def remove(self, asset_id: str) -> None:
        with _transaction(self._pool) as conn:
            conn.execute(SQL["remove_asset"], (asset_id,))
            conn.execute(SQL["remove_asset_uses"], (asset_id,))

    @_guarded
    def file_held(self, hash_text: str) -> bool:
        return self._one("file_held", (hash_text,)) is not None

    @_guarded
    def remove_file(self, hash_text: str) -> None:
        with _transaction(self._pool) as conn:
            conn.execute(SQL["remove_chunks"], (hash_text,))
            conn.execute(SQL["remove_file"], (hash_text,))

    @_guarded
    def files_unheld(self, limit: int) -> list[str]:
        return [row[0] for row in self._all("files_unheld", (limit,))]

    @_guarded
    def touch(self, asset_id: str, when: float) -> None:
        self._run("touch_asset", (when, asset_id))

    @_guarded
    def add_use(self, asset_id: str, job_id: str, fingerprint: str) -> None:
        self._run("add_use", (asset_id, job_id, fingerprint))

    @_guarded
    def uses_of(self, asset_id: str) -> list[tuple[str, str]]:
        return [tuple(row) for row in self._all("uses_of", (asset_id,))]

    @_guarded
    def fingerprints_of(self, job_id: str) -> list[str]:
        return [row[0] for row in self._all("fingerprints_of", (job_id,))]

    @_guarded
    def remove_uses(self, job_id: str, fingerprint: str) -> None:
        self._run("remove_uses", (job_id, fingerprint))

    @_guarded
    def users_ever(self) -> list[str]:
        return [row[0] for row in self._all("users_ever")]

    @_guarded
    def unused_since(self, cutoff: float, limit: int) -> list[Asset]:
        return [Asset(*row) for row in self._all("unused_since", (cutoff, limit))]


class PostgresOutboxRows(_Rows):
    """The webhook outbox."""

    @_guarded
    def due(self, now: float, limit: int, *, skip: Iterable[str] = (),
            after: tuple | None = None, jobs: Iterable[str] = (), urls: Iterable[str] = (),
            clients: Iterable[str] = ()) -> list[OutboxRow]:
        parameters = {"now": now, "limit": limit, "skip": list(skip), "jobs": list(jobs),
                      "urls": list(urls), "clients": list(clients)}
        if after is not None:
            parameters["due_at"], parameters["id"] = after
        return [_event(row) for row in self._all("due" if after is None else "due_after",
                                                 parameters)]

    @_guarded
    def next_due(self) -> float | None:
        return self._one("next_due")[0]

    @_guarded
    def claim(self, event_id: str, node: str, now: float, seconds: float) -> bool:
        return self._run("claim_event", {"id": event_id, "node": node, "now": now,
                                         "seconds": seconds}) == 1

    @_guarded
    def delivered(self, event_id: str, now: float) -> None:
        self._settle("delivered", (now, event_id), event_id)

    @_guarded
    def retry(self, event_id: str, error: str, due_at: float) -> None:
        self._run("retry", (due_at, error, event_id))

    @_guarded
    def give_up(self, event_id: str, error: str, now: float) -> None:
        self._settle("give_up", (now, error, event_id), event_id)

    def _settle(self, statement: str, parameters: tuple, event_id: str) -> None:
        """Record a last try; its event goes if the sweep removed its job meanwhile."""
        with _transaction(self._pool) as conn:
            conn.execute(SQL[statement], parameters)
            conn.execute(SQL["delete_settled_orphan"], (event_id,))

    @_guarded
    def depth(self) -> int:
        return self._one("depth")[0]

    @_guarded
    def of_job(self, job_id: str, url: str) -> list[OutboxRow]:
        return [_event(row) for row in self._all("events_of_job", (job_id, url))]


def _event(row) -> OutboxRow:
    """An outbox row as read."""
    return OutboxRow(row[0], row[1], row[2], row[3], bytes(row[4]), *row[5:])


class PostgresNodeRows(_Rows):
    """The fleet's nodes and their leases, timed by the database's clock."""

    @_guarded
    def renew(self, name: str, advertise_url: str, lease_seconds: float, keys_hash: str,
              status: str, first: bool = False) -> bool:
        with _transaction(self._pool) as conn:
            mark = conn.execute(SQL["node_taken_over"], (name,)).fetchone()
            conn.execute(SQL["renew_node"], {"name": name, "url": advertise_url,
                                             "lease": lease_seconds, "keys": keys_hash,
                                             "status": status, "first": first})
        return mark is not None and mark[0] is not None

    @_guarded
    def all(self) -> list[NodeRow]:
        return [NodeRow(*row) for row in self._all("all_nodes")]

    @_guarded
    def leave(self, name: str) -> None:
        self._run("leave_node", (name,))


class PostgresWholeRows(_Rows):
    """The whole store (cylindria db copy): each kind read through a server-side cursor,
    everything written in one transaction."""

    @_guarded
    def contents(self) -> Contents:
        with self._pool.connection() as conn:
            return Contents(*(int(n) for n in conn.execute(SQL["whole_contents"]).fetchone()))

    def read(self, kind: str, batch: int = 500) -> Iterator[list[tuple]]:
        with _transaction(self._pool) as conn, conn.cursor(name=f"whole_{kind}") as cursor:
            conn.execute(SQL["unhurried"])
            cursor.execute(records.whole_select(kind))
            while rows := cursor.fetchmany(batch):
                yield [records.portable(kind, row) for row in rows]

    def write(self, batches: Iterable[tuple[str, list[tuple]]], merge: bool) -> None:
        with _transaction(self._pool) as conn, conn.cursor() as cursor:
            for kind, rows in batches:
                for name, parameters in _whole_statements(kind, rows, merge):
                    if parameters:
                        cursor.executemany(SQL[name], parameters)
            if not merge:
                cursor.execute(SQL["whole_jobs_numbered"])


def _whole_statements(kind: str, rows: list[tuple], merge: bool) -> Iterator[tuple[str, list]]:
    """(statement, parameter rows) that write a batch of a kind's rows (see WholeRows.write)."""
    if kind == "jobs":
        yield ("insert_job", [row[1:] for row in rows]) if merge else ("whole_job", rows)
    elif kind == "meta":
        retired = [(key, value) for key, value in rows if key.startswith(records.RETIRED_PREFIX)]
        others = [row for row in rows if not row[0].startswith(records.RETIRED_PREFIX)]
        yield "count_retired", retired
        yield ("meta_add" if merge else "meta_set"), others
    else:
        yield records.WHOLE_WRITES[kind], rows


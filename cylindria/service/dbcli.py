"""`cylindria db copy --from URL --to URL [--merge]`: a host's whole store moved between
SQLite and PostgreSQL (cylindria.storage.copy does the copying; this reads the command line, finds the
data dirs, takes the instance locks and prints what was copied)."""
from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from cylindria.config.options import ConfigError, default_data_dir, default_node
from cylindria.config.values import database_url
from cylindria.service.instance import DataDirLock, InstanceLock, NodeLock
from cylindria.storage import (ASSETS_DIR, SQLITE_SCHEME, SchemaTooNew, StorageUnavailable,
                               open_url)
from cylindria.storage.copy import Copied, CopyRefused, Side, copy_store

DATA_DIR_ENV = "CYLINDRIA_DATA_DIR"
KEY_VALUE = re.compile(r"\s*\w+\s*=")  # libpq's `host=... dbname=...`

DESCRIPTION = """\
Copy a host's whole store of record from one database to another: SQLite to PostgreSQL,
back, or between two of a kind. Copied: every job (finished and unfinished, with its
workflow; the held queue with its order, priorities and attempts), the assets with their
owners, uses and files, the webhook outbox (pending and settled events with their attempt
counts and due times), retention's counters and the instance id (the websocket clientId
that running jobs were sent with; --merge keeps the target's). Not copied: what lives in the
data dir as files (api_key, webhook_secret, idempotency_secret, logs): copy those yourself
when the host moves.

URLs as --database takes them: postgresql://user:pass@host:5432/db, libpq key=value
parameters, sqlite:///path; a bare path is a SQLite file.

Asset files: a PostgreSQL store holds their bytes in the database (a fleet's nodes each
keep a cache of them in their data dir's assets/ folder); a SQLite store's are in its data
dir's assets/ folder. A copy to PostgreSQL writes the bytes into the database, in the same
transaction; a copy to SQLite writes the files its folder lacks. The bytes are read from the
source's database, or from the source's folder (a SQLite store's; a PostgreSQL database
written before it held the bytes). A SQLite store's data dir is its file's folder; a
PostgreSQL store's is the other side's (a move on one host: the files stay where they are),
or $CYLINDRIA_DATA_DIR or the default data dir when both are PostgreSQL. --from-data-dir and
--to-data-dir name them otherwise.

Stop Cylindria first: the copy takes the instance lock of both data dirs (and of this
host's node name on a PostgreSQL database) and refuses while a Cylindria holds one. The
target must be empty unless --merge (then no job id may be in both); everything is written
in one transaction, so a copy that fails leaves the target as it was.

Exit status: 0 copied; 2 refused (nothing written); 1 the copy failed (target unchanged)."""


@dataclass(frozen=True)
class End:
    """One side of the copy as given: its URL for storage.open_url, and its data dir."""

    url: str
    data_dir: Path

    @property
    def sqlite(self) -> Path | None:
        """The SQLite file, or None for PostgreSQL."""
        return Path(self.url[len(SQLITE_SCHEME):]) if self.url.startswith(SQLITE_SCHEME) else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cylindria db copy", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--from", dest="source", required=True, metavar="URL",
                        help="the store to copy (it is only read)")
    parser.add_argument("--to", dest="target", required=True, metavar="URL",
                        help="the store to write (empty, unless --merge)")
    parser.add_argument("--merge", action="store_true",
                        help="add to a target that holds rows (no job id may be in both)")
    parser.add_argument("--from-data-dir", type=Path, metavar="DIR",
                        help="the data dir whose assets/ folder holds the source's files")
    parser.add_argument("--to-data-dir", type=Path, metavar="DIR",
                        help="the data dir whose assets/ folder gets the target's files")
    return parser


def as_url(text: str) -> str:
    """A URL as --database takes it; a bare path is a SQLite file (absolute)."""
    if "://" in text or KEY_VALUE.match(text):
        return database_url(text)
    return f"{SQLITE_SCHEME}{Path(text).expanduser().resolve()}"


def ends(args: argparse.Namespace, environ=os.environ) -> tuple[End, End]:
    """Both sides with their data dirs (see DESCRIPTION for the defaults)."""
    source, target = as_url(args.source), as_url(args.target)
    dirs = [args.from_data_dir, args.to_data_dir]
    for n, url in enumerate((source, target)):
        if dirs[n] is None and url.startswith(SQLITE_SCHEME):
            dirs[n] = Path(url[len(SQLITE_SCHEME):]).parent
    shared = dirs[0] or dirs[1] or Path(environ.get(DATA_DIR_ENV) or default_data_dir())
    return End(source, dirs[0] or shared), End(target, dirs[1] or shared)


def check(source: End, target: End) -> None:
    """ConfigError for a source that is not there, or a target that is the source."""
    if source.sqlite is not None and not source.sqlite.is_file():
        raise ConfigError(f"no SQLite store at {source.sqlite}")
    if source.sqlite is not None and target.sqlite is not None \
            and source.sqlite.resolve() == target.sqlite.resolve():
        raise ConfigError("--from and --to name the same store")
    if source.sqlite is None and target.sqlite is None and _same_database(source.url, target.url):
        raise ConfigError("--from and --to name the same database")


def _same_database(a: str, b: str) -> bool:
    """Whether two PostgreSQL URLs name one database (host, port and name)."""
    from cylindria.storage.postgres import shown

    return shown(a) == shown(b)


def take_locks(source: End, target: End) -> InstanceLock:
    """The instance locks of both data dirs and, on PostgreSQL, of this host's node name:
    InstanceBusy (one line naming the holder) while a Cylindria uses either store."""
    held = InstanceLock([])
    try:
        for data_dir in dict.fromkeys(end.data_dir.resolve() for end in (source, target)):
            held.locks.append(DataDirLock(data_dir).take())
        for end in (source, target):
            if end.sqlite is None:
                held.locks.append(NodeLock(end.url, _node()).take())
    except BaseException:
        held.release()
        raise
    return held


def _node() -> str:
    """This host's node name, as a Cylindria started here takes it (CYLINDRIA_NODE, or the
    host's name)."""
    return os.environ.get("CYLINDRIA_NODE") or default_node()


def report(copied: Copied, source: End, target: End) -> str:
    """What was copied, as one short table."""
    if target.sqlite is None:
        where = f"{copied.files_to_database} files written to the database"
    elif copied.asset_files and not copied.files_copied:
        where = f"files kept in {target.data_dir / ASSETS_DIR}"
    else:
        where = f"{copied.files_copied} files copied to {target.data_dir / ASSETS_DIR}"
    there = f", {copied.assets_there} already in the target" if copied.assets_there else ""
    rows = [("jobs", copied.jobs, f"{copied.held} held"),
            ("assets", copied.assets, f"{copied.asset_uses} uses{there}"),
            ("asset files", copied.asset_files, f"{copied.asset_bytes} bytes, {where}"),
            ("outbox events", copied.events, f"{copied.pending_events} pending"),
            ("retention counters", copied.retired, "")]
    lines = [f"{what:<19}{count:>8}  {note}".rstrip() for what, count, note in rows]
    return "\n".join([f"{'copied':<19}{'rows':>8}", *lines]) + "\n"


def copy(args: argparse.Namespace) -> int:
    """Check, lock, open both stores, copy, report."""
    source, target = ends(args)
    check(source, target)
    new_file = target.sqlite is not None and not target.sqlite.exists()
    locks = take_locks(source, target)
    opened = []
    try:
        for end in (source, target):
            opened.append(Side(_open(end), end.data_dir / ASSETS_DIR))
        copied = copy_store(opened[0], opened[1], merge=args.merge)
    except BaseException:
        _close(opened)
        if new_file:  # as it was: no file
            _remove_sqlite(target.sqlite)
        raise
    finally:
        _close(opened)
        locks.release()
    print(report(copied, source, target), end="")
    return 0


def _open(end: End):
    """A side's store; ConfigError (one line) if it cannot be opened."""
    try:
        return open_url(end.url, data_dir=end.data_dir)
    except (SchemaTooNew, StorageUnavailable) as exc:
        raise ConfigError(str(exc)) from None


def _close(opened: list[Side]) -> None:
    """Close the stores opened (once)."""
    while opened:
        opened.pop().storage.close()


def _remove_sqlite(path: Path) -> None:
    """A SQLite file this copy created, with its journal files."""
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    """`db copy ...`; 2 for a bad command line or a refusal, 1 when the copy failed."""
    if argv[:1] != ["copy"]:
        print("usage: cylindria db copy --from URL --to URL [--merge] "
              "[--from-data-dir DIR] [--to-data-dir DIR]", file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    try:
        return copy(build_parser().parse_args(argv[1:]))
    except (ValueError, CopyRefused) as exc:  # ConfigError (InstanceBusy too), a bad URL
        print(f"cylindria: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a failed write: rolled back, the files placed removed
        print(f"cylindria: error: the copy failed, the target is unchanged: {exc}",
              file=sys.stderr)
        return 1

"""Cylindria's store of record behind one interface (cylindria.storage.interface): SQLite in the data
dir by default, PostgreSQL when --database names one. `open_storage` is the one place a
store is opened."""
from __future__ import annotations

from pathlib import Path

from cylindria.storage.interface import (AssetRows, CancelListener, JobIdTaken, JobRows, Meta, NodeRow, NodeRows,
                               OutboxRow, OutboxRows, SchemaTooNew, Storage, StorageUnavailable,
                               Taken)

DB_FILE_NAME = "jobs.sqlite3"  # the default store, in the data dir
ASSETS_DIR = "assets"  # the asset files' folder in the data dir (SQLite's store of their bytes)
SQLITE_SCHEME = "sqlite:///"

__all__ = ["ASSETS_DIR", "AssetRows", "CancelListener", "DB_FILE_NAME", "JobIdTaken", "JobRows", "Meta", "NodeRow", "NodeRows", "OutboxRow",
           "OutboxRows", "SchemaTooNew", "Storage", "StorageUnavailable", "Taken",
           "open_storage", "open_url"]


def open_storage(config) -> Storage:
    """The store a Config names: `config.database`, or the SQLite file in the data dir."""
    return open_url(config.database, config.retention, data_dir=config.data_dir)


def open_url(url: str | None, retention: float | None = None,
             data_dir: Path | None = None) -> Storage:
    """A store by URL: `postgresql://...` (or libpq `key=value` parameters, the rest taken
    from PG* variables), `sqlite:///<path>`, or None for `jobs.sqlite3` in `data_dir` (a
    SQLite store's asset files are in `data_dir`'s asset folder, or its file's folder's).
    Raises StorageUnavailable (cannot be reached) or SchemaTooNew."""
    if url is None or url.startswith(SQLITE_SCHEME):
        from cylindria.storage.sqlite import SqliteStorage
        path = Path(url[len(SQLITE_SCHEME):]) if url else Path(data_dir) / DB_FILE_NAME
        return SqliteStorage(path, retention, Path(data_dir or path.parent) / ASSETS_DIR)
    from cylindria.storage.postgres import PostgresStorage  # psycopg is imported only when asked for
    return PostgresStorage(url, retention)

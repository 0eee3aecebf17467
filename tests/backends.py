"""The store-level tests' backends: each test gets a fresh store of record on SQLite (a file in
its tmp dir) or PostgreSQL (a new database in the session's throwaway cluster)."""
from __future__ import annotations

import uuid
from pathlib import Path

from cylindria.storage import DB_FILE_NAME, Storage, open_url

KINDS = ("sqlite", "postgresql")


class Backend:
    """Where a test's store lives: `open()` it as often as a restart needs (each opened store
    is closed at the test's end), `database` for a Config (None: SQLite in `data_dir`)."""

    def __init__(self, kind: str, data_dir: Path, cluster=None):
        self.kind = kind
        self.data_dir = Path(data_dir)
        self._cluster = cluster
        self._dbname = f"t_{uuid.uuid4().hex}" if cluster is not None else None
        self.database = cluster.create_database(self._dbname) if cluster is not None else None
        self._opened: list[Storage] = []

    @property
    def path(self) -> Path:
        """The SQLite file (SQLite only)."""
        return self.data_dir / DB_FILE_NAME

    def open(self, retention: float | None = None) -> Storage:
        """The store, opened (again)."""
        storage = open_url(self.database, retention, data_dir=self.data_dir)
        self._opened.append(storage)
        return storage

    def close(self) -> None:
        """Close what the test opened, and drop its database."""
        for storage in self._opened:
            storage.close()
        if self._cluster is not None:
            self._cluster.drop_database(self._dbname)

    def __repr__(self) -> str:
        return self.kind


_opened: list[Storage] = []


def sqlite_storage(folder: Path, retention: float | None = None) -> Storage:
    """A SQLite store of record in `folder` (tests about something else than the storage);
    closed at the end of the test (close_opened, called by an autouse fixture)."""
    storage = open_url(None, retention, data_dir=folder)
    _opened.append(storage)
    return storage


def close_opened() -> None:
    """Close every store sqlite_storage opened."""
    while _opened:
        _opened.pop().close()

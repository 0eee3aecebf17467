"""This node's asset files, named by their hash in the asset folder.

On one host (SQLite) the folder is the files' store. In a fleet (PostgreSQL) the database
holds every file's bytes (AssetRows.holds_bytes) and each node's folder is a cache of them:
a file a job placed on this node's GPU needs, or a download asks for, is fetched from the
database when this node does not have it (another node's upload), written under a temporary
name, checked against its hash and only then renamed into place, so the folder never holds a
partial or a wrong file. Cached files whose row another node removed go with this node's
retention sweep; files a node kept before the database held bytes are shared at its start.
"""
from __future__ import annotations

import logging
import os
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import blake3

from comfy.private import private_dir, private_file
from cylindria.storage.records import CHUNK_BYTES

if TYPE_CHECKING:
    from cylindria.storage.interface import AssetRows

logger = logging.getLogger(__name__)

HEX_NAME_LENGTH = 64  # a file's name: its BLAKE3 digest in hex
BATCH = 200  # files looked up in the database per query
# Uploads whose bytes are written to the database at once: each holds one of the pool's
# connections for the whole file, and the job store's writes need the others. Fetches go one
# at a time (one connection more), so a burst of jobs needing one new file on every GPU of
# the node fetches it once.
UPLOADS = 2


class AssetUnavailable(Exception):
    """An asset's bytes are neither in this node's folder nor readable from the store of
    record (a file a node kept on its own disk before the database held bytes, not shared
    yet), or came back from it with another hash."""


def file_name(hash_text: str) -> str:
    """An asset file's name in an asset folder: the hex digits of its hash ("blake3:<hex>")."""
    return hash_text[len("blake3:"):]


def read_chunks(path: Path) -> Iterator[bytes]:
    """A file's bytes, CHUNK_BYTES at a time (as the database stores them): never whole."""
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            yield chunk


class AssetFiles:
    """The asset folder: files named by hash, and `.incoming` for files being written."""

    def __init__(self, folder: Path, rows: AssetRows):
        self.folder = private_dir(Path(folder))
        self.incoming = private_dir(self.folder / ".incoming")
        self._rows = rows
        self._uploads = threading.BoundedSemaphore(UPLOADS)
        self._fetching = threading.Lock()
        for leftover in self.incoming.glob("*.part"):  # cut off by a crash: never files
            leftover.unlink(missing_ok=True)

    def path(self, hash_text: str) -> Path:
        """Where this node keeps the file with this hash."""
        return self.folder / file_name(hash_text)

    def temporary(self) -> Path:
        """A new name in `.incoming` for a file being written (renamed into place once whole)."""
        return self.incoming / f"{uuid.uuid4().hex}.part"

    def keep(self, temporary: Path, hash_text: str) -> None:
        """Move a complete file into place, unless this node has it already."""
        if not self.path(hash_text).exists():
            os.replace(temporary, self.path(hash_text))

    def record(self, hash_text: str, size: int, content_type: str, complete: Path) -> None:
        """Record an upload's file (the complete file `complete`) with its bytes, where the
        database holds them (AssetRows.add_file), as one of the UPLOADS."""
        with self._uploads:
            self._rows.add_file(hash_text, size, content_type, complete)

    def local(self, hash_text: str) -> Path:
        """The file on this node's disk, fetched from the store of record first if this node
        does not have it; AssetUnavailable if it cannot be had."""
        path = self.path(hash_text)
        if not path.is_file():
            with self._fetching:
                if not path.is_file():  # fetched meanwhile by the fetch waited for
                    self._fetch(hash_text, path)
        return path

    def available(self, hash_text: str) -> bool:
        """Whether this node has the file or can fetch it (a database read only if it has not)."""
        return self.path(hash_text).is_file() or self._rows.stored([hash_text]).get(hash_text, False)

    def _fetch(self, hash_text: str, path: Path) -> None:
        """Write the store's bytes of a file into place, a chunk at a time, hash checked."""
        temporary = self.temporary()
        try:
            hasher = blake3.blake3()
            with open(private_file(temporary), "wb") as out:
                for chunk in self._rows.read_file(hash_text):
                    hasher.update(chunk)
                    out.write(chunk)
            if f"blake3:{hasher.hexdigest()}" != hash_text:
                raise AssetUnavailable(f"the bytes of {hash_text} read from the database have "
                                       f"another hash (blake3:{hasher.hexdigest()}): not used")
            os.replace(temporary, path)
        except FileNotFoundError:
            raise AssetUnavailable(f"the file {hash_text} is not on this node, and the "
                                   "database holds none of its bytes") from None
        finally:
            temporary.unlink(missing_ok=True)
        logger.info("asset file %s fetched from the database into %s", hash_text, self.folder)

    def names(self) -> Iterator[list[str]]:
        """The hashes of the files in the folder, in batches."""
        batch = []
        for entry in os.scandir(self.folder):
            if len(entry.name) == HEX_NAME_LENGTH and entry.is_file():
                batch.append(f"blake3:{entry.name}")
                if len(batch) == BATCH:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def unrecorded(self, hashes: Iterable[str]) -> list[str]:
        """Of these files of the folder, those no file row names any more (removed, by any node)."""
        hashes = list(hashes)
        recorded = self._rows.stored(hashes)
        return [hash_text for hash_text in hashes if hash_text not in recorded]

    def share(self, hashes: Iterable[str]) -> int:
        """Give the store of record the bytes of those of these files of the folder it records
        without them (kept on this node's disk before the database held bytes); how many. A
        file whose bytes no longer have its hash is left out (and logged)."""
        shared = 0
        for hash_text, has_bytes in self._rows.stored(list(hashes)).items():
            if has_bytes:
                continue
            path = self.path(hash_text)
            if _hash_of(path) != hash_text:
                logger.warning("asset file %s does not have its hash: not shared", path)
                continue
            # The row is there (its size and type stay as recorded): only the bytes are added.
            self._rows.add_file(hash_text, path.stat().st_size, "", path)
            shared += 1
        return shared

    def remove(self, hash_text: str) -> None:
        """Unlink a file (OSError if it cannot be, e.g. held open on Windows)."""
        self.path(hash_text).unlink(missing_ok=True)


def _hash_of(path: Path) -> str:
    """A file's hash, read a chunk at a time."""
    hasher = blake3.blake3()
    for chunk in read_chunks(path):
        hasher.update(chunk)
    return f"blake3:{hasher.hexdigest()}"

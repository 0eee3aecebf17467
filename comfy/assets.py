"""Assets: input files for workflows, held by Cylindria and placed for ComfyUI.

Content-addressed by BLAKE3 (the Comfy API v2 and its SDK name assets by it): the same
bytes are one asset. An upload streams into a temporary file in the assets folder while it
is hashed, and is renamed into place only when complete, so a cut-off upload leaves
nothing, and no upload is ever held whole in memory. The client's file name is kept as
metadata only: on disk and in ComfyUI a file is named by its hash, with an extension from
the type sniffed from its first bytes.
"""
from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import blake3

from comfy.private import private_dir, private_file

logger = logging.getLogger(__name__)

CHUNK = 1024 * 1024  # bytes read from the client at a time
HASH = re.compile(r"blake3:([0-9a-f]{64})")
ASSET_ID = re.compile(r"[0-9a-f]{32}")

SCHEMA = """
CREATE TABLE IF NOT EXISTS assets (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    created_at REAL NOT NULL,
    used_at REAL NOT NULL
);
-- Which jobs refer to which assets: an asset an unfinished job needs cannot be deleted.
CREATE TABLE IF NOT EXISTS asset_uses (
    asset_id TEXT NOT NULL,
    job_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,  -- of the workflow that referred to it: an id reused by
                                -- another workflow does not hold the asset
    PRIMARY KEY (asset_id, job_id, fingerprint)
);
"""

# (magic bytes at offset, offset, content type, extension), first match wins.
SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png", "png"),
    (b"\xff\xd8\xff", 0, "image/jpeg", "jpg"),
    (b"GIF87a", 0, "image/gif", "gif"),
    (b"GIF89a", 0, "image/gif", "gif"),
    (b"WEBP", 8, "image/webp", "webp"),
    (b"WAVE", 8, "audio/wav", "wav"),
    (b"fLaC", 0, "audio/flac", "flac"),
    (b"OggS", 0, "audio/ogg", "ogg"),
    (b"ID3", 0, "audio/mpeg", "mp3"),
    (b"ftyp", 4, "video/mp4", "mp4"),
    (b"\x1a\x45\xdf\xa3", 0, "video/webm", "webm"),
    (b"BM", 0, "image/bmp", "bmp"),
    (b"II*\x00", 0, "image/tiff", "tiff"),
    (b"MM\x00*", 0, "image/tiff", "tiff"),
)
UNKNOWN = ("application/octet-stream", "bin")


class AssetTooLarge(Exception):
    """An upload over --max-asset-mb (announced by Content-Length, or found while reading)."""

    def __init__(self, limit: int):
        super().__init__(f"an asset may be at most {limit} bytes")
        self.limit = limit


class HashMismatch(Exception):
    """The bytes received do not have the hash the client said they have: nothing was kept."""

    def __init__(self, expected: str, actual: str):
        super().__init__(f"the upload's hash is {actual}, not the expected {expected}")
        self.expected, self.actual = expected, actual


class UploadCut(Exception):
    """The client's body ended before its Content-Length: nothing was kept."""


@dataclass(frozen=True)
class Asset:
    """One stored file's metadata."""

    id: str
    hash: str  # "blake3:<64 hex>"
    name: str
    size_bytes: int
    content_type: str
    created_at: float
    used_at: float = 0.0  # when a job last needed it: retention counts from then

    @property
    def extension(self) -> str:
        """The extension of its sniffed type (never the client's)."""
        return next((ext for _, _, kind, ext in SIGNATURES if kind == self.content_type), UNKNOWN[1])

    @property
    def comfy_name(self) -> str:
        """Its file name in ComfyUI's input folder (subfolder `cylindria`)."""
        return f"{self.hash[len('blake3:'):][:32]}.{self.extension}"


def sniff(head: bytes) -> tuple[str, str]:
    """(content type, extension) from a file's first bytes."""
    for magic, offset, kind, ext in SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            return kind, ext
    return UNKNOWN


def clean_name(name: str | None) -> str:
    """The client's name as metadata: no folders, no control characters, at most 200 chars."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = "".join(c for c in base if c.isprintable()).strip().strip(".")
    return base[:200] or "asset"


class AssetStore:
    """The asset files under `folder` and their rows in the job database (own connection)."""

    def __init__(self, folder: Path, db_path: Path, max_bytes: int):
        self.folder = private_dir(Path(folder))
        self.incoming = private_dir(self.folder / ".incoming")
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(db_path), check_same_thread=False, isolation_level=None,
                                     timeout=30.0)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(SCHEMA)
        self._clear_incoming()

    def _clear_incoming(self) -> None:
        """Uploads a crash cut off: never assets."""
        for leftover in self.incoming.glob("*.part"):
            leftover.unlink(missing_ok=True)

    # -- writing ----------------------------------------------------------------------------

    def add(self, stream: BinaryIO, name: str | None, length: int | None,
            expected_hash: str | None = None) -> tuple[Asset, bool]:
        """Store an upload read from `stream` (`length` bytes if the client said how many);
        returns (asset, created). The same bytes again give the stored asset. With
        `expected_hash`, bytes that hash otherwise are refused (HashMismatch)."""
        if length is not None and length > self.max_bytes:
            raise AssetTooLarge(self.max_bytes)  # refused before reading a byte
        temporary = self.incoming / f"{uuid.uuid4().hex}.part"
        try:
            digest, size, head = self._receive(stream, temporary, length)
            if expected_hash is not None and expected_hash != f"blake3:{digest}":
                raise HashMismatch(expected_hash, f"blake3:{digest}")
            return self._keep(temporary, digest, size, head, clean_name(name))
        finally:
            temporary.unlink(missing_ok=True)

    def _receive(self, stream: BinaryIO, temporary: Path, length: int | None):
        """Copy the upload into `temporary`, hashing as it goes; (hex digest, size, head)."""
        hasher, size, head = blake3.blake3(), 0, b""
        with open(private_file(temporary), "wb") as out:
            while True:
                chunk = stream.read(CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if size > self.max_bytes:
                    raise AssetTooLarge(self.max_bytes)
                if len(head) < 64:
                    head += chunk[:64 - len(head)]
                hasher.update(chunk)
                out.write(chunk)
        if length is not None and size < length:
            raise UploadCut(f"the upload ended after {size} of {length} bytes")
        return hasher.hexdigest(), size, head

    def _keep(self, temporary: Path, digest: str, size: int, head: bytes,
              name: str) -> tuple[Asset, bool]:
        """Move a complete upload into place and record it, unless its bytes are known."""
        content_type, _ = sniff(head)
        now = time.time()
        asset = Asset(uuid.uuid4().hex, f"blake3:{digest}", name, size, content_type, now, now)
        with self._lock:
            known = self._by_hash(asset.hash)
            if known is not None:
                self._touch(known.id)
                return known, False
            os.replace(temporary, self.path(asset))
            self._conn.execute(
                "INSERT INTO assets (id, hash, name, size_bytes, content_type, created_at, used_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)", (asset.id, asset.hash, asset.name, asset.size_bytes,
                                                  asset.content_type, asset.created_at, asset.created_at))
        logger.info("asset %s stored (%d bytes, %s)", asset.id, size, content_type)
        return asset, True

    def delete(self, asset: Asset) -> None:
        """Remove an asset's row and file."""
        with self._lock:
            self._conn.execute("DELETE FROM assets WHERE id = ?", (asset.id,))
            self._conn.execute("DELETE FROM asset_uses WHERE asset_id = ?", (asset.id,))
            self.path(asset).unlink(missing_ok=True)

    def use(self, job_id: str, fingerprint: str, assets) -> None:
        """A job (this id with this workflow) refers to these assets: recorded before the
        job exists, so a delete never misses it, and retention counts from now."""
        with self._lock:
            for asset in assets:
                self._conn.execute("INSERT OR IGNORE INTO asset_uses (asset_id, job_id, "
                                   "fingerprint) VALUES (?, ?, ?)", (asset.id, job_id, fingerprint))
                self._touch(asset.id)

    def users(self, asset: Asset) -> list[tuple[str, str]]:
        """(job id, workflow fingerprint) of every submission that referred to this asset."""
        with self._lock:
            return self._conn.execute("SELECT job_id, fingerprint FROM asset_uses "
                                      "WHERE asset_id = ?", (asset.id,)).fetchall()

    def unused_since(self, cutoff: float, limit: int = 200) -> list[Asset]:
        """Assets no job has needed since `cutoff`, oldest first."""
        with self._lock:
            rows = self._conn.execute(f"SELECT {_FIELDS} FROM assets WHERE used_at < ? "
                                      "ORDER BY used_at LIMIT ?", (cutoff, limit)).fetchall()
        return [Asset(*row) for row in rows]

    # -- reading ----------------------------------------------------------------------------

    def get(self, asset_id: str) -> Asset | None:
        """The asset with this id, or None."""
        if not ASSET_ID.fullmatch(asset_id or ""):
            return None
        with self._lock:
            row = self._conn.execute(f"SELECT {_FIELDS} FROM assets WHERE id = ?",
                                     (asset_id,)).fetchone()
        return None if row is None else Asset(*row)

    def by_hash(self, hash_text: str) -> Asset | None:
        """The asset with this hash ("blake3:<hex>"), or None."""
        if not HASH.fullmatch(hash_text or ""):
            return None
        with self._lock:
            return self._by_hash(hash_text)

    def path(self, asset: Asset) -> Path:
        """Where its bytes are: named by the hash alone."""
        return self.folder / asset.hash[len("blake3:"):]

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    def _by_hash(self, hash_text: str) -> Asset | None:
        row = self._conn.execute(f"SELECT {_FIELDS} FROM assets WHERE hash = ?",
                                 (hash_text,)).fetchone()
        return None if row is None else Asset(*row)

    def _touch(self, asset_id: str) -> None:
        self._conn.execute("UPDATE assets SET used_at = ? WHERE id = ?", (time.time(), asset_id))


_FIELDS = "id, hash, name, size_bytes, content_type, created_at, used_at"

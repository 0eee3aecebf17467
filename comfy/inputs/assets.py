"""Assets: input files for workflows, held by Cylindria and placed for ComfyUI.

Content-addressed by BLAKE3 (the Comfy API v2 and its SDK name assets by it): the same
bytes are one file, whoever uploads them. Each client has its own asset over that file (its
own id and name), so an own key never learns what another client holds. An upload streams
into a temporary file in the assets folder while it is hashed, and is kept only when
complete (its bytes written to the database where it holds them, then renamed into place),
so a cut-off upload leaves nothing, and no upload is ever held whole in memory. The client's
file name is kept as metadata only: on disk and in ComfyUI a file is named by its hash, with
an extension from the type sniffed from its first bytes. Where the files are: assetfiles.py.
"""
from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import blake3

from comfy.inputs.assetfiles import AssetFiles
from comfy.private import private_file

if TYPE_CHECKING:
    from comfy.jobs.store import JobStore
    from cylindria.storage.interface import AssetRows

logger = logging.getLogger(__name__)

CHUNK = 1024 * 1024  # bytes read from the client at a time
HASH = re.compile(r"blake3:([0-9a-f]{64})")
ASSET_ID = re.compile(r"[0-9a-f]{32}")

SHARED = ""  # the owner of the assets of keys without :own

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


class EmptyUpload(Exception):
    """The upload holds no byte: nothing was kept."""

    def __init__(self):
        super().__init__("the file is empty")


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
    owner: str = SHARED  # the own key whose asset it is, or SHARED

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
    """The asset files under `folder`, and their rows in the store of record (AssetRows).

    A file is stored once per content; each client has its own asset over it (its id, its
    name): an own key's asset is seen by that key and by keys without :own, the SHARED one
    by keys without :own. Lookups take `owner`: an own key's name, or None for any asset.
    """

    def __init__(self, folder: Path, rows: AssetRows, max_bytes: int):
        self.files = AssetFiles(folder, rows)
        self.folder = self.files.folder
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        # (job id, fingerprint) of submissions between their `use` and their `settle`: their
        # job may not be in the store yet, and their assets are theirs all the same.
        self._under_way: Counter = Counter()
        self._rows = rows

    # -- writing ----------------------------------------------------------------------------

    def add(self, stream: BinaryIO, name: str | None, length: int | None,
            expected_hash: str | None = None, owner: str = SHARED) -> tuple[Asset, bool]:
        """Store an upload read from `stream` (`length` bytes if the client said how many) as
        `owner`'s asset; returns (asset, created). The same bytes again from the same owner
        give its stored asset. With `expected_hash`, bytes that hash otherwise are refused
        (HashMismatch)."""
        if length is not None and length > self.max_bytes:
            raise AssetTooLarge(self.max_bytes)  # refused before reading a byte
        temporary = self.files.temporary()
        try:
            digest, size, head = self._receive(stream, temporary, length)
            if expected_hash is not None and expected_hash != f"blake3:{digest}":
                raise HashMismatch(expected_hash, f"blake3:{digest}")
            return self._keep(temporary, digest, size, head, clean_name(name), owner)
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
        if size == 0:
            raise EmptyUpload()
        return hasher.hexdigest(), size, head

    def _keep(self, temporary: Path, digest: str, size: int, head: bytes, name: str,
              owner: str) -> tuple[Asset, bool]:
        """Record a complete upload as the owner's asset, unless the owner has these bytes
        already; the file moves into place only if no asset holds it yet."""
        content_type, _ = sniff(head)
        now = time.time()
        asset = Asset(uuid.uuid4().hex, f"blake3:{digest}", name, size, content_type, now, now,
                      owner)
        # The file's row (and, where the database holds them, its bytes: seconds for a large
        # file) first, outside the lock, which every asset lookup takes: a crash before the
        # asset's row leaves a file the sweep knows to remove, never one nothing names. Bytes
        # a database lacks (a file recorded before it held them) are added too.
        self.files.record(asset.hash, size, content_type, temporary)
        with self._lock:
            known = self._rows.find(hash_text=asset.hash, owner=owner)
            if known is not None:
                self._rows.touch(known.id, time.time())
                return known, False
            # Again under the lock (nothing to write if it is there): the file's last asset
            # may have been deleted meanwhile, and its file with it.
            self._rows.add_file(asset.hash, size, content_type, temporary)
            self.files.keep(temporary, asset.hash)
            self._rows.add(asset)
        logger.info("asset %s stored (%d bytes, %s)", asset.id, size, content_type)
        return asset, True

    def delete(self, asset: Asset, jobs: JobStore) -> list[str]:
        """Remove this asset unless a job needs it: the ids of the jobs that do (then nothing
        is removed), else []. Its file goes with the last asset over it."""
        with self._lock:
            users = self._users(asset.id, jobs)
            if users:
                return users
            self._rows.remove(asset.id)
            self._drop_file(asset.hash)
        return []

    def use(self, job_id: str, fingerprint: str, assets) -> list[Asset]:
        """A submission of this job (id and workflow) refers to these assets, and retention
        counts from now: they are its until `settle`, and its job's after. Returns those
        deleted meanwhile (then nothing is recorded)."""
        with self._lock:
            gone = [asset for asset in assets if self._rows.find(asset_id=asset.id) is None]
            if gone:
                return gone
            for asset in assets:
                self._rows.add_use(asset.id, job_id, fingerprint)
                self._rows.touch(asset.id, time.time())
            self._under_way[(job_id, fingerprint)] += 1
        return []

    def settle(self, job_id: str, fingerprint: str, jobs: JobStore) -> None:
        """The submission `use` recorded has ended: its uses are now its job's, or, if it
        created none, they go."""
        with self._lock:
            key = (job_id, fingerprint)
            self._under_way[key] -= 1
            if self._under_way[key] <= 0:
                del self._under_way[key]
            if not self._holds(job_id, fingerprint, jobs, finished_too=True):
                self._rows.remove_uses(job_id, fingerprint)

    def users_ever(self) -> list[str]:
        """The ids of every job with a recorded use."""
        with self._lock:
            return self._rows.users_ever()

    def forget_jobs(self, job_ids, jobs: JobStore) -> None:
        """The uses of these jobs go, where the job has left the store (retention)."""
        with self._lock:
            for job_id in job_ids:
                for fingerprint in self._rows.fingerprints_of(job_id):
                    if not self._holds(job_id, fingerprint, jobs, finished_too=True):
                        self._rows.remove_uses(job_id, fingerprint)

    def unused_since(self, cutoff: float, limit: int = 200) -> list[Asset]:
        """Assets no job has needed since `cutoff`, oldest first."""
        with self._lock:
            return self._rows.unused_since(cutoff, limit)

    def sweep_files(self, limit: int = 200) -> int:
        """Remove the files no asset holds any more whose unlink failed before (open
        elsewhere at the time, on Windows), and, where the folder is a cache of the database,
        the cached files whose row another node removed; how many went."""
        with self._lock:
            removed = sum(self._drop_file(hash_text)
                          for hash_text in self._rows.files_unheld(limit))
        if self._rows.holds_bytes:
            for hashes in self.files.names():
                with self._lock:  # an upload's file goes into place under it, its row before
                    for hash_text in self.files.unrecorded(hashes):
                        removed += self._unlink(hash_text)
        return removed

    def share_files(self) -> int:
        """Once a start, where the database holds the bytes: give it those of the files this
        node kept on its disk before it did (a fleet's database of schema 4 or older), so that
        every node can use them; how many."""
        if not self._rows.holds_bytes:
            return 0
        shared = sum(self.files.share(hashes) for hashes in self.files.names())
        if shared:
            logger.info("%d asset file(s) of this node's folder written to the database", shared)
        return shared

    # -- reading ----------------------------------------------------------------------------

    def get(self, asset_id: str, owner: str | None = None) -> Asset | None:
        """The asset with this id (of `owner`, unless None), or None."""
        if not ASSET_ID.fullmatch(asset_id or ""):
            return None
        with self._lock:
            return self._rows.find(asset_id=asset_id, owner=owner)

    def by_hash(self, hash_text: str, owner: str | None = None) -> Asset | None:
        """The asset with this hash ("blake3:<hex>") of `owner`; with None, the SHARED one
        if there is one, else the oldest. None if there is none."""
        if not HASH.fullmatch(hash_text or ""):
            return None
        with self._lock:
            return self._rows.find(hash_text=hash_text, owner=owner)

    def path(self, asset: Asset) -> Path:
        """Where this node keeps its bytes: named by the hash alone (see `local`)."""
        return self.files.path(asset.hash)

    def local(self, asset: Asset) -> Path:
        """Its file on this node's disk, fetched from the database first if this node does
        not have it (another node's upload); AssetUnavailable if it cannot be had."""
        return self.files.local(asset.hash)

    def available(self, asset: Asset) -> bool:
        """Whether this node has its file or can fetch it."""
        return self.files.available(asset.hash)

    # -- under the lock ---------------------------------------------------------------------

    def _users(self, asset_id: str, jobs: JobStore) -> list[str]:
        """Who uses this asset: the unfinished jobs that referred to it, and the submissions
        under way that did (their job not in the store yet, or never if they are refused)."""
        return [job_id for job_id, fingerprint in self._rows.uses_of(asset_id)
                if self._holds(job_id, fingerprint, jobs)]

    def _holds(self, job_id: str, fingerprint: str, jobs: JobStore,
               finished_too: bool = False) -> bool:
        """Whether this use still stands: its submission is under way, or its job (this id
        with this workflow) is in the store, unfinished unless `finished_too`."""
        if self._under_way[(job_id, fingerprint)]:
            return True
        job = jobs.get(job_id)
        return job is not None and job.fingerprint == fingerprint \
            and (finished_too or not job.status.finished)

    def _drop_file(self, hash_text: str) -> bool:
        """Unlink a file no asset holds, then its row; a failed unlink keeps the row, so the
        sweep tries again. True if it went."""
        if self._rows.file_held(hash_text) or not self._unlink(hash_text):
            return False
        self._rows.remove_file(hash_text)
        return True

    def _unlink(self, hash_text: str) -> bool:
        """Unlink this node's file; False (logged) if it cannot be yet."""
        try:
            self.files.remove(hash_text)
        except OSError as exc:
            logger.warning("asset file %s could not be removed yet (%s); the retention sweep "
                           "tries again", hash_text, exc)
            return False
        return True

"""`cylindria db copy`: a host's whole store moved from one backend to another (SQLite to
PostgreSQL and back, or between two of a kind), with its asset files' bytes.

Read through each backend's WholeRows and written in one transaction on the target, so a
copy that fails leaves the target as it was (asset files it placed are removed again).
A target whose database holds the asset files' bytes (PostgreSQL) gets them in that
transaction, a chunk at a time, their hash checked before it commits; a SQLite target gets
them as files in its data dir's asset folder. They are read from the source's store
(its database, or a SQLite store's asset folder), or from the source's asset folder for a
file the database does not hold (recorded before it held bytes). Everything is checked
before anything is written: a target that holds rows (without `merge`), job ids in both
stores, asset files whose bytes the source has nowhere.
"""
from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import blake3

from comfy.inputs.assetfiles import file_name, read_chunks
from comfy.private import private_dir, private_file
from cylindria.storage import records
from cylindria.storage.interface import Contents, Storage, WholeRows

logger = logging.getLogger(__name__)

SHOWN_IDS = 5  # clashing ids a refusal names


class CopyRefused(Exception):
    """The copy cannot be made as asked; nothing was written."""


class CopyFailed(Exception):
    """The source's bytes of a file are not what its hash says; nothing was written."""


@dataclass(frozen=True)
class Side:
    """One end of a copy: its store, and the folder its asset files are in."""

    storage: Storage
    assets: Path


@dataclass
class Copied:
    """What a copy wrote to the target."""

    jobs: int = 0
    held: int = 0
    workflows: int = 0
    assets: int = 0
    assets_there: int = 0  # --merge: the target's own asset of that owner and hash kept
    asset_uses: int = 0
    asset_files: int = 0
    asset_bytes: int = 0
    files_copied: int = 0  # to the target's folder; 0 when both stores use one folder
    files_to_database: int = 0  # written to a target whose database holds the bytes
    events: int = 0
    pending_events: int = 0
    retired: int = 0
    meta: int = 0


@dataclass
class _Assets:
    """--merge: the target's assets by (owner, hash), and the source's ids that become one
    of them."""

    ids: dict = field(default_factory=dict)  # (owner, hash) -> the target's asset id
    taken: set = field(default_factory=set)  # the target's asset ids
    renamed: dict = field(default_factory=dict)  # source asset id -> the target's

    @classmethod
    def of(cls, whole: WholeRows) -> "_Assets":
        known = cls()
        for rows in whole.read("assets"):
            for asset_id, owner, hash_text, *_ in rows:
                known.ids[(owner, hash_text)] = asset_id
                known.taken.add(asset_id)
        return known


def copy_store(source: Side, target: Side, merge: bool = False) -> Copied:
    """Copy every row of `source` to `target`, and the files its assets hold; CopyRefused
    (nothing written) when the target holds rows without `merge`, or job ids clash."""
    refuse_not_empty(target.storage.whole.contents(), merge)
    known = _Assets.of(target.storage.whole) if merge else None
    if merge:
        refuse_clashes(source.storage.whole, target.storage.whole, known)
    files = _held_files(source.storage.whole)
    in_store = _check_files(files, source)
    reader = _Reader(source, in_store)
    to_database, placed = [], []
    if target.storage.assets.holds_bytes:
        there = target.storage.assets.stored(list(files))  # --merge: the target's own
        to_database = [hash_text for hash_text in files if not there.get(hash_text)]
    else:
        placed = _place_files(files, reader, source.assets, target.assets)
    copied = Copied(files_copied=len(placed), files_to_database=len(to_database))
    try:
        target.storage.whole.write(_rows(source.storage.whole, copied, known,
                                         _chunk_rows(to_database, reader)), merge)
    except BaseException:
        _remove(placed)
        raise
    return copied


def refuse_not_empty(held: Contents, merge: bool) -> None:
    """CopyRefused naming what the target holds, unless it holds nothing or `merge`."""
    named = [(held.jobs, "jobs"), (held.assets, "assets"), (held.asset_files, "asset files"),
             (held.asset_uses, "asset uses"), (held.events, "outbox events"),
             (held.workflows, "workflows"), (held.retired, "retention counters")]
    holds = ", ".join(f"{count} {what}" for count, what in named if count)
    if holds and not merge:
        raise CopyRefused(f"the target is not empty: it holds {holds} "
                          "(--merge adds to it; job ids must not clash)")


def refuse_clashes(source: WholeRows, target: WholeRows, known: _Assets) -> None:
    """CopyRefused naming the first job ids (or asset ids) both stores hold."""
    taken = {row[1] for rows in target.read("jobs") for row in rows}
    clashes = [row[1] for rows in source.read("jobs") for row in rows if row[1] in taken]
    if clashes:
        raise CopyRefused(f"{len(clashes)} job id(s) are in both stores: {_first(clashes)} "
                          "(job ids must not clash); nothing was written")
    assets = [asset_id for rows in source.read("assets") for asset_id, owner, hash_text, *_
              in rows if asset_id in known.taken and known.ids.get((owner, hash_text)) != asset_id]
    if assets:
        raise CopyRefused(f"{len(assets)} asset id(s) name different assets in the two stores: "
                          f"{_first(assets)}; nothing was written")


def _first(ids: list[str]) -> str:
    """The first ids of a list, and how many more."""
    more = f" and {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else ""
    return ", ".join(ids[:SHOWN_IDS]) + more


def _held_files(whole: WholeRows) -> dict[str, int]:
    """hash -> size of every file an asset of the store holds (a file no asset holds is
    copied as a row only: the retention sweep removes both)."""
    held = {row[2] for rows in whole.read("assets") for row in rows}
    return {hash_text: size for rows in whole.read("asset_files")
            for hash_text, size, _ in rows if hash_text in held}


def _check_files(files: dict[str, int], source: Side) -> set[str]:
    """The files whose bytes the source's store holds; CopyRefused if a file the source's
    assets hold is neither there nor in its folder."""
    in_store = {hash_text for hash_text, readable
                in source.storage.assets.stored(list(files)).items() if readable}
    missing = [hash_text for hash_text in files if hash_text not in in_store
               and not asset_file(source.assets, hash_text).is_file()]
    if missing:
        raise CopyRefused(f"{len(missing)} asset file(s) of the source are neither in its "
                          f"database nor in {source.assets} (first: {missing[0]}): give the "
                          "source's data dir with --from-data-dir; nothing was written")
    return in_store


def asset_file(folder: Path, hash_text: str) -> Path:
    """Where an asset's bytes are in an asset folder."""
    return folder / file_name(hash_text)


class _Reader:
    """The bytes of the source's files, a chunk at a time: from its store where it holds
    them, else from its folder."""

    def __init__(self, source: Side, in_store: set[str]):
        self._source, self._in_store = source, in_store

    def chunks(self, hash_text: str) -> Iterator[bytes]:
        if hash_text in self._in_store:
            yield from self._source.storage.assets.read_file(hash_text)
            return
        yield from read_chunks(asset_file(self._source.assets, hash_text))

    def checked(self, hash_text: str) -> Iterator[bytes]:
        """`chunks`, then CopyFailed if they do not have the file's hash (the target's
        transaction is then rolled back)."""
        hasher = blake3.blake3()
        for chunk in self.chunks(hash_text):
            hasher.update(chunk)
            yield chunk
        if f"blake3:{hasher.hexdigest()}" != hash_text:
            raise CopyFailed(f"the source's bytes of {hash_text} have another hash "
                             f"(blake3:{hasher.hexdigest()}); nothing was written")


def _chunk_rows(hashes: list[str], reader: _Reader) -> Iterator[list[tuple]]:
    """A batch of one (hash, n, bytes) row per chunk of these files, for a target whose
    database holds the bytes."""
    for hash_text in hashes:
        for n, chunk in enumerate(reader.checked(hash_text)):
            yield [(hash_text, n, chunk)]


def _place_files(files: dict[str, int], reader: _Reader, source: Path,
                 target: Path) -> list[Path]:
    """Write the files the target's folder lacks (none when both are one folder and it has
    them); the paths created. Each is written under a temporary name and renamed when whole."""
    private_dir(target)
    same, placed = _same_folder(source, target), []
    try:
        for hash_text, size in files.items():
            path = asset_file(target, hash_text)
            if path.is_file() and (same or path.stat().st_size == size):
                continue
            _write_file(reader.checked(hash_text), path)
            placed.append(path)
    except BaseException:
        _remove(placed)
        raise
    return placed


def _remove(paths: list[Path]) -> None:
    """Remove the files a failed copy placed: the target's folder as it was."""
    for path in paths:
        path.unlink(missing_ok=True)


def _same_folder(a: Path, b: Path) -> bool:
    """Whether two paths name one folder (one host's move: its files stay where they are)."""
    try:
        return a.resolve() == b.resolve() or (b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _write_file(chunks: Iterator[bytes], path: Path) -> None:
    """One file written into place from its chunks, private to its owner."""
    partial = path.with_name(f".copy-{uuid.uuid4().hex}")
    try:
        with open(private_file(partial), "wb") as writer:
            for chunk in chunks:
                writer.write(chunk)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _rows(whole: WholeRows, copied: Copied, known: _Assets | None,
          chunks: Iterator[list[tuple]]) -> Iterator[tuple[str, list]]:
    """Every batch of the source, kind by kind, counted in `copied` (under --merge, an asset
    the target holds already is left out and its uses go to the target's); the files' bytes
    (`chunks`) after their rows."""
    for kind in records.WHOLE:
        for rows in whole.read(kind):
            if known is not None:
                rows = _merged(kind, rows, known, copied)
            _count(kind, rows, copied)
            yield kind, rows
        if kind == "asset_files":
            for rows in chunks:
                yield records.CHUNKS, rows


def _merged(kind: str, rows: list[tuple], known: _Assets, copied: Copied) -> list[tuple]:
    """A batch as merged into the target: its assets of a known (owner, hash) left out."""
    if kind == "assets":
        kept = []
        for row in rows:
            there = known.ids.get((row[1], row[2]))
            if there is None:
                kept.append(row)
            else:
                known.renamed[row[0]] = there
                copied.assets_there += 1
        return kept
    if kind == "asset_uses":
        return [(known.renamed.get(asset_id, asset_id), job_id, fingerprint)
                for asset_id, job_id, fingerprint in rows]
    return rows


_STATUS = records.WHOLE["jobs"].columns.index("status")
_DUE_AT = records.WHOLE["events"].columns.index("due_at")


def _count(kind: str, rows: list[tuple], copied: Copied) -> None:
    """Add a batch to what the copy wrote."""
    if kind == "jobs":
        copied.jobs += len(rows)
        copied.held += sum(row[_STATUS] == records.HELD for row in rows)
    elif kind == "asset_files":
        copied.asset_files += len(rows)
        copied.asset_bytes += sum(size for _, size, _ in rows)
    elif kind == "events":
        copied.events += len(rows)
        copied.pending_events += sum(row[_DUE_AT] is not None for row in rows)
    elif kind == "meta":
        retired = sum(key.startswith(records.RETIRED_PREFIX) for key, _ in rows)
        copied.retired += retired
        copied.meta += len(rows) - retired
    else:
        setattr(copied, kind, getattr(copied, kind) + len(rows))

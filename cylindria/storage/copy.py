"""`cylindria db copy`: a host's whole store moved from one backend to another (SQLite to
PostgreSQL and back, or between two of a kind), with its asset files.

Read through each backend's WholeRows and written in one transaction on the target, so a
copy that fails leaves the target as it was (asset files it placed are removed again).
Everything is checked before anything is written: a target that holds rows (without
`merge`), job ids in both stores, asset files missing from the source's folder.
"""
from __future__ import annotations

import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from comfy.private import private_dir, private_file
from cylindria.storage import records
from cylindria.storage.interface import Contents, Storage, WholeRows

logger = logging.getLogger(__name__)

SHOWN_IDS = 5  # clashing ids a refusal names


class CopyRefused(Exception):
    """The copy cannot be made as asked; nothing was written."""


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
    files_copied: int = 0  # 0 when both stores use one folder: the files stay where they are
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
    _check_files(files, source.assets)
    placed = _place_files(files, source.assets, target.assets)
    copied = Copied(files_copied=len(placed))
    try:
        target.storage.whole.write(_rows(source.storage.whole, copied, known), merge)
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


def _check_files(files: dict[str, int], folder: Path) -> None:
    """CopyRefused if a file the source's assets hold is not in its folder."""
    missing = [hash_text for hash_text in files if not asset_file(folder, hash_text).is_file()]
    if missing:
        raise CopyRefused(f"{len(missing)} asset file(s) of the source are not in {folder} "
                          f"(first: {missing[0]}): give the source's data dir with "
                          "--from-data-dir; nothing was written")


def asset_file(folder: Path, hash_text: str) -> Path:
    """Where an asset's bytes are: named by the hash alone (as comfy.inputs.assets keeps them)."""
    return folder / hash_text[len("blake3:"):]


def _place_files(files: dict[str, int], source: Path, target: Path) -> list[Path]:
    """Copy the files the target's folder lacks (none when both are one folder); the paths
    created. Each is written under a temporary name and renamed when whole."""
    if _same_folder(source, target):
        return []
    private_dir(target)
    placed = []
    try:
        for hash_text, size in files.items():
            path = asset_file(target, hash_text)
            if path.is_file() and path.stat().st_size == size:
                continue
            _copy_file(asset_file(source, hash_text), path)
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


def _copy_file(source: Path, path: Path) -> None:
    """One file copied into place, private to its owner."""
    partial = path.with_name(f".copy-{uuid.uuid4().hex}")
    try:
        with open(source, "rb") as reader, open(private_file(partial), "wb") as writer:
            shutil.copyfileobj(reader, writer, 1024 * 1024)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _rows(whole: WholeRows, copied: Copied, known: _Assets | None) -> Iterator[tuple[str, list]]:
    """Every batch of the source, kind by kind, counted in `copied` (under --merge, an asset
    the target holds already is left out and its uses go to the target's)."""
    for kind in records.WHOLE:
        for rows in whole.read(kind):
            if known is not None:
                rows = _merged(kind, rows, known, copied)
            _count(kind, rows, copied)
            yield kind, rows


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

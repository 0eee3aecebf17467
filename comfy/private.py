"""The data dir and the files Cylindria writes: private to the service's user.

0700 for the dir and 0600 for the files where the OS has POSIX modes, whatever the umask,
and tightened when an earlier version left them open. On Windows nothing is changed: the
per-user data dir is already private to its user.

A secret Cylindria makes itself (the API key, the webhook signing secret) is generated once
and shown once: a mark beside it says it has not been shown yet, so a start that fails before
showing it leaves that to the next.
"""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Callable, TypeVar

logger = logging.getLogger(__name__)

POSIX = os.name == "posix"
DIR_MODE = 0o700
FILE_MODE = 0o600
UNSHOWN_SUFFIX = ".unshown"  # beside a generated file not shown to the operator yet

T = TypeVar("T")


def write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only, in a private dir (where the OS has modes)."""
    private_dir(path.parent)
    private_file(path).write_text(text + "\n", encoding="utf-8")


def generated_once(path: Path, make: Callable[[], str],
                   read: Callable[[Path], T]) -> tuple[T, bool]:
    """What `read` finds in the private file `path`, written with `make()` first when the file
    is missing or `read` finds nothing in it; and whether the file is generated and not shown
    yet (show_once shows it)."""
    if tighten(path).exists():
        found = read(path)
        if found:
            return found, _unshown(path).exists()
    mark_unshown(path)  # first: a generated file is never kept without its mark
    return kept_private(path, make, read), True


def kept_private(path: Path, make: Callable[[], str], read: Callable[[Path], T]) -> T:
    """What `read` finds in the private file `path`, written with `make()` first when the file
    is missing or `read` finds nothing in it: a secret Cylindria keeps for itself and never
    shows (so it has no mark)."""
    if tighten(path).exists():
        found = read(path)
        if found:
            return found
    write_private(path, make())
    return read(path)


def mark_unshown(path: Path) -> None:
    """Mark the private file `path` as not shown yet (written before the file itself: a file
    meant to be shown is never kept without its mark)."""
    write_private(_unshown(path), "")


def show_once(what: str, path: Path, text: str) -> None:
    """Print a generated secret for the operator, with the file that keeps it, and mark it
    shown: later starts only say where it is."""
    print(f"Generated {what} (shown once; stored in {path}):\n  {text}", flush=True)
    _unshown(path).unlink(missing_ok=True)


def _unshown(path: Path) -> Path:
    """The mark of a generated file not shown yet."""
    return path.with_name(path.name + UNSHOWN_SUFFIX)


def private_dir(path: Path) -> Path:
    """Create `path` (and its parents) if missing, and make it 0700."""
    path = Path(path)
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if not POSIX:
        return path
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & stat.S_ISVTX:  # /tmp and the like: other users' files live there
        logger.warning("data dir %s is shared with other users (mode %o): it is left as it is; "
                       "give Cylindria a dir of its own", path, mode)
    else:
        _tighten(path, mode, DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """Create `path` empty if missing, and make it 0600 (an existing file keeps its content)."""
    path = Path(path)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE))  # the umask may only narrow it
    return tighten(path)


def tighten(path: Path) -> Path:
    """Make an existing file 0600; a missing one is left missing."""
    path = Path(path)
    if POSIX:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            return path
        _tighten(path, mode, FILE_MODE)
    return path


def _tighten(path: Path, mode: int, wanted: int) -> None:
    """chmod `path` to `wanted` unless it already is; say so when it was open to others."""
    if mode == wanted:
        return
    try:
        os.chmod(path, wanted)
    except OSError as exc:  # not its owner: say so, and go on
        logger.warning("cannot make %s private (mode %o): %s", path, mode, exc.strerror or exc)
        return
    if mode & 0o077:
        logger.info("%s was open to other users (mode %o): now %o", path, mode, wanted)

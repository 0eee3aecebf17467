"""The output/input/temp directories, kept in memory (they survive restarts, like a disk)."""

from __future__ import annotations

import posixpath
import re
import threading

from .png import output_png

KINDS = ("output", "input", "temp")


class PathError(ValueError):
    """A subfolder or file name that would leave its directory."""


def clean_subfolder(subfolder: str) -> str:
    """Normalise a subfolder the way os.path.join + normpath would; refuse escapes."""
    if not subfolder:
        return ""
    cleaned = posixpath.normpath(subfolder.replace("\\", "/"))
    if cleaned.startswith("/") or cleaned == ".." or cleaned.startswith("../"):
        raise PathError(subfolder)
    return "" if cleaned == "." else cleaned


class FileStore:
    """Files by (type, subfolder, filename); one lock because tests read from their thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[tuple[str, str, str], bytes] = {}

    def get(self, kind: str, subfolder: str, filename: str) -> bytes | None:
        """The stored bytes, or None."""
        with self._lock:
            return self._files.get((kind, subfolder, filename))

    def put(self, kind: str, subfolder: str, filename: str, data: bytes) -> None:
        """Store (or overwrite) one file."""
        with self._lock:
            self._files[(kind, subfolder, filename)] = data

    def _next_counter(self, kind: str, subfolder: str, base: str) -> int:
        """SaveImage's counter: one past the highest `<base>_NNNNN_` already there."""
        pattern = re.compile(re.escape(base) + r"_(\d+)_")
        with self._lock:
            found = [int(m.group(1)) for (k, s, name) in self._files
                     if k == kind and s == subfolder and (m := pattern.match(name))]
        return max(found, default=0) + 1

    def save_images(self, prefix: str, kind: str, count: int) -> list[dict]:
        """Write `count` PNGs named like SaveImage does and return their references."""
        try:
            subfolder = clean_subfolder(posixpath.dirname(prefix))
        except PathError:
            raise Exception("**** ERROR: Saving image outside the output folder is not allowed.")
        base = posixpath.basename(prefix)
        counter = self._next_counter(kind, subfolder, base)
        refs = []
        for offset in range(count):
            name = base.replace("%batch_num%", str(offset))
            filename = f"{name}_{counter + offset:05}_.png"
            data = output_png(posixpath.join(kind, subfolder, filename))  # unique per file
            self.put(kind, subfolder, filename, data)
            refs.append({"filename": filename, "subfolder": subfolder, "type": kind})
        return refs

    def upload(self, kind: str, subfolder: str, filename: str, data: bytes, overwrite: bool) -> str:
        """Store an upload like /upload/image: same bytes reuse the name, else `name (1).png`."""
        stem, ext = posixpath.splitext(filename)
        name, index = filename, 1
        while not overwrite and (existing := self.get(kind, subfolder, name)) is not None:
            if existing == data:
                return name
            name, index = f"{stem} ({index}){ext}", index + 1
        self.put(kind, subfolder, name, data)
        return name

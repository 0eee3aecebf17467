"""The output/input/temp directories, kept in memory, and ComfyUI's rules for paths in them.

Outputs survive restarts, like a disk; the input folder starts empty whenever an instance
starts without its old state (fake.py), so tests can see a gateway upload its files again.
Paths follow folder_paths.py and server.py on Linux: `/` separates, a backslash is a
character of the name. A path that leaves every folder is never looked up on this machine
(real ComfyUI would look there): it does not exist for the fake.
"""

from __future__ import annotations

import mimetypes
import posixpath
import re
import threading

from .png import output_png

KINDS = ("output", "input", "temp")
# folder_paths.extension_mimetypes_cache starts with these two
CONTENT_TYPES = {"webp": "image", "fbx": "model"}


class PathError(ValueError):
    """A subfolder or file name that would leave its directory."""


def clean_subfolder(subfolder: str) -> str:
    """Normalise a subfolder the way os.path.join + normpath would; refuse escapes."""
    if not subfolder:
        return ""
    cleaned = posixpath.normpath(subfolder.replace("\\", "/"))
    if _escapes(cleaned):
        raise PathError(subfolder)
    return "" if cleaned == "." else cleaned


def _escapes(path: str) -> bool:
    """Whether a normalised relative path leaves its directory (or is absolute)."""
    return path.startswith("/") or path == ".." or path.startswith("../")


def annotated(name: str) -> tuple[str, str | None]:
    """folder_paths.annotated_filepath: `name.png [output]` picks the directory."""
    for kind in KINDS:
        if name.endswith(f"[{kind}]"):
            return name[:-len(kind) - 3], kind
    return name, None


def content_type(name: str) -> str | None:
    """folder_paths.filter_files_content_types' idea of a file: image, video, audio, model."""
    extension = name.split(".")[-1]
    if extension in CONTENT_TYPES:
        return CONTENT_TYPES[extension]
    mime = mimetypes.guess_type(name, strict=False)[0]
    return mime.split("/")[0] if mime else None


def upload_path(subfolder: str, filename: str) -> tuple[str, str]:
    """(folder, name) where image_upload writes `filename` under `subfolder`: PathError (its
    400) when that leaves the type's directory. A name may carry directories of its own:
    `../x.png` in subfolder `a` is `x.png` at the top, as ComfyUI resolves it."""
    path = posixpath.normpath(posixpath.join(posixpath.normpath(subfolder), filename))
    if _escapes(path):
        raise PathError(f"{subfolder!r} / {filename!r}")
    folder, name = posixpath.split(path)
    return folder, name


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

    def clear(self, kind: str) -> None:
        """Empty one directory (with its subfolders)."""
        with self._lock:
            self._files = {key: data for key, data in self._files.items() if key[0] != kind}

    def is_dir(self, kind: str, path: str) -> bool:
        """Whether `path` is a directory: the type's own, or a folder holding files."""
        if path in ("", "."):
            return True
        with self._lock:
            return any(s == path or s.startswith(path + "/") for k, s, _ in self._files
                       if k == kind)

    def images(self, kind: str = "input") -> list[str]:
        """LoadImage's choices: the image files at the top of the directory, sorted."""
        with self._lock:
            names = [name for k, s, name in self._files if k == kind and s == ""]
        return sorted(name for name in names if content_type(name) == "image")

    # -- LoadImage's view: annotated names, input by default --------------------------------
    @staticmethod
    def locate(name: str) -> tuple[str, str] | None:
        """(type, path) an annotated name stands for; None outside every directory."""
        name, kind = annotated(name)
        path = posixpath.normpath(name) if name else "."
        return None if _escapes(path) else (kind or "input", path)

    def exists(self, name: str) -> bool:
        """folder_paths.exists_annotated_filepath: a file or a directory."""
        where = self.locate(name)
        return where is not None and (self.is_dir(*where) or self._read(*where) is not None)

    def read(self, name: str) -> bytes:
        """The file LoadImage opens; OSError as open() raises it."""
        where = self.locate(name)
        if where is not None and self.is_dir(*where):
            raise IsADirectoryError(21, "Is a directory", "/".join(where))
        data = None if where is None else self._read(*where)
        if data is None:
            raise FileNotFoundError(2, "No such file or directory", name)
        return data

    def _read(self, kind: str, path: str) -> bytes | None:
        """The file at a normalised path of one directory."""
        return self.get(kind, *posixpath.split(path))

    # -- writers ------------------------------------------------------------------------------
    def _next_counter(self, kind: str, subfolder: str, base: str) -> int:
        """SaveImage's counter: one past the highest `<base>_NNNNN_` already there."""
        pattern = re.compile(re.escape(base) + r"_(\d+)_")
        with self._lock:
            found = [int(m.group(1)) for (k, s, name) in self._files
                     if k == kind and s == subfolder and (m := pattern.match(name))]
        return max(found, default=0) + 1

    def save_images(self, prefix: str, kind: str, count: int,
                    data: bytes | None = None) -> list[dict]:
        """Write `count` PNGs named like SaveImage does and return their references; each is
        `data`, or without it a stand-in PNG unique to its file."""
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
            png = data if data is not None else output_png(
                posixpath.join(kind, subfolder, filename))
            self.put(kind, subfolder, filename, png)
            refs.append({"filename": filename, "subfolder": subfolder, "type": kind})
        return refs

    def upload(self, kind: str, subfolder: str, filename: str, data: bytes,
               overwrite: bool) -> tuple[str, str, str]:
        """Store an upload like image_upload: (name it answers, folder, file). With overwrite
        the name is kept; without, identical bytes reuse it and others get `name (1).png`.
        PathError: outside the directory (400); ValueError/OSError: what open() would raise."""
        stem, ext = posixpath.splitext(filename)
        name, index = filename, 1
        while True:
            folder, base = upload_path(subfolder, name)
            if "\x00" in subfolder + name:
                raise ValueError("embedded null byte")
            if self.is_dir(kind, posixpath.join(folder, base)):
                raise IsADirectoryError(21, "Is a directory", name)
            existing = self.get(kind, folder, base)
            if overwrite or existing is None:
                self.put(kind, folder, base, data)
                return name, folder, base
            if existing == data:
                return name, folder, base
            name, index = f"{stem} ({index}){ext}", index + 1

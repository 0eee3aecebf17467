"""OS names for Python threads, so /proc/<pid>/task/*/stat tells whose CPU is whose (Linux)."""
from __future__ import annotations

import ctypes
import threading

PR_SET_NAME = 15


def name_threads() -> None:
    """Give each thread started from now on its Python name as its OS name (first 15 bytes).

    Python 3.11 names no OS thread; every thread runs Thread._bootstrap_inner first, in itself.
    """
    set_name = ctypes.CDLL(None).prctl
    bootstrap = threading.Thread._bootstrap_inner

    def named(thread):
        set_name(PR_SET_NAME, thread.name.encode()[:15], 0, 0, 0)
        return bootstrap(thread)

    threading.Thread._bootstrap_inner = named

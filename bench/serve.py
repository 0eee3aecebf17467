"""Cylindria with its websocket listeners off (the poll-only completion figure), or profiled.

python -m bench.serve --no-websocket <cylindria.py flags>
python -m bench.serve --profile FILE <cylindria.py flags>
python -m bench.serve --name-threads <cylindria.py flags>

The command line has no switch for these, so this runs the same Service that cylindria.py
runs, built from the same flags, with `websocket=False` and/or every request's work profiled.

--profile FILE: cProfile around each request's work on its waitress thread (the app, writing
the answer, closing it: everything but the loop thread's parsing), pooled into one profile
written to FILE (pstats format) when the server stops (SIGTERM or Ctrl+C). One request is
profiled at a time: a request arriving while another is being profiled runs unprofiled
(cProfile keeps one call stack), so profile with one client. bench.profile drives it.

--name-threads (Linux): every thread's Python name becomes its OS name too, so the CPU
each one takes can be read from /proc/<pid>/task/*/stat (bench.profile's `threads` part).
"""
from __future__ import annotations

import dataclasses
import signal
import sys
import threading

from bench.threadnames import name_threads
from cylindria.config.options import load_config
from cylindria.service.logs import setup_logging


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    websocket = "--no-websocket" not in argv
    argv = [a for a in argv if a != "--no-websocket"]
    argv, profile_path = _take_option(argv, "--profile")
    if "--name-threads" in argv:
        argv = [a for a in argv if a != "--name-threads"]
        name_threads()  # before the Service starts any thread
    config = dataclasses.replace(load_config(argv), websocket=websocket)
    setup_logging(config.log_level, config.log_file)
    from cylindria.service.server import Service

    profiler = profile_requests() if profile_path else None
    service = Service(config)
    service.start()
    if profiler is not None:  # the bench stops servers with SIGTERM: end like Ctrl+C
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        service.serve()
    except KeyboardInterrupt:
        pass
    finally:
        service.stop()
        if profiler is not None:
            profiler.dump_stats(profile_path)
    return 0


def profile_requests():
    """Profile every request's work on its waitress thread (one at a time) into one profile."""
    import cProfile

    from waitress.task import Task

    profiler = cProfile.Profile()
    busy = threading.Lock()
    service = Task.service

    def profiled(task):
        if not busy.acquire(blocking=False):
            return service(task)  # another request is being profiled: this one runs as is
        profiler.enable()
        try:
            return service(task)
        finally:
            profiler.disable()
            busy.release()

    Task.service = profiled
    return profiler


def _take_option(argv: list[str], name: str) -> tuple[list[str], str | None]:
    """argv without `name VALUE`, and VALUE (None when absent)."""
    if name not in argv:
        return argv, None
    at = argv.index(name)
    return argv[:at] + argv[at + 2:], argv[at + 1]


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())

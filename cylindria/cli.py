"""Cylindria's command line (run by cylindria.py, `python -m cylindria` and `cylindria`).

Run: python cylindria.py --port 8000 --numberOfGpus 2
As a service: python cylindria.py service install|remove|start|stop|status [flags]
Move the store: python cylindria.py db copy --from URL --to URL [--merge]
"""
from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import threading

from cylindria.config.options import ConfigError, load_config
from cylindria.service.logs import remove_handlers, setup_logging

logger = logging.getLogger("cylindria")


def _interrupt(signum, frame, service=None) -> None:
    """SIGTERM (systemd's stop, `kill`) stops Cylindria the way Ctrl+C does. While it serves,
    the serving loop is asked to end: an exception raised here lands in whatever the main
    thread runs, a finalizer too, which swallows it (the stop lost, a traceback printed).
    Before that, KeyboardInterrupt ends the start."""
    if service is not None and service.stop_on_signal():
        return
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Parse flags (or run a `service` command), set up logging, then serve."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["service"]:
        from cylindria.service.cli import main as service_main
        return service_main(argv[1:])
    if argv[:1] == ["db"]:
        from cylindria.service.dbcli import main as db_main
        return db_main(argv[1:])
    try:
        config = load_config(argv)
    except ConfigError as exc:
        print(f"cylindria: error: {exc}", file=sys.stderr)
        return 2
    try:
        logs = setup_logging(config.log_level, config.log_file)
    except OSError as exc:
        print(f"cylindria: error: cannot write the log file {config.log_file}: {exc}",
              file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    return exit_now(run(config), logs)


def exit_now(code: int, logs) -> int:
    """`code`, or the process ended at once with it while a thread still waits on ComfyUI.

    Everything is stopped and the store is closed by now, but a /queue poll or the start-up
    reconciliation of a GPU that does not answer may wait out its HTTP timeout (up to 10 s) on
    a pool thread, which the interpreter joins before it exits: the logged stop time would
    not be the real one, and a service manager would wait for nothing.
    """
    # Pool threads are daemon threads here (they inherit it), but concurrent.futures joins
    # them at exit all the same: every thread of Cylindria's (all are named so) counts.
    held = [t.name for t in threading.enumerate() if t is not threading.current_thread()
            and (t.name.startswith("cylindria-") or not t.daemon)]
    if not held:
        return code
    logger.debug("not waiting for %s: ComfyUI calls under way end with the process",
                 ", ".join(held))
    remove_handlers(logs)  # writes what is still queued
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run(config) -> int:
    """Build the service, serve until Ctrl+C or SIGTERM, stop everything in `finally`."""
    from cylindria.service.server import Service  # after logging is set up (import-time logs)

    try:
        service = Service(config)
    except ConfigError as exc:  # the data dir in use, a bad key entry, the database, the secret
        print(f"cylindria: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"cylindria: error: cannot use data dir {config.data_dir}: {exc}", file=sys.stderr)
        return 2
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, functools.partial(_interrupt, service=service))
    try:
        service.start()  # on failure it has stopped what it started; the key is shown once bound
    except OSError as exc:
        print(f"cylindria: error: cannot listen on {config.host}:{config.port}: {exc}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a signal during start-up: nothing serves yet
        service.close()
        logger.info("stopped on Ctrl+C or SIGTERM during start-up")
        return service.exit_code
    try:
        service.serve()
    except KeyboardInterrupt:  # a signal just before the loop ran
        service.signalled = True
    finally:
        service.stop()
    if service.signalled:
        logger.info("stopped on Ctrl+C or SIGTERM")
    return service.exit_code  # 0, or 2 once another Cylindria took this node's name


if __name__ == "__main__":
    sys.exit(main())

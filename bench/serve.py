"""Cylindria with its websocket listeners off, for the poll-only completion figure.

python -m bench.serve --no-websocket <cylindria.py flags>

The command line has no switch for this (only Config.websocket does), so this runs the same
Service that cylindria.py runs, built from the same flags, with `websocket=False`.
"""
from __future__ import annotations

import dataclasses
import sys

from web.config import load_config
from web.logs import setup_logging


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    websocket = "--no-websocket" not in argv
    argv = [a for a in argv if a != "--no-websocket"]
    config = dataclasses.replace(load_config(argv), websocket=websocket)
    setup_logging(config.log_level, config.log_file)
    from web.server import Service

    service = Service(config)
    service.start()
    try:
        service.serve()
    except KeyboardInterrupt:
        pass
    finally:
        service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

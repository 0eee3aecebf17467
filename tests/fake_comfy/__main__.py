"""Run fake ComfyUI instances in the foreground: python -m tests.fake_comfy --port 8188 --count 2"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from .costs import recorded_costs
from .fake import FakeComfy

PROG = "python -m tests.fake_comfy"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument("--port", type=int, default=8188, help="port of the first instance")
    parser.add_argument("--count", type=int, default=1, help="instances on consecutive ports")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="multiplier for node sleeps (0.1 = ten times faster)")
    parser.add_argument("--costs", choices=("none", "recorded"), default="none",
                        help="recorded: each HTTP request costs what it cost the recorded "
                             "ComfyUI (tests/recordings), one at a time per instance")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Start the instances, print their URLs, wait for Ctrl+C or SIGTERM."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    done = threading.Event()
    # SIGTERM ends the wait like Ctrl+C does (signal handlers run on the main thread).
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    costs = recorded_costs() if args.costs == "recorded" else None
    fakes = []
    try:
        for index in range(args.count):
            fake = FakeComfy(port=args.port + index, host=args.host, time_scale=args.time_scale,
                             costs=costs)
            try:
                fakes.append(fake.start())
            except OSError as exc:  # port taken, or an address not on this machine
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                print(f"{PROG}: error: cannot listen on {args.host}:{args.port + index}: {reason}",
                      file=sys.stderr)
                return 2
            print(f"fake ComfyUI {index} listening on {fake.url}", flush=True)
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        for fake in fakes:
            fake.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run fake ComfyUI instances in the foreground: python -m tests.fake_comfy --port 8188 --count 2"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from .costs import COST_TABLES, cost_table
from .fake import FakeComfy
from .nodes import LIBRARY

PROG = "python -m tests.fake_comfy"


def node_choice(text: str) -> tuple[int, str]:
    """An INDEX:CLASS argument: (0-based instance index, a node class the fake knows)."""
    index, sep, name = text.partition(":")
    if not sep or not index.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not INDEX:CLASS (e.g. 1:CylCustomInvert)")
    if name not in LIBRARY:
        raise argparse.ArgumentTypeError(
            f"unknown node class {name!r}; known: {', '.join(sorted(LIBRARY))}")
    return int(index), name


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument("--port", type=int, default=8188, help="port of the first instance")
    parser.add_argument("--count", type=int, default=1, help="instances on consecutive ports")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="multiplier for node sleeps (0.1 = ten times faster)")
    parser.add_argument("--costs", choices=tuple(COST_TABLES), default="none",
                        help="recorded: each HTTP request costs what it cost the recorded "
                             "ComfyUI (tests/recordings); real: what timings-real.json measured "
                             "(lower); one request at a time per instance")
    parser.add_argument("--custom-node", type=node_choice, action="append", default=[],
                        metavar="INDEX:CLASS",
                        help="instance INDEX (0-based) also serves CLASS, e.g. 1:CylCustomInvert "
                             "(repeatable)")
    parser.add_argument("--without-node", type=node_choice, action="append", default=[],
                        metavar="INDEX:CLASS",
                        help="instance INDEX does not serve CLASS (repeatable)")
    parser.add_argument("--load-seconds", type=float, default=0.0,
                        help="what a checkpoint switch costs each instance (scaled by "
                             "--time-scale)")
    args = parser.parse_args(argv)
    for index, name in args.custom_node + args.without_node:
        if index >= args.count:
            parser.error(f"{index}:{name}: there are only {args.count} instances (0-based)")
    if args.load_seconds < 0:
        parser.error("--load-seconds must not be negative")
    return args


def classes_of(pairs: list[tuple[int, str]], index: int) -> tuple[str, ...]:
    """The classes the INDEX:CLASS pairs name for one instance."""
    return tuple(name for at, name in pairs if at == index)


def build(args: argparse.Namespace, index: int, costs: dict[str, float] | None) -> FakeComfy:
    """Instance `index` as the command line describes it (not started)."""
    return FakeComfy(port=args.port + index, host=args.host, time_scale=args.time_scale,
                     costs=costs,
                     custom_nodes=classes_of(args.custom_node, index),
                     without_nodes=classes_of(args.without_node, index),
                     load_seconds=args.load_seconds)


def main(argv: list[str] | None = None) -> int:
    """Start the instances, print their URLs, wait for Ctrl+C or SIGTERM."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    done = threading.Event()
    # SIGTERM ends the wait like Ctrl+C does (signal handlers run on the main thread).
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    costs = cost_table(args.costs)  # read once, shared by the instances (each copies it)
    fakes = []
    try:
        for index in range(args.count):
            fake = build(args, index, costs)
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

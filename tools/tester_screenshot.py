"""Take docs/tester.png: the Cylindria Tester after a job it started and watched to its end.

The real tester window, on an Xvfb display of its own, against a real Cylindria in front of
the fake ComfyUI (both processes on free loopback ports: tests/desktop.py, as the GUI test
runs them). Xvfb keeps its screen as an XWD file (-fbdir); the window's region of it is
written as a PNG by tools/xwd.py, so nothing beyond Xvfb is needed (no ImageMagick, no
Pillow). The tester's remembered settings go to a temporary folder, not the user's.

Run from the checkout: python -m tools.tester_screenshot [OUT.png]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import tkinter as tk
from pathlib import Path

from tester import settings as settings_mod
from tester.app import App
from tests import workflows
from tests.desktop import KEY, REPO, SCREEN, cylindria_with_fake_comfy, fill, pump_until, xvfb
from tools import xwd

OUT = REPO / "docs" / "tester.png"
WINDOW = (1100, 780)  # the window's size, at the screen's top left


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m tools.tester_screenshot",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", type=Path, default=OUT,
                        help=f"the PNG to write (default: {OUT.relative_to(REPO)})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Start the desktop and the servers, take the picture, write it."""
    out = parse_args(sys.argv[1:] if argv is None else argv).out
    with tempfile.TemporaryDirectory(prefix="cylindria-tester-shot-") as work:
        work = Path(work)
        os.environ[settings_mod.CONFIG_DIR_ENV] = str(work / "config")
        with xvfb(work) as display, cylindria_with_fake_comfy(work) as port:
            picture = take(display, port, work)
    out.write_bytes(picture)
    print(out)
    return 0


def take(display: str, port: int, work: Path) -> bytes:
    """The tester window as a PNG, once it has started a job and watched it end."""
    app = App(tk.Tk(screenName=display))
    try:
        app.root.geometry(f"{WINDOW[0]}x{WINDOW[1]}+0+0")
        fill(app.url_entry, "http://127.0.0.1")
        fill(app.port_entry, str(port))
        fill(app.gpu_entry, "0")
        fill(app.key_entry, KEY)
        pump_until(app, lambda: app.root.winfo_viewable(), "the window to show")
        run_a_job(app, work)
        return capture(app, work / "Xvfb_screen0")
    finally:
        app.root.destroy()


def run_a_job(app: App, work: Path) -> None:
    """Start job (render.json, about 2 s at the fake's time scale), then Watch job to its end."""
    workflow = work / "render.json"
    workflow.write_text(json.dumps(workflows.slow(seconds=40, steps=4), indent=1))
    app.ask_workflow_file = lambda: str(workflow)
    app.start_button.invoke()
    pump_until(app, lambda: "HTTP 201" in app.output(), "the job to be accepted")
    app.ask_job_id = lambda title: app.last_job_id
    app.watch_button.invoke()
    pump_until(app, lambda: "ended completed" in app.output(), "the watch to see the job end")


def capture(app: App, screen_file: Path) -> bytes:
    """The window's region of the screen, once X has drawn everything asked so far."""
    root = app.root
    # The pointer off the window: Xvfb draws its cursor into the screen.
    root.event_generate("<Motion>", warp=True, x=SCREEN[0] - 1, y=SCREEN[1] - 1)
    root.update_idletasks()
    root.update()
    root.winfo_pointerxy()  # a round trip: the server has done every request sent before it
    box = (root.winfo_rootx(), root.winfo_rooty(), root.winfo_width(), root.winfo_height())
    return xwd.png(*xwd.crop_rgb(screen_file.read_bytes(), box))


if __name__ == "__main__":
    sys.exit(main())

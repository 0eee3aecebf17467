"""Take docs/swagger-ui.png: GET /docs of a real Cylindria (in front of a fake ComfyUI), as
Debian's headless chromium renders it (apt-get install chromium).

Run from the checkout: python -m tests.screenshot_docs [OUT.png]. It works as root too:
chromium is always started with --no-sandbox (which it needs as root, and in containers),
loading nothing but Cylindria's own pages from loopback (tests/browser.py).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from cylindria.service.server import Service
from tests.browser import screenshot
from tests.conftest import make_config
from tests.fake_comfy import FakeComfy

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "swagger-ui.png"
SIZE = (1280, 1400)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line; --help shows the module's docstring."""
    parser = argparse.ArgumentParser(prog="python -m tests.screenshot_docs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", type=Path, default=OUT,
                        help=f"the PNG to write (default: {OUT.relative_to(REPO)})")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    """Serve /docs, render it, write the PNG."""
    out = parse_args(argv).out
    with tempfile.TemporaryDirectory() as work, FakeComfy(port=0) as fake, \
            Service(make_config([fake], Path(work), docs_public=True)) as service:
        print(screenshot(service.url + "/docs", out, size=SIZE))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

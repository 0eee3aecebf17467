"""Take docs/swagger-ui.png: GET /docs of a real Cylindria (in front of a fake ComfyUI), as
Debian's headless chromium renders it. Run from the checkout: python -m tests.screenshot_docs"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from cylindria.service.server import Service
from tests.browser import screenshot
from tests.conftest import make_config
from tests.fake_comfy import FakeComfy

OUT = Path(__file__).resolve().parents[1] / "docs" / "swagger-ui.png"


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else OUT
    with tempfile.TemporaryDirectory() as work, FakeComfy(port=0) as fake, \
            Service(make_config([fake], Path(work), docs_public=True)) as service:
        print(screenshot(service.url + "/docs", out, size=(1280, 1400)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

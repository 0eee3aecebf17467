"""README's fleet diagram is made by tools/fleet_diagram.py, never by hand: the committed SVG is
what the script draws now, and the script renders it to a PNG of the drawn size."""
from __future__ import annotations

import struct

from tools import fleet_diagram


def test_the_committed_svg_is_what_the_script_draws():
    assert (fleet_diagram.DOCS / "fleet.svg").read_text(encoding="utf-8") == fleet_diagram.svg()


def test_the_script_renders_the_png(tmp_path):
    out = tmp_path / "fleet.png"
    assert fleet_diagram.main([str(out)]) == 0
    header = out.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", header[16:24]) == (fleet_diagram.WIDTH, fleet_diagram.HEIGHT)
    assert (tmp_path / "fleet.svg").read_text(encoding="utf-8") == fleet_diagram.svg()

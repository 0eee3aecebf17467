"""Draw docs/fleet.png (and docs/fleet.svg, its source): several hosts on one PostgreSQL.

The picture is made from the table below, never by hand, so it changes with the code's words:
run from the checkout, `python -m tools.fleet_diagram`. The SVG is written first, then
Debian's headless chromium (tests/browser.py: loopback only) renders it to the PNG.
"""
from __future__ import annotations

import sys
from html import escape
from pathlib import Path

from tests.browser import screenshot

DOCS = Path(__file__).resolve().parents[1] / "docs"
WIDTH, HEIGHT = 1200, 640
HOSTS = (("gpu-host-a", 2), ("gpu-host-b", 2), ("gpu-host-c", 1))  # node name, GPUs drawn
TABLES = ("jobs: one row per job, each owned by its node",
          "nodes: each node's lease, renewed every 2 s",
          "assets, webhook outbox, retention counters")
INK, PAPER, ACCENT, SOFT = "#1f2933", "#ffffff", "#2f6fb0", "#e8eef5"


def box(x: float, y: float, w: float, h: float, fill: str = PAPER, stroke: str = INK,
        dash: bool = False) -> str:
    """A rounded rectangle."""
    style = ' stroke-dasharray="6 4"' if dash else ""
    return (f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="8" fill="{fill}" '
            f'stroke="{stroke}" stroke-width="1.5"{style}/>')


def text(x: float, y: float, words: str, size: int = 15, weight: str = "normal",
         anchor: str = "middle", fill: str = INK) -> str:
    """One line of text."""
    return (f'<text x="{x}" y="{y}" font-family="DejaVu Sans, Arial, sans-serif" '
            f'font-size="{size}" font-weight="{weight}" text-anchor="{anchor}" '
            f'fill="{fill}">{escape(words)}</text>')


def arrow(x1: float, y1: float, x2: float, y2: float, label: str = "", both: bool = False,
          color: str = INK) -> str:
    """A straight arrow with an optional label at its middle."""
    start = ' marker-start="url(#back)"' if both else ""
    parts = [f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{color}" '
             f'stroke-width="1.8" marker-end="url(#head)"{start}/>']
    if label:
        parts.append(text((x1 + x2) / 2 + 8, (y1 + y2) / 2, label, 13, anchor="start",
                          fill=color))
    return "\n".join(parts)


def host(x: float, name: str, gpus: int) -> list[str]:
    """One host: its Cylindria node above its ComfyUIs, which listen on loopback only."""
    w, top = 340, 150
    parts = [box(x, top, w, 250, SOFT),
             text(x + 14, top + 24, f"host {name}", 15, "bold", anchor="start"),
             box(x + 30, top + 40, w - 60, 62),
             text(x + w / 2, top + 65, f"Cylindria --node {name}", 15, "bold"),
             text(x + w / 2, top + 88, "--advertise-url http://" + name + ":8000", 12)]
    slot = (w - 60 - 10 * (gpus - 1)) / gpus
    for n in range(gpus):
        gx = x + 30 + n * (slot + 10)
        parts += [box(gx, top + 160, slot, 62, dash=True),
                  text(gx + slot / 2, top + 185, f"ComfyUI, GPU {n}", 14),
                  text(gx + slot / 2, top + 207, f"127.0.0.1:{8188 + n}", 12)]
        parts.append(arrow(gx + slot / 2, top + 102, gx + slot / 2, top + 158))
    parts.append(text(x + w / 2, top + 140, "loopback only", 12, fill=ACCENT))
    return parts


def to_database(x: float, n: int) -> str:
    """Host n's node to PostgreSQL, along the host's right edge (clear of its ComfyUIs)."""
    edge, bottom, entry = x + 326, 440, 420 + n * 180
    return (f'<path d="M{x + 310},{221} H{edge} V{bottom} H{entry} V468" fill="none" '
            f'stroke="{ACCENT}" stroke-width="1.8" marker-end="url(#head)" color="{ACCENT}"/>')


def svg() -> str:
    """The whole picture."""
    parts = ['<defs><marker id="head" markerWidth="10" markerHeight="8" refX="9" refY="4" '
             'orient="auto"><path d="M0,0 L10,4 L0,8 z" fill="currentColor"/></marker>'
             '<marker id="back" markerWidth="10" markerHeight="8" refX="1" refY="4" '
             'orient="auto"><path d="M10,0 L0,4 L10,8 z" fill="currentColor"/></marker></defs>',
             f'<rect width="{WIDTH}" height="{HEIGHT}" fill="{PAPER}"/>',
             box(360, 20, 480, 60),
             text(600, 45, "clients: backend services, the tester, comfy-sdk", 15, "bold"),
             text(600, 67, "API key or JWT, to any node", 13)]
    for n, (name, gpus) in enumerate(HOSTS):
        x = 40 + n * 380
        parts += host(x, name, gpus)
        parts.append(arrow(600, 80, x + 170, 188, "" if n != 1 else "any job, on any node"))
        parts.append(to_database(x, n))
        if n:  # node to node, over the advertise URLs
            parts.append(arrow(x - 70, 240, x + 28, 240, both=True, color=ACCENT))
    parts.append(text(600, 424, "node to node, with the fleet credential: outputs, jobs pinned "
                      "with GpuId=<node>:<n>", 13, fill=ACCENT))
    parts += [text(40, 500 + 20 * n, line, 13, anchor="start", fill=ACCENT)
              for n, line in enumerate(("each node writes its lease,", "its own jobs' rows;",
                                        "any node reads any job"))]
    parts += [box(300, 470, 600, 150, SOFT, ACCENT),
              text(600, 497, "PostgreSQL: the one shared thing (--database)", 15, "bold",
                   fill=ACCENT)]
    parts += [text(330, 527 + 26 * n, "\u2022 " + line, 14, anchor="start")
              for n, line in enumerate(TABLES)]
    body = "\n".join(parts)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}" color="{INK}">\n{body}\n</svg>\n')


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else DOCS / "fleet.png"
    source = out.with_suffix(".svg")
    source.write_text(svg(), encoding="utf-8")
    print(screenshot(source.resolve().as_uri(), out, size=(WIDTH, HEIGHT)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

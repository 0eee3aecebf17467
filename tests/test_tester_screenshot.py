"""docs/tester.png is made by `python -m tools.tester_screenshot`, never by hand: the command
makes a plausible picture of the real window, and its XWD-to-PNG step reads pixels right."""
import shutil
import struct
import subprocess
import sys
import zlib

import pytest

from tests.desktop import REPO
from tools import tester_screenshot, xwd


def png_pixels(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, RGB rows) of a PNG tools/xwd.py wrote (8-bit RGB, unfiltered rows)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    at, idat, header = 8, b"", None
    while at < len(data):
        (length,), kind = struct.unpack(">I", data[at:at + 4]), data[at + 4:at + 8]
        body, crc = data[at + 8:at + 8 + length], data[at + 8 + length:at + 12 + length]
        assert struct.unpack(">I", crc)[0] == zlib.crc32(kind + body)
        header = body if kind == b"IHDR" else header
        idat += body if kind == b"IDAT" else b""
        at += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert (depth, colour) == (8, 2)
    raw, stride = zlib.decompress(idat), 3 * width + 1
    assert all(raw[i] == 0 for i in range(0, len(raw), stride))
    return width, height, b"".join(raw[i + 1:i + stride] for i in range(0, len(raw), stride))


def dump(pixels: list[list[tuple[int, int, int]]], byte_order: int = xwd.LSB_FIRST,
         bits_per_pixel: int = 32) -> bytes:
    """An XWD file as Xvfb writes one (TrueColor, red in bits 16-23), with a window name and
    two colormap entries before the pixels."""
    name = b"Xvfb main window\x00"
    height, width = len(pixels), len(pixels[0])
    bytes_per_line = 4 * width + 8  # padded rows, as a real screen's may be
    header = struct.pack(">25I", 100 + len(name), 7, xwd.ZPIXMAP, 24, width, height, 0,
                         byte_order, 32, byte_order, 32, bits_per_pixel, bytes_per_line, 4,
                         0xFF0000, 0xFF00, 0xFF, 8, 256, 2, width, height, 0, 0, 0)
    order = "<" if byte_order == xwd.LSB_FIRST else ">"
    rows = b"".join(b"".join(struct.pack(order + "I", r << 16 | g << 8 | b) for r, g, b in row)
                    + b"\xee" * 8 for row in pixels)
    return header + name + b"\x00" * 2 * xwd.COLOR_SIZE + rows


PIXELS = [[(1, 2, 3), (10, 20, 30), (100, 200, 250)],
          [(4, 5, 6), (40, 50, 60), (7, 8, 9)]]


@pytest.mark.parametrize("byte_order", [xwd.LSB_FIRST, 1])
def test_a_region_of_a_dump_becomes_its_rgb_pixels(byte_order):
    data = dump(PIXELS, byte_order)
    assert png_pixels(xwd.png(*xwd.crop_rgb(data, (1, 0, 2, 2)))) == \
        (2, 2, bytes([10, 20, 30, 100, 200, 250, 40, 50, 60, 7, 8, 9]))
    assert xwd.crop_rgb(data, (2, 1, 50, 50)) == (1, 1, bytes([7, 8, 9]))  # clipped to the screen


def test_other_kinds_of_dump_are_refused_saying_what_they_are():
    with pytest.raises(ValueError, match="16 bits a pixel"):
        xwd.parse(dump(PIXELS, bits_per_pixel=16))
    with pytest.raises(ValueError, match="not on the 3x2 screen"):
        xwd.crop_rgb(dump(PIXELS), (3, 0, 1, 1))
    with pytest.raises(ValueError, match="shorter than its pixels"):
        xwd.parse(dump(PIXELS)[:-1])


@pytest.mark.skipif(shutil.which("Xvfb") is None, reason="needs Xvfb (apt-get install xvfb)")
def test_the_command_makes_a_picture_of_the_whole_window(tmp_path):
    out = tmp_path / "tester.png"
    done = subprocess.run([sys.executable, "-m", "tools.tester_screenshot", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == str(out)
    width, height, rgb = png_pixels(out.read_bytes())
    assert (width, height) == tester_screenshot.WINDOW
    assert 20_000 < out.stat().st_size < 1_000_000  # text and widgets, not a blank screen
    colours = {rgb[i:i + 3] for i in range(0, len(rgb), 3)}
    assert len(colours) > 50  # anti-aliased text in several colours, the progress bar's blue

"""A region of an X screen dump (XWD, as Xvfb -fbdir keeps its screen) as a PNG, in the
standard library only: Pillow is not in the lock and ImageMagick not on a stock machine.

Reads what Xvfb writes for a TrueColor screen: ZPixmap, 32 bits a pixel, 8-bit channels;
anything else is refused, saying what it was.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

HEADER = struct.Struct(">25I")  # XWDFileHeader: 25 CARD32, most significant byte first
ZPIXMAP, LSB_FIRST = 2, 0
COLOR_SIZE = 12  # XWDColor: pixel CARD32, red/green/blue CARD16, flags and a pad byte


@dataclass(frozen=True)
class Dump:
    """One screen dump: its geometry and where its pixels start in the file."""

    width: int
    height: int
    bytes_per_line: int
    channel_bytes: tuple[int, int, int]  # byte offsets of red, green, blue within a pixel
    pixels_at: int


def parse(data: bytes) -> Dump:
    """The header of an XWD dump; ValueError for a kind this module does not read."""
    if len(data) < HEADER.size:
        raise ValueError("not an XWD file: shorter than its header")
    (header_size, version, pixmap_format, _depth, width, height, _xoffset, byte_order,
     _unit, _bit_order, _pad, bits_per_pixel, bytes_per_line, _visual, red, green, blue,
     _bits_per_rgb, _entries, ncolors, *_window) = HEADER.unpack_from(data)
    if version != 7 or pixmap_format != ZPIXMAP or bits_per_pixel != 32:
        raise ValueError(f"XWD version {version}, format {pixmap_format}, {bits_per_pixel} bits "
                         "a pixel: only version 7 ZPixmap at 32 bits a pixel is read")
    channels = tuple(_byte_of(mask, byte_order) for mask in (red, green, blue))
    pixels_at = header_size + ncolors * COLOR_SIZE
    if len(data) < pixels_at + bytes_per_line * height:
        raise ValueError("XWD file shorter than its pixels")
    return Dump(width, height, bytes_per_line, channels, pixels_at)


def _byte_of(mask: int, byte_order: int) -> int:
    """Which byte of a 4-byte pixel holds the channel with this mask."""
    if mask not in (0xFF, 0xFF00, 0xFF0000, 0xFF000000):
        raise ValueError(f"channel mask {mask:#x}: only 8-bit byte-aligned channels are read")
    shift_bytes = (mask.bit_length() - 8) // 8
    return shift_bytes if byte_order == LSB_FIRST else 3 - shift_bytes


def crop_rgb(data: bytes, box: tuple[int, int, int, int]) -> tuple[int, int, bytes]:
    """(width, height, RGB rows) of the region (x, y, width, height) of the dump, clipped
    to the screen."""
    dump = parse(data)
    x, y, width, height = box
    width, height = min(width, dump.width - x), min(height, dump.height - y)
    if x < 0 or y < 0 or width <= 0 or height <= 0:
        raise ValueError(f"region {box} is not on the {dump.width}x{dump.height} screen")
    rows = bytearray()
    for row in range(y, y + height):
        start = dump.pixels_at + row * dump.bytes_per_line + 4 * x
        pixels = data[start:start + 4 * width]
        rgb = bytearray(3 * width)
        for channel, offset in enumerate(dump.channel_bytes):
            rgb[channel::3] = pixels[offset::4]
        rows += rgb
    return width, height, bytes(rows)


def png(width: int, height: int, rgb: bytes) -> bytes:
    """An 8-bit RGB PNG of these rows (each row unfiltered)."""
    stride = 3 * width
    raw = b"".join(b"\x00" + rgb[i:i + stride] for i in range(0, stride * height, stride))
    return (b"\x89PNG\r\n\x1a\n"
            + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b""))


def _chunk(kind: bytes, body: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC of type and data."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

"""Small, real PNG files built with zlib and struct, so no imaging library is needed."""

from __future__ import annotations

import hashlib
import struct
import zlib

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SIZE = 32  # pixels per side: big enough to look like an image, small enough to stay fast


def _chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data and the CRC over type + data."""
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _rows(seed: bytes, size: int) -> bytes:
    """Raw RGB scanlines (filter byte 0 each): a gradient whose colours come from the seed."""
    r0, g0, b0, step = seed[0], seed[1], seed[2], seed[3] | 1
    lines = []
    for y in range(size):
        pixels = bytearray()
        for x in range(size):
            pixels += bytes(((r0 + x * step) & 255, (g0 + y * step) & 255, (b0 + (x ^ y)) & 255))
        lines.append(b"\x00" + bytes(pixels))
    return b"".join(lines)


def output_png(filename: str, size: int = SIZE) -> bytes:
    """A deterministic PNG that differs for every filename (pixels and a tEXt chunk)."""
    seed = hashlib.sha256(filename.encode("utf-8")).digest()
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    text = b"Comment\x00fake-comfy " + filename.encode("utf-8")
    return (
        PNG_MAGIC
        + _chunk(b"IHDR", header)
        + _chunk(b"tEXt", text)
        + _chunk(b"IDAT", zlib.compress(_rows(seed, size), 6))
        + _chunk(b"IEND", b"")
    )

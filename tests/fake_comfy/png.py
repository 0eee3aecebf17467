"""Small, real PNG files built and read with zlib and struct, so no imaging library is needed.

The decoder reads what tests upload: 8-bit, non-interlaced grey, RGB, palette, grey+alpha and
RGBA files (every filter type). Bytes that are no PNG are a PngError, which LoadImage reports
the way Pillow reports a file it cannot identify; a valid PNG of another bit depth or an
interlaced one is a PngUnsupported, which says that the fake is the limit.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SIZE = 32  # pixels per side: big enough to look like an image, small enough to stay fast
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel


class PngError(ValueError):
    """Bytes that are not a PNG this module can read."""


class PngUnsupported(PngError):
    """A valid PNG of a kind the fake does not decode (other bit depths, interlaced)."""


@dataclass(frozen=True)
class Picture:
    """A decoded PNG: 8-bit RGB rows top to bottom, and its alpha when it has one."""

    width: int
    height: int
    rgb: bytes
    alpha: bytes | None = None


def _chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data and the CRC over type + data."""
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def interleave(planes: list[bytes]) -> bytes:
    """Samples of several planes (equally long), pixel by pixel."""
    out = bytearray(len(planes[0]) * len(planes))
    for index, plane in enumerate(planes):
        out[index::len(planes)] = plane
    return bytes(out)


def encode_png(width: int, height: int, rgb: bytes, alpha: bytes | None = None,
               text: bytes | None = None) -> bytes:
    """An 8-bit RGB (or RGBA, with `alpha`) PNG of these rows, optionally with a tEXt chunk."""
    if len(rgb) != width * height * 3 or (alpha is not None and len(alpha) != width * height):
        raise ValueError(f"pixel data does not fit {width}x{height}")
    pixels, channels = rgb, 3
    if alpha is not None:
        pixels, channels = interleave([rgb[0::3], rgb[1::3], rgb[2::3], alpha]), 4
    stride = width * channels
    rows = b"".join(b"\x00" + pixels[y * stride:(y + 1) * stride] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 6 if alpha is not None else 2, 0, 0, 0)
    return (PNG_MAGIC + _chunk(b"IHDR", header)
            + (_chunk(b"tEXt", text) if text is not None else b"")
            + _chunk(b"IDAT", zlib.compress(rows, 6)) + _chunk(b"IEND", b""))


def _gradient(seed: bytes, width: int, height: int) -> bytes:
    """RGB pixels of a gradient whose colours come from the seed."""
    r0, g0, b0, step = seed[0], seed[1], seed[2], seed[3] | 1
    pixels = bytearray()
    for y in range(height):
        for x in range(width):
            pixels += bytes(((r0 + x * step) & 255, (g0 + y * step) & 255, (b0 + (x ^ y)) & 255))
    return bytes(pixels)


def output_png(filename: str, size: int = SIZE) -> bytes:
    """A deterministic PNG that differs for every filename (pixels and a tEXt chunk)."""
    seed = hashlib.sha256(filename.encode("utf-8")).digest()
    return encode_png(size, size, _gradient(seed, size, size),
                      text=b"Comment\x00fake-comfy " + filename.encode("utf-8"))


def rgb_png(width: int, height: int, pixels: bytes | None = None) -> bytes:
    """A test input image: `pixels` as RGB rows, or by default a pattern in which every
    8-bit value occurs in each channel once the image has 256 pixels or more."""
    if pixels is None:
        count = width * height
        pixels = bytes(channel for n in range(count)
                       for channel in (n & 255, (n * 7 + 3) & 255, (255 - n) & 255))
    return encode_png(width, height, pixels)


# -- decoding ---------------------------------------------------------------------------------
def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of every chunk, CRCs checked, up to IEND."""
    if not data.startswith(PNG_MAGIC):
        raise PngError("not a PNG file")
    chunks, pos = [], len(PNG_MAGIC)
    while pos + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body, crc = data[pos + 8:pos + 8 + length], data[pos + 8 + length:pos + 12 + length]
        if len(crc) != 4 or struct.unpack(">I", crc)[0] != zlib.crc32(kind + body) & 0xFFFFFFFF:
            raise PngError(f"broken PNG file (bad checksum in {kind!r})")
        chunks.append((kind, body))
        if kind == b"IEND":
            return chunks
        pos += 12 + length
    raise PngError("truncated PNG file")


def _paeth(a: int, b: int, c: int) -> int:
    """The Paeth predictor of PNG filter type 4."""
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def _unfilter_line(kind: int, line: bytearray, prev: bytearray, bpp: int) -> bytearray:
    """One row with its filter undone (PNG specification, section 9)."""
    if kind == 1:
        for i in range(bpp, len(line)):
            line[i] = (line[i] + line[i - bpp]) & 255
    elif kind == 2:
        line = bytearray((a + b) & 255 for a, b in zip(line, prev))
    elif kind == 3:
        for i, up in enumerate(prev):
            line[i] = (line[i] + (((line[i - bpp] if i >= bpp else 0) + up) >> 1)) & 255
    elif kind == 4:
        for i, up in enumerate(prev):
            left, up_left = (line[i - bpp], prev[i - bpp]) if i >= bpp else (0, 0)
            line[i] = (line[i] + _paeth(left, up, up_left)) & 255
    elif kind != 0:
        raise PngError(f"unknown filter type {kind}")
    return line


def _unfilter(raw: bytes, height: int, stride: int, bpp: int) -> bytes:
    """The samples of every row, filters undone."""
    if len(raw) < height * (stride + 1):
        raise PngError("image data too short")
    out, prev = bytearray(), bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        prev = _unfilter_line(raw[start], bytearray(raw[start + 1:start + 1 + stride]), prev, bpp)
        out += prev
    return bytes(out)


def _to_rgb(samples: bytes, colour: int, chunks: dict[bytes, bytes]) -> tuple[bytes, bytes | None]:
    """(RGB, alpha or None) from unfiltered samples of one colour type."""
    if colour == 2:
        return samples, None
    if colour == 6:
        return interleave([samples[0::4], samples[1::4], samples[2::4]]), samples[3::4]
    if colour in (0, 4):
        grey = samples[0::CHANNELS[colour]]
        return interleave([grey, grey, grey]), samples[1::2] if colour == 4 else None
    palette = chunks.get(b"PLTE")
    if palette is None:
        raise PngError("palette image without PLTE")
    tables = [bytes(palette[i::3]).ljust(256, b"\0") for i in range(3)]
    rgb = interleave([samples.translate(table) for table in tables])
    if b"tRNS" not in chunks:
        return rgb, None
    return rgb, samples.translate(chunks[b"tRNS"][:256].ljust(256, b"\xff"))


def decode_png(data: bytes) -> Picture:
    """The pixels of an 8-bit, non-interlaced PNG; PngError for anything else."""
    chunks = _chunks(data)
    if not chunks or chunks[0][0] != b"IHDR" or len(chunks[0][1]) != 13:
        raise PngError("PNG without IHDR")
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    if colour not in CHANNELS:
        raise PngError(f"bad colour type {colour}")
    if depth != 8 or interlace:
        raise PngUnsupported(f"the fake decodes 8-bit non-interlaced PNGs only (bit depth "
                             f"{depth}, interlace {interlace})")
    try:
        raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    except zlib.error as ex:
        raise PngError(f"bad image data: {ex}") from None
    bpp = CHANNELS[colour]
    samples = _unfilter(raw, height, width * bpp, bpp)
    rgb, alpha = _to_rgb(samples, colour, dict(chunks))
    return Picture(width, height, rgb, alpha)

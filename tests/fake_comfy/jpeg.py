"""A tiny baseline JPEG encoder for flat grey images: enough for real preview frames.

A flat image has no AC coefficients, so every 8x8 block is one DC difference followed by
end-of-block; that keeps the encoder a few dozen lines instead of an imaging library.
"""

from __future__ import annotations

import struct

SIZE = 64  # the real CylSleepProgress node previews a 64x64 image

# JPEG Annex K standard luminance DC table; the AC table only needs end-of-block.
DC_BITS = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
DC_VALUES = list(range(12))
AC_BITS = [1] + [0] * 15
AC_VALUES = [0x00]


def _codes(bits: list[int], values: list[int]) -> dict[int, tuple[int, int]]:
    """Canonical Huffman codes (JPEG Annex C): symbol -> (code, length)."""
    codes: dict[int, tuple[int, int]] = {}
    code, index = 0, 0
    for length in range(1, 17):
        for _ in range(bits[length - 1]):
            codes[values[index]] = (code, length)
            code, index = code + 1, index + 1
        code <<= 1
    return codes


class _BitWriter:
    """Packs variable-length codes MSB first, with JPEG's 0xFF byte stuffing."""

    def __init__(self) -> None:
        self.out = bytearray()
        self._acc = 0
        self._bits = 0

    def write(self, code: int, length: int) -> None:
        """Append `length` bits of `code`."""
        for shift in range(length - 1, -1, -1):
            self._acc = (self._acc << 1) | ((code >> shift) & 1)
            self._bits += 1
            if self._bits == 8:
                self.out.append(self._acc)
                if self._acc == 0xFF:
                    self.out.append(0x00)
                self._acc, self._bits = 0, 0

    def flush(self) -> bytes:
        """Pad the last byte with 1-bits, as the standard asks."""
        while self._bits:
            self.write(1, 1)
        return bytes(self.out)


def _segment(marker: int, payload: bytes) -> bytes:
    """A marker segment whose length field counts itself."""
    return struct.pack(">HH", marker, len(payload) + 2) + payload


def _scan(grey: int, blocks: int) -> bytes:
    """Entropy-coded data: a DC difference and end-of-block per 8x8 block."""
    dc_codes, ac_codes = _codes(DC_BITS, DC_VALUES), _codes(AC_BITS, AC_VALUES)
    writer, previous = _BitWriter(), 0
    dc = 8 * (grey - 128)  # DCT of a flat level-shifted block, quantised by 1
    for _ in range(blocks):
        diff, previous = dc - previous, dc
        size = abs(diff).bit_length()
        writer.write(*dc_codes[size])
        if size:
            writer.write(diff if diff >= 0 else diff + (1 << size) - 1, size)
        writer.write(*ac_codes[0x00])
    return writer.flush()


def grey_jpeg(grey: int, size: int = SIZE) -> bytes:
    """A valid JFIF baseline JPEG of one flat grey level."""
    jfif = b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    frame = struct.pack(">BHHBBBB", 8, size, size, 1, 1, 0x11, 0)
    blocks = ((size + 7) // 8) ** 2
    return (
        b"\xff\xd8"
        + _segment(0xFFE0, jfif)
        + _segment(0xFFDB, b"\x00" + b"\x01" * 64)
        + _segment(0xFFC0, frame)
        + _segment(0xFFC4, b"\x00" + bytes(DC_BITS) + bytes(DC_VALUES))
        + _segment(0xFFC4, b"\x10" + bytes(AC_BITS) + bytes(AC_VALUES))
        + _segment(0xFFDA, b"\x01\x01\x00\x00\x3f\x00")
        + _scan(grey, blocks)
        + b"\xff\xd9"
    )

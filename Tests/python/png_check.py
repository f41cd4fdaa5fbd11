"""An independent PNG reader for the tests: checks the structure of a file (signature, chunk CRCs,
IHDR, IEND) and decodes its pixels (zlib + the five row filters) so a test can look at what was drawn.
Written from the PNG specification; shares no code with what it checks."""

import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def read_png(path):
    """(width, height, pixels uint8 array (height, width, channels)) of an 8-bit RGB/RGBA/gray PNG;
    AssertionError naming what is wrong otherwise."""
    data = open(path, "rb").read()
    assert data[:8] == SIGNATURE, f"{path}: not a PNG signature"
    pos, chunks = 8, []
    while pos < len(data):
        assert pos + 8 <= len(data), f"{path}: truncated chunk header at {pos}"
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        assert len(body) == length, f"{path}: truncated {kind!r} chunk"
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc, f"{path}: bad CRC in {kind!r}"
        chunks.append((kind, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND", f"{path}: chunk order {[k for k, _ in chunks]}"
    width, height, depth, color, comp, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert depth == 8 and comp == 0 and filt == 0 and interlace == 0, f"{path}: unsupported IHDR {chunks[0][1]!r}"
    channels = {0: 1, 2: 3, 6: 4}[color]
    raw = zlib.decompress(b"".join(b for k, b in chunks if k == b"IDAT"))
    stride = width * channels
    assert len(raw) == height * (stride + 1), f"{path}: {len(raw)} bytes of image data for {width}x{height}"
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int64)
    for y in range(height):
        f = raw[y * (stride + 1)]
        assert f <= 4, f"{path}: row {y} has filter type {f}"
        row = np.frombuffer(raw, dtype=np.uint8, count=stride, offset=y * (stride + 1) + 1).astype(np.int64)
        if f == 0:
            cur = row
        elif f == 1:  # Sub: a running sum per channel
            cur = np.cumsum(row.reshape(-1, channels), axis=0).ravel() & 0xFF
        elif f == 2:  # Up
            cur = (row + prev) & 0xFF
        else:  # Average, Paeth: each byte depends on the one to its left
            r, p, c = row.tolist(), prev.tolist(), [0] * stride
            for x in range(stride):
                a = c[x - channels] if x >= channels else 0
                b = p[x]
                if f == 3:
                    c[x] = (r[x] + (a + b) // 2) & 0xFF
                else:
                    c[x] = (r[x] + _paeth(a, b, p[x - channels] if x >= channels else 0)) & 0xFF
            cur = np.array(c, dtype=np.int64)
        out[y] = cur
        prev = cur
    return width, height, out.reshape(height, width, channels)

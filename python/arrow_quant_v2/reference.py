"""The quantization contract written in numpy, for reading and for checking.

This is the README's "exact math" as executable code: it gives the same bytes as the Rust
backends (the tests compare them), but it is single-threaded and makes temporaries, so it is
a specification and a benchmark baseline, not a fast path.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np


def _groups(row_len: int, group_size: int):
    return [(s, min(s + group_size, row_len)) for s in range(0, row_len, group_size)]


def quantize(
    weights: np.ndarray, shape: Sequence[int] | None = None, bit_width: int = 4, group_size: int = 128
) -> Tuple[bytes, np.ndarray, np.ndarray]:
    """Returns ``(packed, scales, zero_points)`` for one layer, exactly as the library does."""
    w = np.asarray(weights).astype(np.float32).reshape(-1)
    row_len = w.size if not shape else int(shape[-1])
    rows = w.reshape(-1, row_len)
    levels = np.float32(2**bit_width - 1)
    packed, scales, zeros = bytearray(), [], []
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        for row in rows:
            for s, e in _groups(row_len, group_size):
                g = row[s:e]
                # Total order: -0.0 is below +0.0 (lexsort on the sign bit breaks the tie).
                lo = g[np.lexsort((~np.signbit(g), g))[0]]
                hi = g.max()
                width = np.float32(hi - lo)
                if np.isinf(width):
                    raise ValueError("group width overflows float32")
                inv = np.float32(levels / width)
                if not np.isfinite(inv):
                    scale, inv = np.float32(0), np.float32(0)
                else:
                    scale = np.float32(width / levels)
                t = (g - lo).astype(np.float32) * inv
                q = np.minimum(np.rint(t), levels).astype(np.uint8)
                packed += pack(q, bit_width)
                scales.append(scale)
                zeros.append(lo)
    return bytes(packed), np.array(scales, np.float32), np.array(zeros, np.float32)


def pack(codes: np.ndarray, bit_width: int) -> bytes:
    """Little-endian, low bits first: code i goes to byte i*b//8 at bit (i*b) % 8."""
    per = 8 // bit_width
    padded = np.zeros(-(-codes.size // per) * per, np.uint8)
    padded[: codes.size] = codes
    shifts = (np.arange(per, dtype=np.uint8) * bit_width).astype(np.uint8)
    return (padded.reshape(-1, per) << shifts).sum(axis=1, dtype=np.uint16).astype(np.uint8).tobytes()


def dequantize(
    packed: bytes, scales: np.ndarray, zero_points: np.ndarray, shape: Sequence[int], bit_width: int, group_size: int
) -> np.ndarray:
    """``q * scale + zero_point`` in float32, two roundings, per group."""
    row_len = int(shape[-1]) if len(shape) else 1
    n = int(np.prod(shape)) if len(shape) else 1
    data = np.frombuffer(packed, np.uint8)
    per = 8 // bit_width
    out = np.empty(n, np.float32)
    pos, gi = 0, 0
    for r in range(n // row_len):
        for s, e in _groups(row_len, group_size):
            count = e - s
            nbytes = -(-count * bit_width // 8)
            b = data[pos : pos + nbytes]
            codes = ((b[:, None] >> (np.arange(per, dtype=np.uint8) * bit_width)) & (2**bit_width - 1)).reshape(-1)[:count]
            out[r * row_len + s : r * row_len + e] = (codes.astype(np.float32) * scales[gi]) + zero_points[gi]
            pos += nbytes
            gi += 1
    return out

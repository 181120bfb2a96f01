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
    weights: np.ndarray,
    shape: Sequence[int] | None = None,
    bit_width: int = 4,
    group_size: int = 128,
    method: str = "minmax",
) -> Tuple[bytes, np.ndarray, np.ndarray]:
    """Returns ``(packed, scales, zero_points)`` for one layer, exactly as the library does.

    ``method="minmax"`` (the default) is the min/max contract; ``method="lsq"`` refines each
    group's min/max grid by alternating least squares (see :func:`quantize_lsq`).
    """
    if method == "lsq":
        return quantize_lsq(weights, shape, bit_width, group_size)
    if method != "minmax":
        raise ValueError(f"unknown method {method!r}: expected 'minmax' or 'lsq'")
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


# --- method="lsq" (src/quant/lsq.rs) ------------------------------------------------------
#
# Every float operation below is one float32 numpy operation, in the order of the Rust
# definition (no float64, no np.sum/np.dot: numpy sums pairwise). Groups of the same length are
# processed together, one row of a 2-D block per group.

LSQ_ROUNDS = 5  # fits after the start
LSQ_LANES = 16  # lanes every sum runs over
_MAGIC = np.float32(8_388_608.0)  # 2^23: (t + 2^23) - 2^23 rounds t in [0, 2^23) half to even
_F0 = np.float32(0.0)
_F1 = np.float32(1.0)


def _order_key(x: np.ndarray) -> np.ndarray:
    """Total-order key of float32 values as int32 (``-0.0 < +0.0``), as ``params::order_key``."""
    b = x.view(np.int32)
    return b ^ ((b >> 31).view(np.uint32) >> np.uint32(1)).view(np.int32)


def _from_order_key(k: np.ndarray) -> np.ndarray:
    return (k ^ ((k >> 31).view(np.uint32) >> np.uint32(1)).view(np.int32)).view(np.float32)


def _minmax_grid(blocks: np.ndarray, levels: np.float32):
    """``GroupParams::from_range`` of each row of ``blocks``: ``(scale, lo, inv)``, float32."""
    keys = _order_key(np.ascontiguousarray(blocks))
    lo = _from_order_key(keys.min(axis=1))
    hi = _from_order_key(keys.max(axis=1))
    width = hi - lo
    if np.isinf(width).any():
        raise ValueError("group width overflows float32")
    inv = levels / width
    constant = ~np.isfinite(inv)
    scale = np.where(constant, _F0, width / levels).astype(np.float32)
    inv = np.where(constant, _F0, inv).astype(np.float32)
    return scale, lo, inv


def _lane_sum(terms: np.ndarray) -> np.ndarray:
    """Per row: lane j adds terms j, j+16, ... in order from +0.0, then the lanes fold as a tree.

    The terms are padded with +0.0, which changes no lane: a lane that starts at +0.0 is never
    -0.0, and x + 0.0 == x for every other x (NaN and infinities included).
    """
    g, n = terms.shape
    chunks = -(-n // LSQ_LANES)
    padded = np.zeros((g, chunks * LSQ_LANES), np.float32)
    padded[:, :n] = terms
    padded = padded.reshape(g, chunks, LSQ_LANES)
    lanes = np.zeros((g, LSQ_LANES), np.float32)
    for c in range(chunks):
        lanes = lanes + padded[:, c, :]
    half = LSQ_LANES // 2
    while half > 0:
        lanes = np.concatenate([lanes[:, :half] + lanes[:, half : 2 * half], lanes[:, 2 * half :]], axis=1)
        half //= 2
    return lanes[:, 0].copy()


def _lsq_codes(blocks: np.ndarray, zero: np.ndarray, inv: np.ndarray, levels: np.float32) -> np.ndarray:
    """Step 2's codes ``round_half_even(clamp((w - zero) * inv, 0, L))`` as float32 integers."""
    t = (blocks - zero[:, None]) * inv[:, None]
    t = np.where(t > _F0, t, _F0)
    t = np.where(t < levels, t, levels)
    return ((t + _MAGIC) - _MAGIC).astype(np.float32)


def _lsq_evaluate(blocks, scale, zero, inv, levels):
    """Step 2's four sums ``(sse, sq, sqq, sqw)`` of each row under its grid."""
    q = _lsq_codes(blocks, zero, inv, levels)
    e = (q * scale[:, None] + zero[:, None]) - blocks
    return _lane_sum(e * e), _lane_sum(q), _lane_sum(q * q), _lane_sum(q * blocks)


def _lsq_fit(n: int, sq, sqq, sqw, sw):
    """Step 3: ``(scale, zero, inv, ok)``; where ``ok`` is false the definition stops."""
    m = np.float32(n)
    d = m * sqq - sq * sq
    scale = (m * sqw - sq * sw) / d
    zero = (sqq * sw - sq * sqw) / d
    inv = _F1 / scale
    ok = (d > _F0) & (scale > _F0) & np.isfinite(scale) & np.isfinite(zero) & np.isfinite(inv)
    return scale, zero, inv, ok


def lsq_grids(blocks: np.ndarray, bit_width: int):
    """Steps 1-4 for each row of ``blocks`` (groups of one length, float32): the kept grids.

    Returns ``(scale, zero, inv)``, float32 arrays with one entry per row.
    """
    blocks = np.asarray(blocks, np.float32)
    levels = np.float32(2**bit_width - 1)
    n = blocks.shape[1]
    with np.errstate(divide="ignore", over="ignore", invalid="ignore", under="ignore"):
        scale, zero, inv = _minmax_grid(blocks, levels)
        best = [scale.copy(), zero.copy(), inv.copy()]
        active = scale != _F0  # a constant min/max group keeps its grid and stops
        sw = _lane_sum(blocks)
        sse, sq, sqq, sqw = _lsq_evaluate(blocks, scale, zero, inv, levels)
        best_sse = sse.copy()
        for _ in range(LSQ_ROUNDS):
            if not active.any():
                break
            scale, zero, inv, ok = _lsq_fit(n, sq, sqq, sqw, sw)
            active &= ok
            if not active.any():
                break
            # Stopped groups get a harmless grid; their results are masked out below.
            scale, zero, inv = (np.where(active, x, _F1).astype(np.float32) for x in (scale, zero, inv))
            new = _lsq_evaluate(blocks, scale, zero, inv, levels)
            better = active & (new[0] < best_sse)
            for b, x in zip(best, (scale, zero, inv)):
                b[better] = x[better]
            best_sse[better] = new[0][better]
            sse, sq, sqq, sqw = (np.where(active, x, y) for x, y in zip(new, (sse, sq, sqq, sqw)))
    return best[0], best[1], best[2]


def lsq_sse(blocks: np.ndarray, scale, zero, inv, bit_width: int) -> np.ndarray:
    """The definition's own float32 ``sse`` of each row of ``blocks`` under a grid (step 2)."""
    blocks = np.asarray(blocks, np.float32)
    levels = np.float32(2**bit_width - 1)
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        return _lsq_evaluate(blocks, *(np.asarray(x, np.float32) for x in (scale, zero, inv)), levels)[0]


def _pack_rows(codes: np.ndarray, bit_width: int) -> np.ndarray:
    """:func:`pack` applied to each row of ``codes``: one row of bytes per group."""
    per = 8 // bit_width
    g, n = codes.shape
    padded = np.zeros((g, -(-n // per) * per), np.uint8)
    padded[:, :n] = codes
    shifts = (np.arange(per, dtype=np.uint8) * bit_width).astype(np.uint8)
    return (padded.reshape(g, -1, per) << shifts).sum(axis=2, dtype=np.uint16).astype(np.uint8)


def quantize_lsq(
    weights: np.ndarray, shape: Sequence[int] | None = None, bit_width: int = 4, group_size: int = 128
) -> Tuple[bytes, np.ndarray, np.ndarray]:
    """``method="lsq"``: ``(packed, scales, zero_points)`` for one layer, exactly as the library
    does (same format as min/max; only each group's scale and zero point differ)."""
    w = np.asarray(weights).astype(np.float32).reshape(-1)
    row_len = w.size if not shape else int(shape[-1])
    rows = w.reshape(-1, row_len)
    n_rows = rows.shape[0]
    levels = np.float32(2**bit_width - 1)
    full, tail = divmod(row_len, group_size)
    parts = []  # (blocks of one length, groups per row)
    if full:
        parts.append((rows[:, : full * group_size].reshape(n_rows * full, group_size), full))
    if tail:
        parts.append((rows[:, full * group_size :], 1))
    packed, scales, zeros = [], [], []
    for blocks, per_row in parts:
        blocks = np.ascontiguousarray(blocks)
        scale, zero, inv = lsq_grids(blocks, bit_width)
        with np.errstate(over="ignore", invalid="ignore", under="ignore"):
            q = _lsq_codes(blocks, zero, inv, levels).astype(np.uint8)
        packed.append(_pack_rows(q, bit_width).reshape(n_rows, -1))
        scales.append(scale.reshape(n_rows, per_row))
        zeros.append(zero.reshape(n_rows, per_row))
    if not parts:
        return b"", np.zeros(0, np.float32), np.zeros(0, np.float32)
    return (
        np.concatenate(packed, axis=1).tobytes(),
        np.concatenate(scales, axis=1).reshape(-1).astype(np.float32),
        np.concatenate(zeros, axis=1).reshape(-1).astype(np.float32),
    )


def pack(codes: np.ndarray, bit_width: int) -> bytes:
    """Little-endian, low bits first: code i goes to byte i*b//8 at bit (i*b) % 8."""
    return _pack_rows(np.asarray(codes, np.uint8).reshape(1, -1), bit_width).tobytes()


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

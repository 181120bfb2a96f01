"""Writes golden.json: digests of ggml's own bytes (ggml_quantize_chunk of libggml-python 0.20.2.post1) for
every block type, without and with an importance matrix, on a small deterministic input that
tests/ggml_blocks.rs regenerates bit for bit (integer hashing and exact float steps only).

    .venv/bin/python tests/data/ggml/make_golden.py
"""

import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "python"))
from ggml_reference import BLOCK_TYPES, Ggml  # noqa: E402

ROWS, COLS = 64, 512


def unit(i: np.ndarray, seed: int) -> np.ndarray:
    """A value in [-0.5, 0.5) from the index: 24 bits of a multiplicative hash, exactly."""
    h = ((i.astype(np.uint64) + np.uint64(seed)) * np.uint64(2654435761)) & np.uint64(0xFFFFFFFF)
    return ((h >> np.uint64(8)).astype(np.float32) / np.float32(1 << 24)) - np.float32(0.5)


def fnv1a(b: bytes) -> str:
    """FNV-1a 64 of the bytes, as hex: the test checks it regenerated the same input."""
    h = 0xCBF29CE484222325
    for byte in b:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def inputs():
    i = np.arange(COLS, dtype=np.int64)
    x = np.zeros((ROWS, COLS), dtype=np.float32)
    for r in list(range(4)) + list(range(8, ROWS)):
        x[r] = unit(i + r * COLS, 1) * np.float32((r % 7 + 1) / 32)  # exact scales: small integers over 32
    # rows 8..: half of them with a few large weights (heavier tails, as real weights have)
    for r in range(8, ROWS, 2):
        x[r, (i % 37) == (r % 37)] *= np.float32(16)
    # row 4: zeros
    x[5] = ((i % 32) - 16).astype(np.float32)  # integers: ties after scaling
    x[6] = unit(i, 2) * np.float32(2.0**-10)
    x[6, 7] = 50.0  # one outlier
    x[7] = unit(i, 3) * np.float32(2.0**-126)  # subnormals
    w = (unit(i, 4) + np.float32(0.51)) * np.where(i % 5 == 0, np.float32(64), np.float32(1))  # importance, positive, uneven
    return x, w


def main():
    x, w = inputs()
    g = Ggml()
    out = {
        "generator": "tests/data/ggml/make_golden.py",
        "ggml": g.version,
        "rows": ROWS,
        "cols": COLS,
        "input_fnv1a": fnv1a(x.tobytes()),
        "imatrix_fnv1a": fnv1a(w.tobytes()),
        "blocks": {},
    }
    # FNV-1a of each row's bytes: a test names the rows that differ
    for t in BLOCK_TYPES:
        for key, q in ((t, g.quantize(x, t)), (t + "+imatrix", g.quantize(x, t, w))):
            n = len(q) // ROWS
            out["blocks"][key] = [fnv1a(q[r * n:(r + 1) * n]) for r in range(ROWS)]
    with open(os.path.join(HERE, "golden.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()

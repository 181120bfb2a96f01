"""Quantize a 4096x4096 float32 layer to 2/4/8 bits and to GGUF block types, and say how close
it came.

Run with `make example` (it builds the extension first).
"""

import time

import numpy as np
import pyarrow as pa

import arrow_quant_v2 as aq

rng = np.random.default_rng(0)
w = (rng.standard_normal((4096, 4096)) * 0.02).astype(np.float32)
table = pa.table({"layer_name": ["blk.0.attn.weight"], "weights": [w.ravel()], "shape": [list(w.shape)]})

print(f"backend for device='auto': {aq.backend_name('auto')}")
for bits in (2, 4, 8):
    t0 = time.perf_counter()
    q = aq.quantize_arrow(table, bit_width=bits, group_size=128, device="auto")
    t1 = time.perf_counter()
    back = aq.dequantize_arrow(q)
    t2 = time.perf_counter()
    restored = np.asarray(back["weights"][0].values).reshape(w.shape)
    packed = len(q["quantized_data"][0].as_py())
    side = 2 * 4 * len(q["scales"][0])
    cos = float(np.dot(w.ravel(), restored.ravel()) / (np.linalg.norm(w) * np.linalg.norm(restored)))
    snr = 10 * np.log10(np.sum(w.astype(np.float64) ** 2) / np.sum((w - restored).astype(np.float64) ** 2))
    print(
        f"{bits}-bit: {w.nbytes / 2**20:.0f} MiB -> {(packed + side) / 2**20:.1f} MiB "
        f"({w.nbytes / (packed + side):.1f}x), quantize {w.nbytes / (t1 - t0) / 1e9:.2f} GB/s, "
        f"dequantize {w.nbytes / (t2 - t1) / 1e9:.2f} GB/s, cosine {cos:.5f}, SNR {snr:.1f} dB, "
        f"max |error| {np.abs(w - restored).max():.2e}"
    )

# The same layer in llama.cpp's GGUF block types (the bytes ggml's own quantizer writes).
for gguf_type in ("q4_0", "q4_k", "q6_k"):
    t0 = time.perf_counter()
    data = aq.gguf_quantize(w, gguf_type)
    t1 = time.perf_counter()
    restored = aq.gguf_dequantize(data, gguf_type, w.shape)
    snr = 10 * np.log10(np.sum(w.astype(np.float64) ** 2) / np.sum((w - restored).astype(np.float64) ** 2))
    print(
        f"GGUF {gguf_type}: {w.nbytes / 2**20:.0f} MiB -> {len(data) / 2**20:.1f} MiB "
        f"({8 * len(data) / w.size:.3f} bits/weight), quantize {w.nbytes / (t1 - t0) / 1e9:.2f} GB/s, SNR {snr:.1f} dB"
    )

"""A short round trip through every Python entry point that touches memory on our side, for
valgrind (tests/valgrind/run.sh): quantize/dequantize, read_quantized, quantize_model, and the
GGUF block functions. Small sizes: valgrind runs it ~50x slower."""

import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

import arrow_quant_v2 as aq

rng = np.random.default_rng(0)
table = aq.layers_table({"a": rng.standard_normal((16, 64), np.float32), "b": rng.standard_normal(100).astype(np.float16)})
for bits in (2, 4, 8):
    q = aq.quantize_arrow(table, bit_width=bits, group_size=32, device="cpu")
    back = aq.dequantize_arrow(q, device="cpu")
    assert back.num_rows == 2

x = rng.standard_normal((4, 256)).astype(np.float32)
for ty in ("q4_0", "q8_0", "q2_k", "q4_k", "q6_k"):
    data = aq.gguf_quantize(x, ty)
    assert aq.gguf_dequantize(data, ty, x.shape).shape == x.shape

with tempfile.TemporaryDirectory() as d:
    src = Path(sys.argv[1])
    out = Path(d) / "m.arrow"
    report = aq.quantize_model(src, out, device="cpu")
    assert report.num_rows > 0
    stored = aq.read_quantized(out)
    back = aq.dequantize_arrow(stored, device="cpu")
    assert back.num_rows == stored.num_rows > 0
print("roundtrip ok")

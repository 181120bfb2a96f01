"""arrow_quant_v2 against its peers, in one run, on the same 2^26 float32 weights.

Prints input GB/s (median of interleaved runs) and each figure as a ratio to a plain numpy
read of the same buffer measured in the same run. Peers that are not installed are listed as
such: `pip install gguf mlx` adds them. Set AQ_BENCH_LOG2 for another size.

    python benches/python_peers.py
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np
import pyarrow as pa

import arrow_quant_v2 as aq

LOG2 = int(os.environ.get("AQ_BENCH_LOG2", "26"))
ROUNDS = int(os.environ.get("AQ_BENCH_ROUNDS", "5"))
GROUP = 128


def numpy_affine(w2d: np.ndarray, bits: int = 4):
    """The contract, vectorized in numpy, for full groups (rows a multiple of GROUP)."""
    g = w2d.reshape(-1, GROUP)
    lo = g.min(axis=1)
    hi = g.max(axis=1)
    levels = np.float32(2**bits - 1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        width = hi - lo
        inv = levels / width
        const = ~np.isfinite(inv)
        inv[const] = 0
        scale = np.where(const, np.float32(0), width / levels).astype(np.float32)
    q = np.minimum(np.rint((g - lo[:, None]) * inv[:, None]), levels).astype(np.uint8)
    per = 8 // bits
    q = q.reshape(-1, per)
    packed = np.zeros(q.shape[0], np.uint8)
    for k in range(per):
        packed |= q[:, k] << np.uint8(k * bits)
    return packed, scale, lo


def main() -> None:
    n = 1 << LOG2
    rng = np.random.default_rng(0)
    w = (rng.standard_normal(n, dtype=np.float32) * 0.02).reshape(1 << (LOG2 // 2), -1)
    table = pa.table({"layer_name": ["w"], "weights": pa.FixedSizeListArray.from_arrays(pa.array(w.ravel()), n), "shape": [list(w.shape)]})

    # Same bytes as numpy before timing anything.
    q = aq.quantize_arrow(table, bit_width=4, group_size=GROUP, device="cpu")
    packed, scale, lo = numpy_affine(w)
    assert q["quantized_data"][0].as_py() == packed.tobytes(), "numpy and arrow_quant_v2 disagree"
    assert np.array_equal(np.asarray(q["scales"][0].values).view(np.uint32), scale.view(np.uint32))
    del q, packed

    cases = {
        "numpy read (np.add.reduce)": lambda: np.add.reduce(w.ravel()),
        f"arrow_quant_v2 cpu ({aq.backend_name('cpu')})": lambda: aq.quantize_arrow(table, bit_width=4, group_size=GROUP, device="cpu"),
        "numpy, same affine math": lambda: numpy_affine(w),
    }
    notes = []
    try:
        from gguf import GGMLQuantizationType, quants

        for t in ("Q4_0", "Q4_1"):
            cases[f"gguf-py {t}"] = lambda t=t: quants.quantize(w, getattr(GGMLQuantizationType, t))
    except ImportError:
        notes.append("gguf-py not installed (pip install gguf)")
    try:
        import mlx.core as mx

        cases["mlx cpu affine int4 (numpy in)"] = lambda: mx.eval(mx.quantize(mx.array(w), group_size=GROUP, bits=4))
    except ImportError:
        notes.append("mlx not installed (pip install mlx)")
    if not aq.backend_name("auto").startswith("cpu"):
        cases["arrow_quant_v2 gpu"] = lambda: aq.quantize_arrow(table, bit_width=4, group_size=GROUP, device="gpu")

    times = {k: [] for k in cases}
    for _ in range(ROUNDS):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    read = statistics.median(times["numpy read (np.add.reduce)"])
    print(f"2^{LOG2} float32 ({w.nbytes / 2**20:.0f} MiB), 4-bit, group {GROUP}; median of {ROUNDS} interleaved runs")
    print(f"{'case':58s} {'GB/s':>8s} {'vs read':>8s}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:58s} {w.nbytes / med / 1e9:8.2f} {read / med:7.2f}x")
    for note in notes:
        print("note:", note)


if __name__ == "__main__":
    main()

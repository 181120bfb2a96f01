"""GGUF block types from Python: arrow_quant_v2.gguf_quantize against ggml's own
ggml_quantize_chunk (libggml-python 0.20.2.post1, through ctypes) on the same 4096x4096
float32 matrix, in the same run, at the same thread count.

Prints, per type, float32 input GB/s (best of interleaved runs) of both and the ratio
project / ggml, at 1 thread (a child process with RAYON_NUM_THREADS=1) and at all threads
(ggml on row ranges in Python threads: ctypes releases the GIL), and whether the bytes are
equal. AQ_BENCH_ROWS changes the row count, AQ_BENCH_TYPES the types (comma separated).

    python benches/python_gguf.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "python"))

import arrow_quant_v2 as aq  # noqa: E402
from ggml_reference import BLOCK_TYPES, Ggml  # noqa: E402

ROWS = int(os.environ.get("AQ_BENCH_ROWS", "4096"))
COLS = 4096
TYPES = os.environ.get("AQ_BENCH_TYPES", ",".join(BLOCK_TYPES)).split(",")


def matrix() -> np.ndarray:
    return (np.random.default_rng(0).standard_normal((ROWS, COLS)) * 0.02).astype(np.float32)


def ggml_threaded(g: Ggml, x: np.ndarray, t: str, threads: int) -> bytes:
    parts: list = [None] * threads
    bounds = np.linspace(0, x.shape[0], threads + 1).astype(int)

    def run(k):
        parts[k] = g.quantize(x[bounds[k] : bounds[k + 1]], t)

    ts = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    return b"".join(parts)


def best_of(fs, reps):
    """Interleaved runs of each function; the best time of each (the machine is shared)."""
    best = [float("inf")] * len(fs)
    out = [None] * len(fs)
    for _ in range(reps):
        for i, f in enumerate(fs):
            t0 = time.perf_counter()
            out[i] = f()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best, out


def measure(threads: int) -> dict:
    x = matrix()
    g = Ggml()
    res = {}
    for t in TYPES:
        reps = 3 if t.endswith("_k") else 7
        (ours, ref), (a, b) = best_of([lambda: aq.gguf_quantize(x, t), lambda: ggml_threaded(g, x, t, threads)], reps)
        res[t] = (x.nbytes / ours / 1e9, x.nbytes / ref / 1e9, a == b)
    return res


def main():
    if os.environ.get("AQ_BENCH_CHILD"):
        for t, (o, r, eq) in measure(1).items():
            print(f"{t} {o} {r} {int(eq)}")
        return
    threads = os.cpu_count() or 1
    env = dict(os.environ, AQ_BENCH_CHILD="1", RAYON_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    child = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, check=True)
    one = {line.split()[0]: line.split()[1:] for line in child.stdout.splitlines()}
    many = measure(threads)
    print(f"gguf_quantize ({aq.backend_name('cpu')}) vs ggml 0.20.2 ggml_quantize_chunk, {ROWS}x{COLS} float32, input GB/s:")
    print(f"{'type':>6} {'1t ours':>9} {'1t ggml':>9} {'ratio':>7}   {f'{threads}t ours':>9} {f'{threads}t ggml':>9} {'ratio':>7}  bytes")
    for t in TYPES:
        o1, r1, e1 = float(one[t][0]), float(one[t][1]), one[t][2] == "1"
        on, rn, en = many[t]
        same = "equal" if e1 and en else "DIFFER"
        print(f"{t:>6} {o1:9.3f} {r1:9.3f} {o1 / r1:6.1f}x   {on:9.3f} {rn:9.3f} {on / rn:6.1f}x  {same}")


if __name__ == "__main__":
    main()

"""Processes and threads: a child forked after the library ran (multiprocessing with fork,
datasets.map(num_proc=...), DataLoader workers) quantizes without hanging and gives the same
bytes; many Python threads at once give the same bytes as one.
"""

import multiprocessing
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import arrow_quant_v2 as aq
from conftest import layer_table

TIMEOUT = 120  # seconds; a hang is a failure, not a stuck CI job


def table(seed, n=1 << 16):
    rng = np.random.default_rng(seed)
    return layer_table({f"layer{seed}.{i}": rng.standard_normal(n // 4, np.float32) for i in range(4)})


def quantize_bytes(seed, device="cpu"):
    q = aq.quantize_arrow(table(seed), device=device, group_size=64)
    return [b for b in q.column("quantized_data").to_pylist()], q.column("scales").to_pylist()


def gguf_bytes(seed):
    x = np.random.default_rng(seed).standard_normal((8, 256)).astype(np.float32)
    return aq.gguf_quantize(x, "q4_k")


def in_child(seed):
    return quantize_bytes(seed), gguf_bytes(seed), aq.backend_name("auto")


def run_forked(fn, args):
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        try:
            return pool.map_async(fn, args).get(timeout=TIMEOUT)
        finally:
            pool.terminate()


def test_a_forked_child_quantizes_after_the_parent_did():
    # The parent uses every parallel path first, so its thread pool is running when it forks.
    parent = [(quantize_bytes(s), gguf_bytes(s)) for s in (1, 2, 3)]
    children = run_forked(in_child, [1, 2, 3])
    for (q, g), (cq, cg, name) in zip(parent, children):
        assert cq == q and cg == g
        assert name.startswith("cpu")


def gpu_in_child(_):
    try:
        aq.quantize_arrow(table(5), device="gpu", group_size=64)
    except RuntimeError as e:
        gpu_error = str(e)
    else:
        gpu_error = None
    return aq.backend_name("auto"), quantize_bytes(5, device="auto"), gpu_error


def test_a_child_forked_after_gpu_use_falls_back_to_the_cpu(monkeypatch):
    monkeypatch.setenv("ARROW_QUANT_ALLOW_SOFTWARE_GPU", "1")
    want = quantize_bytes(5, device="gpu")  # starts wgpu in the parent (lavapipe in CI)
    [(name, got, gpu_error)] = run_forked(gpu_in_child, [0])
    assert name.startswith("cpu"), name
    assert got == want
    assert gpu_error is not None and "forked" in gpu_error


def test_raw_os_fork_child_quantizes():
    want = quantize_bytes(9)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running the parent's cleanup
        try:
            ok = quantize_bytes(9) == want
        except BaseException:
            ok = False
        os.write(w, b"1" if ok else b"0")
        os._exit(0)
    os.close(w)
    import select

    ready, _, _ = select.select([r], [], [], TIMEOUT)
    if not ready:
        os.kill(pid, 9)
    os.waitpid(pid, 0)
    assert ready and os.read(r, 1) == b"1"


def test_concurrent_threads_give_the_same_bytes():
    seeds = list(range(16))
    want = {s: (quantize_bytes(s), gguf_bytes(s)) for s in seeds}
    with ThreadPoolExecutor(8) as ex:
        got = dict(zip(seeds, ex.map(lambda s: (quantize_bytes(s), gguf_bytes(s)), seeds * 1)))
        again = list(ex.map(lambda s: aq.dequantize_arrow(aq.quantize_arrow(table(s), group_size=64, device="cpu"), device="cpu"), seeds))
    assert got == want
    for s, d in zip(seeds, again):
        ref = aq.dequantize_arrow(aq.quantize_arrow(table(s), group_size=64, device="cpu"), device="cpu")
        assert d.equals(ref)


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_other_start_methods_work(method):
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(1) as pool:
        [(q, g, name)] = pool.map_async(in_child, [4]).get(timeout=TIMEOUT)
    assert (q, g) == (quantize_bytes(4), gguf_bytes(4))

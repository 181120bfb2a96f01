"""Whole-checkpoint conversion against what bounds it, in one run (issue 13's benchmark).

Builds a sharded safetensors checkpoint (default 1.6 GB: shards of 6 float32 tensors of
4096x4096; `--gb 4`, `--dtype bf16|f16` for the other variants), then times, page cache warm:

* the sequential read of the shard files (`cat > /dev/null`): what a converter cannot beat;
* `quantize_arrow` of the same tensors already in memory: what the kernel does;
* `arrow-quant quantize DIR -o out.{arrow,parquet,gguf}` (affine 4-bit g128, GGUF q4_0 / q8_0),
  pipelined (the default) and one tensor at a time (`--read-ahead-mib 0`), with 1 thread as
  well, and Python's `quantize_model` for the Arrow output;
* with `--cold`, the read and the Arrow conversion again with the shards evicted from the
  page cache before each run (`posix_fadvise(DONTNEED)`), so they come from the disk.

Prints GB/s of input, each figure's ratio to the in-memory rate and to the read, the CLI's peak
resident memory and its stage busy times, best of `--repeat`. Numbers, not a test: this
machine is shared and noisy.

    python benches/convert_checkpoint.py [--gb 1.6] [--dtype f32] [--repeat 3] [--cold] [--dir /tmp/x]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

import arrow_quant_v2 as aq

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / "target" / "release" / "arrow-quant"
SIDE = 4096


def write_checkpoint(folder: Path, gb: float, dtype: str) -> list[Path]:
    """Shards of SIDE x SIDE tensors, 6 per shard, with an index."""
    itemsize = 4 if dtype == "f32" else 2
    n_tensors = max(1, round(gb * 1e9 / (SIDE * SIDE * itemsize)))
    rng = np.random.default_rng(0)
    base = (rng.standard_normal(SIDE * SIDE).astype(np.float32) * 0.02).reshape(SIDE, SIDE)
    weight_map, shards = {}, []
    for s in range(0, n_tensors, 6):
        names = [f"model.layers.{i}.mlp.weight" for i in range(s, min(s + 6, n_tensors))]
        path = folder / f"model-{s // 6 + 1:05d}.safetensors"
        header, offset = {}, 0
        for name in names:
            header[name] = {"dtype": dtype.upper(), "shape": [SIDE, SIDE], "data_offsets": [offset, offset + SIDE * SIDE * itemsize]}
            offset += SIDE * SIDE * itemsize
        h = json.dumps(header).encode()
        h += b" " * (-len(h) % 8)
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(h)) + h)
            for i, _ in enumerate(names):
                t = np.roll(base, i, axis=1)
                if dtype == "f32":
                    f.write(t.tobytes())
                elif dtype == "f16":
                    f.write(t.astype(np.float16).tobytes())
                else:  # bf16: the top half of each float32
                    f.write((t.view(np.uint32) >> 16).astype(np.uint16).tobytes())
        weight_map.update({n: path.name for n in names})
        shards.append(path)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return shards


def best(f, repeat: int, before=None) -> float:
    times = []
    for _ in range(repeat):
        if before:
            before()
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times)


def evict(paths: list[Path]) -> None:
    """Drops the files' pages from the page cache (clean pages of files nobody maps)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run_cli(cmd: list[str], threads: int | None = None) -> str:
    env = dict(os.environ)
    if threads:
        env["RAYON_NUM_THREADS"] = str(threads)
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=True, text=True, env=env).stdout


def in_memory_table(shards: list[Path], dtype: str) -> pa.Table:
    arrays = {}
    for path in shards:
        data = path.read_bytes()
        n = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8 : 8 + n])
        for name, e in header.items():
            a, b = e["data_offsets"]
            raw = np.frombuffer(data, np.uint8, b - a, 8 + n + a)
            if dtype == "f32":
                arrays[name] = raw.view(np.float32).reshape(e["shape"])
            elif dtype == "f16":
                arrays[name] = raw.view(np.float16).reshape(e["shape"])
            else:
                arrays[name] = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(e["shape"])
    return aq.layers_table(arrays)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=1.6)
    ap.add_argument("--dtype", choices=["f32", "f16", "bf16"], default="f32")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--cold", action="store_true", help="also time the read and the Arrow conversion from a cold page cache")
    args = ap.parse_args()
    assert CLI.exists(), f"{CLI} is missing: cargo build --release --bin arrow-quant"

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp) / "ck"
        folder.mkdir()
        shards = write_checkpoint(folder, args.gb, args.dtype)
        size = sum(p.stat().st_size for p in shards)
        largest = SIDE * SIDE * (4 if args.dtype == "f32" else 2)
        rows = []

        def add(label, seconds, summary=""):
            peak = re.search(r"peak memory (\d+) MiB", summary)
            stages = re.search(r"stages \(busy seconds\): (.*)", summary)
            rows.append((label, seconds, peak.group(1) if peak else "", stages.group(1) if stages else ""))

        cat = ["cat", *map(str, shards)]
        add("read (cat > /dev/null)", best(lambda: subprocess.run(cat, stdout=subprocess.DEVNULL, check=True), args.repeat))
        table = in_memory_table(shards, args.dtype)
        add("quantize_arrow, in memory", best(lambda: aq.quantize_arrow(table, device="cpu"), args.repeat))
        del table
        for label, out, extra, threads in [
            ("CLI -> Arrow IPC (affine 4-bit)", "o.arrow", [], None),
            ("  one tensor at a time", "o.arrow", ["--read-ahead-mib", "0"], None),
            ("  1 thread", "o.arrow", [], 1),
            ("CLI -> Parquet (affine 4-bit)", "o.parquet", [], None),
            ("CLI -> GGUF q4_0", "o.gguf", ["--type", "q4_0"], None),
            ("  one tensor at a time", "o.gguf", ["--type", "q4_0", "--read-ahead-mib", "0"], None),
            ("CLI -> GGUF q8_0", "o.gguf", ["--type", "q8_0"], None),
        ]:
            cmd = [str(CLI), "quantize", str(folder), "-o", str(Path(tmp) / out), "--device", "cpu", *extra]
            summary = []
            add(label, best(lambda: summary.append(run_cli(cmd, threads)), args.repeat), summary[-1])
        add("quantize_model -> Arrow IPC", best(lambda: aq.quantize_model(folder, Path(tmp) / "p.arrow", device="cpu"), args.repeat))
        if args.cold:
            # Interleaved, so both see the same disk: a shared virtual disk's speed drifts.
            cmd = [str(CLI), "quantize", str(folder), "-o", str(Path(tmp) / "o.arrow"), "--device", "cpu"]
            cold_cat, cold_cli, summary = [], [], []
            for _ in range(args.repeat):
                cold_cat.append(best(lambda: subprocess.run(cat, stdout=subprocess.DEVNULL, check=True), 1, lambda: evict(shards)))
                cold_cli.append(best(lambda: summary.append(run_cli(cmd)), 1, lambda: evict(shards)))
            add("cold: read (cat > /dev/null)", min(cold_cat))
            add("cold: CLI -> Arrow IPC", min(cold_cli), summary[-1])
            pairs = sorted(c / q for c, q in zip(cold_cat, cold_cli))

        read_s, mem_s = rows[0][1], rows[1][1]
        print(f"{len(shards)} shards, {size / 1e9:.2f} GB of {args.dtype}, largest tensor {largest / 2**20:.0f} MiB, {os.cpu_count()} CPUs, "
              f"RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', 'all')}, best of {args.repeat}, page cache warm unless 'cold'")
        print(f"{'':36} {'s':>7} {'GB/s':>7} {'x in-mem':>9} {'x read':>7} {'peak MiB':>9}  stages (busy s; last run)")
        for label, s, peak, stages in rows:
            print(f"{label:36} {s:7.3f} {size / s / 1e9:7.2f} {mem_s / s:9.2f} {read_s / s:7.2f} {peak:>9}  {stages}")
        if args.cold:
            print(f"cold: converter rate / read rate, per interleaved pair: {', '.join(f'{p:.2f}' for p in pairs)} (median {pairs[len(pairs) // 2]:.2f}x)")


if __name__ == "__main__":
    main()

"""Where the time goes when quantization runs on an engine: one process, Ray (local, 2 CPUs) and
Spark (local[2]), for the same 64-layer table (1024×1024 float32 each, 256 MiB) and for a sharded
checkpoint of the same tensors. Every engine figure is reported with its ratio to the
single-process time measured in the same run, and beside an engine-only baseline (the same job
with an identity function) that says how much is the engine's own cost.

    .venv/bin/python benches/engines.py [--layers 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

import arrow_quant_v2 as aq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "tests" / "python"))

KW = {"bit_width": 4, "group_size": 128, "device": "cpu"}


def timed(fn, repeat=1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def make_table(n: int) -> pa.Table:
    rng = np.random.default_rng(0)
    w = {f"layers.{i}.weight": (rng.standard_normal((1024, 1024)) * 0.02).astype(np.float32) for i in range(n)}
    return aq.layers_table(w), w


def identity_batches(batches):
    for b in batches:
        yield b.select(["layer_name"])


def bench_ray(table, checkpoint, tmp, rows):
    import ray_quantize

    t_init, _ = timed(lambda: ray_quantize.init_local_ray(2))
    import ray

    ds = ray.data.from_arrow(table).repartition(4).materialize()

    def run(fn):
        return ray.get(ds.map_batches(fn, batch_format="pyarrow", batch_size=8, **({"fn_kwargs": KW} if fn is aq.quantize_arrow_batch else {})).to_arrow_refs())

    t_identity, _ = timed(lambda: run(lambda t: t.select(["layer_name"])), 2)
    t_quant, _ = timed(lambda: run(aq.quantize_arrow_batch), 2)
    t_write, _ = timed(lambda: ds.map_batches(aq.quantize_arrow_batch, batch_format="pyarrow", batch_size=8, fn_kwargs=KW).write_parquet(f"{tmp}/ray_pq"))
    t_ckpt, _ = timed(lambda: ray_quantize.quantize_checkpoint(str(checkpoint), f"{tmp}/ray_ckpt"), 3)
    ray.shutdown()
    rows += [
        ("ray: start (ray.init)", t_init, None),
        ("ray: identity map_batches (engine only)", t_identity, "table"),
        ("ray: map_batches(quantize_arrow_batch)", t_quant, "table"),
        ("ray: map_batches + write_parquet", t_write, "table"),
        ("ray: checkpoint, one task per shard -> Parquet", t_ckpt, "checkpoint"),
    ]


def _quantize_shard(args):
    shard, dst = args
    return aq.quantize_model(shard, dst, bit_width=4, group_size=128, device="cpu", num_threads=1).num_rows


def bench_spark(table, checkpoint, tmp, rows):
    import spark_quantize

    t_start, spark = timed(lambda: spark_quantize.local_spark(2, driver_memory="4g"))
    t_df, df = timed(lambda: spark.createDataFrame(table).repartition(2).cache())
    df.count()
    t_identity, _ = timed(lambda: df.mapInArrow(identity_batches, "layer_name string").count(), 2)
    t_quant, _ = timed(lambda: spark_quantize.quantize_dataframe(df).count(), 2)
    t_write, _ = timed(lambda: spark_quantize.quantize_dataframe(df).write.mode("overwrite").parquet(f"{tmp}/spark_pq"))
    # A checkpoint: the shard paths are the data, one task per shard (as the Ray recipe does).
    shards = [(str(checkpoint.parent / f"{s}.safetensors"), f"{tmp}/spark_{s}.parquet") for s in ("a", "b")]
    t_ckpt, _ = timed(lambda: spark.sparkContext.parallelize(shards, len(shards)).map(_quantize_shard).collect(), 3)
    spark.stop()
    rows += [
        ("spark: start (local[2])", t_start, None),
        ("spark: createDataFrame from Arrow", t_df, None),
        ("spark: identity mapInArrow (engine only)", t_identity, "table"),
        ("spark: mapInArrow(quantize_batches)", t_quant, "table"),
        ("spark: mapInArrow + write.parquet", t_write, "table"),
        ("spark: checkpoint, one task per shard -> Parquet", t_ckpt, "checkpoint"),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=64)
    p.add_argument("--json")
    a = p.parse_args()
    from test_engines import sharded_checkpoint

    table, tensors = make_table(a.layers)
    tmp = tempfile.mkdtemp()
    checkpoint = sharded_checkpoint(Path(tmp), tensors)
    single_table, _ = timed(lambda: aq.quantize_arrow(table, **KW), 3)
    shards = [Path(tmp) / "a.safetensors", Path(tmp) / "b.safetensors"]
    single_ckpt, _ = timed(lambda: [aq.quantize_model(s, f"{tmp}/single_{s.stem}.parquet", device="cpu") for s in shards], 3)
    rows = [("one process: quantize_arrow(table)", single_table, "table"), ("one process: quantize_model per shard -> Parquet", single_ckpt, "checkpoint")]
    bench_ray(table, checkpoint, tmp, rows)
    bench_spark(table, checkpoint, tmp, rows)
    base = {"table": single_table, "checkpoint": single_ckpt}
    mib = table["weights"].combine_chunks().values.nbytes / 2**20
    print(f"{a.layers} layers of 1024x1024 float32 ({mib:.0f} MiB), 4-bit g128, CPU")
    print(f"{'step':<52} {'seconds':>8} {'x one process':>14}")
    for name, t, kind in rows:
        ratio = f"{t / base[kind]:.1f}x" if kind else "-"
        print(f"{name:<52} {t:>8.3f} {ratio:>14}")
    if a.json:
        Path(a.json).write_text(json.dumps([{"step": n, "seconds": t, "baseline": k} for n, t, k in rows], indent=1))


if __name__ == "__main__":
    main()

"""Quantize a table of layers with Spark's `mapInArrow`, write Parquet, and dequantize it back.

    python examples/spark_quantize.py OUT_DIR [--layers 16]

`mapInArrow` hands the function an iterator of RecordBatches and needs the output's schema up
front: `aq.quantize_batches` maps `quantize_arrow_batch` over the iterator, and `aq.spark_ddl()`
is its schema in Spark's terms (signed integer types: Spark has none unsigned). What Spark writes
dequantizes with nothing but its columns.

Threads: Spark runs one Python worker per task slot, and each quantize call already uses every
core; on a shared executor set `RAYON_NUM_THREADS` to the cores per slot
(`spark.executorEnv.RAYON_NUM_THREADS`).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import List, Optional

import numpy as np
import pyarrow as pa

import arrow_quant_v2 as aq


def local_spark(cores: int = 2, driver_memory: str = "2g"):
    """A `local[cores]` session bound to loopback, without the UI, whose Python workers run this
    interpreter (the one that has arrow_quant_v2 installed)."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    return (
        SparkSession.builder.master(f"local[{cores}]")
        .appName("arrow_quant_v2")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", driver_memory)
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .getOrCreate()
    )


def quantize_dataframe(df, bit_width: int = 4, group_size: int = 128):
    """A DataFrame of layers (layer_name, weights array<float>, shape array<bigint>) quantized.
    The function given to Spark is the package's own (workers import it; nothing of this file
    needs to be shipped)."""
    fn = functools.partial(aq.quantize_batches, bit_width=bit_width, group_size=group_size, device="cpu")
    return df.mapInArrow(fn, aq.spark_ddl("quantize", group_size))


def dequantize_dataframe(df):
    """The inverse, inside Spark: layer_name, weights array<float>, shape array<bigint>."""
    return df.mapInArrow(functools.partial(aq.dequantize_batches, device="cpu"), aq.spark_ddl("dequantize"))


def example_layers(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    w = [(rng.standard_normal((64, 256)) * 0.02).astype(np.float32) for _ in range(n)]
    return pa.table({"layer_name": [f"layer.{i}.weight" for i in range(n)], "weights": [a.ravel() for a in w], "shape": [list(a.shape) for a in w]})


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--layers", type=int, default=16)
    a = p.parse_args(argv)
    spark = local_spark()
    table = example_layers(a.layers)
    quantize_dataframe(spark.createDataFrame(table).repartition(2)).write.mode("overwrite").parquet(a.out_dir)
    back = aq.dequantize_arrow(spark.read.parquet(a.out_dir).toArrow())
    print(f"{back.num_rows} layers quantized by Spark into {a.out_dir} and dequantized back")
    spark.stop()


if __name__ == "__main__":
    main()

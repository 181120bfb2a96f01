"""Distributed engines and the data ecosystem: the recipes in examples/ run on a local Ray cluster
(loopback only) and on Spark local[2], give the bytes of a single-process quantize_arrow, and
what the engines write back dequantizes with no extra argument; the batch functions return the
kind they were given and pickle by reference; files are reproducible across processes.

Needs ray, pyspark and a Java runtime (`make test` installs them); missing, these tests fail."""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import arrow_quant_v2 as aq
from test_model import write_safetensors

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
sys.path.insert(0, str(EXAMPLES))

DATA_COLUMNS = ["layer_name", "quantized_data", "scales", "zero_points", "shape", "bit_width", "group_size"]


def layers(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return {f"layers.{i}.w": (rng.standard_normal((32, 256)) * 0.02).astype(np.float32) for i in range(n)}


def assert_same_rows(got: pa.Table, want: pa.Table):
    """Equal values column by column, in layer order (engines reorder rows and rename list
    children, which changes types' names, not values)."""
    got, want = got.sort_by("layer_name"), want.sort_by("layer_name")
    for c in DATA_COLUMNS:
        assert got[c].to_pylist() == want[c].to_pylist(), c


def assert_dequantizes_alone(t: pa.Table, reference: pa.Table):
    """No schema metadata, no group_size argument: the columns are enough."""
    bare = t.replace_schema_metadata(None)
    assert aq.dequantize_arrow(bare).sort_by("layer_name")["weights"].to_pylist() == aq.dequantize_arrow(reference).sort_by("layer_name")["weights"].to_pylist()


# ---- the batch functions --------------------------------------------------------------------


def test_batch_functions_return_the_kind_they_were_given():
    table = aq.layers_table(layers())
    batch = table.to_batches()[0]
    q_table = aq.quantize_arrow_batch(table, device="cpu")
    q_batch = aq.quantize_arrow_batch(batch, device="cpu")
    assert isinstance(q_table, pa.Table) and isinstance(q_batch, pa.RecordBatch)
    assert q_table.equals(pa.Table.from_batches([q_batch])) and q_table.equals(aq.quantize_arrow(table, device="cpu"))
    d_table = aq.dequantize_arrow_batch(q_table, device="cpu")
    d_batch = aq.dequantize_arrow_batch(q_batch, device="cpu")
    assert isinstance(d_table, pa.Table) and isinstance(d_batch, pa.RecordBatch)
    assert d_table.equals(pa.Table.from_batches([d_batch])) and d_table.equals(aq.dequantize_arrow(q_table))
    # Any other stream (a reader here; polars, duckdb) gives a Table.
    assert aq.quantize_arrow_batch(pa.RecordBatchReader.from_batches(table.schema, [batch]), device="cpu").equals(q_table)
    out = list(aq.quantize_batches(iter([batch, batch]), device="cpu"))
    assert len(out) == 2 and all(isinstance(b, pa.RecordBatch) and b.equals(q_batch) for b in out)
    back = list(aq.dequantize_batches(iter(out), device="cpu"))
    assert back[1].equals(d_batch)


def test_functions_pickle_by_reference():
    for fn in (aq.quantize_arrow, aq.quantize_arrow_batch, aq.dequantize_arrow, aq.dequantize_arrow_batch, aq.quantize_batches, aq.dequantize_batches):
        data = pickle.dumps(fn)
        assert len(data) < 200 and pickle.loads(data) is fn, fn
    part = pickle.loads(pickle.dumps(functools.partial(aq.quantize_batches, bit_width=2)))
    assert part.func is aq.quantize_batches and part.keywords == {"bit_width": 2}


def _quantize_in_worker(table_bytes: bytes) -> bytes:
    table = pa.ipc.open_stream(table_bytes).read_all()
    out = aq.quantize_arrow_batch(table, device="auto")
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, out.schema) as w:
        w.write_table(out)
    return sink.getvalue().to_pybytes()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_workers_give_the_same_bytes(method):
    table = aq.layers_table(layers(3))
    want = aq.quantize_arrow(table, device="cpu")  # the parent has used the library before forking
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    with multiprocessing.get_context(method).Pool(2) as pool:
        outs = pool.map(_quantize_in_worker, [sink.getvalue().to_pybytes()] * 2)
    for o in outs:
        assert pa.ipc.open_stream(o).read_all().equals(want)


def test_output_schemas_up_front():
    q = aq.quantize_arrow(aq.layers_table(layers(1)), group_size=64, device="cpu")
    assert q.schema == aq.quantized_schema(64)
    assert aq.dequantize_arrow(q).schema == aq.dequantized_schema()
    assert aq.spark_ddl() == (
        "layer_name string, quantized_data binary, scales array<float>, zero_points array<float>, "
        "shape array<bigint>, bit_width tinyint, group_size bigint"
    )
    assert aq.spark_ddl("dequantize") == "layer_name string, weights array<float>, shape array<bigint>"
    from pyspark.sql.types import ByteType, LongType

    s = aq.spark_schema()
    assert s["bit_width"].dataType == ByteType() and s["group_size"].dataType == LongType()
    with pytest.raises(ValueError, match="op must be"):
        aq.spark_ddl("encode")


def test_output_schemas_up_front_for_the_search():
    # method="lsq" adds a `method` column (and metadata entry): the declared schemas say so, and
    # the batch function passes the method through.
    t = aq.layers_table(layers(2))
    q = list(aq.quantize_batches(t.to_batches(), group_size=64, device="cpu", method="lsq"))
    want = aq.quantize_arrow(t, group_size=64, device="cpu", method="lsq")
    assert pa.Table.from_batches(q).equals(want)
    assert q[0].schema == aq.quantized_schema(64, "lsq") == want.schema
    assert aq.quantized_schema(64, "lsq").names == aq.quantized_schema(64).names + ["method"]
    assert aq.spark_ddl(method="lsq") == aq.spark_ddl() + ", method string"
    from pyspark.sql.types import StringType

    assert aq.spark_schema(method="lsq")["method"].dataType == StringType()
    with pytest.raises(ValueError, match="unknown method 'l2'"):
        aq.spark_ddl(method="l2")


# ---- engines that drop the metadata ---------------------------------------------------------


def test_polars_and_duckdb_round_trips_dequantize_alone(tmp_path):
    import duckdb
    import polars as pl

    table = aq.layers_table(layers())
    q = aq.quantize_arrow(table, device="cpu")
    via_polars = pl.from_arrow(q)
    via_polars.write_parquet(tmp_path / "p.parquet")
    for t in (via_polars.to_arrow(), pl.read_parquet(tmp_path / "p.parquet").to_arrow()):
        assert_same_rows(t, q)
        assert aq.dequantize_arrow(t).sort_by("layer_name").equals(aq.dequantize_arrow(q).sort_by("layer_name"))
    con = duckdb.connect()
    con.register("q", q)
    con.sql(f"copy (select * from q) to '{tmp_path / 'd.parquet'}' (format parquet)")
    back = con.sql(f"select * from '{tmp_path / 'd.parquet'}'").arrow()
    back = back.read_all() if hasattr(back, "read_all") else back
    assert_same_rows(back, q)
    assert_dequantizes_alone(back, q)
    # The duckdb relation straight in.
    assert aq.dequantize_arrow(con.sql(f"select * from '{tmp_path / 'd.parquet'}'")).num_rows == q.num_rows


def test_datasets_map_and_parquet(tmp_path):
    import datasets

    w = layers(6)
    ds = datasets.Dataset.from_dict({"layer_name": list(w), "weights": [a.ravel() for a in w.values()], "shape": [list(a.shape) for a in w.values()]})
    fn = functools.partial(aq.quantize_arrow_batch, device="cpu")
    out = ds.with_format("arrow").map(fn, batched=True, batch_size=4, remove_columns=ds.column_names)
    want = aq.quantize_arrow(aq.layers_table(w), device="cpu")
    assert_same_rows(out.data.table, want)
    out.to_parquet(str(tmp_path / "hf.parquet"))
    back = pq.read_table(tmp_path / "hf.parquet")
    assert_same_rows(back, want)
    assert_dequantizes_alone(back, want)


# ---- reproducible files ---------------------------------------------------------------------


WRITE_SCRIPT = """
import sys, numpy as np, pyarrow as pa, pyarrow.parquet as pq, arrow_quant_v2 as aq
src, out = sys.argv[1], sys.argv[2]
aq.quantize_model(src, out + "/m.parquet", device="cpu")
aq.quantize_model(src, out + "/m.arrow", device="cpu")
aq.quantize_model(src, out + "/m.gguf", type="q4_k_m", device="cpu")
rng = np.random.default_rng(0)
q = aq.quantize_arrow(aq.layers_table({f"l{i}": rng.standard_normal(512).astype(np.float32) for i in range(4)}), device="cpu")
pq.write_table(q, out + "/pyarrow.parquet")
with pa.ipc.new_file(out + "/pyarrow.arrow", q.schema) as w:
    w.write_table(q)
"""


def test_files_are_reproducible_across_processes(tmp_path):
    rng = np.random.default_rng(3)
    src = tmp_path / "m.safetensors"
    write_safetensors(src, {"blk.0.w": rng.standard_normal((64, 256)).astype(np.float32), "blk.0.b": np.ones(64, np.float32), "blk.1.w": rng.standard_normal((64, 256)).astype(np.float16)})
    hashes = []
    for run in range(3):
        out = tmp_path / f"run{run}"
        out.mkdir()
        # A different hash seed per process, as separate machines or workers would have.
        env = {**os.environ, "PYTHONHASHSEED": str(run)}
        subprocess.run([sys.executable, "-c", WRITE_SCRIPT, str(src), str(out)], check=True, env=env, capture_output=True)
        hashes.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())})
    assert set(hashes[0]) == {"m.parquet", "m.arrow", "m.gguf", "pyarrow.parquet", "pyarrow.arrow"}
    assert hashes[0] == hashes[1] == hashes[2]


# ---- Ray ------------------------------------------------------------------------------------


def ray_sockets():
    """(local, remote) addresses of every TCP socket held by a Ray process on this machine."""
    inodes = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            if not any(k in cmd for k in (b"raylet", b"gcs_server", b"ray::", b"default_worker.py", b"ray/_private")):
                continue
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:
            continue
    out = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[9] in inodes:
                out.append((_addr(f[1], family), _addr(f[2], family)))
    return out


def _addr(hex_addr: str, family: int) -> str:
    ip, _port = hex_addr.split(":")
    raw = bytes.fromhex(ip)
    # /proc/net/tcp* holds each 32-bit word in host (little-endian) order.
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(family, raw)


def _loopback_or_unbound(ip: str) -> bool:
    return ip.startswith("127.") or ip in ("0.0.0.0", "::", "::1", "::ffff:127.0.0.1") or ip.startswith("::ffff:127.")


@pytest.fixture(scope="module")
def ray_cluster():
    import ray_quantize

    ray_quantize.init_local_ray(num_cpus=2)  # sets its environment before importing ray
    import ray

    yield ray
    ray.shutdown()


def sharded_checkpoint(root: Path, tensors: dict) -> Path:
    names = list(tensors)
    half = len(names) // 2
    write_safetensors(root / "a.safetensors", {n: tensors[n] for n in names[:half]})
    write_safetensors(root / "b.safetensors", {n: tensors[n] for n in names[half:]})
    index = root / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {n: "a.safetensors" if i < half else "b.safetensors" for i, n in enumerate(names)}}))
    return index


def test_ray_checkpoint_recipe(ray_cluster, tmp_path):
    import ray_quantize

    tensors = {**layers(6), "layers.0.bias": np.ones(32, np.float32)}
    index = sharded_checkpoint(tmp_path, tensors)
    out = tmp_path / "out"
    written = ray_quantize.quantize_checkpoint(str(index), str(out))
    assert set(written["weight_map"]) == set(tensors) and set(written["weight_map"].values()) == {"a.parquet", "b.parquet"}
    # Every quantized tensor has the bytes of quantize_arrow in one process.
    shards = pa.concat_tables([pq.read_table(out / s) for s in ("a.parquet", "b.parquet")])
    affine = shards.filter(pa.compute.equal(shards["format"], "affine"))
    want = aq.quantize_arrow(aq.layers_table({n: tensors[n] for n in affine["layer_name"].to_pylist()}), device="cpu")
    assert_same_rows(affine.select(DATA_COLUMNS), want)
    # Any tensor reads back from the shards alone (the 1-D bias was kept in float32, exactly).
    got = ray_quantize.read_tensor(str(out), "layers.3.w")
    assert got.shape == (32, 256) and np.corrcoef(got.ravel(), tensors["layers.3.w"].ravel())[0, 1] > 0.99
    assert np.array_equal(ray_quantize.read_tensor(str(out), "layers.0.bias"), tensors["layers.0.bias"])
    assert_dequantizes_alone(affine, want)


def test_ray_data_recipe(ray_cluster, tmp_path):
    import ray_quantize

    ray = ray_cluster
    table = aq.layers_table(layers(8))
    want = aq.quantize_arrow(table, device="cpu")
    ray_quantize.quantize_table(table, str(tmp_path / "rd"), blocks=2)
    # Ray's own Parquet reader drops the schema metadata; the columns carry what is needed.
    back = pa.concat_tables(ray.get(ray.data.read_parquet(str(tmp_path / "rd")).to_arrow_refs()))
    assert not (back.schema.metadata or {}).get(b"arrow_quant")
    assert_same_rows(back, want)
    assert_dequantizes_alone(back, want)
    # Dequantize inside Ray too.
    inside = ray.data.read_parquet(str(tmp_path / "rd")).map_batches(aq.dequantize_arrow_batch, batch_format="pyarrow", fn_kwargs={"device": "cpu"})
    restored = pa.concat_tables(ray.get(inside.to_arrow_refs())).sort_by("layer_name")
    assert restored["weights"].to_pylist() == aq.dequantize_arrow(want).sort_by("layer_name")["weights"].to_pylist()
    # Nothing left loopback: every socket of every Ray process is on 127.0.0.0/8 (or listens
    # unbound on it).
    assert [n["NodeManagerAddress"] for n in ray.nodes()] == ["127.0.0.1"]
    sockets = ray_sockets()
    assert sockets, "no Ray sockets found"
    outside = [(l, r) for l, r in sockets if not (l.startswith("127.") or l in ("::1", "::ffff:127.0.0.1")) or not _loopback_or_unbound(r)]
    assert outside == [], outside


# ---- Spark ----------------------------------------------------------------------------------


def test_spark_recipe(tmp_path):
    import spark_quantize

    spark = spark_quantize.local_spark(cores=2)
    try:
        table = spark_quantize.example_layers(8)
        want = aq.quantize_arrow(table, device="cpu")
        q = spark_quantize.quantize_dataframe(spark.createDataFrame(table).repartition(2))
        assert_same_rows(q.toArrow(), want)
        q.write.mode("overwrite").parquet(str(tmp_path / "sp"))
        for back in (spark.read.parquet(str(tmp_path / "sp")).toArrow(), pq.read_table(tmp_path / "sp")):
            assert_same_rows(back, want)
            assert_dequantizes_alone(back, want)
        inside = spark_quantize.dequantize_dataframe(spark.read.parquet(str(tmp_path / "sp"))).toArrow().sort_by("layer_name")
        assert inside["weights"].to_pylist() == aq.dequantize_arrow(want).sort_by("layer_name")["weights"].to_pylist()
    finally:
        spark.stop()

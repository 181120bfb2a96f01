"""Writes the seed corpora of the safetensors, quantized-file and Arrow-stream fuzz targets
(small real files made by pyarrow and arrow_quant_v2). Run from the repository root with the
project's venv: `.venv/bin/python fuzz/seeds/make_seeds.py`.
"""

import io
import json
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq

import arrow_quant_v2 as aq

HERE = Path(__file__).resolve().parent
rng = np.random.default_rng(0)


def safetensors(tensors: dict, metadata=None) -> bytes:
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, (dtype, a) in tensors.items():
        b = a.tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def seeds_safetensors(out: Path):
    f32 = rng.standard_normal((4, 8)).astype(np.float32)
    f16 = rng.standard_normal(16).astype(np.float16)
    bf16 = (rng.standard_normal(8).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    files = {
        "f32": {"w": ("F32", f32)},
        "mixed": {"w": ("F32", f32), "h": ("F16", f16), "b": ("BF16", bf16), "i": ("I32", np.arange(4, dtype=np.int32))},
        "meta": {"w": ("F16", f16)},
        "empty": {},
        "scalar": {"s": ("F32", np.array(1.5, np.float32))},
    }
    for name, t in files.items():
        (out / f"single-{name}").write_bytes(b"\x00" + safetensors(t, {"format": "pt"} if name == "meta" else None))
    index = {"metadata": {"total_size": 40}, "weight_map": {"w": "a.safetensors", "b": "a.safetensors"}}
    (out / "index").write_bytes(b"\x01" + json.dumps(index).encode())
    (out / "index-missing").write_bytes(b"\x01" + json.dumps({"weight_map": {"w": "b.safetensors"}}).encode())


def quantized_table():
    layers = {"a.weight": rng.standard_normal((4, 32)).astype(np.float32), "b": rng.standard_normal(40).astype(np.float32)}
    table = pa.table(
        {
            "layer_name": list(layers),
            "weights": pa.array([a.ravel() for a in layers.values()], pa.list_(pa.float32())),
            "shape": pa.array([list(a.shape) for a in layers.values()], pa.list_(pa.int64())),
        }
    )
    return table, aq.quantize_arrow(table, group_size=16, device="cpu")


def ipc_file(table, compression=None) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_file(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression=compression)) as w:
        w.write_table(table)
    return sink.getvalue()


def ipc_stream(table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue()


def seeds_quantized(out: Path, q):
    for c in (None, "lz4", "zstd"):
        (out / f"ipc-{c or 'plain'}.arrow").write_bytes(ipc_file(q, c))
    for c in ("none", "snappy", "zstd", "gzip", "lz4"):
        sink = io.BytesIO()
        pq.write_table(q, sink, compression=c)
        (out / f"parquet-{c}.parquet").write_bytes(sink.getvalue())
    kept = pa.table(
        {
            "layer_name": ["h"],
            "quantized_data": pa.array([np.ones(6, np.float16).tobytes()], pa.binary()),
            "scales": pa.array([[]], q.schema.field("scales").type),
            "zero_points": pa.array([[]], q.schema.field("zero_points").type),
            "shape": pa.array([[2, 3]], q.schema.field("shape").type),
            "bit_width": pa.array([16], q.schema.field("bit_width").type),
            "group_size": pa.array([q["group_size"][0].as_py()], q.schema.field("group_size").type),
        },
        schema=q.schema,
    )
    (out / "ipc-kept-f16.arrow").write_bytes(ipc_file(pa.concat_tables([q, kept])))


def seeds_stream(out: Path, table, q):
    (out / "layers.stream").write_bytes(ipc_stream(table))
    (out / "quantized.stream").write_bytes(ipc_stream(q))
    variants = {
        "large-f16": table.set_column(1, "weights", table.column("weights").cast(pa.large_list(pa.float16()))),
        "fixed-f64": pa.table(
            {"layer_name": pa.array(["x", "y"], pa.string_view()), "weights": pa.array([[1.0] * 8, [2.0] * 8], pa.list_(pa.float64(), 8))}
        ),
        "nulls": pa.table({"layer_name": ["a", None], "weights": pa.array([[1.0, None], None], pa.list_(pa.float32()))}),
        "shape-int32": table.set_column(2, "shape", table.column("shape").cast(pa.list_(pa.int32()))),
    }
    for name, t in variants.items():
        (out / f"{name}.stream").write_bytes(ipc_stream(t))


if __name__ == "__main__":
    table, q = quantized_table()
    seeds_safetensors(HERE / "safetensors")
    seeds_quantized(HERE / "quantized", q)
    seeds_stream(HERE / "arrow_stream", table, q)

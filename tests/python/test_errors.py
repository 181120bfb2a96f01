"""Bad input: every case gets a clear exception of the right type that names the layer."""

import re

import numpy as np
import pyarrow as pa
import pytest

import arrow_quant_v2 as aq
from conftest import layer_table


def good_table():
    return layer_table({"good": np.arange(32, dtype=np.float32), "bad": np.arange(16, dtype=np.float32)})


@pytest.mark.parametrize("bits", [0, 1, 3, 5, 16, -4])
def test_invalid_bit_width_has_the_earlier_message(bits):
    with pytest.raises(ValueError, match=re.escape(f"Invalid bit_width: {bits}. Must be 2, 4, or 8")):
        aq.quantize_arrow(good_table(), bit_width=bits)
    with pytest.raises(ValueError, match=re.escape(f"Invalid bit_width: {bits}. Must be 2, 4, or 8")):
        aq.ArrowQuantV2().quantize_arrow(good_table(), bit_width=bits)


@pytest.mark.parametrize("column", ["layer_name", "weights"])
def test_missing_column_has_the_earlier_message(column):
    t = good_table().drop_columns([column])
    with pytest.raises(ValueError, match=re.escape(f"Missing required column '{column}'")):
        aq.quantize_arrow(t)
    with pytest.raises(ValueError, match=re.escape(f"Missing required column '{column}'")):
        aq.ArrowQuantV2().quantize_arrow_batch(t.to_batches()[0])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_names_layer_and_first_index(bad):
    w = np.ones(64, np.float32)
    w[17] = bad
    w[40] = np.nan
    t = layer_table({"ok": np.zeros(8, np.float32), "x": w})
    with pytest.raises(ValueError, match=re.escape("Layer 'x' contains NaN or Inf at index 17")):
        aq.quantize_arrow(t, group_size=8)


@pytest.mark.parametrize("n", [64, 1 << 16])
def test_small_and_large_tables_report_the_same_first_bad_layer(n):
    # Three layers of n values: 192 run on the calling thread, 3 × 2^16 across the thread pool
    # (reading the layers and quantizing them); the error is the same either way.
    w = np.ones(n, np.float32)
    w[17] = np.nan
    t = layer_table({"ok": np.zeros(n, np.float32), "x": w, "y": w})
    with pytest.raises(ValueError, match=re.escape("Layer 'x' contains NaN or Inf at index 17")):
        aq.quantize_arrow(t, group_size=8)
    items = [np.zeros(n, np.float32).tolist(), [1.0] * 5 + [None] + [1.0] * (n - 6), None]
    t = pa.table({"layer_name": ["a", "b", "c"], "weights": pa.array(items, pa.list_(pa.float32()))})
    with pytest.raises(ValueError, match="Layer 'b': weights contain a null at index 5"):
        aq.quantize_arrow(t)


def test_overflowing_group_width_is_rejected():
    w = np.zeros(16, np.float32)
    w[1], w[2] = 3e38, -3e38
    with pytest.raises(ValueError, match="Layer 'huge'.*overflows float32"):
        aq.quantize_arrow(layer_table({"huge": w}), group_size=16)


def test_null_weights_row():
    t = pa.table({"layer_name": ["a", "b"], "weights": pa.array([[1.0, 2.0], None], pa.list_(pa.float32()))})
    with pytest.raises(ValueError, match="Layer 'b': weights is null"):
        aq.quantize_arrow(t)


def test_null_inside_weights():
    t = pa.table({"layer_name": ["a"], "weights": pa.array([[1.0, None, 2.0]], pa.list_(pa.float32()))})
    with pytest.raises(ValueError, match="Layer 'a': weights contain a null at index 1"):
        aq.quantize_arrow(t)


def test_null_layer_name():
    t = pa.table({"layer_name": pa.array([None], pa.string()), "weights": pa.array([[1.0]], pa.list_(pa.float32()))})
    with pytest.raises(ValueError, match="Column 'layer_name' has a null at row 0"):
        aq.quantize_arrow(t)


def test_null_shape_and_null_dimension():
    t = pa.table(
        {"layer_name": ["a"], "weights": pa.array([[1.0, 2.0]], pa.list_(pa.float32())), "shape": pa.array([None], pa.list_(pa.int64()))}
    )
    with pytest.raises(ValueError, match="Layer 'a': shape is null"):
        aq.quantize_arrow(t)
    t = t.set_column(2, "shape", pa.array([[2, None]], pa.list_(pa.int64())))
    with pytest.raises(ValueError, match="Layer 'a': shape has a null dimension"):
        aq.quantize_arrow(t)


def test_empty_weights():
    t = pa.table({"layer_name": ["e"], "weights": pa.array([[]], pa.list_(pa.float32()))})
    with pytest.raises(ValueError, match="Layer 'e': weights list is empty"):
        aq.quantize_arrow(t)


def test_shape_product_mismatch():
    t = pa.table({"layer_name": ["s"], "weights": pa.array([[1.0] * 15], pa.list_(pa.float32())), "shape": [[4, 4]]})
    with pytest.raises(ValueError, match=re.escape("Layer 's': shape [4, 4] does not match the number of weights (15)")):
        aq.quantize_arrow(t)


def test_negative_dimension():
    t = pa.table({"layer_name": ["n"], "weights": pa.array([[1.0] * 4], pa.list_(pa.float32())), "shape": [[-2, -2]]})
    with pytest.raises(ValueError, match="Layer 'n': shape .* negative dimension"):
        aq.quantize_arrow(t)


def test_non_numeric_weights_are_a_type_error():
    t = pa.table({"layer_name": ["t"], "weights": pa.array([["a", "b"]], pa.list_(pa.string()))})
    with pytest.raises(TypeError, match="Column 'weights' must hold float32, float16 or float64.*'t'"):
        aq.quantize_arrow(t)


def test_weights_not_a_list_is_a_type_error():
    t = pa.table({"layer_name": ["t"], "weights": pa.array([1.0], pa.float32())})
    with pytest.raises(TypeError, match="Column 'weights' must be a list"):
        aq.quantize_arrow(t)


def test_non_string_name_is_a_type_error():
    t = pa.table({"layer_name": [1], "weights": pa.array([[1.0]], pa.list_(pa.float32()))})
    with pytest.raises(TypeError, match="Column 'layer_name' must hold strings"):
        aq.quantize_arrow(t)


@pytest.mark.parametrize("group_size", [0, 7, 12, -8])
def test_bad_group_size(group_size):
    with pytest.raises(ValueError, match=f"Invalid group_size: {group_size}"):
        aq.quantize_arrow(good_table(), group_size=group_size)


def test_bad_device():
    with pytest.raises(ValueError, match="Invalid device: 'tpu'"):
        aq.quantize_arrow(good_table(), device="tpu")


def test_not_arrow_input_is_a_type_error():
    with pytest.raises(TypeError, match="expects an Arrow table"):
        aq.quantize_arrow([1, 2, 3])
    with pytest.raises(TypeError, match="quantize_arrow_batch expects an Arrow table"):
        aq.quantize_arrow_batch({"layer_name": ["a"]})


def test_quantize_batch_rejects_non_float_arrays():
    for caught in (TypeError, ValueError, aq.ValidationError):
        with pytest.raises(caught, match="layer 'i' has dtype 'int64', expected 'float32'"):
            aq.ArrowQuantV2().quantize_batch({"i": np.arange(8)})
    with pytest.raises(TypeError, match="dict"):
        aq.ArrowQuantV2().quantize_batch([np.ones(8)])


def test_dequantize_rejects_inconsistent_rows():
    q = aq.quantize_arrow(layer_table({"w": np.arange(64, dtype=np.float32)}), group_size=16)
    short = q.set_column(1, "quantized_data", pa.array([b"\x00" * 3], pa.binary()))
    with pytest.raises(ValueError, match="Layer 'w': has 3 quantized_data bytes, but .* need 32"):
        aq.dequantize_arrow(short)
    bad_bits = q.set_column(5, "bit_width", pa.array([3], pa.uint8()))
    with pytest.raises(ValueError, match="Layer 'w': Invalid bit_width: 3"):
        aq.dequantize_arrow(bad_bits)
    few_scales = q.set_column(2, "scales", pa.array([[1.0]], pa.list_(pa.float32())))
    with pytest.raises(ValueError, match="Layer 'w': has 1 scales"):
        aq.dequantize_arrow(few_scales)


def test_errors_lose_nothing():
    """A failed call leaves the caller's table untouched and the module usable."""
    t = good_table()
    before = t.column("weights").to_pylist()
    with pytest.raises(ValueError):
        aq.quantize_arrow(t, bit_width=3)
    assert t.column("weights").to_pylist() == before
    assert aq.quantize_arrow(t).num_rows == 2

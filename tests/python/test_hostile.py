"""Hostile inputs at the Python boundary: Arrow producers that lie, streams whose batches do not
match their schema, tampered quantized tables and files, sizes that overflow. Each gets the
specific error (ValueError/TypeError/OSError), never a crash, a PanicException or garbage.
"""

import re

import numpy as np
import pyarrow as pa
import pyarrow.ipc
import pytest

import arrow_quant_v2 as aq
from lying_producer import LyingBatch, LyingStream, child, export


def good_batch(n=256):
    return pa.record_batch(
        {
            "layer_name": ["a"],
            "weights": pa.array([np.arange(n, dtype=np.float32)], pa.list_(pa.float32())),
            "shape": pa.array([[n]], pa.list_(pa.int64())),
        }
    )


def lying(edit, batch=None):
    schema, array = export(good_batch() if batch is None else batch)
    edit(array)
    return LyingBatch(schema, array)


QUANTIZERS = {
    "quantize_arrow": lambda x: aq.quantize_arrow(x, device="cpu"),
    "quantize_arrow_batch": lambda x: aq.quantize_arrow_batch(x, device="cpu"),
    "ArrowQuantV2.quantize_arrow": lambda x: aq.ArrowQuantV2(device="cpu").quantize_arrow(x),
}


# --- producers that lie -----------------------------------------------------------------------


@pytest.mark.parametrize("entry", QUANTIZERS)
def test_list_offsets_past_the_child_values_are_refused(entry):
    def shrink_values(a):
        child(a, 1, 0).length = 10  # the offsets still say 256

    with pytest.raises(ValueError, match="Column 'weights' is not valid Arrow data.*larger than values length 10"):
        QUANTIZERS[entry](lying(shrink_values))


def test_offsets_that_go_backwards_are_refused():
    offsets = np.array([0, 256], dtype=np.int32)
    weights = pa.ListArray.from_buffers(
        pa.list_(pa.float32()), 1, [None, pa.py_buffer(offsets)], children=[pa.array(np.ones(256, np.float32))]
    )
    t = pa.table({"layer_name": ["a"], "weights": weights})
    offsets[:] = [200, 100]  # changed behind pyarrow's back, after its own checks
    with pytest.raises(ValueError, match="Column 'weights' is not valid Arrow data.*offset"):
        aq.quantize_arrow(t, device="cpu")


def test_offsets_far_past_the_values_are_refused():
    offsets = np.array([0, 256], dtype=np.int32)
    weights = pa.ListArray.from_buffers(
        pa.list_(pa.float32()), 1, [None, pa.py_buffer(offsets)], children=[pa.array(np.ones(256, np.float32))]
    )
    t = pa.table({"layer_name": ["a"], "weights": weights})
    offsets[1] = 1 << 28
    with pytest.raises(ValueError, match="Column 'weights' is not valid Arrow data"):
        aq.quantize_arrow(t, device="cpu")


@pytest.mark.parametrize("entry", QUANTIZERS)
def test_fewer_children_than_the_schema_declares(entry):
    def drop_column(a):
        a.n_children = 2

    with pytest.raises(ValueError, match="malformed"):
        QUANTIZERS[entry](lying(drop_column))


def test_a_list_without_its_offsets_buffer():
    def drop_offsets(a):
        child(a, 1).n_buffers = 1

    with pytest.raises(ValueError, match="weights|malformed|buffer"):
        aq.quantize_arrow(lying(drop_offsets), device="cpu")


@pytest.mark.parametrize("entry", QUANTIZERS)
def test_a_batch_longer_than_its_columns(entry):
    def lengthen(a):
        a.length = 5

    with pytest.raises(ValueError):
        QUANTIZERS[entry](lying(lengthen))


def test_a_child_with_a_negative_length():
    def negative(a):
        child(a, 1, 0).length = -1

    with pytest.raises(ValueError):
        aq.quantize_arrow(lying(negative), device="cpu")


# --- streams whose batches do not match their schema ------------------------------------------


def test_stream_batch_with_another_layout_is_refused():
    good = good_batch()
    bad = pa.record_batch({"layer_name": ["b"], "weights": pa.array(["not a list"]), "shape": pa.array([[1]])})
    with pytest.raises(ValueError, match="weights|List\\(Float32\\)"):
        aq.quantize_arrow(LyingStream(good.schema, [good, bad]), device="cpu")


def test_stream_batch_with_fewer_columns_is_refused():
    good = good_batch()
    bad = pa.record_batch({"layer_name": ["b"], "weights": pa.array([[1.0]], pa.list_(pa.float32()))})
    with pytest.raises(ValueError):
        aq.quantize_arrow(LyingStream(good.schema, [good, bad]), device="cpu")


def test_a_truthful_lying_stream_still_works():
    """The harness itself: the same stream with matching batches quantizes like pyarrow's."""
    good = good_batch()
    got = aq.quantize_arrow(LyingStream(good.schema, [good, good]), device="cpu")
    want = aq.quantize_arrow(pa.Table.from_batches([good, good]), device="cpu")
    assert got.equals(want)


# --- shapes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape,message",
    [
        ([1 << 40, 1 << 40], "more elements than can be addressed"),
        ([256, (1 << 56) + 1], "more elements than can be addressed"),  # wraps to 256 in u64
        ([1 << 62, 4], "more elements than can be addressed"),
        ([-1, -256], "negative dimension"),
        ([255], "does not match the number of weights"),
    ],
)
def test_quantize_shape_products_are_checked(shape, message):
    t = pa.table(
        {
            "layer_name": ["a"],
            "weights": pa.array([np.ones(256, np.float32)], pa.list_(pa.float32())),
            "shape": pa.array([shape], pa.list_(pa.int64())),
        }
    )
    with pytest.raises(ValueError, match=re.escape("Layer 'a'") + ".*" + message):
        aq.quantize_arrow(t, device="cpu")


# --- tampered quantized tables ----------------------------------------------------------------


def quantized():
    return aq.quantize_arrow(pa.Table.from_batches([good_batch()]), device="cpu", group_size=128)


def replace(table, name, values):
    cols = {n: table.column(n) for n in table.column_names}
    cols[name] = pa.array(values, type=table.schema.field(name).type)
    return pa.table(cols, schema=table.schema)


@pytest.mark.parametrize(
    "column,values,message",
    [
        ("quantized_data", [b"\x00"], "has 1 quantized_data bytes, but .* need 128"),
        ("scales", [[1.0]], "has 1 scales, but .* need 2"),
        ("zero_points", [[0.0, 0.0, 0.0]], "has 3 zero_points, but .* need 2"),
        ("scales", [[1.0, float("nan")]], "scales has a non-finite value NaN at group 1"),
        ("zero_points", [[float("inf"), 0.0]], "zero_points has a non-finite value inf at group 0"),
        ("bit_width", [3], "Invalid bit_width: 3"),
        ("bit_width", [16], "has 128 quantized_data bytes, but .* need 512"),
        ("shape", [[1 << 40, 1 << 40]], "more elements than can be addressed"),
        ("shape", [[1 << 32, 1 << 32]], "more elements than can be addressed"),  # wraps to 0 in u64
        ("shape", [[-2, 128]], "negative dimension"),
        ("shape", [[2, 0]], "has no elements"),  # found by the arrow_stream fuzz target
    ],
)
def test_tampered_quantized_table_is_refused(column, values, message):
    with pytest.raises(ValueError, match=re.escape("Layer 'a'") + ".*" + message):
        aq.dequantize_arrow(replace(quantized(), column, values), device="cpu")


def test_quantized_offsets_past_the_end_are_refused():
    q = quantized().to_batches()[0]
    scales = q.schema.get_field_index("scales")

    def shrink(a):
        child(a, scales, 0).length = 1

    with pytest.raises(ValueError, match="Column 'scales' is not valid Arrow data"):
        aq.dequantize_arrow(lying(shrink, q), device="cpu")


def test_tampered_file_is_read_but_not_decoded(tmp_path):
    path = tmp_path / "bad.arrow"
    table = replace(quantized(), "scales", [[float("nan"), 1.0]])
    with pa.ipc.new_file(path, table.schema) as w:
        w.write_table(table)
    back = aq.read_quantized(path)
    with pytest.raises(ValueError, match="non-finite"):
        aq.dequantize_arrow(back, device="cpu")


@pytest.mark.parametrize("cut", [0, 8, 100, -40, -1])
def test_truncated_quantized_file_is_a_clear_error(tmp_path, cut):
    path = tmp_path / "q.arrow"
    table = quantized()
    with pa.ipc.new_file(path, table.schema) as w:
        w.write_table(table)
    data = path.read_bytes()
    path.write_bytes(data[:cut] if cut >= 0 else data[:cut])
    with pytest.raises(ValueError, match="not a readable Arrow IPC file"):
        aq.read_quantized(path)


# --- GGUF blocks -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1 << 40, 1 << 30), (1 << 31,), (64,)])
def test_gguf_dequantize_checks_sizes_before_allocating(shape):
    data = aq.gguf_quantize(np.ones(32, np.float32), "q8_0")
    with pytest.raises(ValueError):
        aq.gguf_dequantize(data, "q8_0", shape)

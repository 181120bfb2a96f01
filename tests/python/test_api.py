"""The Python API end to end: schema, exact bytes against the numpy reference, input types."""

import importlib

import numpy as np
import pyarrow as pa
import pytest

import arrow_quant_v2 as aq
from arrow_quant_v2 import reference
from conftest import layer_table

QUANT_COLUMNS = ["layer_name", "quantized_data", "scales", "zero_points", "shape", "bit_width", "group_size"]
EARLIER_COLUMNS = QUANT_COLUMNS[:6]  # the class API keeps the earlier six


def assert_matches_reference(q, layers, bit_width, group_size):
    assert q.num_rows == len(layers)
    for i, (name, w) in enumerate(layers.items()):
        packed, scales, zeros = reference.quantize(w, np.shape(w), bit_width, group_size)
        assert q["layer_name"][i].as_py() == name
        assert q["quantized_data"][i].as_py() == packed, name
        np.testing.assert_array_equal(np.asarray(q["scales"][i].values).view(np.uint32), scales.view(np.uint32))
        np.testing.assert_array_equal(np.asarray(q["zero_points"][i].values).view(np.uint32), zeros.view(np.uint32))


def test_issue_example_round_trip(rng):
    w = rng.standard_normal((512, 1024)).astype(np.float32)
    table = pa.table({"layer_name": ["blk.0.attn.weight"], "weights": [w.ravel()], "shape": [list(w.shape)]})
    q = aq.quantize_arrow(table, bit_width=4, group_size=128, device="cpu")
    assert isinstance(q, pa.Table)
    back = aq.dequantize_arrow(q)
    assert back.column_names == ["layer_name", "weights", "shape"]
    restored = np.asarray(back["weights"][0].values).reshape(w.shape)
    scales = np.asarray(q["scales"][0].values).reshape(512, 8)
    # Every element within half a quantization step (plus float32 rounding) of the original.
    bound = np.repeat(scales, 128, axis=1) * 0.5 + 4 * np.finfo(np.float32).eps * (np.abs(w).max() + 1)
    assert np.all(np.abs(restored - w) <= bound)
    assert back["shape"][0].as_py() == [512, 1024]


def test_schema_is_exactly_the_seven_columns_with_metadata(rng):
    q = aq.quantize_arrow(layer_table({"a": rng.standard_normal((4, 64), np.float32)}), bit_width=2, group_size=32)
    assert q.column_names == QUANT_COLUMNS
    assert q.schema.field("quantized_data").type == pa.binary()
    assert q.schema.field("scales").type.value_type == pa.float32()
    assert q.schema.field("zero_points").type.value_type == pa.float32()
    assert q.schema.field("shape").type.value_type == pa.int64()
    # Signed types: Spark has no unsigned integers.
    assert q.schema.field("bit_width").type == pa.int8()
    assert q.schema.field("group_size").type == pa.int64()
    assert q.schema == aq.quantized_schema(32)
    assert list(q.schema.metadata) == [b"arrow_quant"]  # one key: written in a fixed order
    meta = aq.quant_metadata(q)
    assert meta["group_size"] == 32 and meta["scheme"] == "affine-minmax-v1"
    assert q["bit_width"][0].as_py() == 2 and q["group_size"][0].as_py() == 32


def test_metadata_of_earlier_files_is_still_read(rng):
    """Files written before 0.3 kept each entry under its own arrow_quant.<entry> key."""
    q = aq.quantize_arrow(layer_table({"a": rng.standard_normal(64, np.float32)}), group_size=16).drop_columns(["group_size"])
    old = q.replace_schema_metadata({b"arrow_quant.group_size": b"16", b"arrow_quant.scheme": b"affine-minmax-v1"})
    assert aq.quant_metadata(old) == {"group_size": "16", "scheme": "affine-minmax-v1"}
    assert aq.dequantize_arrow(old).equals(aq.dequantize_arrow(q))


@pytest.mark.parametrize("bit_width", [2, 4, 8])
@pytest.mark.parametrize("group_size", [8, 64, 128, 136])
def test_bytes_equal_the_numpy_reference(rng, bit_width, group_size):
    layers = {
        "conv": rng.standard_normal((8, 3, 3, 3), np.float32),  # rows of 3: one short group each
        "mat": rng.standard_normal((6, 300), np.float32) * 0.02,  # tail groups
        "vec": rng.standard_normal(77).astype(np.float32),
        "const": np.full((2, 16), 0.25, np.float32),
        "zeros": np.array([0.0, -0.0] * 8, np.float32),
        "ties": np.array([0, 2**bit_width - 1] + [k + 0.5 for k in range(14)], np.float32),
    }
    q = aq.quantize_arrow(layer_table(layers), bit_width=bit_width, group_size=group_size, device="cpu")
    assert_matches_reference(q, layers, bit_width, group_size)
    back = aq.dequantize_arrow(q)
    for i, (name, w) in enumerate(layers.items()):
        want = reference.dequantize(
            q["quantized_data"][i].as_py(),
            np.asarray(q["scales"][i].values),
            np.asarray(q["zero_points"][i].values),
            np.shape(w),
            bit_width,
            group_size,
        )
        np.testing.assert_array_equal(np.asarray(back["weights"][i].values).view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("bit_width,ratio", [(2, 16), (4, 8), (8, 4)])
def test_packed_size_follows_bit_width(rng, bit_width, ratio):
    w = rng.standard_normal((64, 256), np.float32)
    q = aq.quantize_arrow(layer_table({"w": w}), bit_width=bit_width)
    assert len(q["quantized_data"][0].as_py()) == w.nbytes // ratio


@pytest.mark.parametrize("value_type", [pa.float16(), pa.float64()])
def test_float16_and_float64_inputs_quantize_as_their_float32_values(rng, value_type):
    w = rng.standard_normal((4, 40))
    w = w.astype(np.float16) if value_type == pa.float16() else w
    q = aq.quantize_arrow(layer_table({"w": w}, value_type), bit_width=4, group_size=16)
    assert_matches_reference(q, {"w": w.astype(np.float32)}, 4, 16)


def test_python_lists_arrive_as_float64_and_work():
    table = pa.Table.from_pydict({"layer_name": ["l"], "weights": [[0.0, 1.0, 2.0, 3.0] * 4]})
    assert table.schema.field("weights").type == pa.list_(pa.float64())
    q = aq.quantize_arrow(table, bit_width=2, group_size=8)
    assert q["quantized_data"][0].as_py() == bytes([0b11100100] * 4)
    assert q["shape"][0].as_py() == [16]


def test_list_layouts_and_int32_shapes_are_accepted(rng):
    w = rng.standard_normal((3, 16), np.float32)
    base = aq.quantize_arrow(layer_table({"w": w}))
    fixed = pa.table(
        {
            "layer_name": pa.array(["w"], pa.large_string()),
            "weights": pa.FixedSizeListArray.from_arrays(pa.array(w.ravel()), 48),
            "shape": pa.array([[3, 16]], pa.list_(pa.int32())),
        }
    )
    large = pa.table({"layer_name": ["w"], "weights": pa.array([w.ravel()], pa.large_list(pa.float32())), "shape": [[3, 16]]})
    for t in (fixed, large):
        assert aq.quantize_arrow(t).column("quantized_data").equals(base.column("quantized_data"))


def test_batch_path_gives_the_same_bytes_as_the_table_path(rng):
    t = layer_table({f"l{i}": rng.standard_normal((2, 50 + i), np.float32) for i in range(5)})
    from_table = aq.quantize_arrow(t, bit_width=8, group_size=16)
    batch = t.to_batches()[0]
    from_batch = aq.quantize_arrow_batch(batch, bit_width=8, group_size=16)
    assert isinstance(from_batch, pa.RecordBatch)
    assert pa.Table.from_batches([from_batch]).equals(from_table)


def test_chunked_table_keeps_row_order(rng):
    layers = {f"l{i}": rng.standard_normal(40, np.float32) for i in range(6)}
    t = layer_table(layers)
    chunked = pa.concat_tables([t.slice(0, 2), t.slice(2, 3), t.slice(5)])
    assert chunked.column("weights").num_chunks == 3
    q = aq.quantize_arrow(chunked, group_size=8)
    assert q.column("layer_name").to_pylist() == list(layers)
    assert_matches_reference(q, layers, 4, 8)


def test_polars_input(rng):
    pl = importlib.import_module("polars")
    w = rng.standard_normal((4, 32), np.float32)
    df = pl.DataFrame(
        {"layer_name": ["p"], "weights": [w.ravel()], "shape": [[4, 32]]},
        schema={"layer_name": pl.String, "weights": pl.List(pl.Float32), "shape": pl.List(pl.Int64)},
    )
    q = aq.quantize_arrow(df, group_size=32)
    assert_matches_reference(q, {"p": w}, 4, 32)


def test_duckdb_input(rng):
    duckdb = importlib.import_module("duckdb")
    t = layer_table({"d": rng.standard_normal((2, 16), np.float32)})
    rel = duckdb.sql("SELECT * FROM t")
    q = aq.quantize_arrow(rel, group_size=8)
    assert q.column("quantized_data").equals(aq.quantize_arrow(t, group_size=8).column("quantized_data"))


def test_result_is_independent_of_threads(rng):
    from concurrent.futures import ThreadPoolExecutor

    t = layer_table({f"l{i}": rng.standard_normal((32, 128), np.float32) for i in range(8)})
    want = aq.quantize_arrow(t)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: aq.quantize_arrow(t), range(8)))
    assert all(r.equals(want) for r in results)


def test_dequantize_needs_nothing_but_the_columns(rng):
    """Engines drop schema metadata; the group_size column carries it. Without either, the
    group size must be given (and a given one must agree with the column)."""
    q = aq.quantize_arrow(layer_table({"w": rng.standard_normal(64, np.float32)}), group_size=16)
    bare = q.replace_schema_metadata(None)
    assert aq.dequantize_arrow(bare).equals(aq.dequantize_arrow(q))
    with pytest.raises(ValueError, match="group_size=32 was given, but the row's group_size column says 16"):
        aq.dequantize_arrow(bare, group_size=32)
    neither = bare.drop_columns(["group_size"])
    with pytest.raises(ValueError, match="no 'group_size' column and no group size"):
        aq.dequantize_arrow(neither)
    assert aq.dequantize_arrow(neither, group_size=16).equals(aq.dequantize_arrow(q))


def test_rows_of_different_group_sizes_dequantize_each_with_its_own(rng):
    w = {"a": rng.standard_normal(256, np.float32)}
    q16 = aq.quantize_arrow(layer_table(w), group_size=16)
    q64 = aq.quantize_arrow(layer_table(w), group_size=64)
    mixed = pa.concat_tables([q16, q64.cast(q16.schema)]).replace_schema_metadata(None)
    back = aq.dequantize_arrow(mixed)
    assert back["weights"][0] == aq.dequantize_arrow(q16)["weights"][0]
    assert back["weights"][1] == aq.dequantize_arrow(q64)["weights"][0]


class TestArrowQuantV2:
    def test_modes(self):
        assert aq.ArrowQuantV2(mode="diffusion").mode == "diffusion"
        assert aq.ArrowQuantV2(mode="base").mode == "base"
        with pytest.raises(ValueError, match="Invalid mode"):
            aq.ArrowQuantV2(mode="turbo")

    def test_quantize_arrow_returns_exactly_six_columns(self, rng):
        t = layer_table({"a": rng.standard_normal((8, 128), np.float32)})
        q = aq.ArrowQuantV2(mode="diffusion").quantize_arrow(t, bit_width=4)
        assert q.column_names == EARLIER_COLUMNS
        assert q.schema.field("bit_width").type == pa.uint8()
        module = aq.quantize_arrow(t, bit_width=4)
        for c in EARLIER_COLUMNS[:5]:
            assert q[c].equals(module[c])
        assert q["bit_width"].to_pylist() == module["bit_width"].to_pylist()
        assert aq.dequantize_arrow(q).equals(aq.dequantize_arrow(module))

    def test_quantize_arrow_batch_matches_table(self, rng):
        t = layer_table({"a": rng.standard_normal((8, 128), np.float32)})
        quant = aq.ArrowQuantV2()
        b = quant.quantize_arrow_batch(t.to_batches()[0], bit_width=8)
        assert isinstance(b, pa.RecordBatch)
        assert b.schema.names == EARLIER_COLUMNS
        assert pa.Table.from_batches([b]).equals(quant.quantize_arrow(t, bit_width=8))

    def test_quantize_batch_from_numpy_dict(self, rng):
        weights = {"x": rng.standard_normal((16, 32), np.float32), "y": rng.standard_normal(24).astype(np.float64)}
        got = aq.ArrowQuantV2(mode="base").quantize_batch(weights, bit_width=2)
        assert [got[k]["shape"] for k in weights] == [[16, 32], [24]]
        q = aq.quantize_arrow(aq.layers_table(weights), bit_width=2)
        assert_matches_reference(q, {k: v.astype(np.float32) for k, v in weights.items()}, 2, 128)
        for i, name in enumerate(weights):
            assert got[name]["quantized_data"] == q["quantized_data"][i].as_py()
            assert got[name]["scales"] == q["scales"][i].as_py() and got[name]["zero_points"] == q["zero_points"][i].as_py()

    @pytest.mark.parametrize("empty", ["table", "batch"])
    def test_empty_input_gives_empty_result_with_full_schema(self, empty):
        quant = aq.ArrowQuantV2()
        schema = pa.schema([("layer_name", pa.string()), ("weights", pa.list_(pa.float32()))])
        if empty == "table":
            q = quant.quantize_arrow(schema.empty_table())
        else:
            q = quant.quantize_arrow_batch(pa.RecordBatch.from_pylist([], schema=schema))
        assert q.num_rows == 0
        assert q.schema.names == EARLIER_COLUMNS


def test_dequantize_decodes_rows_kept_in_high_precision(rng):
    """Model files keep some tensors as raw f16/f32 (bit_width 16/32); they decode as such."""
    q = aq.quantize_arrow(layer_table({"q": rng.standard_normal(64, np.float32)}), group_size=16)
    h = rng.standard_normal((2, 3)).astype(np.float16)
    f = rng.standard_normal(5).astype(np.float32)
    kept = pa.table(
        {
            "layer_name": ["h", "f"],
            "quantized_data": pa.array([h.tobytes(), f.tobytes()], pa.binary()),
            "scales": pa.array([[], []], pa.list_(pa.field("item", pa.float32(), nullable=False))),
            "zero_points": pa.array([[], []], pa.list_(pa.field("item", pa.float32(), nullable=False))),
            "shape": pa.array([[2, 3], [5]], pa.list_(pa.field("item", pa.int64(), nullable=False))),
            "bit_width": pa.array([16, 32], pa.int8()),
            "group_size": pa.array([16, 16], pa.int64()),
        },
        schema=q.schema,
    )
    back = aq.dequantize_arrow(pa.concat_tables([q, kept]))
    np.testing.assert_array_equal(np.asarray(back["weights"][1].values), h.astype(np.float32).ravel())
    np.testing.assert_array_equal(np.asarray(back["weights"][2].values), f)
    assert back["shape"].to_pylist() == [[64], [2, 3], [5]]
    short = kept.slice(0, 1).set_column(1, "quantized_data", pa.array([b"\x00" * 5], pa.binary()))
    with pytest.raises(ValueError, match="Layer 'h': has 5 quantized_data bytes, but .* need 12"):
        aq.dequantize_arrow(short)


def test_set_num_threads_is_module_wide_and_restorable():
    default = aq.get_num_threads()
    t = pa.table({"layer_name": ["x"], "weights": pa.array([np.arange(4096, dtype=np.float32)], pa.list_(pa.float32()))})
    want = aq.quantize_arrow(t, device="cpu")
    try:
        aq.set_num_threads(1)
        assert aq.get_num_threads() == 1
        assert "(rayon, 1 threads" in aq.backend_name("cpu")
        assert aq.quantize_arrow(t, device="cpu").equals(want)
    finally:
        aq.set_num_threads(0)
    assert aq.get_num_threads() == default
    with pytest.raises(ValueError, match="num_threads must be 0"):
        aq.set_num_threads(-1)

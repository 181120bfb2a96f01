"""Writes the GGUF and imatrix fixtures of tests/gguf_io.rs with gguf-py 0.19.0 (llama.cpp's own
Python writer), so the reader is checked against files it did not write itself.

    python tests/data/gguf/make_fixtures.py   # with gguf==0.19.0 and numpy installed

The files are committed; rerunning must give the same bytes (the script is deterministic).
"""
import struct
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T, GGUFValueType as V, GGUFWriter

HERE = Path(__file__).parent


def all_types():
    w = GGUFWriter(HERE / "gguf_py_all_types.gguf", arch="llama")
    w.add_custom_alignment(64)
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -5)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4000000000)
    w.add_int32("test.i32", -2000000000)
    w.add_float32("test.f32", 1.5)
    w.add_bool("test.bool", True)
    w.add_string("test.str", "héllo")
    w.add_uint64("test.u64", 2**63 + 5)
    w.add_int64("test.i64", -(2**62))
    w.add_float64("test.f64", 3.141592653589793)
    w.add_key_value("test.arr_u8", [1, 255], V.ARRAY, sub_type=V.UINT8)
    w.add_key_value("test.arr_i8", [-1, 2], V.ARRAY, sub_type=V.INT8)
    w.add_key_value("test.arr_u16", [65535], V.ARRAY, sub_type=V.UINT16)
    w.add_key_value("test.arr_i16", [-2, 3], V.ARRAY, sub_type=V.INT16)
    w.add_key_value("test.arr_u32", [7, 8, 9], V.ARRAY, sub_type=V.UINT32)
    w.add_array("test.arr_i32", [1, -2, 3])
    w.add_array("test.arr_f32", [0.5, 0.25])
    w.add_array("test.arr_bool", [True, False])
    w.add_array("test.arr_str", ["a", "bc", ""])
    w.add_key_value("test.arr_u64", [2**64 - 1], V.ARRAY, sub_type=V.UINT64)
    w.add_key_value("test.arr_i64", [-(2**63)], V.ARRAY, sub_type=V.INT64)
    w.add_key_value("test.arr_f64", [0.1, -2.5], V.ARRAY, sub_type=V.FLOAT64)
    w.add_array("test.nested", [[1, 2], [3]])
    w.add_array("test.nested_str", [["x"], ["y", "z"]])
    w.add_array("test.nested3", [[[1]], [[2, 3]]])

    w.add_tensor("tok_embd.weight", np.arange(16, dtype=np.float32).reshape(2, 8))
    w.add_tensor("blk.0.attn_q.weight", (np.arange(32, dtype=np.float16) / 4).reshape(4, 8))
    # Q8_0: two rows of one block each (f16 scale + 32 int8), given as raw bytes.
    q8 = np.arange(2 * 34, dtype=np.uint8).reshape(2, 34)
    w.add_tensor("blk.0.ffn_down.weight", q8, raw_dtype=T.Q8_0)
    w.add_tensor("output_norm.weight", np.full(8, 0.5, dtype=np.float32))
    w.add_tensor("blk.0.ids", np.arange(12, dtype=np.int32).reshape(2, 2, 3))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def imatrix_gguf():
    # As llama-imatrix writes it: sorted names, `.in_sum2` [ne0, n_mat] then `.counts` [1, n_mat].
    w = GGUFWriter(HERE / "imatrix.gguf", arch="")
    w.kv_data[0].clear()  # llama-imatrix writes no general.architecture
    w.add_string("general.type", "imatrix")
    w.add_array("imatrix.datasets", ["wiki.train.raw"])
    w.add_uint32("imatrix.chunk_count", 10)
    w.add_uint32("imatrix.chunk_size", 512)
    w.add_tensor("blk.0.attn_q.weight.in_sum2", np.array([[2, 4, 6, 8]], dtype=np.float32))
    w.add_tensor("blk.0.attn_q.weight.counts", np.array([[2]], dtype=np.float32))
    # three experts of two columns; counts 2.5 (lround: 3), 0 (unused expert: 1.0), 4.4 (4)
    w.add_tensor("blk.0.ffn_up_exps.weight.in_sum2", np.array([[3, 6], [5, 5], [7, 9]], dtype=np.float32))
    w.add_tensor("blk.0.ffn_up_exps.weight.counts", np.array([[2.5], [0], [4.4]], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def imatrix_dat():
    # llama-imatrix --output-format dat: sums stored multiplied by ncall, then the trailer.
    out = struct.pack("<i", 2)
    for name, ncall, sums in [("blk.0.attn_q.weight", 4, [2, 6, 1]), ("blk.0.ffn_down.weight", 0, [3.5, -1])]:
        b = name.encode()
        out += struct.pack("<i", len(b)) + b + struct.pack("<ii", ncall, len(sums)) + struct.pack(f"<{len(sums)}f", *sums)
    dataset = b"wiki.train.raw"
    out += struct.pack("<ii", 10, len(dataset)) + dataset
    (HERE / "imatrix.dat").write_bytes(out)


if __name__ == "__main__":
    all_types()
    imatrix_gguf()
    imatrix_dat()

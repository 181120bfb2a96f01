"""ggml itself, as the reference the GGUF tests compare against: ``ggml_quantize_chunk`` and
``dequantize_row_*`` of ``libggml-base.so`` from the PyPI package ``libggml-python==0.20.2.post1``
(ggml 0.20.2), called through ctypes.

Only ggml's exported C functions are used; nothing here reimplements a format.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
from pathlib import Path

import numpy as np

# enum ggml_type (ggml 0.20.x)
TYPE_IDS = {
    "f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8,
    "q2_k": 10, "q3_k": 11, "q4_k": 12, "q5_k": 13, "q6_k": 14, "bf16": 30,
}
BLOCK_TYPES = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k"]
# ggml's symbol suffixes keep the capital K
_SYMBOL = {t: t.replace("_k", "_K") for t in TYPE_IDS}


def library_path() -> Path:
    """libggml-base.so of the installed libggml-python package (or $GGML_BASE_LIB)."""
    if os.environ.get("GGML_BASE_LIB"):
        return Path(os.environ["GGML_BASE_LIB"])
    spec = importlib.util.find_spec("libggml")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("libggml-python==0.20.2.post1 is not installed (make test installs it)")
    root = Path(list(spec.submodule_search_locations)[0])
    return root / "lib64" / "libggml-base.so.0"


class Ggml:
    def __init__(self, path: Path | None = None):
        self.lib = ctypes.CDLL(str(path or library_path()))
        lib = self.lib
        lib.ggml_version.restype = ctypes.c_char_p
        lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        lib.ggml_quantize_chunk.argtypes = [
            ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
        ]
        lib.ggml_row_size.restype = ctypes.c_size_t
        lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
        for t in BLOCK_TYPES:
            f = getattr(lib, f"dequantize_row_{_SYMBOL[t]}")
            f.restype = None
            f.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        lib.ggml_fp16_to_fp32_row.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        lib.ggml_bf16_to_fp32_row.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        lib.ggml_blck_size.restype = ctypes.c_int64
        lib.ggml_blck_size.argtypes = [ctypes.c_int]
        lib.ggml_type_size.restype = ctypes.c_size_t
        lib.ggml_type_size.argtypes = [ctypes.c_int]

    @property
    def version(self) -> str:
        return self.lib.ggml_version().decode()

    def quantize(self, x: np.ndarray, type: str, imatrix: np.ndarray | None = None) -> bytes:
        """``ggml_quantize_chunk(type, x, dst, 0, rows, row_length, imatrix)``, rows along the last axis."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        n_per_row = x.shape[-1]
        nrows = x.size // n_per_row
        tid = TYPE_IDS[type]
        size = self.lib.ggml_row_size(tid, n_per_row) * nrows
        dst = ctypes.create_string_buffer(max(size, 1))
        w = None
        if imatrix is not None:
            w = np.ascontiguousarray(imatrix, dtype=np.float32)
            assert w.size == n_per_row
        n = self.lib.ggml_quantize_chunk(
            tid, x.ctypes.data, dst, 0, nrows, n_per_row, None if w is None else w.ctypes.data
        )
        assert n == size
        return dst.raw[:size]

    def block(self, type: str) -> tuple:
        """``(elements, bytes)`` of one block of `type`: ``ggml_blck_size`` and ``ggml_type_size``."""
        tid = TYPE_IDS[type]
        return int(self.lib.ggml_blck_size(tid)), int(self.lib.ggml_type_size(tid))

    def fp16_to_fp32(self, a) -> np.ndarray:
        """float32 values of float16 data (an array of float16 or of their uint16 bits), converted
        by ggml's ``ggml_fp16_to_fp32_row``; same shape."""
        a = np.ascontiguousarray(a)
        assert a.dtype.itemsize == 2, a.dtype
        out = np.empty(a.shape, dtype=np.float32)
        self.lib.ggml_fp16_to_fp32_row(a.ctypes.data, out.ctypes.data, a.size)
        return out

    def bf16_to_fp32(self, a) -> np.ndarray:
        """float32 values of bfloat16 data (ml_dtypes.bfloat16 or the uint16 bits), converted by
        ggml's ``ggml_bf16_to_fp32_row``; same shape."""
        a = np.ascontiguousarray(a)
        assert a.dtype.itemsize == 2, a.dtype
        out = np.empty(a.shape, dtype=np.float32)
        self.lib.ggml_bf16_to_fp32_row(a.ctypes.data, out.ctypes.data, a.size)
        return out

    def dequantize(self, data: bytes, type: str, n: int) -> np.ndarray:
        out = np.empty(n, dtype=np.float32)
        if type == "f32":
            out[:] = np.frombuffer(bytes(data), dtype="<f4", count=n)
            return out
        src = ctypes.create_string_buffer(bytes(data), len(data))
        if type == "f16":
            self.lib.ggml_fp16_to_fp32_row(src, out.ctypes.data, n)
        elif type == "bf16":
            self.lib.ggml_bf16_to_fp32_row(src, out.ctypes.data, n)
        else:
            getattr(self.lib, f"dequantize_row_{_SYMBOL[type]}")(src, out.ctypes.data, n)
        return out


def first_block_difference(got: bytes, want: bytes, block: tuple, n_per_row: int) -> str | None:
    """None when `got == want`; else where they first differ, block by block: the block's index,
    its row and elements, and both blocks in hex (ours first). `block` is ``Ggml.block(type)``."""
    if got == want:
        return None
    elems, size = block
    if len(got) != len(want):
        return f"{len(got)} bytes, ggml wrote {len(want)} ({len(want) // size} blocks of {size} bytes)"
    per_row = n_per_row // elems
    for b in range(len(want) // size):
        g, w = got[b * size:(b + 1) * size], want[b * size:(b + 1) * size]
        if g != w:
            row, col = divmod(b, per_row)
            byte = next(i for i in range(size) if g[i] != w[i])
            n_diff = sum(got[i * size:(i + 1) * size] != want[i * size:(i + 1) * size] for i in range(len(want) // size))
            return (f"block {b} (row {row}, elements {col * elems}..{(col + 1) * elems - 1}) differs first at byte "
                    f"{byte} ({n_diff} of {len(want) // size} blocks differ)\n  ours: {g.hex()}\n  ggml: {w.hex()}")
    return "same blocks, different bytes?"

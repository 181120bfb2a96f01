"""ggml's block formats (GGUF tensor types) on numpy arrays, byte-identical to ggml's own
quantizer (``ggml_quantize_chunk`` of ggml 0.20.x), with or without an importance matrix.

The same Rust code writes the tensors of ``arrow-quant quantize ... --type q4_k_m``.
"""

from __future__ import annotations

import struct
from os import PathLike
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from . import _native

__all__ = ["gguf_quantize", "gguf_dequantize", "write_imatrix", "GGUF_TYPES", "GGUF_GPU_TYPES"]

#: The tensor types :func:`gguf_quantize` writes (bits per weight in parentheses):
#: q4_0 (4.5), q4_1 (5.0), q5_0 (5.5), q5_1 (6.0), q8_0 (8.5), q2_k (2.625), q3_k (3.4375),
#: q4_k (4.5), q5_k (5.5), q6_k (6.5625), and the plain f32, f16, bf16.
GGUF_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "f32", "f16", "bf16")

#: The types this build encodes on the GPU (``device="gpu"``), with an importance matrix and
#: without: every block type of :data:`GGUF_TYPES` (the float types run on the CPU).
GGUF_GPU_TYPES = tuple(_native._gguf_gpu_types())


def _as_f32(array, what: str) -> np.ndarray:
    """float32 values of `array` (exact for float16 and bfloat16; float64 is rounded once)."""
    a = np.asarray(array)
    if a.dtype == np.float32:
        return a
    if a.dtype == np.float16 or a.dtype == np.float64:
        return a.astype(np.float32)
    if a.dtype.name == "bfloat16" and a.dtype.itemsize == 2:  # ml_dtypes / jax / torch-numpy bfloat16
        bits = np.ascontiguousarray(a).view(np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32).reshape(a.shape)
    raise TypeError(f"{what} must be a float32, float16, bfloat16 or float64 array, got dtype {a.dtype}")


def gguf_quantize(array, type: str, *, imatrix: Optional[Sequence[float]] = None, device: str = "auto") -> bytes:
    """Encodes `array` as GGUF tensor type `type` (e.g. ``"q4_k"``), rows along the last axis.

    Returns the tensor's data exactly as ``ggml_quantize_chunk(type, ...)`` writes it (and as it
    sits in a GGUF file). `imatrix`: one importance value per column (the row length), used as
    llama.cpp uses an importance matrix. The row length must be a multiple of the type's block
    (32, or 256 for the K types); when it is not, the ValueError names the type llama.cpp falls
    back to. NaN/Inf values raise ValueError.

    `device`: ``"cpu"``, ``"gpu"`` or ``"auto"``; every device gives the same bytes. The GPU has
    kernels for the types in :data:`GGUF_GPU_TYPES`, with an importance matrix and without;
    ``"gpu"`` raises NotImplementedError for anything else (and on an adapter that cannot encode
    the type exactly), and ``"auto"`` uses the GPU for a type only where it measured faster than
    the CPU (decided per type, with an importance matrix or without)."""
    if not isinstance(device, str):
        raise TypeError(f"device must be 'cpu', 'gpu' or 'auto', got {device!r}")
    if not isinstance(type, str):
        raise TypeError(f"type must be a GGUF type name such as 'q4_k', got {type!r}")
    a = _as_f32(array, "array")
    if a.ndim == 0 or a.size == 0:
        raise ValueError(f"gguf_quantize needs a non-empty array of at least one dimension, got shape {a.shape}")
    n_per_row = a.shape[-1]
    w = None
    if imatrix is not None:
        w = np.ascontiguousarray(_as_f32(imatrix, "imatrix")).reshape(-1)
    return _native._gguf_quantize(np.ascontiguousarray(a).reshape(-1), n_per_row, str(type), w, str(device))


def gguf_dequantize(data, type: str, shape) -> np.ndarray:
    """Decodes GGUF tensor data of `type` to a float32 array of `shape` (rows along the last
    axis), as ggml's ``dequantize_row_*`` functions do."""
    if not isinstance(type, str):
        raise TypeError(f"type must be a GGUF type name such as 'q4_k', got {type!r}")
    shape = tuple(int(d) for d in (shape if isinstance(shape, (tuple, list)) else (shape,)))
    if any(d < 0 for d in shape):
        raise ValueError(f"shape must not have negative dimensions, got {shape}")
    if type.lower() in GGUF_TYPES and shape:
        block = 256 if type.lower().endswith("_k") else 32 if type.lower().startswith("q") else 1
        if shape[-1] % block:
            raise ValueError(f"{type} rows are whole blocks of {block} elements; a row of {shape[-1]} elements cannot be one")
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    return _native._gguf_dequantize(bytes(data) if not isinstance(data, bytes) else data, str(type), n).reshape(shape)


def write_imatrix(path: Union[str, PathLike], importance: Mapping[str, Sequence[float]], *, chunks: int = 1, dataset: str = "") -> None:
    """Writes an importance matrix that ``arrow-quant quantize --imatrix`` (and llama-quantize)
    read: llama.cpp's legacy ``.dat`` layout, one entry per tensor name with one value per
    column of the tensor (the mean of the squared input activations of that column; for a 3-D
    expert tensor, the experts' rows one after the other).

    `chunks` and `dataset` are recorded as llama-imatrix records its calibration run."""
    with open(path, "wb") as f:
        f.write(struct.pack("<i", len(importance)))
        for name, values in importance.items():
            v = np.ascontiguousarray(values, dtype="<f4").reshape(-1)
            if v.size == 0 or not np.isfinite(v).all():
                raise ValueError(f"importance of '{name}' must be non-empty and finite")
            b = name.encode()
            # ncall 1: llama-quantize divides the stored values by ncall
            f.write(struct.pack("<i", len(b)) + b + struct.pack("<ii", 1, v.size) + v.tobytes())
        d = dataset.encode()
        f.write(struct.pack("<ii", chunks, len(d)) + d)

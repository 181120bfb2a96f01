"""Group-wise 2/4/8-bit quantization of model weights, with Arrow tables in and out.

The math is defined once (see the README, "The exact math") and runs on the GPU through wgpu
or on the CPU; both give the same bytes. Inputs are any Arrow producer (pyarrow, polars, duckdb,
nanoarrow) through the Arrow PyCapsule interface; outputs are pyarrow objects.
"""

from __future__ import annotations

from typing import Mapping, Optional

import numpy as np
import pyarrow as pa

from ._native import (
    __version__,
    backend_name,
    dequantize_arrow,
    quantize_arrow,
    quantize_arrow_batch,
    quantize_model,
    quantize_safetensors,
    read_quantized,
)
from .gguf import GGUF_TYPES, gguf_dequantize, gguf_quantize, write_imatrix

__all__ = [
    "ArrowQuantV2",
    "__version__",
    "backend_name",
    "GGUF_TYPES",
    "gguf_dequantize",
    "gguf_quantize",
    "write_imatrix",
    "dequantize_arrow",
    "quantize_arrow",
    "quantize_arrow_batch",
    "layers_table",
    "quantize_model",
    "quantize_safetensors",
    "read_quantized",
]

_MODES = ("diffusion", "base")


def layers_table(weights: Mapping[str, np.ndarray]) -> pa.Table:
    """A table of layers (``layer_name``, ``weights``, ``shape``) from a dict of arrays.

    float32, float16 and float64 arrays keep their dtype; the weights are flattened in row-major
    order and ``shape`` records the array's shape.
    """
    names, columns, shapes = [], [], []
    for name, array in weights.items():
        if not isinstance(name, str):
            raise TypeError(f"Layer names must be strings, got {type(name).__name__}: {name!r}")
        array = np.asarray(array)
        if array.dtype.kind != "f":
            raise TypeError(f"Layer '{name}': weights must be a float array (float16/32/64), got dtype {array.dtype}")
        names.append(name)
        columns.append(pa.array(np.ascontiguousarray(array).reshape(-1)))
        shapes.append(list(array.shape))
    value_type = columns[0].type if columns and all(c.type == columns[0].type for c in columns) else pa.float32()
    offsets = np.zeros(len(columns) + 1, dtype=np.int64)
    np.cumsum([len(c) for c in columns], out=offsets[1:])
    values = pa.concat_arrays([c.cast(value_type) for c in columns]) if columns else pa.array([], value_type)
    return pa.table(
        {
            "layer_name": pa.array(names, pa.string()),
            "weights": pa.LargeListArray.from_arrays(pa.array(offsets), values),
            "shape": pa.array(shapes, pa.list_(pa.int64())),
        }
    )


class ArrowQuantV2:
    """The quantizer object of the earlier ``arrow_quant_v2`` API.

    ``mode`` ("diffusion" or "base") is kept for compatibility; both modes use the same exact
    group-wise math. ``group_size`` and ``device`` apply to every call unless a call overrides
    ``group_size``.
    """

    def __init__(self, mode: str = "diffusion", *, group_size: int = 128, device: str = "auto") -> None:
        if mode not in _MODES:
            raise ValueError(f"Invalid mode: {mode!r}. Must be 'diffusion' or 'base'")
        self.mode = mode
        self.group_size = group_size
        self.device = device

    def __repr__(self) -> str:
        return f"ArrowQuantV2(mode={self.mode!r}, group_size={self.group_size}, device={self.device!r})"

    def _group_size(self, group_size: Optional[int]) -> int:
        return self.group_size if group_size is None else group_size

    def quantize_arrow(self, table, bit_width: int = 4, group_size: Optional[int] = None) -> pa.Table:
        """Quantizes a table of layers; returns the six-column quantized table."""
        return quantize_arrow(table, bit_width=bit_width, group_size=self._group_size(group_size), device=self.device)

    def quantize_arrow_batch(self, batch, bit_width: int = 4, group_size: Optional[int] = None) -> pa.RecordBatch:
        """Quantizes one RecordBatch; the same bytes as :meth:`quantize_arrow` on the same rows."""
        return quantize_arrow_batch(
            batch, bit_width=bit_width, group_size=self._group_size(group_size), device=self.device
        )

    def quantize_batch(
        self, weights: Mapping[str, np.ndarray], bit_width: int = 4, group_size: Optional[int] = None
    ) -> pa.Table:
        """Quantizes a dict of numpy arrays (name → weights); returns the quantized table."""
        if not isinstance(weights, Mapping):
            raise TypeError(f"quantize_batch expects a dict of name -> numpy array, got {type(weights).__name__}")
        return self.quantize_arrow(layers_table(weights), bit_width=bit_width, group_size=group_size)

    def dequantize_arrow(self, table, group_size: Optional[int] = None) -> pa.Table:
        """Expands a quantized table back to float32 weights."""
        return dequantize_arrow(table, device=self.device, group_size=group_size)

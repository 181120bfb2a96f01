"""Group-wise 2/4/8-bit quantization of model weights, with Arrow tables in and out.

The math is defined once (see the README, "The exact math") and runs on the GPU through wgpu
or on the CPU; both give the same bytes. Inputs are any Arrow producer (pyarrow, polars, duckdb,
nanoarrow) through the Arrow PyCapsule interface; outputs are pyarrow objects.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pyarrow as pa

from ._native import (
    ConfigurationError,
    MetadataError,
    ModelNotFoundError,
    QuantizationError,
    ShapeMismatchError,
    ValidationError,
    __version__,
    backend_name,
    get_num_threads,
    set_num_threads,
    dequantize_arrow,
    dequantize_arrow_batch,
    dequantized_schema,
    quantize_arrow,
    quantize_arrow_batch,
    quantize_model,
    quantize_safetensors,
    quantized_schema,
    read_quantized,
)
from .aio import AsyncArrowQuantV2
from .batch import BatchResult, layers_batch
from .config import DiffusionQuantConfig
from .gguf import GGUF_GPU_TYPES, GGUF_TYPES, gguf_dequantize, gguf_quantize, write_imatrix
from .models import ShardedSafeTensorsLoader, load_sharded_safetensors
from .quantizer import ArrowQuantV2
from .engines import dequantize_batches, quantize_batches, spark_ddl, spark_schema
from .schemas import quant_metadata

__all__ = [
    "ArrowQuantV2",
    "AsyncArrowQuantV2",
    "BatchResult",
    "ConfigurationError",
    "DiffusionQuantConfig",
    "MetadataError",
    "ModelNotFoundError",
    "QuantizationError",
    "ShapeMismatchError",
    "ShardedSafeTensorsLoader",
    "ValidationError",
    "load_sharded_safetensors",
    "__version__",
    "backend_name",
    "get_num_threads",
    "set_num_threads",
    "GGUF_TYPES",
    "gguf_dequantize",
    "gguf_quantize",
    "GGUF_GPU_TYPES",
    "write_imatrix",
    "dequantize_arrow",
    "dequantize_arrow_batch",
    "dequantized_schema",
    "quant_metadata",
    "quantize_batches",
    "dequantize_batches",
    "quantized_schema",
    "spark_ddl",
    "spark_schema",
    "quantize_arrow",
    "quantize_arrow_batch",
    "layers_table",
    "quantize_model",
    "quantize_safetensors",
    "read_quantized",
]


def layers_table(weights: Mapping[str, np.ndarray]) -> pa.Table:
    """A table of layers (``layer_name``, ``weights``, ``shape``) from a dict of arrays.

    float32, float16 and float64 arrays keep their dtype (a mix becomes float32); the weights are
    flattened in row-major order and ``shape`` records the array's shape.
    """
    layers = []
    for name, array in weights.items():
        if not isinstance(name, str):
            raise TypeError(f"Layer names must be strings, got {type(name).__name__}: {name!r}")
        array = np.asarray(array)
        if array.dtype.kind != "f":
            raise TypeError(f"Layer '{name}': weights must be a float array (float16/32/64), got dtype {array.dtype}")
        layers.append((name, np.ascontiguousarray(array)))
    return pa.Table.from_batches([layers_batch(layers)])

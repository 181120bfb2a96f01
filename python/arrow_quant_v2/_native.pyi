"""Type stubs for the compiled core, ``arrow_quant_v2._native``."""

from typing import Any, Literal, Optional

import pyarrow as pa

__version__: str

Device = Literal["cpu", "gpu", "auto"]

def quantize_arrow(
    table: Any, *, bit_width: int = 4, group_size: int = 128, device: Device = "auto"
) -> pa.Table:
    """Quantizes a table of layers (`layer_name`, `weights`, optional `shape`) from any Arrow
    producer (an object with ``__arrow_c_stream__`` or ``__arrow_c_array__``).

    Returns one row per layer: `layer_name`, `quantized_data`, `scales`, `zero_points`, `shape`,
    `bit_width`, with `group_size` in the schema metadata. Raises ValueError or TypeError naming
    the layer for bad input, RuntimeError when the requested device is unavailable."""

def quantize_arrow_batch(
    batch: Any, *, bit_width: int = 4, group_size: int = 128, device: Device = "auto"
) -> pa.RecordBatch:
    """Like :func:`quantize_arrow` for one RecordBatch (``__arrow_c_array__``)."""

def dequantize_arrow(table: Any, *, device: Device = "auto", group_size: Optional[int] = None) -> pa.Table:
    """Expands a quantized table to `layer_name`, `weights` (list<float32>), `shape`.

    `group_size` defaults to the table's schema metadata."""

def backend_name(device: Device = "auto") -> str:
    """The backend `device` resolves to, e.g. ``"cpu (rayon, 2 threads, avx2)"``."""

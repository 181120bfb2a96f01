"""``ArrowQuantV2``: the quantizer object of the earlier ``arrow_quant_v2`` API.

The table methods are this package's own functions with the instance's group size and device;
the batch, model and validation methods are the earlier API (see the README, "Coming from the
earlier ArrowQuant_V2").
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import numpy as np
import pyarrow as pa

from . import batch as _batch
from . import models as _models
from ._native import dequantize_arrow, quantize_arrow, quantize_arrow_batch
from .config import DiffusionQuantConfig
from .schemas import earlier_columns

# "time_aware" was the earlier alias of "diffusion".
_MODES = {"diffusion": "diffusion", "base": "base", "time_aware": "diffusion"}
_METHODS = ("minmax", "lsq")


class ArrowQuantV2:
    """The quantizer object of the earlier ``arrow_quant_v2`` API.

    ``mode`` ("diffusion" or "base") is kept for compatibility; both modes use the same exact
    group-wise math. ``group_size``, ``device`` and ``method`` (``"minmax"``, or ``"lsq"``: the
    least-squares refined scales, same format, lower error, several times the compute) apply to
    every call unless a call overrides ``group_size`` or ``method`` (the model methods take
    their group size from the config).
    """

    def __init__(self, mode: str = "diffusion", *, group_size: int = 128, device: str = "auto", method: str = "minmax") -> None:
        if mode not in _MODES:
            raise ValueError(f"Invalid mode: {mode!r}. Must be 'diffusion' or 'base'")
        if method not in _METHODS:
            raise ValueError(f"Invalid method: {method!r}. Must be 'minmax' or 'lsq'")
        self.mode = _MODES[mode]
        self.group_size = group_size
        self.device = device
        self.method = method

    def __repr__(self) -> str:
        return f"ArrowQuantV2(mode={self.mode!r}, group_size={self.group_size}, device={self.device!r}, method={self.method!r})"

    def _group_size(self, group_size: Optional[int]) -> int:
        return self.group_size if group_size is None else group_size

    def _method(self, method: Optional[str]) -> str:
        return self.method if method is None else method

    # ---- Arrow tables -------------------------------------------------------------------

    def quantize_arrow(self, table, bit_width: int = 4, group_size: Optional[int] = None, method: Optional[str] = None) -> pa.Table:
        """Quantizes a table of layers; returns the earlier six-column quantized table
        (``bit_width`` uint8, the group size and method in the schema metadata)."""
        return earlier_columns(
            quantize_arrow(table, bit_width=bit_width, group_size=self._group_size(group_size), device=self.device, method=self._method(method))
        )

    def quantize_arrow_batch(self, batch, bit_width: int = 4, group_size: Optional[int] = None, method: Optional[str] = None) -> pa.RecordBatch:
        """Quantizes one RecordBatch; the same bytes as :meth:`quantize_arrow` on the same rows."""
        return earlier_columns(
            quantize_arrow_batch(batch, bit_width=bit_width, group_size=self._group_size(group_size), device=self.device, method=self._method(method))
        )

    def quantize_batch_arrow(self, table, bit_width: Optional[int] = None, continue_on_error: Optional[bool] = None) -> pa.RecordBatch:
        """The earlier name: any Arrow table of layers in, one RecordBatch of the six quantized
        columns out. With ``continue_on_error=True`` a failing layer is left out, warned about
        (``RuntimeWarning``) and listed with its reason in the result's schema metadata under
        ``skipped_layers`` of the ``arrow_quant`` metadata (see :func:`quant_metadata`)."""
        return _batch.quantize_table(
            table, bit_width=bit_width, group_size=self.group_size, device=self.device, continue_on_error=continue_on_error, method=self.method
        )

    def dequantize_arrow(self, table, group_size: Optional[int] = None) -> pa.Table:
        """Expands a quantized table back to float32 weights."""
        return dequantize_arrow(table, device=self.device, group_size=group_size)

    # ---- dicts of numpy arrays (the earlier batch API) -------------------------------------

    def quantize_batch(
        self, weights: Mapping[str, np.ndarray], bit_width: Optional[int] = None, continue_on_error: Optional[bool] = None
    ) -> "_batch.BatchResult":
        """Quantizes a dict of arrays (name → weights); returns ``{name: {"quantized_data": bytes,
        "scales": [float], "zero_points": [float], "shape": [int], "bit_width": int,
        "group_size": int}}`` in the input's order, the bytes of :func:`quantize_arrow` on the
        same layers. ``bit_width`` defaults to 4. With ``continue_on_error=True`` a bad layer is
        skipped with a ``RuntimeWarning`` and listed in the result's ``errors`` dict."""
        return _batch.quantize_dict(
            weights, bit_width=bit_width, group_size=self.group_size, device=self.device, continue_on_error=continue_on_error, method=self.method
        )

    def quantize_batch_with_progress(
        self,
        weights: Mapping[str, np.ndarray],
        bit_width: Optional[int] = None,
        progress_callback: Optional[Callable[[str, float], Any]] = None,
        continue_on_error: Optional[bool] = None,
    ) -> "_batch.BatchResult":
        """:meth:`quantize_batch` that calls ``progress_callback(layer_name, fraction)`` once per
        layer, as its chunk completes, on the calling thread; the fraction (of elements) never
        decreases and ends at 1.0. An exception the callback raises becomes a
        ``RuntimeWarning``; the results are still complete."""
        return _batch.quantize_dict(
            weights,
            bit_width=bit_width,
            group_size=self.group_size,
            device=self.device,
            continue_on_error=continue_on_error,
            progress_callback=progress_callback,
            what="quantize_batch_with_progress",
            method=self.method,
        )

    # ---- whole models -----------------------------------------------------------------------

    def quantize_from_safetensors(
        self,
        safetensors_path: str,
        output_path: str,
        config: Optional[DiffusionQuantConfig] = None,
        progress_callback: Optional[Callable[[str, float], Any]] = None,
    ) -> dict:
        """Converts a safetensors checkpoint (file, index, folder of shards, diffusers folder)
        with :func:`arrow_quant_v2.quantize_model` as ``config`` says. ``output_path``: a
        .parquet/.arrow file, or a folder that receives ``model.parquet``. Returns the earlier
        dict (``quantized_path``, ``compression_ratio``, ``cosine_similarity``, ``model_size_mb``,
        ``modality``, ``bit_width``, ``quantization_time_s``), measured, plus
        ``min_cosine_similarity`` and the per-tensor ``report`` table.
        ``progress_callback(message, fraction)``; its exceptions become warnings."""
        return _models.convert(safetensors_path, output_path, config, progress_callback, device=self.device, method=self.method)

    def quantize_diffusion_model(
        self,
        model_path: str,
        output_path: str,
        config: Optional[DiffusionQuantConfig] = None,
        progress_callback: Optional[Callable[[str, float], Any]] = None,
        use_arrow: Optional[bool] = None,
    ) -> dict:
        """:meth:`quantize_from_safetensors` under the earlier name (``model_path`` is a model
        folder or file). ``use_arrow`` is accepted and ignored: the output is always Arrow."""
        return _models.convert(model_path, output_path, config, progress_callback, device=self.device, method=self.method)

    def validate_quality(self, original_path: str, quantized_path: str) -> dict:
        """Per-layer cosine similarity between a checkpoint and its quantized file: returns
        ``cosine_similarity`` (mean), ``compression_ratio``, ``model_size_mb``,
        ``per_layer_accuracy`` and ``passed`` (every layer ≥ 0.70)."""
        return _models.validate_quality(original_path, quantized_path)

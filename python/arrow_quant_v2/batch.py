"""The earlier package's batch API: a dict of numpy arrays in, a dict of quantized layers out.

Every layer goes through :func:`quantize_arrow`, so its bytes are those of the table API. Layers
are grouped into chunks of about :data:`CHUNK_BYTES` of input; each chunk is one Arrow batch,
quantized by one native call (all cores, without the GIL), which bounds the extra memory to one
chunk and lets progress be reported while the work goes on.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np
import pyarrow as pa

from ._native import ValidationError, quantize_arrow
from .schemas import earlier_columns, with_metadata

CHUNK_BYTES = 64 << 20

ProgressCallback = Callable[[str, float], Any]


class DtypeError(ValidationError, TypeError):
    """Weights of a non-float dtype: a ``ValidationError`` (``ValueError``, as the earlier
    package raised) that is also a ``TypeError`` (as this package's table functions raise)."""


class BatchResult(dict):
    """``{layer name: result dict}``, in the input's order. ``errors`` maps each layer skipped
    under ``continue_on_error=True`` to the reason (empty otherwise)."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: Dict[str, str] = {}


def _as_array(name: Any, value: Any) -> np.ndarray:
    """A layer's weights as a C-contiguous float16/32/64 array. Lists, tuples, strided views and
    float64/float16 are converted (the earlier package refused them); other dtypes are refused
    with the earlier message."""
    if not isinstance(name, str):
        raise TypeError(f"Layer names must be strings, got {type(name).__name__}: {name!r}")
    if isinstance(value, np.ndarray):
        array = value
    elif isinstance(value, (list, tuple)):
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise ValidationError(f"Layer '{name}': the list does not hold numbers of one rectangular shape ({e})") from None
    elif hasattr(value, "__array__") or hasattr(value, "__array_interface__"):
        array = np.asarray(value)
    else:
        raise ValidationError(
            f"Expected numpy array for layer '{name}', got {type(value).__name__}. "
            "Please pass numpy arrays (float32, float16 or float64) or lists of numbers."
        )
    if array.dtype.kind != "f":
        raise DtypeError(
            f"Array for layer '{name}' has dtype '{array.dtype.name}', expected 'float32' "
            "(float16 and float64 are accepted too). Use arr.astype(np.float32) to convert."
        )
    return np.ascontiguousarray(array)


def layers_batch(layers: List[Tuple[str, np.ndarray]]) -> pa.RecordBatch:
    """One batch of layers (``layer_name``, ``weights``, ``shape``). A chunk of one dtype keeps
    it; a mixed chunk becomes float32 (numpy rounds as the native code does, so the bytes are
    the same). A single layer's weights are not copied."""
    dtypes = {a.dtype for _, a in layers}
    common = dtypes.pop() if len(dtypes) == 1 else np.dtype(np.float32)
    flat = [a.reshape(-1).astype(common, copy=False) for _, a in layers]
    values = pa.array(flat[0] if len(flat) == 1 else np.concatenate(flat) if flat else np.zeros(0, np.float32))
    offsets = np.zeros(len(flat) + 1, dtype=np.int64)
    np.cumsum([f.size for f in flat], out=offsets[1:])
    return pa.RecordBatch.from_arrays(
        [
            pa.array([n for n, _ in layers], pa.string()),
            pa.LargeListArray.from_arrays(pa.array(offsets), values),
            pa.array([list(a.shape) for _, a in layers], pa.list_(pa.int64())),
        ],
        names=["layer_name", "weights", "shape"],
    )


def _chunks(layers: List[Tuple[str, np.ndarray]], limit: int) -> Iterator[List[Tuple[str, np.ndarray]]]:
    chunk: List[Tuple[str, np.ndarray]] = []
    size = 0
    for layer in layers:
        if chunk and size + layer[1].nbytes > limit:
            yield chunk
            chunk, size = [], 0
        chunk.append(layer)
        size += layer[1].nbytes
    if chunk:
        yield chunk


def _result_dicts(table: pa.Table, group_size: int) -> Iterator[Tuple[str, Dict[str, Any]]]:
    columns = {c: table.column(c).to_pylist() for c in ("layer_name", "quantized_data", "scales", "zero_points", "shape", "bit_width")}
    for i, name in enumerate(columns["layer_name"]):
        yield name, {
            "quantized_data": columns["quantized_data"][i],
            "scales": columns["scales"][i],
            "zero_points": columns["zero_points"][i],
            "shape": columns["shape"][i],
            "bit_width": columns["bit_width"][i],
            "group_size": group_size,
        }


def _skip(what: str, name: str, message: str, errors: Dict[str, str]) -> None:
    errors[name] = message
    warnings.warn(f"{what}: skipping layer '{name}': {message}", RuntimeWarning, stacklevel=4)


def _report(callback: Optional[ProgressCallback], name: str, fraction: float) -> None:
    """Calls the user's callback; an exception it raises becomes a warning (the earlier
    package's rule: a progress display must not lose the results)."""
    if callback is None:
        return
    try:
        callback(name, fraction)
    except Exception as e:  # noqa: BLE001 - any error of the callback is the caller's, reported
        warnings.warn(f"progress callback raised {type(e).__name__}: {e} (ignored)", RuntimeWarning, stacklevel=4)


def quantize_dict(
    weights: Mapping[str, Any],
    *,
    bit_width: Optional[int],
    group_size: int,
    device: str,
    continue_on_error: Optional[bool],
    progress_callback: Optional[ProgressCallback] = None,
    what: str = "quantize_batch",
    method: str = "minmax",
) -> BatchResult:
    """The body of ``ArrowQuantV2.quantize_batch`` and ``quantize_batch_with_progress``."""
    if not isinstance(weights, Mapping):
        raise TypeError(f"{what} expects a dict of layer name -> numpy array, got {type(weights).__name__}")
    bits = 4 if bit_width is None else bit_width
    keep_going = bool(continue_on_error)
    result = BatchResult()
    # An invalid bit width or group size is refused even for an empty dict, never skipped layer
    # by layer: the native code checks the options first, with the earlier message.
    quantize_arrow(layers_batch([]), bit_width=bits, group_size=group_size, device=device, method=method)

    layers: List[Tuple[str, np.ndarray]] = []
    for name, value in weights.items():
        try:
            layers.append((name, _as_array(name, value)))
        except (TypeError, ValueError) as e:
            if not keep_going:
                raise
            _skip(what, str(name), str(e), result.errors)
    # Progress counts elements; a layer refused before quantization counts as one.
    total = sum(a.size for _, a in layers) + len(result.errors)
    done = 0
    for name in result.errors:
        done += 1
        _report(progress_callback, name, 1.0 if done >= total else done / total)

    for chunk in _chunks(layers, CHUNK_BYTES):
        try:
            parts = [quantize_arrow(layers_batch(chunk), bit_width=bits, group_size=group_size, device=device, method=method)]
        except (TypeError, ValueError):
            if not keep_going:
                raise
            # Which layers failed: each one alone (only on this error path).
            parts = []
            for layer in chunk:
                try:
                    parts.append(quantize_arrow(layers_batch([layer]), bit_width=bits, group_size=group_size, device=device, method=method))
                except (TypeError, ValueError) as e:
                    _skip(what, layer[0], str(e), result.errors)
        for part in parts:
            for name, layer in _result_dicts(part, group_size):
                result[name] = layer
        for name, array in chunk:
            done += array.size
            _report(progress_callback, name, 1.0 if done >= total else done / total)
    return result


def quantize_table(
    table: Any, *, bit_width: Optional[int], group_size: int, device: str, continue_on_error: Optional[bool], method: str = "minmax"
) -> pa.RecordBatch:
    """The body of ``ArrowQuantV2.quantize_batch_arrow``: any Arrow table in, one RecordBatch of
    the earlier six columns out. Under ``continue_on_error=True`` a failing layer is left out,
    warned about, and listed with its reason under ``skipped_layers`` in the result's
    ``arrow_quant`` metadata."""
    bits = 4 if bit_width is None else bit_width
    try:
        out = quantize_arrow(table, bit_width=bits, group_size=group_size, device=device, method=method)
        skipped: Dict[str, str] = {}
    except (TypeError, ValueError):
        if not continue_on_error:
            raise
        rows = pa.table(table)
        # Bad options and a missing column are the call's fault, not a layer's: this raises
        # them, and gives the schema should every layer fail.
        empty = quantize_arrow(rows.slice(0, 0), bit_width=bits, group_size=group_size, device=device, method=method)
        parts, skipped = [], {}
        for i in range(rows.num_rows):
            row = rows.slice(i, 1)
            try:
                parts.append(quantize_arrow(row, bit_width=bits, group_size=group_size, device=device, method=method))
            except (TypeError, ValueError) as e:
                _skip("quantize_batch_arrow", str(row.column("layer_name")[0].as_py()), str(e), skipped)
        out = pa.concat_tables([empty, *parts], promote_options="permissive") if parts else empty
    out = earlier_columns(out.combine_chunks())
    batches = out.to_batches()
    batch = batches[0] if batches else pa.RecordBatch.from_pylist([], schema=out.schema)
    return with_metadata(batch, skipped_layers=skipped) if skipped else batch

"""Type stubs for the compiled core, ``arrow_quant_v2._native``."""

from os import PathLike
from typing import Any, Callable, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Union

import pyarrow as pa

__version__: str

Device = Literal["cpu", "gpu", "auto"]

Method = Literal["minmax", "lsq"]

def quantize_arrow(
    table: Any, *, bit_width: int = 4, group_size: int = 128, device: Device = "auto", method: Method = "minmax"
) -> pa.Table:
    """Quantizes a table of layers (`layer_name`, `weights`, optional `shape`) from any Arrow
    producer (an object with ``__arrow_c_stream__`` or ``__arrow_c_array__``).

    Returns one row per layer: `layer_name`, `quantized_data`, `scales`, `zero_points`, `shape`,
    `bit_width` (int8), `group_size` (int64), with the scheme and group size also in the schema
    metadata (one key, `arrow_quant`, a JSON object). Raises ValueError or TypeError naming the
    layer for bad input, RuntimeError when the requested device is unavailable.

    ``method="lsq"`` refines each group's scale and zero point by alternating least squares
    (same format, lower error, 8-11x the compute of min/max on a CPU; defined in ``src/quant/lsq.rs`` and
    ``arrow_quant_v2.reference``); its tables add a `method` column and a ``method`` metadata
    entry. The GPU gives the same bytes as the CPU; on an adapter that cannot keep subnormal
    floats ``device="gpu"`` raises NotImplementedError for it, and ``"auto"`` uses the CPU;
    ``"auto"`` picks the device for lsq by its own measurement."""

def quantize_arrow_batch(
    batch: Any, *, bit_width: int = 4, group_size: int = 128, device: Device = "auto", method: Method = "minmax"
) -> Union[pa.RecordBatch, pa.Table]:
    """Like :func:`quantize_arrow`, returning the kind it was given: a RecordBatch for a
    RecordBatch (``__arrow_c_array__``), a Table for a Table or any other stream."""

def dequantize_arrow(table: Any, *, device: Device = "auto", group_size: Optional[int] = None) -> pa.Table:
    """Expands a quantized table to `layer_name`, `weights` (list<float32>), `shape`.

    The group size comes from the `group_size` column (a given `group_size` must agree), else
    `group_size`, else the schema metadata."""

def dequantize_arrow_batch(
    batch: Any, *, device: Device = "auto", group_size: Optional[int] = None
) -> Union[pa.RecordBatch, pa.Table]:
    """Like :func:`dequantize_arrow`, returning the kind it was given."""

def quantized_schema(group_size: int = 128, method: Method = "minmax") -> pa.Schema:
    """The schema :func:`quantize_arrow` returns (with ``method="lsq"``: plus its `method`
    column and metadata entry)."""

def dequantized_schema() -> pa.Schema:
    """The schema :func:`dequantize_arrow` returns."""

def backend_name(device: Device = "auto") -> str:
    """The backend `device` resolves to, e.g. ``"cpu (rayon, 2 threads, avx512)"``; for
    ``"auto"`` followed by why (``"[auto: measured faster: cpu 41.2 GB/s, gpu (…) 9.8 GB/s …]"``).
    The first ``"auto"`` decision in a process (this call, or the first ``"auto"`` call of at
    least 2^20 values; smaller calls run on the CPU without one) looks for a GPU and, if it
    finds a hardware one, times both paths on a 16 MiB probe (cached for the process); the
    first such ``method="lsq"`` call under ``"auto"`` races the search on its own 4 MiB probe,
    and its decision is appended (``"; lsq: …"``)."""

def set_num_threads(n: int) -> None:
    """Worker threads for every later call in this process; 0 restores the default
    (``RAYON_NUM_THREADS`` when set, else one per core)."""

def get_num_threads() -> int:
    """The worker threads calls in this process use."""

GgufFileType = Literal[
    "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q3_k",
    "q4_k_s", "q4_k_m", "q4_k", "q5_k_s", "q5_k_m", "q5_k", "q6_k", "f16", "bf16", "f32",
]

def quantize_model(
    src: Union[str, PathLike],
    dst: Union[str, PathLike],
    *,
    format: Optional[Literal["arrow", "parquet", "gguf"]] = None,
    type: Optional[Union[Literal["affine"], GgufFileType]] = None,
    bit_width: int = 4,
    group_size: int = 128,
    method: Method = "minmax",
    device: Device = "auto",
    keep: Union[str, Sequence[str], None] = None,
    quantize: Union[str, Sequence[str], None] = None,
    min_cosine: Optional[float] = None,
    cosine_policy: Literal["lowest", "raise", "fail"] = "lowest",
    num_threads: int = 0,
    metadata: Optional[Mapping[str, str]] = None,
    progress: Union[bool, Callable[[int, int], Any], None] = False,
    imatrix: Union[str, PathLike, None] = None,
    pure: bool = False,
    allow_requantize: bool = False,
    leave_output_tensor: bool = False,
    output_tensor_type: Optional[str] = None,
    token_embedding_type: Optional[str] = None,
    read_ahead_mib: int = 256,
) -> pa.Table:
    """Quantizes a model tensor by tensor into an Arrow IPC, Parquet or GGUF file.

    `src`: a .safetensors file, a folder of shards with a ``*.safetensors.index.json``, a
    diffusers-style folder (tensor names get the sub-folder as prefix, ``"unet/..."``), or a
    GGUF file (F32/F16/BF16 tensors; quantized ones need `allow_requantize`).
    `format` defaults from `dst`'s extension (``.gguf`` → GGUF, ``.parquet`` → Parquet, else
    Arrow IPC). Arrow/Parquet take ``type="affine"`` (the default there). GGUF takes a
    llama.cpp file type: a mix such as ``"q4_k_m"`` (per tensor, the type llama-quantize would
    choose; from a GGUF model exactly as llama-quantize does, from a checkpoint the mix's
    default type with llama.cpp's fallbacks), or ``"q8_0"`` and the other single types
    (default q4_0, q8_0 with ``bit_width=8``, q2_k with 2). Every block is byte-identical to
    ggml's quantizer. For checkpoints, 1-D tensors, tensors of ≤ 1024 elements and rows that
    cannot be cut into blocks stay F16 (F32 if 1-D); `keep`/`quantize` globs override (for a
    GGUF model, `keep` copies tensors unchanged). `min_cosine` (affine): a per-tensor cosine
    threshold; `cosine_policy` "lowest" picks the lowest of 2/4/8 bits that reaches it, "raise"
    starts at `bit_width` and goes up, "fail" keeps `bit_width` and raises ValidationError for
    the first tensor below it (no file is written); at each bit width, `method` and then
    ``"lsq"`` are tried before more bits. `method` (affine): ``"minmax"`` or ``"lsq"`` (see
    :func:`quantize_arrow`); GGUF refuses it (its block types search on their own).
    `num_threads`: worker threads for this call
    (0: all, or `RAYON_NUM_THREADS`). `metadata`: extra key/values for the Arrow/Parquet schema
    metadata. GGUF options as in llama-quantize: `imatrix` (a
    llama-imatrix .gguf or legacy .dat file), `pure`, `allow_requantize`,
    `leave_output_tensor`, `output_tensor_type`, `token_embedding_type`.
    `progress`: True for a progress bar on stderr, or a callable(done_bytes, total_bytes)
    called after each tensor; an exception it raises (or Ctrl-C) stops the conversion. The
    output is written under a temporary name and renamed when complete; on any error no file
    is left at `dst`. The next tensors are read (from disk if need be) while the current ones
    are encoded, up to `read_ahead_mib` MiB of input ahead (0: one tensor at a time, the least
    memory); the output is the same either way.

    Returns the quality report, one row per tensor: `name`, `source_dtype`, `shape`, `format`
    ("affine", a GGUF type such as "Q4_K", "Q8_0", "F16", "F32", or "skipped"), `method`
    ("minmax" or "lsq" for affine tensors, else empty), `bit_width`,
    `reason`, `n_elements`, `source_bytes`, `output_bytes`, `cosine`, `relative_mse`,
    `snr_db`, `max_abs_error`, and for tensors quantized with ``method="lsq"`` what min/max
    gives in the same layout, `cosine_minmax` and `snr_db_minmax` (null for the others). Raises
    ValueError for bad options or corrupt models, OSError for missing or unreadable files."""

quantize_safetensors = quantize_model  # the earlier name

def read_quantized(path: Union[str, PathLike]) -> pa.Table:
    """Reads an Arrow IPC or Parquet model file written by :func:`quantize_model`: the quantized
    schema plus `source_dtype`, `format`, `cosine`, `relative_mse`, `snr_db`. Rows whose
    `format` is "F16"/"F32" hold raw little-endian values in `quantized_data`."""

def checkpoint_index(
    path: Union[str, PathLike],
) -> Tuple[List[str], List[Tuple[str, str, List[int], int, int, int]], Dict[str, str]]:
    """A safetensors checkpoint's listing, every header checked: (files, [(name, dtype, shape,
    file index, byte offset, byte length)], merged ``__metadata__``). Used by
    ``ShardedSafeTensorsLoader``."""

class QuantizationError(ValueError): ...
class ConfigurationError(ValueError): ...
class ValidationError(ValueError): ...
class ModelNotFoundError(FileNotFoundError): ...
class MetadataError(ValueError): ...
class ShapeMismatchError(ValueError): ...

def read_quant_metadata(metadata: Dict[str, str]) -> str:
    """The `arrow_quant` entries of schema metadata (the JSON key, and the `arrow_quant.<entry>`
    keys of files written before 0.3) as a JSON object. Used by ``quant_metadata``."""

def quant_metadata_entry(entries: str) -> Tuple[str, str]:
    """The (key, value) schema metadata pair holding these entries (a JSON object), as the
    native outputs write it. Used by ``with_metadata``."""

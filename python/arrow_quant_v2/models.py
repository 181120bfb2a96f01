"""The earlier package's model-level entry points, run by this package's converter.

``quantize_from_safetensors`` / ``quantize_diffusion_model`` convert a checkpoint with
:func:`quantize_model` (tensor by tensor, pipelined, written atomically) and return the earlier
result dict with measured values; ``validate_quality`` compares a quantized file with its
checkpoint; ``ShardedSafeTensorsLoader`` reads a checkpoint's tensors as memory-mapped numpy
arrays, every header checked by the native reader.
"""

from __future__ import annotations

import json
import os
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ._native import MetadataError, checkpoint_index, dequantize_arrow, quantize_model, read_quantized
from .config import MODALITIES, DiffusionQuantConfig

PathLike = Union[str, "os.PathLike[str]"]
MessageCallback = Callable[[str, float], Any]

# Written inside an output folder (the earlier package's outputs were folders).
FOLDER_OUTPUT = "model.parquet"
_FILE_SUFFIXES = (".parquet", ".arrow", ".ipc", ".feather")

_NUMPY_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}


class Cancelled(Exception):
    """Raised inside a conversion whose cancel event was set (see :mod:`arrow_quant_v2.aio`)."""


def output_file(output_path: PathLike) -> Path:
    """A path ending in .parquet/.arrow/.ipc/.feather is the file; any other is a folder (created
    if need be) that receives ``model.parquet``."""
    out = Path(output_path)
    if out.suffix.lower() in _FILE_SUFFIXES:
        return out
    if out.suffix.lower() == ".gguf":
        raise ValueError(
            f"{out}: the earlier API writes the affine format (Arrow/Parquet); for GGUF call "
            "quantize_model(src, dst, type='q4_k_m') (or another llama.cpp type)"
        )
    out.mkdir(parents=True, exist_ok=True)
    return out / FOLDER_OUTPUT


def detect_modality(model_path: PathLike, config: Optional[DiffusionQuantConfig]) -> str:
    """The config's modality, else the ``modality`` of a ``metadata.json`` beside or in the
    model (the earlier convention), else "unknown". Recorded only: it changes nothing."""
    if config is not None and config.modality is not None:
        return config.modality
    path = Path(model_path)
    meta = (path if path.is_dir() else path.parent) / "metadata.json"
    if not meta.is_file():
        return "unknown"
    try:
        modality = json.loads(meta.read_text()).get("modality")
    except (ValueError, AttributeError) as e:
        raise MetadataError(f"{meta}: not a JSON object ({e})") from None
    if modality is None:
        return "unknown"
    if modality not in MODALITIES:
        raise MetadataError(f"{meta}: unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
    return modality


def convert(
    model_path: PathLike,
    output_path: PathLike,
    config: Optional[DiffusionQuantConfig] = None,
    progress_callback: Optional[MessageCallback] = None,
    cancel: Optional[threading.Event] = None,
    device: str = "auto",
    method: str = "minmax",
) -> Dict[str, Any]:
    """Converts a checkpoint as ``config`` says; returns the earlier result dict. A callback's
    exception is reported as a warning (the earlier rule); ``cancel`` stops the conversion
    between tensors, leaving no file."""
    config = config if config is not None else DiffusionQuantConfig()
    modality = detect_modality(model_path, config)
    dst = output_file(output_path)
    # Tensor names are needed only to pick the "sensitive" ones to keep.
    names = [t[0] for t in checkpoint_index(model_path)[1]] if config.keeps_sensitive_layers else []
    warned: List[bool] = [False]

    def tell(message: str, fraction: float) -> None:
        if progress_callback is None:
            return
        try:
            progress_callback(message, fraction)
        except Exception as e:  # noqa: BLE001 - the callback's own error, reported once
            if not warned[0]:
                warnings.warn(f"progress callback raised {type(e).__name__}: {e} (ignored)", RuntimeWarning, stacklevel=3)
                warned[0] = True

    def on_progress(done: int, total: int) -> None:
        if cancel is not None and cancel.is_set():
            raise Cancelled("the conversion was cancelled")
        if 0 < done < total:
            tell(f"Quantized {done / 2**20:.1f} of {total / 2**20:.1f} MiB", done / total)

    tell("Starting quantization...", 0.0)
    started = time.perf_counter()
    report = quantize_model(model_path, dst, device=device, method=method, progress=on_progress, **config.model_options(names))
    seconds = time.perf_counter() - started
    tell("Quantization complete", 1.0)

    size = dst.stat().st_size
    source_bytes = sum(report.column("source_bytes").to_pylist())
    quantized = report.filter(pc.equal(report.column("format"), "affine"))
    cosines = quantized.column("cosine").to_pylist()
    return {
        "quantized_path": str(dst),
        "compression_ratio": source_bytes / size if size else 0.0,
        "cosine_similarity": float(np.mean(cosines)) if cosines else 1.0,
        "model_size_mb": size / 2**20,
        "modality": modality,
        "bit_width": config.bit_width,
        "quantization_time_s": seconds,
        # Beyond the earlier keys: the per-tensor report (name, format, bit width, cosine, SNR…).
        "min_cosine_similarity": float(min(cosines)) if cosines else 1.0,
        "report": report,
    }


def _quantized_file(path: PathLike) -> Path:
    p = Path(path)
    if p.is_dir():
        for name in (FOLDER_OUTPUT, "model.arrow"):
            if (p / name).is_file():
                return p / name
        found = sorted(p.glob("*.parquet")) + sorted(p.glob("*.arrow"))
        if not found:
            raise FileNotFoundError(f"{p}: no quantized .parquet or .arrow file in this folder")
        return found[0]
    return p


def _dequantized(table: pa.Table) -> Dict[str, np.ndarray]:
    """name -> float32 weights of every tensor of a quantized model file."""
    out: Dict[str, np.ndarray] = {}
    formats = table.column("format").to_pylist()
    raw = {"F16": np.float16, "F32": np.float32}
    for i, f in enumerate(formats):
        if f in raw:
            name = table.column("layer_name")[i].as_py()
            data = table.column("quantized_data")[i].as_py()
            out[name] = np.frombuffer(data, raw[f]).astype(np.float32)
    affine = table.filter(pc.equal(table.column("format"), "affine"))
    if affine.num_rows:
        expanded = dequantize_arrow(affine)
        weights = expanded.column("weights").combine_chunks()
        for i, name in enumerate(expanded.column("layer_name").to_pylist()):
            out[name] = weights[i].values.to_numpy(zero_copy_only=False)
    return out


def validate_quality(original_path: PathLike, quantized_path: PathLike, threshold: float = 0.70) -> Dict[str, Any]:
    """Per-layer cosine similarity (float64) between a checkpoint and a quantized file (or a
    folder holding one) written from it. ``passed``: every layer reaches ``threshold`` (the
    earlier validator's default, 0.70)."""
    loader = ShardedSafeTensorsLoader(original_path)
    qfile = _quantized_file(quantized_path)
    table = read_quantized(qfile)
    per_layer: Dict[str, float] = {}
    for name, restored in _dequantized(table).items():
        if name not in loader:
            raise MetadataError(f"{qfile}: tensor '{name}' is not in the checkpoint {original_path}")
        a = loader.get_float32(name).reshape(-1).astype(np.float64)
        b = restored.astype(np.float64)
        if a.shape != b.shape:
            raise MetadataError(f"tensor '{name}': {a.size} values in the checkpoint, {b.size} in {qfile}")
        norm = np.linalg.norm(a) * np.linalg.norm(b)
        per_layer[name] = float(a @ b / norm) if norm > 0 else float(np.array_equal(a, b))
    size = qfile.stat().st_size
    values = list(per_layer.values())
    return {
        "cosine_similarity": float(np.mean(values)) if values else 1.0,
        "compression_ratio": loader.get_total_size() / size if size else 0.0,
        "model_size_mb": size / 2**20,
        "per_layer_accuracy": per_layer,
        "passed": all(v >= threshold for v in values),
    }


class ShardedSafeTensorsLoader:
    """The tensors of a safetensors checkpoint (a file, a ``*.safetensors.index.json``, a folder
    of shards or a diffusers folder) as read-only numpy arrays in their own dtype, memory-mapped
    from the files (BF16 needs ``ml_dtypes``). Every header is checked by the native reader."""

    def __init__(self, index_path: PathLike) -> None:
        self.path = str(index_path)
        files, tensors, self.metadata = checkpoint_index(index_path)
        self._files: List[str] = files
        self._tensors = {name: (dtype, tuple(shape), f, start, length) for name, dtype, shape, f, start, length in tensors}
        self._maps: Dict[int, np.memmap] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def __len__(self) -> int:
        return len(self._tensors)

    def tensor_names(self) -> List[str]:
        return list(self._tensors)

    def num_shards(self) -> int:
        return len(self._files)

    def shard_files(self) -> List[str]:
        return list(self._files)

    def get_shard_for_tensor(self, tensor_name: str) -> Optional[str]:
        t = self._tensors.get(tensor_name)
        return None if t is None else self._files[t[2]]

    def get_total_size(self) -> int:
        """Bytes of tensor data in the checkpoint."""
        return sum(t[4] for t in self._tensors.values())

    def detect_modality(self) -> Optional[str]:
        """The ``modality`` of a metadata.json beside the checkpoint, if any."""
        m = detect_modality(self.path, None)
        return None if m == "unknown" else m

    def _map(self, f: int) -> np.memmap:
        if f not in self._maps:
            self._maps[f] = np.memmap(self._files[f], dtype=np.uint8, mode="r")
        return self._maps[f]

    def _raw(self, name: str):
        if name not in self._tensors:
            raise KeyError(f"tensor '{name}' is not in {self.path}")
        dtype, shape, f, start, length = self._tensors[name]
        return dtype, shape, self._map(f)[start : start + length]

    def get_tensor(self, name: str) -> np.ndarray:
        dtype, shape, data = self._raw(name)
        if dtype == "BF16":
            try:
                import ml_dtypes
            except ImportError:
                raise ImportError(f"tensor '{name}' is bfloat16; numpy has no such dtype: pip install ml_dtypes (or use get_float32)") from None
            np_dtype = np.dtype(ml_dtypes.bfloat16)
        elif dtype in _NUMPY_DTYPES:
            np_dtype = np.dtype(_NUMPY_DTYPES[dtype]).newbyteorder("<")
        else:
            raise TypeError(f"tensor '{name}' has dtype {dtype}, which numpy cannot hold")
        return data.view(np_dtype).reshape(shape)

    def get_float32(self, name: str) -> np.ndarray:
        """The tensor as float32 (BF16 widened exactly, without ml_dtypes)."""
        dtype, shape, data = self._raw(name)
        if dtype == "BF16":
            return (data.view("<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)
        return self.get_tensor(name).astype(np.float32)

    def get_all_tensors(self) -> Dict[str, np.ndarray]:
        return {name: self.get_tensor(name) for name in self._tensors}

    def clear_cache(self) -> None:
        """Drops the file mappings (arrays already returned keep theirs)."""
        self._maps.clear()

    def cache_memory_usage(self) -> int:
        """Always 0: tensors are mapped from the files, not cached in memory."""
        return 0


def load_sharded_safetensors(index_path: PathLike) -> ShardedSafeTensorsLoader:
    return ShardedSafeTensorsLoader(index_path)

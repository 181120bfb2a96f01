"""``DiffusionQuantConfig``: the earlier package's configuration object, mapped onto what this
package really does.

Every keyword of the earlier constructor is accepted with its earlier default. The settings this
package implements change the conversion (see :meth:`DiffusionQuantConfig.model_options`):

========================================  ==================================================
setting                                   effect here
========================================  ==================================================
``bit_width``, ``group_size``             the affine format's bit width and group size
``min_accuracy``                          per-tensor cosine threshold: a tensor below it is
                                          re-quantized at the next bit width (up to 8), or,
                                          with ``fail_fast=True``, fails the conversion
                                          (``ValidationError``, no file written)
``skip_sensitive_layers``,                tensors named like embeddings, norms, heads,
``enable_mixed_precision``                outputs and poolers are kept in float16
``num_threads``                           worker threads for the conversion (0: all cores)
``max_memory_limit_mb``                   bounds the read-ahead (half of it, in MiB)
========================================  ==================================================

All other settings (time groups, spatial/time-aware switches, calibration samples, the
thermodynamic/Markov/entropy weights, SIMD switches, streaming) are validated, recorded in the
output's metadata (``config`` in the ``arrow_quant`` metadata) and have no effect: this package has one exact
group-wise scheme, always streams tensor by tensor, and always uses the fastest kernels.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, Iterable, List, Optional

from ._native import ConfigurationError

PROFILES = ("edge", "local", "cloud")
MODALITIES = ("text", "code", "image", "audio")
BETA_SCHEDULES = ("linear", "cosine")

# The earlier package's list of sensitive layer names (substrings, lower case).
SENSITIVE_PATTERNS = ("embed", "embedding", ".wte.", ".wpe.", "norm", "ln_", "layernorm", "lm_head", ".head.", "output", "pooler")

# The earlier constructor's keywords and defaults, in its order.
_DEFAULTS: Dict[str, Any] = {
    "bit_width": 4,
    "modality": None,
    "num_time_groups": 10,
    "group_size": 128,
    "enable_time_aware": True,
    "enable_spatial": True,
    "min_accuracy": 0.85,
    "calibration_samples": 128,
    "deployment_profile": "local",
    "fail_fast": False,
    "enable_entropy_adaptation": True,
    "enable_transition_optimization": False,
    "markov_weight": 0.1,
    "entropy_weight": 0.05,
    "learning_rate": 0.01,
    "max_iterations": 50,
    "convergence_threshold": 1e-4,
    "beta_schedule": "linear",
    "num_threads": 0,
    "enable_streaming": True,
    "enable_memory_aware_scheduling": True,
    "max_memory_limit_mb": None,
    "enable_mixed_precision": False,
    "skip_sensitive_layers": False,
    "enable_simd": True,
    "simd_threshold": 128,
}

# The earlier profiles' values (DiffusionQuantConfig::from_profile); other fields as above,
# except entropy adaptation, which every earlier profile turned off.
_PROFILES: Dict[str, Dict[str, Any]] = {
    "edge": {"bit_width": 2, "num_time_groups": 5, "group_size": 256, "enable_spatial": False, "min_accuracy": 0.65, "calibration_samples": 32},
    "local": {"bit_width": 4, "num_time_groups": 10, "group_size": 128, "enable_spatial": True, "min_accuracy": 0.85, "calibration_samples": 128},
    "cloud": {"bit_width": 8, "num_time_groups": 20, "group_size": 64, "enable_spatial": True, "min_accuracy": 0.95, "calibration_samples": 512},
}

# The earlier ARROW_QUANT_* overrides (DiffusionQuantConfig::apply_env_overrides).
ENV_OVERRIDES = {
    "ARROW_QUANT_BIT_WIDTH": ("bit_width", int),
    "ARROW_QUANT_NUM_TIME_GROUPS": ("num_time_groups", int),
    "ARROW_QUANT_GROUP_SIZE": ("group_size", int),
    "ARROW_QUANT_MIN_ACCURACY": ("min_accuracy", float),
    "ARROW_QUANT_CALIBRATION_SAMPLES": ("calibration_samples", int),
    "ARROW_QUANT_FAIL_FAST": ("fail_fast", "bool"),
    "ARROW_QUANT_NUM_THREADS": ("num_threads", int),
    "ARROW_QUANT_ENABLE_STREAMING": ("enable_streaming", "bool"),
    "ARROW_QUANT_ENABLE_MEMORY_AWARE": ("enable_memory_aware_scheduling", "bool"),
    "ARROW_QUANT_MAX_MEMORY_MB": ("max_memory_limit_mb", int),
}

# Settings that change what the conversion does; the rest are recorded only.
IMPLEMENTED = ("bit_width", "group_size", "min_accuracy", "fail_fast", "skip_sensitive_layers", "enable_mixed_precision", "num_threads", "max_memory_limit_mb")


def _parse_env(name: str, raw: str, kind: Any) -> Any:
    if kind == "bool":
        # Rust's bool parser, as the earlier package used: exactly "true" or "false".
        if raw in ("true", "false"):
            return raw == "true"
        raise ConfigurationError(f"{name}={raw!r}: expected 'true' or 'false'")
    try:
        return kind(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r}: expected {'an integer' if kind is int else 'a number'}") from None


class DiffusionQuantConfig:
    """Quantization settings of the earlier API, validated at construction.

    Raises ``ConfigurationError`` (a ``ValueError``) for a value out of range: bit_width not 2/4/8,
    a group size this package's format refuses, num_time_groups outside 1..100, min_accuracy
    outside [0, 1], an unknown deployment profile, modality or beta schedule, and the earlier
    checks of the optimization weights.
    """

    def __init__(
        self,
        bit_width: int = 4,
        modality: Optional[str] = None,
        num_time_groups: int = 10,
        group_size: int = 128,
        enable_time_aware: bool = True,
        enable_spatial: bool = True,
        min_accuracy: float = 0.85,
        calibration_samples: int = 128,
        deployment_profile: str = "local",
        fail_fast: bool = False,
        enable_entropy_adaptation: bool = True,
        enable_transition_optimization: bool = False,
        markov_weight: float = 0.1,
        entropy_weight: float = 0.05,
        learning_rate: float = 0.01,
        max_iterations: int = 50,
        convergence_threshold: float = 1e-4,
        beta_schedule: str = "linear",
        num_threads: int = 0,
        enable_streaming: bool = True,
        enable_memory_aware_scheduling: bool = True,
        max_memory_limit_mb: Optional[int] = None,
        enable_mixed_precision: bool = False,
        skip_sensitive_layers: bool = False,
        enable_simd: bool = True,
        simd_threshold: int = 128,
    ) -> None:
        values = dict(locals())
        del values["self"]
        self.__dict__.update(values)
        self.validate()

    @staticmethod
    def from_profile(profile: str) -> "DiffusionQuantConfig":
        """The earlier deployment profiles: "edge" (2-bit, g256), "local" (4-bit, g128) and
        "cloud" (8-bit, g64), with their accuracy thresholds and calibration sizes."""
        if profile not in _PROFILES:
            raise ConfigurationError(f"Invalid deployment profile: {profile!r}. Must be 'edge', 'local', or 'cloud'")
        return DiffusionQuantConfig(**{**_DEFAULTS, "enable_entropy_adaptation": False, **_PROFILES[profile], "deployment_profile": profile})

    def apply_env_overrides(self) -> "DiffusionQuantConfig":
        """Applies the earlier ``ARROW_QUANT_*`` environment variables (``ARROW_QUANT_BIT_WIDTH``,
        ``_GROUP_SIZE``, ``_MIN_ACCURACY``, ``_NUM_THREADS``, ``_FAIL_FAST``, …) to this config,
        as the earlier ``apply_env_overrides`` did, and returns it. Unlike the earlier package,
        a value that does not parse or is out of range raises ``ConfigurationError`` naming the
        variable instead of being ignored."""
        for var, (field, kind) in ENV_OVERRIDES.items():
            raw = os.environ.get(var)
            if raw is not None:
                setattr(self, field, _parse_env(var, raw, kind))
        try:
            self.validate()
        except ConfigurationError as e:
            raise ConfigurationError(f"after the ARROW_QUANT_* environment overrides: {e}") from None
        return self

    def validate(self) -> None:
        """Checks every field; raises ``ConfigurationError`` for the first one out of range."""

        def bad(message: str) -> None:
            raise ConfigurationError(message)

        if self.bit_width not in (2, 4, 8) or isinstance(self.bit_width, bool):
            bad(f"Invalid bit width: {self.bit_width}. Must be 2, 4, or 8")
        if not isinstance(self.group_size, int) or self.group_size <= 0 or self.group_size % 8:
            bad(f"Invalid group size: {self.group_size}. Must be a positive multiple of 8 (the earlier package allowed 32, 64, 128 or 256)")
        if not 1 <= self.num_time_groups <= 100:
            bad(f"Invalid number of time groups: {self.num_time_groups}. Must be between 1 and 100")
        if not 0.0 <= self.min_accuracy <= 1.0:
            bad(f"Invalid accuracy threshold: {self.min_accuracy}. Must be between 0.0 and 1.0")
        if self.deployment_profile not in PROFILES:
            bad("Invalid deployment profile. Must be 'edge', 'local', or 'cloud'")
        if self.modality is not None and self.modality not in MODALITIES:
            bad("Invalid modality. Must be 'text', 'code', 'image', or 'audio'")
        if self.beta_schedule not in BETA_SCHEDULES:
            bad("Invalid beta_schedule. Must be 'linear' or 'cosine'")
        if self.calibration_samples < 0:
            bad(f"calibration_samples must be non-negative, got {self.calibration_samples}")
        if self.markov_weight < 0:
            bad(f"markov_weight must be non-negative, got {self.markov_weight}")
        if self.entropy_weight < 0:
            bad(f"entropy_weight must be non-negative, got {self.entropy_weight}")
        if not 0.0 < self.learning_rate <= 1.0:
            bad(f"learning_rate must be in range (0.0, 1.0], got {self.learning_rate}")
        if self.max_iterations <= 0:
            bad("max_iterations must be greater than 0")
        if not self.convergence_threshold > 0:
            bad(f"convergence_threshold must be positive, got {self.convergence_threshold}")
        if self.num_threads < 0:
            bad(f"num_threads must be 0 (all cores) or positive, got {self.num_threads}")
        if self.max_memory_limit_mb is not None and self.max_memory_limit_mb <= 0:
            bad(f"max_memory_limit_mb must be positive or None, got {self.max_memory_limit_mb}")
        if self.simd_threshold < 0:
            bad(f"simd_threshold must be non-negative, got {self.simd_threshold}")

    def to_dict(self) -> Dict[str, Any]:
        """Every setting, by the earlier keyword names."""
        return {k: getattr(self, k) for k in _DEFAULTS}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DiffusionQuantConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        changed = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items() if v != _DEFAULTS[k])
        return f"DiffusionQuantConfig({changed})"

    @property
    def keeps_sensitive_layers(self) -> bool:
        return bool(self.skip_sensitive_layers or self.enable_mixed_precision)

    def sensitive_layers(self, names: Iterable[str]) -> List[str]:
        """The tensors ``skip_sensitive_layers`` / ``enable_mixed_precision`` keep in float16:
        the earlier rule, a case-insensitive substring match on :data:`SENSITIVE_PATTERNS`."""
        if not self.keeps_sensitive_layers:
            return []
        return [n for n in names if any(p in n.lower() for p in SENSITIVE_PATTERNS)]

    def model_options(self, tensor_names: Iterable[str] = ()) -> Dict[str, Any]:
        """The keyword arguments of :func:`arrow_quant_v2.quantize_model` this config stands for,
        for a model with these tensors."""
        self.validate()
        options: Dict[str, Any] = {
            "bit_width": self.bit_width,
            "group_size": self.group_size,
            "num_threads": self.num_threads,
            "metadata": {"config": json.dumps(self.to_dict(), sort_keys=True)},
        }
        if self.min_accuracy > 0:
            options["min_cosine"] = self.min_accuracy
            options["cosine_policy"] = "fail" if self.fail_fast else "raise"
        keep = self.sensitive_layers(tensor_names)
        if keep:
            # Exact names as globs: the metacharacters are escaped as one-character classes.
            options["keep"] = [re.sub(r"([][*?{}])", r"[\1]", n) for n in keep]
        if self.max_memory_limit_mb is not None:
            # The pipeline holds about twice its read-ahead budget (see quantize_model).
            options["read_ahead_mib"] = max(1, self.max_memory_limit_mb // 2)
        return options

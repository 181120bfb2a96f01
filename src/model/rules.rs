//! Which tensors are quantized and which stay in high precision.
//!
//! Defaults follow llama.cpp's and ComfyUI-GGUF's converters: 1-D tensors, tensors of at most
//! 1024 elements and (for GGUF blocks) tensors whose row length is not a multiple of 32 stay
//! F16 (F32 when 1-D). `--keep GLOB` forces high precision, `--quantize GLOB` forces
//! quantization where the format allows it; `--keep` wins when both match.

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::error::{QuantError, Result};
use crate::gguf::GgmlType;

/// Elements at or below which a tensor is kept.
pub const SMALL_TENSOR: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Quantize,
    /// Stored as F16 or F32.
    Keep(GgmlType),
    /// Not a float tensor; left out of the output.
    Skip,
}

#[derive(Clone, Debug)]
pub struct Decision {
    pub action: Action,
    pub reason: String,
}

pub struct Rules {
    keep: GlobSet,
    quantize: GlobSet,
    /// Rows must be a multiple of this to be quantized (32 for GGUF blocks, 1 for affine).
    row_multiple: usize,
}

fn globs(patterns: &[String]) -> Result<GlobSet> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(Glob::new(p).map_err(|e| QuantError::value(format!("invalid glob {p:?}: {e}")))?);
    }
    b.build().map_err(|e| QuantError::value(format!("invalid globs: {e}")))
}

impl Rules {
    pub fn new(keep: &[String], quantize: &[String], row_multiple: usize) -> Result<Self> {
        Ok(Self { keep: globs(keep)?, quantize: globs(quantize)?, row_multiple })
    }

    fn row_problem(&self, row: usize) -> String {
        if row < 32 {
            format!("row length {row} is shorter than 32")
        } else {
            format!("row length {row} is not a multiple of {}", self.row_multiple)
        }
    }

    /// Whether `name` matches a `--keep` glob.
    pub fn keeps(&self, name: &str) -> bool {
        self.keep.is_match(name)
    }

    pub fn decide(&self, name: &str, shape: &[usize], is_float: bool) -> Decision {
        let keep_ty = if shape.len() <= 1 { GgmlType::F32 } else { GgmlType::F16 };
        let n: usize = shape.iter().product();
        let row = shape.last().copied().unwrap_or(1);
        let d = |action, reason: String| Decision { action, reason };
        if !is_float {
            return d(Action::Skip, "not a floating-point tensor".into());
        }
        if n == 0 {
            return d(Action::Keep(keep_ty), "empty tensor".into());
        }
        if self.keep.is_match(name) {
            return d(Action::Keep(keep_ty), "matches --keep".into());
        }
        // Rows shorter than 32 would cost more in per-group scales than they save (affine), or
        // cannot be cut into 32-element blocks (GGUF).
        let fits = row % self.row_multiple == 0 && row >= 32;
        if self.quantize.is_match(name) {
            return if fits {
                d(Action::Quantize, "matches --quantize".into())
            } else {
                d(Action::Keep(keep_ty), format!("matches --quantize, but {}", self.row_problem(row)))
            };
        }
        if shape.len() <= 1 {
            d(Action::Keep(keep_ty), "1-D tensor".into())
        } else if n <= SMALL_TENSOR {
            d(Action::Keep(keep_ty), format!("{n} elements (<= {SMALL_TENSOR})"))
        } else if !fits {
            d(Action::Keep(keep_ty), self.row_problem(row))
        } else {
            d(Action::Quantize, "default".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let r = Rules::new(&["*.norm.weight".into()], &["*.bias".into()], 32).unwrap();
        assert_eq!(r.decide("a.bias", &[4096], true).action, Action::Quantize);
        assert_eq!(r.decide("a.other", &[4096], true).action, Action::Keep(GgmlType::F32));
        assert_eq!(r.decide("x", &[32, 32], true).action, Action::Keep(GgmlType::F16));
        assert_eq!(r.decide("conv", &[64, 64, 3, 3], true).action, Action::Keep(GgmlType::F16));
        assert_eq!(r.decide("w", &[64, 64], true).action, Action::Quantize);
        assert_eq!(r.decide("l.norm.weight", &[64, 64], true).action, Action::Keep(GgmlType::F16));
        assert_eq!(r.decide("ids", &[64, 64], false).action, Action::Skip);
        let affine = Rules::new(&[], &[], 1).unwrap();
        assert_eq!(affine.decide("conv", &[64, 64, 3, 3], true).action, Action::Keep(GgmlType::F16));
        assert_eq!(affine.decide("w", &[64, 40], true).action, Action::Quantize);
    }
}

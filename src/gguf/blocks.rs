//! Compatibility shim: the block formats now live in [`crate::quant::ggml`].

pub use crate::quant::ggml::GgmlType;

/// Elements per block in the 32-element formats.
pub const QK: usize = 32;

/// Quantizes `x` (a multiple of 32 elements, any row split) into `out`.
pub fn quantize(ty: GgmlType, x: &[f32], out: &mut [u8]) {
    crate::quant::ggml::quantize(ty, x, x.len(), None, out).expect("valid block data")
}

/// Expands blocks (or F32/F16/BF16 data) of `ty` into `out`.
pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut [f32]) {
    crate::quant::ggml::dequantize(ty, data, out).expect("valid block data")
}

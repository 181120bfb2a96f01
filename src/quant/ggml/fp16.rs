//! The half-precision conversions ggml's quantizers use (`GGML_FP32_TO_FP16`,
//! `GGML_FP16_TO_FP32`, `GGML_FP32_TO_BF16`), bit for bit.
//!
//! f32 → f16 rounds to nearest, ties to even, overflows to ±inf and keeps subnormals — what
//! `half` does — except that ggml turns every NaN into the one quiet NaN `0x7E00` (with its
//! sign), where `half` would keep payload bits.

use half::f16;

#[inline]
pub fn f32_to_f16_bits(v: f32) -> u16 {
    if v.is_nan() {
        ((v.to_bits() >> 16) as u16 & 0x8000) | 0x7E00
    } else {
        f16::from_f32(v).to_bits()
    }
}

#[inline]
pub fn f16_bits_to_f32(h: u16) -> f32 {
    f16::from_bits(h).to_f32()
}

/// `x` rounded to f16 and back, as a block's stored scale is read back by ggml.
#[inline]
pub fn round_f16(v: f32) -> f32 {
    f16_bits_to_f32(f32_to_f16_bits(v))
}

/// ggml's f32 → bf16: round to nearest even on the bits; a NaN keeps its upper bits and is
/// made quiet.
#[inline]
pub fn f32_to_bf16_bits(v: f32) -> u16 {
    let u = v.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// bf16 → f32 is exact: the bits shifted up (NaN payloads kept, signalling ones included, as
/// ggml keeps them; `half` would quiet them).
#[inline]
pub fn bf16_bits_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_rounds_to_nearest_even_and_canonicalizes_nan() {
        assert_eq!(f32_to_f16_bits(1.0), 0x3C00);
        assert_eq!(f32_to_f16_bits(65520.0), 0x7C00); // rounds up to inf
        assert_eq!(f32_to_f16_bits(65519.0), 0x7BFF);
        assert_eq!(f32_to_f16_bits(-0.0), 0x8000);
        assert_eq!(f32_to_f16_bits(f32::from_bits(0x7fc1_2345)), 0x7E00);
        assert_eq!(f32_to_f16_bits(f32::from_bits(0xffc0_0001)), 0xFE00);
        // 2^-25 is exactly half the smallest subnormal: ties to even (0)
        assert_eq!(f32_to_f16_bits(2f32.powi(-25)), 0);
        assert_eq!(f32_to_f16_bits(3.0 * 2f32.powi(-25)), 2);
    }

    #[test]
    fn bf16_decodes_every_pattern_exactly() {
        assert_eq!(bf16_bits_to_f32(0x7fb1).to_bits(), 0x7fb1_0000); // a signalling NaN stays one
        assert_eq!(bf16_bits_to_f32(0x3F80), 1.0);
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(f32_to_bf16_bits(1.0), 0x3F80);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3F80_8000)), 0x3F80); // tie, even stays
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3F81_8000)), 0x3F82); // tie, odd rounds up
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x7f80_0001)), 0x7fc0);
    }
}

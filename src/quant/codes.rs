//! The per-element step of the contract, in both directions.

/// `clamp(round_half_to_even((w − lo) × inv), 0, max_code)`.
///
/// `w ≥ lo` and `inv ≥ 0` hold for every element of a validated group, so the product is never
/// negative and the lower clamp is implicit.
#[inline(always)]
pub fn quantize_value(w: f32, lo: f32, inv: f32, max_code: u32) -> u8 {
    let t = (w - lo) * inv;
    t.round_ties_even().min(max_code as f32) as u8
}

/// `q × scale + lo` as two separately rounded `f32` operations (Rust never contracts them into
/// a fused multiply-add on its own).
#[inline(always)]
pub fn dequantize_value(q: u8, scale: f32, lo: f32) -> f32 {
    let product = q as f32 * scale;
    product + lo
}

//! The CPU inner loops for a run of consecutive groups, written so that LLVM vectorizes them
//! (fixed-size chunks, branch-free selects, no float→int conversion): the portable flavour
//! (`cpu::Portable`). The AVX2 and AVX-512 flavours (`avx2`, `avx512`) share their tails
//! (`encode_tail`, `decode_tail`) and `finish_scan`. `lsq`'s evaluation has no copy here: the
//! portable flavour runs the definition's own loops (`lsq::Plain`).
//!
//! They compute exactly the contract of [`crate::quant`]:
//! * min/max use IEEE comparisons, exact for every finite value; the only case where they are
//!   ambiguous (a minimum of ±0) is settled by a rescan in the total order, as the reference
//!   does.
//! * `round_half_to_even(t)` for `0 ≤ t < 2^23` is computed as `(t + 2^23)`: the addition rounds
//!   to an integer, ties to even, and the integer is the low mantissa bits.

use crate::quant::params::order_key;
use crate::quant::GroupParams;

const LANES: usize = 16;
pub const MAGIC: f32 = 8_388_608.0; // 2^23
pub const MAGIC_BITS: u32 = 0x4b00_0000;

/// What a group scan found: its range, or the offset of its first non-finite value.
pub enum Scan {
    Range { lo: f32, hi: f32 },
    NonFinite,
}

#[inline(always)]
pub fn scan(values: &[f32]) -> Scan {
    let mut lo = [f32::INFINITY; LANES];
    let mut hi = [f32::NEG_INFINITY; LANES];
    // Bit 31 of `(bits & exp_mask) + 2^23` is set exactly when the exponent is all ones.
    let mut bad = [0u32; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for j in 0..LANES {
            let v = c[j];
            lo[j] = if v < lo[j] { v } else { lo[j] };
            hi[j] = if v > hi[j] { v } else { hi[j] };
            bad[j] |= (v.to_bits() & 0x7f80_0000) + 0x0080_0000;
        }
    }
    for (j, &v) in rest.iter().enumerate() {
        lo[j] = if v < lo[j] { v } else { lo[j] };
        hi[j] = if v > hi[j] { v } else { hi[j] };
        bad[j] |= (v.to_bits() & 0x7f80_0000) + 0x0080_0000;
    }
    // A tree, not a running fold: the lanes reduce in parallel instead of one long chain of
    // dependent compares (which cost as much as the scan itself for a group of 128).
    let mut width = LANES / 2;
    while width > 0 {
        for j in 0..width {
            lo[j] = if lo[j + width] < lo[j] { lo[j + width] } else { lo[j] };
            hi[j] = if hi[j + width] > hi[j] { hi[j + width] } else { hi[j] };
            bad[j] |= bad[j + width];
        }
        width /= 2;
    }
    finish_scan(lo[0], hi[0], bad[0], values)
}

/// The group's scan result from its reduced minimum, maximum and non-finite flags. The order
/// in which lanes were reduced does not matter: the minimum and maximum of finite values are
/// unique, except that -0.0 and +0.0 compare equal, which is settled here.
#[inline(always)]
pub fn finish_scan(lo: f32, hi: f32, bad: u32, values: &[f32]) -> Scan {
    if bad & 0x8000_0000 != 0 {
        return Scan::NonFinite;
    }
    let (mut l, h) = (lo, hi);
    if l == 0.0 {
        // -0.0 and +0.0 compare equal; the contract's minimum is the total-order one.
        l = values.iter().map(|&v| order_key(v)).min().map(crate::quant::params::from_order_key).unwrap_or(l);
    }
    Scan::Range { lo: l, hi: h }
}

/// The code of `w` on the grid `(lo, inv)`. `LOW` adds the lower clamp (`t ≤ 0` gives code 0),
/// which a grid that may start above some of its values needs (`lsq`'s); min/max's starts at
/// the group's minimum, so its `t` is never below `+0`.
#[inline(always)]
fn code<const LOW: bool>(w: f32, lo: f32, inv: f32, max_code: u32) -> u32 {
    let t = (w - lo) * inv;
    let t = if LOW && !(t > 0.0) { 0.0 } else { t };
    let q = (t + MAGIC).to_bits().wrapping_sub(MAGIC_BITS);
    if q > max_code { max_code } else { q }
}

/// Codes of one group packed into `out` (`⌈len·B/8⌉` bytes); `LOW` as for [`code`].
#[inline(always)]
pub fn encode<const B: usize, const LOW: bool>(values: &[f32], p: &GroupParams, out: &mut [u8]) {
    let max_code = (1u32 << B) - 1;
    let chunks = values.chunks_exact(32);
    let rest = chunks.remainder();
    // A tail group's bytes are not a whole number of 32-code chunks, so split by codes.
    let (full, tail) = out.split_at_mut(values.len() / 32 * 4 * B);
    for (c, o) in chunks.zip(full.chunks_exact_mut(4 * B)) {
        let mut q = [0u8; 32];
        for i in 0..32 {
            q[i] = code::<LOW>(c[i], p.lo, p.inv, max_code) as u8;
        }
        pack32::<B>(&q, o);
    }
    encode_tail::<B, LOW>(rest, p, tail);
}

/// The codes after the last full 32-code chunk of a group, one at a time.
#[inline(always)]
pub fn encode_tail<const B: usize, const LOW: bool>(rest: &[f32], p: &GroupParams, tail: &mut [u8]) {
    if rest.is_empty() {
        // The common case (groups of whole 32-code chunks): no call to `memset` for nothing.
        return;
    }
    let max_code = (1u32 << B) - 1;
    tail.fill(0);
    for (i, &w) in rest.iter().enumerate() {
        tail[i * B / 8] |= (code::<LOW>(w, p.lo, p.inv, max_code) << ((i * B) % 8)) as u8;
    }
}

/// Packs 32 codes into `4·B` bytes. Neighbouring codes are read as one little-endian word
/// and folded with shifts, which vectorizes (no strided gathers).
#[inline(always)]
pub fn pack32<const B: usize>(q: &[u8; 32], out: &mut [u8]) {
    match B {
        8 => out.copy_from_slice(q),
        4 => {
            for (o, pair) in out.iter_mut().zip(q.chunks_exact(2)) {
                let w = u16::from_le_bytes([pair[0], pair[1]]);
                *o = (w | (w >> 4)) as u8;
            }
        }
        _ => {
            for (o, quad) in out.iter_mut().zip(q.chunks_exact(4)) {
                let x = u32::from_le_bytes([quad[0], quad[1], quad[2], quad[3]]);
                *o = (x | (x >> 6) | (x >> 12) | (x >> 18)) as u8;
            }
        }
    }
}

/// Expands one group's codes back to `f32`.
#[inline(always)]
pub fn decode<const B: usize>(packed: &[u8], scale: f32, lo: f32, out: &mut [f32]) {
    let mask = (1u32 << B) - 1;
    let per_byte = 8 / B;
    let (full, tail_bytes) = packed.split_at(out.len() / 32 * 4 * B);
    let mut chunks = out.chunks_exact_mut(32);
    for (o, c) in (&mut chunks).zip(full.chunks_exact(4 * B)) {
        for i in 0..32 {
            let q = (c[i / per_byte] as u32 >> ((i % per_byte) * B)) & mask;
            let product = q as f32 * scale;
            o[i] = product + lo;
        }
    }
    decode_tail::<B>(tail_bytes, scale, lo, chunks.into_remainder());
}

/// Expands codes packed from the start of `packed` into `out`, one at a time.
#[inline(always)]
pub fn decode_tail<const B: usize>(packed: &[u8], scale: f32, lo: f32, out: &mut [f32]) {
    let mask = (1u32 << B) - 1;
    for (i, w) in out.iter_mut().enumerate() {
        let q = (packed[i * B / 8] as u32 >> ((i * B) % 8)) & mask;
        let product = q as f32 * scale;
        *w = product + lo;
    }
}

/// Dispatches a const-generic kernel on the runtime bit width.
macro_rules! with_bits {
    ($bits:expr, $($f:ident)::+ ( $($arg:expr),* )) => {
        match $bits {
            $crate::quant::BitWidth::B2 => $($f)::+::<2>($($arg),*),
            $crate::quant::BitWidth::B4 => $($f)::+::<4>($($arg),*),
            $crate::quant::BitWidth::B8 => $($f)::+::<8>($($arg),*),
        }
    };
}
pub(crate) use with_bits;

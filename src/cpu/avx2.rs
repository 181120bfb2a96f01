//! AVX2 versions of the hot group kernels (`scan`, `encode`, `decode`), for x86-64 CPUs that have it
//! (checked at run time by `cpu::mod`). They compute exactly what `kernels` computes, eight
//! lanes at a time; the tests compare both against the scalar reference.
//!
//! The only `unsafe` here is unaligned (or masked) loads and stores through pointers into
//! slices whose length was checked by `chunks_exact`.

use std::arch::x86_64::*;

use super::kernels::{decode_tail, encode_tail, finish_scan, Scan};
use crate::quant::lsq::{Evaluation, Grid};
use crate::quant::GroupParams;

#[target_feature(enable = "avx2")]
#[inline]
fn load(c: &[f32]) -> __m256 {
    debug_assert_eq!(c.len(), 8);
    // SAFETY: `c` holds 8 f32 (callers pass `chunks_exact(8)` pieces); loadu needs no alignment.
    unsafe { _mm256_loadu_ps(c.as_ptr()) }
}

/// Min, max and a non-finite check in one pass (see `kernels::scan`).
#[target_feature(enable = "avx2")]
pub fn scan(values: &[f32]) -> Scan {
    let mut lo = _mm256_set1_ps(f32::INFINITY);
    let mut hi = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut bad = _mm256_setzero_si256();
    let exp_mask = _mm256_set1_epi32(0x7f80_0000);
    let exp_one = _mm256_set1_epi32(0x0080_0000);
    let chunks = values.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        let v = load(c);
        // min_ps(a, b) is `a < b ? a : b`: exact for finite values; ±0 ties are settled later.
        lo = _mm256_min_ps(v, lo);
        hi = _mm256_max_ps(v, hi);
        bad = _mm256_or_si256(bad, _mm256_add_epi32(_mm256_and_si256(_mm256_castps_si256(v), exp_mask), exp_one));
    }
    if !rest.is_empty() {
        // The tail in a masked load, its missing lanes filled with the group's first value,
        // which changes neither the minimum, the maximum nor the non-finite flag.
        let n = rest.len() as i32;
        let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        // SAFETY: maskload reads only the lanes whose mask bit is set, the `rest.len()` values
        // that `rest` holds; the others are not touched (no fault past the slice).
        let loaded = unsafe { _mm256_maskload_ps(rest.as_ptr(), mask) };
        let v = _mm256_blendv_ps(_mm256_set1_ps(values[0]), loaded, _mm256_castsi256_ps(mask));
        lo = _mm256_min_ps(v, lo);
        hi = _mm256_max_ps(v, hi);
        bad = _mm256_or_si256(bad, _mm256_add_epi32(_mm256_and_si256(_mm256_castps_si256(v), exp_mask), exp_one));
    }
    // Tree reductions across the lanes (see `finish_scan` for why their order does not matter).
    let lo4 = _mm_min_ps(_mm256_castps256_ps128(lo), _mm256_extractf128_ps(lo, 1));
    let hi4 = _mm_max_ps(_mm256_castps256_ps128(hi), _mm256_extractf128_ps(hi, 1));
    let lo2 = _mm_min_ps(lo4, _mm_movehl_ps(lo4, lo4));
    let hi2 = _mm_max_ps(hi4, _mm_movehl_ps(hi4, hi4));
    let l = _mm_cvtss_f32(_mm_min_ss(lo2, _mm_shuffle_ps(lo2, lo2, 1)));
    let h = _mm_cvtss_f32(_mm_max_ss(hi2, _mm_shuffle_ps(hi2, hi2, 1)));
    let b4 = _mm_or_si128(_mm256_castsi256_si128(bad), _mm256_extracti128_si256(bad, 1));
    let b2 = _mm_or_si128(b4, _mm_unpackhi_epi64(b4, b4));
    let b1 = _mm_or_si128(b2, _mm_srli_epi64(b2, 32));
    finish_scan(l, h, _mm_cvtsi128_si32(b1) as u32, values)
}

/// Codes of eight values: `min(round_half_even((v - lo) * inv), L)`, clamped as unsigned.
#[target_feature(enable = "avx2")]
#[inline]
fn codes8<const LOW: bool>(v: __m256, lo: __m256, inv: __m256, max_code: __m256i) -> __m256i {
    let t = _mm256_mul_ps(_mm256_sub_ps(v, lo), inv);
    // `LOW` (see `kernels::code`): `t ≤ 0` becomes `+0`, by an integer max on the bits (every
    // negative float, −0.0 too, is a negative integer); `t` is never NaN.
    let t = if LOW { _mm256_castsi256_ps(_mm256_max_epi32(_mm256_castps_si256(t), _mm256_setzero_si256())) } else { t };
    // `t` is ≥ +0 (min/max: v ≥ lo, inv finite and ≥ 0, `GroupParams::from_range`; `LOW`: the
    // clamp above) and not NaN. There `cvtps2dq` rounds half to even (Rust never changes
    // MXCSR's mode), exactly what the 2^23 trick of `kernels::encode` does below 2^23; above,
    // both give a number ≥ L as unsigned (`cvtps2dq` gives 0x8000_0000 past 2^31 and for
    // +inf), which the clamp turns into L. One instruction less than the trick.
    let q = _mm256_cvtps_epi32(t);
    _mm256_min_epu32(q, max_code)
}

/// Codes of one group packed into `out`, 32 codes per step.
#[target_feature(enable = "avx2")]
pub fn encode<const B: usize, const LOW: bool>(values: &[f32], p: &GroupParams, out: &mut [u8]) {
    let lo = _mm256_set1_ps(p.lo);
    let inv = _mm256_set1_ps(p.inv);
    let max_code = _mm256_set1_epi32((1 << B) - 1);
    // packus interleaves 128-bit lanes; this puts the 32 codes back in element order.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let chunks = values.chunks_exact(32);
    let rest = chunks.remainder();
    let (full, tail) = out.split_at_mut(values.len() / 32 * 4 * B);
    for (c, o) in chunks.zip(full.chunks_exact_mut(4 * B)) {
        let q0 = codes8::<LOW>(load(&c[0..8]), lo, inv, max_code);
        let q1 = codes8::<LOW>(load(&c[8..16]), lo, inv, max_code);
        let q2 = codes8::<LOW>(load(&c[16..24]), lo, inv, max_code);
        let q3 = codes8::<LOW>(load(&c[24..32]), lo, inv, max_code);
        let bytes = _mm256_permutevar8x32_epi32(
            _mm256_packus_epi16(_mm256_packus_epi32(q0, q1), _mm256_packus_epi32(q2, q3)),
            order,
        );
        match B {
            // SAFETY (all three stores): `o` holds exactly 4·B bytes, the width stored.
            8 => unsafe { _mm256_storeu_si256(o.as_mut_ptr().cast(), bytes) },
            4 => {
                // Each 16-bit word holds codes 2j and 2j+1; fold the high one into bits 4..8.
                let folded = _mm256_and_si256(_mm256_or_si256(bytes, _mm256_srli_epi16(bytes, 4)), _mm256_set1_epi16(0xff));
                let packed = _mm256_permute4x64_epi64(_mm256_packus_epi16(folded, folded), 0b1000);
                unsafe { _mm_storeu_si128(o.as_mut_ptr().cast(), _mm256_castsi256_si128(packed)) }
            }
            _ => {
                // Each 32-bit word holds codes 4j..4j+4 in its bytes; fold them into one byte.
                let x = bytes;
                let folded = _mm256_and_si256(
                    _mm256_or_si256(
                        _mm256_or_si256(x, _mm256_srli_epi32(x, 6)),
                        _mm256_or_si256(_mm256_srli_epi32(x, 12), _mm256_srli_epi32(x, 18)),
                    ),
                    _mm256_set1_epi32(0xff),
                );
                let words = _mm256_packus_epi16(_mm256_packus_epi32(folded, folded), _mm256_setzero_si256());
                let packed = _mm256_permutevar8x32_epi32(words, order);
                unsafe { _mm_storel_epi64(o.as_mut_ptr().cast(), _mm256_castsi256_si128(packed)) }
            }
        }
    }
    encode_tail::<B, LOW>(rest, p, tail);
}

/// Expands one group's codes back to `f32`, eight codes per step: the `B` bytes that hold
/// them are broadcast to eight lanes and each lane shifts its own code down. The product and
/// the sum are separate instructions (two roundings, as the contract says; no FMA).
#[target_feature(enable = "avx2")]
pub fn decode<const B: usize>(packed: &[u8], scale: f32, lo: f32, out: &mut [f32]) {
    let scale_v = _mm256_set1_ps(scale);
    let lo_v = _mm256_set1_ps(lo);
    let mask = _mm256_set1_epi32((1 << B) - 1);
    let shifts = _mm256_setr_epi32(0, B as i32, 2 * B as i32, 3 * B as i32, 4 * B as i32, 5 * B as i32, 6 * B as i32, 7 * B as i32);
    let (full, tail_bytes) = packed.split_at(out.len() / 8 * B);
    let mut chunks = out.chunks_exact_mut(8);
    for (o, c) in (&mut chunks).zip(full.chunks_exact(B)) {
        let codes = if B == 8 {
            _mm256_cvtepu8_epi32(_mm_set_epi64x(0, i64::from_le_bytes(c.try_into().expect("8 bytes"))))
        } else {
            let mut word = [0u8; 4];
            word[..B].copy_from_slice(c);
            _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(i32::from_le_bytes(word)), shifts), mask)
        };
        let w = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(codes), scale_v), lo_v);
        // SAFETY: `o` holds 8 f32 (`chunks_exact_mut(8)`); storeu needs no alignment.
        unsafe { _mm256_storeu_ps(o.as_mut_ptr(), w) };
    }
    decode_tail::<B>(tail_bytes, scale, lo, chunks.into_remainder());
}

/// A grid's constants, broadcast, for `lsq`'s step 2 on eight values at a time.
#[derive(Clone, Copy)]
struct GridRegs {
    zero: __m256,
    inv: __m256,
    scale: __m256,
    max_code: __m256,
}

impl GridRegs {
    #[target_feature(enable = "avx2")]
    #[inline]
    fn new(g: &Grid, max_code: f32) -> Self {
        Self { zero: _mm256_set1_ps(g.zero), inv: _mm256_set1_ps(g.inv), scale: _mm256_set1_ps(g.scale), max_code: _mm256_set1_ps(max_code) }
    }

    /// The codes of `w` as floats and their errors (see `avx512::GridRegs::code_error`: the
    /// same integer clamps on the bit patterns, and `round` to nearest-even in place of the
    /// definition's `(t + 2^23) − 2^23`; no FMA).
    #[target_feature(enable = "avx2")]
    #[inline]
    fn code_error(&self, w: __m256) -> (__m256, __m256) {
        let t = _mm256_castps_si256(_mm256_mul_ps(_mm256_sub_ps(w, self.zero), self.inv));
        let t = _mm256_castsi256_ps(_mm256_min_epi32(_mm256_max_epi32(t, _mm256_setzero_si256()), _mm256_castps_si256(self.max_code)));
        let q = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
        (q, _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(q, self.scale), self.zero), w))
    }
}

/// The group's values as the definition's sixteen lanes, two registers of eight (lanes 0–7 and
/// 8–15): whole chunks, then the tail (if any) padded with `+0.0`, with a mask per register
/// that is all ones in the lanes the tail fills. A term and'ed with its mask is `+0.0` in
/// the other lanes, which changes no partial sum (none is ever `−0.0`), as defined.
#[target_feature(enable = "avx2")]
#[inline]
fn for_each16(values: &[f32], mut f: impl FnMut([__m256; 2], [__m256; 2])) {
    let chunks = values.chunks_exact(16);
    let rest = chunks.remainder();
    let all = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    for c in chunks {
        f([load(&c[..8]), load(&c[8..])], [all, all]);
    }
    if !rest.is_empty() {
        let mut tail = [0f32; 16];
        tail[..rest.len()].copy_from_slice(rest);
        let n = _mm256_set1_epi32(rest.len() as i32);
        let on = |first: i32| _mm256_castsi256_ps(_mm256_cmpgt_epi32(n, _mm256_setr_epi32(first, first + 1, first + 2, first + 3, first + 4, first + 5, first + 6, first + 7)));
        f([load(&tail[..8]), load(&tail[8..])], [on(0), on(8)]);
    }
}

/// `lsq::evaluate`: the four sums per lane, then the lanes folded as the definition's tree,
/// two sums per instruction past the first level.
#[target_feature(enable = "avx2")]
#[inline]
pub fn lsq_evaluate(values: &[f32], g: &Grid, max_code: f32) -> Evaluation {
    let grid = GridRegs::new(g, max_code);
    let z = _mm256_setzero_ps();
    let (mut sse, mut sq, mut sqq, mut sqw) = ([z; 2], [z; 2], [z; 2], [z; 2]);
    for_each16(values, |w, on| {
        for h in 0..2 {
            let (q, e) = grid.code_error(w[h]);
            sse[h] = _mm256_add_ps(sse[h], _mm256_and_ps(_mm256_mul_ps(e, e), on[h]));
            sq[h] = _mm256_add_ps(sq[h], _mm256_and_ps(q, on[h]));
            sqq[h] = _mm256_add_ps(sqq[h], _mm256_and_ps(_mm256_mul_ps(q, q), on[h]));
            sqw[h] = _mm256_add_ps(sqw[h], _mm256_and_ps(_mm256_mul_ps(q, w[h]), on[h]));
        }
    });
    // Lanes j and j + 8 (the two registers), then j and j + 4 (the two halves of a register,
    // two sums per instruction), then j and j + 2, then j and j + 1.
    let (a, b, c, d) = (_mm256_add_ps(sse[0], sse[1]), _mm256_add_ps(sq[0], sq[1]), _mm256_add_ps(sqq[0], sqq[1]), _mm256_add_ps(sqw[0], sqw[1]));
    let ab = _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(a, b), _mm256_permute2f128_ps::<0x31>(a, b));
    let cd = _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(c, d), _mm256_permute2f128_ps::<0x31>(c, d));
    let two = |x: __m256| _mm256_add_ps(x, _mm256_shuffle_ps::<0b01_00_11_10>(x, x));
    let one = |x: __m256| _mm256_add_ps(x, _mm256_shuffle_ps::<0b10_11_00_01>(x, x));
    let (ab, cd) = (one(two(ab)), one(two(cd)));
    let mut lanes = [0f32; 16];
    // SAFETY: `lanes` holds 16 f32; storeu needs no alignment.
    unsafe {
        _mm256_storeu_ps(lanes.as_mut_ptr(), ab);
        _mm256_storeu_ps(lanes.as_mut_ptr().add(8), cd);
    }
    Evaluation { sse: lanes[0], sq: lanes[4], sqq: lanes[8], sqw: lanes[12] }
}

/// `lsq::evaluate`'s `sse` alone.
#[target_feature(enable = "avx2")]
#[inline]
pub fn lsq_sse(values: &[f32], g: &Grid, max_code: f32) -> f32 {
    let grid = GridRegs::new(g, max_code);
    let mut sse = [_mm256_setzero_ps(); 2];
    for_each16(values, |w, on| {
        for h in 0..2 {
            let (_, e) = grid.code_error(w[h]);
            sse[h] = _mm256_add_ps(sse[h], _mm256_and_ps(_mm256_mul_ps(e, e), on[h]));
        }
    });
    let a = _mm256_add_ps(sse[0], sse[1]);
    let b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
    let c = _mm_add_ps(b, _mm_movehl_ps(b, b));
    _mm_cvtss_f32(_mm_add_ss(c, _mm_movehdup_ps(c)))
}

//! AVX-512 versions of the hot group kernels (`scan`, `encode`, `decode`), sixteen lanes at a
//! time, for x86-64 CPUs that have AVX-512F (checked at run time by `cpu::mod`).
//! They compute exactly what `kernels` computes (same comparisons, the same round-half-even,
//! no FMA); the tests compare every flavour against the scalar reference.
//!
//! What AVX-512 buys over AVX2 here, besides the width: the narrowing moves (`vpmovdb`,
//! `vpmovqb`) turn codes into bytes in one instruction, where AVX2 needs two packs and a
//! lane-crossing permute per 32 codes.
//!
//! The only `unsafe` is unaligned (or masked) loads and stores through pointers into slices
//! whose length was checked by `chunks_exact`.

use std::arch::x86_64::*;

use super::kernels::{decode_tail, encode_tail, finish_scan, Scan};
use crate::quant::lsq::{Evaluation, Grid};
use crate::quant::GroupParams;

#[target_feature(enable = "avx512f")]
#[inline]
fn load(c: &[f32]) -> __m512 {
    debug_assert_eq!(c.len(), 16);
    // SAFETY: `c` holds 16 f32 (callers pass `chunks_exact(16)` pieces); loadu needs no alignment.
    unsafe { _mm512_loadu_ps(c.as_ptr()) }
}

/// Min, max and a non-finite check in one pass (see `kernels::scan`).
#[target_feature(enable = "avx512f")]
#[inline]
pub fn scan(values: &[f32]) -> Scan {
    let mut lo = _mm512_set1_ps(f32::INFINITY);
    let mut hi = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut bad = _mm512_setzero_si512();
    let exp_mask = _mm512_set1_epi32(0x7f80_0000);
    let exp_one = _mm512_set1_epi32(0x0080_0000);
    let chunks = values.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        let v = load(c);
        // min_ps(a, b) is `a < b ? a : b`, as in AVX2: exact for finite values; ±0 ties are
        // settled by `finish_scan`.
        lo = _mm512_min_ps(v, lo);
        hi = _mm512_max_ps(v, hi);
        bad = _mm512_or_si512(bad, _mm512_add_epi32(_mm512_and_si512(_mm512_castps_si512(v), exp_mask), exp_one));
    }
    if !rest.is_empty() {
        // The tail in a masked load; its missing lanes repeat the group's first value, which
        // changes neither the minimum, the maximum nor the non-finite flag.
        let mask: __mmask16 = (1 << rest.len()) - 1;
        // SAFETY: the mask only enables the `rest.len()` lanes that `rest` holds; disabled
        // lanes are not read (no fault past the slice).
        let v = unsafe { _mm512_mask_loadu_ps(_mm512_set1_ps(values[0]), mask, rest.as_ptr()) };
        lo = _mm512_min_ps(v, lo);
        hi = _mm512_max_ps(v, hi);
        bad = _mm512_or_si512(bad, _mm512_add_epi32(_mm512_and_si512(_mm512_castps_si512(v), exp_mask), exp_one));
    }
    // Tree reductions (see `finish_scan` for why their order does not matter).
    finish_scan(_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi), _mm512_reduce_or_epi32(bad) as u32, values)
}

/// Codes of sixteen values: `min(round_half_even((v - lo) * inv), L)`, clamped as unsigned.
#[target_feature(enable = "avx512f")]
#[inline]
fn codes16<const LOW: bool>(v: __m512, lo: __m512, inv: __m512, max_code: __m512i) -> __m512i {
    let t = _mm512_mul_ps(_mm512_sub_ps(v, lo), inv);
    // `LOW` (see `kernels::code`): `t ≤ 0` becomes `+0`, by an integer max on the bits (every
    // negative float, −0.0 too, is a negative integer); `t` is never NaN.
    let t = if LOW { _mm512_castsi512_ps(_mm512_max_epi32(_mm512_castps_si512(t), _mm512_setzero_si512())) } else { t };
    // `t` is ≥ +0 (min/max: v ≥ lo, inv finite and ≥ 0, `GroupParams::from_range`; `LOW`: the
    // clamp above) and not NaN. There `cvtps2dq` rounds half to even (Rust never changes
    // MXCSR's mode), exactly what the 2^23 trick of `kernels::encode` does below 2^23; above,
    // both give a number ≥ L as unsigned (`cvtps2dq` gives 0x8000_0000 past 2^31 and for
    // +inf), which the clamp turns into L. One instruction less than the trick.
    let q = _mm512_cvtps_epi32(t);
    _mm512_min_epu32(q, max_code)
}

/// Codes of one group packed into `out`, 32 codes (`4·B` bytes) per step. The two halves are
/// narrowed in registers and joined before one store: a narrowing move straight to memory
/// (`vpmovqb m64`) is several times slower than the register form.
#[target_feature(enable = "avx512f")]
pub fn encode<const B: usize, const LOW: bool>(values: &[f32], p: &GroupParams, out: &mut [u8]) {
    let lo = _mm512_set1_ps(p.lo);
    let inv = _mm512_set1_ps(p.inv);
    let max_code = _mm512_set1_epi32((1 << B) - 1);
    let chunks = values.chunks_exact(32);
    let rest = chunks.remainder();
    let (full, tail) = out.split_at_mut(values.len() / 32 * 4 * B);
    for (c, o) in chunks.zip(full.chunks_exact_mut(4 * B)) {
        let q0 = codes16::<LOW>(load(&c[..16]), lo, inv, max_code);
        let q1 = codes16::<LOW>(load(&c[16..]), lo, inv, max_code);
        match B {
            8 => {
                let bytes = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm512_cvtepi32_epi8(q0)), _mm512_cvtepi32_epi8(q1), 1);
                // SAFETY: `o` holds exactly 32 bytes; storeu needs no alignment.
                unsafe { _mm256_storeu_si256(o.as_mut_ptr().cast(), bytes) }
            }
            4 => {
                // Codes 2j and 2j+1 share a 64-bit lane; shifting it right by 28 puts code
                // 2j+1 at bits 4..8 of the low byte, which `vpmovqb` keeps.
                let b0 = _mm512_cvtepi64_epi8(_mm512_or_si512(q0, _mm512_srli_epi64(q0, 28)));
                let b1 = _mm512_cvtepi64_epi8(_mm512_or_si512(q1, _mm512_srli_epi64(q1, 28)));
                // SAFETY: `o` holds exactly 16 bytes; storeu needs no alignment.
                unsafe { _mm_storeu_si128(o.as_mut_ptr().cast(), _mm_unpacklo_epi64(b0, b1)) }
            }
            _ => {
                // As for 4 bits (pairs of 2-bit codes in the low nibbles), then the sixteen
                // nibbles fold pairwise into bytes.
                let n0 = _mm512_cvtepi64_epi8(_mm512_or_si512(q0, _mm512_srli_epi64(q0, 30)));
                let n1 = _mm512_cvtepi64_epi8(_mm512_or_si512(q1, _mm512_srli_epi64(q1, 30)));
                let nibbles = _mm_unpacklo_epi64(n0, n1);
                let folded = _mm_and_si128(_mm_or_si128(nibbles, _mm_srli_epi16(nibbles, 4)), _mm_set1_epi16(0xff));
                // SAFETY: `o` holds exactly 8 bytes; storel needs no alignment.
                unsafe { _mm_storel_epi64(o.as_mut_ptr().cast(), _mm_packus_epi16(folded, folded)) }
            }
        }
    }
    encode_tail::<B, LOW>(rest, p, tail);
}

/// Expands one group's codes back to `f32`, sixteen codes (`2·B` bytes) per step: each lane
/// gets the byte that holds its code (a byte shuffle), then shifts its own code down. The
/// product and the sum are separate instructions (two roundings, as the contract says).
#[target_feature(enable = "avx512f")]
pub fn decode<const B: usize>(packed: &[u8], scale: f32, lo: f32, out: &mut [f32]) {
    let scale_v = _mm512_set1_ps(scale);
    let lo_v = _mm512_set1_ps(lo);
    let mask = _mm512_set1_epi32((1 << B) - 1);
    // Lane i reads byte i·B/8 and shifts it by (i·B) mod 8.
    let (spread, shifts) = match B {
        8 => (_mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_setzero_si512()),
        4 => (
            _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7),
            _mm512_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4),
        ),
        _ => (
            _mm_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3),
            _mm512_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6, 0, 2, 4, 6, 0, 2, 4, 6),
        ),
    };
    let (full, tail_bytes) = packed.split_at(out.len() / 16 * 2 * B);
    let mut chunks = out.chunks_exact_mut(16);
    for (o, c) in (&mut chunks).zip(full.chunks_exact(2 * B)) {
        let mut bytes = [0u8; 16];
        bytes[..2 * B].copy_from_slice(c);
        // SAFETY: `bytes` holds 16 bytes; loadu needs no alignment.
        let raw = unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) };
        let lanes = _mm512_cvtepu8_epi32(_mm_shuffle_epi8(raw, spread));
        let codes = _mm512_and_si512(_mm512_srlv_epi32(lanes, shifts), mask);
        let w = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(codes), scale_v), lo_v);
        // SAFETY: `o` holds 16 f32 (`chunks_exact_mut(16)`); storeu needs no alignment.
        unsafe { _mm512_storeu_ps(o.as_mut_ptr(), w) };
    }
    decode_tail::<B>(tail_bytes, scale, lo, chunks.into_remainder());
}

/// A grid's constants, broadcast, for `lsq`'s step 2 on sixteen values at a time.
#[derive(Clone, Copy)]
struct GridRegs {
    zero: __m512,
    inv: __m512,
    scale: __m512,
    max_code: __m512,
}

impl GridRegs {
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn new(g: &Grid, max_code: f32) -> Self {
        Self { zero: _mm512_set1_ps(g.zero), inv: _mm512_set1_ps(g.inv), scale: _mm512_set1_ps(g.scale), max_code: _mm512_set1_ps(max_code) }
    }

    /// The codes of `w` as floats, `round_half_even(clamp((w − zero) × inv, 0, L))`, and their
    /// errors `(q × scale + zero) − w`, product and sum rounded separately (no FMA), as defined.
    /// The clamps compare bit patterns as signed integers: `t` is never NaN, every negative
    /// float (−0.0 too) is a negative integer, and non-negative floats order like their bits;
    /// so `max_epi32(t, 0)` is the definition's `t > 0 ? t : +0.0` and `min_epi32(t, L)` its
    /// `t < L ? t : L`. They run on the integer vector pipes, where the float `min`/`max` would
    /// compete with the evaluation's seven additions for the float-add ones (7% faster,
    /// measured). `roundscale` rounds to nearest-even in one instruction: the same integer as
    /// the definition's `(t + 2^23) − 2^23` for `0 ≤ t ≤ 255`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn code_error(&self, w: __m512) -> (__m512, __m512) {
        let t = _mm512_castps_si512(_mm512_mul_ps(_mm512_sub_ps(w, self.zero), self.inv));
        let t = _mm512_castsi512_ps(_mm512_min_epi32(_mm512_max_epi32(t, _mm512_setzero_si512()), _mm512_castps_si512(self.max_code)));
        let q = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
        (q, _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(q, self.scale), self.zero), w))
    }
}

/// The group's values sixteen at a time: whole chunks, then the tail (if any) as a masked
/// load with its mask. The lanes past the tail read as `+0.0`; their terms are masked off.
#[target_feature(enable = "avx512f")]
#[inline]
fn for_each16(values: &[f32], mut f: impl FnMut(__m512, __mmask16)) {
    let chunks = values.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        f(load(c), 0xffff);
    }
    if !rest.is_empty() {
        let mask: __mmask16 = (1 << rest.len()) - 1;
        // SAFETY: the mask only enables the `rest.len()` lanes that `rest` holds; disabled
        // lanes are not read.
        f(unsafe { _mm512_maskz_loadu_ps(mask, rest.as_ptr()) }, mask);
    }
}

/// `lsq::evaluate`: the four sums per lane (lane `j` gets elements `j, j + 16, …`; a masked-off
/// lane adds nothing, as the definition's `+0.0` changes no partial sum), then the lanes folded
/// as the definition's tree, all four sums at once.
#[target_feature(enable = "avx512f")]
#[inline]
pub fn lsq_evaluate(values: &[f32], g: &Grid, max_code: f32) -> Evaluation {
    let grid = GridRegs::new(g, max_code);
    let (mut sse, mut sq, mut sqq, mut sqw) = (_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps());
    for_each16(values, |w, on| {
        let (q, e) = grid.code_error(w);
        sse = _mm512_mask_add_ps(sse, on, sse, _mm512_mul_ps(e, e));
        sq = _mm512_mask_add_ps(sq, on, sq, q);
        sqq = _mm512_mask_add_ps(sqq, on, sqq, _mm512_mul_ps(q, q));
        sqw = _mm512_mask_add_ps(sqw, on, sqw, _mm512_mul_ps(q, w));
    });
    // The tree, level by level, two or four sums per instruction: lanes j and j + 8, then
    // j and j + 4 (of what is left), then j and j + 2, then j and j + 1.
    let a = _mm512_add_ps(_mm512_shuffle_f32x4::<0b01_00_01_00>(sse, sq), _mm512_shuffle_f32x4::<0b11_10_11_10>(sse, sq));
    let b = _mm512_add_ps(_mm512_shuffle_f32x4::<0b01_00_01_00>(sqq, sqw), _mm512_shuffle_f32x4::<0b11_10_11_10>(sqq, sqw));
    // a = [sse 8 lanes, sq 8 lanes], b = [sqq, sqw]; each block of four below is one sum's.
    let c = _mm512_add_ps(_mm512_shuffle_f32x4::<0b10_00_10_00>(a, b), _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b));
    let d = _mm512_add_ps(c, _mm512_shuffle_ps::<0b01_00_11_10>(c, c));
    let e = _mm512_add_ps(d, _mm512_shuffle_ps::<0b10_11_00_01>(d, d));
    let mut lanes = [0f32; 16];
    // SAFETY: `lanes` holds 16 f32; storeu needs no alignment.
    unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), e) };
    Evaluation { sse: lanes[0], sq: lanes[4], sqq: lanes[8], sqw: lanes[12] }
}

/// `lsq::evaluate`'s `sse` alone.
#[target_feature(enable = "avx512f")]
#[inline]
pub fn lsq_sse(values: &[f32], g: &Grid, max_code: f32) -> f32 {
    let grid = GridRegs::new(g, max_code);
    let mut sse = _mm512_setzero_ps();
    for_each16(values, |w, on| {
        let (_, e) = grid.code_error(w);
        sse = _mm512_mask_add_ps(sse, on, sse, _mm512_mul_ps(e, e));
    });
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(sse)));
    let a = _mm256_add_ps(_mm512_castps512_ps256(sse), hi);
    let b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
    let c = _mm_add_ps(b, _mm_movehl_ps(b, b));
    _mm_cvtss_f32(_mm_add_ss(c, _mm_movehdup_ps(c)))
}

//! ggml's 32-element block formats Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0.
//!
//! Without an importance matrix these are ggml's `quantize_row_*_ref`: one scale (and min) per
//! block from its extremes, codes by C's truncating float → int conversion (`c_trunc`). With
//! one they are `quantize_row_*_impl`: the scale searches of [`super::search`], weighted by
//! `qw * sqrt(sigma2 + x²)` where `sigma2` is the mean square of the whole row.
//!
//! Each encoder takes the blocks of `V::N` lanes (`x[i]` = element `i` of every lane's block)
//! and writes `V::N` consecutive blocks.

use super::fp16::{f16_bits_to_f32, f32_to_f16_bits};
use super::lanes::{as_i8, build, lanes_of, IntLanes, Lanes};
use super::search::{make_qkx_quants, make_qx_quants, signed_absmax, Error, Grid};

pub const QK: usize = 32;

/// The grid `quantize_row_q{4,5}_1_impl` search with (`make_qkx3_quants(..., -0.9f, 0.05f, 36)`).
const IMATRIX_GRID: Grid = Grid { rmin: -0.9, rdelta: 0.05, nstep: 36 };

fn put_f16(out: &mut [u8], at: usize, v: f32) {
    out[at..at + 2].copy_from_slice(&f32_to_f16_bits(v).to_le_bytes());
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16_bits_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// `qw[i] * sqrtf(sigma2 + x[i]*x[i])`: the weights of every `_impl` search.
#[inline(always)]
fn imatrix_weights<V: Lanes>(x: &[V], qw: &[V], sigma2: V) -> [V; QK] {
    build!(V::splat(0.0); QK, |i| qw[i] * (sigma2 + x[i] * x[i]).sqrt())
}

/// ggml's `(max - min)` block extremes (`if (v < min) min = v; if (v > max) max = v;`).
#[inline(always)]
fn min_max<V: Lanes>(x: &[V]) -> (V, V) {
    let (mut min, mut max) = (V::splat(f32::MAX), V::splat(-f32::MAX));
    for &v in x {
        min = V::select(v.lt(min), v, min);
        max = V::select(v.gt(max), v, max);
    }
    (min, max)
}

/// `d ? 1.0f/d : 0.0f`.
#[inline(always)]
fn inverse<V: Lanes>(d: V) -> V {
    let zero = V::splat(0.0);
    V::select(d.ne(zero), V::splat(1.0) / d, zero)
}

/// Q4_0 = {f16 d; u8 qs[16]}: symmetric, `d = max / -8`, byte `j` holds codes `j` and `j+16`.
#[inline(always)]
pub fn encode_q4_0<V: Lanes>(x: &[V], qw: Option<&[V]>, sigma2: V, out: &mut [u8]) {
    const BYTES: usize = 18;
    let codes = encode_symmetric(8, x, qw, sigma2, out, BYTES);
    V::Int::store_bytes(&nibbles(&codes), &mut out[2..], BYTES);
}

/// Q4_0 and Q5_0: `d = max / -half` from the signed extreme (`_ref`) or the weighted
/// `make_qx_quants` search (`_impl`). Writes `d` of each block and returns the codes.
#[inline(always)]
fn encode_symmetric<V: Lanes>(half: i32, x: &[V], qw: Option<&[V]>, sigma2: V, out: &mut [u8], bytes: usize) -> [V::Int; QK] {
    let mut codes = [V::Int::splat(0); QK];
    let d = match qw {
        None => {
            let (_, max) = signed_absmax(x);
            let d = max / V::splat(-(half as f32));
            let id = inverse(d);
            for j in 0..QK {
                // MIN(2*half-1, (int8_t)(x*id + half + 0.5f)), stored in a uint8_t
                let q = (x[j] * id + V::splat(half as f32 + 0.5)).trunc();
                codes[j] = as_i8(q).imin(V::Int::splat(2 * half - 1));
            }
            d
        }
        Some(qw) => make_qx_quants(half, x, &mut codes, Some(&imatrix_weights(x, qw, sigma2))),
    };
    put_f16s(out, bytes, 0, d);
    codes
}

/// Byte `j` holds code `j` in its low nibble and code `j+16` in its high one (the C stores
/// keep the low 8 bits).
#[inline(always)]
fn nibbles<I: IntLanes>(codes: &[I; QK]) -> [I; QK / 2] {
    build!(I::splat(0); QK / 2, |j| codes[j].or(codes[j + QK / 2].shl(4)))
}

/// Q4_1 = {f16 d; f16 m; u8 qs[16]}: `x ≈ d*q + m`, `q ∈ [0, 15]`.
#[inline(always)]
pub fn encode_q4_1<V: Lanes>(x: &[V], qw: Option<&[V]>, sigma2: V, out: &mut [u8]) {
    const BYTES: usize = 20;
    let codes = encode_affine(15, x, qw, sigma2, out, BYTES);
    V::Int::store_bytes(&nibbles(&codes), &mut out[4..], BYTES);
}

/// Q5_1 = {f16 d; f16 m; u32 qh; u8 qs[16]}: `x ≈ d*q + m`, `q ∈ [0, 31]`, the fifth bits in `qh`.
#[inline(always)]
pub fn encode_q5_1<V: Lanes>(x: &[V], qw: Option<&[V]>, sigma2: V, out: &mut [u8]) {
    const BYTES: usize = 24;
    let codes = encode_affine(31, x, qw, sigma2, out, BYTES);
    V::Int::store_bytes(&pack_q5(&codes), &mut out[4..], BYTES);
}

/// Q4_1 and Q5_1: min/max extremes (`_ref`) or the weighted `make_qkx3_quants` search (`_impl`).
/// Writes `d` and `m` of each block and returns the codes.
#[inline(always)]
fn encode_affine<V: Lanes>(nmax: i32, x: &[V], qw: Option<&[V]>, sigma2: V, out: &mut [u8], bytes: usize) -> [V::Int; QK] {
    let mut codes = [V::Int::splat(0); QK];
    let (d, m) = match qw {
        None => {
            let (min, max) = min_max(x);
            let d = (max - min) / V::splat(nmax as f32);
            let id = inverse(d);
            for j in 0..QK {
                let q = ((x[j] - min) * id + V::splat(0.5)).trunc();
                // Q4_1: MIN(15, (int8_t)v); Q5_1: (uint8_t)v — both stored in a uint8_t
                codes[j] = if nmax == 15 { as_i8(q).imin(V::Int::splat(15)) } else { q };
            }
            (d, min)
        }
        Some(qw) => {
            let w = imatrix_weights(x, qw, sigma2);
            let (d, the_min) = make_qkx_quants(nmax, x, &w, &mut codes, IMATRIX_GRID, Error::Squared);
            (d, -the_min)
        }
    };
    put_f16s(out, bytes, 0, d);
    put_f16s(out, bytes, 2, m);
    codes
}

/// The Q5 body: the little-endian `u32 qh` with bit 4 of code `j` at bit `j`, then the low
/// nibbles as in Q4.
#[inline(always)]
fn pack_q5<I: IntLanes>(codes: &[I; QK]) -> [I; 4 + QK / 2] {
    let (one, low4) = (I::splat(1), I::splat(0x0f));
    let mut qh = I::splat(0);
    for j in 0..QK {
        qh = qh.or(codes[j].shr(4).and(one).shl(j as u32));
    }
    build!(I::splat(0); 4 + QK / 2, |k| match k {
        0..4 => qh.shr(8 * k as u32),
        _ => codes[k - 4].and(low4).or(codes[k - 4 + QK / 2].and(low4).shl(4)),
    })
}

/// Q5_0 = {f16 d; u32 qh; u8 qs[16]}: symmetric, `d = max / -16`.
#[inline(always)]
pub fn encode_q5_0<V: Lanes>(x: &[V], qw: Option<&[V]>, sigma2: V, out: &mut [u8]) {
    const BYTES: usize = 22;
    let codes = encode_symmetric(16, x, qw, sigma2, out, BYTES);
    V::Int::store_bytes(&pack_q5(&codes), &mut out[2..], BYTES);
}

/// Q8_0 = {f16 d; i8 qs[32]}: `d = amax / 127`, codes `roundf(x*id)` (ties away from zero).
/// ggml ignores the importance matrix for Q8_0.
#[inline(always)]
pub fn encode_q8_0<V: Lanes>(x: &[V], out: &mut [u8]) {
    const BYTES: usize = 34;
    let mut amax = V::splat(0.0);
    for &v in x {
        let a = v.abs();
        amax = V::select(amax.gt(a), amax, a); // MAX(amax, fabsf(v))
    }
    let d = amax / V::splat(127.0);
    let id = inverse(d);
    let codes = build!(V::Int::splat(0); QK, |j| (x[j] * id).round().trunc());
    put_f16s(out, BYTES, 0, d);
    V::Int::store_bytes(&codes, &mut out[2..], BYTES);
}

/// Each lane's `v` as f16 at byte `at` of its block.
#[inline(always)]
pub(super) fn put_f16s<V: Lanes>(out: &mut [u8], bytes: usize, at: usize, v: V) {
    let v = lanes_of(v);
    for b in 0..V::N {
        put_f16(&mut out[b * bytes..], at, v[b]);
    }
}

/// Expands Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 blocks as ggml's `dequantize_row_*` do.
pub fn decode(ty: super::GgmlType, data: &[u8], out: &mut [f32]) {
    use super::GgmlType as T;
    let (_, bytes) = ty.block();
    for (b, y) in data.chunks_exact(bytes).zip(out.chunks_exact_mut(QK)) {
        let d = f16_at(b, 0);
        match ty {
            T::Q4_0 => {
                for j in 0..QK / 2 {
                    y[j] = ((b[2 + j] & 0x0f) as i32 - 8) as f32 * d;
                    y[j + QK / 2] = ((b[2 + j] >> 4) as i32 - 8) as f32 * d;
                }
            }
            T::Q4_1 => {
                let m = f16_at(b, 2);
                for j in 0..QK / 2 {
                    y[j] = (b[4 + j] & 0x0f) as f32 * d + m;
                    y[j + QK / 2] = (b[4 + j] >> 4) as f32 * d + m;
                }
            }
            T::Q5_0 | T::Q5_1 => {
                let (m, at) = if ty == T::Q5_1 { (Some(f16_at(b, 2)), 4) } else { (None, 2) };
                let qh = u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
                let qs = &b[at + 4..at + 4 + QK / 2];
                for j in 0..QK / 2 {
                    let h0 = (((qh >> j) << 4) & 0x10) as i32;
                    let h1 = ((qh >> (j + 12)) & 0x10) as i32;
                    let (q0, q1) = ((qs[j] & 0x0f) as i32 | h0, (qs[j] >> 4) as i32 | h1);
                    match m {
                        Some(m) => {
                            y[j] = q0 as f32 * d + m;
                            y[j + QK / 2] = q1 as f32 * d + m;
                        }
                        None => {
                            y[j] = (q0 - 16) as f32 * d;
                            y[j + QK / 2] = (q1 - 16) as f32 * d;
                        }
                    }
                }
            }
            T::Q8_0 => {
                for j in 0..QK {
                    y[j] = (b[2 + j] as i8) as f32 * d;
                }
            }
            _ => unreachable!("not a 32-element block type: {ty}"),
        }
    }
}

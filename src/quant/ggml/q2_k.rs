//! Q2_K: super-blocks of 256 weights in sixteen sub-blocks of 16, `x ≈ d*sc*q - dmin*m` with
//! 2-bit codes and 4-bit sub-block scales and mins (`quantize_row_q2_K_ref` / `_impl`).

use super::fp16::{f16_bits_to_f32, f32_to_f16_bits};
use super::lanes::{build, nearest_int, rows_of, IntLanes, Lanes};
use super::search::{make_qkx_quants, qp_scales_and_mins, Error, Grid};
use super::lanes::MAX_LANES;
use super::QK_K;

pub const BYTES: usize = 84;

/// Packs 256 two-bit codes as ggml's Q2_K and Q3_K do: byte `l` of each 32-byte group holds the
/// codes `l`, `l+32`, `l+64` and `l+96` of its 128 weights, lowest bits first.
/// The codes must be 0..3.
#[inline(always)]
pub fn pack_2bit<I: IntLanes>(l: &[I; QK_K]) -> [I; 64] {
    build!(I::splat(0); 64, |q| {
        let (j, k) = (128 * (q / 32), q % 32);
        l[j + k].or(l[j + k + 32].shl(2)).or(l[j + k + 64].shl(4)).or(l[j + k + 96].shl(6))
    })
}

/// Encodes `V::N` super-blocks (`x[i]` = element `i` of each lane's block; `qw` likewise).
#[inline(always)]
pub fn encode<V: Lanes>(x: &[V], qw: Option<&[V]>, out: &mut [u8]) {
    let zero = V::splat(0.0);
    let mut codes = [V::Int::splat(0); QK_K];
    let mut scales = [zero; 16];
    let mut mins = [zero; 16];
    let mut sw = [zero; 16];
    let mut weights = [zero; 16];

    let sigma2 = match qw {
        Some(_) => {
            let mut sumx2 = zero;
            for &v in x {
                sumx2 = sumx2 + v * v;
            }
            sumx2 / V::splat(QK_K as f32)
        }
        None => zero,
    };
    for j in 0..16 {
        let xs = &x[16 * j..16 * (j + 1)];
        let (grid, error) = match qw {
            Some(qw) => {
                let mut s = zero;
                for l in 0..16 {
                    weights[l] = qw[16 * j + l] * (sigma2 + xs[l] * xs[l]).sqrt();
                    s = s + weights[l];
                }
                sw[j] = s;
                (Grid { rmin: -0.9, rdelta: 0.05, nstep: 36 }, Error::Squared)
            }
            None => {
                for l in 0..16 {
                    weights[l] = xs[l].abs();
                }
                (Grid { rmin: -0.5, rdelta: 0.1, nstep: 15 }, Error::Abs)
            }
        };
        (scales[j], mins[j]) = make_qkx_quants(3, xs, &weights, &mut codes[16 * j..16 * (j + 1)], grid, error);
    }
    let qp = qw.map(|_| qp_scales_and_mins(15, &scales, &mins, &sw));

    // Per lane: scale bytes, f16 d and dmin, and each sub-block's (d, dm).
    let mut sc_bytes = [[0u8; 16]; MAX_LANES];
    let mut dd = [[0u16; 2]; MAX_LANES];
    let mut sub_d = [[0f32; 16]; MAX_LANES];
    let mut sub_m = [[0f32; 16]; MAX_LANES];
    let (scales, mins) = (rows_of(&scales), rows_of(&mins));
    for b in 0..V::N {
        let (scales, mins) = (&scales[b], &mins[b]);
        let s = &mut sc_bytes[b];
        match &qp {
            None => {
                const Q4SCALE: f32 = 15.0;
                let (mut max_scale, mut max_min) = (0f32, 0f32);
                for j in 0..16 {
                    if scales[j] > max_scale {
                        max_scale = scales[j];
                    }
                    if mins[j] > max_min {
                        max_min = mins[j];
                    }
                }
                if max_scale > 0.0 {
                    let iscale = Q4SCALE / max_scale;
                    for j in 0..16 {
                        s[j] = nearest_int(iscale * scales[j]) as u8;
                    }
                    dd[b][0] = f32_to_f16_bits(max_scale / Q4SCALE);
                } else {
                    dd[b][0] = f32_to_f16_bits(0.0);
                }
                if max_min > 0.0 {
                    let iscale = Q4SCALE / max_min;
                    for j in 0..16 {
                        s[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
                    }
                    dd[b][1] = f32_to_f16_bits(max_min / Q4SCALE);
                } else {
                    dd[b][1] = f32_to_f16_bits(0.0);
                }
            }
            Some((d, m, ls, lm)) => {
                dd[b] = [f32_to_f16_bits(d[b]), f32_to_f16_bits(m[b])];
                for j in 0..16 {
                    s[j] = ls[b][j] | (lm[b][j] << 4);
                }
            }
        }
        let (d, dmin) = (f16_bits_to_f32(dd[b][0]), f16_bits_to_f32(dd[b][1]));
        for j in 0..16 {
            sub_d[b][j] = d * (s[j] & 0xf) as f32;
            sub_m[b][j] = dmin * (s[j] >> 4) as f32;
        }
    }

    for j in 0..16 {
        let d = V::from_fn(|b| sub_d[b][j]);
        let dm = V::from_fn(|b| sub_m[b][j]);
        let keep = d.eq(zero);
        for ii in 0..16 {
            let i = 16 * j + ii;
            let l = ((x[i] + dm) / d).nearest_int().imin(V::Int::splat(3)).imax(V::Int::splat(0));
            codes[i] = V::Int::select(keep, codes[i], l);
        }
    }

    V::Int::store_bytes(&pack_2bit(&codes), &mut out[16..], BYTES);
    for b in 0..V::N {
        let o = &mut out[b * BYTES..(b + 1) * BYTES];
        o[..16].copy_from_slice(&sc_bytes[b]);
        o[80..82].copy_from_slice(&dd[b][0].to_le_bytes());
        o[82..84].copy_from_slice(&dd[b][1].to_le_bytes());
    }
}

/// ggml's `dequantize_row_q2_K`.
pub fn decode(data: &[u8], out: &mut [f32]) {
    for (b, y) in data.chunks_exact(BYTES).zip(out.chunks_exact_mut(QK_K)) {
        let d = f16_bits_to_f32(u16::from_le_bytes([b[80], b[81]]));
        let min = f16_bits_to_f32(u16::from_le_bytes([b[82], b[83]]));
        let (scales, qs) = (&b[..16], &b[16..80]);
        for i in 0..QK_K {
            // element i: 128-group n, code shift 2*((i%128)/32), byte (n*32 + i%32), sub-block i/16
            let (n, r) = (i / 128, i % 128);
            let q = ((qs[n * 32 + r % 32] >> (2 * (r / 32))) & 3) as i8;
            let sc = scales[i / 16];
            let (dl, ml) = (d * (sc & 0xf) as f32, min * (sc >> 4) as f32);
            y[i] = dl * q as f32 - ml;
        }
    }
}

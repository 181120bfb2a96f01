//! Q6_K: super-blocks of 256 weights in sixteen sub-blocks of 16, `x ≈ d*sc*q` with 6-bit
//! symmetric codes and 8-bit signed sub-block scales (`quantize_row_q6_K_ref` / `_impl`).

use super::fp16::{f16_bits_to_f32, f32_to_f16_bits};
use super::lanes::{build, nearest_int, rows_of, IntLanes, Lanes, MAX_LANES};
use super::search::{make_qx_quants, GROUP_MAX_EPS};
use super::QK_K;

pub const BYTES: usize = 210;

/// Encodes `V::N` super-blocks (`x[i]` = element `i` of each lane's block; `qw` likewise). With
/// an importance matrix the sub-block searches are weighted by it directly.
#[inline(always)]
pub fn encode<V: Lanes>(x: &[V], qw: Option<&[V]>, out: &mut [u8]) {
    let zero = V::splat(0.0);
    let mut codes = [V::Int::splat(0); QK_K];
    let mut scales = [zero; 16];
    for ib in 0..16 {
        let range = 16 * ib..16 * (ib + 1);
        let qw = match qw {
            Some(w) => Some(&w[range.clone()]),
            None => None,
        };
        scales[ib] = make_qx_quants(32, &x[range.clone()], &mut codes[range], qw);
    }

    let mut sc = [[0i8; 16]; MAX_LANES];
    let mut dbits = [0u16; MAX_LANES];
    let mut all_zero = [false; MAX_LANES];
    let mut sub_d = [[0f32; 16]; MAX_LANES];
    let scales = rows_of(&scales);
    for b in 0..V::N {
        let scales = &scales[b];
        let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
        for ib in 0..16 {
            let scale = scales[ib];
            if scale.abs() > max_abs_scale {
                max_abs_scale = scale.abs();
                max_scale = scale;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            all_zero[b] = true; // ggml writes an all-zero block
            continue;
        }
        let iscale = -128.0 / max_scale;
        dbits[b] = f32_to_f16_bits(1.0 / iscale);
        for ib in 0..16 {
            sc[b][ib] = nearest_int(iscale * scales[ib]).min(127) as i8;
        }
        let d = f16_bits_to_f32(dbits[b]);
        for j in 0..16 {
            sub_d[b][j] = d * sc[b][j] as f32;
        }
    }

    for j in 0..16 {
        let d = V::from_fn(|b| sub_d[b][j]);
        let keep = d.eq(zero);
        for ii in 0..16 {
            let i = 16 * j + ii;
            let l = (x[i] / d).nearest_int().imin(V::Int::splat(31)).imax(V::Int::splat(-32));
            codes[i] = V::Int::select(keep, codes[i], l + V::Int::splat(32));
        }
    }

    // ql: byte k of each 64-byte half holds the low nibbles of codes k and k+64 (then k+32 and
    // k+96); qh: the top two bits of the four codes k, k+32, k+64, k+96.
    let low4 = V::Int::splat(15);
    let body = build!(V::Int::splat(0); 192, |q| {
        if q < 128 {
            let (n, k) = (128 * (q / 64), q % 64);
            codes[n + k].and(low4).or(codes[n + k + 64].and(low4).shl(4))
        } else {
            let (n, k) = (128 * ((q - 128) / 32), (q - 128) % 32);
            let hi = |i: usize| codes[n + k + i].shr(4);
            hi(0).or(hi(32).shl(2)).or(hi(64).shl(4)).or(hi(96).shl(6))
        }
    });
    V::Int::store_bytes(&body, out, BYTES);
    for b in 0..V::N {
        let o = &mut out[b * BYTES..(b + 1) * BYTES];
        if all_zero[b] {
            o.fill(0); // ggml writes an all-zero block
            continue;
        }
        for (o, s) in o[192..208].iter_mut().zip(&sc[b]) {
            *o = *s as u8;
        }
        o[208..210].copy_from_slice(&dbits[b].to_le_bytes());
    }
}

/// ggml's `dequantize_row_q6_K`.
pub fn decode(data: &[u8], out: &mut [f32]) {
    for (b, y) in data.chunks_exact(BYTES).zip(out.chunks_exact_mut(QK_K)) {
        let (ql, qh, sc) = (&b[..128], &b[128..192], &b[192..208]);
        let d = f16_bits_to_f32(u16::from_le_bytes([b[208], b[209]]));
        for n in 0..2 {
            let (ql, qh, sc, y) = (&ql[64 * n..], &qh[32 * n..], &sc[8 * n..], &mut y[128 * n..]);
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xf) | ((qh[l] & 3) << 4)) as i8 - 32;
                let q2 = ((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
            }
        }
    }
}

//! Q3_K: super-blocks of 256 weights in sixteen sub-blocks of 16, `x ≈ d*sc*q` with 3-bit
//! symmetric codes (two low bits in `qs`, the high bit in `hmask`) and 6-bit signed sub-block
//! scales (`quantize_row_q3_K_ref` / `_impl`).

use super::fp16::{f16_bits_to_f32, f32_to_f16_bits};
use super::lanes::{build, code_rows, lanes_of, nearest_int, rows_of, IntLanes, Lanes, Multi, MAX_LANES};
use super::q2_k::pack_2bit;
use super::search::{make_q3_quants, make_qx_quants};
use super::QK_K;

pub const BYTES: usize = 110;

/// Stores the 6-bit value `l` (0..63) of sub-block `j` in ggml's 12 scale bytes.
fn put_scale(s: &mut [u8; 12], j: usize, l: i32) {
    let l = l as i8;
    if j < 8 {
        s[j] = (l & 0xf) as u8;
    } else {
        s[j - 8] |= ((l & 0xf) << 4) as u8;
    }
    let high = l >> 4;
    s[j % 4 + 8] |= (high << (2 * (j / 4))) as u8;
}

/// The signed scale of sub-block `j` as ggml reads it back.
fn get_scale(s: &[u8], j: usize) -> i8 {
    let low = if j < 8 { s[j] & 0xf } else { s[j - 8] >> 4 } as i8;
    (low | (((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4) as i8).wrapping_sub(32)
}

/// `make_q3_quants(16, 4, …)` for the sixteen sub-blocks of `V::N` super-blocks. Each group's
/// passes are one long chain of dependent operations: four sub-blocks (j, j+4, j+8, j+12) run
/// as the lanes of one [`Multi`], so the CPU has independent work while a chain waits on its
/// division.
#[inline(always)]
fn make_q3_groups<V: Lanes>(x: &[V], codes: &mut [V::Int; QK_K], scales: &mut [V; 16]) {
    for j in 0..4 {
        let start = |k: usize| 16 * (j + 4 * k);
        let xs = build!(Multi([V::splat(0.0); 4]); 16, |i| Multi(build!(V::splat(0.0); 4, |k| x[start(k) + i])));
        let mut ls = [Multi([V::Int::splat(0); 4]); 16];
        let sc = make_q3_quants(4, &xs, &mut ls);
        for k in 0..4 {
            scales[j + 4 * k] = sc.0[k];
            for i in 0..16 {
                codes[start(k) + i] = ls[i].0[k];
            }
        }
    }
}

/// Encodes `V::N` super-blocks (`x[i]` = element `i` of each lane's block; `qw` likewise).
#[inline(always)]
pub fn encode<V: Lanes>(x: &[V], qw: Option<&[V]>, out: &mut [u8]) {
    let zero = V::splat(0.0);
    let mut codes = [V::Int::splat(0); QK_K];
    let mut scales = [zero; 16];

    // With an importance matrix: weighted make_qx_quants per sub-block, and the sixteen
    // scales quantized by make_qx_quants too (weighted by each sub-block's total weight).
    let qx = match qw {
        None => {
            make_q3_groups(x, &mut codes, &mut scales);
            None
        }
        Some(qw) => {
            let mut sumx2 = zero;
            for &v in x {
                sumx2 = sumx2 + v * v;
            }
            let sigma2 = V::splat(2.0) * sumx2 / V::splat(QK_K as f32);
            let mut sw = [zero; 16];
            let mut weight = [zero; 16];
            for j in 0..16 {
                let xs = &x[16 * j..16 * (j + 1)];
                let mut sumw = zero;
                for l in 0..16 {
                    weight[l] = qw[16 * j + l] * (sigma2 + xs[l] * xs[l]).sqrt();
                    sumw = sumw + weight[l];
                }
                sw[j] = sumw;
                scales[j] = make_qx_quants(4, xs, &mut codes[16 * j..16 * (j + 1)], Some(&weight));
            }
            let mut ls = [V::Int::splat(0); 16];
            let d_block = make_qx_quants(32, &scales, &mut ls, Some(&sw));
            Some((d_block, ls))
        }
    };

    let mut sc_bytes = [[0u8; 12]; MAX_LANES];
    let mut dbits = [0u16; MAX_LANES];
    let mut sub_d = [[0f32; 16]; MAX_LANES];
    let scales = rows_of(&scales);
    // make_qx_quants' codes (0..63) are the stored 6-bit scales
    let qx = match qx {
        Some((d, ls)) => Some((lanes_of(d), code_rows(&ls, V::N))),
        None => None,
    };
    for b in 0..V::N {
        let scales = &scales[b];
        let s = &mut sc_bytes[b];
        match &qx {
            None => {
                let (mut max_scale, mut amax) = (0f32, 0f32);
                for j in 0..16 {
                    let scale = scales[j].abs();
                    if scale > amax {
                        amax = scale;
                        max_scale = scales[j];
                    }
                }
                if max_scale != 0.0 {
                    let iscale = -32.0 / max_scale;
                    for j in 0..16 {
                        let l = nearest_int(iscale * scales[j]) as i8 as i32;
                        put_scale(s, j, l.clamp(-32, 31) + 32);
                    }
                    dbits[b] = f32_to_f16_bits(1.0 / iscale);
                } else {
                    dbits[b] = f32_to_f16_bits(0.0);
                }
            }
            Some((d_block, ls)) => {
                for j in 0..16 {
                    put_scale(s, j, ls[b][j] as i32);
                }
                dbits[b] = f32_to_f16_bits(d_block[b]);
            }
        }
        let d = f16_bits_to_f32(dbits[b]);
        for j in 0..16 {
            sub_d[b][j] = d * get_scale(s, j) as f32;
        }
    }

    for j in 0..16 {
        let d = V::from_fn(|b| sub_d[b][j]);
        let keep = d.eq(zero);
        for ii in 0..16 {
            let i = 16 * j + ii;
            let l = (x[i] / d).nearest_int().imin(V::Int::splat(3)).imax(V::Int::splat(-4));
            codes[i] = V::Int::select(keep, codes[i], l + V::Int::splat(4));
        }
    }

    // Codes are 0..7: ggml's `if (L > 3) { set the hmask bit; L -= 4; }` is bit 2 and the low
    // two bits. The high bit of code j goes to hmask[j % 32], bit j / 32.
    let (one, three) = (V::Int::splat(1), V::Int::splat(3));
    let hmask = build!(V::Int::splat(0); 32, |m| {
        let mut h = V::Int::splat(0);
        for k in 0..8 {
            h = h.or(codes[32 * k + m].shr(2).and(one).shl(k as u32));
        }
        h
    });
    V::Int::store_bytes(&hmask, out, BYTES);
    for c in codes.iter_mut() {
        *c = c.and(three);
    }
    V::Int::store_bytes(&pack_2bit(&codes), &mut out[32..], BYTES);
    for b in 0..V::N {
        let o = &mut out[b * BYTES..(b + 1) * BYTES];
        o[96..108].copy_from_slice(&sc_bytes[b]);
        o[108..110].copy_from_slice(&dbits[b].to_le_bytes());
    }
}

/// ggml's `dequantize_row_q3_K`.
pub fn decode(data: &[u8], out: &mut [f32]) {
    for (b, y) in data.chunks_exact(BYTES).zip(out.chunks_exact_mut(QK_K)) {
        let (hm, qs, scales) = (&b[..32], &b[32..96], &b[96..108]);
        let d_all = f16_bits_to_f32(u16::from_le_bytes([b[108], b[109]]));
        for i in 0..QK_K {
            let (n, r) = (i / 128, i % 128);
            let (byte, shift) = (r % 32, 2 * (r / 32));
            let q = ((qs[n * 32 + byte] >> shift) & 3) as i32;
            let high = hm[byte] & (1 << (4 * n + r / 32)) != 0;
            let dl = d_all * (get_scale(scales, i / 16) as i32) as f32;
            y[i] = dl * (q - if high { 0 } else { 4 }) as f32;
        }
    }
}

//! Q3_K: super-blocks of 256 weights in sixteen sub-blocks of 16, `x ≈ d*sc*q` with 3-bit
//! symmetric codes (two low bits in `qs`, the high bit in `hmask`) and 6-bit signed sub-block
//! scales (`quantize_row_q3_K_ref` / `_impl`).

use super::fp16::{f16_bits_to_f32, f32_to_f16_bits};
use super::lanes::{as_i8, build, lanes_of, IntLanes, Lanes, Multi, MAX_LANES};
use super::q2_k::pack_2bit;
use super::search::{make_q3_quants, make_qx_quants};
use super::QK_K;

pub const BYTES: usize = 110;

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

    // The sixteen 6-bit scales l (0..63, read back as l - 32) and the super-block scale.
    let (ls, d) = match qx {
        None => {
            let (mut amax, mut max_scale) = (zero, zero);
            for sc in &scales {
                let a = sc.abs();
                let bigger = a.gt(amax);
                amax = V::select(bigger, a, amax);
                max_scale = V::select(bigger, *sc, max_scale);
            }
            // ggml leaves the scales (and d) zero when max_scale is 0
            let nonzero = max_scale.ne(zero);
            let iscale = V::splat(-32.0) / max_scale;
            let ls = build!(V::Int::splat(0); 16, |j| {
                let l = as_i8((iscale * scales[j]).nearest_int()).imin(V::Int::splat(31)).imax(V::Int::splat(-32));
                V::Int::select(nonzero, l + V::Int::splat(32), V::Int::splat(0))
            });
            (ls, V::select(nonzero, V::splat(1.0) / iscale, zero))
        }
        // make_qx_quants' codes (0..63) are the stored scales
        Some((d_block, ls)) => (ls, d_block),
    };
    // 12 bytes: the low nibbles of scales j and j+8, then the top two bits of j, j+4, j+8, j+12
    let (low4, top2) = (V::Int::splat(15), V::Int::splat(3));
    let packed = build!(V::Int::splat(0); 12, |k| if k < 8 {
        ls[k].and(low4).or(ls[k + 8].and(low4).shl(4))
    } else {
        let m = k - 8;
        let top = |g: usize| ls[4 * g + m].shr(4).and(top2).shl(2 * g as u32);
        top(0).or(top(1)).or(top(2)).or(top(3))
    });
    V::Int::store_bytes(&packed, &mut out[96..], BYTES);
    let d = lanes_of(d);
    let mut d16 = [0f32; MAX_LANES];
    for b in 0..V::N {
        let bits = f32_to_f16_bits(d[b]);
        out[b * BYTES + 108..b * BYTES + 110].copy_from_slice(&bits.to_le_bytes());
        d16[b] = f16_bits_to_f32(bits);
    }
    let d16 = V::from_fn(|b| d16[b]);

    for j in 0..16 {
        let d = d16 * (ls[j] - V::Int::splat(32)).to_f32();
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

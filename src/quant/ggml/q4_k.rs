//! Q4_K and Q5_K: super-blocks of 256 weights in eight sub-blocks of 32, `x ≈ d*sc*q - dmin*m`
//! with 6-bit sub-block scales `sc` and mins `m` under one f16 pair (`quantize_row_q{4,5}_K_ref`
//! and `_impl` in ggml-quants.c).
//!
//! Per sub-block the codes and (scale, min) come from `make_qkx2_quants` (weights
//! `av_x + |x|`) or, with an importance matrix, `make_qkx3_quants` (weights
//! `qw * sqrt(sigma2 + x²)`); the eight scales and mins are then quantized to 6 bits against
//! their maximum (or by `make_qp_quants` with an importance matrix), and every weight is
//! re-encoded against the rounded scales.

use super::fp16::{f16_bits_to_f32, f32_to_f16_bits};
use super::lanes::{build, rows_of, IntLanes, Lanes, MAX_LANES};
use super::lanes::nearest_int;
use super::search::{make_qkx_quants, qp_scales_and_mins, Error, Grid};
use super::QK_K;

/// Q4_K or Q5_K.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Bits {
    Four,
    Five,
}

impl Bits {
    fn nmax(self) -> i32 {
        match self {
            Bits::Four => 15,
            Bits::Five => 31,
        }
    }
    pub fn bytes(self) -> usize {
        match self {
            Bits::Four => 144,
            Bits::Five => 176,
        }
    }
    /// The `make_qkx2_quants` grid of the `_ref` quantizers.
    fn grid(self) -> Grid {
        match self {
            Bits::Four => Grid { rmin: -1.0, rdelta: 0.1, nstep: 20 },
            Bits::Five => Grid { rmin: -0.5, rdelta: 0.1, nstep: 15 },
        }
    }
}

/// The `make_qkx3_quants` grid of the `_impl` (importance matrix) quantizers.
const IMATRIX_GRID: Grid = Grid { rmin: -0.9, rdelta: 0.05, nstep: 36 };

/// ggml's 12-byte packing of eight 6-bit scales and mins (the inverse of `get_scale_min_k4`).
/// The arithmetic is on `uint8_t`, so out-of-range values wrap exactly as in C.
pub fn pack_scale_min(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (ls[j] & 0xf) | ((lm[j] & 0xf) << 4);
            s[j - 4] |= (ls[j] >> 4) << 6;
            s[j] |= (lm[j] >> 4) << 6;
        }
    }
    s
}

/// ggml's `get_scale_min_k4`.
pub fn scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Encodes `V::N` super-blocks (`x[i]` = element `i` of each lane's block; `qw` likewise).
#[inline(always)]
pub fn encode<V: Lanes>(bits: Bits, x: &[V], qw: Option<&[V]>, out: &mut [u8]) {
    let nmax = bits.nmax();
    let mut codes = [V::Int::splat(0); QK_K];
    let mut scales = [V::splat(0.0); 8];
    let mut mins = [V::splat(0.0); 8];
    let mut sw = [V::splat(0.0); 8];
    let mut weights = [V::splat(0.0); 32];
    let zero = V::splat(0.0);

    // With an importance matrix the weights use the super-block's `sigma2`.
    let sigma2 = match qw {
        Some(_) => {
            let mut sum_x2 = zero;
            for &v in x {
                sum_x2 = sum_x2 + v * v;
            }
            V::splat(2.0) * sum_x2 / V::splat(QK_K as f32)
        }
        None => zero,
    };
    for j in 0..8 {
        let xs = &x[32 * j..32 * (j + 1)];
        let grid = match qw {
            Some(qw) => {
                let mut sumw = zero;
                for l in 0..32 {
                    weights[l] = qw[32 * j + l] * (sigma2 + xs[l] * xs[l]).sqrt();
                    sumw = sumw + weights[l];
                }
                sw[j] = sumw;
                IMATRIX_GRID
            }
            None => {
                let mut sum_x2 = zero;
                for &v in xs {
                    sum_x2 = sum_x2 + v * v;
                }
                let av_x = (sum_x2 / V::splat(32.0)).sqrt();
                for l in 0..32 {
                    weights[l] = av_x + xs[l].abs();
                }
                bits.grid()
            }
        };
        (scales[j], mins[j]) = make_qkx_quants(nmax, xs, &weights, &mut codes[32 * j..32 * (j + 1)], grid, Error::Squared);
    }

    // Quantized sub-block scales and mins (with an importance matrix: make_qp_quants' codes).
    let qp = qw.map(|_| qp_scales_and_mins(63, &scales, &mins, &sw));

    // Per lane: the 12 scale bytes and the f16 super-scales, then each sub-block's (d, dm).
    let mut headers = [[0u8; 16]; MAX_LANES];
    let mut sub_d = [[0f32; 8]; MAX_LANES];
    let mut sub_m = [[0f32; 8]; MAX_LANES];
    let (scales, mins) = (rows_of(&scales), rows_of(&mins));
    for b in 0..V::N {
        let (scales, mins) = (&scales[b], &mins[b]);
        let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
        let (d, dmin) = match &qp {
            None => {
                let (mut max_scale, mut max_min) = (0f32, 0f32);
                for j in 0..8 {
                    if scales[j] > max_scale {
                        max_scale = scales[j];
                    }
                    if mins[j] > max_min {
                        max_min = mins[j];
                    }
                }
                let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
                let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
                for j in 0..8 {
                    ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
                    lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
                }
                (max_scale / 63.0, max_min / 63.0)
            }
            Some((d, m, qls, qlm)) => {
                for j in 0..8 {
                    ls[j] = qls[b][j];
                    lm[j] = qlm[b][j];
                    if bits == Bits::Five {
                        ls[j] = ls[j].min(63);
                        lm[j] = lm[j].min(63);
                    }
                }
                (d[b], m[b])
            }
        };
        let h = &mut headers[b];
        h[..2].copy_from_slice(&f32_to_f16_bits(d).to_le_bytes());
        h[2..4].copy_from_slice(&f32_to_f16_bits(dmin).to_le_bytes());
        h[4..16].copy_from_slice(&pack_scale_min(&ls, &lm));
        let (d, dmin) = (f16_bits_to_f32(u16::from_le_bytes([h[0], h[1]])), f16_bits_to_f32(u16::from_le_bytes([h[2], h[3]])));
        for j in 0..8 {
            let (sc, m) = scale_min(j, &h[4..]);
            sub_d[b][j] = d * sc as f32;
            sub_m[b][j] = dmin * m as f32;
        }
    }

    // Every weight again against the stored scales (sub-blocks whose scale is 0 keep their codes).
    for j in 0..8 {
        let d = V::from_fn(|b| sub_d[b][j]);
        let dm = V::from_fn(|b| sub_m[b][j]);
        let keep = d.eq(zero);
        for ii in 0..32 {
            let i = 32 * j + ii;
            let l = ((x[i] + dm) / d).nearest_int().imin(V::Int::splat(nmax)).imax(V::Int::splat(0));
            codes[i] = V::Int::select(keep, codes[i], l);
        }
    }

    let bytes = bits.bytes();
    let low4 = V::Int::splat(15);
    let nibbles = |shift: u32| {
        build!(V::Int::splat(0); 128, |q| {
            let (n, k) = (64 * (q / 32), q % 32);
            codes[n + k].shr(shift).and(low4).or(codes[n + k + 32].shr(shift).and(low4).shl(4))
        })
    };
    match bits {
        Bits::Four => V::Int::store_bytes(&nibbles(0), &mut out[16..], bytes),
        Bits::Five => {
            // Codes are 0..31: ggml's `if (l > 15) { l -= 16; set the qh bit; }` is bit 4.
            let one = V::Int::splat(1);
            let qh = build!(V::Int::splat(0); 32, |k| {
                let mut h = V::Int::splat(0);
                for g in 0..4 {
                    h = h.or(codes[64 * g + k].shr(4).and(one).shl(2 * g as u32));
                    h = h.or(codes[64 * g + k + 32].shr(4).and(one).shl(2 * g as u32 + 1));
                }
                h
            });
            V::Int::store_bytes(&qh, &mut out[16..], bytes);
            V::Int::store_bytes(&nibbles(0), &mut out[48..], bytes);
        }
    }
    for b in 0..V::N {
        out[b * bytes..b * bytes + 16].copy_from_slice(&headers[b]);
    }
}

/// ggml's `dequantize_row_q4_K` / `dequantize_row_q5_K`.
pub fn decode(bits: Bits, data: &[u8], out: &mut [f32]) {
    for (b, y) in data.chunks_exact(bits.bytes()).zip(out.chunks_exact_mut(QK_K)) {
        let d = f16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]));
        let min = f16_bits_to_f32(u16::from_le_bytes([b[2], b[3]]));
        let scales = &b[4..16];
        let (qh, ql) = match bits {
            Bits::Four => (None, &b[16..144]),
            Bits::Five => (Some(&b[16..48]), &b[48..176]),
        };
        let (mut u1, mut u2) = (1u8, 2u8);
        for (is, (y, q)) in y.chunks_exact_mut(64).zip(ql.chunks_exact(32)).enumerate() {
            let (sc, m) = scale_min(2 * is, scales);
            let (d1, m1) = (d * sc as f32, min * m as f32);
            let (sc, m) = scale_min(2 * is + 1, scales);
            let (d2, m2) = (d * sc as f32, min * m as f32);
            for l in 0..32 {
                let (h1, h2) = match qh {
                    Some(qh) => (if qh[l] & u1 != 0 { 16 } else { 0 }, if qh[l] & u2 != 0 { 16 } else { 0 }),
                    None => (0, 0),
                };
                y[l] = d1 * ((q[l] & 0xf) as i32 + h1) as f32 - m1;
                y[l + 32] = d2 * ((q[l] >> 4) as i32 + h2) as f32 - m2;
            }
            u1 <<= 2;
            u2 <<= 2;
        }
    }
}

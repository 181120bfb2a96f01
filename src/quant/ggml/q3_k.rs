//! Q3_K: super-blocks of 256 weights in sixteen sub-blocks of 16, `x ≈ d*sc*q` with 3-bit
//! symmetric codes (two low bits in `qs`, the high bit in `hmask`) and 6-bit signed sub-block
//! scales (`quantize_row_q3_K_ref` / `_impl`).

use super::fp16::{f16_bits_to_f32, f32_to_f16_bits};
use super::lanes::{as_i8, build, lanes_of, mask_lanes, IntLanes, Lanes, Multi, MAX_LANES};
use super::q2_k::pack_2bit;
use super::search::{make_qx_quants, Q3State};
use super::QK_K;

pub const BYTES: usize = 110;

/// The signed scale of sub-block `j` as ggml reads it back.
fn get_scale(s: &[u8], j: usize) -> i8 {
    let low = if j < 8 { s[j] & 0xf } else { s[j - 8] >> 4 } as i8;
    (low | (((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4) as i8).wrapping_sub(32)
}

/// `make_q3_quants(16, 4, …)` for the sixteen sub-blocks of `V::N` super-blocks, giving each
/// group exactly what ggml gives it. Its passes are one long chain of dependent operations,
/// and most groups (about four in five on real weights) settle in the first pass, while a
/// vector of lanes runs as many passes as its slowest lane. So: the first pass runs for every
/// group, four sub-blocks (j, j+4, j+8, j+12) interleaved as one [`Multi`]; the groups still
/// changing then run their remaining passes packed densely into fresh lanes, and go back.
#[inline(always)]
fn make_q3_groups<V: Lanes>(x: &[V], codes: &mut [V::Int; QK_K], scales: &mut [V; 16], scratch: &mut Scratch) {
    const NMAX: i32 = 4;
    let mut states = [None; 16];
    const CHAINS: usize = 4;
    const STEP: usize = 16 / CHAINS;
    for j in 0..STEP {
        let start = |k: usize| 16 * (j + STEP * k);
        let xs = build!(Multi([V::splat(0.0); CHAINS]); 16, |i| Multi(build!(V::splat(0.0); CHAINS, |k| x[start(k) + i])));
        let mut ls = [Multi([V::Int::splat(0); CHAINS]); 16];
        let mut st = Q3State::start(NMAX, &xs, &mut ls);
        st.pass(NMAX, &xs, &mut ls);
        for k in 0..CHAINS {
            states[j + STEP * k] = Some(st.part(k));
            for i in 0..16 {
                codes[start(k) + i] = ls[i].0[k];
            }
        }
    }
    let mut st = states.map(|s| s.expect("every sub-block started"));

    // (sub-block, lane) of every group still changing, in sub-block order.
    let mut pending = [(0u8, 0u8); 16 * 16];
    let mut n_pending = 0;
    for (j, s) in st.iter().enumerate() {
        let lanes = mask_lanes::<V>(s.active);
        for (b, &on) in lanes.iter().enumerate().take(V::N) {
            if on {
                pending[n_pending] = (j as u8, b as u8);
                n_pending += 1;
            }
        }
    }
    if n_pending > 0 {
        // Every group as a row of 16 (row 16*j + b: sub-block j of lane b), and its sums.
        let Scratch { xr, lr, sums } = scratch;
        for j in 0..16 {
            let xs = build!(V::splat(0.0); 16, |i| x[16 * j + i]);
            let ls = build!(V::Int::splat(0); 16, |i| codes[16 * j + i]);
            V::store_rows(&xs, &mut xr[16 * j..]);
            V::Int::store_rows(&ls, &mut lr[16 * j..]);
            st[j].sumlx.write(&mut sums[0][16 * j..]);
            st[j].suml2.write(&mut sums[1][16 * j..]);
        }
        // four vectors of pending groups at a time, interleaved like the first pass
        for group in pending[..n_pending].chunks(4 * V::N) {
            // lane e is group[e]; spare lanes repeat group[0] and stay inactive
            let row = |e: usize| {
                let (j, b) = group[if e < group.len() { e } else { 0 }];
                16 * j as usize + b as usize
            };
            type M<V> = Multi<V, 4>;
            let xs = <M<V> as Lanes>::gather_rows(&xr[..], row);
            let mut ls = <M<V> as Lanes>::Int::gather_rows(&lr[..], row);
            let active = <M<V> as Lanes>::from_fn(|e| if e < group.len() { 1.0 } else { 0.0 }).gt(<M<V> as Lanes>::splat(0.5));
            let sum = |k: usize| <M<V> as Lanes>::from_fn(|e| sums[k][row(e)]);
            let mut dense = Q3State::resume(sum(0), sum(1), active);
            for _ in 1..Q3State::<V>::PASSES {
                if !<M<V> as Lanes>::any(dense.active) {
                    break;
                }
                dense.pass(NMAX, &xs, &mut ls);
            }
            let mut rows = [[0i32; 16]; 4 * 16];
            <Multi<V, 4> as Lanes>::Int::store_rows(&ls, &mut rows);
            let (mut sumlx, mut suml2) = ([0f32; 4 * MAX_LANES], [0f32; 4 * MAX_LANES]);
            dense.sumlx.write(&mut sumlx);
            dense.suml2.write(&mut suml2);
            for e in 0..group.len() {
                lr[row(e)] = rows[e];
                (sums[0][row(e)], sums[1][row(e)]) = (sumlx[e], suml2[e]);
            }
        }
        let mut touched = [false; 16];
        for &(j, _) in &pending[..n_pending] {
            touched[j as usize] = true;
        }
        for j in (0..16).filter(|&j| touched[j]) {
            let ls = V::Int::gather_rows(&lr[..], |b| 16 * j + b);
            codes[16 * j..16 * (j + 1)].copy_from_slice(&ls);
            st[j].sumlx = V::load(&sums[0][16 * j..]);
            st[j].suml2 = V::load(&sums[1][16 * j..]);
        }
    }
    for j in 0..16 {
        scales[j] = st[j].finish(NMAX, &mut codes[16 * j..16 * (j + 1)]);
    }
}

/// Room for [`make_q3_groups`] to hand groups from lane to lane, reused from call to call:
/// one row of 16 per group (sub-block j of lane b at row 16*j + b) and the group's two sums.
pub struct Scratch {
    xr: Box<[[f32; 16]; 256]>,
    lr: Box<[[i32; 16]; 256]>,
    sums: Box<[[f32; 256]; 2]>,
}

impl Scratch {
    pub fn new() -> Self {
        Scratch { xr: Box::new([[0.0; 16]; 256]), lr: Box::new([[0; 16]; 256]), sums: Box::new([[0.0; 256]; 2]) }
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

/// Encodes `V::N` super-blocks (`x[i]` = element `i` of each lane's block; `qw` likewise).
#[inline(always)]
pub fn encode<V: Lanes>(x: &[V], qw: Option<&[V]>, out: &mut [u8], scratch: &mut Scratch) {
    let zero = V::splat(0.0);
    let mut codes = [V::Int::splat(0); QK_K];
    let mut scales = [zero; 16];

    // With an importance matrix: weighted make_qx_quants per sub-block, and the sixteen
    // scales quantized by make_qx_quants too (weighted by each sub-block's total weight).
    let qx = match qw {
        None => {
            make_q3_groups(x, &mut codes, &mut scales, scratch);
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

//! `method="lsq"`: min/max refined by alternating least squares. The output format is the
//! affine one (packed codes, f32 scale, f32 zero point per group) and dequantizes with the
//! unchanged `q × scale + zero_point`; only the choice of scale and zero point differs.
//!
//! The definition, for one group of `n` finite values `w` with `L = 2^bits − 1`. Every
//! operation is one IEEE-754 `f32` operation, rounded to nearest-even, in the order written;
//! no fused multiply-add anywhere.
//!
//! 1. **Start.** `p = GroupParams::from_range(min, max, L)`, the min/max parameters, as the grid
//!    `(scale, zero, inv) = (p.scale, p.lo, p.inv)`. A group whose min/max scale is 0 (constant,
//!    or too narrow for a finite `inv`) keeps it and stops here.
//! 2. **Evaluate a grid.** For each value, its code `q = round_half_even(clamp((w − zero) × inv,
//!    0, L))` (clamping first and rounding second gives the same integer as the other way round,
//!    since `L` is an integer), its restored value `r = q × scale + zero`, its error `e = r − w`.
//!    Four sums over the group: `sse = Σ e×e`, `sq = Σ q`, `sqq = Σ q×q`, `sqw = Σ q×w`; and once
//!    per group `sw = Σ w`.
//! 3. **Fit** the least-squares line through `(q, w)`: with `m = n` as `f32`,
//!    `d = m×sqq − sq×sq`; if `d` is not `> 0` (all codes equal: no line to fit), stop.
//!    `scale = (m×sqw − sq×sw) / d`, `zero = (sqq×sw − sq×sqw) / d`, `inv = 1 / scale`; if
//!    `scale` is not `> 0` or any of the three is not finite, stop.
//! 4. **Rounds.** Evaluate the start, then [`ROUNDS`] times: fit to the last evaluation's sums,
//!    evaluate the new grid. The group keeps the grid with the least `sse`; on a tie the earlier
//!    one (so min/max wins ties, and a group is never worse than min/max in its own `sse`).
//!    Stopping early (step 3) keeps the best so far.
//! 5. **Output.** The kept grid's codes (step 2), `scale` and `zero`. When min/max is kept, the
//!    bytes are exactly `method="minmax"`'s.
//!
//! **Sums.** Every sum runs over [`LANES`] = 16 lanes: lane `j` adds the terms of elements
//! `j, j + 16, j + 32, …` in order, starting from `+0.0`; then the lanes fold as a tree
//! (`lane[j] += lane[j + 8]` for `j < 8`, then `+ 4`, `+ 2`, `+ 1`) and lane 0 is the sum. It is
//! the order a 16-wide vector (or two 8-wide ones) accumulates in, and one GPU invocation can
//! follow it too; `arrow_quant_v2.reference` follows it in numpy.
//!
//! Why this method (see the quality notes): of the searches measured on real weights, it buys the
//! most SNR per unit of compute (+0.5 dB at 4-bit g128, +2.8 dB at 2-bit g64 on MiniLM), and its
//! fixed trip count suits every backend.

use super::params::GroupParams;

/// Fits after the start (step 4).
pub const ROUNDS: usize = 5;

/// The lanes every sum runs over (see the module docs).
pub const LANES: usize = 16;

/// `2^23`: adding and subtracting it rounds a value in `[0, 2^23)` to an integer, half to even.
const MAGIC: f32 = 8_388_608.0;

/// A candidate grid: codes `round(clamp((w − zero) × inv, 0, L))`, values `q × scale + zero`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Grid {
    pub scale: f32,
    pub zero: f32,
    pub inv: f32,
}

impl From<GroupParams> for Grid {
    fn from(p: GroupParams) -> Self {
        Self { scale: p.scale, zero: p.lo, inv: p.inv }
    }
}

/// Step 2's code of one value, as an `f32` integer in `0..=L`.
#[inline(always)]
pub fn code(w: f32, g: &Grid, max_code: f32) -> f32 {
    (shifted_code(w, g, max_code)) - MAGIC
}

/// The code plus 2^23: the addition rounds the clamped product to an integer, half to even,
/// and the code is then also the low byte of the sum's bits (2^23's mantissa bits are 0).
#[inline(always)]
fn shifted_code(w: f32, g: &Grid, max_code: f32) -> f32 {
    let t = (w - g.zero) * g.inv;
    // `t` is never NaN: `w − zero` is finite or ±inf and `inv` is finite and > 0 (or 0 with
    // `w − zero` finite, for a constant min/max group).
    let t = if t > 0.0 { t } else { 0.0 };
    let t = if t < max_code { t } else { max_code };
    t + MAGIC
}

/// A sum over [`LANES`] lanes, folded as a tree.
#[inline(always)]
fn fold(mut lanes: [f32; LANES]) -> f32 {
    let mut half = LANES / 2;
    while half > 0 {
        for j in 0..half {
            lanes[j] += lanes[j + half];
        }
        half /= 2;
    }
    lanes[0]
}

/// Step 2's four sums for one grid.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evaluation {
    pub sse: f32,
    pub sq: f32,
    pub sqq: f32,
    pub sqw: f32,
}

/// Step 2's per-lane partial sums.
struct Partials {
    sse: [f32; LANES],
    sq: [f32; LANES],
    sqq: [f32; LANES],
    sqw: [f32; LANES],
}

impl Partials {
    /// Adds one value per lane, for the first `active` lanes (the other lanes add `+0.0`,
    /// which leaves a partial sum unchanged: none is ever `−0.0`). Only fixed indices, so the
    /// compiler keeps the lanes in vector registers and the loop becomes vector operations (one
    /// 16-wide, or two 8-wide), in the same order.
    #[inline(always)]
    fn add(&mut self, c: &[f32; LANES], active: usize, g: &Grid, max_code: f32) {
        for j in 0..LANES {
            let w = c[j];
            let q = code(w, g, max_code);
            let e = (q * g.scale + g.zero) - w;
            let on = j < active;
            self.sse[j] += if on { e * e } else { 0.0 };
            self.sq[j] += if on { q } else { 0.0 };
            self.sqq[j] += if on { q * q } else { 0.0 };
            self.sqw[j] += if on { q * w } else { 0.0 };
        }
    }
}

/// `values` cut into whole lanes' worth: full chunks, then the tail padded (with its length).
#[inline(always)]
fn lane_chunks(values: &[f32]) -> (std::slice::ChunksExact<'_, f32>, [f32; LANES], usize) {
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    let mut tail = [0f32; LANES];
    tail[..rest.len()].copy_from_slice(rest);
    (chunks, tail, rest.len())
}

/// Step 2 for one grid.
#[inline(always)]
pub fn evaluate(values: &[f32], g: &Grid, max_code: f32) -> Evaluation {
    let mut p = Partials { sse: [0.0; LANES], sq: [0.0; LANES], sqq: [0.0; LANES], sqw: [0.0; LANES] };
    let (chunks, tail, n_tail) = lane_chunks(values);
    for c in chunks {
        p.add(c.try_into().expect("chunks_exact(LANES)"), LANES, g, max_code);
    }
    if n_tail > 0 {
        p.add(&tail, n_tail, g, max_code);
    }
    Evaluation { sse: fold(p.sse), sq: fold(p.sq), sqq: fold(p.sqq), sqw: fold(p.sqw) }
}

/// Step 2's `sse` alone (the same sum as [`evaluate`]'s, in the same order).
#[inline(always)]
fn evaluate_sse(values: &[f32], g: &Grid, max_code: f32) -> f32 {
    let mut sse = [0f32; LANES];
    let (chunks, tail, n_tail) = lane_chunks(values);
    let mut add = |c: &[f32; LANES], active: usize| {
        for j in 0..LANES {
            let w = c[j];
            let e = (code(w, g, max_code) * g.scale + g.zero) - w;
            sse[j] += if j < active { e * e } else { 0.0 };
        }
    };
    for c in chunks {
        add(c.try_into().expect("chunks_exact(LANES)"), LANES);
    }
    if n_tail > 0 {
        add(&tail, n_tail);
    }
    fold(sse)
}

/// `Σ w` in the lane order.
#[inline(always)]
pub fn sum(values: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let (chunks, tail, _) = lane_chunks(values);
    for c in chunks {
        for j in 0..LANES {
            lanes[j] += c[j];
        }
    }
    // The padding is +0.0: adding it changes no lane.
    for j in 0..LANES {
        lanes[j] += tail[j];
    }
    fold(lanes)
}

/// Step 3: the least-squares grid through the codes of `e`, or `None` where the definition
/// stops.
#[inline(always)]
pub fn fit(n: usize, e: &Evaluation, sw: f32) -> Option<Grid> {
    let (g, ok) = fit_lane(n as f32, e.sq, e.sqq, e.sqw, sw);
    ok.then_some(g)
}

/// Step 3 without branches: the grid, and whether the definition keeps it (`d > 0`, and a
/// positive finite scale with a finite zero and inverse). Without branches, the fits of a batch
/// of groups run as vector operations ([`refine_batch`]); the operations are the same IEEE
/// ones whichever way they run.
#[inline(always)]
fn fit_lane(m: f32, sq: f32, sqq: f32, sqw: f32, sw: f32) -> (Grid, bool) {
    let d = m * sqq - sq * sq;
    let scale = (m * sqw - sq * sw) / d;
    let zero = (sqq * sw - sq * sqw) / d;
    let inv = 1.0 / scale;
    let ok = (d > 0.0) & (scale > 0.0) & scale.is_finite() & zero.is_finite() & inv.is_finite();
    (Grid { scale, zero, inv }, ok)
}

/// Step 2 as a backend computes it: the same sums in the same order, so the same bits. The
/// loops above ([`Plain`]) are the definition; the CPU backend has vector versions of them
/// (`cpu::avx2`, `cpu::avx512`) that [`refine_batch`] runs instead.
pub trait Evaluate {
    /// Step 2's four sums for one grid ([`evaluate`]).
    fn evaluate(values: &[f32], g: &Grid, max_code: f32) -> Evaluation;
    /// Step 2's `sse` alone, the same sum as `evaluate`'s.
    fn sse(values: &[f32], g: &Grid, max_code: f32) -> f32;
}

/// Step 2 by the definition's own loops.
pub struct Plain;

impl Evaluate for Plain {
    #[inline(always)]
    fn evaluate(values: &[f32], g: &Grid, max_code: f32) -> Evaluation {
        evaluate(values, g, max_code)
    }
    #[inline(always)]
    fn sse(values: &[f32], g: &Grid, max_code: f32) -> f32 {
        evaluate_sse(values, g, max_code)
    }
}

/// Steps 1–4: the grid a group keeps, from its min/max parameters.
#[inline(always)]
pub fn refine(values: &[f32], start: GroupParams, max_code: u32) -> Grid {
    let mut out = [Grid::from(start)];
    refine_batch::<Plain>(&[values], &[start], max_code, &mut out);
    out[0]
}

/// The most groups [`refine_batch`] takes at once.
pub const BATCH: usize = 16;

/// [`refine`] for up to [`BATCH`] groups at once, round by round across the groups, with the
/// same results. One group's rounds form a chain (evaluate, fold the lanes, three divisions,
/// evaluate again) that leaves the CPU waiting on latency; the rounds of different groups are
/// independent. So the state is kept as one array per quantity, and each round runs the fits
/// of the whole batch as vector operations, then each group's evaluation, then the batch's
/// comparisons with the best so far as vector selects (no branch per group on a comparison
/// that goes either way).
///
/// A group also stops at a fixed point: when an evaluation's code sums (`sq`, `sqq`, `sqw`)
/// equal the previous evaluation's, the next fit is the grid just evaluated, whose `sse` is
/// already known — every later round would repeat it, and the kept grid cannot change. This
/// stops some groups early and gives exactly the result of all [`ROUNDS`]. The last round's
/// evaluation needs only its `sse` (no fit follows it).
#[inline(always)]
pub fn refine_batch<E: Evaluate>(groups: &[&[f32]], starts: &[GroupParams], max_code: u32, out: &mut [Grid]) {
    debug_assert!(groups.len() <= BATCH && starts.len() == groups.len() && out.len() == groups.len());
    let n = groups.len();
    let max_code = max_code as f32;
    // The kept grid and its `sse`.
    let (mut best_scale, mut best_zero, mut best_inv, mut best_sse) = ([0f32; BATCH], [0f32; BATCH], [0f32; BATCH], [0f32; BATCH]);
    // The last evaluation's code sums, the group's Σw and length (1 for a spare slot, which
    // never runs), and whether the group still runs.
    let (mut sq, mut sqq, mut sqw, mut sw, mut m) = ([0f32; BATCH], [0f32; BATCH], [0f32; BATCH], [0f32; BATCH], [1f32; BATCH]);
    let mut running = [false; BATCH];
    for i in 0..n {
        let start = Grid::from(starts[i]);
        (best_scale[i], best_zero[i], best_inv[i]) = (start.scale, start.zero, start.inv);
        if start.scale != 0.0 {
            let e = E::evaluate(groups[i], &start, max_code);
            (best_sse[i], sq[i], sqq[i], sqw[i]) = (e.sse, e.sq, e.sqq, e.sqw);
            (sw[i], m[i]) = (sum(groups[i]), groups[i].len() as f32);
            running[i] = true;
        }
    }
    for round in 0..ROUNDS {
        let (mut scale, mut zero, mut inv) = ([0f32; BATCH], [0f32; BATCH], [0f32; BATCH]);
        for i in 0..BATCH {
            let (g, ok) = fit_lane(m[i], sq[i], sqq[i], sqw[i], sw[i]);
            (scale[i], zero[i], inv[i]) = (g.scale, g.zero, g.inv);
            running[i] &= ok;
        }
        if !running.contains(&true) {
            break;
        }
        let last = round + 1 == ROUNDS;
        // A group that does not run keeps an `sse` of +inf, which is never better.
        let mut sse = [f32::INFINITY; BATCH];
        let (mut next_sq, mut next_sqq, mut next_sqw) = (sq, sqq, sqw);
        for i in 0..n {
            if !running[i] {
                continue;
            }
            let g = Grid { scale: scale[i], zero: zero[i], inv: inv[i] };
            if last {
                sse[i] = E::sse(groups[i], &g, max_code);
            } else {
                let e = E::evaluate(groups[i], &g, max_code);
                (sse[i], next_sq[i], next_sqq[i], next_sqw[i]) = (e.sse, e.sq, e.sqq, e.sqw);
            }
        }
        for i in 0..BATCH {
            // Strictly less: on a tie the earlier grid stays.
            let better = sse[i] < best_sse[i];
            best_scale[i] = if better { scale[i] } else { best_scale[i] };
            best_zero[i] = if better { zero[i] } else { best_zero[i] };
            best_inv[i] = if better { inv[i] } else { best_inv[i] };
            best_sse[i] = if better { sse[i] } else { best_sse[i] };
            running[i] &= (next_sq[i] != sq[i]) | (next_sqq[i] != sqq[i]) | (next_sqw[i] != sqw[i]);
        }
        (sq, sqq, sqw) = (next_sq, next_sqq, next_sqw);
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = Grid { scale: best_scale[i], zero: best_zero[i], inv: best_inv[i] };
    }
}

/// Step 5's codes of a group under its kept grid, as bytes (one code per byte).
#[inline(always)]
pub fn codes(values: &[f32], g: &Grid, max_code: u32, out: &mut [u8]) {
    let max_code = max_code as f32;
    for (o, &w) in out.iter_mut().zip(values) {
        // The low byte of the shifted code's bits: integer moves the compiler vectorizes, where
        // a float-to-u8 conversion would be a saturating one per element.
        *o = shifted_code(w, g, max_code).to_bits() as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sse_of(values: &[f32], g: &Grid, max_code: u32) -> f64 {
        values
            .iter()
            .map(|&w| {
                let q = code(w, g, max_code as f32);
                let e = (q * g.scale + g.zero) as f64 - w as f64;
                e * e
            })
            .sum()
    }

    fn minmax(values: &[f32], max_code: u32) -> GroupParams {
        let lo = values.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        GroupParams::from_range(lo, hi, max_code).unwrap()
    }

    #[test]
    fn the_min_max_grid_codes_like_the_min_max_contract() {
        let values: Vec<f32> = (0..200).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013).collect();
        for bits in [2u32, 4, 8] {
            let l = (1 << bits) - 1;
            let p = minmax(&values, l);
            for &w in &values {
                let q = code(w, &Grid::from(p), l as f32) as u8;
                assert_eq!(q, super::super::codes::quantize_value(w, p.lo, p.inv, l), "{w} at {bits} bits");
            }
        }
    }

    #[test]
    fn the_lanes_fold_as_a_tree_in_lane_order() {
        // Lane 0 gets 1e8 then 3 (1e8 + 3 rounds back to 1e8), lane 8 gets −1e8, lane 1 gets
        // 0.75; the tree adds lane 8 into lane 0 first: 0.75. Left to right would give 3.
        let mut values = vec![0f32; 32];
        values[0] = 1.0e8;
        values[1] = 0.75;
        values[8] = -1.0e8;
        values[16] = 3.0;
        assert_eq!(sum(&values), 0.75);
        assert_eq!(values.iter().fold(0f32, |a, &b| a + b), 3.0);
    }

    #[test]
    fn refining_never_loses_to_min_max_and_gains_on_gaussian_groups() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut gauss = || {
            let mut u = || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 11) as f64 / (1u64 << 53) as f64
            };
            ((-2.0 * u().max(1e-300).ln()).sqrt() * (std::f64::consts::TAU * u()).cos()) as f32 * 0.02
        };
        for (bits, group) in [(2u32, 64usize), (4, 128), (8, 128)] {
            let l = (1 << bits) - 1;
            let (mut before, mut after) = (0.0, 0.0);
            for _ in 0..200 {
                let values: Vec<f32> = (0..group).map(|_| gauss()).collect();
                let p = minmax(&values, l);
                let g = refine(&values, p, l);
                let (a, b) = (sse_of(&values, &Grid::from(p), l), sse_of(&values, &g, l));
                assert!(evaluate(&values, &g, l as f32).sse <= evaluate(&values, &Grid::from(p), l as f32).sse);
                before += a;
                after += b;
            }
            let gain_db = 10.0 * (before / after).log10();
            assert!(gain_db > if bits == 2 { 1.5 } else { 0.2 }, "{bits}-bit g{group}: {gain_db:.2} dB");
        }
    }

    #[test]
    fn constant_and_two_level_groups_stop_cleanly() {
        let constant = [0.5f32; 64];
        let p = minmax(&constant, 15);
        assert_eq!(refine(&constant, p, 15), Grid::from(p));
        // Two distinct values sit exactly on the min/max grid: no fit can do better (ties keep
        // min/max).
        let two: Vec<f32> = (0..64).map(|i| if i % 3 == 0 { -1.0 } else { 2.0 }).collect();
        let p = minmax(&two, 15);
        let g = refine(&two, p, 15);
        assert_eq!(sse_of(&two, &g, 15), 0.0);
    }
}

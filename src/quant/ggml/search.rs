//! The scale searches of ggml's K-quants (`ggml-quants.c`): each picks a (scale, min) or a
//! scale for a small group of weights, and the group's codes.
//!
//! They follow ggml's operations one for one: the same candidate grids, the same sums in the
//! same order, C's int → float promotions at the same places (`w*l*l` is `(w*(float)l)*(float)l`),
//! and the same comparisons, so ties are broken the same way. Each runs one group per lane
//! (see [`super::lanes`]); a branch ggml takes for one group becomes a masked update.

use super::lanes::{code_rows, lanes_of, IntLanes, Lanes, Multi, MAX_LANES};

/// ggml's `GROUP_MAX_EPS`: a group whose largest magnitude is below this is all zeros.
pub const GROUP_MAX_EPS: f32 = 1e-15;

/// The first element of largest magnitude, signed (`if (ax > amax) { amax = ax; max = x[i]; }`),
/// and that magnitude.
#[inline(always)]
pub fn signed_absmax<V: Lanes>(x: &[V]) -> (V, V) {
    let (mut amax, mut max) = (V::splat(0.0), V::splat(0.0));
    for &v in x {
        let ax = v.abs();
        let bigger = ax.gt(amax);
        amax = V::select(bigger, ax, amax);
        max = V::select(bigger, v, max);
    }
    (amax, max)
}

#[inline(always)]
fn clamp<I: IntLanes>(l: I, lo: i32, hi: i32) -> I {
    l.imin(I::splat(hi)).imax(I::splat(lo))
}

/// `make_qx_quants(n, nmax, x, L, rmse_type = 1, qw)`: symmetric codes `L = nmax + l`,
/// `l ∈ [-nmax, nmax-1]`, weighted by `qw` (or `x²` without it); 19 candidate scales around
/// `-nmax/max`, each kept if it improves the weighted least-squares fit. Returns the scale.
/// (ggml's other `rmse_type`s are not used by any quantizer this crate implements.)
#[inline(always)]
pub fn make_qx_quants<V: Lanes>(nmax: i32, x: &[V], l_out: &mut [V::Int], qw: Option<&[V]>) -> V {
    let n = x.len();
    let (amax, max) = signed_absmax(x);
    let zero_group = amax.lt(V::splat(GROUP_MAX_EPS));
    let weight = |i: usize| match qw {
        Some(w) => w[i],
        None => x[i] * x[i],
    };
    let nmaxf = nmax as f32;

    let mut iscale = V::splat(-nmaxf) / max;
    let (mut sumlx, mut suml2) = (V::splat(0.0), V::splat(0.0));
    for i in 0..n {
        let l = clamp((iscale * x[i]).nearest_int(), -nmax, nmax - 1);
        l_out[i] = l + V::Int::splat(nmax);
        let (w, lf) = (weight(i), l.to_f32());
        sumlx = sumlx + w * x[i] * lf;
        suml2 = suml2 + w * lf * lf;
    }
    let zero = V::splat(0.0);
    let mut scale = V::select(suml2.ne(zero), sumlx / suml2, zero);
    let mut best = scale * sumlx;
    let mut cand = [V::Int::splat(0); 32];
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(V::splat(nmaxf + 0.1 * is as f32)) / max;
        sumlx = zero;
        suml2 = zero;
        for i in 0..n {
            let l = clamp((iscale * x[i]).nearest_int(), -nmax, nmax - 1);
            cand[i] = l;
            let (w, lf) = (weight(i), l.to_f32());
            sumlx = sumlx + w * x[i] * lf;
            suml2 = suml2 + w * lf * lf;
        }
        let better = suml2.gt(zero) & (sumlx * sumlx).gt(best * suml2);
        for i in 0..n {
            l_out[i] = V::Int::select(better, cand[i] + V::Int::splat(nmax), l_out[i]);
        }
        scale = V::select(better, sumlx / suml2, scale);
        best = V::select(better, scale * sumlx, best);
    }
    for l in l_out.iter_mut().take(n) {
        *l = V::Int::select(zero_group, V::Int::splat(0), *l);
    }
    V::select(zero_group, zero, scale)
}

/// `make_q3_quants(n, nmax, x, L, do_rmse = true)` for groups of at most 16: symmetric codes
/// refined by up to five passes of coordinate descent on the `x²`-weighted fit. Returns the
/// scale; codes are `l + nmax`, or all 0 for a zero group. [`Q3State`] holds its parts, so that
/// a caller can run a group's later passes in other lanes (most groups settle in one pass).
#[inline(always)]
pub fn make_q3_quants<V: Lanes>(nmax: i32, x: &[V], l_out: &mut [V::Int]) -> V {
    let mut st = Q3State::start(nmax, x, l_out);
    for _ in 0..Q3State::<V>::PASSES {
        if !V::any(st.active) {
            break;
        }
        st.pass(nmax, x, l_out);
    }
    st.finish(nmax, l_out)
}

/// The state of [`make_q3_quants`] between passes.
#[derive(Clone, Copy)]
pub struct Q3State<V: Lanes> {
    pub sumlx: V,
    pub suml2: V,
    zero_group: V::Mask,
    /// Lanes still iterating: not a zero group, and their last pass changed a code.
    pub active: V::Mask,
}

impl<V: Lanes> Q3State<V> {
    /// ggml's `itry` limit.
    pub const PASSES: usize = 5;

    /// The first codes (`l ∈ [-nmax, nmax-1]`, without the `+ nmax` offset until
    /// [`Q3State::finish`]) and their sums.
    #[inline(always)]
    pub fn start(nmax: i32, x: &[V], l_out: &mut [V::Int]) -> Self {
        let (amax, max) = signed_absmax(x);
        let zero = V::splat(0.0);
        let iscale = V::splat(-(nmax as f32)) / max;
        let (mut sumlx, mut suml2) = (zero, zero);
        for i in 0..x.len() {
            let l = clamp((iscale * x[i]).nearest_int(), -nmax, nmax - 1);
            l_out[i] = l;
            let (w, lf) = (x[i] * x[i], l.to_f32());
            sumlx = sumlx + w * x[i] * lf;
            suml2 = suml2 + w * lf * lf;
        }
        let zero_group = amax.lt(V::splat(GROUP_MAX_EPS));
        Q3State { sumlx, suml2, zero_group, active: !zero_group }
    }

    /// A group taken up between passes: its sums and which lanes still iterate.
    #[inline(always)]
    pub fn resume(sumlx: V, suml2: V, active: V::Mask) -> Self {
        Q3State { sumlx, suml2, zero_group: V::mask_splat(false), active }
    }

    /// One pass over the weights in order, each taking the code that best fits the rest of the
    /// group if that improves the fit (active lanes only). Lanes that changed nothing stop.
    #[inline(always)]
    pub fn pass(&mut self, nmax: i32, x: &[V], l_out: &mut [V::Int]) {
        let zero = V::splat(0.0);
        let (mut sumlx, mut suml2) = (self.sumlx, self.suml2);
        let mut changed = V::mask_splat(false);
        for i in 0..x.len() {
            let w = x[i] * x[i];
            let wx = w * x[i];
            let li = l_out[i].to_f32();
            let slx = sumlx - wx * li;
            let sl2 = suml2 - w * li * li;
            let new_l = clamp((x[i] * sl2 / slx).nearest_int(), -nmax, nmax - 1);
            let nf = new_l.to_f32();
            let slx2 = slx + wx * nf;
            let sl22 = sl2 + w * nf * nf;
            let take = self.active
                & slx.gt(zero)
                & new_l.ne(l_out[i])
                & sl22.gt(zero)
                & (slx2 * slx2 * suml2).gt(sumlx * sumlx * sl22);
            l_out[i] = V::Int::select(take, new_l, l_out[i]);
            sumlx = V::select(take, slx2, sumlx);
            suml2 = V::select(take, sl22, suml2);
            changed = changed | take;
        }
        (self.sumlx, self.suml2) = (sumlx, suml2);
        self.active = self.active & changed;
    }

    /// The codes with their `+ nmax` offset (0 for a zero group) and the scale.
    #[inline(always)]
    pub fn finish(&self, nmax: i32, l_out: &mut [V::Int]) -> V {
        let zero = V::splat(0.0);
        for l in l_out.iter_mut() {
            *l = V::Int::select(self.zero_group, V::Int::splat(0), *l + V::Int::splat(nmax));
        }
        V::select(self.zero_group | !self.suml2.gt(zero), zero, self.sumlx / self.suml2)
    }
}

impl<V: Lanes, const K: usize> Q3State<Multi<V, K>> {
    /// The state of part `k` of interleaved groups.
    #[inline(always)]
    pub fn part(&self, k: usize) -> Q3State<V> {
        Q3State { sumlx: self.sumlx.0[k], suml2: self.suml2.0[k], zero_group: self.zero_group.0[k], active: self.active.0[k] }
    }
}

/// How a group's error is measured in [`make_qkx_quants`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Weighted absolute error (`use_mad`).
    Abs,
    /// Weighted squared error.
    Squared,
}

/// The candidate grid of [`make_qkx_quants`]: inverse scales `(rmin + rdelta*is + nmax)/(max-min)`
/// for `is` in `0..=nstep`.
#[derive(Clone, Copy)]
pub struct Grid {
    pub rmin: f32,
    pub rdelta: f32,
    pub nstep: i32,
}

/// `make_qkx2_quants` / `make_qkx3_quants` (the same search; qkx3 is called with weights by
/// every quantizer here): asymmetric codes `L ∈ [0, nmax]` with a min clamped to ≤ 0; the
/// min/max grid, then each candidate scale refit by weighted least squares and kept if its
/// weighted error is smaller. Returns `(scale, the_min)` with `the_min = -min ≥ 0`.
#[inline(always)]
pub fn make_qkx_quants<V: Lanes>(
    nmax: i32,
    x: &[V],
    weights: &[V],
    l_out: &mut [V::Int],
    grid: Grid,
    error: Error,
) -> (V, V) {
    let n = x.len();
    let zero = V::splat(0.0);
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        min = V::select(x[i].lt(min), x[i], min);
        max = V::select(x[i].gt(max), x[i], max);
        sum_w = sum_w + weights[i];
        sum_x = sum_x + weights[i] * x[i];
    }
    min = V::select(min.gt(zero), zero, min);
    // ggml returns here for a flat group (all weights equal and ≤ 0): codes 0, its min.
    let flat = max.eq(min);
    let flat_min = min;
    let nmaxf = nmax as f32;
    let err = |d: V| if error == Error::Abs { d.abs() } else { d * d };

    let iscale = V::splat(nmaxf) / (max - min);
    let mut scale = V::splat(1.0) / iscale;
    let mut best_error = zero;
    for i in 0..n {
        let l = clamp((iscale * (x[i] - min)).nearest_int(), 0, nmax);
        l_out[i] = l;
        let diff = scale * l.to_f32() + min - x[i];
        best_error = best_error + weights[i] * err(diff);
    }
    let mut laux = [V::Int::splat(0); 32];
    // ggml skips the grid when nstep < 1 (no quantizer here does that).
    let steps = if grid.nstep < 1 { 0 } else { grid.nstep + 1 };
    for is in 0..steps {
        let iscale = V::splat(grid.rmin + grid.rdelta * is as f32 + nmaxf) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (zero, zero, zero);
        for i in 0..n {
            let l = clamp((iscale * (x[i] - min)).nearest_int(), 0, nmax);
            laux[i] = l;
            let (w, lf) = (weights[i], l.to_f32());
            sum_l = sum_l + w * lf;
            sum_l2 = sum_l2 + w * lf * lf;
            sum_xl = sum_xl + w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        let fit = d.gt(zero);
        let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
        let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
        let positive_min = this_min.gt(zero);
        this_min = V::select(positive_min, zero, this_min);
        this_scale = V::select(positive_min, sum_xl / sum_l2, this_scale);
        let mut cur_error = zero;
        for i in 0..n {
            let diff = this_scale * laux[i].to_f32() + this_min - x[i];
            cur_error = cur_error + weights[i] * err(diff);
        }
        let better = fit & cur_error.lt(best_error);
        for i in 0..n {
            l_out[i] = V::Int::select(better, laux[i], l_out[i]);
        }
        best_error = V::select(better, cur_error, best_error);
        scale = V::select(better, this_scale, scale);
        min = V::select(better, this_min, min);
    }
    for l in l_out.iter_mut().take(n) {
        *l = V::Int::select(flat, V::Int::splat(0), *l);
    }
    (V::select(flat, zero, scale), -V::select(flat, flat_min, min))
}

/// Per lane, a super-block's sub-block scales and mins quantized by [`make_qp_quants`]: `(d,
/// dmin, scale codes, min codes)`. Q2_K and Q4_K/Q5_K do this when given an importance matrix
/// (`sw` is each sub-block's summed weight); without one they quantize by the maximum instead.
pub type QpScales<const S: usize> = ([f32; MAX_LANES], [f32; MAX_LANES], [[u8; S]; MAX_LANES], [[u8; S]; MAX_LANES]);

#[inline(always)]
pub fn qp_scales_and_mins<V: Lanes, const S: usize>(nmax: i32, scales: &[V; S], mins: &[V; S], sw: &[V; S]) -> QpScales<S> {
    let (mut ls, mut lm) = ([V::Int::splat(0); S], [V::Int::splat(0); S]);
    let d = make_qp_quants(nmax, scales, &mut ls, sw);
    let m = make_qp_quants(nmax, mins, &mut lm, sw);
    (lanes_of(d), lanes_of(m), code_rows(&ls, V::N), code_rows(&lm, V::N))
}

/// `make_qp_quants(n, nmax, x, L, quant_weights)`: codes `L ∈ [0, nmax]` for non-negative values
/// (the sub-block scales or mins of a super-block) against one scale: a 9-point grid around
/// `nmax/max` by weighted squared error, then up to five passes of coordinate descent. `L` is a
/// `uint8_t` array in ggml, so stored codes wrap to 8 bits as there. Returns the scale.
#[inline(always)]
pub fn make_qp_quants<V: Lanes>(nmax: i32, x: &[V], l_out: &mut [V::Int], qw: &[V]) -> V {
    let n = x.len();
    let zero = V::splat(0.0);
    let nmaxf = nmax as f32;
    let u8wrap = |l: V::Int| l.and(V::Int::splat(0xff));
    let mut max = zero;
    for &v in x {
        max = V::select(max.gt(v), max, v);
    }
    let zero_group = max.lt(V::splat(GROUP_MAX_EPS));

    let mut iscale = V::splat(nmaxf) / max;
    for i in 0..n {
        l_out[i] = u8wrap((iscale * x[i]).nearest_int());
    }
    let scale = V::splat(1.0) / iscale;
    let mut best_mse = zero;
    for i in 0..n {
        let diff = x[i] - scale * l_out[i].to_f32();
        best_mse = best_mse + qw[i] * diff * diff;
    }
    for is in -4..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = V::splat(0.1 * is as f32 + nmaxf) / max;
        let scale_is = V::splat(1.0) / iscale_is;
        let mut mse = zero;
        for i in 0..n {
            let l = (iscale_is * x[i]).nearest_int().imin(V::Int::splat(nmax));
            let diff = x[i] - scale_is * l.to_f32();
            mse = mse + qw[i] * diff * diff;
        }
        let better = mse.lt(best_mse);
        best_mse = V::select(better, mse, best_mse);
        iscale = V::select(better, iscale_is, iscale);
    }
    let (mut sumlx, mut suml2) = (zero, zero);
    for i in 0..n {
        let l = (iscale * x[i]).nearest_int().imin(V::Int::splat(nmax));
        l_out[i] = u8wrap(l);
        let lf = l.to_f32();
        sumlx = sumlx + qw[i] * x[i] * lf;
        suml2 = suml2 + qw[i] * lf * lf;
    }
    let mut active = !zero_group;
    for _ in 0..5 {
        if !V::any(active) {
            break;
        }
        let mut changed = V::mask_splat(false);
        for i in 0..n {
            let w = qw[i];
            let li = l_out[i].to_f32();
            let slx = sumlx - w * x[i] * li;
            let sl2 = suml2 - w * li * li;
            let new_l = (x[i] * sl2 / slx).nearest_int().imin(V::Int::splat(nmax));
            let nf = new_l.to_f32();
            let slx2 = slx + w * x[i] * nf;
            let sl22 = sl2 + w * nf * nf;
            let take = active
                & slx.gt(zero)
                & sl2.gt(zero)
                & new_l.ne(l_out[i])
                & (slx2 * slx2 * suml2).gt(sumlx * sumlx * sl22);
            l_out[i] = V::Int::select(take, u8wrap(new_l), l_out[i]);
            sumlx = V::select(take, slx2, sumlx);
            suml2 = V::select(take, sl22, suml2);
            changed = changed | take;
        }
        active = active & changed;
    }
    for l in l_out.iter_mut().take(n) {
        *l = V::Int::select(zero_group, V::Int::splat(0), *l);
    }
    V::select(zero_group | !suml2.gt(zero), zero, sumlx / suml2)
}

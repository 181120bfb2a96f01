// ggml's K-quants: the twin of src/quant/ggml/q2_k.rs, q3_k.rs, q4_k.rs (Q4_K, Q5_K), q6_k.rs
// and search.rs read with one lane (V = f32), line by line and in the same order; `qw = None`
// (ggml's `_ref` quantizers), or with an importance matrix (`u.weighted`, ggml's `_impl`: the
// block's weights are `imatrix[qw_at..qw_at + 256]`). Follows ggml_common.wgsl.
//
// Exact as the CPU, beyond what ggml_common.wgsl says:
// * every division is `kdiv` (correctly rounded `fdiv`); a division by zero or one that
//   overflows, which the reference does not guard, flags the block (`bad`);
// * every product that feeds an addition, and every sum that feeds another operation with a
//   constant, goes through `opaque` (`pm`, `keep`), so the compiler can neither fuse it into an
//   FMA nor reassociate the constants;
// * ggml's `nearest_int` is the bits of `v + 12582912.0` (`nearest`);
// * `sqrtf` is `sqrt_rn`, correctly rounded in integer arithmetic (WGSL's `sqrt` is not);
// * no run-time infinity or NaN is ever computed: a block with a magnitude of 2^16 or more
//   (Q3_K: 2^12, whose descent compares products of four sums) is left to the CPU (below that
//   bound no product or sum of the searches can overflow), as is a block where a qkx2 candidate
//   scale or min reaches 2^40 (its error sum could overflow) or whose f16 super-scale would be
//   infinite;
// * 256 elements per block, searched per sub-block: Q2_K, Q3_K and Q6_K run sixteen
//   invocations per block, Q4_K and Q5_K eight, one per sub-block (below; the searches are
//   independent in ggml too). Per sub-block, Q6_K's search takes about 350 loop iterations
//   (16 + 19 x 16 + 16), Q2_K's about 600 (5 x 16 + 16 x 2 x 16), Q3_K's at most about 200
//   (five passes of 16); a Q4_K sub-block about 1,600 (4 x 32 + 21 x 2 x 32 + 32, plus 25 per
//   square root), Q5_K's fewer (16 steps); a block's own step runs once, in its first
//   invocation: all far below llvmpipe's 65,535 per invocation. The codes of a search's best
//   candidate are recomputed from its inverse scale (and min) at the end instead of copied at
//   each improvement.
//
// With an importance matrix, beyond the above:
// * a block whose weights reach 2^15 in magnitude goes to the CPU. Then every make_qkx2_quants
//   weight `qw sqrt(sigma2 + x^2)` is below 2^15 * sqrt(3 * 2^32) < 2^31.8 (sigma2 is at most
//   twice the block's largest x^2), and the bounds of the legacy types' weighted search hold
//   (ggml_legacy.wgsl): with candidates below 2^40, an error sum of 32 terms stays below
//   32 * 2^31.8 * 2^90.01 < 2^126.9;
// * the weighted make_qx_quants (Q3_K, Q6_K) and make_qp_quants (the sub-block scales and mins
//   of Q2_K, Q4_K, Q5_K) bound their sums from the magnitudes they meet: with S = sum |w|,
//   M = max |x| and |l| < 2^b, |sumlx| < S M 2^b and suml2 < S 2^2b, and every product of sums
//   they compare is checked against f32's range before it is computed (`fits`); past it, the
//   block goes to the CPU. make_qp_quants also sends a block with a negative value to the CPU,
//   and one whose coordinate-descent quotient reaches 2^22: then every code is in [0, nmax].
//   On real weights none of these fires;
// * 16 or 32 square roots per sub-block (25 steps each) and 37 candidates per search: a
//   weighted Q2_K sub-block takes about 1,800 loop iterations, Q3_K's and Q6_K's about 900 and
//   400, a weighted Q4_K/Q5_K sub-block about 3,500; each invocation of a weighted Q2_K, Q3_K,
//   Q4_K or Q5_K block also sums the block's sigma2 (256 terms).

const QK: u32 = 256u;

const BIG: u32 = 0x47800000u;           // 2^16: a block with a larger magnitude goes to the CPU
const BIG_Q3_K: u32 = 0x45800000u;      // 2^12

// One sub-block (16 or 32 values, `sub_len`): the values an invocation searches, and its codes.
var<private> xb: array<u32, 32>;
var<private> codes: array<i32, 32>;
var<private> scales: array<f32, 16>;
var<private> mins: array<f32, 16>;
var<private> ls: array<u32, 16>;
var<private> lm: array<u32, 16>;
// A group searched by make_qx_quants or make_qp_quants: its values and codes (a sub-block, or
// the sub-blocks' scales or mins); its weights are in `wts`, as for make_qkx2_quants (a
// sub-block's, or each sub-block's summed weight `sw`).
var<private> gx: array<f32, 16>;
var<private> gl: array<i32, 16>;
var<private> sw: array<f32, 16>;

fn block_bytes() -> u32 {
    switch TYPE {
        case 10u: { return 84u; }
        case 11u: { return 110u; }
        case 12u: { return 144u; }
        case 13u: { return 176u; }
        default: { return 210u; }
    }
}

// ggml's f16 → f32 of a finite f16 (an infinite one flags the block).
fn f16_value(h: u32) -> f32 {
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    let sign = (h & 0x8000u) << 16u;
    if e == 31u {
        bad = true;
        return 0.0;
    }
    if e == 0u {
        return f(sign | bitcast<u32>(f32(m) * f(0x33800000u))); // m * 2^-24, exact
    }
    return f(sign | ((e + 112u) << 23u) | (m << 13u));
}

// `make_qx_quants(16, nmax, gx, L, 1, w)` for an `iscale`: the sums of the codes it gives,
// (sumlx, suml2), weights wts (or x² unweighted).
fn qx_sums(nmax: i32, iscale: f32, weighted: bool) -> vec2<f32> {
    var sumlx = 0.0;
    var suml2 = 0.0;
    for (var i = 0u; i < 16u; i++) {
        let x = gx[i];
        let l = clamp(nearest(pm(iscale, x)), -nmax, nmax - 1);
        var w = pm(x, x);
        if weighted {
            w = wts[i];
        }
        let lf = f32(l);
        sumlx = sumlx + pm(pm(w, x), lf);
        suml2 = suml2 + pm(pm(w, lf), lf);
    }
    return vec2<f32>(sumlx, suml2);
}

// search.rs' make_qx_quants (rmse_type 1) over gx[0..16], weighted by wts or by x²: codes
// `l + nmax` into gl, returns the scale. The codes of the best candidate are recomputed from
// its inverse scale at the end (the same operations give the same codes). Weighted, the sums'
// bounds are checked (the header): 2^eb1 bounds |sumlx|, 2^eb2 suml2.
fn make_qx_quants(nmax: i32, weighted: bool) -> f32 {
    var amax = 0u;
    var mx = 0u;
    for (var i = 0u; i < 16u; i++) {
        let a = bitcast<u32>(gx[i]) & 0x7fffffffu;
        if a > amax {
            amax = a;
            mx = bitcast<u32>(gx[i]);
        }
    }
    if amax < GROUP_MAX_EPS {
        for (var i = 0u; i < 16u; i++) {
            gl[i] = 0;
        }
        return 0.0;
    }
    var eb1 = 0;
    var eb2 = 0;
    if weighted {
        var s = 0.0;
        for (var i = 0u; i < 16u; i++) {
            s = s + abs(wts[i]);
        }
        eb1 = ex(s) + 1 + ex(f(amax)) + bits(nmax);
        eb2 = ex(s) + 1 + 2 * bits(nmax);
        fits(2 * eb1); // sumlx²
        if bad {
            return 0.0;
        }
    }
    let nmaxf = f32(nmax);
    var best_is = kdiv(-nmaxf, f(mx));
    let s = qx_sums(nmax, best_is, weighted);
    var scale = 0.0;
    if s.y != 0.0 {
        scale = kdiv(s.x, s.y);
    }
    if weighted {
        fits(ex(scale) + eb1 + eb2); // best * suml2
    }
    var best = pm(scale, s.x);
    for (var is = -9; is <= 9; is++) {
        if is == 0 || bad {
            continue;
        }
        let iscale = kdiv(-keep(nmaxf + pm(f(TENTH), f32(is))), f(mx));
        let t = qx_sums(nmax, iscale, weighted);
        if t.y > 0.0 && pm(t.x, t.x) > pm(best, t.y) {
            scale = kdiv(t.x, t.y);
            if weighted {
                fits(ex(scale) + eb1 + eb2);
            }
            best = pm(scale, t.x);
            best_is = iscale;
        }
    }
    for (var i = 0u; i < 16u; i++) {
        gl[i] = clamp(nearest(pm(best_is, gx[i])), -nmax, nmax - 1) + nmax;
    }
    return scale;
}

// search.rs' make_qp_quants over gx[0..n] (the sub-blocks' scales or mins) with weights wts:
// codes `(uint8_t)l`, l in [0, nmax], into gl; returns the scale. A negative value, a product
// of sums that could leave f32's range, or a descent quotient of 2^22 or more flags the block
// (the header).
fn make_qp_quants(n: u32, nmax: i32) -> f32 {
    var mx = 0.0;
    for (var i = 0u; i < n; i++) {
        if !lt(gx[i], mx) {
            mx = gx[i]; // `max > x[i] ? max : x[i]`
        }
    }
    for (var i = 0u; i < n; i++) {
        gl[i] = 0;
    }
    if bitcast<u32>(mx) < GROUP_MAX_EPS || bitcast<u32>(mx) >= NEG_ZERO {
        return 0.0; // a zero group (its max is 0, -0 or tiny): codes 0, scale 0
    }
    var s = 0.0;
    for (var i = 0u; i < n; i++) {
        if bitcast<u32>(gx[i]) > NEG_ZERO {
            bad = true;
        }
        s = s + abs(wts[i]);
    }
    let es = ex(s) + 1;
    let eb1 = es + ex(mx) + bits(nmax);
    let eb2 = es + 2 * bits(nmax);
    fits(es + 2 * ex(mx) + 2); // each mse: |diff| <= 1.01 max
    fits(2 * (eb1 + 2) + eb2 + 2); // slx2² suml2: |slx2| < 3 * 2^eb1, suml2 < 3 * 2^eb2
    if bad {
        return 0.0;
    }
    let nmaxf = f32(nmax);
    var iscale = kdiv(nmaxf, mx);
    for (var i = 0u; i < n; i++) {
        gl[i] = nearest(pm(iscale, gx[i])) & 0xff;
    }
    let scale = kdiv(1.0, iscale);
    var best_mse = 0.0;
    for (var i = 0u; i < n; i++) {
        let diff = keep(gx[i] - pm(scale, f32(gl[i])));
        best_mse = best_mse + pm(pm(wts[i], diff), diff);
    }
    for (var is = -4; is <= 4; is++) {
        if is == 0 {
            continue;
        }
        let iscale_is = kdiv(keep(pm(f(TENTH), f32(is)) + nmaxf), mx);
        let scale_is = kdiv(1.0, iscale_is);
        var mse = 0.0;
        for (var i = 0u; i < n; i++) {
            let l = min(nearest(pm(iscale_is, gx[i])), nmax);
            let diff = keep(gx[i] - pm(scale_is, f32(l)));
            mse = mse + pm(pm(wts[i], diff), diff);
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    var sumlx = 0.0;
    var suml2 = 0.0;
    for (var i = 0u; i < n; i++) {
        let l = min(nearest(pm(iscale, gx[i])), nmax);
        gl[i] = l & 0xff;
        let lf = f32(l);
        sumlx = sumlx + pm(pm(wts[i], gx[i]), lf);
        suml2 = suml2 + pm(pm(wts[i], lf), lf);
    }
    for (var it = 0u; it < 5u; it++) {
        var changed = false;
        for (var i = 0u; i < n; i++) {
            let w = wts[i];
            let li = f32(gl[i]);
            let slx = keep(sumlx - pm(pm(w, gx[i]), li));
            let sl2 = keep(suml2 - pm(pm(w, li), li));
            if !(slx > 0.0 && sl2 > 0.0) {
                continue; // not taken; the reference's quotient is not needed
            }
            let q = kdiv(pm(gx[i], sl2), slx);
            if q >= 4194304.0 {
                bad = true;
                return 0.0;
            }
            let new_l = min(nearest(q), nmax);
            let nf = f32(new_l);
            let slx2 = keep(slx + pm(pm(w, gx[i]), nf));
            let sl22 = keep(sl2 + pm(pm(w, nf), nf));
            if new_l != gl[i] && pm(pm(slx2, slx2), suml2) > pm(pm(sumlx, sumlx), sl22) {
                gl[i] = new_l & 0xff;
                sumlx = slx2;
                suml2 = sl22;
                changed = true;
            }
        }
        if !changed || bad {
            break;
        }
    }
    if !(suml2 > 0.0) {
        return 0.0;
    }
    return kdiv(sumlx, suml2);
}

// search.rs' qp_scales_and_mins: the n sub-blocks' scales and mins quantized by
// make_qp_quants(nmax), weighted by each sub-block's summed weight sw; codes into ls and lm,
// returns (d, dmin).
fn qp_scales_and_mins(n: u32, nmax: i32) -> vec2<f32> {
    for (var j = 0u; j < n; j++) {
        gx[j] = scales[j];
        wts[j] = sw[j];
    }
    let d = make_qp_quants(n, nmax);
    for (var j = 0u; j < n; j++) {
        ls[j] = u32(gl[j]);
        gx[j] = mins[j];
    }
    let m = make_qp_quants(n, nmax);
    for (var j = 0u; j < n; j++) {
        lm[j] = u32(gl[j]);
    }
    return vec2<f32>(d, m);
}

// The `_impl` quantizers' sigma2: the block's sum of x² over 256, doubled for Q3_K/Q4_K/Q5_K.
// Read from the input (the bits xb holds), so that a Q4_K/Q5_K lane need not hold the block.
fn block_sigma2(twice: bool) -> f32 {
    var s = 0.0;
    for (var j = 0u; j < QK; j++) {
        let x = f(input[block_at + j]);
        s = s + pm(x, x);
    }
    if twice {
        s = pm(2.0, s);
    }
    return kdiv(s, 256.0);
}

// The weights `qw[i] * sqrtf(sigma2 + x[i]*x[i])` of the sub-block xb[0..n] into wts; returns
// their sum, added in order (the sub-block's `sw`).
fn sub_block_weights(n: u32, s2: f32) -> f32 {
    var sumw = 0.0;
    for (var l = 0u; l < n; l++) {
        let x = x_at(l);
        wts[l] = pm(f(imatrix[qw_at + l]), f(sqrt_rn(bitcast<u32>(keep(s2 + pm(x, x))))));
        sumw = sumw + wts[l];
    }
    return sumw;
}

// Q3_K's and Q6_K's last step for the sub-block xb[0..16]: its weights again against the
// stored sub-block scale dj, codes `clamp(nearest_int(x/dj), -nmax, nmax-1) + nmax`; a
// sub-block whose scale is 0 keeps its codes.
fn requantize_symmetric(dj: f32, nmax: i32) {
    if (bitcast<u32>(dj) & 0x7fffffffu) == 0u {
        return;
    }
    for (var i = 0u; i < 16u; i++) {
        codes[i] = clamp(nearest(kdiv(x_at(i), dj)), -nmax, nmax - 1) + nmax;
    }
}

// Q4_K (nmax 15) and Q5_K (nmax 31): eight make_qkx2_quants(32) sub-blocks with weights
// av_x + |x|, 6-bit scales and mins against their maxima, every weight again against them.
// With an importance matrix: weights qw sqrt(sigma2 + x²), make_qkx3_quants' grid, and the
// scales and mins quantized by make_qp_quants(63) weighted by each sub-block's summed weight.
// They run eight invocations per block, one per sub-block (`quantize_blocks_sub`, below).

// A sub-block's search, its values at xb[0..32] (its importance weights at qw_at; `s2`
// the block's sigma2): (scale, the_min, summed weight); its codes into codes[0..32].
fn q45_k_search(nmax: i32, s2: f32) -> vec3<f32> {
    if u.weighted != 0u {
        let sumw = sub_block_weights(32u, s2);
        let r = make_qkx2_quants(32u, nmax, f(QKX3_RMIN), f(QKX3_RDELTA), 36, false);
        return vec3<f32>(r, sumw);
    }
    var sum_x2 = 0.0;
    for (var l = 0u; l < 32u; l++) {
        sum_x2 = sum_x2 + pm(x_at(l), x_at(l));
    }
    let av_x = f(sqrt_rn(bitcast<u32>(kdiv(sum_x2, 32.0))));
    for (var l = 0u; l < 32u; l++) {
        wts[l] = keep(av_x + abs(x_at(l)));
    }
    var r: vec2<f32>;
    if nmax == 15 {
        r = make_qkx2_quants(32u, 15, -1.0, f(TENTH), 20, false);
    } else {
        r = make_qkx2_quants(32u, 31, -0.5, f(TENTH), 15, false);
    }
    return vec3<f32>(r, 0.0);
}

// The block's step from scales[0..8], mins[0..8] (and sw): the 6-bit ls, lm and the f16 bits
// of (d, dmin).
fn q45_k_block_scales(nmax: i32) -> vec2<u32> {
    if u.weighted == 0u {
        return q45_k_scales();
    }
    let dm = qp_scales_and_mins(8u, 63);
    for (var j = 0u; j < 8u; j++) {
        if nmax == 31 {
            ls[j] = min(ls[j], 63u);
            lm[j] = min(lm[j], 63u);
        }
    }
    return vec2<u32>(f16_bits(bitcast<u32>(dm.x)), f16_bits(bitcast<u32>(dm.y)));
}

// The `_ref` path's 6-bit scales and mins of Q4_K/Q5_K against their maxima: ls, lm and the f16
// bits of (max_scale / 63, max_min / 63).
fn q45_k_scales() -> vec2<u32> {
    var max_scale = 0.0;
    var max_min = 0.0;
    for (var j = 0u; j < 8u; j++) {
        if lt(max_scale, scales[j]) {
            max_scale = scales[j];
        }
        if lt(max_min, mins[j]) {
            max_min = mins[j];
        }
    }
    var inv_scale = 0.0;
    if max_scale > 0.0 {
        inv_scale = kdiv(63.0, max_scale);
    }
    var inv_min = 0.0;
    if max_min > 0.0 {
        inv_min = kdiv(63.0, max_min);
    }
    for (var j = 0u; j < 8u; j++) {
        ls[j] = min(u32(nearest(pm(inv_scale, scales[j]))) & 0xffu, 63u); // `(uint8_t)` then MIN
        lm[j] = min(u32(nearest(pm(inv_min, mins[j]))) & 0xffu, 63u);
    }
    return vec2<u32>(f16_bits(bitcast<u32>(kdiv(max_scale, 63.0))), f16_bits(bitcast<u32>(kdiv(max_min, 63.0))));
}

// Sub-block j's codes (its values and codes at xb[0..32], codes[0..32]) against the stored
// scales (from the super-scales' f16 bits and ls[j], lm[j]); a sub-block whose scale is 0
// keeps its search's codes.
fn q45_k_codes(j: u32, nmax: i32, dbits: u32, mbits: u32) {
    let d = f16_value(dbits);
    let dmin = f16_value(mbits);
    let dj = pm(d, f32(ls[j]));
    if (bitcast<u32>(dj) & 0x7fffffffu) == 0u {
        return;
    }
    let dm = pm(dmin, f32(lm[j]));
    for (var i = 0u; i < 32u; i++) {
        codes[i] = clamp(nearest(kdiv(keep(x_at(i) + dm), dj)), 0, nmax);
    }
}

// Q2_K, Q3_K and Q6_K: sixteen 16-value sub-blocks per block, searched independently (in ggml
// too), then the block's step over the sixteen results, then every weight again against the
// stored scales. They run sixteen invocations per block, one per sub-block
// (`quantize_blocks_sub`, below).
//
// Q2_K: make_qkx2_quants(16, 3) with weights |x| (absolute error), 4-bit scales and mins
// against their maxima. With an importance matrix: weights qw sqrt(sigma2 + x²) (squared error,
// make_qkx3_quants' grid), the scales and mins quantized by make_qp_quants(15) weighted by each
// sub-block's summed weight.
// Q3_K: make_q3_quants, 6-bit signed scales against -32/max_scale. With an importance matrix:
// make_qx_quants(16, 4) weighted by qw sqrt(sigma2 + x²), the scales quantized by
// make_qx_quants(16, 32) weighted by each sub-block's summed weight.
// Q6_K: make_qx_quants(16, 32) (weighted by the importance matrix itself), 8-bit scales
// against -128/max_scale.

const Q2_K: u32 = 10u;
const Q3_K: u32 = 11u;
const Q4_K: u32 = 12u;
const Q5_K: u32 = 13u;
const Q6_K: u32 = 14u;

// Q6_K's block step from scales[0..16]: the 8-bit scales (the i8's byte) into ls, and (the
// f16 bits of d, 0); (0, 1) when every scale is (nearly) zero: ggml writes an all-zero block.
fn q6_k_scales() -> vec2<u32> {
    var max_scale = 0.0;
    var max_abs = 0.0;
    for (var ib = 0u; ib < 16u; ib++) {
        if abs(scales[ib]) > max_abs {
            max_abs = abs(scales[ib]);
            max_scale = scales[ib];
        }
    }
    if bitcast<u32>(max_abs) < GROUP_MAX_EPS {
        return vec2<u32>(0u, 1u);
    }
    let iscale = kdiv(-128.0, max_scale);
    let dbits = f16_bits(bitcast<u32>(kdiv(1.0, iscale)));
    for (var ib = 0u; ib < 16u; ib++) {
        ls[ib] = u32(as_i8(min(nearest(pm(iscale, scales[ib])), 127))) & 0xffu;
    }
    return vec2<u32>(dbits, 0u);
}

// The steps of every K type, one function per step, each switching on TYPE.

// Values per sub-block (32 for Q4_K and Q5_K, else 16): one invocation each.
fn sub_len() -> u32 {
    return select(16u, 32u, TYPE == Q4_K || TYPE == Q5_K);
}

// Sub-block j's search over xb[0..sub_len()] (its importance weights at qw_at; `s2` the
// block's sigma2): (scale, the_min, summed weight); its codes into codes[0..sub_len()].
fn k_search(s2: f32) -> vec3<f32> {
    let weighted = u.weighted != 0u;
    switch TYPE {
        case Q2_K: {
            var sumw = 0.0;
            var r: vec2<f32>;
            if weighted {
                sumw = sub_block_weights(16u, s2);
                r = make_qkx2_quants(16u, 3, f(QKX3_RMIN), f(QKX3_RDELTA), 36, false);
            } else {
                for (var l = 0u; l < 16u; l++) {
                    wts[l] = abs(x_at(l));
                }
                r = make_qkx2_quants(16u, 3, -0.5, f(TENTH), 15, true);
            }
            return vec3<f32>(r, sumw);
        }
        case Q3_K: {
            if !weighted {
                return vec3<f32>(make_q3_quants(), 0.0, 0.0);
            }
            let sumw = sub_block_weights(16u, s2);
            for (var l = 0u; l < 16u; l++) {
                gx[l] = x_at(l);
            }
            let scale = make_qx_quants(4, true);
            for (var l = 0u; l < 16u; l++) {
                codes[l] = gl[l];
            }
            return vec3<f32>(scale, 0.0, sumw);
        }
        case Q4_K: {
            return q45_k_search(15, s2);
        }
        case Q5_K: {
            return q45_k_search(31, s2);
        }
        default: {
            for (var i = 0u; i < 16u; i++) {
                gx[i] = x_at(i);
                if weighted {
                    wts[i] = f(imatrix[qw_at + i]);
                }
            }
            let scale = make_qx_quants(32, weighted);
            for (var i = 0u; i < 16u; i++) {
                codes[i] = gl[i];
            }
            return vec3<f32>(scale, 0.0, 0.0);
        }
    }
}

// The block's step from scales, mins and sw [0..sub-blocks]: the stored scales into ls (Q2_K:
// scale | min << 4; Q3_K: the 6-bit l + 32; Q4_K, Q5_K: the 6-bit scales, and the mins into
// lm; Q6_K: the i8's byte) and the super-scales' f16 bits: Q2_K, Q4_K, Q5_K (d, dmin), Q3_K
// (d, 0), Q6_K as q6_k_scales.
fn k_block_step() -> vec2<u32> {
    let weighted = u.weighted != 0u;
    switch TYPE {
        case Q2_K: {
            if !weighted {
                return q2_k_scales();
            }
            let dm = qp_scales_and_mins(16u, 15);
            for (var j = 0u; j < 16u; j++) {
                ls[j] = (ls[j] | (lm[j] << 4u)) & 0xffu;
            }
            return vec2<u32>(f16_bits(bitcast<u32>(dm.x)), f16_bits(bitcast<u32>(dm.y)));
        }
        case Q3_K: {
            var d = 0.0;
            if weighted {
                for (var j = 0u; j < 16u; j++) {
                    gx[j] = scales[j];
                    wts[j] = sw[j];
                }
                d = make_qx_quants(32, true);
                for (var j = 0u; j < 16u; j++) {
                    ls[j] = u32(gl[j]); // make_qx_quants' codes (0..63) are the stored scales
                }
            } else {
                d = q3_k_scales();
            }
            return vec2<u32>(f16_bits(bitcast<u32>(d)), 0u);
        }
        case Q4_K: {
            return q45_k_block_scales(15);
        }
        case Q5_K: {
            return q45_k_block_scales(31);
        }
        default: {
            return q6_k_scales();
        }
    }
}

// Sub-block j's codes (codes[0..sub_len()]) against its stored scale (ls[j], lm[j], the
// super-scales' bits); a sub-block whose scale is 0 keeps its search's codes.
fn k_codes(j: u32, bits: vec2<u32>) {
    switch TYPE {
        case Q2_K: {
            let d = f16_value(bits.x);
            let dmin = f16_value(bits.y);
            let dj = pm(d, f32(ls[j] & 0xfu));
            if (bitcast<u32>(dj) & 0x7fffffffu) == 0u {
                return;
            }
            let dm = pm(dmin, f32(ls[j] >> 4u));
            for (var i = 0u; i < 16u; i++) {
                codes[i] = clamp(nearest(kdiv(keep(x_at(i) + dm), dj)), 0, 3);
            }
        }
        case Q3_K: {
            requantize_symmetric(pm(f16_value(bits.x), f32(i32(ls[j]) - 32)), 4);
        }
        case Q4_K: {
            q45_k_codes(j, 15, bits.x, bits.y);
        }
        case Q5_K: {
            q45_k_codes(j, 31, bits.x, bits.y);
        }
        default: {
            if bits.y == 0u {
                requantize_symmetric(pm(f16_value(bits.x), f32(as_i8(i32(ls[j])))), 32);
            }
        }
    }
}

// What the workgroup holds per block (slot bs; at most WG / 8 blocks): a flag per unit, set by
// any step of any of its blocks; per sub-block the search's scale, min and summed weight, then
// the stored ls | lm << 8; the super-scales' bits; the codes, one byte each.
const MAX_SLOTS: u32 = WG / 8u;
var<workgroup> wg_flag: array<atomic<u32>, MAX_SLOTS>;
var<workgroup> wg_scale: array<f32, WG>;
var<workgroup> wg_min: array<f32, WG>;
var<workgroup> wg_sw: array<f32, WG>;
var<workgroup> wg_lslm: array<u32, WG>;
var<workgroup> wg_bits: array<vec2<u32>, MAX_SLOTS>;
var<workgroup> wg_codes: array<u32, 2048>; // MAX_SLOTS * 256 / 4

fn wg_code(bs: u32, i: u32) -> u32 {
    return (wg_codes[64u * bs + i / 4u] >> (8u * (i % 4u))) & 0xffu;
}

// Sub-block m's stored scale byte (ls) and min (lm).
fn wg_ls(bs: u32, m: u32) -> u32 {
    return wg_lslm[(QK / sub_len()) * bs + m] & 0xffu;
}

fn wg_lm(bs: u32, m: u32) -> u32 {
    return wg_lslm[(QK / sub_len()) * bs + m] >> 8u;
}

// Byte k (0 or 1) of a super-scale's f16 bits.
fn half_byte(v: u32, k: u32) -> u32 {
    return (v >> (8u * (k % 2u))) & 0xffu;
}

// pack_2bit's byte q (of 64): the low two bits of codes i, i+32, i+64, i+96, i = 128 (q / 32) +
// q % 32, lowest first.
fn two_bit_byte(bs: u32, q: u32) -> u32 {
    let i = 128u * (q / 32u) + q % 32u;
    return (wg_code(bs, i) & 3u) | ((wg_code(bs, i + 32u) & 3u) << 2u) | ((wg_code(bs, i + 64u) & 3u) << 4u) | ((wg_code(bs, i + 96u) & 3u) << 6u);
}

// Byte t of ggml's 12-byte packing of eight 6-bit scales and mins (`pack_scale_min`): scales
// 0-3, mins 0-3 (each with the top two bits of scale or min t+4 at bits 6-7), then the low
// nibbles of scale and min t+4.
fn scale_min_byte(bs: u32, t: u32) -> u32 {
    if t < 4u {
        return wg_ls(bs, t) | ((wg_ls(bs, t + 4u) >> 4u) << 6u);
    }
    if t < 8u {
        return wg_lm(bs, t - 4u) | ((wg_lm(bs, t) >> 4u) << 6u);
    }
    return (wg_ls(bs, t - 4u) & 0xfu) | ((wg_lm(bs, t - 4u) & 0xfu) << 4u);
}

// Byte k of the block in slot bs, from its codes, stored scales and super-scales' bits.
fn k_byte(bs: u32, k: u32) -> u32 {
    let bits = wg_bits[bs];
    switch TYPE {
        case Q2_K: {
            // the 16 scale bytes, the 2-bit codes, d, dmin
            if k < 16u {
                return wg_ls(bs, k);
            }
            if k < 80u {
                return two_bit_byte(bs, k - 16u);
            }
            return half_byte(select(bits.y, bits.x, k < 82u), k);
        }
        case Q3_K: {
            // hmask: the high bit of code j at bit j / 32 of byte j % 32
            if k < 32u {
                var h = 0u;
                for (var g = 0u; g < 8u; g++) {
                    h = h | (((wg_code(bs, 32u * g + k) >> 2u) & 1u) << g);
                }
                return h;
            }
            if k < 96u {
                return two_bit_byte(bs, k - 32u);
            }
            // the low nibbles of scales m and m+8, then the top two bits of m, m+4, m+8, m+12
            if k < 104u {
                let m = k - 96u;
                return (wg_ls(bs, m) & 15u) | ((wg_ls(bs, m + 8u) & 15u) << 4u);
            }
            if k < 108u {
                let m = k - 104u;
                var t = 0u;
                for (var g = 0u; g < 4u; g++) {
                    t = t | (((wg_ls(bs, 4u * g + m) >> 4u) & 3u) << (2u * g));
                }
                return t;
            }
            return half_byte(bits.x, k);
        }
        case Q4_K, Q5_K: {
            // d, dmin, the packed scales and mins, Q5_K's qh, the nibbles
            if k < 4u {
                return half_byte(select(bits.y, bits.x, k < 2u), k);
            }
            if k < 16u {
                return scale_min_byte(bs, k - 4u);
            }
            var q = k - 16u;
            if TYPE == Q5_K {
                // qh: bit 4 of codes 64g+q and 64g+q+32 at bits 2g and 2g+1 of byte q
                if q < 32u {
                    var h = 0u;
                    for (var g = 0u; g < 4u; g++) {
                        h = h | (((wg_code(bs, 64u * g + q) >> 4u) & 1u) << (2u * g));
                        h = h | (((wg_code(bs, 64u * g + q + 32u) >> 4u) & 1u) << (2u * g + 1u));
                    }
                    return h;
                }
                q = q - 32u;
            }
            let i = 64u * (q / 32u) + q % 32u;
            return (wg_code(bs, i) & 15u) | ((wg_code(bs, i + 32u) & 15u) << 4u);
        }
        default: {
            if bits.y != 0u {
                return 0u;
            }
            // ql: byte q of each 64-byte half holds the low nibbles of codes i and i+64 (then
            // i+32 and i+96); qh: the top two bits of codes i, i+32, i+64, i+96; the scales; d.
            if k < 128u {
                let i = 128u * (k / 64u) + k % 64u;
                return (wg_code(bs, i) & 15u) | ((wg_code(bs, i + 64u) & 15u) << 4u);
            }
            if k < 192u {
                let q = k - 128u;
                let i = 128u * (q / 32u) + q % 32u;
                return (wg_code(bs, i) >> 4u) | ((wg_code(bs, i + 32u) >> 4u) << 2u) | ((wg_code(bs, i + 64u) >> 4u) << 4u) | ((wg_code(bs, i + 96u) >> 4u) << 6u);
            }
            if k < 208u {
                return wg_ls(bs, k - 192u);
            }
            return half_byte(bits.x, k);
        }
    }
}

// Every K type: invocation `n * block + j` (n = QK / sub_len()) runs sub-block j of `block`;
// the first of each block runs its step; a unit's (a block's, or a Q3_K/Q6_K pair's)
// invocations write its words, a few each. A flag set by any step of any of a unit's blocks
// sends the whole unit to the CPU, as one invocation per unit would have. Every barrier is
// reached by the whole workgroup.
//
// One invocation per block kept an H200 mostly idle (Q4_K 7 GB/s, Q6_K 8); per sub-block, with
// the bytes written in parallel, Q6_K's kernel ran 4.6-4.9x faster, Q3_K's 4.2-4.5x, Q2_K's
// 2.2-2.3x (two runs).
@compute @workgroup_size(256)
fn quantize_blocks_sub(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) at: u32) {
    let n = sub_len();
    let per_block = QK / n;
    let per_unit = per_block * UNIT;
    let flat = flat_index(gid, nwg);
    let unit = flat / per_unit;
    let block = flat / per_block;
    let j = flat % per_block;
    let uslot = at / per_unit;
    let bslot = at / per_block;
    let live = block < u.n_segs;
    let weighted = u.weighted != 0u;
    bad = false;
    if at % per_unit == 0u {
        atomicStore(&wg_flag[uslot], 0u);
    }
    workgroupBarrier();
    // 1. As one invocation per block did: a non-finite value or a magnitude of 2^16 (Q3_K:
    // 2^12) anywhere in the block, or an importance weight of 2^15, sends the unit to the CPU.
    if live {
        block_at = block * QK;
        var amax = 0u;
        var finite = true;
        for (var i = 0u; i < n; i++) {
            xb[i] = input[block_at + n * j + i];
            finite = finite && is_finite(xb[i]);
            amax = max(amax, xb[i] & 0x7fffffffu);
        }
        if weighted {
            qw_at = ((u.first_block + block) % u.blocks_per_row) * QK + n * j;
            for (var i = 0u; i < n; i++) {
                if (imatrix[qw_at + i] & 0x7fffffffu) >= BIG_QW {
                    bad = true;
                }
            }
        }
        if !finite || amax >= select(BIG, BIG_Q3_K, TYPE == Q3_K) {
            bad = true;
        }
        if bad {
            atomicOr(&wg_flag[uslot], 1u);
        }
    }
    workgroupBarrier();
    // 2. The sub-block's search. With an importance matrix every type but Q6_K weighs by the
    // block's sigma2 (doubled but for Q2_K): each invocation sums it, in the reference's order,
    // from a block now known finite and bounded.
    if live && atomicLoad(&wg_flag[uslot]) == 0u {
        var s2 = 0.0;
        if weighted && TYPE != Q6_K {
            s2 = block_sigma2(TYPE != Q2_K);
        }
        let r = k_search(s2);
        wg_scale[at] = r.x;
        wg_min[at] = r.y;
        wg_sw[at] = r.z;
        if bad {
            atomicOr(&wg_flag[uslot], 1u);
        }
    }
    workgroupBarrier();
    // 3. The block's step, in its first invocation.
    if live && j == 0u && atomicLoad(&wg_flag[uslot]) == 0u {
        for (var k = 0u; k < per_block; k++) {
            scales[k] = wg_scale[at + k];
            mins[k] = wg_min[at + k];
            sw[k] = wg_sw[at + k];
        }
        wg_bits[bslot] = k_block_step();
        for (var k = 0u; k < per_block; k++) {
            wg_lslm[at + k] = ls[k] | (lm[k] << 8u);
        }
        if bad {
            atomicOr(&wg_flag[uslot], 1u);
        }
    }
    workgroupBarrier();
    // 4. The sub-block's codes against the stored scales, into the workgroup's copy of the block.
    if live && atomicLoad(&wg_flag[uslot]) == 0u {
        ls[j] = wg_lslm[at] & 0xffu;
        lm[j] = wg_lslm[at] >> 8u;
        k_codes(j, wg_bits[bslot]);
        for (var k = 0u; k < n / 4u; k++) {
            let i = 4u * k;
            wg_codes[64u * bslot + (n / 4u) * j + k] = (u32(codes[i]) & 0xffu) | ((u32(codes[i + 1u]) & 0xffu) << 8u) | ((u32(codes[i + 2u]) & 0xffu) << 16u) | ((u32(codes[i + 3u]) & 0xffu) << 24u);
        }
        if bad {
            atomicOr(&wg_flag[uslot], 1u);
        }
    }
    workgroupBarrier();
    // 5. The unit's words, split among its invocations; the host encodes a flagged unit on the
    // CPU (whatever was written).
    if unit >= u.n_units {
        return;
    }
    let lane = at % per_unit;
    if atomicLoad(&wg_flag[uslot]) != 0u {
        if lane == 0u {
            redo[unit] = 1u;
        }
        return;
    }
    let bytes = block_bytes();
    let blocks = min(UNIT, u.n_segs - UNIT * unit);
    let words = (blocks * bytes + 3u) / 4u;
    let first = uslot * UNIT; // the unit's first block slot
    for (var w = lane; w < words; w += per_unit) {
        var word = 0u;
        for (var b = 0u; b < 4u; b++) {
            let k = 4u * w + b;
            if k < blocks * bytes {
                word = word | (k_byte(first + k / bytes, k % bytes) << (8u * b));
            }
        }
        out_words[unit * (UNIT * bytes / 4u) + w] = word;
    }
    if lane == 0u {
        redo[unit] = 0u;
    }
}

// The `_ref` path's 4-bit scales and mins of Q2_K against their maxima: ls (scale | min << 4)
// and the f16 bits of (max_scale / 15, max_min / 15).
fn q2_k_scales() -> vec2<u32> {
    var max_scale = 0.0;
    var max_min = 0.0;
    for (var j = 0u; j < 16u; j++) {
        if lt(max_scale, scales[j]) {
            max_scale = scales[j];
        }
        if lt(max_min, mins[j]) {
            max_min = mins[j];
        }
        ls[j] = 0u;
    }
    var dbits = 0u;
    if max_scale > 0.0 {
        let iscale = kdiv(15.0, max_scale);
        for (var j = 0u; j < 16u; j++) {
            ls[j] = u32(nearest(pm(iscale, scales[j]))) & 0xffu;
        }
        dbits = f16_bits(bitcast<u32>(kdiv(max_scale, 15.0)));
    }
    var mbits = 0u;
    if max_min > 0.0 {
        let iscale = kdiv(15.0, max_min);
        for (var j = 0u; j < 16u; j++) {
            ls[j] = ls[j] | ((u32(nearest(pm(iscale, mins[j]))) << 4u) & 0xffu);
        }
        mbits = f16_bits(bitcast<u32>(kdiv(max_min, 15.0)));
    }
    return vec2<u32>(dbits, mbits);
}

// search.rs' make_q3_quants(nmax 4) over xb[0..16]: codes `l + 4` (0 for a zero group) into
// codes[0..16]; returns the scale.
fn make_q3_quants() -> f32 {
    let am = signed_absmax(16u);
    let mx = am.y;
    if am.x < GROUP_MAX_EPS {
        for (var i = 0u; i < 16u; i++) {
            codes[i] = 0;
        }
        return 0.0;
    }
    let iscale = kdiv(-4.0, f(mx));
    var sumlx = 0.0;
    var suml2 = 0.0;
    for (var i = 0u; i < 16u; i++) {
        let x = x_at(i);
        let l = clamp(nearest(pm(iscale, x)), -4, 3);
        codes[i] = l;
        let w = pm(x, x);
        let lf = f32(l);
        sumlx = sumlx + pm(pm(w, x), lf);
        suml2 = suml2 + pm(pm(w, lf), lf);
    }
    for (var it = 0u; it < 5u; it++) {
        var changed = false;
        for (var i = 0u; i < 16u; i++) {
            let x = x_at(i);
            let w = pm(x, x);
            let wx = pm(w, x);
            let li = f32(codes[i]);
            let slx = keep(sumlx - pm(wx, li));
            if !(slx > 0.0) {
                continue; // not taken; the reference's quotient is not needed
            }
            let sl2 = keep(suml2 - pm(pm(w, li), li));
            let new_l = clamp(nearest(kdiv(pm(x, sl2), slx)), -4, 3);
            let nf = f32(new_l);
            let slx2 = keep(slx + pm(wx, nf));
            let sl22 = keep(sl2 + pm(pm(w, nf), nf));
            if new_l != codes[i] && sl22 > 0.0 && pm(pm(slx2, slx2), suml2) > pm(pm(sumlx, sumlx), sl22) {
                codes[i] = new_l;
                sumlx = slx2;
                suml2 = sl22;
                changed = true;
            }
        }
        if !changed || bad {
            break;
        }
    }
    for (var i = 0u; i < 16u; i++) {
        codes[i] = codes[i] + 4;
    }
    if !(suml2 > 0.0) {
        return 0.0;
    }
    return kdiv(sumlx, suml2);
}

// The `_ref` path's 6-bit signed scales of Q3_K against -32/max_scale: ls (l + 32), returns d.
fn q3_k_scales() -> f32 {
    var amax = 0.0;
    var max_scale = 0.0;
    for (var j = 0u; j < 16u; j++) {
        if abs(scales[j]) > amax {
            amax = abs(scales[j]);
            max_scale = scales[j];
        }
    }
    var d = 0.0;
    if max_scale != 0.0 {
        let iscale = kdiv(-32.0, max_scale);
        for (var j = 0u; j < 16u; j++) {
            ls[j] = u32(clamp(as_i8(nearest(pm(iscale, scales[j]))), -32, 31) + 32);
        }
        d = kdiv(1.0, iscale);
    } else {
        for (var j = 0u; j < 16u; j++) {
            ls[j] = 0u; // ggml leaves the scales (and d) zero
        }
    }
    return d;
}

// A check of `sqrt_rn` alone (src/gpu/ggml.rs' tests): out_words[i] = sqrt_rn(input[i]) for
// i < n_units.
@compute @workgroup_size(256)
fn sqrt_check(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if i >= u.n_units {
        return;
    }
    out_words[i] = sqrt_rn(input[i]);
}

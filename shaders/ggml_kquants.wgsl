// ggml's K-quants without an importance matrix: the twin of src/quant/ggml/q2_k.rs, q3_k.rs,
// q4_k.rs (Q4_K, Q5_K), q6_k.rs and search.rs read with one lane (V = f32, qw = None), line by
// line and in the same order. Follows ggml_common.wgsl.
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
// * 256 elements per block, still two blocks per invocation: per block, Q6_K's searches take
//   about 5,700 loop iterations (16 sub-blocks x (16 + 19 x 16 + 16)), Q4_K's about 13,000
//   (8 x (4 x 32 + 21 x 2 x 32 + 32), plus 25 per square root), Q5_K's fewer (16 steps),
//   Q2_K's about 10,000 (16 x (5 x 16 + 16 x 2 x 16)), Q3_K's about 3,000 (at most five passes
//   of 16 per sub-block): a pair stays far below llvmpipe's 65,535 per invocation. The codes of
//   a search's best candidate are recomputed from its inverse scale (and min) at the end
//   instead of copied at each improvement.

const QK: u32 = 256u;

const BIG: u32 = 0x47800000u;           // 2^16: a block with a larger magnitude goes to the CPU
const BIG_Q3_K: u32 = 0x45800000u;      // 2^12

var<private> xb: array<u32, 256>;
var<private> codes: array<i32, 256>;
var<private> sc: array<i32, 16>;
var<private> scales: array<f32, 16>;
var<private> mins: array<f32, 16>;
var<private> ls: array<u32, 16>;
var<private> lm: array<u32, 16>;

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

// `make_qx_quants(n, nmax, x, L, 1, NULL)` over xb[o..o+n] for an `iscale`: the sums of the
// codes it gives, (sumlx, suml2), weights x².
fn qx_sums(o: u32, n: u32, nmax: i32, iscale: f32) -> vec2<f32> {
    var sumlx = 0.0;
    var suml2 = 0.0;
    for (var i = 0u; i < n; i++) {
        let x = x_at(o + i);
        let l = clamp(nearest(pm(iscale, x)), -nmax, nmax - 1);
        let w = pm(x, x);
        let lf = f32(l);
        sumlx = sumlx + pm(pm(w, x), lf);
        suml2 = suml2 + pm(pm(w, lf), lf);
    }
    return vec2<f32>(sumlx, suml2);
}

// search.rs' make_qx_quants (rmse_type 1, no weights) over xb[o..o+n]: codes `l + nmax` into
// codes[o..o+n], returns the scale. The codes of the best candidate are recomputed from its
// inverse scale at the end (the same operations give the same codes).
fn make_qx_quants(o: u32, n: u32, nmax: i32) -> f32 {
    var amax = 0u;
    var mx = 0u;
    for (var i = 0u; i < n; i++) {
        let a = xb[o + i] & 0x7fffffffu;
        if a > amax {
            amax = a;
            mx = xb[o + i];
        }
    }
    if amax < GROUP_MAX_EPS {
        for (var i = 0u; i < n; i++) {
            codes[o + i] = 0;
        }
        return 0.0;
    }
    let nmaxf = f32(nmax);
    var best_is = kdiv(-nmaxf, f(mx));
    let s = qx_sums(o, n, nmax, best_is);
    var scale = 0.0;
    if s.y != 0.0 {
        scale = kdiv(s.x, s.y);
    }
    var best = pm(scale, s.x);
    for (var is = -9; is <= 9; is++) {
        if is == 0 {
            continue;
        }
        let iscale = kdiv(-keep(nmaxf + pm(f(TENTH), f32(is))), f(mx));
        let t = qx_sums(o, n, nmax, iscale);
        if t.y > 0.0 && pm(t.x, t.x) > pm(best, t.y) {
            scale = kdiv(t.x, t.y);
            best = pm(scale, t.x);
            best_is = iscale;
        }
    }
    for (var i = 0u; i < n; i++) {
        codes[o + i] = clamp(nearest(pm(best_is, x_at(o + i))), -nmax, nmax - 1) + nmax;
    }
    return scale;
}

// Q6_K: sixteen make_qx_quants(16, 32) sub-blocks, 8-bit scales against -128/max_scale.
fn encode_q6_k() -> bool {
    for (var ib = 0u; ib < 16u; ib++) {
        scales[ib] = make_qx_quants(16u * ib, 16u, 32);
    }
    var max_scale = 0.0;
    var max_abs = 0.0;
    for (var ib = 0u; ib < 16u; ib++) {
        if abs(scales[ib]) > max_abs {
            max_abs = abs(scales[ib]);
            max_scale = scales[ib];
        }
    }
    if bitcast<u32>(max_abs) < GROUP_MAX_EPS {
        for (var k = 0u; k < 210u; k++) {
            emit(0u); // ggml writes an all-zero block
        }
        return !bad;
    }
    let iscale = kdiv(-128.0, max_scale);
    let dbits = f16_bits(bitcast<u32>(kdiv(1.0, iscale)));
    for (var ib = 0u; ib < 16u; ib++) {
        sc[ib] = as_i8(min(nearest(pm(iscale, scales[ib])), 127));
    }
    let d = f16_value(dbits);
    for (var j = 0u; j < 16u; j++) {
        let dj = pm(d, f32(sc[j]));
        if (bitcast<u32>(dj) & 0x7fffffffu) == 0u {
            continue;
        }
        for (var ii = 0u; ii < 16u; ii++) {
            let i = 16u * j + ii;
            codes[i] = clamp(nearest(kdiv(x_at(i), dj)), -32, 31) + 32;
        }
    }
    if bad {
        return false;
    }
    // ql: byte k of each 64-byte half holds the low nibbles of codes k and k+64 (then k+32 and
    // k+96); qh: the top two bits of codes k, k+32, k+64, k+96.
    for (var q = 0u; q < 128u; q++) {
        let i = 128u * (q / 64u) + q % 64u;
        emit(u32((codes[i] & 15) | ((codes[i + 64u] & 15) << 4u)));
    }
    for (var q = 0u; q < 64u; q++) {
        let i = 128u * (q / 32u) + q % 32u;
        emit(u32((codes[i] >> 4u) | ((codes[i + 32u] >> 4u) << 2u) | ((codes[i + 64u] >> 4u) << 4u) | ((codes[i + 96u] >> 4u) << 6u)));
    }
    for (var ib = 0u; ib < 16u; ib++) {
        emit(u32(sc[ib]));
    }
    emit16(dbits);
    return true;
}

// ggml's 12-byte packing of eight 6-bit scales and mins (`pack_scale_min`).
fn emit_scale_min() {
    var s: array<u32, 12>;
    for (var j = 0u; j < 8u; j++) {
        if j < 4u {
            s[j] = ls[j];
            s[j + 4u] = lm[j];
        } else {
            s[j + 4u] = (ls[j] & 0xfu) | ((lm[j] & 0xfu) << 4u);
            s[j - 4u] = s[j - 4u] | ((ls[j] >> 4u) << 6u);
            s[j] = s[j] | ((lm[j] >> 4u) << 6u);
        }
    }
    for (var k = 0u; k < 12u; k++) {
        emit(s[k]);
    }
}

// Q4_K (nmax 15) and Q5_K (nmax 31): eight make_qkx2_quants(32) sub-blocks with weights
// av_x + |x|, 6-bit scales and mins against their maxima, every weight again against them.
fn encode_q45_k(nmax: i32) -> bool {
    for (var j = 0u; j < 8u; j++) {
        let o = 32u * j;
        var sum_x2 = 0.0;
        for (var l = 0u; l < 32u; l++) {
            sum_x2 = sum_x2 + pm(x_at(o + l), x_at(o + l));
        }
        let av_x = f(sqrt_rn(bitcast<u32>(kdiv(sum_x2, 32.0))));
        for (var l = 0u; l < 32u; l++) {
            wts[l] = keep(av_x + abs(x_at(o + l)));
        }
        var r: vec2<f32>;
        if nmax == 15 {
            r = make_qkx2_quants(o, 32u, 15, -1.0, f(TENTH), 20, false);
        } else {
            r = make_qkx2_quants(o, 32u, 31, -0.5, f(TENTH), 15, false);
        }
        scales[j] = r.x;
        mins[j] = r.y;
        if bad {
            return false;
        }
    }
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
    let dbits = f16_bits(bitcast<u32>(kdiv(max_scale, 63.0)));
    let mbits = f16_bits(bitcast<u32>(kdiv(max_min, 63.0)));
    let d = f16_value(dbits);
    let dmin = f16_value(mbits);
    for (var j = 0u; j < 8u; j++) {
        let dj = pm(d, f32(ls[j]));
        if (bitcast<u32>(dj) & 0x7fffffffu) == 0u {
            continue;
        }
        let dm = pm(dmin, f32(lm[j]));
        for (var ii = 0u; ii < 32u; ii++) {
            let i = 32u * j + ii;
            codes[i] = clamp(nearest(kdiv(keep(x_at(i) + dm), dj)), 0, nmax);
        }
    }
    if bad {
        return false;
    }
    emit16(dbits);
    emit16(mbits);
    emit_scale_min();
    if nmax == 31 {
        // qh: bit 4 of codes 64g+k and 64g+k+32 at bits 2g and 2g+1 of byte k
        for (var k = 0u; k < 32u; k++) {
            var h = 0u;
            for (var g = 0u; g < 4u; g++) {
                h = h | (u32((codes[64u * g + k] >> 4u) & 1) << (2u * g));
                h = h | (u32((codes[64u * g + k + 32u] >> 4u) & 1) << (2u * g + 1u));
            }
            emit(h);
        }
    }
    for (var q = 0u; q < 128u; q++) {
        let i = 64u * (q / 32u) + q % 32u;
        emit(u32((codes[i] & 15) | ((codes[i + 32u] & 15) << 4u)));
    }
    return true;
}

// Q2_K: sixteen make_qkx2_quants(16, 3) sub-blocks with weights |x| (absolute error), 4-bit
// scales and mins against their maxima.
fn encode_q2_k() -> bool {
    for (var j = 0u; j < 16u; j++) {
        let o = 16u * j;
        for (var l = 0u; l < 16u; l++) {
            wts[l] = abs(x_at(o + l));
        }
        let r = make_qkx2_quants(o, 16u, 3, -0.5, f(TENTH), 15, true);
        scales[j] = r.x;
        mins[j] = r.y;
        if bad {
            return false;
        }
    }
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
    let d = f16_value(dbits);
    let dmin = f16_value(mbits);
    for (var j = 0u; j < 16u; j++) {
        let dj = pm(d, f32(ls[j] & 0xfu));
        if (bitcast<u32>(dj) & 0x7fffffffu) == 0u {
            continue;
        }
        let dm = pm(dmin, f32(ls[j] >> 4u));
        for (var ii = 0u; ii < 16u; ii++) {
            let i = 16u * j + ii;
            codes[i] = clamp(nearest(kdiv(keep(x_at(i) + dm), dj)), 0, 3);
        }
    }
    if bad {
        return false;
    }
    for (var j = 0u; j < 16u; j++) {
        emit(ls[j]);
    }
    emit_2bit();
    emit16(dbits);
    emit16(mbits);
    return true;
}

// pack_2bit: byte k of each 32-byte group holds the low two bits of codes k, k+32, k+64, k+96
// of its 128 weights, lowest first.
fn emit_2bit() {
    for (var q = 0u; q < 64u; q++) {
        let i = 128u * (q / 32u) + q % 32u;
        emit(u32((codes[i] & 3) | ((codes[i + 32u] & 3) << 2u) | ((codes[i + 64u] & 3) << 4u) | ((codes[i + 96u] & 3) << 6u)));
    }
}

// search.rs' make_q3_quants(nmax 4) over xb[o..o+16]: codes `l + 4` (0 for a zero group) into
// codes[o..o+16]; returns the scale.
fn make_q3_quants(o: u32) -> f32 {
    var amax = 0u;
    var mx = 0u;
    for (var i = 0u; i < 16u; i++) {
        let a = xb[o + i] & 0x7fffffffu;
        if a > amax {
            amax = a;
            mx = xb[o + i];
        }
    }
    if amax < GROUP_MAX_EPS {
        for (var i = 0u; i < 16u; i++) {
            codes[o + i] = 0;
        }
        return 0.0;
    }
    let iscale = kdiv(-4.0, f(mx));
    var sumlx = 0.0;
    var suml2 = 0.0;
    for (var i = 0u; i < 16u; i++) {
        let x = x_at(o + i);
        let l = clamp(nearest(pm(iscale, x)), -4, 3);
        codes[o + i] = l;
        let w = pm(x, x);
        let lf = f32(l);
        sumlx = sumlx + pm(pm(w, x), lf);
        suml2 = suml2 + pm(pm(w, lf), lf);
    }
    for (var it = 0u; it < 5u; it++) {
        var changed = false;
        for (var i = 0u; i < 16u; i++) {
            let x = x_at(o + i);
            let w = pm(x, x);
            let wx = pm(w, x);
            let li = f32(codes[o + i]);
            let slx = keep(sumlx - pm(wx, li));
            if !(slx > 0.0) {
                continue; // not taken; the reference's quotient is not needed
            }
            let sl2 = keep(suml2 - pm(pm(w, li), li));
            let new_l = clamp(nearest(kdiv(pm(x, sl2), slx)), -4, 3);
            let nf = f32(new_l);
            let slx2 = keep(slx + pm(wx, nf));
            let sl22 = keep(sl2 + pm(pm(w, nf), nf));
            if new_l != codes[o + i] && sl22 > 0.0 && pm(pm(slx2, slx2), suml2) > pm(pm(sumlx, sumlx), sl22) {
                codes[o + i] = new_l;
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
        codes[o + i] = codes[o + i] + 4;
    }
    if !(suml2 > 0.0) {
        return 0.0;
    }
    return kdiv(sumlx, suml2);
}

// Q3_K: sixteen make_q3_quants sub-blocks, 6-bit signed scales against -32/max_scale.
fn encode_q3_k() -> bool {
    for (var j = 0u; j < 16u; j++) {
        scales[j] = make_q3_quants(16u * j);
    }
    if bad {
        return false;
    }
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
    let dbits = f16_bits(bitcast<u32>(d));
    let d16 = f16_value(dbits);
    for (var j = 0u; j < 16u; j++) {
        let dj = pm(d16, f32(i32(ls[j]) - 32));
        if (bitcast<u32>(dj) & 0x7fffffffu) == 0u {
            continue;
        }
        for (var ii = 0u; ii < 16u; ii++) {
            let i = 16u * j + ii;
            codes[i] = clamp(nearest(kdiv(x_at(i), dj)), -4, 3) + 4;
        }
    }
    if bad {
        return false;
    }
    // hmask: the high bit of code j at bit j / 32 of byte j % 32
    for (var m = 0u; m < 32u; m++) {
        var h = 0u;
        for (var k = 0u; k < 8u; k++) {
            h = h | (u32((codes[32u * k + m] >> 2u) & 1) << k);
        }
        emit(h);
    }
    emit_2bit();
    // the low nibbles of scales k and k+8, then the top two bits of m, m+4, m+8, m+12
    for (var k = 0u; k < 8u; k++) {
        emit((ls[k] & 15u) | ((ls[k + 8u] & 15u) << 4u));
    }
    for (var m = 0u; m < 4u; m++) {
        var t = 0u;
        for (var g = 0u; g < 4u; g++) {
            t = t | (((ls[4u * g + m] >> 4u) & 3u) << (2u * g));
        }
        emit(t);
    }
    emit16(dbits);
    return true;
}

fn encode_block() -> bool {
    bad = false;
    var amax = 0u;
    for (var j = 0u; j < QK; j++) {
        amax = max(amax, xb[j] & 0x7fffffffu);
    }
    if amax >= BIG || (TYPE == 11u && amax >= BIG_Q3_K) {
        return false;
    }
    switch TYPE {
        case 10u: {
            return encode_q2_k();
        }
        case 11u: {
            return encode_q3_k();
        }
        case 12u: {
            return encode_q45_k(15);
        }
        case 13u: {
            return encode_q45_k(31);
        }
        default: {
            return encode_q6_k();
        }
    }
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

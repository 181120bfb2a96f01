// ggml's K-quants without an importance matrix: the twin of src/quant/ggml/q6_k.rs (and
// search.rs) read with one lane (V = f32, qw = None), line by line and in the same order.
// Follows ggml_common.wgsl.
//
// Exact as the CPU, beyond what ggml_common.wgsl says:
// * every division is `kdiv` (correctly rounded `fdiv`); a division by zero or one that
//   overflows, which the reference does not guard, flags the block (`bad`);
// * every product that feeds an addition, and every sum that feeds another operation with a
//   constant, goes through `opaque` (`pm`, `keep`), so the compiler can neither fuse it into an
//   FMA nor reassociate the constants;
// * ggml's `nearest_int` is the bits of `v + 12582912.0` (`nearest`);
// * no run-time infinity or NaN is ever computed: a block with a magnitude of 2^16 or more is
//   left to the CPU (below that bound no product or sum of the searches can overflow), as is a
//   block whose f16 super-scale would be infinite;
// * 256 elements per block, still two blocks per invocation: Q6_K's searches take about 5,700
//   loop iterations per block (16 sub-blocks x (16 + 19 x 16 + 16)), far below llvmpipe's
//   65,535 per invocation.

const QK: u32 = 256u;

const GROUP_MAX_EPS: u32 = 0x26901d7du; // 1e-15f
const BIG: u32 = 0x47800000u;           // 2^16: a block with a larger magnitude goes to the CPU
const TENTH: u32 = 0x3dcccccdu;         // 0.1f

var<private> xb: array<u32, 256>;
var<private> codes: array<i32, 256>;
var<private> sc: array<i32, 16>;
var<private> scales: array<f32, 16>;
var<private> bad: bool;

fn block_bytes() -> u32 {
    switch TYPE {
        case 10u: { return 84u; }
        case 11u: { return 110u; }
        case 12u: { return 144u; }
        case 13u: { return 176u; }
        default: { return 210u; }
    }
}

// A product no compiler may fuse with the addition it feeds.
fn pm(a: f32, b: f32) -> f32 {
    return f(opaque(bitcast<u32>(a * b)));
}

// A rounded value the compiler may not reassociate with what follows.
fn keep(v: f32) -> f32 {
    return f(opaque(bitcast<u32>(v)));
}

// ggml's `nearest_int`: the float adder rounds to nearest even.
fn nearest(v: f32) -> i32 {
    return i32(bitcast<u32>(keep(v) + 12582912.0) & MANT) - 0x400000;
}

// `a / b`, correctly rounded; a zero divisor or an overflow flags the block.
fn kdiv(a: f32, b: f32) -> f32 {
    if (bitcast<u32>(b) & 0x7fffffffu) == 0u {
        bad = true;
        return 0.0;
    }
    let q = fdiv(bitcast<u32>(a), bitcast<u32>(b));
    if !is_finite(q) {
        bad = true;
        return 0.0;
    }
    return f(q);
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

fn x_at(i: u32) -> f32 {
    return f(xb[i]);
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

fn encode_block() -> bool {
    bad = false;
    var amax = 0u;
    for (var j = 0u; j < QK; j++) {
        amax = max(amax, xb[j] & 0x7fffffffu);
    }
    if amax >= BIG {
        return false;
    }
    switch TYPE {
        default: {
            return encode_q6_k();
        }
    }
}

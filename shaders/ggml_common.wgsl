// What every ggml block kernel shares: the bindings and the exact helpers. Appended to
// common.wgsl; a family file follows with its entry point: ggml_legacy.wgsl (`quantize_blocks`,
// one invocation per unit, each block's arithmetic inside it in the reference's order) or
// ggml_kquants.wgsl (`quantize_blocks_sub`, one invocation per sub-block search). Each declares
// `QK` (elements per block), `xb` (the values an invocation searches, as bits) and `codes`.
//
// A unit of `UNIT` blocks: one block where a block is whole u32 words (Q4_1, Q5_1, Q2_K, Q4_K,
// Q5_K: 20, 24, 84, 144, 176 bytes), else a pair, which always is (36, 44, 68, 220, 420 bytes),
// so no word has two writers.
//
// Exact as the CPU, and why (src/gpu/ggml.rs says what the host checks):
// * division: `fdiv`, correctly rounded integer long division (`div_rn`), never WGSL's `/`;
// * no fused multiply-add: every product that feeds an addition goes through `opaque`;
// * subnormals: the pipeline is built by `exact_f32_pipeline` (DenormPreserve on Vulkan) and
//   used only where the subnormal probe and a self-test passed;
// * extremes, signed zeros, the f16 rounding and C's float → int conversion are computed on
//   the bits;
// * a block whose reference arithmetic meets an infinity or a NaN (a non-finite input, an
//   overflowing range, an inverse scale past f32's range) is not encoded here: its unit is
//   flagged and the host encodes the unit with the CPU reference (WGSL leaves a run-time
//   infinity or NaN indeterminate).

// ggml's type id (`GgmlType::id`: 2 Q4_0, 3 Q4_1, 6 Q5_0, 7 Q5_1, 8 Q8_0, 10 Q2_K, ...).
override TYPE: u32;
// Blocks per invocation (1 or 2; the host's `unit_blocks`).
override UNIT: u32;

// n_segs: blocks in the chunk; n_units: units (invocations that do work); with an importance
// matrix (`weighted` 1), the chunk's first block in the call is `first_block`, and a block's
// column (block within its row) and row follow from `blocks_per_row`.
struct GgmlUniforms {
    n_segs: u32,
    n_units: u32,
    // Always 0 at run time; unknown to the compiler (`opaque`).
    zero_mask: u32,
    _pad: u32,
    first_block: u32,
    blocks_per_row: u32,
    weighted: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> u: GgmlUniforms;
@group(0) @binding(1) var<storage, read> input: array<u32>;
@group(0) @binding(2) var<storage, read_write> out_words: array<u32>;
@group(0) @binding(3) var<storage, read_write> redo: array<u32>;
// The importance matrix: one row of `n_per_row` weights (f32 bits) for the whole call.
@group(0) @binding(4) var<storage, read> imatrix: array<u32>;
// The 32-element types' `sigma2` of each row of the call (f32 bits; the host computes it with
// the CPU's code, `ggml::row_sigma2`).
@group(0) @binding(5) var<storage, read> row_sigma2: array<u32>;

const NEG_ZERO: u32 = 0x80000000u;

// With an importance matrix: where the block's weights start in `imatrix`.
var<private> qw_at: u32;
// Where the block's values start in `input`.
var<private> block_at: u32;

fn is_finite(b: u32) -> bool {
    return (b & INF_BITS) != INF_BITS;
}

// A correctly rounded `a / b` for finite a and finite nonzero b (an overflow gives ±inf).
fn fdiv(a: u32, b: u32) -> u32 {
    let sign = (a ^ b) & NEG_ZERO;
    if (a & 0x7fffffffu) == 0u {
        return sign;
    }
    let x = unpack(a & 0x7fffffffu);
    let y = unpack(b & 0x7fffffffu);
    return sign | div_rn(x.sig, x.exp, y.sig, y.exp);
}

// `d ? 1.0f/d : 0.0f`
fn inverse(d: u32) -> u32 {
    if (d & 0x7fffffffu) == 0u {
        return 0u;
    }
    return fdiv(0x3f800000u, d);
}

// ggml's f32 → f16 (round to nearest even; NaN becomes 0x7e00 with its sign).
fn f16_bits(b: u32) -> u32 {
    let sign = (b >> 16u) & 0x8000u;
    let mag = b & 0x7fffffffu;
    if mag > INF_BITS {
        return sign | 0x7e00u;
    }
    if mag >= 0x477ff000u { // 65520 and up round to infinity
        return sign | 0x7c00u;
    }
    if mag >= 0x38800000u { // 2^-14 and up: normal; the carry of the rounding may raise the exponent
        let r = mag - 0x38000000u;
        return sign | ((r + 0x0fffu + ((r >> 13u) & 1u)) >> 13u);
    }
    if mag < 0x33000000u { // below 2^-25: zero
        return sign;
    }
    // a subnormal f16: the value in units of 2^-24, rounded to nearest even
    let e = mag >> 23u;
    let m = (mag & MANT) | HIDDEN;
    let sh = 126u - e;
    var q = m >> sh;
    let rem = m & ((1u << sh) - 1u);
    let halfway = 1u << (sh - 1u);
    if rem > halfway || (rem == halfway && (q & 1u) == 1u) {
        q = q + 1u;
    }
    return sign | q;
}

// C's `(int)v` as x86-64 executes it: truncation, and i32::MIN for NaN and out-of-range values.
fn c_trunc(b: u32) -> i32 {
    if ((b >> 23u) & 0xffu) >= 158u {
        return i32(NEG_ZERO);
    }
    return i32(f(b));
}

// `(int8_t)v`
fn as_i8(v: i32) -> i32 {
    return (v << 24u) >> 24u;
}

// `x*id + c` with two roundings.
fn mul_add(x: u32, id: u32, c: f32) -> u32 {
    return bitcast<u32>(f(opaque(bitcast<u32>(f(x) * f(id)))) + c);
}

// C's `roundf` (ties away from zero) of a finite value.
fn roundf(b: u32) -> u32 {
    let v = f(b);
    let t = trunc(v);
    if abs(v - t) >= 0.5 {
        return bitcast<u32>(t + sign(v));
    }
    return bitcast<u32>(t);
}

// A float's place in `<` order, with -0 == +0 (for finite values).
fn key(b: u32) -> i32 {
    if b == NEG_ZERO {
        return 0;
    }
    return order_key(b);
}

// The searches' state and helpers, shared by both families (each declares `xb` and `codes`,
// as long as the longest group one invocation searches: 32).

const GROUP_MAX_EPS: u32 = 0x26901d7du; // 1e-15f
const TENTH: u32 = 0x3dcccccdu;         // 0.1f
// The make_qkx3_quants grid of the importance-matrix quantizers: rmin -0.9f, rdelta 0.05f (bits,
// not literals, whose rounding to f32 WGSL does not pin down).
const QKX3_RMIN: u32 = 0xbf666666u;
const QKX3_RDELTA: u32 = 0x3d4ccccdu;
// An importance-matrix weight of this magnitude (2^15) or more sends its block to the CPU.
const BIG_QW: u32 = 0x47000000u;

// Set when a block's reference arithmetic would leave the exact range: the block goes to the CPU.
var<private> bad: bool;
var<private> wts: array<f32, 32>;
var<private> laux: array<i32, 32>;

// `e` with |v| < 2^e, for a finite v: the exponent field, unbiased, plus one.
fn ex(v: f32) -> i32 {
    return i32((bitcast<u32>(v) >> 23u) & 0xffu) - 126;
}

// Flags the block when 2^e, a bound on a product or sum its reference arithmetic computes, could
// reach f32's range (2^128; the margin covers the bounds' own rounding).
fn fits(e: i32) {
    if e >= 126 {
        bad = true;
    }
}

// Bits of the largest code magnitude `nmax` (a code |l| <= nmax is below 2^bits(nmax)).
fn bits(nmax: i32) -> i32 {
    return 32 - i32(countLeadingZeros(u32(nmax)));
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

// t*t for t < 2^25, as (high, low) words.
fn square64(t: u32) -> vec2<u32> {
    let a = t >> 16u;
    let b = t & 0xffffu;
    let lo0 = b * b;
    let mid = 2u * a * b; // < 2^26
    let lo = lo0 + (mid << 16u);
    return vec2<u32>(a * a + (mid >> 16u) + select(0u, 1u, lo < lo0), lo);
}

// C's `sqrtf` of a finite non-negative float, correctly rounded: `sig * 2^exp` becomes
// N = sig << p (p = 25 or 26, so exp - p is even and N in [2^48, 2^50)); q = floor(sqrt(N)) has
// 25 bits, found bit by bit against N as a pair of words; the 24-bit result is q rounded by its
// last bit (a square root is never exactly halfway between two floats).
fn sqrt_rn(b: u32) -> u32 {
    if (b & 0x7fffffffu) == 0u {
        return b;
    }
    let x = unpack(b);
    var p = 26u;
    if (x.exp & 1) != 0 {
        p = 25u;
    }
    let nhi = x.sig >> (32u - p);
    let nlo = x.sig << p;
    var q = 0u;
    for (var k = 0u; k < 25u; k++) {
        let t = q | (1u << (24u - k));
        let s = square64(t);
        if s.x < nhi || (s.x == nhi && s.y <= nlo) {
            q = t;
        }
    }
    let e = (x.exp - i32(p)) / 2 + 1; // the result is m * 2^e, m = (q + 1) >> 1 in [2^23, 2^24]
    return (u32(e + 149) << 23u) + ((q + 1u) >> 1u);
}

// `a < b` for finite floats on their order keys (-0 == +0): a compare-and-replace the compiler
// cannot turn into fmin/fmax, whose choice between -0 and +0 is free (and which a zero's sign
// would reach: a super-scale of -0 is stored as f16 0x8000).
fn lt(a: f32, b: f32) -> bool {
    return key(bitcast<u32>(a)) < key(bitcast<u32>(b));
}

fn x_at(i: u32) -> f32 {
    return f(xb[i]);
}

// search.rs' signed_absmax over xb[0..n], on the bits: (the largest magnitude, the first
// element of that magnitude with its sign).
fn signed_absmax(n: u32) -> vec2<u32> {
    var amax = 0u;
    var mx = 0u;
    for (var i = 0u; i < n; i++) {
        let a = xb[i] & 0x7fffffffu;
        if a > amax {
            amax = a;
            mx = xb[i];
        }
    }
    return vec2<u32>(amax, mx);
}

// `make_qkx2_quants` (search.rs' make_qkx_quants) over xb[0..n] with weights wts[0..n]: the
// weighted error (|diff| or diff², `diff = scale*l + min - x`) of the codes in laux, and the
// codes of inverse scale `iscale` against `lmin`.
fn qkx_error(n: u32, scale: f32, min_: f32, abs_err: bool) -> f32 {
    var err = 0.0;
    for (var i = 0u; i < n; i++) {
        let x = x_at(i);
        let lf = f32(laux[i]);
        let diff = keep(keep(pm(scale, lf) + min_) - x);
        var e = pm(diff, diff);
        if abs_err {
            e = abs(diff);
        }
        err = err + pm(wts[i], e);
    }
    return err;
}

fn qkx_codes(n: u32, nmax: i32, iscale: f32, lmin: f32) {
    for (var i = 0u; i < n; i++) {
        laux[i] = clamp(nearest(pm(iscale, keep(x_at(i) - lmin))), 0, nmax);
    }
}

// Returns (scale, the_min = -min); codes L into codes[0..n]. A flat group gives codes 0.
fn make_qkx2_quants(n: u32, nmax: i32, rmin: f32, rdelta: f32, nstep: i32, abs_err: bool) -> vec2<f32> {
    var mn = x_at(0u);
    var mx = x_at(0u);
    var sum_w = wts[0];
    var sum_x = pm(sum_w, x_at(0u));
    for (var i = 1u; i < n; i++) {
        let x = x_at(i);
        if lt(x, mn) {
            mn = x;
        }
        if lt(mx, x) {
            mx = x;
        }
        sum_w = sum_w + wts[i];
        sum_x = sum_x + pm(wts[i], x);
    }
    if lt(0.0, mn) {
        mn = 0.0;
    }
    if mx == mn {
        for (var i = 0u; i < n; i++) {
            codes[i] = 0;
        }
        return vec2<f32>(0.0, -mn);
    }
    let nmaxf = f32(nmax);
    let iscale = kdiv(nmaxf, keep(mx - mn));
    var scale = kdiv(1.0, iscale);
    qkx_codes(n, nmax, iscale, mn);
    var best_error = qkx_error(n, scale, mn, abs_err);
    var best_is = iscale;
    var best_lmin = mn;
    for (var is = 0; is <= nstep; is++) {
        if bad {
            break;
        }
        let cand = kdiv(keep(keep(rmin + pm(rdelta, f32(is))) + nmaxf), keep(mx - mn));
        var sum_l = 0.0;
        var sum_l2 = 0.0;
        var sum_xl = 0.0;
        for (var i = 0u; i < n; i++) {
            let x = x_at(i);
            let l = clamp(nearest(pm(cand, keep(x - mn))), 0, nmax);
            laux[i] = l;
            let w = wts[i];
            let lf = f32(l);
            sum_l = sum_l + pm(w, lf);
            sum_l2 = sum_l2 + pm(pm(w, lf), lf);
            sum_xl = sum_xl + pm(pm(w, lf), x);
        }
        let d = keep(pm(sum_w, sum_l2) - pm(sum_l, sum_l));
        if !(d > 0.0) {
            continue;
        }
        var this_min = kdiv(keep(pm(sum_l2, sum_x) - pm(sum_l, sum_xl)), d);
        var this_scale: f32;
        if lt(0.0, this_min) {
            this_min = 0.0;
            this_scale = kdiv(sum_xl, sum_l2);
        } else {
            this_scale = kdiv(keep(pm(sum_w, sum_xl) - pm(sum_x, sum_l)), d);
        }
        // Beyond 2^40 the error below could overflow (inputs are below 2^16): the CPU's.
        if (bitcast<u32>(this_scale) & 0x7fffffffu) >= 0x53800000u || (bitcast<u32>(this_min) & 0x7fffffffu) >= 0x53800000u {
            bad = true;
            break;
        }
        let cur_error = qkx_error(n, this_scale, this_min, abs_err);
        if cur_error < best_error {
            best_error = cur_error;
            scale = this_scale;
            best_is = cand;
            best_lmin = mn;
            mn = this_min;
        }
    }
    for (var i = 0u; i < n; i++) {
        codes[i] = clamp(nearest(pm(best_is, keep(x_at(i) - best_lmin))), 0, nmax);
    }
    return vec2<f32>(scale, -mn);
}

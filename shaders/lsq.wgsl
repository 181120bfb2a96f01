// method="lsq": the line-by-line twin of src/quant/lsq.rs (same steps, same f32 operations in
// the same order; the definition and its reasoning are written there once). Used by
// quantize.wgsl when the pipeline sets LSQ; groups are read from the tile in `data`.
//
// Plain f32 + - * are correctly rounded in WGSL only where the device keeps subnormals, so the
// backend runs this only after `gpu::lsq::probe_subnormals` found that it does. What WGSL
// allows beyond that is guarded here:
// * every product that feeds an addition goes through `fo` (`opaque`), so it cannot be fused
//   into an FMA, and the round's `+ 2^23` is not folded against its `− 2^23`;
// * divisions are exactly rounded in integers (`div_by_pos`): WGSL's `/` is only 2.5 ulp;
// * comparisons and finiteness tests are on the bits: WGSL lets a compiler assume no inf/NaN;
// * lane sums start from an opaque +0, so `0 + w` cannot be folded to `w` (which would keep −0).

override LSQ: bool = false;

const LANES: u32 = 16u;
const MAGIC: f32 = 8388608.0;
const SIGN: u32 = 0x80000000u;
const ROUNDS: u32 = 5u;

// A candidate grid, as bits (`lsq::Grid`).
struct Grid {
    scale: u32,
    zero: u32,
    inv: u32,
}

// A float the compiler cannot see through.
fn fo(x: f32) -> f32 {
    return f(opaque(bitcast<u32>(x)));
}

// `a < b` as IEEE-754 compares (false with a NaN; −0 == +0), on the bits.
fn lt_bits(a: u32, b: u32) -> bool {
    if (a & 0x7fffffffu) > INF_BITS || (b & 0x7fffffffu) > INF_BITS {
        return false;
    }
    if ((a | b) & 0x7fffffffu) == 0u {
        return false;
    }
    return order_key(a) < order_key(b);
}

// `a / b` correctly rounded, for `b` positive, finite and nonzero (the only divisors lsq has):
// ±inf and NaN numerators pass through, a zero keeps its sign.
fn div_by_pos(a: u32, b: u32) -> u32 {
    let sign = a & SIGN;
    let mag = a & 0x7fffffffu;
    if mag >= INF_BITS {
        return a;
    }
    if mag == 0u {
        return sign;
    }
    let x = unpack(mag);
    let y = unpack(b);
    return sign | div_rn(x.sig, x.exp, y.sig, y.exp);
}

// lsq::code: round_half_even(clamp((w − zero) × inv, 0, L)), as an f32 integer.
fn lsq_code(w: f32, g: Grid, max_code: f32) -> f32 {
    let t = bitcast<u32>(fo((w - f(g.zero)) * f(g.inv)));
    // t > 0 ? t : +0 (NaN and negatives, −0 included, give +0), then t < L ? t : L; on the bits,
    // where non-negative floats order as integers.
    var c = 0u;
    if t != 0u && t <= INF_BITS {
        c = min(t, bitcast<u32>(max_code));
    }
    return fo(f(c) + MAGIC) - MAGIC;
}

fn lsq_fold(a: array<f32, 16>) -> f32 {
    var l = a;
    for (var h = LANES / 2u; h > 0u; h = h >> 1u) {
        for (var j = 0u; j < h; j = j + 1u) {
            l[j] = l[j] + l[j + h];
        }
    }
    return l[0];
}

// lsq::sum: Σ w over the group data[start .. start + n], lane j taking elements j, j + 16, …
fn lsq_sum(start: u32, n: u32) -> f32 {
    var lanes: array<f32, 16>;
    let z = f(opaque(0u));
    for (var j = 0u; j < LANES; j = j + 1u) {
        lanes[j] = z;
    }
    for (var i = 0u; i < n; i = i + 1u) {
        lanes[i & 15u] = lanes[i & 15u] + f(data[start + i]);
    }
    return lsq_fold(lanes);
}

struct Evaluation {
    sse: f32,
    sq: f32,
    sqq: f32,
    sqw: f32,
}

// lsq::evaluate.
fn lsq_evaluate(start: u32, n: u32, g: Grid, max_code: f32) -> Evaluation {
    var sse: array<f32, 16>;
    var sq: array<f32, 16>;
    var sqq: array<f32, 16>;
    var sqw: array<f32, 16>;
    let z = f(opaque(0u));
    for (var j = 0u; j < LANES; j = j + 1u) {
        sse[j] = z;
        sq[j] = z;
        sqq[j] = z;
        sqw[j] = z;
    }
    for (var i = 0u; i < n; i = i + 1u) {
        let j = i & 15u;
        let w = f(data[start + i]);
        let q = lsq_code(w, g, max_code);
        let e = (fo(q * f(g.scale)) + f(g.zero)) - w;
        sse[j] = sse[j] + fo(e * e);
        sq[j] = sq[j] + q;
        sqq[j] = sqq[j] + fo(q * q);
        sqw[j] = sqw[j] + fo(q * w);
    }
    return Evaluation(lsq_fold(sse), lsq_fold(sq), lsq_fold(sqq), lsq_fold(sqw));
}

struct Fit {
    ok: bool,
    g: Grid,
}

// lsq::fit. `ok` is false where the definition stops.
fn lsq_fit(n: u32, e: Evaluation, sw: f32) -> Fit {
    let none = Fit(false, Grid(0u, 0u, 0u));
    let m = f32(n);
    let d = bitcast<u32>(fo(m * e.sqq) - fo(e.sq * e.sq));
    // !(d > 0): ±0, negative, NaN. d = +inf stops too: the CPU's scale is then 0 or NaN.
    if d == 0u || d >= INF_BITS {
        return none;
    }
    let scale = div_by_pos(bitcast<u32>(fo(m * e.sqw) - fo(e.sq * sw)), d);
    let zero = div_by_pos(bitcast<u32>(fo(e.sqq * sw) - fo(e.sq * e.sqw)), d);
    // scale > 0 and finite (bits of a positive finite nonzero float); zero finite.
    if scale == 0u || scale >= INF_BITS || (zero & 0x7fffffffu) >= INF_BITS {
        return none;
    }
    let inv = div_by_pos(0x3f800000u, scale);
    if inv >= INF_BITS {
        return none;
    }
    return Fit(true, Grid(scale, zero, inv));
}

// lsq::refine, from the min/max parameters of `group_params`.
fn lsq_refine(start: u32, n: u32, p: Params, max_code: u32) -> Grid {
    var inv = p.inv_s;
    if (p.flags & FLAG_INV_SCALED) != 0u {
        inv = scale_down64(p.inv_s);
    }
    let first = Grid(p.scale, p.lo, inv);
    if p.scale == 0u {
        return first;
    }
    let l = f32(max_code);
    let sw = lsq_sum(start, n);
    var last = lsq_evaluate(start, n, first, l);
    var best = first;
    var best_sse = last.sse;
    for (var r = 0u; r < ROUNDS; r = r + 1u) {
        let fit = lsq_fit(n, last, sw);
        if !fit.ok {
            break;
        }
        last = lsq_evaluate(start, n, fit.g, l);
        if lt_bits(bitcast<u32>(last.sse), bitcast<u32>(best_sse)) {
            best = fit.g;
            best_sse = last.sse;
        }
    }
    return best;
}

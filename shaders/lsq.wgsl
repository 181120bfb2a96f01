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

struct Evaluation {
    sse: f32,
    sq: f32,
    sqq: f32,
    sqw: f32,
}

// Lane `lane` of lsq::sum over the group data[start .. start + n]: elements lane, lane + 16, …
fn lsq_lane_sum(start: u32, n: u32, lane: u32) -> f32 {
    var s = f(opaque(0u));
    for (var i = lane; i < n; i = i + LANES) {
        s = s + f(data[start + i]);
    }
    return s;
}

// Lane `lane` of lsq::evaluate's four sums under grid `g`.
fn lsq_lane_evaluate(start: u32, n: u32, lane: u32, g: Grid, max_code: f32) -> Evaluation {
    let z = f(opaque(0u));
    var r = Evaluation(z, z, z, z);
    for (var i = lane; i < n; i = i + LANES) {
        let w = f(data[start + i]);
        let q = lsq_code(w, g, max_code);
        let e = (fo(q * f(g.scale)) + f(g.zero)) - w;
        r.sse = r.sse + fo(e * e);
        r.sq = r.sq + q;
        r.sqq = r.sqq + fo(q * q);
        r.sqw = r.sqw + fo(q * w);
    }
    return r;
}

// Whether the code sums (the fit's inputs) of two evaluations are the same floats.
fn same_bits(a: Evaluation, b: Evaluation) -> bool {
    return bitcast<u32>(a.sq) == bitcast<u32>(b.sq) && bitcast<u32>(a.sqq) == bitcast<u32>(b.sqq) && bitcast<u32>(a.sqw) == bitcast<u32>(b.sqw);
}

// Sum k of the 16 lanes whose partials start at xch[b] (lane j at b + 4j + k), folded as
// lsq::fold does: l[j] + l[j + h] for h = 8, 4, 2, 1.
fn lsq_fold_part(b: u32, k: u32) -> f32 {
    var a: array<f32, 8>;
    for (var j = 0u; j < 8u; j = j + 1u) {
        a[j] = f(xch[b + 4u * j + k]) + f(xch[b + 4u * (j + 8u) + k]);
    }
    let b0 = a[0] + a[4];
    let b1 = a[1] + a[5];
    let b2 = a[2] + a[6];
    let b3 = a[3] + a[7];
    return (b0 + b2) + (b1 + b3);
}

// Every lane's partial sums in, the group's folded sums out (the same in each of its lanes).
// Called by the whole workgroup: it holds barriers.
fn lsq_share(lid: u32, b: u32, e: Evaluation) -> Evaluation {
    xch[4u * lid] = bitcast<u32>(e.sse);
    xch[4u * lid + 1u] = bitcast<u32>(e.sq);
    xch[4u * lid + 2u] = bitcast<u32>(e.sqq);
    xch[4u * lid + 3u] = bitcast<u32>(e.sqw);
    workgroupBarrier();
    let r = Evaluation(lsq_fold_part(b, 0u), lsq_fold_part(b, 1u), lsq_fold_part(b, 2u), lsq_fold_part(b, 3u));
    workgroupBarrier();
    return r;
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

// The start of lsq::refine: the min/max grid of `p`.
fn lsq_first(p: Params) -> Grid {
    var inv = p.inv_s;
    if (p.flags & FLAG_INV_SCALED) != 0u {
        inv = scale_down64(p.inv_s);
    }
    return Grid(p.scale, p.lo, inv);
}

// lsq::refine for every group of the tile whose min/max parameters are in `gparams` (stage B),
// 16 invocations per group: invocation lid is lane lid % 16 of the definition's strided sums
// for group slot lid / 16, QWG / 16 groups at a time. The lanes' partials meet in `xch`, and
// each lane folds them in the definition's order, so all 16 hold the same sums, fits and grids
// and no further exchange is needed. Every invocation runs every round and barrier (a group
// that has stopped, or a slot past the tile's groups, only skips the arithmetic): barriers
// must be reached in uniform control flow. Writes each refined grid to `gparams` (as stage C
// reads it), `scales` and `zero_points`.
fn lsq_tile(t: Tile, lid: u32, max_code: u32) {
    let lane = lid % LANES;
    let slot = lid / LANES;
    let b = slot * LANES * 4u;
    let l = f32(max_code);
    let z = f(opaque(0u));
    let none = Evaluation(z, z, z, z);
    for (var base = 0u; base < t.n_groups; base = base + QWG / LANES) {
        let gi = base + slot;
        var refined = false; // the group has finite parameters: it gets the lsq grid
        var run = false;     // and its search is still going
        var start = 0u;
        var n = 0u;
        var first = Grid(0u, 0u, 0u);
        if gi < t.n_groups {
            let p = gparams[gi];
            start = gelem[gi];
            n = gelem[gi + 1u] - start;
            first = lsq_first(p);
            refined = (p.flags & (FLAG_NON_FINITE | FLAG_OVERFLOW)) == 0u;
            run = refined && p.scale != 0u;
        }
        var mine = none;
        if run {
            mine = Evaluation(lsq_lane_sum(start, n, lane), z, z, z);
        }
        let sw = lsq_share(lid, b, mine).sse;
        if run {
            mine = lsq_lane_evaluate(start, n, lane, first, l);
        }
        var last = lsq_share(lid, b, mine);
        var best = first;
        var best_sse = last.sse;
        for (var r = 0u; r < ROUNDS; r = r + 1u) {
            var g = first;
            if run {
                let fit = lsq_fit(n, last, sw);
                run = fit.ok;
                g = fit.g;
            }
            mine = none;
            if run {
                mine = lsq_lane_evaluate(start, n, lane, g, l);
            }
            let now = lsq_share(lid, b, mine);
            if run {
                if lt_bits(bitcast<u32>(now.sse), bitcast<u32>(best_sse)) {
                    best = g;
                    best_sse = now.sse;
                }
                // A fixed point (lsq::refine_batch): the code sums repeat, so every later fit
                // and evaluation would too, and none can beat `best_sse`.
                run = !same_bits(now, last);
                last = now;
            }
        }
        if refined && lane == 0u {
            scales[t.group0 + gi] = best.scale;
            zero_points[t.group0 + gi] = best.zero;
            gparams[gi] = Params(best.zero, best.scale, best.inv, 0u, 0u);
        }
    }
}

// ggml's 32-element block types Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0: without an importance matrix
// the twin of the `_ref` paths of src/quant/ggml/legacy.rs (ggml's `quantize_row_*_ref`), with
// one (`u.weighted`) the twin of its `Some(qw)` paths (`quantize_row_*_impl`: search.rs'
// make_qx_quants and make_qkx_quants read with one lane), which is also where each line's C
// original is quoted. Follows ggml_common.wgsl. Q8_0 ignores the importance matrix, as ggml.
//
// With an importance matrix, no run-time infinity or NaN is ever computed: a block is left to
// the CPU unless |x| < 2^16, its row's sigma2 < 2^32 and every |qw| < 2^15. Then
// sigma2 + x² < 2^33, each weight |w| = |qw| sqrt(sigma2 + x²) < 2^31.5, and with |l| <= 32:
// * make_qx_quants: |w x l| < 2^52.5, |sumlx| < 2^57.5 (32 terms), sumlx² < 2^115,
//   |w l l| < 2^41.5, |suml2| < 2^46.5; a scale is kept only below 2^20 (else the block is
//   flagged), so |best| = |scale sumlx| < 2^77.5 and |best suml2| < 2^124;
// * make_qkx2_quants: |sum_w| < 2^36.5, |sum_x| < 2^52.5, |sum_l| < 2^41.5, |sum_l2| < 2^46.5,
//   |sum_xl| < 2^57.5, so d and both numerators stay below 2^105; a candidate scale or min of
//   2^40 or more flags the block (as for the K-quants), so |diff| < 2^45.1 and the error
//   sum < 32 * 2^31.5 * 2^90.2 < 2^127.
// Loops per weighted block: 64 + 32 square roots of 25 steps (about 900), then make_qx_quants
// 19 x 32 + 64 or make_qkx2_quants 37 x 2 x 32 + 128 (about 2,500): a unit (one block or a pair) stays below 7,000.

const QK: u32 = 32u;

var<private> xb: array<u32, 32>;
var<private> codes: array<i32, 32>;

// Bytes are written in order through one word of accumulator.
var<private> acc: u32;
var<private> acc_n: u32;
var<private> word_at: u32;
// With an importance matrix: the block's row's sigma2 (bits).
var<private> sigma2: u32;

fn emit(b: u32) {
    acc = acc | ((b & 0xffu) << (8u * acc_n));
    acc_n = acc_n + 1u;
    if acc_n == 4u {
        out_words[word_at] = acc;
        word_at = word_at + 1u;
        acc = 0u;
        acc_n = 0u;
    }
}

fn emit16(v: u32) {
    emit(v);
    emit(v >> 8u);
}

fn block_bytes() -> u32 {
    switch TYPE {
        case 2u: { return 18u; }
        case 3u: { return 20u; }
        case 6u: { return 22u; }
        case 7u: { return 24u; }
        default: { return 34u; }
    }
}

// Q4_0, Q5_0: the signed value of the first element with the largest magnitude (`half` 8 or 16),
// `d = max / -half`, codes `MIN(2*half-1, (int8_t)(x*id + half + 0.5f))`. Writes d; false if the
// block needs the CPU.
fn encode_symmetric(half_: u32) -> bool {
    let d = fdiv(signed_absmax(QK).y, bitcast<u32>(-f32(half_)));
    let id = inverse(d);
    if !is_finite(id) {
        return false;
    }
    let c = f32(half_) + 0.5;
    for (var j = 0u; j < QK; j++) {
        codes[j] = min(i32(2u * half_ - 1u), as_i8(c_trunc(mul_add(xb[j], id, c))));
    }
    emit16(f16_bits(d));
    return true;
}

// Q4_1, Q5_1: `d = (max - min) / nmax`, codes `(x - min)*id + 0.5f` truncated (Q4_1:
// `MIN(15, (int8_t)v)`, Q5_1: `(uint8_t)v`). Writes d and m = min.
fn encode_affine(nmax: u32) -> bool {
    var mn = 0x7f7fffffu; // FLT_MAX
    var mx = 0xff7fffffu; // -FLT_MAX
    for (var j = 0u; j < QK; j++) {
        if key(xb[j]) < key(mn) {
            mn = xb[j];
        }
        if key(xb[j]) > key(mx) {
            mx = xb[j];
        }
    }
    let range = bitcast<u32>(f(mx) - f(mn));
    if !is_finite(range) {
        return false;
    }
    let d = fdiv(range, bitcast<u32>(f32(nmax)));
    let id = inverse(d);
    if !is_finite(id) {
        return false;
    }
    for (var j = 0u; j < QK; j++) {
        let q = c_trunc(mul_add(bitcast<u32>(f(xb[j]) - f(mn)), id, 0.5));
        if nmax == 15u {
            codes[j] = min(15, as_i8(q));
        } else {
            codes[j] = q & 0xff;
        }
    }
    emit16(f16_bits(d));
    emit16(f16_bits(mn));
    return true;
}

// Q8_0: `d = amax / 127`, codes `roundf(x*id)`.
fn encode_q8_0() -> bool {
    var amax = 0u;
    for (var j = 0u; j < QK; j++) {
        amax = max(amax, xb[j] & 0x7fffffffu);
    }
    let d = fdiv(amax, 0x42fe0000u); // 127
    let id = inverse(d);
    if !is_finite(id) {
        return false;
    }
    emit16(f16_bits(d));
    for (var j = 0u; j < QK; j++) {
        emit(u32(c_trunc(roundf(bitcast<u32>(f(xb[j]) * f(id))))));
    }
    return true;
}

const BIG: u32 = 0x47800000u;        // 2^16: |x| bound of a weighted block
const BIG_SIGMA2: u32 = 0x4f800000u; // 2^32

// `qw[i] * sqrtf(sigma2 + x[i]*x[i])` into wts; false if the block is past the bounds above.
fn imatrix_weights() -> bool {
    if sigma2 >= BIG_SIGMA2 {
        return false;
    }
    for (var j = 0u; j < QK; j++) {
        let q = imatrix[qw_at + j];
        if (xb[j] & 0x7fffffffu) >= BIG || (q & 0x7fffffffu) >= BIG_QW {
            return false;
        }
    }
    for (var j = 0u; j < QK; j++) {
        let s = sqrt_rn(bitcast<u32>(keep(f(sigma2) + pm(x_at(j), x_at(j)))));
        wts[j] = pm(f(imatrix[qw_at + j]), f(s));
    }
    return true;
}

// make_qx_quants with weights wts over the block for an `iscale`: (sumlx, suml2).
fn qx_sums_w(nmax: i32, iscale: f32) -> vec2<f32> {
    var sumlx = 0.0;
    var suml2 = 0.0;
    for (var i = 0u; i < QK; i++) {
        let x = x_at(i);
        let l = clamp(nearest(pm(iscale, x)), -nmax, nmax - 1);
        let lf = f32(l);
        sumlx = sumlx + pm(pm(wts[i], x), lf);
        suml2 = suml2 + pm(pm(wts[i], lf), lf);
    }
    return vec2<f32>(sumlx, suml2);
}

// A kept scale of 2^20 or more flags the block (the bound above).
fn small_scale(s: f32) {
    if (bitcast<u32>(s) & 0x7fffffffu) >= 0x49800000u {
        bad = true;
    }
}

// search.rs' make_qx_quants (rmse_type 1) with weights wts: codes `l + nmax` into codes, returns
// the scale. The best candidate's codes are recomputed from its inverse scale at the end.
fn make_qx_quants_w(nmax: i32) -> f32 {
    let am = signed_absmax(QK);
    let mx = am.y;
    if am.x < GROUP_MAX_EPS {
        for (var i = 0u; i < QK; i++) {
            codes[i] = 0;
        }
        return 0.0;
    }
    let nmaxf = f32(nmax);
    var best_is = kdiv(-nmaxf, f(mx));
    let s = qx_sums_w(nmax, best_is);
    var scale = 0.0;
    if s.y != 0.0 {
        scale = kdiv(s.x, s.y);
    }
    small_scale(scale);
    var best = pm(scale, s.x);
    for (var is = -9; is <= 9; is++) {
        if is == 0 || bad {
            continue;
        }
        let iscale = kdiv(-keep(nmaxf + pm(f(TENTH), f32(is))), f(mx));
        let t = qx_sums_w(nmax, iscale);
        if t.y > 0.0 && pm(t.x, t.x) > pm(best, t.y) {
            scale = kdiv(t.x, t.y);
            small_scale(scale);
            best = pm(scale, t.x);
            best_is = iscale;
        }
    }
    for (var i = 0u; i < QK; i++) {
        codes[i] = clamp(nearest(pm(best_is, x_at(i))), -nmax, nmax - 1) + nmax;
    }
    return scale;
}

// Q4_0, Q5_0 with an importance matrix: d from make_qx_quants(half) weighted.
fn encode_symmetric_w(half_: u32) -> bool {
    if !imatrix_weights() {
        return false;
    }
    let d = make_qx_quants_w(i32(half_));
    if bad {
        return false;
    }
    emit16(f16_bits(bitcast<u32>(d)));
    return true;
}

// Q4_1, Q5_1 with an importance matrix: make_qkx3_quants(nmax, -0.9, 0.05, 36) weighted, squared
// error; writes d and m = -the_min.
fn encode_affine_w(nmax: u32) -> bool {
    if !imatrix_weights() {
        return false;
    }
    let r = make_qkx2_quants(QK, i32(nmax), f(QKX3_RMIN), f(QKX3_RDELTA), 36, false);
    if bad {
        return false;
    }
    emit16(f16_bits(bitcast<u32>(r.x)));
    emit16(f16_bits(bitcast<u32>(-r.y)));
    return true;
}

// Byte j: code j in the low nibble, code j+16 in the high one.
fn emit_nibbles() {
    for (var j = 0u; j < QK / 2u; j++) {
        emit(u32((codes[j] & 0x0f) | ((codes[j + QK / 2u] & 0x0f) << 4u)));
    }
}

// The little-endian u32 with bit 4 of code j at bit j.
fn emit_qh() {
    var qh = 0u;
    for (var j = 0u; j < QK; j++) {
        qh = qh | (u32((codes[j] >> 4u) & 1) << j);
    }
    emit16(qh);
    emit16(qh >> 16u);
}

fn symmetric(half_: u32) -> bool {
    if u.weighted != 0u {
        return encode_symmetric_w(half_);
    }
    return encode_symmetric(half_);
}

fn affine(nmax: u32) -> bool {
    if u.weighted != 0u {
        return encode_affine_w(nmax);
    }
    return encode_affine(nmax);
}

fn encode_block() -> bool {
    bad = false;
    switch TYPE {
        case 2u: {
            if !symmetric(8u) { return false; }
            emit_nibbles();
        }
        case 3u: {
            if !affine(15u) { return false; }
            emit_nibbles();
        }
        case 6u: {
            if !symmetric(16u) { return false; }
            emit_qh();
            emit_nibbles();
        }
        case 7u: {
            if !affine(31u) { return false; }
            emit_qh();
            emit_nibbles();
        }
        default: {
            return encode_q8_0();
        }
    }
    return true;
}

// One invocation per unit (a block, or a pair where a block is not whole words), each
// block's arithmetic inside it in the reference's order.
@compute @workgroup_size(256)
fn quantize_blocks(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let unit = flat_index(gid, nwg);
    if unit >= u.n_units {
        return;
    }
    word_at = unit * (UNIT * block_bytes() / 4u);
    acc = 0u;
    acc_n = 0u;
    for (var k = 0u; k < UNIT; k++) {
        let block = UNIT * unit + k;
        if block >= u.n_segs {
            break;
        }
        if u.weighted != 0u {
            let g = u.first_block + block;
            qw_at = (g % u.blocks_per_row) * QK;
            if QK == 32u {
                sigma2 = row_sigma2[g / u.blocks_per_row];
            }
        }
        var finite = true;
        block_at = block * QK;
        for (var j = 0u; j < QK; j++) {
            xb[j] = input[block * QK + j];
            finite = finite && is_finite(xb[j]);
        }
        // The host encodes every block of a flagged unit on the CPU (whatever was written).
        if !finite || !encode_block() {
            redo[unit] = 1u;
            return;
        }
    }
    if acc_n != 0u {
        out_words[word_at] = acc;
    }
    redo[unit] = 0u;
}

// ggml's 32-element block types Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0, without an importance matrix:
// the twin of the `_ref` paths of src/quant/ggml/legacy.rs (ggml's `quantize_row_*_ref`), which
// is also where each line's C original is quoted. Follows ggml_common.wgsl.

const QK: u32 = 32u;

var<private> xb: array<u32, 32>;
var<private> codes: array<u32, 32>;

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
    var amax = 0u;
    var max_ = 0u;
    for (var j = 0u; j < QK; j++) {
        let a = xb[j] & 0x7fffffffu;
        if a > amax {
            amax = a;
            max_ = xb[j];
        }
    }
    let d = fdiv(max_, bitcast<u32>(-f32(half_)));
    let id = inverse(d);
    if !is_finite(id) {
        return false;
    }
    let c = f32(half_) + 0.5;
    for (var j = 0u; j < QK; j++) {
        codes[j] = u32(min(i32(2u * half_ - 1u), as_i8(c_trunc(mul_add(xb[j], id, c)))));
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
            codes[j] = u32(min(15, as_i8(q)));
        } else {
            codes[j] = u32(q) & 0xffu;
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

// Byte j: code j in the low nibble, code j+16 in the high one.
fn emit_nibbles() {
    for (var j = 0u; j < QK / 2u; j++) {
        emit((codes[j] & 0x0fu) | ((codes[j + QK / 2u] & 0x0fu) << 4u));
    }
}

// The little-endian u32 with bit 4 of code j at bit j.
fn emit_qh() {
    var qh = 0u;
    for (var j = 0u; j < QK; j++) {
        qh = qh | (((codes[j] >> 4u) & 1u) << j);
    }
    emit16(qh);
    emit16(qh >> 16u);
}

fn encode_block() -> bool {
    switch TYPE {
        case 2u: {
            if !encode_symmetric(8u) { return false; }
            emit_nibbles();
        }
        case 3u: {
            if !encode_affine(15u) { return false; }
            emit_nibbles();
        }
        case 6u: {
            if !encode_symmetric(16u) { return false; }
            emit_qh();
            emit_nibbles();
        }
        case 7u: {
            if !encode_affine(31u) { return false; }
            emit_qh();
            emit_nibbles();
        }
        default: {
            return encode_q8_0();
        }
    }
    return true;
}

// What every ggml block kernel shares: the bindings, the byte writer, the exact helpers and the
// entry point. Appended to common.wgsl; a family file (ggml_legacy.wgsl, ...) follows and
// declares `QK` (elements per block), `xb` (the block's input bits, `array<u32, QK>`),
// `block_bytes()` and `encode_block()` for its types (`TYPE`).
//
// One invocation per pair of blocks: two blocks of every ggml type fill whole u32 words (36,
// 40, 44, 48, 68, 168, 220, 288, 352 or 420 bytes), so no word has two writers. Each block's
// arithmetic runs inside one invocation, in the reference's order.
//
// Exact as the CPU, and why (src/gpu/ggml.rs says what the host checks):
// * division: `fdiv`, correctly rounded integer long division (`div_rn`), never WGSL's `/`;
// * no fused multiply-add: every product that feeds an addition goes through `opaque`;
// * subnormals: the pipeline is built by `exact_f32_pipeline` (DenormPreserve on Vulkan) and
//   used only where the subnormal probe and a self-test passed;
// * extremes, signed zeros, the f16 rounding and C's float → int conversion are computed on
//   the bits;
// * a block whose reference arithmetic meets an infinity or a NaN (a non-finite input, an
//   overflowing range, an inverse scale past f32's range) is not encoded here: its pair is
//   flagged and the host encodes the pair with the CPU reference (WGSL leaves a run-time
//   infinity or NaN indeterminate).

// ggml's type id (`GgmlType::id`: 2 Q4_0, 3 Q4_1, 6 Q5_0, 7 Q5_1, 8 Q8_0, 10 Q2_K, ...).
override TYPE: u32;

// n_segs: blocks in the chunk; n_units: pairs (invocations that do work).
@group(0) @binding(0) var<uniform> u: Uniforms;
@group(0) @binding(1) var<storage, read> input: array<u32>;
@group(0) @binding(2) var<storage, read_write> out_words: array<u32>;
@group(0) @binding(3) var<storage, read_write> redo: array<u32>;

const NEG_ZERO: u32 = 0x80000000u;

// Bytes are written in order through one word of accumulator.
var<private> acc: u32;
var<private> acc_n: u32;
var<private> word_at: u32;

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

@compute @workgroup_size(256)
fn quantize_blocks(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let pair = flat_index(gid, nwg);
    if pair >= u.n_units {
        return;
    }
    word_at = pair * (2u * block_bytes() / 4u);
    acc = 0u;
    acc_n = 0u;
    for (var k = 0u; k < 2u; k++) {
        let block = 2u * pair + k;
        if block >= u.n_segs {
            break;
        }
        var finite = true;
        for (var j = 0u; j < QK; j++) {
            xb[j] = input[block * QK + j];
            finite = finite && is_finite(xb[j]);
        }
        // The host encodes both blocks of a flagged pair on the CPU (whatever was written).
        if !finite || !encode_block() {
            redo[pair] = 1u;
            return;
        }
    }
    if acc_n != 0u {
        out_words[word_at] = acc;
    }
    redo[pair] = 0u;
}

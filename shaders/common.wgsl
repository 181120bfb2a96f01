// Shared by every pass. Line-by-line twin of src/gpu/softfloat.rs (same names, same steps);
// the reasoning about exactness and flush-to-zero is written there once.
//
// WGSL only promises `x / y` to 2.5 ulp, may fuse `a * b + c`, and a device may flush
// subnormals. So: divisions are integer long division (`div_rn`), min/max run on integer
// order keys, NaN/Inf are found on the bits, every float + - * has normal-or-zero operands and
// result (or a flushed value provably cannot change the outcome), and each product that feeds
// an addition goes through `opaque`, which the compiler cannot see through, so it cannot be
// contracted into an FMA. Where we build the SPIR-V ourselves (the lsq and ggml kernels on
// Vulkan, `src/gpu/spirv.rs`), every float result also carries SPIR-V's `NoContraction`.

const TINY_BITS: u32 = 0x21800000u; // 2^-60
const INF_BITS: u32 = 0x7f800000u;
const MANT: u32 = 0x007fffffu;
const HIDDEN: u32 = 0x00800000u;

const FLAG_NON_FINITE: u32 = 1u;
const FLAG_OVERFLOW: u32 = 2u;
const FLAG_LO_TINY: u32 = 4u;
const FLAG_INV_SCALED: u32 = 8u;

const WG: u32 = 256u;

struct Uniforms {
    n_segs: u32,
    n_units: u32,
    // Always 0 at run time; unknown to the compiler.
    zero_mask: u32,
    _pad: u32,
}

// One piece of one layer in a chunk: a run of whole groups starting at column `col0` of some row.
struct Seg {
    group_start: u32, // first parameter slot (= group) of the piece in the chunk
    word_start: u32,  // first packed u32 word of the piece in the chunk
    elem_start: u32,  // first f32 element of the piece in the chunk
    col0: u32,        // column (group within its row) of the piece's first group
    row_len: u32,
    group_size: u32,
    gpr: u32,         // groups per row
    row_bytes: u32,
    group_bytes: u32,
    bits: u32,
    n_groups: u32,
    n_bytes: u32,     // packed bytes of the piece
}

fn f(b: u32) -> f32 {
    return bitcast<f32>(b);
}

// An OR, not an XOR: XOR is its own inverse, so two barriers in a row (`keep(pm(a, b)) + c`)
// cancel whatever the mask, and NVIDIA's compiler did cancel them and fused `a * b + c` (H200,
// driver 580.159: 0.3-0.8% of Q4_0/Q5_0 blocks with an importance matrix, ggml's `nearest_int`
// of a product). OR with an unknown mask is idempotent: a chain folds to one OR, never to none.
fn opaque(b: u32) -> u32 {
    return b | u.zero_mask;
}

// Flat invocation index of a (possibly 2-D) dispatch of WG-wide workgroups.
fn flat_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.y * (nwg.x * WG) + gid.x;
}

fn order_key(b: u32) -> i32 {
    let s = bitcast<i32>(b);
    return s ^ bitcast<i32>(bitcast<u32>(s >> 31u) >> 1u);
}

fn scale_up64(b: u32) -> u32 {
    let sign = b & 0x80000000u;
    let mag = b & 0x7fffffffu;
    if mag >= HIDDEN {
        return b + (64u << 23u);
    }
    if mag == 0u {
        return b;
    }
    let sh = countLeadingZeros(mag) - 8u;
    let m = mag << sh;
    return sign | ((65u - sh) << 23u) | (m & MANT);
}

fn scale_down64(b: u32) -> u32 {
    let sign = b & 0x80000000u;
    let mag = b & 0x7fffffffu;
    let e = mag >> 23u;
    if e > 64u {
        return b - (64u << 23u);
    }
    if mag == 0u {
        return b;
    }
    let sh = 65u - e;
    if sh >= 32u {
        return sign;
    }
    return sign | (((mag & MANT) | HIDDEN) >> sh);
}

fn half(b: u32) -> u32 {
    if ((b >> 23u) & 0xffu) >= 2u {
        return b - (1u << 23u);
    }
    return b & 0x80000000u;
}

struct Unpacked {
    sig: u32,
    exp: i32,
}

fn unpack(b: u32) -> Unpacked {
    let e = (b >> 23u) & 0xffu;
    if e == 0u {
        let m = b & MANT;
        let sh = countLeadingZeros(m) - 8u;
        return Unpacked(m << sh, -149 - i32(sh));
    }
    return Unpacked((b & MANT) | HIDDEN, i32(e) - 150);
}

// `sh` more quotient bits of long division by `b`: (r << sh) / b, exactly, in integers.
struct DivStep {
    q: u32,
    r: u32,
}

fn div_step(q: u32, r: u32, b: u32, sh: u32) -> DivStep {
    let x = r << sh;
    let d = x / b;
    return DivStep((q << sh) | d, x - d * b);
}

// softfloat::div_rn: the quotient's first 25 bits in four integer steps of 7, 8, 8 and 1 bits
// (every shifted remainder stays below 2^32), then one rounding.
fn div_rn(a_sig: u32, a_exp: i32, b_sig: u32, b_exp: i32) -> u32 {
    var r = a_sig;
    var e = a_exp - b_exp;
    if r < b_sig {
        r = r << 1u;
        e = e - 1;
    }
    var d = div_step(0u, r, b_sig, 7u);
    d = div_step(d.q, d.r, b_sig, 8u);
    d = div_step(d.q, d.r, b_sig, 8u);
    d = div_step(d.q, d.r, b_sig, 1u);
    let q = d.q;
    let sticky = d.r != 0u;
    let be = e + 127;
    if be >= 255 {
        return INF_BITS;
    }
    var shi = 1;
    if be < 1 {
        shi = 2 - be;
    }
    if shi >= 26 {
        return 0u;
    }
    let sh = u32(shi);
    var m = q >> sh;
    let rem = q & ((1u << sh) - 1u);
    let halfway = 1u << (sh - 1u);
    if rem > halfway || (rem == halfway && (sticky || (m & 1u) == 1u)) {
        m = m + 1u;
    }
    var base = 0u;
    if be >= 1 {
        base = u32(be - 1);
    }
    let bits = (base << 23u) + m;
    if bits >= INF_BITS {
        return INF_BITS;
    }
    return bits;
}

fn round_scaled(p: u32, k: u32, max_code: u32) -> u32 {
    let e = (p >> 23u) & 0xffu;
    if e == 0u {
        return 0u;
    }
    let ex = i32(e) - 127 - i32(k);
    if ex >= 8 {
        return max_code;
    }
    if ex < -1 {
        return 0u;
    }
    let m = (p & MANT) | HIDDEN;
    let sh = u32(23 - ex);
    var q = m >> sh;
    let rem = m & ((1u << sh) - 1u);
    let halfway = 1u << (sh - 1u);
    if rem > halfway || (rem == halfway && (q & 1u) == 1u) {
        q = q + 1u;
    }
    return min(q, max_code);
}

// Equal to round_scaled for every input (exhaustive test in softfloat.rs), without branches:
// the range tests become a clamp of the shift.
fn round_scaled_fast(p: u32, k: u32, max_code: u32) -> u32 {
    let e = (p >> 23u) & 0xffu;
    let sh = u32(clamp(150 + i32(k) - i32(e), 15, 31));
    let m = (p & MANT) | HIDDEN;
    let q = (m + (1u << (sh - 1u)) - 1u + ((m >> sh) & 1u)) >> sh;
    return min(q, max_code);
}

struct Params {
    lo: u32,
    scale: u32,
    inv_s: u32,
    lo_s: u32,
    flags: u32,
}

fn group_params(lo: u32, hi: u32, max_code: u32) -> Params {
    let lo_mag = lo & 0x7fffffffu;
    let hi_mag = hi & 0x7fffffffu;
    var p = Params(lo, 0u, 0u, 0u, 0u);
    if lo_mag < TINY_BITS {
        p.flags = p.flags | FLAG_LO_TINY;
        p.lo_s = scale_up64(lo);
    }
    var wb: u32;
    var off: i32;
    if max(lo_mag, hi_mag) < TINY_BITS {
        wb = opaque(bitcast<u32>(f(scale_up64(hi)) - f(scale_up64(lo))));
        off = -64;
    } else {
        let h = opaque(bitcast<u32>(f(half(hi)) - f(half(lo))));
        if ((h >> 23u) & 0xffu) >= 254u {
            p.flags = p.flags | FLAG_OVERFLOW;
            return p;
        }
        wb = h;
        off = 1;
    }
    if (wb & 0x7fffffffu) == 0u {
        return p;
    }
    let w = unpack(wb);
    let l = unpack(bitcast<u32>(f32(max_code)));
    let inv = div_rn(l.sig, l.exp, w.sig, w.exp + off);
    if inv >= INF_BITS {
        return p;
    }
    p.scale = div_rn(w.sig, w.exp + off, l.sig, l.exp);
    if inv < HIDDEN {
        p.inv_s = scale_up64(inv);
        p.flags = p.flags | FLAG_INV_SCALED;
    } else {
        p.inv_s = inv;
    }
    return p;
}

fn code(w: u32, p: Params, max_code: u32) -> u32 {
    var ki = 0u;
    if (p.flags & FLAG_INV_SCALED) != 0u {
        ki = 64u;
    }
    var d: f32;
    var k: u32;
    if (p.flags & FLAG_LO_TINY) != 0u && (w & 0x7fffffffu) < TINY_BITS {
        d = f(scale_up64(w)) - f(p.lo_s);
        k = 64u + ki;
    } else {
        d = f(w) - f(p.lo);
        k = ki;
    }
    let prod = f(opaque(bitcast<u32>(d))) * f(p.inv_s);
    return round_scaled_fast(bitcast<u32>(prod), k, max_code);
}

fn dequant(q: u32, scale: u32, lo: u32) -> u32 {
    if q == 0u || scale == 0u {
        if lo == 0x80000000u {
            return 0u;
        }
        return lo;
    }
    if scale < TINY_BITS && (lo & 0x7fffffffu) < TINY_BITS {
        let prod = f(opaque(bitcast<u32>(f32(q) * f(scale_up64(scale)))));
        return scale_down64(bitcast<u32>(prod + f(scale_up64(lo))));
    }
    let prod = f(opaque(bitcast<u32>(f32(q) * f(scale))));
    return bitcast<u32>(prod + f(lo));
}

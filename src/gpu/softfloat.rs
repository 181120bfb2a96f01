//! Integer-only float helpers, and the GPU's per-group / per-element math written in Rust.
//!
//! Every function here has a line-by-line twin in `shaders/common.wgsl` (same names, same
//! steps). The shaders cannot be unit-tested on the host, so this mirror is: the tests below
//! check it against native `f32` arithmetic and against [`crate::quant`] on random bit patterns,
//! subnormals included. Keep the two files in step.
//!
//! Why integers: WGSL only promises `x / y` to 2.5 ulp, lets a compiler fuse `a * b + c`, and
//! lets a device flush subnormal inputs and results to zero (FTZ). `+`, `-` and `*` are
//! correctly rounded for normal operands with a normal (or zero) result. So the two divisions
//! per group are done here in integers, exactly rounded, and every float `+ - *` the shaders do
//! is arranged so that its operands and result are normal or zero (see the comments at each
//! step), or so that flushing cannot change the outcome.

/// Bits of 2^-60. Below it in magnitude, values are moved to the 2^64-scaled domain.
pub const TINY_BITS: u32 = (127 - 60) << 23;
pub const INF_BITS: u32 = 0x7f80_0000;
const MANT: u32 = 0x007f_ffff;
const HIDDEN: u32 = 0x0080_0000;

#[inline]
fn f(b: u32) -> f32 {
    f32::from_bits(b)
}

/// `x × 2^64` exactly, for |x| < 2^-60 (the result is normal, or a zero of the same sign).
/// Normals: add 64 to the exponent field. Subnormals: normalize the mantissa.
pub fn scale_up64(b: u32) -> u32 {
    let sign = b & 0x8000_0000;
    let mag = b & 0x7fff_ffff;
    if mag >= HIDDEN {
        return b + (64 << 23);
    }
    if mag == 0 {
        return b;
    }
    let sh = mag.leading_zeros() - 8;
    let m = mag << sh;
    sign | ((65 - sh) << 23) | (m & MANT)
}

/// `x × 2^-64` for a normal or zero `x` whose scaled-down value is exactly representable
/// (callers only use it on sums that are exact when subnormal). Never rounds.
pub fn scale_down64(b: u32) -> u32 {
    let sign = b & 0x8000_0000;
    let mag = b & 0x7fff_ffff;
    let e = mag >> 23;
    if e > 64 {
        return b - (64 << 23);
    }
    if mag == 0 {
        return b;
    }
    let sh = 65 - e;
    if sh >= 32 {
        return sign;
    }
    sign | (((mag & MANT) | HIDDEN) >> sh)
}

/// `x / 2`, exactly for |x| ≥ 2^-125; smaller values become ±0 (see `group_params`).
pub fn half(b: u32) -> u32 {
    if (b >> 23) & 0xff >= 2 {
        b - (1 << 23)
    } else {
        b & 0x8000_0000
    }
}

/// A positive finite nonzero float as `sig × 2^exp` with `sig` in `[2^23, 2^24)`.
pub fn unpack(b: u32) -> (u32, i32) {
    let e = (b >> 23) & 0xff;
    if e == 0 {
        let m = b & MANT;
        let sh = m.leading_zeros() - 8;
        (m << sh, -149 - sh as i32)
    } else {
        ((b & MANT) | HIDDEN, e as i32 - 150)
    }
}

/// `(a_sig·2^a_exp) / (b_sig·2^b_exp)` rounded to nearest even, as positive `f32` bits:
/// subnormal results rounded once at their own precision, `+inf` on overflow. Long division:
/// 24 bits + a guard bit, the remainder is the sticky bit.
pub fn div_rn(a_sig: u32, a_exp: i32, b_sig: u32, b_exp: i32) -> u32 {
    let mut r = a_sig;
    let mut e = a_exp - b_exp;
    if r < b_sig {
        r <<= 1;
        e -= 1;
    }
    // Now 1 ≤ r / b_sig < 2 and the quotient is (r / b_sig) × 2^e. Its first 25 bits by long
    // division in exact integer steps of 7, 8, 8 and 1 bits: every shifted remainder stays
    // below 2^32 (r < 2^25 at first, below b_sig < 2^24 after), and four hardware divisions
    // cost a GPU less than 25 one-bit steps.
    let mut q = 0u32;
    for sh in [7, 8, 8, 1] {
        let x = r << sh;
        let d = x / b_sig;
        q = (q << sh) | d;
        r = x - d * b_sig;
    }
    // q = ⌊quotient × 2^(24 − e)⌋ in [2^24, 2^25): 24 result bits and a guard bit; r is the
    // remainder.
    let sticky = r != 0;
    let be = e + 127;
    if be >= 255 {
        return INF_BITS;
    }
    let sh = if be >= 1 { 1 } else { 2 - be };
    if sh >= 26 {
        return 0;
    }
    let sh = sh as u32;
    let mut m = q >> sh;
    let rem = q & ((1 << sh) - 1);
    let halfway = 1u32 << (sh - 1);
    if rem > halfway || (rem == halfway && (sticky || (m & 1) == 1)) {
        m += 1;
    }
    let base = if be >= 1 { (be - 1) as u32 } else { 0 };
    // `m` may have carried into bit 24 (or into bit 23 for a subnormal): the add moves the
    // exponent up by one, which is exactly the renormalization.
    let bits = (base << 23) + m;
    if bits >= INF_BITS {
        INF_BITS
    } else {
        bits
    }
}

/// `a / b` correctly rounded, for `b` positive, finite and nonzero: lsq's divisions
/// (`shaders/lsq.wgsl`, whose other math is plain `f32` and is its own twin of
/// [`crate::quant::lsq`]). ±inf and NaN numerators pass through; a zero keeps its sign.
pub fn div_by_pos(a: u32, b: u32) -> u32 {
    let sign = a & 0x8000_0000;
    let mag = a & 0x7fff_ffff;
    if mag >= INF_BITS {
        return a;
    }
    if mag == 0 {
        return sign;
    }
    let (x_sig, x_exp) = unpack(mag);
    let (y_sig, y_exp) = unpack(b);
    sign | div_rn(x_sig, x_exp, y_sig, y_exp)
}

/// `round_half_even(P × 2^-k)` clamped to `max_code`, from the bits of `P ≥ 0`, in integers.
pub fn round_scaled(p: u32, k: u32, max_code: u32) -> u32 {
    let e = (p >> 23) & 0xff;
    if e == 0 {
        return 0; // zero or below 2^-126 (× 2^-k): rounds to code 0
    }
    let ex = e as i32 - 127 - k as i32;
    if ex >= 8 {
        return max_code; // ≥ 256 > every max_code
    }
    if ex < -1 {
        return 0; // < 0.5
    }
    let m = (p & MANT) | HIDDEN;
    let sh = (23 - ex) as u32; // 16..=24
    let mut q = m >> sh;
    let rem = m & ((1 << sh) - 1);
    let halfway = 1u32 << (sh - 1);
    if rem > halfway || (rem == halfway && (q & 1) == 1) {
        q += 1;
    }
    q.min(max_code)
}

/// [`round_scaled`] without branches, for the per-element loop: the same round-half-even on
/// the same integer mantissa, with the range tests folded into a clamp of the shift.
/// `sh = 23 − ex` is the shift of the exact computation when −1 ≤ ex ≤ 7. Clamped to 15 when
/// ex ≥ 8, the quotient is still ≥ 2^23 >> 15 = 256 > every `max_code`; clamped to 31, or
/// anything ≥ 25 (ex ≤ −2, or e = 0 where ex ≤ −127), `m + 2^(sh−1) − 1 < 2^sh` and the quotient
/// is 0. Adding `2^(sh−1) − 1` plus the quotient's low bit carries exactly when the remainder
/// is above half, or at half with an odd quotient. Equal to `round_scaled` for every input
/// (`round_scaled_fast_is_round_scaled`).
pub fn round_scaled_fast(p: u32, k: u32, max_code: u32) -> u32 {
    let e = (p >> 23) & 0xff;
    let sh = (150 + k as i32 - e as i32).clamp(15, 31) as u32;
    let m = (p & MANT) | HIDDEN;
    let q = (m + (1 << (sh - 1)) - 1 + ((m >> sh) & 1)) >> sh;
    q.min(max_code)
}

/// What pass 1 writes per group (all as bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct GpuParams {
    pub lo: u32,
    pub scale: u32,
    /// `inv`, or `inv × 2^64` when `inv` is subnormal (flag `INV_SCALED`).
    pub inv_s: u32,
    /// `lo × 2^64`, meaningful when flag `LO_TINY` is set.
    pub lo_s: u32,
    pub flags: u32,
}

pub const FLAG_NON_FINITE: u32 = 1;
pub const FLAG_OVERFLOW: u32 = 2;
pub const FLAG_LO_TINY: u32 = 4;
pub const FLAG_INV_SCALED: u32 = 8;

/// Pass 1 after the min/max scan: `lo`/`hi` bits → parameters (`GroupParams::from_range`).
pub fn group_params(lo: u32, hi: u32, max_code: u32) -> GpuParams {
    let lo_mag = lo & 0x7fff_ffff;
    let hi_mag = hi & 0x7fff_ffff;
    let mut p = GpuParams { lo, ..Default::default() };
    if lo_mag < TINY_BITS {
        p.flags |= FLAG_LO_TINY;
        p.lo_s = scale_up64(lo);
    }
    // width = hi − lo as the exact pair (bits of a normal float, exponent offset).
    let (wb, off) = if lo_mag.max(hi_mag) < TINY_BITS {
        // Both below 2^-60: in the 2^64-scaled domain both are normal multiples of 2^-85, so
        // their difference is 0 or a normal ≥ 2^-85 (no FTZ possible), and it is the exact
        // scaled image of hi − lo: a subnormal difference is exact, a normal one rounds the
        // same at any power-of-two scale.
        (opaque((f(scale_up64(hi)) - f(scale_up64(lo))).to_bits()), -64)
    } else {
        // One of them is ≥ 2^-60. Halving is exact for |x| ≥ 2^-125; a smaller operand is
        // replaced by 0, which cannot change the rounded difference (it is below a quarter ulp
        // of the other operand). The halved difference is 0 or ≥ 2^-85: normal. It cannot
        // overflow, and round(hi − lo) = 2·round((hi − lo)/2) in the normal range.
        let h = opaque((f(half(hi)) - f(half(lo))).to_bits());
        if (h >> 23) & 0xff >= 254 {
            // (hi − lo)/2 rounded ≥ 2^127 ⇔ hi − lo rounds to +inf in f32.
            p.flags |= FLAG_OVERFLOW;
            return p;
        }
        (h, 1)
    };
    if wb & 0x7fff_ffff == 0 {
        return p; // constant group: scale = inv = 0
    }
    let (w_sig, w_exp) = unpack(wb);
    let (l_sig, l_exp) = unpack((max_code as f32).to_bits());
    let inv = div_rn(l_sig, l_exp, w_sig, w_exp + off);
    if inv >= INF_BITS {
        return p; // L / width not finite: constant group
    }
    p.scale = div_rn(w_sig, w_exp + off, l_sig, l_exp);
    if inv < HIDDEN {
        p.inv_s = scale_up64(inv);
        p.flags |= FLAG_INV_SCALED;
    } else {
        p.inv_s = inv;
    }
    p
}

/// The shaders' contraction barrier (`x | zero_mask`, a uniform that is 0 at run time); the
/// identity here.
#[inline]
fn opaque(b: u32) -> u32 {
    b
}

/// Pass 2, one element: the code of `w` (bits) in a group with parameters `p`.
pub fn code(w: u32, p: &GpuParams, max_code: u32) -> u32 {
    let ki = if p.flags & FLAG_INV_SCALED != 0 { 64 } else { 0 };
    let (d, k) = if p.flags & FLAG_LO_TINY != 0 && (w & 0x7fff_ffff) < TINY_BITS {
        // Both below 2^-60: subtract in the scaled domain (normal or zero, exact image).
        (f(scale_up64(w)) - f(p.lo_s), 64 + ki)
    } else {
        // One of them ≥ 2^-60: the other, if subnormal, is below a quarter ulp of the result,
        // so flushing it changes nothing; the difference is 0 or ≥ 2^-85 (normal).
        (f(w) - f(p.lo), ki)
    };
    // d·inv_s = t·2^k: correctly rounded when normal; if it is subnormal (or flushed), t is
    // below 2^-126 and its code is 0 either way.
    let prod = f(opaque(d.to_bits())) * f(p.inv_s);
    round_scaled_fast(prod.to_bits(), k, max_code)
}

/// Dequantize one code: the bits of `q × scale + lo` (two roundings), for a positive finite
/// `scale` < 2^118 (or +0) and a finite `lo` with |lo| < 2^126 (the host checks).
pub fn dequant(q: u32, scale: u32, lo: u32) -> u32 {
    if q == 0 || scale == 0 {
        // 0 × scale = +0 and +0 + lo = lo, except −0 → +0. Selected on the bits: exact for a
        // subnormal lo on an FTZ device.
        return if lo == 0x8000_0000 { 0 } else { lo };
    }
    if scale < TINY_BITS && (lo & 0x7fff_ffff) < TINY_BITS {
        // Scaled domain: q·scale_s ≥ 2^-85 is normal and is the exact image of q·scale (a
        // subnormal product is exact); the sum is 0 or ≥ 2^-108, normal, and is the exact image
        // of the unscaled sum (a subnormal sum is exact). Scaling back is done on the bits.
        let prod = f(opaque((q as f32 * f(scale_up64(scale))).to_bits()));
        return scale_down64((prod + f(scale_up64(lo))).to_bits());
    }
    // scale ≥ 2^-60: the product is normal; a subnormal lo is below a quarter ulp of it.
    // Or |lo| ≥ 2^-60: a product below 2^-118 (subnormal scale) is negligible against lo, and
    // a product from a normal scale is normal. Either way no flushed value changes the sum.
    let prod = f(opaque((q as f32 * f(scale)).to_bits()));
    (prod + f(lo)).to_bits()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::codes::{dequantize_value, quantize_value};
    use crate::quant::GroupParams;
    use proptest::prelude::*;

    fn pos_finite() -> impl Strategy<Value = u32> {
        prop_oneof![1u32..0x7f80_0000, 1u32..0x0080_0000, 0x0070_0000u32..0x0200_0000, 0x7e00_0000u32..0x7f80_0000]
    }

    fn finite() -> impl Strategy<Value = u32> {
        (pos_finite(), any::<bool>(), 0u32..20).prop_map(|(b, s, z)| {
            let b = if z == 0 { 0 } else { b };
            b | if s { 0x8000_0000 } else { 0 }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        #[test]
        fn div_matches_native(a in pos_finite(), b in pos_finite()) {
            let (asig, aexp) = unpack(a);
            let (bsig, bexp) = unpack(b);
            let want = (f(a) / f(b)).to_bits();
            prop_assert_eq!(div_rn(asig, aexp, bsig, bexp), want, "{:e} / {:e}", f(a), f(b));
        }

        #[test]
        fn signed_division_by_a_positive_matches_native(a in finite(), b in pos_finite()) {
            let want = (f(a) / f(b)).to_bits();
            prop_assert_eq!(div_by_pos(a, b), want, "{:e} / {:e}", f(a), f(b));
        }

        #[test]
        fn scaling_round_trips(b in finite()) {
            if b & 0x7fff_ffff < TINY_BITS {
                let up = scale_up64(b);
                prop_assert_eq!(f(up), f(b) * 2f32.powi(64));
                prop_assert_eq!(scale_down64(up), b);
            }
        }

        #[test]
        fn params_match_contract(a in finite(), b in finite(), bits in 0usize..3) {
            let max_code = [3u32, 15, 255][bits];
            let (lo, hi) = if crate::quant::params::order_key(f(a)) <= crate::quant::params::order_key(f(b)) { (a, b) } else { (b, a) };
            let p = group_params(lo, hi, max_code);
            match GroupParams::from_range(f(lo), f(hi), max_code) {
                Err(_) => prop_assert!(p.flags & FLAG_OVERFLOW != 0),
                Ok(want) => {
                    prop_assert_eq!(p.flags & FLAG_OVERFLOW, 0);
                    prop_assert_eq!(p.scale, want.scale.to_bits());
                    prop_assert_eq!(p.lo, want.lo.to_bits());
                    let inv = if p.flags & FLAG_INV_SCALED != 0 { scale_down64(p.inv_s) } else { p.inv_s };
                    prop_assert_eq!(inv, want.inv.to_bits());
                    // Codes of the two ends and of random points in between.
                    for w in [lo, hi] {
                        prop_assert_eq!(code(w, &p, max_code), quantize_value(f(w), want.lo, want.inv, max_code) as u32);
                    }
                    for q in [0u32, 1, max_code / 2, max_code] {
                        prop_assert_eq!(dequant(q, p.scale, lo), dequantize_value(q as u8, want.scale, want.lo).to_bits());
                    }
                }
            }
        }

        #[test]
        fn codes_match_contract(a in finite(), b in finite(), ws in proptest::collection::vec(0.0f64..=1.0, 16), bits in 0usize..3) {
            let max_code = [3u32, 15, 255][bits];
            let (lo, hi) = if crate::quant::params::order_key(f(a)) <= crate::quant::params::order_key(f(b)) { (f(a), f(b)) } else { (f(b), f(a)) };
            let Ok(want) = GroupParams::from_range(lo, hi, max_code) else { return Ok(()) };
            let p = group_params(lo.to_bits(), hi.to_bits(), max_code);
            for x in ws {
                let w = ((lo as f64) + x * ((hi as f64) - (lo as f64))) as f32;
                let w = w.clamp(lo, hi);
                prop_assert_eq!(code(w.to_bits(), &p, max_code), quantize_value(w, want.lo, want.inv, max_code) as u32, "w={:e}", w);
            }
        }
    }

    #[test]
    fn div_edge_cases() {
        for (a, b) in [(1.0f32, 3.0f32), (3.0, 1e-45), (15.0, 1e-38), (1e-45, 255.0), (f32::MAX, 0.5), (3.0, 3.0e38), (255.0, f32::MAX), (1.0, f32::MIN_POSITIVE)] {
            let (asig, aexp) = unpack(a.to_bits());
            let (bsig, bexp) = unpack(b.to_bits());
            assert_eq!(div_rn(asig, aexp, bsig, bexp), (a / b).to_bits(), "{a:e} / {b:e}");
        }
    }

    /// Every non-negative f32 pattern (both functions ignore bit 31), every `k` that `code`
    /// passes, every width. Release builds only (about 2^31 × 3 evaluations per function).
    #[test]
    #[cfg_attr(debug_assertions, ignore = "exhaustive: run with --release")]
    fn round_scaled_fast_is_round_scaled() {
        use rayon::prelude::*;
        for k in [0u32, 64, 128] {
            // One exponent per task; the mantissa loop is plain sequential code.
            let bad = (0u32..256).into_par_iter().find_map_any(|e| {
                (e << 23..(e + 1) << 23).find(|&p| [3, 15, 255].iter().any(|&l| round_scaled(p, k, l) != round_scaled_fast(p, k, l)))
            });
            assert_eq!(bad, None, "k = {k}");
        }
        assert_eq!(round_scaled_fast(0x8000_0000 | 0x3fc0_0000, 0, 15), round_scaled(0x3fc0_0000, 0, 15));
    }

    #[test]
    fn round_scaled_ties_to_even() {
        for k in [0u32, 64] {
            let s = 2f32.powi(k as i32);
            for (t, want) in [(0.5f32, 0u32), (1.5, 2), (2.5, 2), (0.49999997, 0), (0.50000006, 1), (14.5, 14), (15.5, 15), (300.0, 15), (3.0e-39, 0)] {
                let p = t * s;
                assert_eq!(round_scaled(p.to_bits(), k, 15), want, "t={t} k={k}");
                assert_eq!(round_scaled_fast(p.to_bits(), k, 15), want, "t={t} k={k}");
            }
        }
    }
}

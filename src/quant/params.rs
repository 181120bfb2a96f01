//! Per-group parameters: `lo`, `scale` and `inv`, with the only divisions of the whole scheme.

/// Total-order key of an `f32`: comparing keys as `i32` orders floats like `f32::total_cmp`
/// (so `-0.0 < +0.0`). Taking min/max over keys is exact on every backend: no float compare,
/// no dependence on how a device treats subnormals or signed zeros.
#[inline(always)]
pub fn order_key(x: f32) -> i32 {
    let b = x.to_bits() as i32;
    b ^ ((((b >> 31) as u32) >> 1) as i32)
}

/// Inverse of [`order_key`] (the map is an involution).
#[inline(always)]
pub fn from_order_key(k: i32) -> f32 {
    f32::from_bits((k ^ ((((k >> 31) as u32) >> 1) as i32)) as u32)
}

/// True when the bits are those of a NaN or an infinity.
#[inline(always)]
pub fn is_non_finite_bits(bits: u32) -> bool {
    bits & 0x7f80_0000 == 0x7f80_0000
}

/// The affine parameters of one group: `w' = q × scale + lo`, `q = round((w − lo) × inv)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupParams {
    pub lo: f32,
    pub scale: f32,
    pub inv: f32,
}

/// `hi − lo` does not fit in `f32` (only possible when |w| > 1.7e38).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RangeOverflow;

impl GroupParams {
    /// Parameters for a group whose smallest and largest values are `lo` and `hi`, with codes in
    /// `0..=max_code`. Each division is one IEEE-754 `f32` division, done once per group.
    ///
    /// A constant group (`hi − lo == 0`, or so small that `max_code / (hi − lo)` is not finite)
    /// gets `scale = inv = 0`: all codes are 0 and dequantize exactly to `lo`.
    pub fn from_range(lo: f32, hi: f32, max_code: u32) -> Result<Self, RangeOverflow> {
        let width = hi - lo;
        if width.is_infinite() {
            return Err(RangeOverflow);
        }
        let levels = max_code as f32;
        let inv = levels / width;
        if !inv.is_finite() {
            return Ok(Self { lo, scale: 0.0, inv: 0.0 });
        }
        Ok(Self { lo, scale: width / levels, inv })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn order_key_orders_signed_zeros_and_extremes() {
        let xs = [f32::MIN, -1.0, -f32::MIN_POSITIVE, -1e-45, -0.0, 0.0, 1e-45, 1.0, f32::MAX];
        for pair in xs.windows(2) {
            assert!(order_key(pair[0]) < order_key(pair[1]), "{pair:?}");
        }
    }

    proptest! {
        #[test]
        fn order_key_matches_total_cmp(a in any::<u32>(), b in any::<u32>()) {
            let (x, y) = (f32::from_bits(a), f32::from_bits(b));
            prop_assume!(x.is_finite() && y.is_finite());
            prop_assert_eq!(order_key(x).cmp(&order_key(y)), x.total_cmp(&y));
            prop_assert_eq!(from_order_key(order_key(x)).to_bits(), a);
        }
    }

    #[test]
    fn constant_and_tiny_groups_get_zero_scale() {
        let p = GroupParams::from_range(0.5, 0.5, 15).unwrap();
        assert_eq!((p.scale, p.inv, p.lo), (0.0, 0.0, 0.5));
        // 3 / 1e-45 overflows f32: treated as constant.
        let p = GroupParams::from_range(0.0, 1e-45, 3).unwrap();
        assert_eq!((p.scale, p.inv), (0.0, 0.0));
    }

    #[test]
    fn width_overflow_is_rejected() {
        assert_eq!(GroupParams::from_range(-3e38, 3e38, 15), Err(RangeOverflow));
        assert!(GroupParams::from_range(-1.7e38, 1.7e38, 15).is_ok());
    }

    #[test]
    fn parameters_are_single_divisions() {
        let p = GroupParams::from_range(-1.0, 2.0, 15).unwrap();
        assert_eq!(p.scale, 3.0f32 / 15.0);
        assert_eq!(p.inv, 15.0f32 / 3.0);
    }
}

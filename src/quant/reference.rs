//! The scalar reference quantizer: the contract written as plainly as possible. Backends are
//! tested against it byte for byte; nothing fast lives here.

use super::codes::{dequantize_value, quantize_value};
use super::layout::GroupLayout;
use super::lsq;
use super::spec::Method;
use super::pack::{pack_codes, unpack_code};
use super::params::{from_order_key, is_non_finite_bits, order_key, GroupParams};
use crate::error::{QuantError, Result};

/// The smallest and largest value of a group in the total order (`-0.0 < +0.0`), or the index
/// (within the group) of its first NaN/Inf.
pub fn group_range(values: &[f32]) -> std::result::Result<(f32, f32), usize> {
    if let Some(i) = values.iter().position(|w| is_non_finite_bits(w.to_bits())) {
        return Err(i);
    }
    let lo = values.iter().map(|&w| order_key(w)).min().expect("groups are never empty");
    let hi = values.iter().map(|&w| order_key(w)).max().expect("groups are never empty");
    Ok((from_order_key(lo), from_order_key(hi)))
}

/// Parameters of group `g` of a layer, with the errors the contract names.
pub fn checked_group_params(
    name: &str,
    layout: &GroupLayout,
    g: usize,
    values: &[f32],
) -> Result<GroupParams> {
    let start = layout.group_elements(g).start;
    let (lo, hi) = group_range(values).map_err(|i| QuantError::NonFinite {
        layer: name.to_string(),
        index: start + i,
        value: values[i],
    })?;
    GroupParams::from_range(lo, hi, layout.bit_width.max_code()).map_err(|_| QuantError::RangeOverflow {
        layer: name.to_string(),
        group: g,
        lo,
        hi,
    })
}

/// The error of a layer's first invalid group (`None`: every group is valid). Backends that
/// validate in parallel report this one, so the error names the same element whatever order
/// their scan met it in.
pub fn first_error(name: &str, layout: &GroupLayout, weights: &[f32]) -> Option<QuantError> {
    (0..layout.n_groups()).find_map(|g| checked_group_params(name, layout, g, &weights[layout.group_elements(g)]).err())
}

/// Quantizes one layer into `packed` (`layout.packed_len()` bytes) and one scale and zero point
/// per group, by the layout's method.
pub fn quantize_layer(
    name: &str,
    weights: &[f32],
    layout: &GroupLayout,
    packed: &mut [u8],
    scales: &mut [f32],
    zero_points: &mut [f32],
) -> Result<()> {
    let max_code = layout.bit_width.max_code();
    for g in 0..layout.n_groups() {
        let values = &weights[layout.group_elements(g)];
        let p = checked_group_params(name, layout, g, values)?;
        let (codes, scale, zero) = match layout.method {
            Method::MinMax => (values.iter().map(|&w| quantize_value(w, p.lo, p.inv, max_code)).collect::<Vec<u8>>(), p.scale, p.lo),
            Method::Lsq => {
                let grid = lsq::refine(values, p, max_code);
                let mut codes = vec![0u8; values.len()];
                lsq::codes(values, &grid, max_code, &mut codes);
                (codes, grid.scale, grid.zero)
            }
        };
        pack_codes(&codes, layout.bit_width, &mut packed[layout.group_byte_range(g)]);
        scales[g] = scale;
        zero_points[g] = zero;
    }
    Ok(())
}

/// The exact inverse: every element becomes `q × scale + zero_point`.
pub fn dequantize_layer(
    layout: &GroupLayout,
    packed: &[u8],
    scales: &[f32],
    zero_points: &[f32],
    out: &mut [f32],
) {
    for g in 0..layout.n_groups() {
        let bytes = &packed[layout.group_byte_range(g)];
        for (i, w) in out[layout.group_elements(g)].iter_mut().enumerate() {
            *w = dequantize_value(unpack_code(bytes, i, layout.bit_width), scales[g], zero_points[g]);
        }
    }
}

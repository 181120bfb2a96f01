//! Where each group's elements come from and where its bytes go.
//!
//! A tensor of `shape` is viewed as `n_rows` rows of `row_len` elements (the last axis, row-major).
//! Each row is cut into groups of `group_size` consecutive elements; the last group of a row is
//! shorter when `row_len` is not a multiple of `group_size`. Every group starts on a byte boundary
//! of the packed output, and groups and rows follow each other in order.

use std::ops::Range;

use super::spec::{BitWidth, Method, QuantConfig};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupLayout {
    pub n_rows: usize,
    pub row_len: usize,
    pub group_size: usize,
    pub bit_width: BitWidth,
    pub method: Method,
}

impl GroupLayout {
    /// A layout of `n_rows × row_len` elements. `row_len` must be at least 1.
    pub fn new(n_rows: usize, row_len: usize, config: QuantConfig) -> Self {
        debug_assert!(row_len > 0 || n_rows == 0);
        Self { n_rows, row_len, group_size: config.group_size, bit_width: config.bit_width, method: config.method }
    }

    /// The layout of a tensor with `shape`; an empty shape or a 1-D shape is one row.
    /// The caller has already checked that the product of `shape` is the element count.
    pub fn from_shape(shape: &[usize], config: QuantConfig) -> Self {
        match shape.split_last() {
            None => Self::new(1, 1, config),
            Some((&last, rest)) => Self::new(rest.iter().product(), last, config),
        }
    }

    pub fn config(&self) -> QuantConfig {
        QuantConfig { bit_width: self.bit_width, group_size: self.group_size, method: self.method }
    }

    pub fn n_elements(&self) -> usize {
        self.n_rows * self.row_len
    }

    pub fn groups_per_row(&self) -> usize {
        self.row_len.div_ceil(self.group_size)
    }

    pub fn n_groups(&self) -> usize {
        self.n_rows * self.groups_per_row()
    }

    /// Bytes taken by `n` codes packed from a byte boundary.
    pub fn packed_bytes(&self, n: usize) -> usize {
        (n * self.bit_width.bits() as usize).div_ceil(8)
    }

    /// Bytes of one full group.
    pub fn group_bytes(&self) -> usize {
        self.packed_bytes(self.group_size)
    }

    pub fn row_bytes(&self) -> usize {
        let full = self.row_len / self.group_size;
        let tail = self.row_len % self.group_size;
        full * self.group_bytes() + self.packed_bytes(tail)
    }

    /// Length of the packed codes of the whole tensor.
    pub fn packed_len(&self) -> usize {
        self.n_rows * self.row_bytes()
    }

    /// Elements of group `g` (a flat group index over all rows) in the flat tensor.
    pub fn group_elements(&self, g: usize) -> Range<usize> {
        let (row, col) = (g / self.groups_per_row(), g % self.groups_per_row());
        let start = row * self.row_len + col * self.group_size;
        let end = row * self.row_len + ((col + 1) * self.group_size).min(self.row_len);
        start..end
    }

    /// Bytes of group `g` in the packed codes.
    pub fn group_byte_range(&self, g: usize) -> Range<usize> {
        let (row, col) = (g / self.groups_per_row(), g % self.groups_per_row());
        let start = row * self.row_bytes() + col * self.group_bytes();
        let len = self.packed_bytes(self.group_elements(g).len());
        start..start + len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(n_rows: usize, row_len: usize, bits: BitWidth, gs: i64) -> GroupLayout {
        GroupLayout::new(n_rows, row_len, QuantConfig::new(bits, gs).unwrap())
    }

    #[test]
    fn tail_group_is_short_and_byte_aligned() {
        let l = layout(2, 20, BitWidth::B2, 8);
        assert_eq!(l.groups_per_row(), 3);
        assert_eq!(l.group_elements(2), 16..20);
        assert_eq!(l.group_elements(3), 20..28);
        assert_eq!(l.row_bytes(), 2 + 2 + 1);
        assert_eq!(l.group_byte_range(2), 4..5);
        assert_eq!(l.group_byte_range(3), 5..7);
        assert_eq!(l.packed_len(), 10);
    }

    #[test]
    fn groups_cover_every_element_and_byte_once() {
        for bits in [BitWidth::B2, BitWidth::B4, BitWidth::B8] {
            let l = layout(3, 37, bits, 16);
            let mut next_elem = 0;
            let mut next_byte = 0;
            for g in 0..l.n_groups() {
                let e = l.group_elements(g);
                let b = l.group_byte_range(g);
                assert_eq!(e.start, next_elem);
                assert_eq!(b.start, next_byte);
                next_elem = e.end;
                next_byte = b.end;
            }
            assert_eq!(next_elem, l.n_elements());
            assert_eq!(next_byte, l.packed_len());
        }
    }

    #[test]
    fn shape_picks_the_last_axis() {
        let c = QuantConfig::default();
        assert_eq!(GroupLayout::from_shape(&[4, 3, 5], c).n_rows, 12);
        assert_eq!(GroupLayout::from_shape(&[4, 3, 5], c).row_len, 5);
        assert_eq!(GroupLayout::from_shape(&[7], c).n_rows, 1);
        assert_eq!(GroupLayout::from_shape(&[], c).n_elements(), 1);
    }
}

//! Bit packing: little-endian, low bits first, each group from a byte boundary.
//!
//! Code `i` of a group goes to byte `⌊i·b/8⌋` at bit offset `(i·b) mod 8`.

use super::spec::BitWidth;

/// Packs `codes` (each `< 2^bits`) into `out`, which holds exactly `⌈len·b/8⌉` bytes.
pub fn pack_codes(codes: &[u8], bits: BitWidth, out: &mut [u8]) {
    let b = bits.bits() as usize;
    out.fill(0);
    for (i, &q) in codes.iter().enumerate() {
        out[i * b / 8] |= q << ((i * b) % 8);
    }
}

/// Code `i` of a group packed from the start of `packed`.
#[inline(always)]
pub fn unpack_code(packed: &[u8], i: usize, bits: BitWidth) -> u8 {
    let b = bits.bits() as usize;
    let mask = bits.max_code() as u8;
    (packed[i * b / 8] >> ((i * b) % 8)) & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_bit_layout() {
        let mut out = [0u8; 2];
        pack_codes(&[1, 2, 3, 0, 3], BitWidth::B2, &mut out);
        assert_eq!(out, [0b00_11_10_01, 0b11]);
    }

    #[test]
    fn four_bit_layout_puts_first_code_in_low_nibble() {
        let mut out = [0u8; 2];
        pack_codes(&[0x1, 0xa, 0xf], BitWidth::B4, &mut out);
        assert_eq!(out, [0xa1, 0x0f]);
    }

    #[test]
    fn eight_bit_is_one_code_per_byte() {
        let mut out = [0u8; 3];
        pack_codes(&[7, 255, 0], BitWidth::B8, &mut out);
        assert_eq!(out, [7, 255, 0]);
    }

    #[test]
    fn unpack_inverts_pack() {
        for bits in [BitWidth::B2, BitWidth::B4, BitWidth::B8] {
            let codes: Vec<u8> = (0..37u32).map(|i| ((i * 7 + 3) % (bits.max_code() + 1)) as u8).collect();
            let mut out = vec![0u8; (codes.len() * bits.bits() as usize).div_ceil(8)];
            pack_codes(&codes, bits, &mut out);
            let back: Vec<u8> = (0..codes.len()).map(|i| unpack_code(&out, i, bits)).collect();
            assert_eq!(back, codes);
        }
    }
}

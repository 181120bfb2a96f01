//! ggml's tensor types: ids, names and block geometry of every type a GGUF file may hold
//! (ggml 0.20.x `enum ggml_type` and its `type_traits` table), and which of them this crate
//! can encode or decode.
//!
//! Knowing every type's block size lets a reader compute any tensor's size and describe files
//! it cannot convert; only the types in [`GgmlType::can_encode`] / [`GgmlType::can_decode`] are
//! quantized or dequantized here.

use std::fmt;
use std::str::FromStr;

use crate::error::{QuantError, Result};

/// Elements in a K-quant super-block.
pub const QK_K: usize = 256;

macro_rules! ggml_types {
    ($( $variant:ident = $id:literal, $name:literal, $block:expr, $bytes:expr; )*) => {
        /// A ggml tensor type (`enum ggml_type`).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[allow(non_camel_case_types)]
        pub enum GgmlType { $( $variant, )* }

        impl GgmlType {
            /// Every type, in id order.
            pub const ALL: &'static [GgmlType] = &[$( GgmlType::$variant, )*];

            /// The id stored in GGUF tensor infos.
            pub fn id(self) -> u32 {
                match self { $( Self::$variant => $id, )* }
            }

            /// The type of a GGUF tensor id; `None` for ids ggml never assigned or retired.
            pub fn from_id(id: u32) -> Option<Self> {
                match id { $( $id => Some(Self::$variant), )* _ => None }
            }

            /// The name gguf-py and llama.cpp print (`Q4_K`, `F16`, `IQ4_NL`).
            pub fn name(self) -> &'static str {
                match self { $( Self::$variant => $name, )* }
            }

            /// (elements per block, bytes per block).
            pub fn block(self) -> (usize, usize) {
                match self { $( Self::$variant => ($block, $bytes), )* }
            }
        }
    };
}

ggml_types! {
    F32 = 0, "F32", 1, 4;
    F16 = 1, "F16", 1, 2;
    Q4_0 = 2, "Q4_0", 32, 18;
    Q4_1 = 3, "Q4_1", 32, 20;
    Q5_0 = 6, "Q5_0", 32, 22;
    Q5_1 = 7, "Q5_1", 32, 24;
    Q8_0 = 8, "Q8_0", 32, 34;
    Q8_1 = 9, "Q8_1", 32, 40;
    Q2_K = 10, "Q2_K", QK_K, 84;
    Q3_K = 11, "Q3_K", QK_K, 110;
    Q4_K = 12, "Q4_K", QK_K, 144;
    Q5_K = 13, "Q5_K", QK_K, 176;
    Q6_K = 14, "Q6_K", QK_K, 210;
    Q8_K = 15, "Q8_K", QK_K, 292;
    IQ2_XXS = 16, "IQ2_XXS", QK_K, 66;
    IQ2_XS = 17, "IQ2_XS", QK_K, 74;
    IQ3_XXS = 18, "IQ3_XXS", QK_K, 98;
    IQ1_S = 19, "IQ1_S", QK_K, 50;
    IQ4_NL = 20, "IQ4_NL", 32, 18;
    IQ3_S = 21, "IQ3_S", QK_K, 110;
    IQ2_S = 22, "IQ2_S", QK_K, 82;
    IQ4_XS = 23, "IQ4_XS", QK_K, 136;
    I8 = 24, "I8", 1, 1;
    I16 = 25, "I16", 1, 2;
    I32 = 26, "I32", 1, 4;
    I64 = 27, "I64", 1, 8;
    F64 = 28, "F64", 1, 8;
    IQ1_M = 29, "IQ1_M", QK_K, 56;
    BF16 = 30, "BF16", 1, 2;
    TQ1_0 = 34, "TQ1_0", QK_K, 54;
    TQ2_0 = 35, "TQ2_0", QK_K, 66;
    MXFP4 = 39, "MXFP4", 32, 17;
    NVFP4 = 40, "NVFP4", 64, 36;
    Q1_0 = 41, "Q1_0", 128, 18;
    Q2_0 = 42, "Q2_0", 64, 18;
}

impl GgmlType {
    /// The block types this crate encodes byte-identically to ggml's `ggml_quantize_chunk`.
    pub const QUANTIZED: &'static [GgmlType] = &[
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
        Self::Q2_K,
        Self::Q3_K,
        Self::Q4_K,
        Self::Q5_K,
        Self::Q6_K,
    ];

    /// Float element types (one element per "block").
    pub fn is_float(self) -> bool {
        matches!(self, Self::F32 | Self::F16 | Self::BF16)
    }

    /// A block format (anything but plain floats and integers).
    pub fn is_quantized(self) -> bool {
        let (block, _) = self.block();
        block > 1
    }

    /// Whether an importance matrix changes this type's encoding: every block format but Q8_0,
    /// which ggml encodes the same with one or without.
    pub fn uses_imatrix(self) -> bool {
        self.is_quantized() && self != Self::Q8_0
    }

    /// Types this crate can write from f32 data.
    pub fn can_encode(self) -> bool {
        self.is_float() || Self::QUANTIZED.contains(&self)
    }

    /// Types this crate can expand to f32.
    pub fn can_decode(self) -> bool {
        self.can_encode()
    }

    /// Bits per weight, including the block's scales (`Q4_K` → 4.5).
    pub fn bits_per_weight(self) -> f64 {
        let (block, bytes) = self.block();
        (bytes * 8) as f64 / block as f64
    }

    /// Bits of one code (`Q4_K` → 4; `F16` → 16): the "bit width" of reports.
    pub fn code_bits(self) -> u8 {
        match self {
            Self::Q2_K | Self::Q2_0 | Self::TQ2_0 | Self::IQ2_XXS | Self::IQ2_XS | Self::IQ2_S => 2,
            Self::Q3_K | Self::IQ3_XXS | Self::IQ3_S => 3,
            Self::Q5_0 | Self::Q5_1 | Self::Q5_K => 5,
            Self::Q6_K => 6,
            Self::Q8_0 | Self::Q8_1 | Self::Q8_K | Self::I8 => 8,
            Self::F16 | Self::BF16 | Self::I16 => 16,
            Self::F32 | Self::I32 => 32,
            Self::F64 | Self::I64 => 64,
            Self::Q1_0 | Self::IQ1_S | Self::IQ1_M | Self::TQ1_0 => 1,
            _ => 4,
        }
    }

    /// Bytes of one row of `n_per_row` elements, or `None` when the row does not fill whole blocks.
    pub fn row_bytes(self, n_per_row: usize) -> Option<usize> {
        let (block, bytes) = self.block();
        n_per_row.is_multiple_of(block).then(|| n_per_row / block * bytes)
    }

    /// Bytes of `n` elements (`n` a multiple of the block size; panics otherwise — callers check
    /// shapes with [`GgmlType::row_bytes`] first).
    pub fn bytes_for(self, n: usize) -> usize {
        let (block, bytes) = self.block();
        assert!(n.is_multiple_of(block), "{n} elements do not fill whole {} blocks of {block}", self.name());
        n / block * bytes
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for GgmlType {
    type Err = QuantError;

    /// A type by name, case-insensitively (`q4_k`, `Q4_K`, `f16`).
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL.iter().copied().find(|t| t.name().eq_ignore_ascii_case(s)).ok_or_else(|| {
            let names: Vec<String> = Self::QUANTIZED.iter().map(|t| t.name().to_ascii_lowercase()).collect();
            QuantError::value(format!("Unknown ggml type '{s}'. Block types: {}; plain: f32, f16, bf16", names.join(", ")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_names_parse() {
        for &t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
            assert_eq!(t.name().to_ascii_lowercase().parse::<GgmlType>().unwrap(), t);
        }
        assert_eq!(GgmlType::from_id(4), None); // Q4_2, retired
        assert!("q4_k_m".parse::<GgmlType>().is_err()); // a file type (mix), not a tensor type
    }

    #[test]
    fn geometry_matches_the_block_structs() {
        // bits per weight as llama.cpp documents them
        assert_eq!(GgmlType::Q4_K.bits_per_weight(), 4.5);
        assert_eq!(GgmlType::Q6_K.bits_per_weight(), 6.5625);
        assert_eq!(GgmlType::Q2_K.bits_per_weight(), 2.625);
        assert_eq!(GgmlType::Q4_K.row_bytes(512), Some(288));
        assert_eq!(GgmlType::Q4_K.row_bytes(384), None);
        assert_eq!(GgmlType::Q5_0.row_bytes(384), Some(264));
    }
}

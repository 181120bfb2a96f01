//! Bit widths and group sizes.

use crate::error::QuantError;

/// The number of bits per code. Only widths that pack evenly into bytes are offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BitWidth {
    B2 = 2,
    B4 = 4,
    B8 = 8,
}

impl BitWidth {
    /// Accepts 2, 4 or 8; anything else is the error the earlier API raised.
    pub fn new(bits: i64) -> Result<Self, QuantError> {
        match bits {
            2 => Ok(Self::B2),
            4 => Ok(Self::B4),
            8 => Ok(Self::B8),
            other => Err(QuantError::InvalidBitWidth(other)),
        }
    }

    pub fn bits(self) -> u32 {
        self as u32
    }

    /// `L = 2^bits - 1`, the largest code.
    pub fn max_code(self) -> u32 {
        (1u32 << self.bits()) - 1
    }

    /// Codes that share one byte.
    pub fn codes_per_byte(self) -> usize {
        8 / self.bits() as usize
    }
}

/// How each group's scale and zero point are chosen. Both give the same format (packed codes,
/// f32 scale, f32 zero point) and dequantize the same way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Method {
    /// The group's min and max span the grid (`params`): one pass, memory-bound.
    #[default]
    MinMax,
    /// Min/max refined by alternating least squares (`lsq`): six more passes over each group
    /// while it is in cache, never worse than min/max.
    Lsq,
}

impl Method {
    /// `"minmax"` or `"lsq"`, as the CLI, Python and the table metadata spell them.
    pub fn parse(name: &str) -> Result<Self, QuantError> {
        match name {
            "minmax" => Ok(Self::MinMax),
            "lsq" => Ok(Self::Lsq),
            other => Err(QuantError::value(format!("unknown method '{other}': expected 'minmax' or 'lsq'"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::MinMax => "minmax",
            Self::Lsq => "lsq",
        }
    }
}

/// Default group size when a caller gives none.
pub const DEFAULT_GROUP_SIZE: usize = 128;

/// A validated quantization configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QuantConfig {
    pub bit_width: BitWidth,
    pub group_size: usize,
    pub method: Method,
}

impl QuantConfig {
    /// `group_size` must be a positive multiple of 8 so that every full group starts and ends on
    /// a byte boundary for every bit width.
    pub fn new(bit_width: BitWidth, group_size: i64) -> Result<Self, QuantError> {
        if group_size < 8 || group_size % 8 != 0 || group_size > u32::MAX as i64 {
            return Err(QuantError::InvalidGroupSize(group_size));
        }
        Ok(Self { bit_width, group_size: group_size as usize, method: Method::MinMax })
    }

    pub fn with_method(self, method: Method) -> Self {
        Self { method, ..self }
    }
}

impl Default for QuantConfig {
    fn default() -> Self {
        Self { bit_width: BitWidth::B4, group_size: DEFAULT_GROUP_SIZE, method: Method::MinMax }
    }
}

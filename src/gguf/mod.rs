//! GGUF files (versions 2 and 3): a streaming writer, a checking reader, the importance-matrix
//! reader and llama.cpp's quantization mixes. The block formats themselves are a scheme of
//! their own, in [`crate::quant::ggml`].
//!
//! Layout: magic `GGUF`, version, tensor count, metadata count, the metadata key/values, the
//! tensor infos (name, dims innermost first, type, offset), padding to `general.alignment`, then
//! each tensor's data, each padded to the alignment. Everything little-endian.

pub mod imatrix;
pub mod mix;
pub mod reader;
pub mod writer;

use std::fmt;

pub use crate::quant::ggml::GgmlType;
pub use imatrix::Imatrix;
pub use reader::{GgufFile, GgufTensor};
pub use writer::{GgufWriter, TensorPlan};

pub const MAGIC: &[u8; 4] = b"GGUF";
pub const VERSION: u32 = 3;
/// Default data alignment, used when a file has no `general.alignment`.
pub const ALIGNMENT: u64 = 32;
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// `general.quantization_version` as llama.cpp writes it today.
pub const QUANTIZATION_VERSION: u32 = 2;
/// `GGML_MAX_DIMS`: ggml tensors have at most 4 dimensions.
pub const MAX_DIMS: usize = 4;
/// Deepest nesting of metadata arrays we read or write (ggml reads none; gguf-py writes some).
/// A bound keeps a hostile file from driving the recursion into a stack overflow.
pub const MAX_ARRAY_DEPTH: usize = 8;

/// Metadata value types (`gguf.GGUFValueType`).
pub mod value_type {
    pub const UINT8: u32 = 0;
    pub const INT8: u32 = 1;
    pub const UINT16: u32 = 2;
    pub const INT16: u32 = 3;
    pub const UINT32: u32 = 4;
    pub const INT32: u32 = 5;
    pub const FLOAT32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const UINT64: u32 = 10;
    pub const INT64: u32 = 11;
    pub const FLOAT64: u32 = 12;

    /// The name ggml prints for a value type (`u32`, `str`, `arr`).
    pub fn name(ty: u32) -> &'static str {
        const NAMES: [&str; 13] = ["u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "str", "arr", "u64", "i64", "f64"];
        NAMES.get(ty as usize).copied().unwrap_or("unknown")
    }
}

/// One GGUF metadata value, of any of the 13 value types. Reading a file and writing its
/// metadata back gives the same bytes (floats keep their bits; a bool byte other than 0 or 1
/// reads as `true` and is written back as 1, as ggml does).
///
/// Arrays hold one item type each; `Arrays` is an array of arrays, whose items are themselves
/// array variants (each with its own item type, as the format stores it).
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    U64(u64),
    I64(i64),
    F64(f64),
    U8Array(Vec<u8>),
    I8Array(Vec<i8>),
    U16Array(Vec<u16>),
    I16Array(Vec<i16>),
    U32Array(Vec<u32>),
    I32Array(Vec<i32>),
    F32Array(Vec<f32>),
    BoolArray(Vec<bool>),
    StrArray(Vec<String>),
    U64Array(Vec<u64>),
    I64Array(Vec<i64>),
    F64Array(Vec<f64>),
    Arrays(Vec<MetaValue>),
}

impl MetaValue {
    /// The GGUF value type stored before the value (`value_type::ARRAY` for every array).
    pub fn type_id(&self) -> u32 {
        use value_type as vt;
        match self {
            Self::U8(_) => vt::UINT8,
            Self::I8(_) => vt::INT8,
            Self::U16(_) => vt::UINT16,
            Self::I16(_) => vt::INT16,
            Self::U32(_) => vt::UINT32,
            Self::I32(_) => vt::INT32,
            Self::F32(_) => vt::FLOAT32,
            Self::Bool(_) => vt::BOOL,
            Self::Str(_) => vt::STRING,
            Self::U64(_) => vt::UINT64,
            Self::I64(_) => vt::INT64,
            Self::F64(_) => vt::FLOAT64,
            _ => vt::ARRAY,
        }
    }

    /// For an array, the type of its items; `None` for a scalar.
    pub fn item_type_id(&self) -> Option<u32> {
        use value_type as vt;
        Some(match self {
            Self::U8Array(_) => vt::UINT8,
            Self::I8Array(_) => vt::INT8,
            Self::U16Array(_) => vt::UINT16,
            Self::I16Array(_) => vt::INT16,
            Self::U32Array(_) => vt::UINT32,
            Self::I32Array(_) => vt::INT32,
            Self::F32Array(_) => vt::FLOAT32,
            Self::BoolArray(_) => vt::BOOL,
            Self::StrArray(_) => vt::STRING,
            Self::U64Array(_) => vt::UINT64,
            Self::I64Array(_) => vt::INT64,
            Self::F64Array(_) => vt::FLOAT64,
            Self::Arrays(_) => vt::ARRAY,
            _ => return None,
        })
    }

    /// `u32`, `str`, or `arr[i32]` for an array.
    pub fn type_name(&self) -> String {
        match self.item_type_id() {
            Some(item) => format!("arr[{}]", value_type::name(item)),
            None => value_type::name(self.type_id()).to_string(),
        }
    }

    /// Any integer scalar that is non-negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(x) => Some(x.into()),
            Self::U16(x) => Some(x.into()),
            Self::U32(x) => Some(x.into()),
            Self::U64(x) => Some(x),
            _ => self.as_i64().and_then(|x| u64::try_from(x).ok()),
        }
    }

    /// Any integer scalar that fits an `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::I8(x) => Some(x.into()),
            Self::I16(x) => Some(x.into()),
            Self::I32(x) => Some(x.into()),
            Self::I64(x) => Some(x),
            Self::U8(x) => Some(x.into()),
            Self::U16(x) => Some(x.into()),
            Self::U32(x) => Some(x.into()),
            Self::U64(x) => i64::try_from(x).ok(),
            _ => None,
        }
    }

    /// A float scalar (`f32` widened exactly).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(x) => Some(x.into()),
            Self::F64(x) => Some(x),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_str_array(&self) -> Option<&[String]> {
        match self {
            Self::StrArray(v) => Some(v),
            _ => None,
        }
    }

    /// Number of items of an array; `None` for a scalar.
    pub fn array_len(&self) -> Option<usize> {
        Some(match self {
            Self::U8Array(v) => v.len(),
            Self::I8Array(v) => v.len(),
            Self::U16Array(v) => v.len(),
            Self::I16Array(v) => v.len(),
            Self::U32Array(v) => v.len(),
            Self::I32Array(v) => v.len(),
            Self::F32Array(v) => v.len(),
            Self::BoolArray(v) => v.len(),
            Self::StrArray(v) => v.len(),
            Self::U64Array(v) => v.len(),
            Self::I64Array(v) => v.len(),
            Self::F64Array(v) => v.len(),
            Self::Arrays(v) => v.len(),
            _ => return None,
        })
    }
}

/// Items of an array shown by `Display`; the rest are counted.
const SHOWN_ITEMS: usize = 5;
/// Characters of a string shown by `Display` (chat templates run to kilobytes).
const SHOWN_CHARS: usize = 60;

fn show_str(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    if s.chars().count() <= SHOWN_CHARS {
        write!(f, "{s:?}")
    } else {
        let head: String = s.chars().take(SHOWN_CHARS).collect();
        write!(f, "{head:?}… ({} bytes)", s.len())
    }
}

fn show_list<T>(f: &mut fmt::Formatter<'_>, items: &[T], one: impl Fn(&mut fmt::Formatter<'_>, &T) -> fmt::Result) -> fmt::Result {
    f.write_str("[")?;
    for (i, x) in items.iter().take(SHOWN_ITEMS).enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        one(f, x)?;
    }
    if items.len() > SHOWN_ITEMS {
        write!(f, ", … {} items]", items.len())
    } else {
        f.write_str("]")
    }
}

/// Short and human: `42`, `"llama"`, `[1, 2, 3, 4, 5, … 32000 items]`.
impl fmt::Display for MetaValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn num<T: fmt::Display>(f: &mut fmt::Formatter<'_>, x: &T) -> fmt::Result {
            write!(f, "{x}")
        }
        match self {
            Self::U8(x) => num(f, x),
            Self::I8(x) => num(f, x),
            Self::U16(x) => num(f, x),
            Self::I16(x) => num(f, x),
            Self::U32(x) => num(f, x),
            Self::I32(x) => num(f, x),
            Self::F32(x) => num(f, x),
            Self::Bool(x) => num(f, x),
            Self::Str(s) => show_str(f, s),
            Self::U64(x) => num(f, x),
            Self::I64(x) => num(f, x),
            Self::F64(x) => num(f, x),
            Self::U8Array(v) => show_list(f, v, num),
            Self::I8Array(v) => show_list(f, v, num),
            Self::U16Array(v) => show_list(f, v, num),
            Self::I16Array(v) => show_list(f, v, num),
            Self::U32Array(v) => show_list(f, v, num),
            Self::I32Array(v) => show_list(f, v, num),
            Self::F32Array(v) => show_list(f, v, num),
            Self::BoolArray(v) => show_list(f, v, num),
            Self::StrArray(v) => show_list(f, v, |f, s| show_str(f, s)),
            Self::U64Array(v) => show_list(f, v, num),
            Self::I64Array(v) => show_list(f, v, num),
            Self::F64Array(v) => show_list(f, v, num),
            Self::Arrays(v) => show_list(f, v, num),
        }
    }
}

/// The alignment a file with this metadata uses: `general.alignment`, which must be a u32 power
/// of two (ggml refuses anything else), or [`ALIGNMENT`].
pub fn alignment_of<'a>(metadata: impl IntoIterator<Item = &'a (String, MetaValue)>) -> std::result::Result<u64, String> {
    match metadata.into_iter().find(|(k, _)| k == ALIGNMENT_KEY).map(|(_, v)| v) {
        None => Ok(ALIGNMENT),
        Some(MetaValue::U32(a)) if a.is_power_of_two() => Ok(u64::from(*a)),
        Some(MetaValue::U32(a)) => Err(format!("{ALIGNMENT_KEY} {a} is not a power of two")),
        Some(v) => Err(format!("{ALIGNMENT_KEY} must be a u32, found {}", v.type_name())),
    }
}

/// Bytes of a tensor of type `ty` with dims `ne` (innermost first), checked as ggml checks a
/// tensor info: at most [`MAX_DIMS`] dims, each an int64, an element count that fits an int64,
/// rows of whole blocks, and a byte size that fits in memory.
pub fn tensor_bytes(ty: GgmlType, ne: &[u64]) -> std::result::Result<usize, String> {
    if ne.len() > MAX_DIMS {
        return Err(format!("{} dimensions; ggml allows at most {MAX_DIMS}", ne.len()));
    }
    let mut n: i64 = 1;
    for (j, &d) in ne.iter().enumerate() {
        let d = i64::try_from(d).map_err(|_| format!("dimension {j} is {d}, beyond ggml's int64 range"))?;
        n = n.checked_mul(d).ok_or_else(|| format!("dims {ne:?} overflow the element count"))?;
    }
    let row = ne.first().copied().unwrap_or(1);
    let (block, block_bytes) = ty.block();
    if row % block as u64 != 0 {
        return Err(format!("row length {row} is not a multiple of {block}, the block size of {}", ty.name()));
    }
    (n as u64 / block as u64)
        .checked_mul(block_bytes as u64)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| format!("dims {ne:?} of {} overflow the byte size", ty.name()))
}

/// `n` rounded up to a multiple of `align` (a power of two), or `None` on overflow.
pub fn align_to(n: u64, align: u64) -> Option<u64> {
    Some(n.checked_add(align - 1)? & !(align - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_short() {
        assert_eq!(MetaValue::U32(7).to_string(), "7");
        assert_eq!(MetaValue::Str("llama".into()).to_string(), "\"llama\"");
        let vocab: Vec<String> = (0..32000).map(|i| format!("t{i}")).collect();
        assert_eq!(MetaValue::StrArray(vocab).to_string(), "[\"t0\", \"t1\", \"t2\", \"t3\", \"t4\", … 32000 items]");
        assert_eq!(MetaValue::Arrays(vec![MetaValue::I32Array(vec![1, 2])]).to_string(), "[[1, 2]]");
        let long = "x".repeat(1000);
        assert!(MetaValue::Str(long).to_string().ends_with("… (1000 bytes)"));
    }

    #[test]
    fn accessors_convert_integers_that_fit() {
        assert_eq!(MetaValue::I32(5).as_u64(), Some(5));
        assert_eq!(MetaValue::I32(-5).as_u64(), None);
        assert_eq!(MetaValue::U64(u64::MAX).as_i64(), None);
        assert_eq!(MetaValue::U8(3).as_i64(), Some(3));
        assert_eq!(MetaValue::F32(1.5).as_u64(), None);
        assert_eq!(MetaValue::F32(1.5).as_f64(), Some(1.5));
        assert_eq!(MetaValue::I16Array(vec![1]).type_name(), "arr[i16]");
    }

    #[test]
    fn tensor_bytes_checks_like_ggml() {
        assert_eq!(tensor_bytes(GgmlType::Q8_0, &[64, 3]), Ok(6 * 34));
        assert_eq!(tensor_bytes(GgmlType::F32, &[]), Ok(4));
        assert_eq!(tensor_bytes(GgmlType::F32, &[0, 1 << 62]), Ok(0));
        assert!(tensor_bytes(GgmlType::Q8_0, &[48]).unwrap_err().contains("not a multiple of 32"));
        assert!(tensor_bytes(GgmlType::F32, &[1; 5]).unwrap_err().contains("at most 4"));
        assert!(tensor_bytes(GgmlType::F32, &[1 << 32, 1 << 32]).unwrap_err().contains("overflow"));
        assert!(tensor_bytes(GgmlType::F32, &[u64::MAX]).unwrap_err().contains("int64"));
        assert!(tensor_bytes(GgmlType::F64, &[1 << 62]).unwrap_err().contains("byte size"));
    }
}

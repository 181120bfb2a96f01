//! GGUF (version 3) files: ggml's block formats, a streaming writer and a small reader.
//!
//! Layout: magic `GGUF`, version, tensor count, metadata count, the metadata key/values, the
//! tensor infos (name, dims innermost first, type, offset), padding to `general.alignment`, then
//! each tensor's data, each padded to the alignment. Everything little-endian.

pub mod blocks;
pub mod reader;
pub mod writer;

pub use blocks::GgmlType;

pub const MAGIC: &[u8; 4] = b"GGUF";
pub const VERSION: u32 = 3;
pub const ALIGNMENT: u64 = 32;
/// `general.quantization_version` as llama.cpp writes it today.
pub const QUANTIZATION_VERSION: u32 = 2;

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
}

/// A metadata value this crate writes (and the reader returns; other types are skipped over).
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U32(u32),
    U64(u64),
    F32(f32),
    Str(String),
    StrArray(Vec<String>),
    /// A value of a type we only skip when reading.
    Other(u32),
}

/// `general.file_type` (llama.cpp's `LlamaFileType`) for the dominant type of a file.
pub fn file_type(ty: GgmlType) -> u32 {
    match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 7,
        GgmlType::BF16 => 32,
    }
}

pub fn pad(n: u64) -> u64 {
    n.div_ceil(ALIGNMENT) * ALIGNMENT
}

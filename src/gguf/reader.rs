//! The GGUF reader: every metadata value, the tensor infos, and the memory-mapped data section.
//!
//! The file is untrusted input. Every count and length is checked against the bytes that are left
//! before anything is allocated from it, all arithmetic on header values is checked, and every
//! failure is a [`QuantError`] naming the file (and the tensor, when there is one). What ggml's
//! `gguf_init_from_file` refuses, this refuses too, with two additions that keep values exact
//! (strings and names must be UTF-8, as gguf-py requires) and one relaxation (arrays of arrays,
//! which gguf-py writes, up to [`MAX_ARRAY_DEPTH`] deep). Like ggml, it does not limit tensor name
//! length (ggml's 64-byte `GGML_MAX_NAME` is a loader limit, and our own diffusion-model files
//! have longer names).

use std::collections::HashSet;
use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use super::{align_to, alignment_of, tensor_bytes, value_type as vt, GgmlType, MetaValue, MAGIC, MAX_ARRAY_DEPTH};
use crate::error::{QuantError, Result};

#[derive(Clone, Debug)]
pub struct GgufTensor {
    pub name: String,
    /// Row-major shape (outermost first): the stored dims reversed. Its length is the stored
    /// `n_dims`, so `[1, 4096]` and `[4096]` stay distinct.
    pub shape: Vec<usize>,
    pub ty: GgmlType,
    /// Absolute offset in the file.
    pub start: usize,
    pub len: usize,
}

impl GgufTensor {
    /// The dims as stored, innermost (the row) first: ggml's `ne`.
    pub fn ne(&self) -> Vec<usize> {
        self.shape.iter().rev().copied().collect()
    }

    pub fn n_elements(&self) -> usize {
        // Checked when the file was read: the product fits an int64.
        self.shape.iter().product()
    }
}

enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Self::Mapped(m) => m,
            Self::Owned(v) => v,
        }
    }
}

pub struct GgufFile {
    pub metadata: Vec<(String, MetaValue)>,
    pub tensors: Vec<GgufTensor>,
    version: u32,
    alignment: u64,
    header_end: u64,
    data_start: u64,
    bytes: Bytes,
}

/// Smallest encodings, to bound counts by the bytes left: a metadata entry is at least a key
/// length, a 1-byte key, a type and a 1-byte value; a tensor info at least a name length,
/// `n_dims`, a type and an offset.
const MIN_KV_BYTES: u64 = 8 + 1 + 4 + 1;
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 4 + 8;

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
    src: &'a str,
}

impl<'a> Cursor<'a> {
    fn err(&self, message: impl std::fmt::Display) -> QuantError {
        QuantError::value(format!("{}: {message}", self.src))
    }

    fn remaining(&self) -> u64 {
        (self.b.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(format_args!("truncated GGUF file: {what} needs {n} bytes at offset {}, only {} left", self.pos, self.remaining())));
        }
        let s = &self.b[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(self.take(N as u64, what)?.try_into().expect("take returns N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u64(what)?;
        if n > self.remaining() {
            return Err(self.err(format_args!("{what}: string length {n} runs past the end of the file ({} bytes left)", self.remaining())));
        }
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.err(format_args!("{what} is not valid UTF-8")))
    }

    /// A count of items that each take at least `min_item` bytes, checked against what is left
    /// so that no allocation is sized by a lying header.
    fn count(&mut self, min_item: u64, what: &str) -> Result<usize> {
        let n = self.u64(what)?;
        match n.checked_mul(min_item) {
            Some(bytes) if bytes <= self.remaining() => Ok(n as usize),
            _ => Err(self.err(format_args!("{what}: {n} items cannot fit in the {} bytes left", self.remaining()))),
        }
    }

    fn scalar(&mut self, ty: u32, key: &str) -> Result<MetaValue> {
        let what = &*format!("metadata '{key}'");
        Ok(match ty {
            vt::UINT8 => MetaValue::U8(u8::from_le_bytes(self.array(what)?)),
            vt::INT8 => MetaValue::I8(i8::from_le_bytes(self.array(what)?)),
            vt::UINT16 => MetaValue::U16(u16::from_le_bytes(self.array(what)?)),
            vt::INT16 => MetaValue::I16(i16::from_le_bytes(self.array(what)?)),
            vt::UINT32 => MetaValue::U32(u32::from_le_bytes(self.array(what)?)),
            vt::INT32 => MetaValue::I32(i32::from_le_bytes(self.array(what)?)),
            vt::FLOAT32 => MetaValue::F32(f32::from_le_bytes(self.array(what)?)),
            vt::BOOL => MetaValue::Bool(self.array::<1>(what)?[0] != 0),
            vt::STRING => MetaValue::Str(self.string(what)?),
            vt::UINT64 => MetaValue::U64(u64::from_le_bytes(self.array(what)?)),
            vt::INT64 => MetaValue::I64(i64::from_le_bytes(self.array(what)?)),
            vt::FLOAT64 => MetaValue::F64(f64::from_le_bytes(self.array(what)?)),
            vt::ARRAY => self.array_value(key, 1)?,
            other => return Err(self.err(format_args!("metadata '{key}' has unknown GGUF value type {other}"))),
        })
    }

    /// An array (its item type, count and items) at nesting `depth` (1 for a top-level array).
    fn array_value(&mut self, key: &str, depth: usize) -> Result<MetaValue> {
        if depth > MAX_ARRAY_DEPTH {
            return Err(self.err(format_args!("metadata '{key}' has arrays nested deeper than {MAX_ARRAY_DEPTH}")));
        }
        let what = &*format!("metadata '{key}'");
        let item = self.u32(what)?;
        // Fixed-size items: check the count, then decode the whole slice at once.
        macro_rules! fixed {
            ($variant:ident, $t:ty) => {{
                const SIZE: usize = std::mem::size_of::<$t>();
                let n = self.count(SIZE as u64, what)?;
                let bytes = self.take((n * SIZE) as u64, what)?;
                MetaValue::$variant(bytes.chunks_exact(SIZE).map(|c| <$t>::from_le_bytes(c.try_into().unwrap())).collect())
            }};
        }
        Ok(match item {
            vt::UINT8 => fixed!(U8Array, u8),
            vt::INT8 => fixed!(I8Array, i8),
            vt::UINT16 => fixed!(U16Array, u16),
            vt::INT16 => fixed!(I16Array, i16),
            vt::UINT32 => fixed!(U32Array, u32),
            vt::INT32 => fixed!(I32Array, i32),
            vt::FLOAT32 => fixed!(F32Array, f32),
            vt::UINT64 => fixed!(U64Array, u64),
            vt::INT64 => fixed!(I64Array, i64),
            vt::FLOAT64 => fixed!(F64Array, f64),
            vt::BOOL => {
                let n = self.count(1, what)?;
                MetaValue::BoolArray(self.take(n as u64, what)?.iter().map(|&b| b != 0).collect())
            }
            vt::STRING => {
                let n = self.count(8, what)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.string(what)?);
                }
                MetaValue::StrArray(v)
            }
            vt::ARRAY => {
                // Each inner array is at least its item type and count.
                let n = self.count(4 + 8, what)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.array_value(key, depth + 1)?);
                }
                MetaValue::Arrays(v)
            }
            other => return Err(self.err(format_args!("metadata '{key}' is an array of unknown GGUF value type {other}"))),
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| QuantError::Io { context: format!("cannot open {}", path.display()), source: e })?;
        // SAFETY: a read-only mapping; we never write through it. Another process truncating or
        // rewriting the file while it is mapped is unsupported (it could fault or change bytes
        // under us), as for every mmap-based model loader.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| QuantError::Io { context: format!("cannot map {}", path.display()), source: e })?;
        Self::parse(Bytes::Mapped(map), &path.display().to_string())
    }

    /// Parses a GGUF file held in memory (tests, fuzzing, small files read whole).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::parse(Bytes::Owned(bytes), "<GGUF bytes>")
    }

    /// Parses GGUF bytes, naming them `src` in errors.
    pub(crate) fn from_bytes_named(bytes: Vec<u8>, src: &str) -> Result<Self> {
        Self::parse(Bytes::Owned(bytes), src)
    }

    fn parse(bytes: Bytes, src: &str) -> Result<Self> {
        let b = bytes.as_slice();
        let mut c = Cursor { b, pos: 0, src };
        if c.take(4, "magic")? != MAGIC {
            return Err(c.err("not a GGUF file (bad magic)"));
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            let hint = if version & 0xFFFF == 0 { " (a big-endian file?)" } else { "" };
            return Err(c.err(format_args!("unsupported GGUF version {version}{hint}; versions 2 and 3 are read")));
        }
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.count(MIN_KV_BYTES, "metadata count")?;

        let mut metadata = Vec::with_capacity(n_kv);
        let mut keys = HashSet::with_capacity(n_kv);
        for _ in 0..n_kv {
            let key = c.string("metadata key")?;
            // ggml refuses empty and repeated keys; a lookup by key must have one answer.
            if key.is_empty() {
                return Err(c.err("empty metadata key"));
            }
            if !keys.insert(key.clone()) {
                return Err(c.err(format_args!("duplicate metadata key '{key}'")));
            }
            let ty = c.u32(&format!("metadata '{key}'"))?;
            let value = c.scalar(ty, &key)?;
            metadata.push((key, value));
        }
        let alignment = alignment_of(&metadata).map_err(|e| c.err(e))?;

        match n_tensors.checked_mul(MIN_TENSOR_INFO_BYTES) {
            Some(n) if n <= c.remaining() => {}
            _ => return Err(c.err(format_args!("tensor count {n_tensors} cannot fit in the {} bytes left", c.remaining()))),
        }
        let mut infos = Vec::with_capacity(n_tensors as usize);
        let mut names = HashSet::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            // ggml allows an empty tensor name (it only refuses duplicates).
            let name = c.string("tensor name")?;
            if !names.insert(name.clone()) {
                return Err(QuantError::layer_value(&name, format!("{src}: duplicate tensor name")));
            }
            let at = |e: String| QuantError::layer_value(&name, format!("{src}: {e}"));
            let n_dims = c.u32("tensor dims")?;
            if n_dims as usize > super::MAX_DIMS {
                return Err(at(format!("{n_dims} dimensions; ggml allows at most {}", super::MAX_DIMS)));
            }
            let mut ne = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                ne.push(c.u64("tensor dims")?);
            }
            let ty_id = c.u32("tensor type")?;
            let ty = GgmlType::from_id(ty_id).ok_or_else(|| at(format!("unknown ggml type id {ty_id}")))?;
            let len = tensor_bytes(ty, &ne).map_err(at)?;
            let offset = c.u64("tensor offset")?;
            let shape = ne.iter().rev().map(|&d| usize::try_from(d)).collect::<std::result::Result<Vec<_>, _>>();
            let shape = shape.map_err(|_| at(format!("dims {ne:?} do not fit this machine's address space")))?;
            infos.push((name, shape, ty, len, offset));
        }

        let header_end = c.pos as u64;
        let file_len = b.len() as u64;
        let data_start = align_to(header_end, alignment).ok_or_else(|| c.err("header end overflows"))?;
        if n_tensors > 0 && data_start > file_len {
            return Err(c.err(format_args!("truncated GGUF file: the data section would start at {data_start}, past the end ({file_len} bytes)")));
        }

        // Like ggml, each tensor must start exactly where the previous one's padded data ends:
        // this refuses gaps, overlaps and reordering, so the file has one layout and rewriting
        // it reproduces its bytes.
        let mut expected = 0u64;
        let mut tensors = Vec::with_capacity(infos.len());
        for (name, shape, ty, len, offset) in infos {
            let at = |e: String| QuantError::layer_value(&name, format!("{src}: {e}"));
            if offset % alignment != 0 {
                return Err(at(format!("data offset {offset} is not a multiple of the alignment {alignment}")));
            }
            if offset != expected {
                return Err(at(format!("data offset {offset}, expected {expected} (tensors must be stored in order, each padded to the alignment)")));
            }
            let start = data_start.checked_add(offset);
            let end = start.and_then(|s| s.checked_add(len as u64));
            let (start, end) = match (start, end) {
                (Some(s), Some(e)) if e <= file_len => (s, e),
                _ => return Err(at(format!("tensor data ({len} bytes at offset {offset}) runs past the end of the file (truncated?)"))),
            };
            debug_assert!(end <= file_len);
            expected = align_to(offset + len as u64, alignment).ok_or_else(|| at("data offsets overflow".into()))?;
            tensors.push(GgufTensor { name, shape, ty, start: start as usize, len });
        }
        Ok(Self { metadata, tensors, version, alignment, header_end, data_start, bytes })
    }

    /// The tensor's bytes (in the map; nothing is copied).
    pub fn data(&self, t: &GgufTensor) -> &[u8] {
        &self.bytes.as_slice()[t.start..t.start + t.len]
    }

    /// Starts reading a tensor's data from disk without waiting.
    pub fn will_need(&self, t: &GgufTensor) {
        if let Bytes::Mapped(m) = &self.bytes {
            crate::readahead::will_need_mapped(m, t.start, t.len);
        }
    }

    /// Brings a tensor's data into memory now (see [`crate::readahead::populate`]).
    pub fn prefetch(&self, t: &GgufTensor) {
        if let Bytes::Mapped(m) = &self.bytes {
            crate::readahead::populate(m, t.start, t.len);
        }
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// `general.alignment`, or the default 32.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Offset just past the last tensor info (before the padding).
    pub fn header_end(&self) -> u64 {
        self.header_end
    }

    /// Offset of the data section: the header end padded to the alignment. (With no tensors a
    /// file may end before it, as ggml allows.)
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// An integer value (of any integer type) that is non-negative.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(MetaValue::as_u64)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(MetaValue::as_str)
    }

    pub fn tensor(&self, name: &str) -> Option<&GgufTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

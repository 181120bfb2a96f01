//! Importance matrices, as `llama-imatrix` writes them, read and normalized exactly as
//! `llama-quantize` does (`load_imatrix` in tools/quantize/quantize.cpp, on top of
//! common/imatrix-loader.cpp), so a quantizer given [`Imatrix::entries`] sees the numbers
//! llama-quantize would pass to ggml.
//!
//! Two formats, told apart by the magic (llama.cpp tries GGUF first and falls back to legacy, and
//! a legacy file cannot start with `GGUF` unless it claims a billion entries):
//! * GGUF: per weight `<name>.in_sum2` (sums of squared activations, `[ne0, n_mat]`) and
//!   `<name>.counts` (`[1, n_mat]`), both F32; metadata `imatrix.datasets`, `imatrix.chunk_count`,
//!   `imatrix.chunk_size`. Value `j*ne0 + i` is `sums[j*ne0 + i] / count_j`, where `count_j` is
//!   the stored count rounded as C's `lround` and converted back to f32, or 1.0 where the count
//!   is not positive (an expert that saw no tokens).
//! * legacy `.dat`: `i32 n_entries`, then per entry `i32 len, name, i32 ncall, i32 nval,
//!   f32 sums[nval]`, then an optional trailer `i32 chunk_count, i32 len, dataset name`. The sums
//!   were stored pre-multiplied by `ncall`: values are `sums[i] / (float)ncall`, or the raw sums
//!   when `ncall <= 0`.
//!
//! Where llama.cpp would read garbage or crash (a count that is not a finite integer, no counts, a
//! truncated trailer) this refuses the file instead, and it refuses any non-finite value after
//! normalization, as llama-quantize does when it reaches that tensor.

use std::collections::BTreeMap;
use std::path::Path;

use super::{GgmlType, GgufFile, MetaValue, MAGIC};
use crate::error::{QuantError, Result};

pub const DATASETS_KEY: &str = "imatrix.datasets";
pub const CHUNK_COUNT_KEY: &str = "imatrix.chunk_count";
pub const CHUNK_SIZE_KEY: &str = "imatrix.chunk_size";
const SUMS_SUFFIX: &str = ".in_sum2";
const COUNTS_SUFFIX: &str = ".counts";

#[derive(Clone, Debug, PartialEq)]
pub struct Imatrix {
    /// Normalized importance per weight tensor name (one value per input column, per expert).
    pub entries: BTreeMap<String, Vec<f32>>,
    /// The calibration data sets it was computed on.
    pub datasets: Vec<String>,
    pub chunk_count: i32,
    /// Tokens per chunk (0 in the legacy format, which does not record it).
    pub chunk_size: i32,
    pub is_legacy: bool,
}

impl Imatrix {
    pub fn open(path: &Path) -> Result<Self> {
        // Imatrix files are small (one float per weight column), so they are read whole.
        let bytes = std::fs::read(path).map_err(|e| QuantError::Io { context: format!("cannot read {}", path.display()), source: e })?;
        Self::parse(bytes, &path.display().to_string())
    }

    /// Parses an imatrix file held in memory (tests, fuzzing).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::parse(bytes.to_vec(), "<imatrix bytes>")
    }

    /// The normalized values for a weight tensor.
    pub fn get(&self, tensor_name: &str) -> Option<&[f32]> {
        self.entries.get(tensor_name).map(Vec::as_slice)
    }

    fn parse(bytes: Vec<u8>, src: &str) -> Result<Self> {
        let m = if bytes.starts_with(MAGIC) { Self::from_gguf(bytes, src)? } else { Self::from_legacy(&bytes, src)? };
        for (name, e) in &m.entries {
            if let Some((i, v)) = e.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(QuantError::layer_value(name, format!("{src}: imatrix contains non-finite value {v} at index {i} after normalization")));
            }
        }
        Ok(m)
    }

    fn from_gguf(bytes: Vec<u8>, src: &str) -> Result<Self> {
        let file = GgufFile::from_bytes_named(bytes, src)?;
        if file.tensors.is_empty() {
            return Err(QuantError::value(format!("{src}: no data in the imatrix file (no tensors)")));
        }
        let missing: Vec<&str> = [DATASETS_KEY, CHUNK_COUNT_KEY, CHUNK_SIZE_KEY].into_iter().filter(|k| file.get(k).is_none()).collect();
        if !missing.is_empty() {
            return Err(QuantError::value(format!("{src}: missing imatrix metadata ({})", missing.join(", "))));
        }
        // llama.cpp reads both with gguf_get_val_u32 (which aborts on another type) into an int32.
        let u32_value = |key: &str| match file.get(key) {
            Some(MetaValue::U32(x)) => Ok(*x as i32),
            Some(v) => Err(QuantError::value(format!("{src}: {key} must be a u32, found {}", v.type_name()))),
            None => unreachable!("checked above"),
        };
        let chunk_count = u32_value(CHUNK_COUNT_KEY)?;
        let chunk_size = u32_value(CHUNK_SIZE_KEY)?;
        // Only a string array counts, as in llama.cpp; another type reads as no data sets.
        let datasets = file.get(DATASETS_KEY).and_then(MetaValue::as_str_array).map(<[String]>::to_vec).unwrap_or_default();

        let mut pairs: BTreeMap<&str, (Option<&super::GgufTensor>, Option<&super::GgufTensor>)> = BTreeMap::new();
        for t in &file.tensors {
            if let Some(name) = t.name.strip_suffix(SUMS_SUFFIX) {
                pairs.entry(name).or_default().0 = Some(t);
            } else if let Some(name) = t.name.strip_suffix(COUNTS_SUFFIX) {
                pairs.entry(name).or_default().1 = Some(t);
            }
        }
        let mut entries = BTreeMap::new();
        for (name, pair) in pairs {
            let at = |message: String| QuantError::layer_value(name, format!("{src}: {message}"));
            let (sums, counts) = match pair {
                (Some(s), Some(c)) => (s, c),
                (Some(_), None) => return Err(at(format!("imatrix sums ({SUMS_SUFFIX}) without counts ({COUNTS_SUFFIX})"))),
                (None, _) => return Err(at(format!("imatrix counts ({COUNTS_SUFFIX}) without sums ({SUMS_SUFFIX})"))),
            };
            for t in [sums, counts] {
                if t.ty != GgmlType::F32 {
                    return Err(at(format!("imatrix tensor '{}' must be F32, found {}", t.name, t.ty)));
                }
            }
            let sums = floats(file.data(sums));
            let counts = floats(file.data(counts));
            if counts.is_empty() || !sums.len().is_multiple_of(counts.len()) {
                return Err(at(format!("{} imatrix sums are not a multiple of {} counts", sums.len(), counts.len())));
            }
            let ne0 = sums.len() / counts.len();
            let mut e = Vec::with_capacity(sums.len());
            for (j, (&c, row)) in counts.iter().zip(sums.chunks_exact(ne0.max(1))).enumerate() {
                let count = lround_to_f32(c).ok_or_else(|| at(format!("imatrix count {c} at index {j} is not a finite integer within int64")))?;
                e.extend(row.iter().map(|&s| if count > 0.0 { s / count } else { 1.0 }));
            }
            entries.insert(name.to_string(), e);
        }
        Ok(Self { entries, datasets, chunk_count, chunk_size, is_legacy: false })
    }

    fn from_legacy(b: &[u8], src: &str) -> Result<Self> {
        let mut r = Legacy { b, src };
        let n_entries = r.i32().ok_or_else(|| r.err("not an imatrix file (neither GGUF nor a legacy entry count)"))?;
        if n_entries < 1 {
            return Err(r.err(format!("no data in the imatrix file (entry count {n_entries})")));
        }
        let mut entries = BTreeMap::new();
        for i in 1..=n_entries {
            let len = r.i32().ok_or_else(|| r.err(format!("truncated imatrix: no name length for entry {i}")))?;
            let len = usize::try_from(len).map_err(|_| r.err(format!("imatrix entry {i} has a negative name length {len}")))?;
            let name = r.take(len).ok_or_else(|| r.err(format!("truncated imatrix: the name of entry {i} ({len} bytes) runs past the end")))?;
            let name = String::from_utf8(c_string(name).to_vec()).map_err(|_| r.err(format!("the name of imatrix entry {i} is not valid UTF-8")))?;
            let at = |message: String| QuantError::layer_value(&name, format!("{src}: {message}"));
            let (ncall, nval) = match (r.i32(), r.i32()) {
                (Some(c), Some(v)) => (c, v),
                _ => return Err(at("truncated imatrix: no call and value counts".into())),
            };
            if nval < 1 {
                return Err(at(format!("imatrix entry has {nval} values (needs at least 1)")));
            }
            let sums = (nval as usize)
                .checked_mul(4)
                .and_then(|n| r.take(n))
                .ok_or_else(|| at(format!("truncated imatrix: {nval} values run past the end of the file")))?;
            let e = floats(sums).into_iter().map(|s| if ncall > 0 { s / ncall as f32 } else { s }).collect();
            // A repeated name replaces the earlier entry, as in llama.cpp.
            entries.insert(name, e);
        }

        // The optional trailer. llama.cpp reads a partial one as garbage or drops it; a trailer
        // that stops early is a truncated file, so it is refused here.
        let (mut chunk_count, mut datasets) = (0, Vec::new());
        if !r.b.is_empty() {
            chunk_count = r.i32().ok_or_else(|| r.err("truncated imatrix trailer: incomplete chunk count"))?;
            if !r.b.is_empty() {
                let len = r.i32().ok_or_else(|| r.err("truncated imatrix trailer: incomplete dataset name length"))?;
                if len > 0 {
                    let name = r
                        .take(len as usize)
                        .ok_or_else(|| r.err(format!("truncated imatrix trailer: dataset name of {len} bytes runs past the end")))?;
                    // Informational (a file path), so not refused for bad UTF-8.
                    datasets.push(String::from_utf8_lossy(c_string(name)).into_owned());
                }
            }
        }
        Ok(Self { entries, datasets, chunk_count, chunk_size: 0, is_legacy: true })
    }
}

/// C's `lround(c)` converted back to f32, or `None` where `lround` is undefined (NaN, infinite or
/// beyond int64). Rust's `round` also rounds halves away from zero.
fn lround_to_f32(c: f32) -> Option<f32> {
    const I64_LIMIT: f32 = 9_223_372_036_854_775_808.0; // 2^63, exact in f32
    let r = c.round();
    (-I64_LIMIT..I64_LIMIT).contains(&r).then_some(r as i64 as f32)
}

fn floats(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// The bytes before the first NUL, as a C string built from them would hold.
fn c_string(b: &[u8]) -> &[u8] {
    b.iter().position(|&c| c == 0).map_or(b, |n| &b[..n])
}

/// The rest of a legacy file.
struct Legacy<'a> {
    b: &'a [u8],
    src: &'a str,
}

impl<'a> Legacy<'a> {
    fn err(&self, message: impl std::fmt::Display) -> QuantError {
        QuantError::value(format!("{}: {message}", self.src))
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.b.len() {
            return None;
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Some(head)
    }

    fn i32(&mut self) -> Option<i32> {
        self.take(4).map(|b| i32::from_le_bytes(b.try_into().unwrap()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lround_matches_c() {
        assert_eq!(lround_to_f32(2.5), Some(3.0));
        assert_eq!(lround_to_f32(-2.5), Some(-3.0));
        assert_eq!(lround_to_f32(0.49999997), Some(0.0));
        assert_eq!(lround_to_f32(f32::NAN), None);
        assert_eq!(lround_to_f32(f32::INFINITY), None);
        assert_eq!(lround_to_f32(9.3e18), None);
        assert_eq!(lround_to_f32(-9_223_372_036_854_775_808.0), Some(-9_223_372_036_854_775_808.0));
    }

    #[test]
    fn c_string_stops_at_nul() {
        assert_eq!(c_string(b"ab\0cd"), b"ab");
        assert_eq!(c_string(b"abc"), b"abc");
    }
}

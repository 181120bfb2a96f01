//! Reading a converted model back (Arrow IPC or GGUF): listing its tensors and decoding each
//! to f32, for `inspect`, `dequantize` and Python's `read_quantized`.

use std::fs::File;
use std::path::Path;

use std::collections::HashSet;

use arrow_array::cast::AsArray;
use arrow_array::types::Float32Type;
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::arrow_out::FORMAT;
use crate::arrow::dequantize::{dequantize_batch, QuantizedRows, RowKind};
use crate::arrow::lists::string_column;
use crate::arrow::schema::{read_metadata, META_KEY, WEIGHTS};
use crate::cpu::CpuBackend;
use crate::error::{QuantError, Result};
use crate::gguf::reader::GgufFile;
use crate::quant::ggml;

/// Reads the schema and every record batch of an Arrow IPC or Parquet file (told apart by
/// Parquet's `PAR1` magic).
///
/// arrow-ipc and parquet panic on some malformed files (a buffer that points past the message,
/// a type id they do not know) instead of returning an error. A damaged file is the input's
/// fault, not a bug, so such a panic becomes the same error as any unreadable file.
pub fn read_batches(path: &Path) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    crate::contain::contain(|| read_batches_unguarded(path)).unwrap_or_else(|message| {
        Err(QuantError::value(format!("{}: not a readable Arrow IPC or Parquet file: {message}", path.display())))
    })
}

fn read_batches_unguarded(path: &Path) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    // In memory, for both formats: an IPC file is checked against its own size before
    // arrow-ipc trusts it, a Parquet file's page headers are read through `StrictBytes`.
    let bytes = std::fs::read(path).map_err(|e| QuantError::Io { context: format!("cannot open {}", path.display()), source: e })?;
    let bad = |what: &str, e: &dyn std::fmt::Display| QuantError::value(format!("{}: not a readable {what} file: {e}", path.display()));
    if bytes.starts_with(b"PAR1") {
        let builder = ParquetRecordBatchReaderBuilder::try_new(StrictBytes(bytes::Bytes::from(bytes))).map_err(|e| bad("Parquet", &e))?;
        let schema = builder.schema().clone();
        let reader = builder.build().map_err(|e| bad("Parquet", &e))?;
        let batches = reader
            .map(|b| b.and_then(|b| b.with_schema(schema.clone())))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| bad("Parquet", &e))?;
        // Batches carry the file's schema metadata (group size, model metadata), as IPC's do.
        return Ok((schema, batches));
    }
    crate::arrow::ipc::read_file(arrow_buffer::Buffer::from_vec(bytes)).map_err(|e| bad("Arrow IPC", &e))
}

/// A Parquet file's bytes for the reader, whose page-header readers fail at the end of the
/// file instead of reading 0 bytes. parquet 59 skips unknown fields of a page header with
/// `io::copy` from a `Take` of its reader, which at the end of the data copies nothing and
/// succeeds: a header that declares a list of 2^31 skipped doubles or strings then spun for
/// minutes on a 3 KB file (found by the `quantized_reader` fuzz target); now the first skip
/// past the end is an error. Page data is read with `get_bytes`, which checks its range.
struct StrictBytes(bytes::Bytes);

impl parquet::file::reader::Length for StrictBytes {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
}

impl parquet::file::reader::ChunkReader for StrictBytes {
    type T = StrictRead;

    fn get_read(&self, start: u64) -> parquet::errors::Result<StrictRead> {
        let start = usize::try_from(start).ok().filter(|&s| s <= self.0.len());
        let start = start.ok_or_else(|| parquet::errors::ParquetError::EOF(format!("a page starts past the end of the file ({} bytes)", self.0.len())))?;
        Ok(StrictRead(self.0.slice(start..)))
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<bytes::Bytes> {
        self.0.get_bytes(start, length)
    }
}

/// The rest of the file from a page header on (see [`StrictBytes`]).
struct StrictRead(bytes::Bytes);

impl std::io::Read for StrictRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.0.is_empty() && !buf.is_empty() {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "a page header runs past the end of the file"));
        }
        let n = buf.len().min(self.0.len());
        bytes::Buf::copy_to_slice(&mut self.0, &mut buf[..n]);
        Ok(n)
    }
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    pub shape: Vec<usize>,
    /// "affine", "Q4_0", "F16"…
    pub format: String,
    pub bit_width: u32,
    /// Bytes the tensor takes in the file (codes plus scales).
    pub stored_bytes: u64,
}

impl Entry {
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }
}

pub enum QuantFile {
    Arrow { batches: Vec<RecordBatch>, rows: Vec<(usize, usize)>, entries: Vec<Entry> },
    Gguf { file: GgufFile, entries: Vec<Entry> },
}

/// An error about a quantized file's content, naming the file.
fn in_file(path: &Path, e: QuantError) -> QuantError {
    QuantError::value(format!("{}: {e}", path.display()))
}

impl QuantFile {
    pub fn open(path: &Path) -> Result<Self> {
        let mut magic = [0u8; 4];
        {
            use std::io::Read;
            let mut f = File::open(path).map_err(|e| QuantError::Io { context: format!("cannot open {}", path.display()), source: e })?;
            let _ = f.read(&mut magic);
        }
        if &magic == crate::gguf::MAGIC {
            let file = GgufFile::open(path)?;
            let entries = file
                .tensors
                .iter()
                .map(|t| Entry {
                    name: t.name.clone(),
                    shape: t.shape.clone(),
                    format: t.ty.name().to_string(),
                    bit_width: t.ty.code_bits() as u32,
                    stored_bytes: t.len as u64,
                })
                .collect();
            return Ok(Self::Gguf { file, entries });
        }
        let (_, batches) = read_batches(path)?;
        let mut rows = Vec::new();
        let mut entries = Vec::new();
        let mut seen = HashSet::new();
        for (bi, b) in batches.iter().enumerate() {
            // The same checks as `dequantize_arrow`: every size against the shape, bit width
            // and group size, before anything is decoded.
            let checked = QuantizedRows::check(b, None).map_err(|e| in_file(path, e))?;
            let formats = match b.column_by_name(FORMAT) {
                Some(_) => Some(string_column(b, FORMAT).map_err(|e| in_file(path, e))?),
                None => None,
            };
            for (r, (name, row)) in checked.names.iter().zip(&checked.rows).enumerate() {
                if !seen.insert(name.clone()) {
                    return Err(in_file(path, QuantError::layer_value(name, "appears more than once in the file")));
                }
                let (format, bit_width, n_groups) = match row.kind {
                    RowKind::Raw(16) => ("F16".to_string(), 16, 0),
                    RowKind::Raw(_) => ("F32".to_string(), 32, 0),
                    RowKind::Quantized(layout) => (
                        formats.as_ref().map(|f| f[r].clone()).unwrap_or_else(|| "affine".into()),
                        layout.bit_width.bits(),
                        layout.n_groups(),
                    ),
                };
                entries.push(Entry {
                    name: name.clone(),
                    shape: row.shape.clone(),
                    format,
                    bit_width,
                    stored_bytes: row.data_len as u64 + 8 * n_groups as u64,
                });
                rows.push((bi, r));
            }
        }
        Ok(Self::Arrow { batches, rows, entries })
    }

    pub fn entries(&self) -> &[Entry] {
        match self {
            Self::Arrow { entries, .. } | Self::Gguf { entries, .. } => entries,
        }
    }

    pub fn metadata(&self) -> Vec<(String, String)> {
        match self {
            // The arrow_quant entries as `arrow_quant.<entry>` (strings as they are, the rest as
            // JSON), then any other keys.
            Self::Arrow { batches, .. } => {
                let Some(schema) = batches.first().map(|b| b.schema()) else { return Vec::new() };
                let entries = read_metadata(schema.metadata()).unwrap_or_default();
                let mut m: Vec<_> = entries
                    .into_iter()
                    .map(|(k, v)| (format!("{META_KEY}.{k}"), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
                    .chain(schema.metadata().iter().filter(|(k, _)| !k.starts_with(META_KEY)).map(|(k, v)| (k.clone(), v.clone())))
                    .collect();
                m.sort();
                m
            }
            Self::Gguf { file, .. } => file.metadata.iter().map(|(k, v)| (k.clone(), v.to_string())).collect(),
        }
    }

    /// Decodes tensor `i` to f32. Sizes are checked before the output is allocated.
    pub fn decode(&self, i: usize) -> Result<Vec<f32>> {
        match self {
            Self::Gguf { file, entries } => {
                let t = &file.tensors[i];
                let data = file.data(t);
                let n = entries[i].n_elements();
                ggml::check_decode(t.ty, data.len(), n).map_err(|e| QuantError::layer_value(&t.name, e.to_string()))?;
                let mut out = vec![0f32; n];
                ggml::dequantize(t.ty, data, &mut out).map_err(|e| QuantError::layer_value(&t.name, e.to_string()))?;
                Ok(out)
            }
            Self::Arrow { batches, rows, .. } => {
                // One row through the same code as `dequantize_arrow`.
                let (bi, r) = rows[i];
                let decoded = dequantize_batch(&batches[bi].slice(r, 1), None, &CpuBackend::new())?;
                let weights = decoded.column_by_name(WEIGHTS).expect("dequantize_batch writes weights").as_list::<i32>();
                Ok(weights.values().as_primitive::<Float32Type>().values().to_vec())
            }
        }
    }
}

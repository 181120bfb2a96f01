//! Reading a converted model back (Arrow IPC or GGUF): listing its tensors and decoding each
//! to f32, for `inspect`, `dequantize` and Python's `read_quantized`.

use std::fs::File;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int64Type, UInt8Type};
use arrow_array::{Array, RecordBatch};
use arrow_ipc::reader::FileReader;
use arrow_schema::SchemaRef;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use arrow_schema::DataType;

use super::arrow_out::FORMAT;
use crate::arrow::dequantize::batch_group_size;
use crate::arrow::schema::{BIT_WIDTH, LAYER_NAME, QUANTIZED_DATA, SCALES, SHAPE, ZERO_POINTS};
use crate::backend::QuantizedTensor;
use crate::cpu::CpuBackend;
use crate::error::{QuantError, Result};
use crate::gguf::reader::GgufFile;
use crate::gguf::GgmlType;
use crate::quant::ggml;
use crate::quant::{BitWidth, GroupLayout, QuantConfig};

/// Reads the schema and every record batch of an Arrow IPC or Parquet file (told apart by
/// Parquet's `PAR1` magic).
pub fn read_batches(path: &Path) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let io = |e| QuantError::Io { context: format!("cannot open {}", path.display()), source: e };
    let mut magic = [0u8; 4];
    {
        use std::io::Read;
        let _ = File::open(path).map_err(io)?.read(&mut magic);
    }
    let file = File::open(path).map_err(io)?;
    let bad = |what: &str, e: &dyn std::fmt::Display| QuantError::value(format!("{}: not a readable {what} file: {e}", path.display()));
    if &magic == b"PAR1" {
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| bad("Parquet", &e))?;
        let schema = builder.schema().clone();
        let reader = builder.build().map_err(|e| bad("Parquet", &e))?;
        let batches = reader
            .map(|b| b.and_then(|b| b.with_schema(schema.clone())))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| bad("Parquet", &e))?;
        // Batches carry the file's schema metadata (group size, model metadata), as IPC's do.
        return Ok((schema, batches));
    }
    let reader = FileReader::try_new(file, None).map_err(|e| bad("Arrow IPC", &e))?;
    let schema = reader.schema();
    let batches = reader.collect::<std::result::Result<Vec<_>, _>>().map_err(|e| bad("Arrow IPC", &e))?;
    Ok((schema, batches))
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

fn column<'a>(b: &'a RecordBatch, name: &str) -> Result<&'a dyn Array> {
    b.column_by_name(name).map(|c| c.as_ref()).ok_or_else(|| QuantError::MissingColumn(name.to_string()))
}

fn binary_value(col: &dyn Array, row: usize) -> &[u8] {
    match col.data_type() {
        DataType::LargeBinary => col.as_binary::<i64>().value(row),
        _ => col.as_binary::<i32>().value(row),
    }
}

fn float_list(col: &dyn Array, row: usize) -> Vec<f32> {
    let l = col.as_list::<i32>().value(row);
    l.as_primitive::<Float32Type>().values().to_vec()
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
        for (bi, b) in batches.iter().enumerate() {
            let names = column(b, LAYER_NAME)?.as_string::<i32>();
            let data = column(b, QUANTIZED_DATA)?;
            let shapes = column(b, SHAPE)?.as_list::<i32>();
            let bits = column(b, BIT_WIDTH)?.as_primitive::<UInt8Type>();
            let scales = column(b, SCALES)?.as_list::<i32>();
            let formats = b.column_by_name(FORMAT).map(|c| c.as_string::<i32>().clone());
            for r in 0..b.num_rows() {
                let shape: Vec<usize> = shapes.value(r).as_primitive::<Int64Type>().values().iter().map(|&d| d as usize).collect();
                let n_scales = scales.value(r).len() as u64;
                entries.push(Entry {
                    name: names.value(r).to_string(),
                    shape,
                    format: formats.as_ref().map(|f| f.value(r).to_string()).unwrap_or_else(|| "affine".into()),
                    bit_width: bits.value(r) as u32,
                    stored_bytes: binary_value(data, r).len() as u64 + 8 * n_scales,
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
            Self::Arrow { batches, .. } => {
                let mut m: Vec<_> = batches.first().map(|b| b.schema().metadata().clone().into_iter().collect()).unwrap_or_default();
                m.sort();
                m
            }
            Self::Gguf { file, .. } => file.metadata.iter().map(|(k, v)| (k.clone(), v.to_string())).collect(),
        }
    }

    /// Decodes tensor `i` to f32.
    pub fn decode(&self, i: usize) -> Result<Vec<f32>> {
        let e = &self.entries()[i];
        let mut out = vec![0f32; e.n_elements()];
        match self {
            Self::Gguf { file, .. } => {
                let t = &file.tensors[i];
                ggml::dequantize(t.ty, file.data(t), &mut out).map_err(|e| QuantError::layer_value(&t.name, e.to_string()))?;
            }
            Self::Arrow { batches, rows, .. } => {
                let (bi, r) = rows[i];
                let b = &batches[bi];
                let data = binary_value(column(b, QUANTIZED_DATA)?, r);
                let kept = match e.format.as_str() {
                    "F16" => Some(GgmlType::F16),
                    "F32" => Some(GgmlType::F32),
                    _ => None,
                };
                if let Some(ty) = kept {
                    if data.len() != ty.bytes_for(out.len()) {
                        return Err(QuantError::layer_value(&e.name, "raw data length does not match the shape"));
                    }
                    ggml::dequantize(ty, data, &mut out)?;
                } else {
                    let group_size = batch_group_size(b, None)?;
                    let config = QuantConfig::new(BitWidth::new(e.bit_width as i64)?, group_size)?;
                    let layout = GroupLayout::from_shape(&e.shape, config);
                    let q = QuantizedTensor {
                        layout,
                        packed: data.to_vec(),
                        scales: float_list(column(b, SCALES)?, r),
                        zero_points: float_list(column(b, ZERO_POINTS)?, r),
                    };
                    if q.packed.len() != layout.packed_len() || q.scales.len() != layout.n_groups() || q.zero_points.len() != layout.n_groups() {
                        return Err(QuantError::layer_value(&e.name, "codes or scales do not match shape, bit_width and group_size"));
                    }
                    out = q.dequantize(&CpuBackend::new())?;
                }
            }
        }
        Ok(out)
    }
}

//! The Arrow IPC output of a model, and the quality report as a table.
//!
//! The model file holds one record batch per tensor in the quantized schema
//! (`layer_name`, `quantized_data`, `scales`, `zero_points`, `shape`, `bit_width`, `group_size`) plus
//! `source_dtype`, `format` ("affine", or "F16"/"F32" for tensors kept in high precision, whose
//! `quantized_data` is then the raw little-endian values, `scales`/`zero_points` empty and
//! `bit_width` 16 or 32), the tensor's `cosine`, `relative_mse`, `snr_db`, and `method` (how an
//! affine tensor's scales were chosen: "minmax" or "lsq"; empty for kept tensors). The schema
//! metadata's JSON object adds the source files, each tensor's source dtype and format, the tool
//! version and the caller's entries (`Options::metadata`).

use std::sync::Arc;

use arrow_array::{ArrayRef, BinaryArray, Float32Array, Float64Array, LargeBinaryArray, ListArray, RecordBatch, StringArray, UInt64Array, UInt8Array, Int8Array, Int64Array};
use arrow_buffer::{Buffer, OffsetBuffer};
use arrow_ipc::writer::FileWriter;
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use parquet::arrow::ArrowWriter;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::atomic::AtomicFile;
use super::convert::TensorReport;
use crate::arrow::quantize::int64_lists;
use crate::arrow::schema::{list_field, quantized_metadata, quantized_schema, schema_metadata, METHOD};
use crate::backend::QuantizedTensor;
use crate::error::{QuantError, Result};
use crate::gguf::GgmlType;

pub const SOURCE_DTYPE: &str = "source_dtype";
pub const FORMAT: &str = "format";
/// Entries of the schema metadata's JSON object (see `arrow::schema`).
pub const META_SOURCE_FILES: &str = "model.source_files";
pub const META_TENSORS: &str = "model.tensors";
pub const META_TOOL: &str = "model.tool";

pub struct ModelMeta {
    pub source_files: Vec<String>,
    /// (name, source dtype, format)
    pub tensors: Vec<(String, String, String)>,
    /// Further key/values from the caller (`Options::metadata`).
    pub extra: Vec<(String, String)>,
}

fn arrow_err(e: arrow_schema::ArrowError) -> QuantError {
    QuantError::value(format!("Arrow IPC: {e}"))
}

fn parquet_err(e: parquet::errors::ParquetError) -> QuantError {
    QuantError::value(format!("could not write Parquet: {e}"))
}

/// The model file's schema.
pub fn model_schema(group_size: usize, large: bool, meta: &ModelMeta) -> SchemaRef {
    let base = quantized_schema(group_size, large);
    let mut fields: Vec<Field> = base.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(SOURCE_DTYPE, DataType::Utf8, false));
    fields.push(Field::new(FORMAT, DataType::Utf8, false));
    for s in ["cosine", "relative_mse", "snr_db"] {
        fields.push(Field::new(s, DataType::Float64, false));
    }
    fields.push(Field::new(METHOD, DataType::Utf8, false));
    let mut entries = quantized_metadata(group_size);
    entries.insert(META_SOURCE_FILES.into(), serde_json::json!(meta.source_files));
    let tensors: Vec<serde_json::Value> = meta
        .tensors
        .iter()
        .map(|(n, d, f)| serde_json::json!({"name": n, "dtype": d, "format": f}))
        .collect();
    entries.insert(META_TENSORS.into(), serde_json::Value::Array(tensors));
    entries.insert(META_TOOL.into(), format!("arrow_quant_v2 {}", env!("CARGO_PKG_VERSION")).into());
    for (k, v) in &meta.extra {
        // A value that is JSON is kept as such (a config object), anything else as a string.
        entries.insert(k.clone(), serde_json::from_str(v).unwrap_or_else(|_| v.as_str().into()));
    }
    let metadata = schema_metadata(entries);
    Arc::new(Schema::new(fields).with_metadata(metadata))
}

/// Bytes of encoded tensors per Parquet row group, about.
const ROW_GROUP_BYTES: usize = 64 << 20;

/// Arrow IPC or Parquet: the same batches, either container.
enum TableWriter {
    Ipc(FileWriter<AtomicFile>),
    Parquet(ArrowWriter<AtomicFile>),
}

pub struct ArrowSink {
    writer: TableWriter,
    schema: SchemaRef,
    large: bool,
    group_size: usize,
}

/// One list of floats, taking the vector (no copy).
fn floats(v: Vec<f32>) -> ArrayRef {
    let n = v.len();
    Arc::new(ListArray::new(list_field(DataType::Float32), OffsetBuffer::from_lengths([n]), Arc::new(Float32Array::from(v)), None))
}

impl ArrowSink {
    pub fn new(out: AtomicFile, parquet: bool, group_size: usize, large: bool, meta: &ModelMeta) -> Result<Self> {
        let schema = model_schema(group_size, large, meta);
        let writer = if parquet {
            // The Arrow schema, metadata included, is stored in the file and restored by readers.
            // No dictionaries (every value is unique: hashing megabytes of codes per tensor to
            // find that out took more time than the quantization) and no min/max statistics of
            // the codes (meaningless bytes, compared in full).
            let props = WriterProperties::builder()
                .set_dictionary_enabled(false)
                .set_column_statistics_enabled(ColumnPath::from(crate::arrow::schema::QUANTIZED_DATA), EnabledStatistics::None)
                .build();
            TableWriter::Parquet(ArrowWriter::try_new(out, schema.clone(), Some(props)).map_err(parquet_err)?)
        } else {
            TableWriter::Ipc(FileWriter::try_new(out, &schema).map_err(arrow_err)?)
        };
        Ok(Self { writer, schema, large, group_size })
    }

    /// One tensor's row; its buffers become the row's arrays without a copy.
    fn write_row(&mut self, r: &TensorReport, data: Vec<u8>, scales: Vec<f32>, zero_points: Vec<f32>, bits: u8) -> Result<()> {
        let n = data.len();
        let data = Buffer::from_vec(data);
        let data: ArrayRef = if self.large {
            Arc::new(LargeBinaryArray::new(OffsetBuffer::from_lengths([n]), data, None))
        } else {
            if n > i32::MAX as usize {
                return Err(QuantError::layer_value(&r.name, "more than 2 GiB of data in one tensor"));
            }
            Arc::new(BinaryArray::new(OffsetBuffer::from_lengths([n]), data, None))
        };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![r.name.as_str()])),
            data,
            floats(scales),
            floats(zero_points),
            Arc::new(int64_lists(std::iter::once(r.shape.iter().map(|&d| d as i64)))),
            Arc::new(Int8Array::from(vec![bits as i8])),
            Arc::new(Int64Array::from(vec![self.group_size as i64])),
            Arc::new(StringArray::from(vec![r.source_dtype.as_str()])),
            Arc::new(StringArray::from(vec![r.format.as_str()])),
            Arc::new(Float64Array::from(vec![r.stats.cosine()])),
            Arc::new(Float64Array::from(vec![r.stats.relative_mse()])),
            Arc::new(Float64Array::from(vec![r.stats.snr_db()])),
            Arc::new(StringArray::from(vec![r.method.as_str()])),
        ];
        let batch = RecordBatch::try_new(self.schema.clone(), columns).map_err(arrow_err)?;
        match &mut self.writer {
            TableWriter::Ipc(w) => w.write(&batch).map_err(arrow_err),
            TableWriter::Parquet(w) => {
                w.write(&batch).map_err(parquet_err)?;
                // A row group is held in memory until it is flushed: close one every
                // ROW_GROUP_BYTES, so memory stays bounded and the file is written as we go.
                if w.in_progress_size() >= ROW_GROUP_BYTES {
                    w.flush().map_err(parquet_err)?;
                }
                Ok(())
            }
        }
    }

    pub fn write_affine(&mut self, r: &TensorReport, q: QuantizedTensor) -> Result<()> {
        let bits = q.layout.bit_width.bits() as u8;
        self.write_row(r, q.packed, q.scales, q.zero_points, bits)
    }

    pub fn write_kept(&mut self, r: &TensorReport, ty: GgmlType, data: Vec<u8>) -> Result<()> {
        let bits = if ty == GgmlType::F32 { 32 } else { 16 };
        self.write_row(r, data, Vec::new(), Vec::new(), bits)
    }

    /// Writes the footer and hands back the file for renaming.
    pub fn finish(self) -> Result<AtomicFile> {
        match self.writer {
            TableWriter::Ipc(mut w) => {
                w.finish().map_err(arrow_err)?;
                w.into_inner().map_err(arrow_err)
            }
            TableWriter::Parquet(w) => w.into_inner().map_err(parquet_err),
        }
    }
}

/// The quality report: one row per tensor. `cosine_minmax` and `snr_db_minmax` (null unless the
/// tensor used `method="lsq"`) are what min/max gives in the same layout.
pub fn report_batch(reports: &[TensorReport]) -> RecordBatch {
    let f64s = |f: fn(&TensorReport) -> f64| -> ArrayRef { Arc::new(Float64Array::from_iter_values(reports.iter().map(f))) };
    let minmax = |f: fn(&crate::quant::metrics::ErrorStats) -> f64| -> ArrayRef { Arc::new(reports.iter().map(|r| r.minmax_stats.as_ref().map(f)).collect::<Float64Array>()) };
    let u64s = |f: fn(&TensorReport) -> u64| -> ArrayRef { Arc::new(UInt64Array::from_iter_values(reports.iter().map(f))) };
    let strs = |f: fn(&TensorReport) -> &str| -> ArrayRef { Arc::new(StringArray::from_iter_values(reports.iter().map(f))) };
    let schema = Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("source_dtype", DataType::Utf8, false),
        Field::new("shape", DataType::List(list_field(DataType::Int64)), false),
        Field::new("format", DataType::Utf8, false),
        Field::new("method", DataType::Utf8, false),
        Field::new("bit_width", DataType::UInt8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("n_elements", DataType::UInt64, false),
        Field::new("source_bytes", DataType::UInt64, false),
        Field::new("output_bytes", DataType::UInt64, false),
        Field::new("cosine", DataType::Float64, false),
        Field::new("relative_mse", DataType::Float64, false),
        Field::new("snr_db", DataType::Float64, false),
        Field::new("max_abs_error", DataType::Float64, false),
        Field::new("cosine_minmax", DataType::Float64, true),
        Field::new("snr_db_minmax", DataType::Float64, true),
    ]);
    let columns: Vec<ArrayRef> = vec![
        strs(|r| &r.name),
        strs(|r| &r.source_dtype),
        Arc::new(int64_lists(reports.iter().map(|r| r.shape.iter().map(|&d| d as i64)))),
        strs(|r| &r.format),
        strs(|r| &r.method),
        Arc::new(UInt8Array::from_iter_values(reports.iter().map(|r| r.bit_width))),
        strs(|r| &r.reason),
        u64s(|r| r.shape.iter().product::<usize>() as u64),
        u64s(|r| r.source_bytes),
        u64s(|r| r.output_bytes),
        f64s(|r| r.stats.cosine()),
        f64s(|r| r.stats.relative_mse()),
        f64s(|r| r.stats.snr_db()),
        f64s(|r| r.stats.max_abs_error),
        minmax(|s| s.cosine()),
        minmax(|s| s.snr_db()),
    ];
    RecordBatch::try_new(Arc::new(schema), columns).expect("report columns match the schema")
}

/// Writes the report as an Arrow IPC file under a temporary name, renamed by the caller.
pub fn stage_report(path: &std::path::Path, reports: &[TensorReport]) -> Result<super::atomic::Staged> {
    let batch = report_batch(reports);
    let out = AtomicFile::create(path)?;
    let mut w = FileWriter::try_new(out, &batch.schema()).map_err(arrow_err)?;
    w.write(&batch).map_err(arrow_err)?;
    w.finish().map_err(arrow_err)?;
    w.into_inner().map_err(arrow_err)?.finish()
}

/// A plain-text summary table of the report.
pub fn summary_table(reports: &[TensorReport]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "{:<56} {:>7} {:>4} {:>12} {:>12} {:>9} {:>9} {:>8}", "tensor", "format", "bits", "src bytes", "out bytes", "cosine", "rel mse", "snr dB");
    let (mut src, mut out) = (0u64, 0u64);
    let mut worst: Option<&TensorReport> = None;
    for r in reports {
        src += r.source_bytes;
        out += r.output_bytes;
        let n = r.name.chars().count();
        let name = if n > 56 { format!("…{}", r.name.chars().skip(n - 55).collect::<String>()) } else { r.name.clone() };
        let _ = writeln!(
            s,
            "{:<56} {:>7} {:>4} {:>12} {:>12} {:>9.6} {:>9.2e} {:>8.2}",
            name,
            r.format,
            r.bit_width,
            r.source_bytes,
            r.output_bytes,
            r.stats.cosine(),
            r.stats.relative_mse(),
            r.stats.snr_db()
        );
        if r.format != "skipped" && worst.is_none_or(|w| r.stats.cosine() < w.stats.cosine()) {
            worst = Some(r);
        }
    }
    let _ = writeln!(
        s,
        "{} tensors, {src} -> {out} bytes (ratio {:.2}x)",
        reports.len(),
        if out == 0 { 0.0 } else { src as f64 / out as f64 }
    );
    if let Some(w) = worst {
        let _ = writeln!(s, "lowest cosine: {:.6} ({})", w.stats.cosine(), w.name);
    }
    // Per output format (a mix such as Q4_K_M spreads tensors over several GGUF types).
    let mut formats: Vec<&str> = reports.iter().map(|r| r.format.as_str()).filter(|f| *f != "skipped").collect();
    formats.sort_unstable();
    formats.dedup();
    if formats.len() > 1 {
        for f in formats {
            let (mut n, mut elems, mut bytes, mut stats) = (0, 0u64, 0u64, crate::quant::metrics::ErrorStats::default());
            for r in reports.iter().filter(|r| r.format == f) {
                n += 1;
                elems += r.shape.iter().product::<usize>() as u64;
                bytes += r.output_bytes;
                stats = stats.merge(r.stats);
            }
            let bpw = if elems == 0 { 0.0 } else { bytes as f64 * 8.0 / elems as f64 };
            let _ = writeln!(s, "  {f:>7}: {n:>4} tensors, {bytes:>12} bytes, {bpw:6.3} bits/weight, SNR {:7.2} dB", stats.snr_db());
        }
    }
    // What the search bought, over the tensors that used it.
    let searched: Vec<_> = reports.iter().filter_map(|r| r.minmax_stats.map(|m| (r.stats, m))).collect();
    if !searched.is_empty() {
        let (lsq, minmax) = searched.iter().fold(Default::default(), |(a, b): (crate::quant::metrics::ErrorStats, crate::quant::metrics::ErrorStats), (x, y)| (a.merge(*x), b.merge(*y)));
        let _ = writeln!(
            s,
            "lsq: {} tensors, SNR {:.2} dB against {:.2} dB with min/max at the same widths ({:+.2} dB)",
            searched.len(),
            lsq.snr_db(),
            minmax.snr_db(),
            lsq.snr_db() - minmax.snr_db()
        );
    }
    s
}

//! The conversion pipeline: checkpoint → decisions → per tensor (read, quantize, measure, write)
//! → output renamed into place.
//!
//! One tensor is in flight at a time: its bytes are mapped, converted to f32 when needed,
//! quantized, measured against its dequantized form in chunks of rows, written out, and
//! released before the next is read.

use std::path::Path;
use std::str::FromStr;

use rayon::prelude::*;

use super::arrow_out::{ArrowSink, ModelMeta};
use super::atomic::AtomicFile;
use super::rules::{Action, Rules};
use super::safetensors_reader::{source_files, Checkpoint, TensorDtype};
use crate::backend::{Backend, DequantJob, QuantizedTensor};
use crate::device::{backend, Device};
use crate::error::{QuantError, Result};
use crate::gguf::writer::{GgufWriter, TensorPlan};
use crate::gguf::{self, blocks, GgmlType, MetaValue};
use crate::quant::metrics::ErrorStats;
use crate::quant::{BitWidth, GroupLayout, QuantConfig};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Arrow,
    Parquet,
    Gguf,
}

impl OutputFormat {
    /// From the output's extension: `.gguf`, `.parquet`, anything else is Arrow IPC.
    pub fn from_path(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("gguf") => Self::Gguf,
            Some("parquet") => Self::Parquet,
            _ => Self::Arrow,
        }
    }
}

impl FromStr for OutputFormat {
    type Err = QuantError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "arrow" | "ipc" | "feather" => Ok(Self::Arrow),
            "parquet" => Ok(Self::Parquet),
            "gguf" => Ok(Self::Gguf),
            _ => Err(QuantError::value(format!("Invalid format: '{s}'. Must be 'arrow', 'parquet' or 'gguf'"))),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum QuantType {
    Affine,
    Q4_0,
    Q4_1,
    Q8_0,
}

impl QuantType {
    pub fn ggml(self) -> Option<GgmlType> {
        match self {
            Self::Affine => None,
            Self::Q4_0 => Some(GgmlType::Q4_0),
            Self::Q4_1 => Some(GgmlType::Q4_1),
            Self::Q8_0 => Some(GgmlType::Q8_0),
        }
    }
}

impl FromStr for QuantType {
    type Err = QuantError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "affine" => Ok(Self::Affine),
            "q4_0" => Ok(Self::Q4_0),
            "q4_1" => Ok(Self::Q4_1),
            "q8_0" => Ok(Self::Q8_0),
            _ => Err(QuantError::value(format!("Invalid type: '{s}'. Must be 'affine', 'q4_0', 'q4_1' or 'q8_0'"))),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    /// `None`: from the output's extension.
    pub format: Option<OutputFormat>,
    /// `None`: affine for Arrow output; for GGUF, q8_0 when `config` asks for 8 bits, else q4_0.
    pub qtype: Option<QuantType>,
    /// Bit width and group size of the affine format.
    pub config: QuantConfig,
    pub device: Device,
    pub keep: Vec<String>,
    pub quantize: Vec<String>,
    /// Affine only: per tensor, the lowest of 2, 4, 8 bits whose cosine reaches this.
    pub min_cosine: Option<f64>,
    /// `general.architecture` for GGUF; default: `model_type` of a `config.json` beside the
    /// checkpoint, else "unknown".
    pub arch: Option<String>,
    /// `general.name`; default: the checkpoint's file or folder name.
    pub name: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            format: None,
            qtype: None,
            config: QuantConfig::default(),
            device: Device::Auto,
            keep: Vec::new(),
            quantize: Vec::new(),
            min_cosine: None,
            arch: None,
            name: None,
        }
    }
}

/// What happened to one tensor.
#[derive(Clone, Debug)]
pub struct TensorReport {
    pub name: String,
    pub source_dtype: String,
    pub shape: Vec<usize>,
    /// "affine", "Q4_0", "Q4_1", "Q8_0", "F16", "F32" or "skipped".
    pub format: String,
    /// Bits per code for quantized tensors, 16/32 for kept ones, 0 for skipped ones.
    pub bit_width: u8,
    pub reason: String,
    pub source_bytes: u64,
    pub output_bytes: u64,
    /// Original vs. what the output decodes to.
    pub stats: ErrorStats,
}

/// Progress of a conversion. `advance` may fail (a Python callback raising, Ctrl-C); the
/// conversion then stops and removes its temporary output.
pub trait Progress {
    fn advance(&mut self, _done_bytes: u64, _total_bytes: u64) -> Result<()> {
        Ok(())
    }
    /// One line per tensor decision (verbose mode).
    fn message(&mut self, _line: &str) {}
}

pub struct NoProgress;
impl Progress for NoProgress {}

fn check_finite(name: &str, x: &[f32]) -> Result<()> {
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(QuantError::NonFinite { layer: name.to_string(), index: i, value: x[i] });
    }
    Ok(())
}

/// Error statistics of an affine tensor, dequantized a chunk of rows at a time.
fn affine_stats(backend: &dyn Backend, name: &str, q: &QuantizedTensor, w: &[f32]) -> Result<ErrorStats> {
    let l = q.layout;
    let rows_per = ((1usize << 20) / l.row_len.max(1)).max(1);
    let mut buf = vec![0f32; rows_per.min(l.n_rows) * l.row_len];
    let (rb, gpr) = (l.row_bytes(), l.groups_per_row());
    let mut stats = ErrorStats::default();
    let mut r0 = 0;
    while r0 < l.n_rows {
        let r1 = (r0 + rows_per).min(l.n_rows);
        let sub = GroupLayout { n_rows: r1 - r0, ..l };
        let out = &mut buf[..sub.n_elements()];
        backend.dequantize(&mut [DequantJob {
            name,
            layout: sub,
            packed: &q.packed[r0 * rb..r1 * rb],
            scales: &q.scales[r0 * gpr..r1 * gpr],
            zero_points: &q.zero_points[r0 * gpr..r1 * gpr],
            out,
        }])?;
        stats.add(&w[r0 * l.row_len..r1 * l.row_len], &buf[..sub.n_elements()]);
        r0 = r1;
    }
    Ok(stats)
}

/// Encodes `x` as `ty` (blocks in parallel), returning the bytes and the error statistics.
pub fn encode_ggml(ty: GgmlType, x: &[f32]) -> (Vec<u8>, ErrorStats) {
    const CHUNK: usize = 32 * 1024;
    let mut out = vec![0u8; ty.bytes_for(x.len())];
    let out_chunk = ty.bytes_for(CHUNK);
    let stats = out
        .par_chunks_mut(out_chunk)
        .zip(x.par_chunks(CHUNK))
        .map(|(o, xs)| {
            match ty {
                GgmlType::F32 => o.copy_from_slice(bytemuck::cast_slice(&xs.iter().map(|v| v.to_le_bytes()).collect::<Vec<_>>())),
                GgmlType::F16 => {
                    for (o, v) in o.chunks_exact_mut(2).zip(xs) {
                        o.copy_from_slice(&half::f16::from_f32(*v).to_le_bytes());
                    }
                }
                GgmlType::BF16 => {
                    for (o, v) in o.chunks_exact_mut(2).zip(xs) {
                        o.copy_from_slice(&half::bf16::from_f32(*v).to_le_bytes());
                    }
                }
                _ => blocks::quantize(ty, xs, o),
            }
            let mut back = vec![0f32; xs.len()];
            blocks::dequantize(ty, o, &mut back);
            let mut s = ErrorStats::default();
            s.add(xs, &back);
            s
        })
        .reduce(ErrorStats::default, ErrorStats::merge);
    (out, stats)
}

enum Sink {
    Gguf(GgufWriter<AtomicFile>),
    Arrow(Box<ArrowSink>),
}

fn default_arch(ck: &Checkpoint) -> String {
    let dir = if ck.root.is_dir() { ck.root.clone() } else { ck.root.parent().map(Path::to_path_buf).unwrap_or_default() };
    std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("model_type").and_then(|m| m.as_str()).map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

fn default_name(ck: &Checkpoint) -> String {
    let root = &ck.root;
    let base = if root.is_dir() { root.file_name() } else { root.file_stem() };
    base.map(|s| s.to_string_lossy().trim_end_matches(".safetensors.index").to_string()).unwrap_or_else(|| "model".into())
}

/// Converts the checkpoint at `src` into `dst`. Returns one report per tensor in file order.
pub fn convert(src: &Path, dst: &Path, opts: &Options, progress: &mut dyn Progress) -> Result<Vec<TensorReport>> {
    let format = opts.format.unwrap_or_else(|| OutputFormat::from_path(dst));
    let qtype = opts.qtype.unwrap_or(match (format, opts.config.bit_width) {
        (OutputFormat::Gguf, BitWidth::B8) => QuantType::Q8_0,
        (OutputFormat::Gguf, BitWidth::B4) => QuantType::Q4_0,
        (OutputFormat::Gguf, BitWidth::B2) => {
            return Err(QuantError::value("GGUF output has 4-bit (q4_0, q4_1) and 8-bit (q8_0) types; 2 bits is for Arrow output"))
        }
        _ => QuantType::Affine,
    });
    let ggml = qtype.ggml();
    match (format, ggml) {
        (OutputFormat::Gguf, None) => {
            return Err(QuantError::value("GGUF stores ggml block types: pass type 'q4_0', 'q4_1' or 'q8_0' (affine is for Arrow output)"))
        }
        (OutputFormat::Arrow | OutputFormat::Parquet, Some(t)) => {
            return Err(QuantError::value(format!(
                "type '{}' is a GGUF block type; write a .gguf file, or use type 'affine' for Arrow or Parquet output",
                t.name().to_ascii_lowercase()
            )))
        }
        _ => {}
    }
    if opts.min_cosine.is_some() && ggml.is_some() {
        return Err(QuantError::value("min_cosine picks an affine bit width per tensor; it needs type 'affine'"));
    }
    let backend = if ggml.is_none() { Some(backend(opts.device)?) } else { None };

    let ck = Checkpoint::open(src)?;
    let rules = Rules::new(&opts.keep, &opts.quantize, if ggml.is_some() { blocks::QK } else { 1 })?;
    let decisions: Vec<_> = ck.tensors.iter().map(|t| rules.decide(&t.name, &t.shape, t.dtype.is_float())).collect();
    for (t, d) in ck.tensors.iter().zip(&decisions) {
        let what = match d.action {
            Action::Quantize => match ggml {
                Some(g) => g.name().to_string(),
                None if opts.min_cosine.is_some() => "affine (bits by min_cosine)".into(),
                None => format!("affine {}-bit", opts.config.bit_width.bits()),
            },
            Action::Keep(k) => k.name().to_string(),
            Action::Skip => "skip".into(),
        };
        progress.message(&format!("{:<60} {:>5} {:?} -> {what} ({})", t.name, t.dtype.name(), t.shape, d.reason));
    }

    let files = source_files(&ck);
    let out = AtomicFile::create(dst)?;
    let mut sink = match format {
        OutputFormat::Gguf => {
            let plan: Vec<TensorPlan> = ck
                .tensors
                .iter()
                .zip(&decisions)
                .filter_map(|(t, d)| {
                    let ty = match d.action {
                        Action::Quantize => ggml.unwrap(),
                        Action::Keep(k) => k,
                        Action::Skip => return None,
                    };
                    Some(TensorPlan { name: t.name.clone(), shape: t.shape.clone(), ty })
                })
                .collect();
            let meta = vec![
                ("general.architecture".to_string(), MetaValue::Str(opts.arch.clone().unwrap_or_else(|| default_arch(&ck)))),
                ("general.name".to_string(), MetaValue::Str(opts.name.clone().unwrap_or_else(|| default_name(&ck)))),
                ("general.quantization_version".to_string(), MetaValue::U32(gguf::QUANTIZATION_VERSION)),
                ("general.file_type".to_string(), MetaValue::U32(gguf::file_type(ggml.unwrap()))),
                ("general.alignment".to_string(), MetaValue::U32(gguf::ALIGNMENT as u32)),
                ("arrow_quant.version".to_string(), MetaValue::Str(env!("CARGO_PKG_VERSION").to_string())),
                ("arrow_quant.source_files".to_string(), MetaValue::StrArray(files.clone())),
            ];
            Sink::Gguf(GgufWriter::new(out, &meta, plan)?)
        }
        _ => {
            let meta = ModelMeta {
                source_files: files.clone(),
                tensors: ck
                    .tensors
                    .iter()
                    .zip(&decisions)
                    .filter(|(_, d)| d.action != Action::Skip)
                    .map(|(t, d)| {
                        let f = match d.action {
                            Action::Keep(k) => k.name().to_string(),
                            _ => "affine".to_string(),
                        };
                        (t.name.clone(), t.dtype.name(), f)
                    })
                    .collect(),
            };
            let large = ck.tensors.iter().any(|t| t.len > i32::MAX as u64);
            Sink::Arrow(Box::new(ArrowSink::new(out, format == OutputFormat::Parquet, opts.config.group_size, large, &meta)?))
        }
    };

    let total = ck.total_bytes();
    let mut done = 0u64;
    let mut reports = Vec::with_capacity(ck.tensors.len());
    progress.advance(0, total)?;
    for (i, (t, d)) in ck.tensors.iter().zip(&decisions).enumerate() {
        let mut report = TensorReport {
            name: t.name.clone(),
            source_dtype: t.dtype.name(),
            shape: t.shape.clone(),
            format: "skipped".into(),
            bit_width: 0,
            reason: d.reason.clone(),
            source_bytes: t.len,
            output_bytes: 0,
            stats: ErrorStats::default(),
        };
        if d.action != Action::Skip {
            let bytes = ck.read(i)?;
            let w = bytes.to_f32();
            check_finite(&t.name, &w)?;
            match (d.action, &mut sink) {
                (Action::Keep(k), sink) => {
                    let (data, stats) = encode_ggml(k, &w);
                    report.format = k.name().into();
                    report.bit_width = if k == GgmlType::F32 { 32 } else { 16 };
                    report.output_bytes = data.len() as u64;
                    report.stats = stats;
                    if k == GgmlType::F16 && t.dtype != TensorDtype::F16 && w.iter().any(|v| v.abs() > 65504.0) {
                        progress.message(&format!("warning: {} has values beyond the float16 range; they become inf in F16", t.name));
                    }
                    match sink {
                        Sink::Gguf(g) => g.write_tensor(&t.name, &data)?,
                        Sink::Arrow(a) => a.write_kept(&report, k, &data)?,
                    }
                }
                (Action::Quantize, Sink::Gguf(g)) => {
                    let ty = ggml.unwrap();
                    let (data, stats) = encode_ggml(ty, &w);
                    report.format = ty.name().into();
                    report.bit_width = if ty == GgmlType::Q8_0 { 8 } else { 4 };
                    report.output_bytes = data.len() as u64;
                    report.stats = stats;
                    g.write_tensor(&t.name, &data)?;
                }
                (Action::Quantize, Sink::Arrow(a)) => {
                    let backend = backend.unwrap();
                    let widths: Vec<BitWidth> = match opts.min_cosine {
                        Some(_) => vec![BitWidth::B2, BitWidth::B4, BitWidth::B8],
                        None => vec![opts.config.bit_width],
                    };
                    let mut chosen = None;
                    for bw in widths {
                        let layout = GroupLayout::from_shape(&t.shape, QuantConfig { bit_width: bw, ..opts.config });
                        let q = QuantizedTensor::quantize(backend, &t.name, &w, layout)?;
                        let stats = affine_stats(backend, &t.name, &q, &w)?;
                        let ok = opts.min_cosine.is_none_or(|m| stats.cosine() >= m);
                        chosen = Some((q, stats));
                        if ok {
                            break;
                        }
                    }
                    let (q, stats) = chosen.expect("at least one width");
                    if let Some(m) = opts.min_cosine {
                        if stats.cosine() < m {
                            report.reason = format!("{}; even 8 bits give cosine {:.6} < {m}", report.reason, stats.cosine());
                        }
                    }
                    report.format = "affine".into();
                    report.bit_width = q.layout.bit_width.bits() as u8;
                    report.output_bytes = (q.packed.len() + 8 * q.scales.len()) as u64;
                    report.stats = stats;
                    a.write_affine(&report, &q)?;
                }
                (Action::Skip, _) => unreachable!(),
            }
        }
        done += t.len;
        progress.advance(done, total)?;
        reports.push(report);
    }

    match sink {
        Sink::Gguf(g) => g.finish()?.commit()?,
        Sink::Arrow(a) => a.finish()?.commit()?,
    }
    Ok(reports)
}

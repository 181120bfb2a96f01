//! The conversion pipeline: model (safetensors checkpoint or GGUF file) → per-tensor
//! decisions → per tensor (read, quantize, measure, write) → output renamed into place.
//!
//! The tensors flow through [`super::pipeline`]: the next ones are mapped and brought into
//! memory while the current ones are encoded (quantized and measured in one pass, converted
//! from their stored dtype on the way), and finished ones are written in model order on the
//! calling thread. GGUF outputs take their per-tensor types from [`super::gguf_out`].

use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::arrow_out::{ArrowSink, ModelMeta};
use super::atomic::{refuse_same_file, AtomicFile, Staged};
use super::arrow_out::stage_report;
use super::gguf_out::{self, Choice, Step};
use super::rules::{Action, Rules};
use super::pipeline::{self, Limits, Timings};
use super::source::{Loaded, Source, SourceTensor, Stored};
use crate::backend::QuantizedTensor;
use crate::device::{backend, Device, GgmlDevice};
use crate::error::{QuantError, Result};
use crate::gguf::imatrix::Imatrix;
use crate::gguf::mix::{FileType, MixOptions};
use crate::gguf::writer::{GgufWriter, TensorPlan};
use crate::gguf::{self, GgmlType, MetaValue};
use crate::quant::metrics::ErrorStats;
use crate::quant::{BitWidth, GroupLayout, Method, QuantConfig};

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

/// What the quantized tensors become: the affine format (Arrow/Parquet output) or a
/// llama.cpp file type (GGUF output): a mix such as `q4_k_m`, or one block type everywhere
/// such as `q8_0` (which still keeps some tensors as llama.cpp does, unless `pure`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantType {
    Affine,
    Gguf(FileType),
}

impl FromStr for QuantType {
    type Err = QuantError;
    fn from_str(s: &str) -> Result<Self> {
        if s.eq_ignore_ascii_case("affine") {
            return Ok(Self::Affine);
        }
        s.parse::<FileType>().map(Self::Gguf).map_err(|_| {
            QuantError::value(format!(
                "Invalid type: '{s}'. Must be 'affine' (Arrow/Parquet) or a GGUF file type: q4_0, q4_1, q5_0, q5_1, q8_0, \
                 q2_k, q3_k_s, q3_k_m, q3_k_l, q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k (q3_k, q4_k, q5_k = the _m mixes), f16, bf16, f32"
            ))
        })
    }
}

/// What `min_cosine` does per tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CosinePolicy {
    /// The lowest of 2, 4, 8 bits that reaches it (the CLI's `--min-cosine`).
    Lowest,
    /// The configured bit width, raised (to 8 at most) until it is reached: the earlier
    /// package's fallback from a failed quality check.
    Raise,
    /// The configured bit width; a tensor that misses the threshold fails the conversion
    /// (the earlier package's `fail_fast`).
    Fail,
}

impl CosinePolicy {
    /// The bit widths to try, in order, when `configured` is the option's width.
    fn widths(self, configured: BitWidth) -> Vec<BitWidth> {
        let all = [BitWidth::B2, BitWidth::B4, BitWidth::B8];
        match self {
            CosinePolicy::Lowest => all.to_vec(),
            CosinePolicy::Raise => all.into_iter().filter(|w| w.bits() >= configured.bits()).collect(),
            CosinePolicy::Fail => vec![configured],
        }
    }
}

impl std::str::FromStr for CosinePolicy {
    type Err = QuantError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "lowest" => Ok(Self::Lowest),
            "raise" => Ok(Self::Raise),
            "fail" => Ok(Self::Fail),
            _ => Err(QuantError::value(format!("cosine_policy must be 'lowest', 'raise' or 'fail', got {s:?}"))),
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
    /// Affine only: a per-tensor cosine threshold, applied as `cosine_policy` says.
    pub min_cosine: Option<f64>,
    pub cosine_policy: CosinePolicy,
    /// Worker threads for this conversion; 0: the process's pool (`RAYON_NUM_THREADS`).
    pub threads: usize,
    /// Extra key/values for the Arrow/Parquet schema metadata (e.g. the settings of a config).
    pub metadata: Vec<(String, String)>,
    /// `general.architecture` for GGUF; default: `model_type` of a `config.json` beside the
    /// checkpoint, else "unknown".
    pub arch: Option<String>,
    /// `general.name`; default: the checkpoint's file or folder name.
    pub name: Option<String>,
    /// GGUF: the file type's default type for every quantizable tensor (llama-quantize `--pure`).
    pub pure: bool,
    /// GGUF source: requantize tensors that are already quantized (`--allow-requantize`).
    pub allow_requantize: bool,
    /// GGUF: an importance matrix (llama-imatrix's GGUF or legacy .dat file).
    pub imatrix: Option<PathBuf>,
    /// GGUF: copy `output.weight` as it is (`--leave-output-tensor`).
    pub leave_output_tensor: bool,
    /// GGUF: the type of `output.weight` (`--output-tensor-type`).
    pub output_tensor_type: Option<GgmlType>,
    /// GGUF: the type of `token_embd.weight` (`--token-embedding-type`).
    pub token_embedding_type: Option<GgmlType>,
    /// The per-tensor report as an Arrow IPC file too; renamed into place with the output.
    pub report: Option<PathBuf>,
    /// How far the reading runs ahead of the encoding ([`Limits::sequential`]: one tensor at
    /// a time, the least memory). The output is the same either way.
    pub pipeline: Limits,
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
            cosine_policy: CosinePolicy::Lowest,
            threads: 0,
            metadata: Vec::new(),
            arch: None,
            name: None,
            pure: false,
            allow_requantize: false,
            imatrix: None,
            leave_output_tensor: false,
            output_tensor_type: None,
            token_embedding_type: None,
            report: None,
            pipeline: Limits::default(),
        }
    }
}

/// What happened to one tensor.
#[derive(Clone, Debug)]
pub struct TensorReport {
    pub name: String,
    pub source_dtype: String,
    pub shape: Vec<usize>,
    /// "affine", a GGUF type ("Q4_K", "Q8_0", "F16", "F32", …) or "skipped".
    pub format: String,
    /// How an affine tensor's scales were chosen ("minmax" or "lsq"); empty for other formats.
    pub method: String,
    /// Bits per code for quantized tensors, 16/32 for kept ones, 0 for skipped ones.
    pub bit_width: u8,
    pub reason: String,
    pub source_bytes: u64,
    pub output_bytes: u64,
    /// Original vs. what the output decodes to.
    pub stats: ErrorStats,
    /// For a tensor quantized with `method="lsq"`: what min/max gives at the same width and
    /// group size, so the report shows what the search bought. `None` otherwise.
    pub minmax_stats: Option<ErrorStats>,
}

/// Progress of a conversion. `advance` may fail (a Python callback raising, Ctrl-C); the
/// conversion then stops and removes its temporary output.
pub trait Progress {
    fn advance(&mut self, _done_bytes: u64, _total_bytes: u64) -> Result<()> {
        Ok(())
    }
    /// One line per tensor decision (verbose mode).
    fn message(&mut self, _line: &str) {}
    /// At the end: how long each stage was busy, and the time to finish the output (footer
    /// and flush to disk).
    fn stages(&mut self, _timings: &Timings, _finish: std::time::Duration) {}
}

pub struct NoProgress;
impl Progress for NoProgress {}

/// What the read-ahead hands the encoder for one tensor.
enum Input<'a> {
    Skipped,
    /// Stored bytes to copy unchanged (GGUF source).
    Raw(&'a [u8]),
    Loaded(Loaded<'a>),
}

/// What the encoder hands the GGUF writer for one tensor.
enum GgufTensor<'a> {
    Skipped,
    /// Written as stored in the (GGUF) source.
    Copied(&'a [u8]),
    Encoded(GgmlType, gguf_out::Encoded),
}

/// What the encoder hands the Arrow writer for one tensor.
enum ArrowTensor {
    Skipped,
    /// Kept in high precision (F16/F32).
    Kept(GgmlType, gguf_out::Encoded),
    /// The tensor, its error, and (lsq) the error min/max gives in the same layout.
    Affine(QuantizedTensor, ErrorStats, Option<ErrorStats>),
}

fn default_arch(root: &Path) -> String {
    let dir = if root.is_dir() { root.to_path_buf() } else { root.parent().map(Path::to_path_buf).unwrap_or_default() };
    std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("model_type").and_then(|m| m.as_str()).map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

fn default_name(root: &Path) -> String {
    let base = if root.is_dir() { root.file_name() } else { root.file_stem() };
    base.map(|s| s.to_string_lossy().trim_end_matches(".safetensors.index").to_string()).unwrap_or_else(|| "model".into())
}

/// The type of the quantized tensors when none is given: affine for Arrow; for GGUF q8_0 with
/// an 8-bit width, q2_k with 2 bits, else q4_0.
fn resolve_type(opts: &Options, format: OutputFormat) -> Result<QuantType> {
    let qtype = opts.qtype.unwrap_or(match (format, opts.config.bit_width) {
        (OutputFormat::Gguf, BitWidth::B8) => QuantType::Gguf(FileType::Q8_0),
        (OutputFormat::Gguf, BitWidth::B4) => QuantType::Gguf(FileType::Q4_0),
        (OutputFormat::Gguf, BitWidth::B2) => QuantType::Gguf(FileType::Q2_K),
        _ => QuantType::Affine,
    });
    match (format, qtype) {
        (OutputFormat::Gguf, QuantType::Affine) => {
            Err(QuantError::value("GGUF stores ggml block types: pass a GGUF type such as 'q4_k_m', 'q4_0' or 'q8_0' (affine is for Arrow output)"))
        }
        (OutputFormat::Arrow | OutputFormat::Parquet, QuantType::Gguf(t)) => Err(QuantError::value(format!(
            "type '{}' is a GGUF block type; write a .gguf file, or use type 'affine' for Arrow or Parquet output",
            t.name().to_ascii_lowercase()
        ))),
        (OutputFormat::Gguf, _) if opts.min_cosine.is_some() => {
            Err(QuantError::value("min_cosine picks an affine bit width per tensor; it needs type 'affine'"))
        }
        (OutputFormat::Gguf, _) if opts.config.method != Method::MinMax => Err(QuantError::value(format!(
            "method '{}' chooses affine scales; GGUF block types have their own search (write Arrow or Parquet for it)",
            opts.config.method.name()
        ))),
        (OutputFormat::Arrow | OutputFormat::Parquet, _)
            if opts.pure || opts.imatrix.is_some() || opts.leave_output_tensor || opts.output_tensor_type.is_some() || opts.token_embedding_type.is_some() =>
        {
            Err(QuantError::value("pure, imatrix, leave_output_tensor and the output/token-embedding types apply to GGUF output"))
        }
        _ => Ok(qtype),
    }
}

/// Converts the model at `src` (a safetensors checkpoint or a GGUF file) into `dst`. Returns
/// one report per tensor in the model's order.
pub fn convert(src: &Path, dst: &Path, opts: &Options, progress: &mut dyn Progress) -> Result<Vec<TensorReport>> {
    crate::threads::with_threads(opts.threads, || convert_with(src, dst, opts, progress))
}

fn convert_with(src: &Path, dst: &Path, opts: &Options, progress: &mut dyn Progress) -> Result<Vec<TensorReport>> {
    let format = opts.format.unwrap_or_else(|| OutputFormat::from_path(dst));
    let qtype = resolve_type(opts, format)?;
    if let Some(m) = opts.min_cosine {
        if !(m > 0.0 && m <= 1.0) {
            return Err(QuantError::value(format!("min_cosine must be in (0, 1], got {m}")));
        }
    }
    let source = Source::open(src)?;
    let inputs = source.paths(src);
    let outputs: Vec<&Path> = std::iter::once(dst).chain(opts.report.as_deref()).collect();
    for out in &outputs {
        refuse_same_file(out, inputs.iter().map(PathBuf::as_path))?;
    }
    if let Some(report) = &opts.report {
        refuse_same_file(report, [dst])?;
    }
    let (staged, reports) = match qtype {
        QuantType::Gguf(ftype) => convert_to_gguf(&source, src, dst, ftype, opts, progress)?,
        QuantType::Affine => convert_to_arrow(&source, src, dst, format == OutputFormat::Parquet, opts, progress)?,
    };
    // Every output is complete before any is renamed into place.
    let report = opts.report.as_deref().map(|p| stage_report(p, &reports)).transpose()?;
    staged.commit()?;
    if let Some(report) = report {
        report.commit()?;
    }
    Ok(reports)
}

impl TensorReport {
    /// What was written for the tensor.
    fn written(&mut self, format: &str, bit_width: u8, output_bytes: usize, stats: ErrorStats) {
        self.format = format.into();
        self.bit_width = bit_width;
        self.output_bytes = output_bytes as u64;
        self.stats = stats;
    }
}

/// Finishes the output (footer, flush to disk) and reports the stages' times.
fn finish_output(timings: &Timings, progress: &mut dyn Progress, finish: impl FnOnce() -> Result<Staged>) -> Result<Staged> {
    let started = std::time::Instant::now();
    let staged = finish()?;
    progress.stages(timings, started.elapsed());
    Ok(staged)
}

fn new_report(t: &SourceTensor, reason: &str) -> TensorReport {
    TensorReport {
        name: t.name.clone(),
        source_dtype: t.stored.name(),
        shape: t.shape.clone(),
        format: "skipped".into(),
        method: String::new(),
        bit_width: 0,
        reason: reason.to_string(),
        source_bytes: t.bytes,
        output_bytes: 0,
        stats: ErrorStats::default(),
        minmax_stats: None,
    }
}

fn warn_f16_overflow(t: &SourceTensor, ty: GgmlType, amax: f32, progress: &mut dyn Progress) {
    if ty == GgmlType::F16 && t.stored != Stored::Safetensors(super::TensorDtype::F16) && amax > 65504.0 {
        progress.message(&format!("warning: {} has values beyond the float16 range; they become inf in F16", t.name));
    }
}

fn convert_to_gguf(source: &Source, src: &Path, dst: &Path, ftype: FileType, opts: &Options, progress: &mut dyn Progress) -> Result<(Staged, Vec<TensorReport>)> {
    let imatrix = opts.imatrix.as_deref().map(Imatrix::open).transpose()?;
    let tensors = source.tensors();
    let choices: Vec<Choice> = match source.gguf_metadata() {
        Some(metadata) => {
            if !opts.quantize.is_empty() {
                return Err(QuantError::value(
                    "--quantize globs apply to checkpoints; a GGUF model's types follow llama.cpp's rules (--pure quantizes every quantizable tensor)",
                ));
            }
            let mix = MixOptions {
                ftype,
                pure: opts.pure,
                leave_output_tensor: opts.leave_output_tensor,
                output_tensor_type: opts.output_tensor_type,
                token_embedding_type: opts.token_embedding_type,
                has_imatrix: imatrix.is_some(),
            };
            let mut messages = Vec::new();
            let mut choices = gguf_out::plan_from_gguf(metadata, tensors, &mix, &mut |m| messages.push(m.to_string()))?;
            for m in messages {
                progress.message(&m);
            }
            // --keep: copied unchanged.
            let keep = Rules::new(&opts.keep, &[], 1)?;
            for (t, c) in tensors.iter().zip(choices.iter_mut()) {
                if keep.keeps(&t.name) {
                    *c = Choice { step: Step::Copy, reason: "matches --keep".into() };
                }
            }
            choices
        }
        None => {
            if opts.pure || opts.leave_output_tensor || opts.output_tensor_type.is_some() || opts.token_embedding_type.is_some() {
                return Err(QuantError::value(
                    "pure, leave_output_tensor and the output/token-embedding types follow llama.cpp's tensor names: they apply to GGUF inputs",
                ));
            }
            let rules = Rules::new(&opts.keep, &opts.quantize, 32)?;
            let decisions: Vec<_> = tensors.iter().map(|t| rules.decide(&t.name, &t.shape, t.stored.is_float())).collect();
            gguf_out::plan_from_checkpoint(tensors, &decisions, ftype)?
        }
    };
    for (t, c) in tensors.iter().zip(&choices) {
        let what = match &c.step {
            Step::Copy => format!("{} (copied)", t.stored.name()),
            Step::Encode(ty) => ty.name().to_string(),
            Step::Skip => "skip".into(),
        };
        progress.message(&format!("{:<60} {:>5} {:?} -> {what} ({})", t.name, t.stored.name(), t.shape, c.reason));
    }
    // A quantized input needs --allow-requantize (llama-quantize refuses it too); say so before
    // anything is written.
    for (t, c) in tensors.iter().zip(&choices) {
        if let (Step::Encode(_), Stored::Ggml(ty)) = (&c.step, t.stored) {
            if ty.is_quantized() && !opts.allow_requantize {
                return Err(QuantError::layer_value(
                    &t.name,
                    format!("the tensor is already quantized ({ty}); requantizing loses quality, pass --allow-requantize (allow_requantize=True) to do it anyway"),
                ));
            }
            if !ty.can_decode() {
                return Err(QuantError::layer_value(&t.name, format!("{ty} tensors cannot be converted; only float and the block types this tool writes can")));
            }
        }
    }
    let rows = imatrix.as_ref().map(|m| {
        tensors
            .iter()
            .zip(&choices)
            .map(|(t, c)| match c.step {
                Step::Encode(ty) if ty.is_quantized() => gguf_out::imatrix_row(m, t).map(|r| r.map(|r| r.to_vec())),
                _ => Ok(None),
            })
            .collect::<Result<Vec<_>>>()
    });
    let rows = rows.transpose()?;
    if let (Some(m), Some(rows)) = (&imatrix, &rows) {
        let wanted: Vec<&SourceTensor> =
            tensors.iter().zip(&choices).filter(|(_, c)| matches!(c.step, Step::Encode(ty) if ty.is_quantized())).map(|(t, _)| t).collect();
        if !wanted.is_empty() && rows.iter().all(Option::is_none) {
            return Err(QuantError::value(format!(
                "the importance matrix ({} entries, e.g. '{}') has none for the tensors of this model (e.g. '{}'): is it for another model?",
                m.entries.len(),
                m.entries.keys().next().map(String::as_str).unwrap_or(""),
                wanted[0].name
            )));
        }
        for ((t, c), r) in tensors.iter().zip(&choices).zip(rows) {
            if matches!(c.step, Step::Encode(ty) if ty.is_quantized()) && r.is_none() {
                progress.message(&format!("warning: the importance matrix has no entry for {}; quantized without one", t.name));
            }
        }
    }

    let metadata = match source.gguf_metadata() {
        Some(input) => gguf_out::metadata_from_gguf(
            input,
            ftype,
            imatrix.as_ref().zip(opts.imatrix.as_deref()).map(|(m, p)| (p.to_str().unwrap_or(""), m)),
        ),
        None => vec![
            ("general.architecture".to_string(), MetaValue::Str(opts.arch.clone().unwrap_or_else(|| default_arch(src)))),
            ("general.name".to_string(), MetaValue::Str(opts.name.clone().unwrap_or_else(|| default_name(src)))),
            ("general.quantization_version".to_string(), MetaValue::U32(gguf::QUANTIZATION_VERSION)),
            ("general.file_type".to_string(), MetaValue::U32(ftype.id())),
            ("general.alignment".to_string(), MetaValue::U32(gguf::ALIGNMENT as u32)),
            ("arrow_quant.version".to_string(), MetaValue::Str(env!("CARGO_PKG_VERSION").to_string())),
            ("arrow_quant.source_files".to_string(), MetaValue::StrArray(source.files(src))),
        ],
    };
    let plan: Vec<TensorPlan> = tensors
        .iter()
        .zip(&choices)
        .filter_map(|(t, c)| c.output_type(t).map(|ty| TensorPlan { name: t.name.clone(), shape: t.shape.clone(), ty }))
        .collect();
    let ggml_dev = GgmlDevice::new(opts.device)?;
    let mut writer = GgufWriter::new(AtomicFile::create(dst)?, &metadata, plan)?;

    let total = source.total_bytes();
    let mut done = 0u64;
    let mut reports = Vec::with_capacity(tensors.len());
    progress.advance(0, total)?;
    let sizes: Vec<u64> = tensors.iter().zip(&choices).map(|(t, c)| if c.step == Step::Skip { 0 } else { t.bytes }).collect();
    let timings = pipeline::run(
        &sizes,
        opts.pipeline,
        |i| match choices[i].step {
            Step::Skip => Ok(Input::Skipped),
            Step::Copy => source.load_raw(i, true).map(Input::Raw),
            Step::Encode(_) => source.load(i, opts.allow_requantize, true).map(Input::Loaded),
        },
        |i, input| {
            let t = &tensors[i];
            Ok(match (&choices[i].step, input) {
                (Step::Encode(ty), Input::Loaded(l)) => {
                    let row = rows.as_ref().and_then(|r| r[i].as_deref());
                    GgufTensor::Encoded(*ty, gguf_out::encode(&t.name, *ty, l.values(), &t.shape, row, ggml_dev.or_cpu_for(*ty))?)
                }
                (_, Input::Raw(bytes)) => GgufTensor::Copied(bytes),
                _ => GgufTensor::Skipped,
            })
        },
        |i, out| {
            let (t, c) = (&tensors[i], &choices[i]);
            let mut report = new_report(t, &c.reason);
            match out {
                GgufTensor::Skipped => {}
                GgufTensor::Copied(data) => {
                    let ty = c.output_type(t).expect("a copied tensor has a type");
                    report.written(ty.name(), ty.code_bits(), data.len(), ErrorStats::default());
                    writer.write_tensor(&t.name, data)?;
                }
                GgufTensor::Encoded(ty, e) => {
                    warn_f16_overflow(t, ty, e.amax, progress);
                    report.written(ty.name(), ty.code_bits(), e.data.len(), e.stats);
                    writer.write_tensor(&t.name, &e.data)?;
                }
            }
            done += t.bytes;
            reports.push(report);
            progress.advance(done, total)
        },
    )?;
    let staged = finish_output(&timings, progress, || writer.finish()?.finish())?;
    Ok((staged, reports))
}

fn convert_to_arrow(source: &Source, src: &Path, dst: &Path, parquet: bool, opts: &Options, progress: &mut dyn Progress) -> Result<(Staged, Vec<TensorReport>)> {
    let backend = backend(opts.device)?;
    let tensors = source.tensors();
    let rules = Rules::new(&opts.keep, &opts.quantize, 1)?;
    // A quantized GGUF tensor counts as float here: reading it says what --allow-requantize does.
    let readable = |t: &SourceTensor| match t.stored {
        Stored::Ggml(ty) => ty.can_decode(),
        Stored::Safetensors(d) => d.is_float(),
    };
    let decisions: Vec<_> = tensors.iter().map(|t| rules.decide(&t.name, &t.shape, readable(t))).collect();
    for (t, d) in tensors.iter().zip(&decisions) {
        let what = match d.action {
            Action::Quantize if opts.min_cosine.is_some() && opts.cosine_policy != CosinePolicy::Fail => "affine (bits by min_cosine)".into(),
            Action::Quantize => format!("affine {}-bit", opts.config.bit_width.bits()),
            Action::Keep(k) => k.name().to_string(),
            Action::Skip => "skip".into(),
        };
        progress.message(&format!("{:<60} {:>5} {:?} -> {what} ({})", t.name, t.stored.name(), t.shape, d.reason));
    }
    let meta = ModelMeta {
        source_files: source.files(src),
        tensors: tensors
            .iter()
            .zip(&decisions)
            .filter(|(_, d)| d.action != Action::Skip)
            .map(|(t, d)| {
                let f = match d.action {
                    Action::Keep(k) => k.name().to_string(),
                    _ => "affine".to_string(),
                };
                (t.name.clone(), t.stored.name(), f)
            })
            .collect(),
        extra: opts.metadata.clone(),
    };
    let large = tensors.iter().any(|t| t.bytes > i32::MAX as u64);
    let mut sink = ArrowSink::new(AtomicFile::create(dst)?, parquet, opts.config.group_size, large, &meta)?;

    let total = source.total_bytes();
    let mut done = 0u64;
    let mut reports = Vec::with_capacity(tensors.len());
    progress.advance(0, total)?;
    let sizes: Vec<u64> = tensors.iter().zip(&decisions).map(|(t, d)| if d.action == Action::Skip { 0 } else { t.bytes }).collect();
    let timings = pipeline::run(
        &sizes,
        opts.pipeline,
        |i| match decisions[i].action {
            Action::Skip => Ok(Input::Skipped),
            _ => source.load(i, opts.allow_requantize, true).map(Input::Loaded),
        },
        |i, input| {
            let t = &tensors[i];
            let Input::Loaded(loaded) = input else { return Ok(ArrowTensor::Skipped) };
            let values = loaded.values();
            match decisions[i].action {
                Action::Keep(k) => Ok(ArrowTensor::Kept(k, gguf_out::encode(&t.name, k, values, &t.shape, None, GgmlDevice::cpu())?)),
                Action::Quantize => {
                    let mut chosen = None;
                    for config in candidates(opts) {
                        let layout = GroupLayout::from_shape(&t.shape, config);
                        let (q, stats) = QuantizedTensor::quantize_measured(backend, &t.name, values, layout)?;
                        let ok = opts.min_cosine.is_none_or(|m| stats.cosine() >= m);
                        chosen = Some((q, stats));
                        if ok {
                            break;
                        }
                    }
                    let (q, stats) = chosen.expect("at least one width");
                    match opts.min_cosine {
                        Some(m) if opts.cosine_policy == CosinePolicy::Fail && stats.cosine() < m => {
                            Err(QuantError::BelowThreshold { layer: t.name.clone(), bits: q.layout.bit_width.bits() as u8, cosine: stats.cosine(), threshold: m })
                        }
                        _ => {
                            // What the search bought: min/max on the same layout, measured
                            // the same way (one more pass, about 1/8 of the search's cost).
                            let minmax = match q.layout.method {
                                Method::Lsq => {
                                    let layout = GroupLayout { method: Method::MinMax, ..q.layout };
                                    Some(QuantizedTensor::quantize_measured(backend, &t.name, values, layout)?.1)
                                }
                                Method::MinMax => None,
                            };
                            Ok(ArrowTensor::Affine(q, stats, minmax))
                        }
                    }
                }
                Action::Skip => unreachable!("skipped tensors are not loaded"),
            }
        },
        |i, out| {
            let t = &tensors[i];
            let mut report = new_report(t, &decisions[i].reason);
            match out {
                ArrowTensor::Skipped => {}
                ArrowTensor::Kept(k, e) => {
                    warn_f16_overflow(t, k, e.amax, progress);
                    report.written(k.name(), k.code_bits(), e.data.len(), e.stats);
                    sink.write_kept(&report, k, e.data)?;
                }
                ArrowTensor::Affine(q, stats, minmax) => {
                    if let Some(m) = opts.min_cosine {
                        if stats.cosine() < m {
                            report.reason = format!("{}; even 8 bits give cosine {:.6} < {m}", report.reason, stats.cosine());
                        }
                    }
                    report.written("affine", q.layout.bit_width.bits() as u8, q.packed.len() + 8 * q.scales.len(), stats);
                    report.method = q.layout.method.name().into();
                    report.minmax_stats = minmax;
                    sink.write_affine(&report, q)?;
                }
            }
            done += t.bytes;
            reports.push(report);
            progress.advance(done, total)
        },
    )?;
    let staged = finish_output(&timings, progress, || sink.finish()?.finish())?;
    Ok((staged, reports))
}

/// The affine configurations a tensor tries, in order, until one reaches `min_cosine`: the
/// option's alone without it; with it, each width of the policy, and at each width the
/// option's method, then `lsq` (a search at the same size before more bits).
fn candidates(opts: &Options) -> Vec<QuantConfig> {
    let Some(_) = opts.min_cosine else { return vec![opts.config] };
    let mut methods = vec![opts.config.method];
    if opts.config.method != Method::Lsq {
        methods.push(Method::Lsq);
    }
    let widths = opts.cosine_policy.widths(opts.config.bit_width);
    widths.into_iter().flat_map(|bw| methods.iter().map(move |&m| QuantConfig { bit_width: bw, method: m, ..opts.config })).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_cosine_tries_lsq_before_more_bits() {
        use BitWidth::*;
        let opts = Options { min_cosine: Some(0.99), cosine_policy: CosinePolicy::Raise, ..Options::default() };
        let got: Vec<(BitWidth, Method)> = candidates(&opts).iter().map(|c| (c.bit_width, c.method)).collect();
        assert_eq!(got, vec![(B4, Method::MinMax), (B4, Method::Lsq), (B8, Method::MinMax), (B8, Method::Lsq)]);
        let lsq = Options { config: opts.config.with_method(Method::Lsq), ..opts.clone() };
        assert_eq!(candidates(&lsq).iter().map(|c| (c.bit_width, c.method)).collect::<Vec<_>>(), vec![(B4, Method::Lsq), (B8, Method::Lsq)]);
        let plain = Options::default();
        assert_eq!(candidates(&plain), vec![plain.config]);
    }

    #[test]
    fn cosine_policy_widths() {
        use BitWidth::*;
        assert_eq!(CosinePolicy::Lowest.widths(B8), vec![B2, B4, B8]);
        assert_eq!(CosinePolicy::Raise.widths(B2), vec![B2, B4, B8]);
        assert_eq!(CosinePolicy::Raise.widths(B4), vec![B4, B8]);
        assert_eq!(CosinePolicy::Fail.widths(B4), vec![B4]);
        assert_eq!("raise".parse::<CosinePolicy>().unwrap(), CosinePolicy::Raise);
        assert!("up".parse::<CosinePolicy>().is_err());
    }
}

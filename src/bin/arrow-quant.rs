//! `arrow-quant`: quantize whole models (safetensors checkpoints or GGUF files) to Arrow IPC,
//! Parquet or GGUF, expand them back to safetensors, and inspect converted files.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use arrow_quant_v2::model::arrow_out::summary_table;
use arrow_quant_v2::model::atomic::{refuse_same_file, AtomicFile};
use arrow_quant_v2::model::quantized::QuantFile;
use std::time::Duration;

use arrow_quant_v2::model::pipeline::{Limits, Timings};
use arrow_quant_v2::model::{convert, Options, OutputFormat, Progress, QuantType};
use arrow_quant_v2::quant::ggml::GgmlType;
use arrow_quant_v2::{BitWidth, Device, Method, QuantConfig, QuantError, Result};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(name = "arrow-quant", version, about = "Quantize model checkpoints and GGUF files to Arrow IPC, Parquet or GGUF (llama.cpp's types and mixes)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
enum Command {
    /// Quantize a model: a .safetensors file, a sharded or diffusers folder, or a .gguf file.
    Quantize {
        model: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        /// arrow, parquet or gguf (default: from the output's extension)
        #[arg(long)]
        format: Option<String>,
        /// affine (Arrow/Parquet), or a GGUF file type as llama-quantize names them: q4_0, q4_1,
        /// q5_0, q5_1, q8_0, q2_k, q3_k_s, q3_k_m, q3_k_l, q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k
        /// (q3_k/q4_k/q5_k = the _m mixes), f16, bf16, f32 [default: affine for Arrow; for GGUF
        /// q4_0, or q8_0 with --bit-width 8, q2_k with 2]
        #[arg(long = "type")]
        qtype: Option<String>,
        #[arg(long, default_value_t = 4)]
        bit_width: i64,
        #[arg(long, default_value_t = 128)]
        group_size: i64,
        /// How affine scales are chosen: minmax, or lsq (least-squares refinement: lower error,
        /// ~6x the compute, same format)
        #[arg(long, default_value = "minmax")]
        method: String,
        /// cpu, gpu or auto: where to quantize (the same bytes on each). auto measures both
        /// once per process (per method, and per GGUF type with an importance matrix or
        /// without); every GGUF block type has a GPU kernel
        #[arg(long, default_value = "auto")]
        device: String,
        /// Keep tensors matching this glob in F16/F32 (GGUF input: copy them unchanged) (repeatable)
        #[arg(long)]
        keep: Vec<String>,
        /// Quantize tensors matching this glob even when the default rules keep them (repeatable)
        #[arg(long)]
        quantize: Vec<String>,
        /// Per tensor, the lowest of 2/4/8 bits whose cosine similarity reaches this (affine);
        /// at each width the --method, then lsq, is tried before more bits
        #[arg(long)]
        min_cosine: Option<f64>,
        /// GGUF: an importance matrix (llama-imatrix's .gguf or legacy .dat), used as llama-quantize uses it
        #[arg(long)]
        imatrix: Option<PathBuf>,
        /// GGUF input: the file type's one type for every quantizable tensor (llama-quantize --pure)
        #[arg(long)]
        pure: bool,
        /// GGUF input: requantize tensors that are already quantized
        #[arg(long)]
        allow_requantize: bool,
        /// GGUF input: copy output.weight unchanged
        #[arg(long)]
        leave_output_tensor: bool,
        /// GGUF input: the type of output.weight (e.g. q8_0)
        #[arg(long)]
        output_tensor_type: Option<String>,
        /// GGUF input: the type of token_embd.weight (e.g. q8_0)
        #[arg(long)]
        token_embedding_type: Option<String>,
        /// Write the per-tensor quality report as an Arrow IPC file
        #[arg(long)]
        report: Option<PathBuf>,
        /// GGUF general.architecture (checkpoints; a GGUF input keeps its own)
        #[arg(long)]
        arch: Option<String>,
        /// MiB of input read ahead of the encoder while it works (0: one tensor at a time, the
        /// least memory; the output is the same)
        #[arg(long, default_value_t = 256)]
        read_ahead_mib: u64,
        /// Print the decision for each tensor
        #[arg(short, long)]
        verbose: bool,
    },
    /// Expand a quantized file (Arrow IPC or GGUF) to .safetensors.
    Dequantize {
        qfile: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        #[arg(long, value_enum, default_value = "f32")]
        dtype: OutDtype,
    },
    /// List the tensors, formats and sizes of a quantized file.
    Inspect { file: PathBuf },
}

#[derive(Clone, Copy, ValueEnum)]
enum OutDtype {
    F32,
    F16,
    Bf16,
}

struct Bar {
    bar: ProgressBar,
    /// Busy time of each stage, for the summary.
    stages: Option<(Timings, Duration)>,
    verbose: bool,
}

impl Progress for Bar {
    fn advance(&mut self, done: u64, total: u64) -> Result<()> {
        self.bar.set_length(total);
        self.bar.set_position(done);
        Ok(())
    }
    fn message(&mut self, line: &str) {
        if self.verbose || line.starts_with("warning") || line.starts_with("note") {
            self.bar.suspend(|| eprintln!("{line}"));
        }
    }
    fn stages(&mut self, t: &Timings, finish: Duration) {
        self.stages = Some((*t, finish));
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Quantize {
            model,
            output,
            format,
            qtype,
            bit_width,
            group_size,
            method,
            device,
            keep,
            quantize,
            min_cosine,
            imatrix,
            pure,
            allow_requantize,
            leave_output_tensor,
            output_tensor_type,
            token_embedding_type,
            report,
            arch,
            read_ahead_mib,
            verbose,
        } => {
            let opts = Options {
                format: format.as_deref().map(str::parse::<OutputFormat>).transpose()?,
                qtype: qtype.map(|t| t.parse::<QuantType>()).transpose()?,
                config: QuantConfig::new(BitWidth::new(bit_width)?, group_size)?.with_method(Method::parse(&method)?),
                device: device.parse::<Device>()?,
                keep,
                quantize,
                min_cosine,
                arch,
                name: None,
                pure,
                allow_requantize,
                imatrix,
                leave_output_tensor,
                output_tensor_type: output_tensor_type.as_deref().map(str::parse::<GgmlType>).transpose()?,
                token_embedding_type: token_embedding_type.as_deref().map(str::parse::<GgmlType>).transpose()?,
                report,
                pipeline: match read_ahead_mib {
                    0 => Limits::sequential(),
                    mib => Limits { read_ahead: mib.saturating_mul(1 << 20), ..Limits::default() },
                },
                ..Options::default()
            };
            // indicatif draws to stderr and hides itself when stderr is not a terminal.
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}")
                    .expect("valid template"),
            );
            if verbose {
                // For "auto", also why: the first call decides (and may time both paths).
                eprintln!("backend: {}", arrow_quant_v2::device::describe(opts.device)?);
            }
            let mut progress = Bar { bar, verbose, stages: None };
            let started = std::time::Instant::now();
            let reports = convert(&model, &output, &opts, &mut progress)?;
            let seconds = started.elapsed().as_secs_f64();
            progress.bar.finish_and_clear();
            print!("{}", summary_table(&reports));
            let read: u64 = reports.iter().map(|r| r.source_bytes).sum();
            let peak = peak_rss().map(|b| format!(", peak memory {:.0} MiB", b as f64 / (1u64 << 20) as f64)).unwrap_or_default();
            println!("{:.2} GB in {seconds:.2} s ({:.2} GB/s){peak}", read as f64 / 1e9, read as f64 / 1e9 / seconds.max(1e-9));
            if let Some((t, finish)) = progress.stages {
                // The stage busiest for longest bounds the rate.
                println!(
                    "stages (busy seconds): read-ahead {:.2}, encode {:.2}, write {:.2}; footer + flush to disk {:.2}",
                    t.load.as_secs_f64(),
                    t.encode.as_secs_f64(),
                    t.write.as_secs_f64(),
                    finish.as_secs_f64()
                );
            }
            Ok(())
        }
        Command::Dequantize { qfile, output, dtype } => dequantize(&qfile, &output, dtype),
        Command::Inspect { file } => inspect(&file),
    }
}

/// The process's peak resident memory: `VmHWM` of `/proc/self/status` (Linux), the high-water
/// mark of this program's own address space. (`getrusage` would not do: Linux carries its
/// maximum over from whatever process forked and exec'd us.)
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn inspect(path: &Path) -> Result<()> {
    let q = QuantFile::open(path)?;
    // A reader that stops early (`| head`) is not an error.
    match write_inspection(path, &q, &mut std::io::stdout().lock()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(QuantError::Io { context: "cannot write to stdout".into(), source: e })
        }
        _ => Ok(()),
    }
}

fn write_inspection(path: &Path, q: &QuantFile, out: &mut impl std::io::Write) -> std::io::Result<()> {
    for (k, v) in q.metadata() {
        let v = if v.chars().count() > 200 { format!("{}… ({} chars)", v.chars().take(200).collect::<String>(), v.chars().count()) } else { v };
        writeln!(out, "{k} = {v}")?;
    }
    writeln!(out, "{:<60} {:>7} {:>4} {:>20} {:>12} {:>7}", "tensor", "format", "bits", "shape", "bytes", "ratio")?;
    let (mut stored, mut f32_bytes) = (0u64, 0u64);
    for e in q.entries() {
        let full = 4 * e.n_elements() as u64;
        stored += e.stored_bytes;
        f32_bytes += full;
        writeln!(
            out,
            "{:<60} {:>7} {:>4} {:>20} {:>12} {:>6.2}x",
            e.name,
            e.format,
            e.bit_width,
            format!("{:?}", e.shape),
            e.stored_bytes,
            full as f64 / e.stored_bytes.max(1) as f64
        )?;
    }
    let file_len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    writeln!(
        out,
        "{} tensors, {stored} bytes of tensor data ({file_len} bytes on disk); {:.2}x smaller than float32",
        q.entries().len(),
        f32_bytes as f64 / stored.max(1) as f64
    )?;
    Ok(())
}

/// One tensor decoded on demand while safetensors writes the file, so only one is in memory.
struct Lazy<'a> {
    q: &'a QuantFile,
    /// The first decode error: `View::data` cannot return one, so it is kept here and the
    /// output is abandoned after serialization.
    failed: &'a std::cell::RefCell<Option<QuantError>>,
    i: usize,
    dtype: OutDtype,
    shape: Vec<usize>,
}

impl safetensors::View for Lazy<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        match self.dtype {
            OutDtype::F32 => safetensors::Dtype::F32,
            OutDtype::F16 => safetensors::Dtype::F16,
            OutDtype::Bf16 => safetensors::Dtype::BF16,
        }
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let v = match self.q.decode(self.i) {
            Ok(v) => v,
            Err(e) => {
                self.failed.borrow_mut().get_or_insert(e);
                return Cow::Owned(vec![0; self.data_len()]);
            }
        };
        Cow::Owned(match self.dtype {
            OutDtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            OutDtype::F16 => v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect(),
            OutDtype::Bf16 => v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect(),
        })
    }
    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * if matches!(self.dtype, OutDtype::F32) { 4 } else { 2 }
    }
}

fn dequantize(qfile: &Path, output: &Path, dtype: OutDtype) -> Result<()> {
    refuse_same_file(output, [qfile])?;
    let q = QuantFile::open(qfile)?;
    let failed = std::cell::RefCell::new(None);
    let tensors: Vec<(String, Lazy)> = q
        .entries()
        .iter()
        .enumerate()
        .map(|(i, e)| (e.name.clone(), Lazy { q: &q, failed: &failed, i, dtype, shape: e.shape.clone() }))
        .collect();
    let out = AtomicFile::create(output)?;
    safetensors::serialize_to_file(tensors, None, out.temp_path())
        .map_err(|e| QuantError::value(format!("cannot write {}: {e}", output.display())))?;
    if let Some(e) = failed.into_inner() {
        return Err(e); // dropping `out` removes the temporary file
    }
    out.commit()
}

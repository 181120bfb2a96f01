//! GPU vs CPU quantization throughput on the same data, in one run.
//!
//! `cargo run --release --bin bench-gpu -- [SIZES…] [--bits 2,4,8] [--methods minmax,lsq] [--group-size 128] [--types q4_0,q8_0] [--imatrix] [--json]`
//! SIZES are element counts: `1000000`, `1M` (2^20), `16M`, `64K`, `2^24`. The GPU is forced
//! (`device="gpu"`), so a software adapter such as lavapipe is used when it is the only one.
//!
//! Every figure comes with its baseline from the same run (this is how to read them on a
//! shared or throttled machine): the kernels against a device-to-device copy, the whole GPU
//! path against a mapped-staging upload of the same bytes, the GPU path against the CPU path.
//! `--types` adds ggml's block types (GGUF tensor types, rows of 4096): their rows have the
//! type's name as method, its code bits as bits and its block as group; `--imatrix` adds each
//! type again with an importance matrix (method `q4_k+imatrix`: the weighted searches), and
//! `cpu_redo` is the share of blocks the GPU left to the CPU reference; the GGUF path's `auto`
//! decision for each of them is printed too (`auto_types` in the JSON). `--dequantize` adds a
//! `dequantize` row per bit width: the f32 results of the CPU's quantized output, GPU against
//! CPU, in GB/s of f32 output, against a download (device → host, mapped read-back buffers) of
//! the same bytes (`download_gbs`, `e2e_over_download`; the table shows them in the upload
//! columns).
//! It exits with status 1 if the GPU and CPU bytes differ.

use std::time::Instant;

use arrow_quant_v2::backend::{Backend, DequantJob, QuantJob};
use arrow_quant_v2::cpu::CpuBackend;
use arrow_quant_v2::error::QuantError;
use arrow_quant_v2::gpu::{GpuBackend, Stages};
use arrow_quant_v2::quant::ggml::{self, GgmlType};
use arrow_quant_v2::{BitWidth, GroupLayout, Method, QuantConfig};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Quantization throughput: GPU (kernel and end to end) vs CPU, with a copy baseline")]
struct Args {
    /// Element counts (f32): 1M, 16M, 2^24, 65536 …
    #[arg(default_values = ["1M", "16M"])]
    sizes: Vec<String>,
    /// Bit widths, comma-separated: 2,4,8
    #[arg(long, value_delimiter = ',', default_values_t = [4])]
    bits: Vec<i64>,
    #[arg(long, default_value_t = 128)]
    group_size: i64,
    /// Methods, comma-separated: minmax (memory-bound), lsq (the compute-bound search)
    #[arg(long, value_delimiter = ',', default_values_t = ["minmax".to_string()])]
    methods: Vec<String>,
    /// ggml block types (GGUF tensor types), comma-separated: q4_0,q4_1,q5_0,q5_1,q8_0,…
    #[arg(long, value_delimiter = ',')]
    types: Vec<String>,
    /// Also run each of --types with an importance matrix (a made-up row of positive weights).
    #[arg(long)]
    imatrix: bool,
    /// Timed repetitions per measurement (the best is reported).
    #[arg(long, default_value_t = 3)]
    iters: usize,
    /// Also time dequantize (min/max rows): GPU against CPU on the CPU's packed output, GB/s of
    /// f32 output (method `dequantize`).
    #[arg(long)]
    dequantize: bool,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write the JSON to this file (with the table on stdout).
    #[arg(long)]
    json_out: Option<std::path::PathBuf>,
}

fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    if let Some((b, e)) = t.split_once('^') {
        let b: usize = b.parse().map_err(|_| format!("bad size {s}"))?;
        let e: u32 = e.parse().map_err(|_| format!("bad size {s}"))?;
        return b.checked_pow(e).ok_or_else(|| format!("size {s} too large"));
    }
    let (num, mul) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1usize << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<usize>().map(|n| n * mul).map_err(|_| format!("bad size {s}"))
}

fn best<F: FnMut() -> f64>(iters: usize, mut f: F) -> f64 {
    (0..iters.max(1)).map(|_| f()).fold(f64::INFINITY, f64::min)
}

fn fail(e: impl std::fmt::Display) -> ! {
    eprintln!("error: {e}");
    std::process::exit(2)
}

/// One measured case: throughputs in GB/s of f32 input, and the ratios the issue asks for.
struct Row {
    elements: usize,
    bits: i64,
    group_size: i64,
    method: String,
    /// The kernels alone (GPU timestamps), when the adapter has them.
    kernel_gbs: Option<f64>,
    /// A device-to-device copy of the kernels' chunk size.
    device_copy_gbs: f64,
    kernel_over_copy: Option<f64>,
    /// The GPU backend end to end: from host memory to results in host memory.
    gpu_e2e_gbs: f64,
    /// Host → device through a ring of mapped staging buffers filled by every core.
    upload_gbs: f64,
    e2e_over_upload: f64,
    /// Host → device through `Queue::write_buffer`, one chunk at a time (the serialized path).
    write_buffer_gbs: f64,
    /// Dequantize rows: device → host through mapped read-back buffers, the same bytes (the
    /// path its f32 results take).
    download_gbs: Option<f64>,
    /// Where the fastest GPU call's wall time went on the host (fractions): filling the upload
    /// buffers, waiting for the device, copying results out (while the next chunk is filled, so
    /// the three may add up to more than 1).
    host_fill: f64,
    host_wait: f64,
    host_read: f64,
    cpu_gbs: f64,
    gpu_over_cpu: f64,
    /// GPU and CPU outputs byte for byte equal.
    identical: bool,
    /// ggml's types: the share of blocks the GPU left to the CPU reference (past its bounds).
    cpu_redo: Option<f64>,
}

impl Row {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "elements": self.elements, "bits": self.bits, "group_size": self.group_size, "method": self.method,
            "kernel_gbs": self.kernel_gbs, "device_copy_gbs": self.device_copy_gbs, "kernel_over_copy": self.kernel_over_copy,
            "gpu_e2e_gbs": self.gpu_e2e_gbs, "upload_gbs": self.upload_gbs, "e2e_over_upload": self.e2e_over_upload,
            "write_buffer_gbs": self.write_buffer_gbs,
            "download_gbs": self.download_gbs, "e2e_over_download": self.download_gbs.map(|d| self.gpu_e2e_gbs / d),
            "host_fill": self.host_fill, "host_wait": self.host_wait, "host_read": self.host_read,
            "cpu_gbs": self.cpu_gbs, "gpu_over_cpu": self.gpu_over_cpu,
            "identical": self.identical, "cpu_redo": self.cpu_redo,
        })
    }
}

fn main() {
    let args = Args::parse();
    let gpu = GpuBackend::shared().unwrap_or_else(|e| fail(e));
    let cpu = CpuBackend::new();
    let mut methods: Vec<Method> = args.methods.iter().map(|m| Method::parse(m).unwrap_or_else(|e| fail(e))).collect();
    // An adapter that cannot run lsq exactly refuses it: reported, and its rows left out.
    let lsq_refused = match methods.contains(&Method::Lsq) {
        true => gpu.subnormal_flush().unwrap_or_else(|e| fail(e)),
        false => None,
    };
    if lsq_refused.is_some() {
        methods.retain(|&m| m != Method::Lsq);
    }
    let types: Vec<GgmlType> = args.types.iter().map(|t| t.parse::<GgmlType>().unwrap_or_else(|_| fail(format!("unknown GGUF type '{t}'")))).collect();
    let mut refused: Vec<String> = Vec::new();
    let mut rows = Vec::new();
    for s in &args.sizes {
        let n = parse_size(s).unwrap_or_else(|e| fail(e));
        let mut state = 0x2545F4914F6CDD1Du64;
        let weights: Vec<f32> = (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
            })
            .collect();
        let bytes: &[u8] = bytemuck::cast_slice(&weights);
        let gbs = |t: f64| n as f64 * 4.0 / t / 1e9;
        // The baselines depend on the size only, not on the bit width.
        let chunk = (n * 4).min(gpu.chunk_bytes()) as u64;
        // `device_copy_baseline` keeps the best of its own repetitions.
        let copy_gbs = chunk as f64 / gpu.device_copy_baseline(chunk, args.iters).unwrap_or_else(|e| fail(e)) / 1e9;
        let upload_gbs = gbs(best(args.iters, || gpu.upload_baseline(bytes).unwrap_or_else(|e| fail(e))));
        let write_buffer_gbs = gbs(best(args.iters, || gpu.copy_baseline(bytes).unwrap_or_else(|e| fail(e))));
        for (&bits, &method) in args.bits.iter().flat_map(|b| methods.iter().map(move |m| (b, m))) {
            let config = QuantConfig::new(BitWidth::new(bits).unwrap_or_else(|e| fail(e)), args.group_size).unwrap_or_else(|e| fail(e)).with_method(method);
            let layout = GroupLayout::new(1, n, config);
            let mut outs = [0, 1].map(|_| (vec![0u8; layout.packed_len()], vec![0f32; layout.n_groups()], vec![0f32; layout.n_groups()]));
            let mut kernel: Option<f64> = None;
            // (wall time, stages) of the fastest GPU call.
            let mut fastest = (f64::INFINITY, Stages::default());
            let mut run = |o: usize, kernel: &mut Option<f64>, fastest: &mut (f64, Stages)| {
                let (p, sc, z) = &mut outs[o];
                let mut jobs = [QuantJob { name: "bench", weights: &weights, layout, packed: p, scales: sc, zero_points: z }];
                let t = Instant::now();
                if o == 0 {
                    let stages = gpu.quantize_timed(&mut jobs).unwrap_or_else(|e| fail(e));
                    let wall = t.elapsed().as_secs_f64();
                    if let Some(k) = stages.kernel {
                        *kernel = Some(kernel.map_or(k, |old| old.min(k)));
                    }
                    if wall < fastest.0 {
                        *fastest = (wall, stages);
                    }
                } else {
                    cpu.quantize(&mut jobs).unwrap_or_else(|e| fail(e));
                }
                t.elapsed().as_secs_f64()
            };
            // Warm-ups: the first GPU call creates its buffers, the first CPU call faults its
            // output pages in.
            let mut ignored = (f64::INFINITY, Stages::default());
            run(0, &mut None, &mut ignored);
            run(1, &mut None, &mut ignored);
            let t_gpu = best(args.iters, || run(0, &mut kernel, &mut fastest));
            let t_cpu = best(args.iters, || run(1, &mut None, &mut ignored));
            let share = |x: f64| x / fastest.0;
            let kernel_gbs = kernel.map(gbs);
            let gpu_e2e_gbs = gbs(t_gpu);
            let cpu_gbs = gbs(t_cpu);
            rows.push(Row {
                elements: n,
                bits,
                group_size: args.group_size,
                method: method.name().to_string(),
                kernel_gbs,
                device_copy_gbs: copy_gbs,
                kernel_over_copy: kernel_gbs.map(|k| k / copy_gbs),
                gpu_e2e_gbs,
                upload_gbs,
                e2e_over_upload: gpu_e2e_gbs / upload_gbs,
                write_buffer_gbs,
                download_gbs: None,
                host_fill: share(fastest.1.fill),
                host_wait: share(fastest.1.wait),
                host_read: share(fastest.1.read),
                cpu_gbs,
                gpu_over_cpu: gpu_e2e_gbs / cpu_gbs,
                identical: outs[0] == outs[1],
                cpu_redo: None,
            });
            if args.dequantize && method == Method::MinMax {
                let (p, sc, z) = &outs[1];
                rows.push(dequantize_row(gpu, &cpu, layout, (p, sc, z), args.iters, rows.last().expect("the quantize row")));
            }
        }
        for &ty in &types {
            for imatrix in [false, true].into_iter().take(1 + args.imatrix as usize) {
                match ggml_row(gpu, ty, &weights, imatrix, args.iters, (copy_gbs, upload_gbs, write_buffer_gbs)) {
                    Ok(row) => rows.push(row),
                    Err(QuantError::Unsupported(why)) => refused.push(format!("{}: {why}", ty.name().to_ascii_lowercase())),
                    Err(e) => fail(e),
                }
            }
        }
    }
    let auto = arrow_quant_v2::device::auto();
    // The search's own decision (its own probe), where it was benchmarked.
    let auto_lsq = args.methods.iter().any(|m| m == "lsq").then(|| arrow_quant_v2::device::auto_for(Method::Lsq));
    // The GGUF path's per-type decisions (each its own probe), for the types benchmarked.
    let auto_types: Vec<(String, &arrow_quant_v2::device::AutoChoice)> = types
        .iter()
        .flat_map(|&ty| [false, true].into_iter().take(1 + args.imatrix as usize).map(move |w| (ty, w)))
        .map(|(ty, w)| (format!("{}{}", ty.name().to_ascii_lowercase(), if w { "+imatrix" } else { "" }), arrow_quant_v2::device::auto_ggml(ty, w)))
        .collect();
    let doc = serde_json::json!({
        "adapter": gpu.adapter(),
        "software": gpu.is_software(),
        "cpu": cpu.name(),
        "lsq_denorm_preserve": gpu.denorm_preserve(),
        "lsq_refused": lsq_refused,
        "types_refused": refused,
        "auto": { "gpu": auto.gpu, "reason": auto.reason },
        "auto_lsq": auto_lsq.map(|a| serde_json::json!({ "gpu": a.gpu, "reason": a.reason })),
        "auto_types": auto_types.iter().map(|(t, a)| (t.clone(), serde_json::json!({ "gpu": a.gpu, "reason": a.reason }))).collect::<serde_json::Map<_, _>>(),
        "iters": args.iters,
        "statistic": "best",
        "rows": rows.iter().map(Row::json).collect::<Vec<_>>(),
    });
    let json = serde_json::to_string_pretty(&doc).expect("serializable");
    if let Some(path) = &args.json_out {
        std::fs::write(path, &json).unwrap_or_else(|e| fail(format!("writing {}: {e}", path.display())));
    }
    if args.json {
        println!("{json}");
    } else {
        println!("adapter: {}{}", gpu.adapter(), if gpu.is_software() { " [software]" } else { "" });
        println!("cpu: {}", cpu.name());
        println!("auto: {} ({})", if auto.gpu { "gpu" } else { "cpu" }, auto.reason);
        if let Some(a) = auto_lsq {
            println!("auto for lsq: {} ({})", if a.gpu { "gpu" } else { "cpu" }, a.reason);
        }
        for (t, a) in &auto_types {
            println!("auto for {t}: {} ({})", if a.gpu { "gpu" } else { "cpu" }, a.reason);
        }
        println!("lsq kernel: {}", if gpu.denorm_preserve() { "SPIR-V with DenormPreserve" } else { "WGSL (the device's subnormal default)" });
        if let Some(why) = &lsq_refused {
            println!("lsq: refused on this adapter, no lsq rows ({why})");
        }
        for why in &refused {
            println!("refused on this adapter, no row: {why}");
        }
        println!("GB/s of f32 input (dequantize: output), best of {}; group {}", args.iters, args.group_size);
        if rows.iter().any(|r| r.download_gbs.is_some()) {
            println!("dequantize rows: `upload` and `e2e/up` are the download (device → host) of the same bytes, the way their results go");
        }
        println!(
            "{:>10} {:>4} {:>12} {:>8} {:>8} {:>6} | {:>8} {:>8} {:>6} {:>8} {:>14} | {:>8} {:>7} | {:>5}",
            "elements", "bits", "method", "kernel", "dev copy", "k/copy", "gpu e2e", "upload", "e2e/up", "wr_buf", "fill/wait/read", "cpu", "gpu/cpu", "same"
        );
        let opt = |x: Option<f64>, p: usize| x.map_or("n/a".to_string(), |v| format!("{v:.p$}"));
        for r in &rows {
            let (base, ratio) = r.download_gbs.map_or((r.upload_gbs, r.e2e_over_upload), |d| (d, r.gpu_e2e_gbs / d));
            println!(
                "{:>10} {:>4} {:>12} {:>8} {:>8.2} {:>6} | {:>8.2} {:>8.2} {:>6.2} {:>8.2} {:>14} | {:>8.2} {:>7.3} | {:>5}",
                r.elements, r.bits, r.method, opt(r.kernel_gbs, 2), r.device_copy_gbs, opt(r.kernel_over_copy, 2), r.gpu_e2e_gbs, base, ratio, r.write_buffer_gbs,
                format!("{:.0}/{:.0}/{:.0}%", 100.0 * r.host_fill, 100.0 * r.host_wait, 100.0 * r.host_read), r.cpu_gbs, r.gpu_over_cpu, r.identical
            );
        }
    }
    if rows.iter().any(|r| !r.identical) {
        eprintln!("error: GPU and CPU bytes differ");
        std::process::exit(1);
    }
}

/// Dequantize of `layout`'s quantized `input` on the GPU against the CPU, with a download of
/// the same f32 bytes; the other baselines are those of `like` (the quantize row of the same
/// size).
fn dequantize_row(gpu: &GpuBackend, cpu: &CpuBackend, layout: GroupLayout, (packed, scales, zero_points): (&[u8], &[f32], &[f32]), iters: usize, like: &Row) -> Row {
    let n = layout.n_elements();
    let gbs = |t: f64| n as f64 * 4.0 / t / 1e9;
    let mut outs = [vec![0f32; n], vec![0f32; n]];
    let (mut kernel, mut fastest) = (f64::INFINITY, (f64::INFINITY, Stages::default()));
    let mut run = |o: usize, kernel: &mut f64, fastest: &mut (f64, Stages)| {
        let mut jobs = [DequantJob { name: "bench", layout, packed, scales, zero_points, out: &mut outs[o] }];
        let t = Instant::now();
        if o == 0 {
            let stages = gpu.dequantize_timed(&mut jobs).unwrap_or_else(|e| fail(e));
            let wall = t.elapsed().as_secs_f64();
            *kernel = kernel.min(stages.kernel.unwrap_or(f64::INFINITY));
            if wall < fastest.0 {
                *fastest = (wall, stages);
            }
        } else {
            cpu.dequantize(&mut jobs).unwrap_or_else(|e| fail(e));
        }
        t.elapsed().as_secs_f64()
    };
    // Warm-ups: buffers on the GPU, output pages on both.
    let (mut no_kernel, mut ignored) = (f64::INFINITY, (f64::INFINITY, Stages::default()));
    run(0, &mut no_kernel, &mut ignored);
    run(1, &mut no_kernel, &mut ignored);
    let t_gpu = best(iters, || run(0, &mut kernel, &mut fastest));
    let t_cpu = best(iters, || run(1, &mut no_kernel, &mut ignored));
    let kernel_gbs = kernel.is_finite().then(|| gbs(kernel));
    let share = |v: f64| v / fastest.0;
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    let identical = bits(&outs[0]) == bits(&outs[1]);
    // Into a buffer of its own: the download's bytes are whatever the device buffer held.
    let mut scratch = vec![0u8; n * 4];
    let download_gbs = gbs(best(iters, || gpu.download_baseline(&mut scratch).unwrap_or_else(|e| fail(e))));
    Row {
        elements: n,
        bits: like.bits,
        group_size: like.group_size,
        method: "dequantize".to_string(),
        kernel_gbs,
        device_copy_gbs: like.device_copy_gbs,
        kernel_over_copy: kernel_gbs.map(|k| k / like.device_copy_gbs),
        gpu_e2e_gbs: gbs(t_gpu),
        upload_gbs: like.upload_gbs,
        e2e_over_upload: gbs(t_gpu) / like.upload_gbs,
        write_buffer_gbs: like.write_buffer_gbs,
        download_gbs: Some(download_gbs),
        host_fill: share(fastest.1.fill),
        host_wait: share(fastest.1.wait),
        host_read: share(fastest.1.read),
        cpu_gbs: gbs(t_cpu),
        gpu_over_cpu: t_cpu / t_gpu,
        identical,
        cpu_redo: None,
    }
}

/// One ggml block type on `weights` (rows of 4096 where they divide, else one row), with an
/// importance matrix if `imatrix`: the GPU (kernel time and end to end) against the CPU
/// encoders, with the size's baselines `(device copy, upload, write_buffer)` in GB/s.
fn ggml_row(gpu: &GpuBackend, ty: GgmlType, weights: &[f32], imatrix: bool, iters: usize, (copy_gbs, upload_gbs, write_buffer_gbs): (f64, f64, f64)) -> Result<Row, QuantError> {
    let (block, _) = ty.block();
    let n = weights.len() / block * block;
    let x = &weights[..n];
    let per_row = if n.is_multiple_of(4096) { 4096 } else { n };
    // Like llama-imatrix's means of squared activations: positive, spread over decades.
    let w: Vec<f32> = (0..per_row).map(|i| 10f32.powf(((i * 7919) % 4000) as f32 / 1000.0 - 2.0)).collect();
    let w = imatrix.then_some(&w[..]);
    let n_bytes = ggml::check_rows(ty, n, per_row, w)?;
    let (mut on_gpu, mut on_cpu) = (vec![0u8; n_bytes], vec![0u8; n_bytes]);
    let gbs = |t: f64| n as f64 * 4.0 / t / 1e9;
    // Warm-ups: buffers, pipeline and self-test on the GPU; output pages on the CPU.
    gpu.quantize_ggml(ty, x, per_row, w, &mut on_gpu)?;
    ggml::quantize(ty, x, per_row, w, &mut on_cpu)?;
    let (mut kernel, mut fastest) = (f64::INFINITY, (f64::INFINITY, Stages::default()));
    let mut failed = None;
    let t_gpu = best(iters, || {
        let t = Instant::now();
        match gpu.quantize_ggml(ty, x, per_row, w, &mut on_gpu) {
            Ok(stages) => {
                let wall = t.elapsed().as_secs_f64();
                kernel = kernel.min(stages.kernel.unwrap_or(f64::INFINITY));
                if wall < fastest.0 {
                    fastest = (wall, stages);
                }
                wall
            }
            Err(e) => {
                failed = Some(e);
                f64::INFINITY
            }
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    let t_cpu = best(iters, || {
        let t = Instant::now();
        ggml::quantize(ty, x, per_row, w, &mut on_cpu).unwrap_or_else(|e| fail(e));
        t.elapsed().as_secs_f64()
    });
    let kernel_gbs = kernel.is_finite().then(|| gbs(kernel));
    let share = |v: f64| v / fastest.0;
    Ok(Row {
        elements: n,
        bits: ty.code_bits() as i64,
        group_size: block as i64,
        method: format!("{}{}", ty.name().to_ascii_lowercase(), if imatrix { "+imatrix" } else { "" }),
        kernel_gbs,
        device_copy_gbs: copy_gbs,
        kernel_over_copy: kernel_gbs.map(|k| k / copy_gbs),
        gpu_e2e_gbs: gbs(t_gpu),
        upload_gbs,
        e2e_over_upload: gbs(t_gpu) / upload_gbs,
        write_buffer_gbs,
        download_gbs: None,
        host_fill: share(fastest.1.fill),
        host_wait: share(fastest.1.wait),
        host_read: share(fastest.1.read),
        cpu_gbs: gbs(t_cpu),
        gpu_over_cpu: t_cpu / t_gpu,
        identical: on_gpu == on_cpu,
        cpu_redo: Some(fastest.1.redone as f64 / (n / block) as f64),
    })
}

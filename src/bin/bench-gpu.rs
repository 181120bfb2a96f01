//! GPU vs CPU quantization throughput on the same data, in one run.
//!
//! `cargo run --release --bin bench-gpu -- [SIZES…] [--bits 4] [--group-size 128] [--json]`
//! SIZES are element counts: `1000000`, `1M` (2^20), `16M`, `64K`, `2^24`. The GPU is forced
//! (`device="gpu"`), so a software adapter such as lavapipe is used when it is the only one.

use std::time::Instant;

use arrow_quant_v2::backend::{Backend, QuantJob};
use arrow_quant_v2::cpu::CpuBackend;
use arrow_quant_v2::gpu::GpuBackend;
use arrow_quant_v2::{BitWidth, GroupLayout, QuantConfig};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Quantization throughput: GPU (kernel and end to end) vs CPU, with a copy baseline")]
struct Args {
    /// Element counts (f32): 1M, 16M, 2^24, 65536 …
    #[arg(default_values = ["1M", "16M"])]
    sizes: Vec<String>,
    #[arg(long, default_value_t = 4)]
    bits: i64,
    #[arg(long, default_value_t = 128)]
    group_size: i64,
    /// Timed repetitions per measurement (the best is reported).
    #[arg(long, default_value_t = 3)]
    iters: usize,
    #[arg(long)]
    json: bool,
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

fn main() {
    let args = Args::parse();
    let config = QuantConfig::new(BitWidth::new(args.bits).unwrap_or_else(|e| panic!("{e}")), args.group_size).unwrap_or_else(|e| panic!("{e}"));
    let gpu = match GpuBackend::shared() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let mut rows = Vec::new();
    for s in &args.sizes {
        let n = parse_size(s).unwrap_or_else(|e| {
            eprintln!("error: {e}");
            std::process::exit(2)
        });
        let mut state = 0x2545F4914F6CDD1Du64;
        let weights: Vec<f32> = (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
            })
            .collect();
        let layout = GroupLayout::new(1, n, config);
        let mut outs = [0, 1].map(|_| (vec![0u8; layout.packed_len()], vec![0f32; layout.n_groups()], vec![0f32; layout.n_groups()]));
        let mut kernel = None;
        let mut run = |b: &dyn Backend, o: usize, timed: bool, kernel: &mut Option<f64>| {
            let (p, sc, z) = &mut outs[o];
            let mut jobs = [QuantJob { name: "bench", weights: &weights, layout, packed: p, scales: sc, zero_points: z }];
            let t = Instant::now();
            if timed {
                let k = gpu.quantize_timed(&mut jobs).expect("gpu quantize");
                let dt = t.elapsed().as_secs_f64();
                if let Some(k) = k {
                    *kernel = Some(kernel.map_or(k, |old: f64| old.min(k)));
                }
                dt
            } else {
                b.quantize(&mut jobs).expect("quantize");
                t.elapsed().as_secs_f64()
            }
        };
        run(gpu, 0, true, &mut kernel); // warm-up (first use creates the buffers)
        kernel = None;
        let t_gpu = best(args.iters, || run(gpu, 0, true, &mut kernel));
        let t_cpu = best(args.iters, || run(&CpuBackend::new(), 1, false, &mut None));
        let same = outs[0] == outs[1];
        let t_copy = best(args.iters, || gpu.copy_baseline(bytemuck::cast_slice(&weights)).expect("copy"));
        let gbs = |t: f64| n as f64 * 4.0 / t / 1e9;
        rows.push((n, kernel.map(gbs), gbs(t_gpu), gbs(t_cpu), gbs(t_copy), same));
    }
    let adapter = gpu.adapter();
    if args.json {
        let items: Vec<String> = rows
            .iter()
            .map(|(n, k, g, c, cp, same)| {
                format!(
                    "{{\"elements\":{n},\"bits\":{},\"group_size\":{},\"adapter\":\"{}\",\"software\":{},\"kernel_gbs\":{},\"gpu_e2e_gbs\":{g:.4},\"cpu_gbs\":{c:.4},\"gpu_over_cpu\":{:.4},\"copy_gbs\":{cp:.4},\"identical\":{same}}}",
                    args.bits,
                    args.group_size,
                    adapter.replace('"', "'"),
                    gpu.is_software(),
                    k.map_or("null".into(), |k| format!("{k:.4}")),
                    g / c
                )
            })
            .collect();
        println!("[{}]", items.join(","));
    } else {
        println!("adapter: {adapter}{}", if gpu.is_software() { " [software]" } else { "" });
        println!("int{} group {}; GB/s of f32 input, best of {}", args.bits, args.group_size, args.iters);
        println!("{:>12} {:>10} {:>10} {:>10} {:>8} {:>10} {:>9}", "elements", "kernel", "gpu e2e", "cpu", "gpu/cpu", "copy h2d", "same");
        for (n, k, g, c, cp, same) in &rows {
            let k = k.map_or("n/a".to_string(), |k| format!("{k:.3}"));
            println!("{n:>12} {k:>10} {g:>10.3} {c:>10.3} {:>8.3} {cp:>10.3} {same:>9}", g / c);
        }
    }
}

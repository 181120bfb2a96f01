//! Quantize throughput on one 2^26-element f32 tensor (4-bit, group 128) against the cheapest
//! thing any quantizer must do: one streaming read of the same buffer on every core.
//!
//! `cargo bench --bench quantize` prints criterion's figures and then the ratios, from
//! interleaved runs in the same process (this machine is shared and noisy; absolute GB/s move,
//! ratios much less). Set `AQ_BENCH_LOG2` to change the size.
//!
//! It also times the converter's kernel (`Backend::quantize_measured`: quantize and measure the
//! error in one pass, from f32 and from bf16) against the plain way (quantize, then decode and
//! compare), and the full validation every batch from an outside Arrow producer gets before it
//! is read (`arrow::validate`), on the same weights as a table of layers of 4096 values, as a
//! fraction of a quantize.

use std::hint::black_box;
use std::time::{Duration, Instant};

use std::sync::Arc;

use arrow_array::{ArrayRef, Float32Array, ListArray, RecordBatch, StringArray};
use arrow_buffer::OffsetBuffer;
use arrow_quant_v2::arrow::validate::validate_batch;
use arrow_quant_v2::cpu::{CpuBackend, Isa};
use arrow_quant_v2::backend::measure_decoded;
use arrow_quant_v2::{Backend, BitWidth, DequantJob, GroupLayout, MeasuredJob, Method, QuantConfig, QuantJob, Values};
use criterion::{Criterion, Throughput};
use rayon::prelude::*;

/// Calls timed by [`Case::quantize_small_calls`].
const SMALL_CALLS: usize = 1024;

struct Case {
    weights: Vec<f32>,
    layout: GroupLayout,
    packed: Vec<u8>,
    scales: Vec<f32>,
    zero_points: Vec<f32>,
    restored: Vec<f32>,
}

impl Case {
    fn new(log2: u32) -> Self {
        let n = 1usize << log2;
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let weights: Vec<f32> = (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
            })
            .collect();
        let layout = GroupLayout::new(1 << (log2 / 2), 1 << (log2 - log2 / 2), QuantConfig::new(BitWidth::B4, 128).unwrap());
        Self {
            packed: vec![0; layout.packed_len()],
            scales: vec![0.0; layout.n_groups()],
            zero_points: vec![0.0; layout.n_groups()],
            restored: vec![0.0; n],
            weights,
            layout,
        }
    }

    fn bytes(&self) -> u64 {
        (self.weights.len() * 4) as u64
    }

    /// One pass over the input on every core: the floor for anything that reads it. On the
    /// crate's pool, split as finely as the quantizer splits (one task per span): rayon's own
    /// pool beside it left one core idle in some runs (its workers and ours took turns).
    fn read(&self) -> u32 {
        arrow_quant_v2::threads::install(|| self.read_here())
    }

    fn read_here(&self) -> u32 {
        self.weights
            .par_chunks(1 << 15)
            .with_max_len(1)
            .map(|c| {
                let mut acc = [0u32; 16];
                for block in c.chunks_exact(16) {
                    for j in 0..16 {
                        acc[j] = acc[j].wrapping_add(block[j].to_bits());
                    }
                }
                acc.iter().fold(0u32, |a, &b| a ^ b)
            })
            .reduce(|| 0, |a, b| a ^ b)
    }

    fn quantize(&mut self) {
        self.quantize_with(CpuBackend::new())
    }

    fn quantize_with(&mut self, backend: CpuBackend) {
        self.quantize_by(backend, Method::MinMax)
    }

    /// The same values as calls of one 4096-value layer each (a small table from Python), in
    /// the cache: what a call costs besides its work.
    fn quantize_small_calls(&mut self) {
        let l = GroupLayout::new(32, 128, self.layout.config());
        let bytes = l.packed_len();
        for _ in 0..SMALL_CALLS {
            CpuBackend::new()
                .quantize(&mut [QuantJob {
                    name: "small",
                    weights: &self.weights[..4096],
                    layout: l,
                    packed: &mut self.packed[..bytes],
                    scales: &mut self.scales[..32],
                    zero_points: &mut self.zero_points[..32],
                }])
                .unwrap();
        }
    }

    fn quantize_by(&mut self, backend: CpuBackend, method: Method) {
        backend
            .quantize(&mut [QuantJob {
                name: "bench",
                weights: &self.weights,
                layout: GroupLayout { method, ..self.layout },
                packed: &mut self.packed,
                scales: &mut self.scales,
                zero_points: &mut self.zero_points,
            }])
            .unwrap();
    }

    /// The converter's fused kernel, from `values` (the weights, or their bf16 copy).
    fn measured(&mut self, bf16: bool) -> f64 {
        let bytes;
        let values = if bf16 {
            bytes = self.weights.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect::<Vec<u8>>();
            Values::BF16(&bytes)
        } else {
            Values::F32(&self.weights)
        };
        let t = Instant::now();
        let stats = CpuBackend::new()
            .quantize_measured(&mut MeasuredJob {
                name: "bench",
                values,
                layout: self.layout,
                packed: &mut self.packed,
                scales: &mut self.scales,
                zero_points: &mut self.zero_points,
            })
            .unwrap();
        black_box(stats);
        t.elapsed().as_secs_f64()
    }

    /// What the converter did before: quantize, then decode a chunk at a time and compare.
    fn quantize_then_measure(&mut self) {
        self.quantize();
        let b = CpuBackend::new();
        black_box(measure_decoded(&b, "bench", self.layout, &self.packed, &self.scales, &self.zero_points, &self.weights).unwrap());
    }

    fn dequantize(&mut self) {
        CpuBackend::new()
            .dequantize(&mut [DequantJob {
                name: "bench",
                layout: self.layout,
                packed: &self.packed,
                scales: &self.scales,
                zero_points: &self.zero_points,
                out: &mut self.restored,
            }])
            .unwrap();
    }
}

/// The weights as a table of layers of 4096 values (many rows: the worst case for validation,
/// which walks offsets and names, not the values).
fn layer_table(weights: &[f32]) -> RecordBatch {
    const ROW: usize = 4096;
    let rows = weights.len() / ROW;
    let names: ArrayRef = Arc::new(StringArray::from_iter_values((0..rows).map(|i| format!("layer.{i}.weight"))));
    let values = Arc::new(Float32Array::from(weights[..rows * ROW].to_vec()));
    let field = Arc::new(arrow_schema::Field::new("item", arrow_schema::DataType::Float32, false));
    let lists: ArrayRef = Arc::new(ListArray::new(field, OffsetBuffer::from_lengths(std::iter::repeat_n(ROW, rows)), values, None));
    RecordBatch::try_from_iter([("layer_name", names), ("weights", lists)]).unwrap()
}

/// This process's CPU time on all its threads, in seconds (Linux), to tell a call that kept
/// every core busy from one where a core sat idle.
#[cfg(target_os = "linux")]
fn process_cpu_seconds() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

#[cfg(not(target_os = "linux"))]
fn process_cpu_seconds() -> f64 {
    f64::NAN
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn main() {
    let log2 = std::env::var("AQ_BENCH_LOG2").ok().and_then(|s| s.parse().ok()).unwrap_or(26);
    let mut case = Case::new(log2);
    let mut c = Criterion::default().configure_from_args().sample_size(20).measurement_time(Duration::from_secs(8));
    let mut group = c.benchmark_group(format!("2^{log2} f32"));
    group.throughput(Throughput::Bytes(case.bytes()));
    group.bench_function("read baseline", |b| b.iter(|| black_box(case.read())));
    group.bench_function("quantize 4-bit g128", |b| b.iter(|| case.quantize()));
    group.bench_function("dequantize 4-bit g128", |b| b.iter(|| case.dequantize()));
    group.bench_function("quantize lsq 4-bit g128", |b| b.iter(|| case.quantize_by(CpuBackend::new(), Method::Lsq)));
    group.finish();
    c.final_summary();

    // Interleaved runs, so both sides see the same machine state.
    let table = layer_table(&case.weights);
    let (mut read, mut quant, mut avx2, mut portable, mut dequant, mut validate) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut fused, mut fused_bf16, mut separate) = (vec![], vec![], vec![]);
    let (mut lsq, mut lsq_avx2, mut lsq2, mut minmax2, mut small) = (vec![], vec![], vec![], vec![], vec![]);
    let mut busy: Vec<f64> = vec![];
    let two_bit = GroupLayout::new(case.layout.n_rows, case.layout.row_len, QuantConfig::new(BitWidth::B2, 64).unwrap());
    let mut buffers2 = (vec![0u8; two_bit.packed_len()], vec![0f32; two_bit.n_groups()], vec![0f32; two_bit.n_groups()]);
    for _ in 0..15 {
        fused.push(Duration::from_secs_f64(case.measured(false)));
        fused_bf16.push(Duration::from_secs_f64(case.measured(true)));
        let t = Instant::now();
        case.quantize_then_measure();
        separate.push(t.elapsed());
        let t = Instant::now();
        validate_batch(black_box(&table), None).unwrap();
        validate.push(t.elapsed());
        let t = Instant::now();
        black_box(case.read());
        read.push(t.elapsed());
        let (t, cpu) = (Instant::now(), process_cpu_seconds());
        case.quantize();
        quant.push(t.elapsed());
        busy.push((process_cpu_seconds() - cpu) / t.elapsed().as_secs_f64());
        let t = Instant::now();
        case.quantize_with(CpuBackend::up_to(Isa::Avx2));
        avx2.push(t.elapsed());
        let t = Instant::now();
        case.quantize_with(CpuBackend::portable());
        portable.push(t.elapsed());
        let t = Instant::now();
        case.dequantize();
        dequant.push(t.elapsed());
        let t = Instant::now();
        case.quantize_by(CpuBackend::new(), Method::Lsq);
        lsq.push(t.elapsed());
        // CPUs without AVX-512 (most desktop ones) run the AVX2 evaluations.
        let t = Instant::now();
        case.quantize_by(CpuBackend::up_to(Isa::Avx2), Method::Lsq);
        lsq_avx2.push(t.elapsed());
        let t = Instant::now();
        case.quantize_small_calls();
        small.push(t.elapsed());
        // 2-bit g64, where lsq gains the most (its own output buffers, swapped in).
        let layout = std::mem::replace(&mut case.layout, two_bit);
        std::mem::swap(&mut case.packed, &mut buffers2.0);
        std::mem::swap(&mut case.scales, &mut buffers2.1);
        std::mem::swap(&mut case.zero_points, &mut buffers2.2);
        let t = Instant::now();
        case.quantize_by(CpuBackend::new(), Method::MinMax);
        minmax2.push(t.elapsed());
        let t = Instant::now();
        case.quantize_by(CpuBackend::new(), Method::Lsq);
        lsq2.push(t.elapsed());
        case.layout = layout;
        std::mem::swap(&mut case.packed, &mut buffers2.0);
        std::mem::swap(&mut case.scales, &mut buffers2.1);
        std::mem::swap(&mut case.zero_points, &mut buffers2.2);
    }
    let gbs = |d: Duration| case.bytes() as f64 / d.as_secs_f64() / 1e9;
    // Bimodal runs (some calls keeping one core busy) would show as a wide spread.
    let spread = |xs: &[Duration]| xs.iter().max().unwrap().as_secs_f64() / xs.iter().min().unwrap().as_secs_f64();
    let quant_spread = spread(&quant);
    let (r, q, a, p, d, v) = (median(read), median(quant), median(avx2), median(portable), median(dequant), median(validate));
    println!("\n{} ({} threads), median of 15 interleaved runs, f32 input GB/s:", CpuBackend::new().name(), rayon::current_num_threads());
    println!("  read baseline     {:6.2} GB/s", gbs(r));
    println!("  quantize          {:6.2} GB/s   ratio to read {:.2}x   (slowest/fastest of 15: {quant_spread:.2})", gbs(q), r.as_secs_f64() / q.as_secs_f64());
    busy.sort_by(f64::total_cmp);
    println!("  quantize CPU time / wall time: lowest {:.2}, median {:.2} of {} threads (a figure below the thread count means a core sat idle)", busy[0], busy[busy.len() / 2], rayon::current_num_threads());
    println!("  quantize avx2     {:6.2} GB/s   ratio to read {:.2}x", gbs(a), r.as_secs_f64() / a.as_secs_f64());
    println!("  quantize portable {:6.2} GB/s   ratio to read {:.2}x", gbs(p), r.as_secs_f64() / p.as_secs_f64());
    println!("  dequantize (out)  {:6.2} GB/s   ratio to read {:.2}x", gbs(d), r.as_secs_f64() / d.as_secs_f64());
    let per_call = median(small).as_secs_f64() / SMALL_CALLS as f64;
    let small_gbs = 4096.0 * 4.0 / per_call / 1e9;
    println!("  small calls (4096 values each, in cache) {:.2} µs per call = {small_gbs:.2} GB/s, {:.2}x of the large call's rate", per_call * 1e6, small_gbs / gbs(q));
    let (l, l2, m2) = (median(lsq), median(lsq2), median(minmax2));
    println!("method=\"lsq\" (search-refined scales), f32 input GB/s:");
    println!("  lsq 4-bit g128    {:6.2} GB/s   cost vs minmax {:.2}x", gbs(l), l.as_secs_f64() / q.as_secs_f64());
    let la = median(lsq_avx2);
    println!("  lsq avx2          {:6.2} GB/s   cost vs minmax avx2 {:.2}x", gbs(la), la.as_secs_f64() / a.as_secs_f64());
    println!("  lsq 2-bit g64     {:6.2} GB/s   cost vs minmax 2-bit g64 ({:.2} GB/s) {:.2}x", gbs(l2), gbs(m2), l2.as_secs_f64() / m2.as_secs_f64());
    let (f, fb, s) = (median(fused), median(fused_bf16), median(separate));
    println!("converter kernel (quantize + error statistics), f32-equivalent GB/s:");
    println!("  fused, f32 in      {:6.2} GB/s   ratio to quantize {:.2}x", gbs(f), q.as_secs_f64() / f.as_secs_f64());
    println!("  fused, bf16 in     {:6.2} GB/s   ratio to quantize {:.2}x", gbs(fb), q.as_secs_f64() / fb.as_secs_f64());
    println!("  quantize, then decode and compare {:6.2} GB/s   ratio to quantize {:.2}x", gbs(s), q.as_secs_f64() / s.as_secs_f64());
    println!(
        "  validate ({} layers of 4096) {:.3} ms = {:.4}x of a quantize",
        table.num_rows(),
        v.as_secs_f64() * 1e3,
        v.as_secs_f64() / q.as_secs_f64()
    );
}

//! GGUF block types against ggml's own quantizer, on the same 4096×4096 float32 matrix in the
//! same run: `ggml_quantize_chunk` from `libggml-base.so` (the PyPI package
//! `libggml-python==0.20.2.post1`, found in `.venv` or at `$GGML_BASE_LIB`), called on row
//! ranges split over the same number of threads, as llama-quantize does.
//!
//! `cargo bench --bench gguf` prints criterion's figures for the project, then, per type, the
//! median of interleaved runs of both at 1 thread and at all threads, and the ratio
//! project / ggml (> 1: the project is faster). The bytes are compared on every run.
//! `AQ_BENCH_TYPES=q4_k,q6_k` limits the types; `AQ_BENCH_ROWS` changes the row count.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use arrow_quant_v2::quant::ggml::{self, GgmlType, Simd};
use criterion::{Criterion, Throughput};

const COLS: usize = 4096;

type QuantizeChunk = unsafe extern "C" fn(i32, *const f32, *mut u8, i64, i64, i64, *const f32) -> usize;

/// ggml's `ggml_quantize_chunk`, if the library is installed.
struct Ggml {
    _lib: libloading::Library,
    quantize_chunk: QuantizeChunk,
}

impl Ggml {
    fn find() -> Option<PathBuf> {
        if let Ok(p) = std::env::var("GGML_BASE_LIB") {
            return Some(PathBuf::from(p));
        }
        std::fs::read_dir(".venv/lib").ok()?.flatten().map(|d| d.path().join("site-packages/libggml/lib64/libggml-base.so.0")).find(|p| p.exists())
    }

    fn load() -> Option<Self> {
        let path = Self::find()?;
        // SAFETY: loading ggml runs no initializers with preconditions; the symbol's signature
        // is `size_t ggml_quantize_chunk(enum ggml_type, const float *, void *, int64_t start,
        // int64_t nrows, int64_t n_per_row, const float * imatrix)` in ggml 0.20.
        unsafe {
            let lib = libloading::Library::new(&path).ok()?;
            let quantize_chunk = *lib.get::<QuantizeChunk>(b"ggml_quantize_chunk\0").ok()?;
            Some(Self { _lib: lib, quantize_chunk })
        }
    }

    /// Rows split over `threads` threads, each calling ggml on its own range.
    fn quantize(&self, ty: GgmlType, x: &[f32], out: &mut [u8], threads: usize) {
        let rows = x.len() / COLS;
        let row_bytes = out.len() / rows;
        let per = rows.div_ceil(threads);
        std::thread::scope(|s| {
            for (i, o) in out.chunks_mut(per * row_bytes).enumerate() {
                let f = self.quantize_chunk;
                let (x, n) = (x.as_ptr() as usize, o.len() / row_bytes);
                let o = o.as_mut_ptr() as usize;
                s.spawn(move || {
                    // SAFETY: `x` holds `rows * COLS` floats and `o` (this thread's disjoint slice
                    // of `out`) holds `n` rows of `ty`; ggml writes row `start / COLS` onward at
                    // `dst + (start / COLS) * row_bytes`, so `dst` is offset back by that much.
                    unsafe {
                        let start = (i * per * COLS) as i64;
                        let dst = (o as *mut u8).sub(i * per * row_bytes);
                        f(ty.id() as i32, x as *const f32, dst, start, n as i64, COLS as i64, std::ptr::null());
                    }
                });
            }
        });
    }
}

fn matrix(rows: usize) -> Vec<f32> {
    // xorshift, roughly N(0, 0.02) through a sum of uniforms
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut u = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    (0..rows * COLS).map(|_| (u() + u() + u() + u()) * 0.035).collect()
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn main() {
    let rows: usize = std::env::var("AQ_BENCH_ROWS").ok().and_then(|s| s.parse().ok()).unwrap_or(4096);
    let types: Vec<GgmlType> = match std::env::var("AQ_BENCH_TYPES") {
        Ok(s) => s.split(',').map(|t| t.parse().expect("a ggml type")).collect(),
        Err(_) => GgmlType::QUANTIZED.to_vec(),
    };
    let x = matrix(rows);
    let bytes = (x.len() * 4) as u64;
    let threads = rayon::current_num_threads();
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let ggml = Ggml::load();

    let mut c = Criterion::default().configure_from_args().sample_size(10).measurement_time(Duration::from_secs(5));
    let mut group = c.benchmark_group(format!("{rows}x{COLS} f32"));
    group.throughput(Throughput::Bytes(bytes));
    for &ty in &types {
        let mut out = vec![0u8; ggml::check_rows(ty, x.len(), COLS, None).unwrap()];
        group.bench_function(format!("{} project", ty.name()), |b| b.iter(|| ggml::quantize(ty, &x, COLS, None, &mut out).unwrap()));
        if let Some(g) = &ggml {
            group.bench_function(format!("{} ggml ({threads} threads)", ty.name()), |b| b.iter(|| g.quantize(ty, &x, &mut out, threads)));
        }
    }
    group.finish();
    c.final_summary();

    let Some(g) = ggml else {
        println!("\nggml not found: install libggml-python==0.20.2.post1 in .venv (make develop) or set GGML_BASE_LIB");
        return;
    };
    println!("\nproject ({}, {threads} threads) vs ggml 0.20 ggml_quantize_chunk, {rows}x{COLS} f32, f32 GB/s, median of interleaved runs:", Simd::detect().name());
    println!("{:>6} {:>12} {:>12} {:>8}   {:>12} {:>12} {:>8}  bytes", "type", "1t project", "1t ggml", "ratio", format!("{threads}t project"), format!("{threads}t ggml"), "ratio");
    let gbs = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e9;
    for &ty in &types {
        let n = ggml::check_rows(ty, x.len(), COLS, None).unwrap();
        let (mut ours, mut theirs) = (vec![0u8; n], vec![0u8; n]);
        let reps = if ty.block().0 == 256 { 3 } else { 7 };
        let (mut p1, mut g1, mut pn, mut gn) = (vec![], vec![], vec![], vec![]);
        for _ in 0..reps {
            let t = Instant::now();
            one.install(|| ggml::quantize(ty, &x, COLS, None, &mut ours).unwrap());
            p1.push(t.elapsed());
            let t = Instant::now();
            g.quantize(ty, &x, &mut theirs, 1);
            g1.push(t.elapsed());
            let t = Instant::now();
            ggml::quantize(ty, &x, COLS, None, black_box(&mut ours)).unwrap();
            pn.push(t.elapsed());
            let t = Instant::now();
            g.quantize(ty, &x, black_box(&mut theirs), threads);
            gn.push(t.elapsed());
        }
        let (p1, g1, pn, gn) = (median(p1), median(g1), median(pn), median(gn));
        println!(
            "{:>6} {:>12.3} {:>12.3} {:>7.1}x   {:>12.3} {:>12.3} {:>7.1}x  {}",
            ty.name(),
            gbs(p1),
            gbs(g1),
            g1.as_secs_f64() / p1.as_secs_f64(),
            gbs(pn),
            gbs(gn),
            gn.as_secs_f64() / pn.as_secs_f64(),
            if ours == theirs { "equal" } else { "DIFFER" }
        );
    }
}

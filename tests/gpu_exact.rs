//! The GPU backend against the reference and the CPU backend, bit for bit. Runs on whatever
//! adapter wgpu finds (lavapipe in CI). Without an adapter these tests fail, unless
//! `ARROW_QUANT_SKIP_GPU_TESTS=1` is set.

use arrow_quant_v2::backend::{Backend, DequantJob, QuantJob};
use arrow_quant_v2::cpu::CpuBackend;
use arrow_quant_v2::device::{backend, Device};
use arrow_quant_v2::quant::reference;
use arrow_quant_v2::gpu::GpuBackend;
use arrow_quant_v2::{BitWidth, GroupLayout, Method, QuantConfig};

fn gpu() -> Option<&'static dyn Backend> {
    match backend(Device::Gpu) {
        Ok(b) => Some(b),
        Err(e) if std::env::var("ARROW_QUANT_SKIP_GPU_TESTS").is_ok_and(|v| v == "1") => {
            eprintln!("skipping GPU test: {e}");
            None
        }
        Err(e) => panic!("no GPU adapter for the GPU tests ({e}); set ARROW_QUANT_SKIP_GPU_TESTS=1 to skip"),
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    fn normalish(&mut self) -> f32 {
        (self.unit() - 0.5) * 4.0 * self.unit()
    }
    /// Any finite value with |x| < 2^126: every exponent, subnormals, signed zeros.
    fn any_bits(&mut self) -> f32 {
        loop {
            let b = self.next() as u32;
            if (b >> 23) & 0xff < 253 {
                return f32::from_bits(b);
            }
        }
    }
}

fn layout(rows: usize, row_len: usize, bits: BitWidth, gs: i64) -> GroupLayout {
    GroupLayout::new(rows, row_len, QuantConfig::new(bits, gs).unwrap())
}

struct Out {
    packed: Vec<u8>,
    scales: Vec<f32>,
    zps: Vec<f32>,
}

fn quantize_all(b: &dyn Backend, layers: &[(Vec<f32>, GroupLayout)]) -> arrow_quant_v2::Result<Vec<Out>> {
    let mut outs: Vec<Out> = layers
        .iter()
        .map(|(_, l)| Out { packed: vec![0xAA; l.packed_len()], scales: vec![f32::NAN; l.n_groups()], zps: vec![f32::NAN; l.n_groups()] })
        .collect();
    let names: Vec<String> = (0..layers.len()).map(|i| format!("layer{i}")).collect();
    let mut jobs: Vec<QuantJob> = layers
        .iter()
        .zip(outs.iter_mut())
        .zip(&names)
        .map(|(((w, l), o), name)| QuantJob { name, weights: w, layout: *l, packed: &mut o.packed, scales: &mut o.scales, zero_points: &mut o.zps })
        .collect();
    b.quantize(&mut jobs)?;
    drop(jobs);
    Ok(outs)
}

fn dequantize_all(b: &dyn Backend, layers: &[(Vec<f32>, GroupLayout)], outs: &[Out]) -> Vec<Vec<f32>> {
    let mut res: Vec<Vec<f32>> = layers.iter().map(|(_, l)| vec![f32::NAN; l.n_elements()]).collect();
    let mut jobs: Vec<DequantJob> = layers
        .iter()
        .zip(outs)
        .zip(res.iter_mut())
        .map(|(((_, l), o), out)| DequantJob { name: "", layout: *l, packed: &o.packed, scales: &o.scales, zero_points: &o.zps, out })
        .collect();
    b.dequantize(&mut jobs).unwrap();
    drop(jobs);
    res
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Quantizes and dequantizes `layers` in one call each and compares with the reference and
/// the CPU backend bit for bit.
fn check(layers: &[(Vec<f32>, GroupLayout)]) {
    let Some(g) = gpu() else { return };
    let got = quantize_all(g, layers).unwrap();
    let cpu = quantize_all(&CpuBackend::new(), layers).unwrap();
    for (i, ((w, l), o)) in layers.iter().zip(&got).enumerate() {
        let mut packed = vec![0u8; l.packed_len()];
        let mut scales = vec![0f32; l.n_groups()];
        let mut zps = vec![0f32; l.n_groups()];
        reference::quantize_layer("x", w, l, &mut packed, &mut scales, &mut zps).unwrap();
        if o.packed != packed {
            let at = o.packed.iter().zip(&packed).position(|(a, b)| a != b).unwrap();
            panic!("layer {i} {l:?}: packed byte {at} differs: gpu {:#x} ref {:#x}", o.packed[at], packed[at]);
        }
        assert_eq!(bits(&o.scales), bits(&scales), "layer {i} {l:?}: scales");
        assert_eq!(bits(&o.zps), bits(&zps), "layer {i} {l:?}: zero points");
        assert_eq!(cpu[i].packed, packed, "cpu backend, layer {i}");
    }
    let deq = dequantize_all(g, layers, &got);
    for (i, ((_, l), o)) in layers.iter().zip(&got).enumerate() {
        let mut want = vec![0f32; l.n_elements()];
        reference::dequantize_layer(l, &o.packed, &o.scales, &o.zps, &mut want);
        let (a, b) = (bits(&deq[i]), bits(&want));
        if a != b {
            let at = a.iter().zip(&b).position(|(x, y)| x != y).unwrap();
            panic!("layer {i} {l:?}: dequantized element {at}: gpu {:e} ref {:e}", deq[i][at], want[at]);
        }
    }
}

const ALL_BITS: [BitWidth; 3] = [BitWidth::B2, BitWidth::B4, BitWidth::B8];

#[test]
fn random_layers_all_widths_and_group_sizes() {
    let mut r = Rng(0x9e3779b97f4a7c15);
    let mut layers = Vec::new();
    for bits in ALL_BITS {
        for gs in [8i64, 16, 128, 136] {
            let g = gs as usize;
            for (rows, row_len) in [(1, 5 * g), (1, 3 * g + 1), (7, 2 * g + 1), (5, g / 2 + 3), (3, 1), (1, 1000)] {
                let w = (0..rows * row_len).map(|_| r.normalish()).collect();
                layers.push((w, layout(rows, row_len, bits, gs)));
            }
        }
    }
    check(&layers);
}

#[test]
fn random_bit_patterns_every_exponent() {
    let mut r = Rng(12345);
    let mut layers = Vec::new();
    for bits in ALL_BITS {
        for gs in [8i64, 16, 136] {
            let n = 4000;
            let w = (0..n).map(|_| r.any_bits()).collect();
            layers.push((w, layout(1, n, bits, gs)));
            // Groups whose values share an exponent band, so ranges are not dominated by one
            // huge element.
            let w = (0..n)
                .map(|i| {
                    let band = (i / gs as usize) as u32 % 250;
                    f32::from_bits((band << 23) | (r.next() as u32 & 0x807f_ffff))
                })
                .collect();
            layers.push((w, layout(1, n, bits, gs)));
        }
    }
    check(&layers);
}

#[test]
fn rounding_ties_and_neighbours() {
    let mut r = Rng(777);
    let mut layers = Vec::new();
    for bits in ALL_BITS {
        let l = bits.max_code();
        for trial in 0..40 {
            // A group with ends lo and hi, filled with values whose t = (w − lo)·inv lands on
            // k + 0.5 in f32 arithmetic, and the floats next to them.
            let (lo, hi) = if trial == 0 { (0.0f32, l as f32) } else { let a = r.normalish() * 10f32.powi(trial % 7 - 3); (a, a + r.unit() * 10f32.powi(trial % 5 - 2) + 1e-6) };
            let p = arrow_quant_v2::quant::GroupParams::from_range(lo, hi, l).unwrap();
            let mut w = vec![lo, hi];
            for k in 0..l.min(40) {
                let target = ((k as f64 + 0.5) / p.inv as f64 + lo as f64) as f32;
                let mut x = target;
                for _ in 0..4 {
                    x = f32::from_bits(x.to_bits() - 1);
                }
                for _ in 0..9 {
                    if x >= lo && x <= hi {
                        w.push(x);
                    }
                    x = f32::from_bits(x.to_bits() + 1);
                }
            }
            // Exact ties when inv = 1: integers + 0.5.
            if trial == 0 {
                w.extend((0..l).map(|k| k as f32 + 0.5));
            }
            // One group per layer: group size = padded length.
            let gs = w.len().div_ceil(8) * 8;
            while w.len() < gs {
                w.push(lo);
            }
            layers.push((w, layout(1, gs, bits, gs as i64)));
        }
    }
    check(&layers);
}

#[test]
fn subnormals_tiny_values_and_signed_zeros() {
    let mut r = Rng(4242);
    let sub = |r: &mut Rng| f32::from_bits(r.next() as u32 & 0x807f_ffff);
    let tiny = |r: &mut Rng| f32::from_bits(((r.next() as u32 % 60 + 1) << 23) | (r.next() as u32 & 0x807f_ffff));
    let mut layers = Vec::new();
    for bits in ALL_BITS {
        let n = 16 * 64;
        let mk = |f: &mut dyn FnMut(usize) -> f32| (0..n).map(&mut *f).collect::<Vec<f32>>();
        layers.push((mk(&mut |_| sub(&mut r)), layout(1, n, bits, 16)));
        layers.push((mk(&mut |i| if i % 3 == 0 { sub(&mut r) } else { tiny(&mut r) }), layout(1, n, bits, 16)));
        layers.push((mk(&mut |i| [0.0, -0.0, 1e-45, -1e-45, f32::MIN_POSITIVE, -f32::MIN_POSITIVE][i % 6]), layout(1, n, bits, 8)));
        layers.push((mk(&mut |i| if i % 2 == 0 { -0.0 } else { 0.0 }), layout(1, n, bits, 8)));
        layers.push((mk(&mut |i| if i % 16 == 0 { 1.0 } else { sub(&mut r) }), layout(1, n, bits, 16)));
        layers.push((mk(&mut |i| if i % 16 == 0 { 2f32.powi(-61) } else { tiny(&mut r) }), layout(1, n, bits, 16)));
        // A tiny lo with a big hi (inv subnormal for 2-bit when the range is huge).
        layers.push((mk(&mut |i| if i % 8 == 0 { 3.0e38 } else { sub(&mut r) }), layout(1, n, bits, 8)));
    }
    check(&layers);
}

#[test]
fn huge_ranges_just_below_overflow() {
    let mut r = Rng(99);
    let mut layers = Vec::new();
    let max = f32::MAX;
    for bits in ALL_BITS {
        let n = 8 * 50;
        let w: Vec<f32> = (0..n)
            .map(|i| match i % 8 {
                0 => -max / 2.0,
                1 => max / 2.0,
                _ => (r.unit() - 0.5) * max,
            })
            .collect();
        layers.push((w, layout(1, n, bits, 8)));
        let w: Vec<f32> = (0..n).map(|i| if i % 8 == 0 { 0.0 } else { r.unit() * max }).collect();
        layers.push((w, layout(1, n, bits, 8)));
        let w: Vec<f32> = (0..n).map(|i| if i % 8 == 0 { -max } else { -max + r.unit() * max }).collect();
        layers.push((w, layout(1, n, bits, 8)));
        let w: Vec<f32> = (0..n).map(|i| if i % 8 == 0 { max } else { f32::from_bits(max.to_bits() - (r.next() % 1000) as u32) }).collect();
        layers.push((w, layout(1, n, bits, 8)));
    }
    check(&layers);
}

#[test]
fn constant_groups_and_one_element_tails() {
    let mut layers = Vec::new();
    for bits in ALL_BITS {
        layers.push((vec![0.25; 128 * 3 + 1], layout(1, 128 * 3 + 1, bits, 128)));
        layers.push((vec![-7.0; 6 * 17], layout(6, 17, bits, 16)));
        layers.push(((0..9 * 33).map(|i| (i % 7) as f32 - 3.0).collect(), layout(9, 33, bits, 8)));
        layers.push((vec![1.0], layout(1, 1, bits, 8)));
        layers.push((vec![-0.0; 40], layout(40, 1, bits, 8)));
    }
    check(&layers);
}

#[test]
fn many_small_layers_in_one_call() {
    let mut r = Rng(5);
    let layers: Vec<_> = (0..5000)
        .map(|i| {
            let bits = ALL_BITS[i % 3];
            let (rows, row_len) = (1 + i % 3, 1 + (i * 7) % 50);
            ((0..rows * row_len).map(|_| r.normalish()).collect(), layout(rows, row_len, bits, 8 * (1 + i as i64 % 3)))
        })
        .collect();
    check(&layers);
}

#[test]
fn layers_larger_than_a_chunk() {
    let mut r = Rng(31337);
    let mut layers = Vec::new();
    let n = (4 << 20) + 12345;
    layers.push(((0..n).map(|_| r.normalish()).collect(), layout(1, n, BitWidth::B4, 128)));
    layers.push(((0..3 * 1_500_001).map(|_| r.normalish()).collect(), layout(3, 1_500_001, BitWidth::B2, 136)));
    layers.push(((0..(3 << 20)).map(|_| r.normalish()).collect(), layout(3 << 10, 1 << 10, BitWidth::B8, 16)));
    check(&layers);
}

/// More chunks than buffer sets: from the fourth chunk on, each chunk is uploaded while the
/// oldest set is read back on the calling thread, and is submitted on that set once it is free.
/// Layers of odd lengths so that chunks start and end inside layers, and a run of small layers
/// that share chunks.
#[test]
fn more_chunks_than_buffer_sets() {
    if gpu().is_none() {
        return;
    }
    let chunk = GpuBackend::shared().unwrap().chunk_bytes() / 4;
    let mut r = Rng(4242);
    let mut layers: Vec<(Vec<f32>, GroupLayout)> = Vec::new();
    let n = chunk * 2 + 777;
    layers.push(((0..n).map(|_| r.normalish()).collect(), layout(1, n, BitWidth::B4, 128)));
    for i in 0..40 {
        let row = 1000 + 37 * i;
        layers.push(((0..64 * row).map(|_| r.normalish()).collect(), layout(64, row, [BitWidth::B2, BitWidth::B4, BitWidth::B8][i % 3], 64)));
    }
    let rows = (chunk * 5 / 2) / 3000 + 1;
    layers.push(((0..rows * 3000).map(|_| r.normalish()).collect(), layout(rows, 3000, BitWidth::B2, 32)));
    let total: usize = layers.iter().map(|(w, _)| w.len()).sum();
    assert!(total > chunk * 5, "{total} values should fill more than five chunks of {chunk}");
    check(&layers);
}

/// Groups longer than one tile of the fused kernel (2048 elements), reduced by a whole
/// workgroup: alone, next to short tail groups, as a whole row, and as big as a chunk (the
/// most loop iterations per invocation; llvmpipe ends an invocation's loops after 65,535
/// iterations in all).
#[test]
fn groups_larger_than_a_tile() {
    let mut r = Rng(2024);
    let mut layers = Vec::new();
    for bits in ALL_BITS {
        for (rows, row_len, gs) in [(2, 8192, 8192), (3, 20000, 8192), (2, 9000, 8192), (2, 65536 + 24, 65536), (2, 100_000, 100_000), (1, 2049, 2056), (3, 2056 * 3 + 5, 2056)] {
            layers.push(((0..rows * row_len).map(|_| r.normalish()).collect(), layout(rows, row_len, bits, gs)));
        }
    }
    // The min and max at the very ends of a big group, and every other element equal.
    let mut w = vec![0.5f32; 3 * 4104];
    w[0] = -1.0;
    w[4103] = 2.0;
    w[4104 + 4103] = -3.0;
    w[2 * 4104] = 7.0;
    layers.push((w, layout(3, 4104, BitWidth::B4, 4104)));
    // Groups as big as a chunk, the most loop iterations per invocation.
    let n = 4 << 20;
    for bits in ALL_BITS {
        layers.push(((0..n).map(|_| r.any_bits()).collect(), layout(1, n, bits, n as i64)));
    }
    check(&layers);
}

/// Output words shared by two tiles (two workgroups): 2-bit groups of 8 and rows whose
/// packed length is not a multiple of 4 bytes, so tiles start inside a word.
#[test]
fn tiles_that_share_an_output_word() {
    let mut r = Rng(77);
    let mut layers = Vec::new();
    for (rows, row_len, bits, gs) in [
        (5, 2051, BitWidth::B2, 8),
        (4, 100_001, BitWidth::B2, 16),
        (3, 1001, BitWidth::B4, 8),
        (9, 333, BitWidth::B2, 8),
        (2, 2056 * 3 + 5, BitWidth::B2, 2056),
        (700, 3, BitWidth::B2, 8),
        (1000, 13, BitWidth::B4, 8),
    ] {
        layers.push(((0..rows * row_len).map(|_| r.normalish()).collect(), layout(rows, row_len, bits, gs)));
    }
    check(&layers);
    // The same layers one per call: each alone in its chunk.
    for l in layers {
        check(&[l]);
    }
}

#[test]
fn non_finite_in_a_big_group_matches_cpu() {
    let Some(g) = gpu() else { return };
    let ok: Vec<f32> = (0..20000).map(|i| (i % 97) as f32).collect();
    for (at, bad) in [(5000, f32::NAN), (8191, f32::INFINITY), (19999, f32::NEG_INFINITY), (0, -f32::NAN)] {
        let mut w = ok.clone();
        w[at] = bad;
        let layers = vec![(ok.clone(), layout(1, 20000, BitWidth::B4, 8192)), (w, layout(1, 20000, BitWidth::B4, 8192))];
        let e_gpu = quantize_all(g, &layers).err().expect("gpu must fail").to_string();
        let e_cpu = quantize_all(&CpuBackend::new(), &layers).err().expect("cpu must fail").to_string();
        assert_eq!(e_gpu, e_cpu);
        assert!(e_gpu.contains("layer1") && e_gpu.contains(&format!("index {at}")), "{e_gpu}");
    }
}

#[test]
fn non_finite_and_overflow_errors_match_cpu() {
    let Some(g) = gpu() else { return };
    let ok: Vec<f32> = (0..256).map(|i| i as f32).collect();
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut w2 = ok.clone();
        w2[77] = bad;
        w2[200] = f32::NAN;
        let layers = vec![(ok.clone(), layout(2, 128, BitWidth::B4, 16)), (w2.clone(), layout(2, 128, BitWidth::B4, 16)), (w2, layout(1, 256, BitWidth::B2, 8))];
        let e_gpu = quantize_all(g, &layers).err().expect("gpu must fail").to_string();
        let e_cpu = quantize_all(&CpuBackend::new(), &layers).err().expect("cpu must fail").to_string();
        assert_eq!(e_gpu, e_cpu);
        assert!(e_gpu.contains("layer1") && e_gpu.contains("index 77"), "{e_gpu}");
    }
    let mut w = ok.clone();
    w[3] = -3e38;
    w[5] = 3e38;
    let layers = vec![(ok.clone(), layout(1, 256, BitWidth::B8, 8)), (w, layout(1, 256, BitWidth::B8, 8))];
    let e_gpu = quantize_all(g, &layers).err().expect("gpu must fail").to_string();
    assert_eq!(e_gpu, quantize_all(&CpuBackend::new(), &layers).err().unwrap().to_string());
    assert!(e_gpu.contains("overflows"), "{e_gpu}");
    // The backend still works after an error.
    check(&[(ok, layout(1, 256, BitWidth::B4, 128))]);
}

#[test]
fn dequantize_foreign_parameters_matches_reference() {
    let Some(g) = gpu() else { return };
    // Parameters the quantizer never writes (negative or huge scales, -0.0): still exact (CPU
    // route) and still equal to the reference.
    let l = layout(1, 64, BitWidth::B4, 16);
    let packed: Vec<u8> = (0..32).map(|i| (i * 37) as u8).collect();
    for (scales, zps) in [
        (vec![-1.5f32, 0.25, 2.0, 1e-40], vec![0.0f32, -0.0, 1e-42, 3.0]),
        (vec![1e38, 3.0e30, -0.0, 0.0], vec![-1e38, 1e30, -0.0, 1e-45]),
    ] {
        let mut out = vec![0f32; 64];
        g.dequantize(&mut [DequantJob { name: "", layout: l, packed: &packed, scales: &scales, zero_points: &zps, out: &mut out }]).unwrap();
        let mut want = vec![0f32; 64];
        reference::dequantize_layer(&l, &packed, &scales, &zps, &mut want);
        assert_eq!(bits(&out), bits(&want));
    }
}

#[test]
fn device_selection() {
    // "cpu" is the CPU backend; "gpu" names the adapter.
    assert!(backend(Device::Cpu).unwrap().name().starts_with("cpu"));
    if let Some(g) = gpu() {
        eprintln!("GPU backend: {}", g.name());
        assert!(g.name().starts_with("gpu ("), "{}", g.name());
    }
}

/// The converter's job on the GPU (quantize, then decode on the GPU and compare) gives the
/// bytes and the error statistics of the CPU's fused pass, bit for bit, from f32 and bf16.
#[test]
fn quantize_measured_matches_cpu() {
    use arrow_quant_v2::backend::MeasuredJob;
    use arrow_quant_v2::Values;
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng(0x5eed);
    // Several measured chunks (whole rows of 2^20 values), the last one partial; a row with a
    // partial last group.
    for (rows, row_len, bits, gs) in [(2300, 1000, BitWidth::B4, 128), (37, 333, BitWidth::B2, 32), (5, 4096, BitWidth::B8, 64)] {
        let l = layout(rows, row_len, bits, gs);
        let w: Vec<f32> = (0..l.n_elements()).map(|_| rng.normalish()).collect();
        let bf16: Vec<u8> = w.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect();
        for values in [Values::F32(&w), Values::BF16(&bf16)] {
            let run = |b: &dyn Backend| {
                let (mut p, mut s, mut z) = (vec![0u8; l.packed_len()], vec![0f32; l.n_groups()], vec![0f32; l.n_groups()]);
                let st = b
                    .quantize_measured(&mut MeasuredJob { name: "t", values, layout: l, packed: &mut p, scales: &mut s, zero_points: &mut z })
                    .unwrap();
                let stats = [st.n as u64, st.max_abs_error.to_bits(), st.sum_sq_error.to_bits(), st.sum_sq_signal.to_bits(), st.dot.to_bits(), st.sum_sq_recon.to_bits()];
                (p, bits_of(&s), bits_of(&z), stats)
            };
            assert!(run(gpu) == run(&CpuBackend::new()), "{rows}x{row_len} {bits:?} g{gs} {values:?}");
        }
    }
}

fn bits_of(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A whole conversion with `device=gpu` writes the file the CPU writes.
#[test]
fn converter_on_the_gpu_writes_the_cpu_file() {
    use arrow_quant_v2::model::{convert, NoProgress, Options};
    use safetensors::tensor::TensorView;
    if gpu().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("m.safetensors");
    let mut rng = Rng(7);
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = [vec![1100, 1024], vec![64, 96], vec![300, 256], vec![128]]
        .into_iter()
        .enumerate()
        .map(|(i, shape)| {
            let n: usize = shape.iter().product();
            let data = (0..n).flat_map(|_| half::bf16::from_f32(rng.normalish()).to_le_bytes()).collect();
            (format!("t{i}.weight"), shape, data)
        })
        .collect();
    let views: Vec<(&str, TensorView)> =
        tensors.iter().map(|(n, s, d)| (n.as_str(), TensorView::new(safetensors::Dtype::BF16, s.clone(), d).unwrap())).collect();
    safetensors::serialize_to_file(views, None, &src).unwrap();
    // The search too, where the adapter runs it (lavapipe must: `lsq` tests).
    let lsq = GpuBackend::shared().unwrap().subnormal_flush().unwrap().is_none();
    for method in [Method::MinMax, Method::Lsq].into_iter().filter(|&m| m == Method::MinMax || lsq) {
        let mut files = Vec::new();
        for device in [Device::Cpu, Device::Gpu] {
            let dst = dir.path().join(format!("{device:?}-{}.arrow", method.name()));
            let config = Options::default().config.with_method(method);
            convert(&src, &dst, &Options { device, config, ..Options::default() }, &mut NoProgress).unwrap();
            files.push(std::fs::read(&dst).unwrap());
        }
        assert!(files[0] == files[1], "the GPU conversion ({}) differs from the CPU one", method.name());
    }
}

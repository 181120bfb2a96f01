//! `method="lsq"`: every CPU flavour, the fused converter kernel and the GPU against the scalar
//! reference, bit for bit (a GPU whose subnormal probe fails must refuse lsq instead); the
//! refinement never loses to min/max; `auto` gives the same bytes.

mod common;

use arrow_quant_v2::backend::{measure_decoded, Backend, MeasuredJob};
use arrow_quant_v2::cpu::{CpuBackend, Isa};
use arrow_quant_v2::quant::lsq;
use arrow_quant_v2::quant::reference::group_range;
use arrow_quant_v2::quant::GroupParams;
use arrow_quant_v2::{BitWidth, GroupLayout, Method, QuantizedTensor, Values};
use common::*;
use proptest::prelude::*;

const BACKENDS: [CpuBackend; 3] = [CpuBackend::up_to(Isa::Avx512), CpuBackend::up_to(Isa::Avx2), CpuBackend::portable()];

fn lsq_layout(n_rows: usize, row_len: usize, bits: BitWidth, group_size: i64) -> GroupLayout {
    GroupLayout { method: Method::Lsq, ..layout(n_rows, row_len, bits, group_size) }
}

fn gaussian(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng(seed | 1);
    (0..n).map(|_| rng.normal_ish() * 0.02).collect()
}

#[test]
fn every_flavour_matches_the_reference_on_adversarial_layers() {
    let mut rng = Rng(7 | 1);
    for bits in BITS {
        for (rows, row_len, gs) in [(3, 200, 64), (2, 300, 128), (4, 37, 8), (1, 1000, 256)] {
            let l = lsq_layout(rows, row_len, bits, gs);
            let w = adversarial_layer(&mut rng, &l);
            for backend in BACKENDS {
                assert_matches_reference(&backend, &w, l);
            }
        }
    }
}

#[test]
fn the_converter_kernel_gives_the_same_bytes_and_statistics() {
    for bits in BITS {
        let l = lsq_layout(64, 384, bits, 64);
        let w = gaussian(l.n_elements(), bits.bits() as u64);
        let want = reference_quantize(&w, l);
        for backend in BACKENDS {
            let (mut p, mut s, mut z) = (vec![0; l.packed_len()], vec![0.0; l.n_groups()], vec![0.0; l.n_groups()]);
            let stats = backend
                .quantize_measured(&mut MeasuredJob { name: "t", values: Values::F32(&w), layout: l, packed: &mut p, scales: &mut s, zero_points: &mut z })
                .unwrap();
            assert_eq!(p, want.packed, "{bits:?}");
            assert_eq!(bits_of(&s), bits_of(&want.scales));
            assert_eq!(bits_of(&z), bits_of(&want.zero_points));
            let plain = measure_decoded(&backend, "t", l, &p, &s, &z, &w).unwrap();
            assert_eq!(format!("{stats:?}"), format!("{plain:?}"));
        }
    }
}

/// The guarantee, in the definition's own measure, group by group; and the gain it was adopted
/// for, in float64 over the whole tensor.
#[test]
fn no_group_loses_to_min_max_and_the_tensor_gains() {
    for (bits, gs, min_gain_db) in [(BitWidth::B2, 64, 2.0), (BitWidth::B4, 128, 0.3), (BitWidth::B8, 128, 0.0)] {
        let l = lsq_layout(256, 512, bits, gs);
        let w = gaussian(l.n_elements(), 11);
        let minmax = QuantizedTensor::quantize(&CpuBackend::new(), "t", &w, GroupLayout { method: Method::MinMax, ..l }).unwrap();
        let refined = QuantizedTensor::quantize(&CpuBackend::new(), "t", &w, l).unwrap();
        let max_code = bits.max_code();
        for g in 0..l.n_groups() {
            let values = &w[l.group_elements(g)];
            let (lo, hi) = group_range(values).unwrap();
            let start = lsq::Grid::from(GroupParams::from_range(lo, hi, max_code).unwrap());
            let kept = lsq::Grid { scale: refined.scales[g], zero: refined.zero_points[g], inv: 1.0 / refined.scales[g] };
            let kept = if kept.scale == start.scale && kept.zero == start.zero { start } else { kept };
            assert!(lsq::evaluate(values, &kept, max_code as f32).sse <= lsq::evaluate(values, &start, max_code as f32).sse, "group {g}");
        }
        let err = |t: &QuantizedTensor| -> f64 {
            let back = t.dequantize(&CpuBackend::new()).unwrap();
            w.iter().zip(&back).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum()
        };
        let gain_db = 10.0 * (err(&minmax) / err(&refined)).log10();
        assert!(gain_db >= min_gain_db, "{bits:?} g{gs}: {gain_db:.2} dB");
        assert!(gain_db > 0.0 || bits == BitWidth::B8, "{bits:?} g{gs}: {gain_db:.2} dB");
    }
}

#[test]
fn groups_min_max_already_fits_keep_min_max_bytes() {
    // Values on the min/max grid (and constant groups): the fit cannot improve them, ties keep
    // min/max, so the bytes are min/max's.
    let w: Vec<f32> = (0..256).map(|i| if i < 128 { (i % 16) as f32 * 0.25 - 1.0 } else { 0.5 }).collect();
    let l = lsq_layout(1, 256, BitWidth::B4, 128);
    let refined = QuantizedTensor::quantize(&CpuBackend::new(), "t", &w, l).unwrap();
    let minmax = QuantizedTensor::quantize(&CpuBackend::new(), "t", &w, GroupLayout { method: Method::MinMax, ..l }).unwrap();
    assert_eq!(refined.packed, minmax.packed);
    assert_eq!(bits_of(&refined.scales), bits_of(&minmax.scales));
    assert_eq!(bits_of(&refined.zero_points), bits_of(&minmax.zero_points));
}

#[test]
fn bad_input_gets_the_min_max_errors() {
    let l = lsq_layout(1, 16, BitWidth::B4, 8);
    let mut w = vec![0.5f32; 16];
    w[11] = f32::NAN;
    let e = QuantizedTensor::quantize(&CpuBackend::new(), "layer.x", &w, l).unwrap_err().to_string();
    assert!(e.contains("layer.x") && e.contains("index 11"), "{e}");
}

/// The GPU backend, and whether it runs lsq: `Some(false)` where its subnormal probe says the
/// adapter flushes subnormals (then lsq must be refused), `None` without an adapter.
#[cfg(feature = "gpu")]
fn gpu() -> Option<(&'static dyn Backend, bool)> {
    use arrow_quant_v2::device::{backend, Device};
    match backend(Device::Gpu) {
        Ok(b) => {
            let flush = arrow_quant_v2::gpu::GpuBackend::shared().unwrap().subnormal_flush().unwrap();
            // lavapipe (CI's adapter) keeps subnormals and passes the self-test: there the
            // tests below must compare bytes, not accept a refusal.
            assert!(flush.is_none() || !b.name().contains("llvmpipe"), "lavapipe must run lsq: {flush:?}");
            // On Vulkan the lsq kernel is our SPIR-V with DenormPreserve (what NVIDIA needs),
            // so lavapipe runs that module in CI, not wgpu's own compilation.
            assert!(!b.name().contains("Vulkan") || arrow_quant_v2::gpu::GpuBackend::shared().unwrap().denorm_preserve(), "{}", b.name());
            Some((b, flush.is_none()))
        }
        Err(e) => {
            assert!(std::env::var("ARROW_QUANT_SKIP_GPU_TESTS").is_ok_and(|v| v == "1"), "no GPU adapter: {e}");
            None
        }
    }
}

/// The GPU's bytes against the reference: equal where it runs lsq, refused where it cannot.
#[cfg(feature = "gpu")]
fn assert_gpu_matches(g: (&'static dyn Backend, bool), w: &[f32], l: GroupLayout) {
    use arrow_quant_v2::QuantError;
    if g.1 {
        assert_matches_reference(g.0, w, l);
    } else {
        match QuantizedTensor::quantize(g.0, "layer.q", w, l) {
            Err(QuantError::Unsupported(m)) => assert!(m.contains("lsq") && m.contains("subnormal"), "{m}"),
            other => panic!("a device that flushes subnormals must refuse lsq, got {:?}", other.map(|t| t.scales.len())),
        }
    }
}

/// Huge magnitudes (about 1e30 and up to 1.6e38, where sums of q×w overflow to inf and the
/// fit stops), ties between two values, and subnormal groups.
fn extreme_layer(rng: &mut common::Rng, l: &GroupLayout) -> Vec<f32> {
    let mut w = vec![0f32; l.n_elements()];
    for g in 0..l.n_groups() {
        let r = l.group_elements(g);
        let n = r.len();
        let vals: Vec<f32> = match g % 5 {
            0 => (0..n).map(|_| rng.normal_ish() * 1e30).collect(),
            1 => (0..n).map(|_| (rng.unit() * 2.0 - 1.0) * 1.7e38).collect(),
            2 => (0..n).map(|i| if i % 2 == 0 { -3e-39 } else { 1e-45 }).collect(),
            3 => (0..n).map(|_| if rng.unit() < 0.5 { 0.25 } else { -0.75 }).collect(),
            _ => (0..n).map(|_| rng.normal_ish() * 1e-38).collect(),
        };
        w[r].copy_from_slice(&vals);
    }
    w
}

#[cfg(feature = "gpu")]
#[test]
fn the_gpu_gives_the_reference_bytes() {
    let Some(g) = gpu() else { return };
    let mut rng = common::Rng(31 | 1);
    for bits in BITS {
        // Row lengths that are not multiples of the group size (short last groups), groups
        // below, at and above the lane count, up to a tile (2048), and above it (4096: run on
        // the CPU by the GPU backend).
        for (rows, row_len, gs) in [(3, 200, 64), (2, 300, 128), (4, 37, 8), (1, 1000, 256), (7, 77, 16), (2, 4100, 2048), (1, 5000, 4096), (64, 384, 64)] {
            let l = lsq_layout(rows, row_len, bits, gs);
            assert_gpu_matches(g, &gaussian(l.n_elements(), rows as u64 * 7 + gs as u64), l);
            assert_gpu_matches(g, &adversarial_layer(&mut rng, &l), l);
            assert_gpu_matches(g, &extreme_layer(&mut rng, &l), l);
        }
    }
}

/// One call with lsq and min/max layers: each runs on its pipeline, each gets its own bytes.
#[cfg(feature = "gpu")]
#[test]
fn the_gpu_runs_mixed_methods_in_one_call() {
    let Some(g) = gpu() else { return };
    if !g.1 {
        return;
    }
    assert_mixed_methods_give_the_reference(g.0);
}

/// "auto" decides per method; a call with both methods runs each run of jobs where its method
/// went (these small ones on the CPU, without a decision), with the reference's bytes, and
/// once both decisions are made the description gives both.
#[test]
fn auto_runs_mixed_methods_in_one_call() {
    use arrow_quant_v2::device::{auto_for, backend, describe, Device};
    assert_mixed_methods_give_the_reference(backend(Device::Auto).unwrap());
    let _ = (auto_for(Method::MinMax), auto_for(Method::Lsq));
    let text = describe(Device::Auto).unwrap();
    assert!(text.contains(&format!("; lsq: {}: {}]", auto_for(Method::Lsq).backend.name(), auto_for(Method::Lsq).reason)), "{text}");
}

/// lsq, min/max and lsq jobs in one call on `b`: each gives the reference's bytes.
fn assert_mixed_methods_give_the_reference(b: &dyn Backend) {
    use arrow_quant_v2::backend::QuantJob;
    let layouts = [lsq_layout(8, 300, BitWidth::B4, 64), GroupLayout { method: Method::MinMax, ..lsq_layout(8, 300, BitWidth::B4, 64) }, lsq_layout(3, 100, BitWidth::B2, 8)];
    let ws: Vec<Vec<f32>> = layouts.iter().enumerate().map(|(i, l)| gaussian(l.n_elements(), i as u64 + 1)).collect();
    let mut outs: Vec<(Vec<u8>, Vec<f32>, Vec<f32>)> = layouts.iter().map(|l| (vec![0; l.packed_len()], vec![0.0; l.n_groups()], vec![0.0; l.n_groups()])).collect();
    let mut jobs: Vec<QuantJob> = outs
        .iter_mut()
        .zip(&ws)
        .zip(&layouts)
        .map(|(((p, s, z), w), &layout)| QuantJob { name: "t", weights: w, layout, packed: p, scales: s, zero_points: z })
        .collect();
    b.quantize(&mut jobs).unwrap();
    drop(jobs);
    for ((w, l), (p, s, z)) in ws.iter().zip(&layouts).zip(&outs) {
        let want = reference_quantize(w, *l);
        assert_eq!(p, &want.packed, "{l:?}");
        assert_eq!(bits_of(s), bits_of(&want.scales), "{l:?}");
        assert_eq!(bits_of(z), bits_of(&want.zero_points), "{l:?}");
    }
}

#[cfg(feature = "gpu")]
#[test]
fn auto_gives_the_reference_bytes() {
    use arrow_quant_v2::device::gpu_with_fallback;
    let l = lsq_layout(256, 4096, BitWidth::B4, 128);
    let w = gaussian(l.n_elements(), 3);
    let want = reference_quantize(&w, l);
    // 2^20 elements: large enough that auto's GPU takes the call when it is allowed to.
    let got = QuantizedTensor::quantize(gpu_with_fallback(), "layer.q", &w, l).unwrap();
    assert_eq!(got.packed, want.packed);
    assert_eq!(bits_of(&got.scales), bits_of(&want.scales));
    assert_eq!(bits_of(&got.zero_points), bits_of(&want.zero_points));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn cpu_matches_reference_on_any_finite_weights(
        rows in 1usize..4,
        row_len in 1usize..300,
        gs in prop::sample::select(vec![8i64, 16, 24, 128]),
        bits in prop::sample::select(BITS.to_vec()),
        seed in any::<u64>(),
    ) {
        let l = lsq_layout(rows, row_len, bits, gs);
        let mut rng = Rng(seed | 1);
        let w = adversarial_layer(&mut rng, &l);
        for backend in BACKENDS {
            assert_matches_reference(&backend, &w, l);
        }
        #[cfg(feature = "gpu")]
        if let Some(g) = gpu() {
            assert_gpu_matches(g, &w, l);
        }
    }
}

//! `method="lsq"`: every CPU flavour and the fused converter kernel against the scalar
//! reference, bit for bit; the refinement never loses to min/max; the GPU refuses it (no GPU
//! kernel yet) and `auto` runs it on the CPU.

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

#[cfg(feature = "gpu")]
#[test]
fn the_gpu_refuses_lsq_and_auto_runs_it_on_the_cpu() {
    use arrow_quant_v2::device::{backend, gpu_with_fallback, Device};
    use arrow_quant_v2::QuantError;
    let l = lsq_layout(256, 4096, BitWidth::B4, 128);
    let w = gaussian(l.n_elements(), 3);
    let want = reference_quantize(&w, l);
    match backend(Device::Gpu) {
        Ok(gpu) => match QuantizedTensor::quantize(gpu, "layer.q", &w, l) {
            Err(QuantError::Unsupported(m)) => assert!(m.contains("lsq") && m.contains("layer.q"), "{m}"),
            other => panic!("the GPU must refuse lsq until it has an exact kernel, got {:?}", other.map(|t| t.scales.len())),
        },
        Err(e) => assert!(std::env::var("ARROW_QUANT_SKIP_GPU_TESTS").is_ok_and(|v| v == "1"), "no GPU adapter: {e}"),
    }
    // 2^20 elements: large enough that auto's GPU would take the call if it could.
    let got = QuantizedTensor::quantize(gpu_with_fallback(), "layer.q", &w, l).unwrap();
    assert_eq!(got.packed, want.packed);
    assert_eq!(bits_of(&got.scales), bits_of(&want.scales));
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
    }
}

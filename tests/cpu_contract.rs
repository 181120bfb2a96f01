//! The CPU backend against the scalar reference, clause by clause of the contract.

mod common;

use arrow_quant_v2::cpu::{CpuBackend, Isa};
use arrow_quant_v2::{BitWidth, GroupLayout, Method, QuantError, QuantizedTensor};
use common::*;
use proptest::prelude::*;

/// Every kernel flavour: AVX-512, AVX2 and portable (a flavour the CPU lacks runs the best
/// one it has, so on an AVX2-only machine two entries test AVX2).
const BACKENDS: [CpuBackend; 3] = [CpuBackend::up_to(Isa::Avx512), CpuBackend::up_to(Isa::Avx2), CpuBackend::portable()];

#[test]
fn exact_two_bit_bytes() {
    // lo = 0, hi = 3, L = 3: scale = inv = 1 and the codes are the values themselves.
    let w = [0.0, 1.0, 2.0, 3.0, 3.0, 2.0, 1.0, 0.0];
    let t = QuantizedTensor::quantize(&CpuBackend::new(), "l", &w, layout(1, 8, BitWidth::B2, 8)).unwrap();
    assert_eq!(t.packed, vec![0b11_10_01_00, 0b00_01_10_11]);
    assert_eq!((t.scales[0], t.zero_points[0]), (1.0, 0.0));
}

#[test]
fn exact_four_bit_bytes_with_tail_group_of_one() {
    // Row of 9: a full group of 8 and a tail group holding one element.
    let w: Vec<f32> = vec![-1.0, 14.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 42.5];
    let t = QuantizedTensor::quantize(&CpuBackend::new(), "l", &w, layout(1, 9, BitWidth::B4, 8)).unwrap();
    // lo = -1, hi = 14, L = 15: scale = 1, codes = w + 1 → 0, 15, 1, 2, 3, 4, 5, 6.
    assert_eq!(t.packed, vec![0xf0, 0x21, 0x43, 0x65, 0x00]);
    assert_eq!(t.scales, vec![1.0, 0.0]);
    assert_eq!(t.zero_points, vec![-1.0, 42.5]);
    assert_eq!(t.dequantize(&CpuBackend::new()).unwrap(), w);
}

#[test]
fn exact_eight_bit_bytes_and_ties_to_even() {
    // lo = 0, hi = 255: scale = inv = 1; 0.5 → 0, 1.5 → 2, 2.5 → 2 (ties to even).
    let w = [0.0, 255.0, 0.5, 1.5, 2.5, 3.5, 254.5, 7.0];
    let t = QuantizedTensor::quantize(&CpuBackend::new(), "l", &w, layout(1, 8, BitWidth::B8, 8)).unwrap();
    assert_eq!(t.packed, vec![0, 255, 0, 2, 2, 4, 254, 7]);
}

#[test]
fn constant_group_dequantizes_exactly() {
    for bits in BITS {
        let w = vec![0.125f32; 24];
        let t = QuantizedTensor::quantize(&CpuBackend::new(), "l", &w, layout(1, 24, bits, 8)).unwrap();
        assert!(t.packed.iter().all(|&b| b == 0));
        assert_eq!(t.scales, vec![0.0; 3]);
        assert_eq!(t.dequantize(&CpuBackend::new()).unwrap(), w);
    }
}

#[test]
fn negative_zero_is_the_minimum_of_zeros() {
    let w = [0.0, -0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
    let t = QuantizedTensor::quantize(&CpuBackend::new(), "l", &w, layout(1, 8, BitWidth::B4, 8)).unwrap();
    assert_eq!(t.zero_points[0].to_bits(), (-0.0f32).to_bits());
}

#[test]
fn nan_is_reported_at_its_first_index_in_the_first_bad_layer() {
    // A small call runs on the calling thread, a large one across the pool: the same error.
    for (rows, row_len, bad) in [(1, 300, 217), (2048, 128, 200_017)] {
        let mut w = vec![0.5f32; rows * row_len];
        w[bad] = f32::NAN;
        w[bad + 33] = f32::INFINITY;
        let err = QuantizedTensor::quantize(&CpuBackend::new(), "blk.0", &w, layout(rows, row_len, BitWidth::B4, 128)).unwrap_err();
        assert!(matches!(err, QuantError::NonFinite { index, .. } if index == bad), "{err:?}");
        assert!(err.to_string().starts_with(&format!("Layer 'blk.0' contains NaN or Inf at index {bad}")), "{err}");
    }
}

#[test]
fn overflowing_range_is_rejected_with_the_layer_name() {
    let mut w = vec![0.0f32; 16];
    w[3] = 3e38;
    w[5] = -3e38;
    let err = QuantizedTensor::quantize(&CpuBackend::new(), "big", &w, layout(1, 16, BitWidth::B8, 8)).unwrap_err();
    assert!(matches!(err, QuantError::RangeOverflow { group: 0, .. }), "{err:?}");
    assert!(err.to_string().contains("'big'"));
}

#[test]
fn adversarial_layers_match_reference() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for bits in BITS {
        for (rows, row_len, gs) in [(3, 9, 8), (2, 257, 16), (5, 128, 128), (1, 1000, 136), (4, 33, 8), (2, 100, 24), (3, 70, 40)] {
            let l = layout(rows, row_len, bits, gs);
            let w = adversarial_layer(&mut rng, &l);
            for backend in BACKENDS {
                assert_matches_reference(&backend, &w, l);
            }
        }
    }
}

/// A call with little work (under 2^17 values; an lsq value counts as 8) runs on the calling
/// thread; a larger one is split across the pool, into even spans over its rows where every row
/// ends on a group boundary (the job is then one long run of groups), else row by row. Each
/// pair of layouts below puts one on each side, with and without a tail group per row.
#[test]
fn calls_on_the_calling_thread_and_across_the_pool_match_reference() {
    let mut rng = Rng(0x5eed);
    for method in [Method::MinMax, Method::Lsq] {
        for bits in BITS {
            for (rows, row_len, gs) in [(16, 64, 32), (4099, 64, 32), (10, 130, 64), (1100, 130, 64)] {
                let l = GroupLayout { method, ..layout(rows, row_len, bits, gs) };
                let w = adversarial_layer(&mut rng, &l);
                for backend in BACKENDS {
                    assert_matches_reference(&backend, &w, l);
                }
            }
        }
    }
}

#[test]
fn a_row_longer_than_one_parallel_span_matches_reference() {
    let mut rng = Rng(7);
    let l = layout(1, 200_003, BitWidth::B4, 136);
    let w: Vec<f32> = (0..l.n_elements()).map(|_| rng.normal_ish()).collect();
    for backend in BACKENDS {
        assert_matches_reference(&backend, &w, l);
    }
}

fn finite_f32() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => -4.0f32..4.0,
        1 => any::<u32>().prop_map(f32::from_bits).prop_filter("finite", |x| x.is_finite() && x.abs() < 1e38),
        1 => Just(0.0f32),
        1 => Just(-0.0f32),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn cpu_matches_reference((l, w) in layout_and_weights()) {
        for backend in BACKENDS {
            assert_matches_reference(&backend, &w, l);
        }
    }

    #[test]
    fn dequantized_error_is_at_most_half_a_step(
        w in prop::collection::vec(-1000.0f32..1000.0, 1..400),
        gs in prop::sample::select(vec![8i64, 32, 128]),
        bits in prop::sample::select(BITS.to_vec()),
    ) {
        let l = layout(1, w.len(), bits, gs);
        let t = QuantizedTensor::quantize(&CpuBackend::new(), "l", &w, l).unwrap();
        let back = t.dequantize(&CpuBackend::new()).unwrap();
        for g in 0..l.n_groups() {
            let (scale, lo) = (t.scales[g], t.zero_points[g]);
            for i in l.group_elements(g) {
                let hi_mag = w[l.group_elements(g)].iter().fold(0f32, |m, x| m.max(x.abs()));
                let bound = scale * 0.5 + scale * 1e-4 + 4.0 * f32::EPSILON * (hi_mag + lo.abs());
                prop_assert!((w[i] - back[i]).abs() <= bound, "element {i}: {} vs {} (scale {scale})", w[i], back[i]);
            }
        }
    }
}

fn layout_and_weights() -> impl Strategy<Value = (arrow_quant_v2::GroupLayout, Vec<f32>)> {
    (1usize..4, 1usize..300, prop::sample::select(vec![8i64, 16, 24, 128]), prop::sample::select(BITS.to_vec()))
        .prop_flat_map(|(rows, row_len, gs, bits)| {
            let l = layout(rows, row_len, bits, gs);
            (Just(l), prop::collection::vec(finite_f32(), l.n_elements()))
        })
}

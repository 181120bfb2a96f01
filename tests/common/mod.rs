//! Shared helpers for the integration tests: adversarial inputs and bitwise comparison.
#![allow(dead_code)]

use arrow_quant_v2::quant::reference;
use arrow_quant_v2::{Backend, BitWidth, GroupLayout, QuantConfig, QuantizedTensor};

pub const BITS: [BitWidth; 3] = [BitWidth::B2, BitWidth::B4, BitWidth::B8];

/// A small deterministic generator (xorshift), so failures reproduce without a seed file.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    pub fn normal_ish(&mut self) -> f32 {
        (0..4).map(|_| self.unit()).sum::<f32>() - 2.0
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Values that stress every clause of the contract: signed zeros, subnormals, huge magnitudes
/// that do not overflow the group width, constants, exact ties, and ordinary weights.
pub fn adversarial_group(rng: &mut Rng, n: usize, kind: usize, bits: BitWidth) -> Vec<f32> {
    let l = bits.max_code() as f32;
    match kind % 8 {
        0 => (0..n).map(|_| rng.normal_ish() * 0.02).collect(),
        1 => (0..n).map(|_| f32::from_bits((rng.next_u64() % 0x0080_0000) as u32 | ((rng.next_u64() & 1) as u32) << 31)).collect(),
        2 => (0..n).map(|i| if i % 3 == 0 { -0.0 } else { 0.0 }).collect(),
        3 => vec![rng.normal_ish(); n],
        // Values on exact half-code ties: lo = 0, hi = L, so (w - lo) * inv = w exactly.
        4 => (0..n).map(|i| if i == 0 { 0.0 } else if i == 1 { l } else { (rng.below(bits.max_code() as usize) as f32) + 0.5 }).collect(),
        5 => (0..n).map(|_| (rng.unit() * 2.0 - 1.0) * 1.6e38).collect(),
        // Next to ties: nudge half-integers one ulp either way.
        6 => (0..n)
            .map(|i| match i {
                0 => 0.0,
                1 => l,
                _ => {
                    let t = rng.below(bits.max_code() as usize) as f32 + 0.5;
                    let b = t.to_bits();
                    f32::from_bits(if rng.next_u64() & 1 == 0 { b + 1 } else { b - 1 })
                }
            })
            .collect(),
        _ => (0..n).map(|_| rng.normal_ish() * 1e-39).collect(),
    }
}

/// A layer of `n_rows × row_len` whose groups cycle through the adversarial kinds.
pub fn adversarial_layer(rng: &mut Rng, layout: &GroupLayout) -> Vec<f32> {
    let mut w = vec![0f32; layout.n_elements()];
    for g in 0..layout.n_groups() {
        let r = layout.group_elements(g);
        let kind = rng.below(8);
        let vals = adversarial_group(rng, r.len(), kind, layout.bit_width);
        w[r].copy_from_slice(&vals);
    }
    w
}

pub fn layout(n_rows: usize, row_len: usize, bits: BitWidth, group_size: i64) -> GroupLayout {
    GroupLayout::new(n_rows, row_len, QuantConfig::new(bits, group_size).unwrap())
}

pub fn reference_quantize(weights: &[f32], layout: GroupLayout) -> QuantizedTensor {
    let mut t = QuantizedTensor {
        layout,
        packed: vec![0; layout.packed_len()],
        scales: vec![0.0; layout.n_groups()],
        zero_points: vec![0.0; layout.n_groups()],
    };
    reference::quantize_layer("ref", weights, &layout, &mut t.packed, &mut t.scales, &mut t.zero_points).unwrap();
    t
}

pub fn bits_of(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Asserts that `backend` gives the reference's bytes, scales, zero points and dequantized
/// floats, all compared as bits.
pub fn assert_matches_reference(backend: &dyn Backend, weights: &[f32], layout: GroupLayout) {
    let want = reference_quantize(weights, layout);
    let got = QuantizedTensor::quantize(backend, "layer", weights, layout).unwrap();
    assert_eq!(got.packed, want.packed, "packed codes differ for {layout:?}");
    assert_eq!(bits_of(&got.scales), bits_of(&want.scales), "scales differ for {layout:?}");
    assert_eq!(bits_of(&got.zero_points), bits_of(&want.zero_points), "zero points differ for {layout:?}");
    let mut want_back = vec![0f32; layout.n_elements()];
    reference::dequantize_layer(&layout, &want.packed, &want.scales, &want.zero_points, &mut want_back);
    let got_back = got.dequantize(backend).unwrap();
    assert_eq!(bits_of(&got_back), bits_of(&want_back), "dequantized values differ for {layout:?}");
}

/// The shared GPU backend for the GPU tests (lavapipe in CI), or None when
/// `ARROW_QUANT_SKIP_GPU_TESTS=1` says there is no adapter to test; without an adapter
/// otherwise, a panic: a missing GPU must not pass silently.
#[cfg(feature = "gpu")]
pub fn shared_gpu() -> Option<&'static arrow_quant_v2::gpu::GpuBackend> {
    match arrow_quant_v2::gpu::GpuBackend::shared() {
        Ok(b) => Some(b),
        Err(e) if std::env::var("ARROW_QUANT_SKIP_GPU_TESTS").is_ok_and(|v| v == "1") => {
            eprintln!("skipping GPU test: {e}");
            None
        }
        Err(e) => panic!("no GPU adapter for the GPU tests ({e}); set ARROW_QUANT_SKIP_GPU_TESTS=1 to skip"),
    }
}

//! Small checkpoints for the model tests, written with the `safetensors` crate (or by hand,
//! for the corrupted ones).

#![allow(dead_code)]

use std::path::Path;

use half::{bf16, f16};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

/// Deterministic pseudo-random values in [-1, 1).
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

pub fn bytes(dtype: Dtype, v: &[f32]) -> Vec<u8> {
    match dtype {
        Dtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Dtype::F16 => v.iter().flat_map(|x| f16::from_f32(*x).to_le_bytes()).collect(),
        Dtype::BF16 => v.iter().flat_map(|x| bf16::from_f32(*x).to_le_bytes()).collect(),
        _ => panic!("unsupported in tests"),
    }
}

pub struct T {
    pub name: &'static str,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

pub fn t(name: &'static str, dtype: Dtype, shape: &[usize], seed: u64) -> T {
    let n = shape.iter().product();
    T { name, dtype, shape: shape.to_vec(), values: values(n, seed) }
}

pub fn write(path: &Path, tensors: &[T]) {
    let data: Vec<Vec<u8>> = tensors.iter().map(|t| bytes(t.dtype, &t.values)).collect();
    let views: Vec<(&str, TensorView)> = tensors
        .iter()
        .zip(&data)
        .map(|(t, d)| (t.name, TensorView::new(t.dtype, t.shape.clone(), d).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// A file with a hand-written header (for corruption cases).
pub fn write_raw(path: &Path, header: &str, data_len: usize) {
    let mut h = header.as_bytes().to_vec();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(vec![0u8; data_len]);
    std::fs::write(path, out).unwrap();
}

/// A model with a conv weight, a linear weight, a bias and a norm in F16, BF16 and F32.
pub fn small_model() -> Vec<T> {
    vec![
        t("conv.weight", Dtype::F16, &[64, 32, 3, 3], 1),
        t("conv.bias", Dtype::F32, &[64], 2),
        t("linear.weight", Dtype::BF16, &[64, 256], 3),
        t("proj.weight", Dtype::F32, &[96, 128], 4),
        t("norm.weight", Dtype::F32, &[128], 5),
        t("tiny.weight", Dtype::F32, &[8, 32], 6),
    ]
}

//! ggml's block types on the GPU against the CPU encoder (whose bytes are ggml's: see
//! tests/ggml_blocks.rs), byte for byte, on adversarial rows, on every float exponent, and over
//! several chunks; and the types and options the GPU refuses. Runs on whatever adapter wgpu
//! finds (lavapipe in CI). Without an adapter these tests fail, unless
//! `ARROW_QUANT_SKIP_GPU_TESTS=1` is set.

mod common;
mod model_common;

use arrow_quant_v2::error::QuantError;
use arrow_quant_v2::gpu::{
    ggml::{self_test_rows, unit_blocks},
    GpuBackend, Stages,
};
use arrow_quant_v2::quant::ggml::{self, GgmlType};
use common::Rng;

fn gpu() -> Option<&'static GpuBackend> {
    common::shared_gpu()
}

const TYPES: [GgmlType; 10] = [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K];

fn cpu_bytes(ty: GgmlType, x: &[f32], n_per_row: usize) -> Vec<u8> {
    cpu_bytes_w(ty, x, n_per_row, None)
}

fn cpu_bytes_w(ty: GgmlType, x: &[f32], n_per_row: usize, imatrix: Option<&[f32]>) -> Vec<u8> {
    let mut out = vec![0u8; ggml::check_rows(ty, x.len(), n_per_row, imatrix).unwrap()];
    ggml::quantize(ty, x, n_per_row, imatrix, &mut out).unwrap();
    out
}

/// GPU bytes, or None where this adapter refuses the type (a device that flushes subnormals):
/// then the refusal must say why.
fn gpu_bytes(g: &GpuBackend, ty: GgmlType, x: &[f32], n_per_row: usize) -> Option<Vec<u8>> {
    gpu_bytes_w(g, ty, x, n_per_row, None)
}

fn gpu_bytes_w(g: &GpuBackend, ty: GgmlType, x: &[f32], n_per_row: usize, imatrix: Option<&[f32]>) -> Option<Vec<u8>> {
    gpu_run(g, ty, x, n_per_row, imatrix).map(|(out, _)| out)
}

/// The GPU's bytes and where its time went (and how many blocks it left to the CPU); `None`
/// where the adapter refuses the type because it flushes subnormals.
fn gpu_run(g: &GpuBackend, ty: GgmlType, x: &[f32], n_per_row: usize, imatrix: Option<&[f32]>) -> Option<(Vec<u8>, Stages)> {
    let mut out = vec![0u8; ggml::check_rows(ty, x.len(), n_per_row, imatrix).unwrap()];
    match g.quantize_ggml(ty, x, n_per_row, imatrix, &mut out) {
        Ok(stages) => Some((out, stages)),
        Err(QuantError::Unsupported(why)) => {
            assert!(g.subnormal_flush().unwrap().is_some(), "{ty} refused on an adapter that keeps subnormals: {why}");
            assert!(why.contains("subnormal"), "{why}");
            None
        }
        Err(e) => panic!("{ty}: {e}"),
    }
}

fn assert_same(ty: GgmlType, got: &[u8], want: &[u8], what: &str) {
    let (_, bytes) = ty.block();
    if let Some(b) = got.chunks(bytes).zip(want.chunks(bytes)).position(|(a, b)| a != b) {
        panic!("{ty} {what}: block {b} differs: gpu {:02x?} cpu {:02x?}", &got[b * bytes..(b + 1) * bytes], &want[b * bytes..(b + 1) * bytes]);
    }
    assert_eq!(got.len(), want.len());
}

#[test]
fn adversarial_blocks_give_the_cpus_bytes() {
    let Some(g) = gpu() else { return };
    for ty in TYPES {
        let x = self_test_rows(ty);
        let (qk, _) = ty.block();
        if let Some(got) = gpu_bytes(g, ty, &x, qk) {
            assert_same(ty, &got, &cpu_bytes(ty, &x, qk), "self-test rows");
        }
        // The same blocks as rows of two and of three blocks (the pairs of one invocation differ).
        for row in [2 * qk, 3 * qk] {
            let n = x.len() / row * row;
            if let Some(got) = gpu_bytes(g, ty, &x[..n], row) {
                assert_same(ty, &got, &cpu_bytes(ty, &x[..n], row), &format!("self-test rows of {row}"));
            }
        }
    }
}

#[test]
fn every_exponent_and_odd_block_counts_give_the_cpus_bytes() {
    let Some(g) = gpu() else { return };
    for ty in TYPES {
        let (qk, _) = ty.block();
        let mut rng = Rng(0x5eed);
        // Any finite bit pattern (subnormals, huge values whose scale overflows f16 or whose
        // range overflows f32: flagged and redone on the CPU), and blocks of one exponent band.
        let blocks = if qk == 32 { 301 } else { 13 };
        let mut x: Vec<f32> = (0..qk * blocks)
            .map(|_| loop {
                let v = f32::from_bits(rng.next_u64() as u32);
                if v.is_finite() {
                    break v;
                }
            })
            .collect();
        let per_band = if qk == 32 { 7 } else { 2 };
        for band in [-149i32, -140, -126, -100, -60, -20, -5, 0, 5, 10, 15, 16, 17, 100, 127] {
            x.extend((0..qk * per_band).map(|_| (rng.unit() - 0.5) * 2f32.powi(band)));
        }
        if qk != 32 {
            // bands of sixteen and thirty-two: the sub-blocks of one block at different scales
            for band in [-140i32, -100, -40, -10, 0, 12] {
                x.extend((0..qk).map(|i| (rng.unit() - 0.5) * 2f32.powi(band + (i / 16 % 5) as i32 * 4)));
                x.extend((0..qk).map(|i| (rng.unit() - 0.5) * 2f32.powi(band - (i / 32 % 3) as i32 * 9)));
            }
        }
        for n in [qk, 2 * qk, 3 * qk, x.len()] {
            let Some(got) = gpu_bytes(g, ty, &x[..n], qk) else { continue };
            assert_same(ty, &got, &cpu_bytes(ty, &x[..n], qk), &format!("{n} values"));
        }
    }
}

#[test]
fn layers_larger_than_a_chunk_give_the_cpus_bytes() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng(42);
    // More than two chunks, rows of five blocks, an odd number of rows: the last chunk ends on
    // half a pair.
    for (ty, qk) in [(GgmlType::Q4_0, 32), (GgmlType::Q8_0, 32), (GgmlType::Q2_K, 256), (GgmlType::Q3_K, 256), (GgmlType::Q4_K, 256), (GgmlType::Q5_K, 256), (GgmlType::Q6_K, 256)] {
        assert!(TYPES.contains(&ty));
        let row = qk * 5;
        let rows = (g.chunk_bytes() / 4 * 2 / row + 3) | 1;
        let n = rows * row;
        // weights of a model's size, with an outlier now and then
        let x: Vec<f32> = (0..n).map(|_| rng.normal_ish() * if rng.below(997) == 0 { 3.0 } else { 0.05 }).collect();
        let Some(got) = gpu_bytes(g, ty, &x, row) else { continue };
        assert_same(ty, &got, &cpu_bytes(ty, &x, row), "a multi-chunk layer");
    }
}

#[test]
fn types_and_options_without_a_kernel_are_refused_with_the_reason() {
    let Some(g) = gpu() else { return };
    let x = vec![0.5f32; 256 * 2];
    let w = vec![1f32; 256];
    // Every quantized type has a kernel: the float types are the ones without.
    for ty in [GgmlType::F16, GgmlType::BF16] {
        let name = ty.name().to_ascii_lowercase();
        let mut out = vec![0u8; ggml::check_rows(ty, x.len(), 256, None).unwrap()];
        match g.quantize_ggml(ty, &x, 256, None, &mut out) {
            Err(QuantError::Unsupported(why)) => assert!(why.contains(&format!("{name} has no GPU kernel")) && why.contains("device='cpu'"), "{why}"),
            other => panic!("{name} on the GPU: {other:?}"),
        }
    }
    // With an importance matrix too; the message lists the types the GPU encodes.
    let names = TYPES.iter().map(|t| t.name().to_ascii_lowercase()).collect::<Vec<_>>().join(", ");
    let listed = format!("encodes {names}, with an importance matrix or without");
    let mut out = vec![0u8; ggml::check_rows(GgmlType::F16, x.len(), 256, None).unwrap()];
    match g.quantize_ggml(GgmlType::F16, &x, 256, Some(&w), &mut out) {
        Err(QuantError::Unsupported(why)) => assert!(why.contains("f16 has no GPU kernel") && why.contains(&listed), "{why}"),
        other => panic!("f16 with an imatrix on the GPU: {other:?}"),
    }
    // Shapes are checked as on the CPU.
    let mut short = vec![0u8; 3];
    assert!(matches!(g.quantize_ggml(GgmlType::Q8_0, &x, 256, None, &mut short), Err(QuantError::InvalidValue { .. })));
    assert!(matches!(g.quantize_ggml(GgmlType::Q8_0, &x[..40], 40, None, &mut short), Err(QuantError::InvalidValue { .. })));
}

/// A whole model through the converter: `--device gpu` writes the file `--device cpu` writes,
/// byte for byte, for every type and for mixes of them.
#[test]
fn the_converter_writes_the_same_file_on_the_gpu() {
    use arrow_quant_v2::device::Device;
    use arrow_quant_v2::gguf::mix::FileType;
    use arrow_quant_v2::model::{convert, NoProgress, Options, QuantType};

    let Some(g) = gpu() else { return };
    if g.subnormal_flush().unwrap().is_some() {
        return; // refused here: covered by gpu_bytes's refusal checks
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("m.safetensors");
    model_common::write(&src, &model_common::small_model());
    for ft in [FileType::Q4_0, FileType::Q4_1, FileType::Q5_0, FileType::Q5_1, FileType::Q8_0, FileType::Q2_K, FileType::Q3_K_M, FileType::Q4_K_S, FileType::Q5_K_M, FileType::Q6_K, FileType::Q4_K_M] {
        let mut files = Vec::new();
        for device in [Device::Cpu, Device::Gpu] {
            let dst = dir.path().join(format!("m-{device:?}.gguf"));
            let opts = Options { qtype: Some(QuantType::Gguf(ft)), device, ..Options::default() };
            convert(&src, &dst, &opts, &mut NoProgress).unwrap();
            files.push(std::fs::read(&dst).unwrap());
        }
        assert!(files[0] == files[1], "{ft:?}: the GPU's file differs from the CPU's");
    }
}

/// Many K-quant blocks, each drawn from a mix of hazards at a random magnitude (2^-44 to 2^11,
/// so some pass the kernels' input bounds and are flagged): sub-blocks of different scales,
/// zeros, values on a grid and its ties, one sign only, outliers. (Run once with 200,000 blocks
/// and another seed: byte-equal too.)
#[test]
fn mixed_k_blocks_give_the_cpus_bytes() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng(0xc0ffee);
    let mut x = Vec::new();
    for b in 0..20_000 {
        let e = rng.below(56) as i32 - 44;
        let s = 2f32.powi(e);
        let kind = b % 7;
        let base: Vec<f32> = (0..256i32)
            .map(|i| {
                let v = rng.normal_ish();
                match kind {
                    0 => v * s,
                    1 => v * s * 2f32.powi(-(i / 16 % 4) * 7),
                    2 => if rng.below(3) == 0 { 0.0 } else { v * s },
                    3 => (rng.below(9) as f32 - 4.0) * s,
                    4 => (v.abs() + 0.1) * s,
                    5 => if i / 32 == 3 { 0.0 } else { (rng.below(33) as f32 - 16.0) * 0.5 * s },
                    _ => v * s * if rng.below(50) == 0 { 30.0 } else { 1.0 },
                }
            })
            .collect();
        x.extend(base);
    }
    for ty in [GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K] {
        let Some(got) = gpu_bytes(g, ty, &x, 256) else { continue };
        assert_same(ty, &got, &cpu_bytes(ty, &x, 256), "mixed blocks");
    }
}

/// Importance rows of `n` weights of each kind: random (many magnitudes), zeros, one huge weight
/// (1e30, past the kernels' bound: flagged), tiny (1e-38 and subnormals), a mix of all with
/// weights at the bound 2^15 and just below it, weights of both signs, and large uniform ones
/// (2^13..2^15: with large blocks, the weighted K searches' sums pass their guards' bounds).
fn imatrices(n: usize, rng: &mut Rng) -> Vec<(&'static str, Vec<f32>)> {
    let random: Vec<f32> = (0..n).map(|i| rng.unit() * [1.0, 50.0, 1.0e-3, 2.0e4][i % 4]).collect();
    let mut one_huge: Vec<f32> = (0..n).map(|_| rng.unit()).collect();
    one_huge[n / 3 + 1] = 1.0e30;
    let tiny: Vec<f32> = (0..n).map(|i| if i % 3 == 0 { f32::from_bits(1 + rng.below(1000) as u32) } else { 1.0e-38 * rng.unit() }).collect();
    let mixed: Vec<f32> = (0..n)
        .map(|i| match rng.below(7) {
            0 => 0.0,
            1 => 1.0e-38,
            2 => f32::from_bits(1 + i as u32),
            3 => 32767.0,
            4 => 32768.0,
            5 => rng.unit() * 1.0e3,
            _ => rng.unit(),
        })
        .collect();
    let signed: Vec<f32> = (0..n).map(|i| (rng.unit() - 0.3) * [1.0, 40.0, 1.0e-2][i % 3]).collect();
    let large: Vec<f32> = (0..n).map(|_| 8192.0 * (1.0 + 2.9 * rng.unit())).collect();
    vec![("random", random), ("zeros", vec![0.0; n]), ("one-huge", one_huge), ("tiny", tiny), ("mixed", mixed), ("signed", signed), ("large", large)]
}

/// Every type with an importance matrix of each kind, on the adversarial rows of the self-test
/// and on random finite bit patterns, in rows of three and of five blocks (pairs straddle rows;
/// each block has its column's weights and its row's sigma2).
#[test]
fn imatrix_rows_give_the_cpus_bytes() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng(0x1a7);
    for ty in TYPES {
        let (qk, _) = ty.block();
        let adversarial = self_test_rows(ty);
        let random: Vec<f32> = (0..qk * 150)
            .map(|_| loop {
                let v = f32::from_bits(rng.next_u64() as u32);
                if v.is_finite() {
                    break v;
                }
            })
            .collect();
        // Rows of one exponent band each (a row's sigma2 stays in range): most blocks on the GPU.
        let banded: Vec<f32> = (0..qk * 150).map(|i| (rng.unit() - 0.5) * 2f32.powi([-140, -100, -30, -3, 0, 4, 12, 15][i / (qk * 15) % 8])).collect();
        for (rows, x) in [("adversarial", &adversarial), ("random bits", &random), ("banded", &banded)] {
            for row in [3 * qk, 5 * qk] {
                let n = x.len() / row * row;
                for (kind, w) in imatrices(row, &mut rng) {
                    let Some(got) = gpu_bytes_w(g, ty, &x[..n], row, Some(&w)) else { continue };
                    assert_same(ty, &got, &cpu_bytes_w(ty, &x[..n], row, Some(&w)), &format!("{rows} rows of {row}, imatrix {kind}"));
                }
            }
        }
    }
}

/// With an importance matrix over more than two chunks, in rows of seven blocks: the chunks
/// start inside rows, so a block's column and row come from the call, not the chunk.
#[test]
fn imatrix_layers_larger_than_a_chunk_give_the_cpus_bytes() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng(7);
    for ty in TYPES {
        let (qk, _) = ty.block();
        let row = qk * 7;
        let rows = (g.chunk_bytes() / 4 * 2 / row + 3) | 1;
        assert!(!(g.chunk_bytes() / 4 / qk / unit_blocks(ty) * unit_blocks(ty)).is_multiple_of(7), "a chunk must not hold whole rows");
        let x: Vec<f32> = (0..rows * row).map(|i| rng.normal_ish() * if rng.below(997) == 0 { 3.0 } else { 0.05 } * (1.0 + (i / row % 5) as f32)).collect();
        let w: Vec<f32> = (0..row).map(|i| rng.unit() * 10.0 * (1 + i / qk) as f32).collect();
        let Some(got) = gpu_bytes_w(g, ty, &x, row, Some(&w)) else { continue };
        assert_same(ty, &got, &cpu_bytes_w(ty, &x, row, Some(&w)), "a multi-chunk layer with an imatrix");
    }
}

/// Weights of real magnitudes (small, with outliers) and importance rows like llama-imatrix's
/// (means of squared activations, up to 10^3): the kernel encodes every block itself, none is
/// left to the CPU. (Byte equality alone cannot see a kernel whose bounds are too tight: the
/// CPU's redo gives the right bytes.)
#[test]
fn real_magnitudes_stay_on_the_gpu() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng(21);
    for ty in TYPES {
        let (qk, _) = ty.block();
        let row = qk * 5;
        let x: Vec<f32> = (0..row * 40).map(|_| rng.normal_ish() * if rng.below(500) == 0 { 2.0 } else { 0.03 }).collect();
        let w: Vec<f32> = (0..row).map(|_| rng.unit().powi(3) * 1.0e3 + 1.0e-4).collect();
        for imatrix in [None, Some(&w[..])] {
            let Some((out, stages)) = gpu_run(g, ty, &x, row, imatrix) else { return };
            let what = if imatrix.is_some() { "with an importance matrix" } else { "without one" };
            assert_eq!(stages.redone, 0, "{ty} {what}: blocks of real magnitudes were left to the CPU");
            assert_same(ty, &out, &cpu_bytes_w(ty, &x, row, imatrix), what);
        }
    }
}

/// Layers the kernels leave to the CPU: values past the K types' and the weighted searches'
/// bound (2^16) everywhere (every block flagged; the 32-element types without an importance
/// matrix have no such bound and keep them), and an importance matrix with one column past its
/// bound (one block of every row flagged, redone from its whole row); the CPU's bytes, and
/// `redone` says how many.
#[test]
fn layers_left_to_the_cpu_give_the_cpus_bytes() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng(5);
    for ty in TYPES {
        let (qk, _) = ty.block();
        let row = qk * 3;
        let huge: Vec<f32> = (0..row * 9).map(|_| rng.normal_ish() * 3.0e5).collect();
        let x: Vec<f32> = (0..row * 9).map(|_| rng.normal_ish() * 0.05).collect();
        let w: Vec<f32> = (0..row).map(|_| rng.unit() + 0.1).collect();
        let mut one_huge = w.clone();
        one_huge[qk + 7] = 1.0e6;
        let k = qk == 256;
        let weighted = ty != GgmlType::Q8_0; // Q8_0 ignores the importance matrix
        let cases = [
            ("huge values", &huge, None, if k { 27 } else { 0 }),
            ("huge values with an importance matrix", &huge, Some(&w[..]), if weighted { 27 } else { 0 }),
            ("one huge importance", &x, Some(&one_huge[..]), if weighted { 9 } else { 0 }),
        ];
        for (what, x, imatrix, flagged) in cases {
            let Some((out, stages)) = gpu_run(g, ty, x, row, imatrix) else { return };
            // A pair is redone whole: a flagged block's neighbour may come along.
            assert!(stages.redone >= flagged && stages.redone <= 2 * flagged, "{ty} {what}: {} blocks redone, {flagged} expected", stages.redone);
            assert_same(ty, &out, &cpu_bytes_w(ty, x, row, imatrix), what);
        }
    }
}

/// An importance matrix in llama.cpp's legacy .dat format (ncall 1).
fn write_imatrix_dat(path: &std::path::Path, entries: &[(&str, Vec<f32>)]) {
    let mut b = Vec::new();
    b.extend((entries.len() as i32).to_le_bytes());
    for (name, v) in entries {
        b.extend((name.len() as i32).to_le_bytes());
        b.extend(name.as_bytes());
        b.extend(1i32.to_le_bytes());
        b.extend((v.len() as i32).to_le_bytes());
        for x in v {
            b.extend(x.to_le_bytes());
        }
    }
    std::fs::write(path, b).unwrap();
}

/// The converter with an importance matrix: `--device gpu` writes the file `--device cpu` writes,
/// with a 3-D tensor whose slices each have their own importance row.
#[test]
fn the_converter_writes_the_same_file_with_an_imatrix_on_the_gpu() {
    use arrow_quant_v2::device::Device;
    use arrow_quant_v2::gguf::mix::FileType;
    use arrow_quant_v2::model::{convert, Options, Progress, QuantType};
    use safetensors::Dtype;

    struct Notes(Vec<String>);
    impl Progress for Notes {
        fn message(&mut self, line: &str) {
            self.0.push(line.to_string());
        }
    }
    let Some(g) = gpu() else { return };
    if g.subnormal_flush().unwrap().is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("m.safetensors");
    let mut model = model_common::small_model();
    model.push(model_common::t("experts.weight", Dtype::F32, &[4, 64, 96], 7));
    model_common::write(&src, &model);
    let mut rng = Rng(99);
    let mut row = |n: usize| -> Vec<f32> { (0..n).map(|i| if i % 13 == 0 { 0.0 } else { rng.unit() * 4.0 }).collect() };
    let mut experts = Vec::new();
    for s in 0..4 {
        experts.extend(row(96).into_iter().map(|v| v * (s + 1) as f32));
    }
    let imatrix = dir.path().join("m.imatrix.dat");
    write_imatrix_dat(&imatrix, &[("linear.weight", row(256)), ("proj.weight", row(128)), ("tiny.weight", row(32)), ("experts.weight", experts)]);
    for ft in [FileType::Q4_0, FileType::Q4_1, FileType::Q5_0, FileType::Q5_1, FileType::Q8_0, FileType::Q2_K, FileType::Q3_K_M, FileType::Q4_K_M, FileType::Q5_K_S, FileType::Q6_K] {
        let mut files = Vec::new();
        let mut notes = Notes(Vec::new());
        for device in [Device::Cpu, Device::Gpu] {
            let dst = dir.path().join(format!("m-{device:?}.gguf"));
            let opts = Options { qtype: Some(QuantType::Gguf(ft)), device, imatrix: Some(imatrix.clone()), ..Options::default() };
            convert(&src, &dst, &opts, &mut notes).unwrap();
            files.push(std::fs::read(&dst).unwrap());
        }
        assert!(files[0] == files[1], "{ft:?} with an imatrix: the GPU's file differs from the CPU's");
        assert!(!notes.0.iter().any(|n| n.contains("no entry for")), "{ft:?}: {:?}", notes.0);
    }
}

//! ggml's block formats: the bytes of ggml itself (tests/data/ggml/golden.json, written by
//! `ggml_quantize_chunk` of ggml 0.20.2 on an input regenerated here bit for bit), every SIMD
//! level equal to the one-lane reference on awkward shapes and values, decoding, and errors.
//! (tests/python/test_gguf*.py compares with ggml on real weights through ctypes.)

use arrow_quant_v2::quant::ggml::{self, GgmlType, Simd, QK_K};

const ROWS: usize = 64;
const COLS: usize = 512;

/// The golden input: a multiplicative hash per index, exact float steps only (the generator
/// does the same in numpy).
fn unit(i: usize, seed: u64) -> f32 {
    let h = ((i as u64 + seed).wrapping_mul(2654435761)) & 0xffff_ffff;
    (h >> 8) as f32 / (1u32 << 24) as f32 - 0.5
}

fn golden_input() -> (Vec<f32>, Vec<f32>) {
    let mut x = vec![0f32; ROWS * COLS];
    for r in (0..4).chain(8..ROWS) {
        for i in 0..COLS {
            x[r * COLS + i] = unit(i + r * COLS, 1) * ((r % 7 + 1) as f32 / 32.0);
            if r >= 8 && r % 2 == 0 && i % 37 == r % 37 {
                x[r * COLS + i] *= 16.0;
            }
        }
    }
    for i in 0..COLS {
        x[5 * COLS + i] = ((i % 32) as f32) - 16.0;
        x[6 * COLS + i] = unit(i, 2) * 2f32.powi(-10);
        x[7 * COLS + i] = unit(i, 3) * 2f32.powi(-126);
    }
    x[6 * COLS + 7] = 50.0;
    let w = (0..COLS).map(|i| (unit(i, 4) + 0.51) * if i % 5 == 0 { 64.0 } else { 1.0 }).collect();
    (x, w)
}

fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> String {
    let mut h = 0xcbf29ce484222325u64;
    for b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

fn fnv1a_f32(values: &[f32]) -> String {
    fnv1a(values.iter().flat_map(|v| v.to_le_bytes()))
}

fn encode(simd: Simd, ty: GgmlType, x: &[f32], n_per_row: usize, imatrix: Option<&[f32]>) -> Vec<u8> {
    let mut out = vec![0u8; ggml::check_rows(ty, x.len(), n_per_row, imatrix).unwrap()];
    ggml::quantize_with(simd, ty, x, n_per_row, imatrix, &mut out).unwrap();
    out
}

/// The first differing block, for messages.
fn first_difference(ty: GgmlType, a: &[u8], b: &[u8]) -> Option<usize> {
    let (_, bytes) = ty.block();
    a.chunks(bytes).zip(b.chunks(bytes)).position(|(x, y)| x != y)
}

#[test]
fn every_type_equals_ggml_at_every_simd_level() {
    let golden: serde_json::Value = serde_json::from_str(include_str!("data/ggml/golden.json")).unwrap();
    let (x, w) = golden_input();
    assert_eq!(fnv1a_f32(&x), golden["input_fnv1a"].as_str().unwrap(), "the golden input was not regenerated exactly");
    assert_eq!(fnv1a_f32(&w), golden["imatrix_fnv1a"].as_str().unwrap());
    for &ty in GgmlType::QUANTIZED {
        for imatrix in [None, Some(w.as_slice())] {
            let key = format!("{}{}", ty.name().to_ascii_lowercase(), if imatrix.is_some() { "+imatrix" } else { "" });
            let want: Vec<&str> = golden["blocks"][&key].as_array().unwrap_or_else(|| panic!("no golden for {key}")).iter().map(|v| v.as_str().unwrap()).collect();
            for simd in Simd::available() {
                let got = encode(simd, ty, &x, COLS, imatrix);
                let row_bytes = got.len() / ROWS;
                let differ: Vec<usize> = (0..ROWS).filter(|&r| fnv1a(got[r * row_bytes..(r + 1) * row_bytes].iter().copied()) != want[r]).collect();
                assert!(differ.is_empty(), "{key} ({}): rows {differ:?} differ from ggml", simd.name());
            }
        }
    }
}

/// Values that exercise the odd paths: ties, zeros, a constant row, one outlier, subnormals,
/// huge values (inf scales, NaN intermediates), mixed signs.
fn awkward(rows: usize, cols: usize) -> Vec<f32> {
    let mut x = vec![0f32; rows * cols];
    for r in 0..rows {
        let row = &mut x[r * cols..(r + 1) * cols];
        for (i, v) in row.iter_mut().enumerate() {
            let u = unit(i + r * cols, 7);
            *v = match r % 9 {
                0 => u * 0.1,
                1 => 0.0,
                2 => 0.37,
                3 => if i == 5 { 40.0 } else { u * 1e-3 },
                4 => u * 2f32.powi(-128),
                5 => if i % 2 == 0 { 3.0e38 } else { -3.0e38 },
                6 => ((i % 32) as f32 - 16.0) * 0.5,
                7 => if i % 3 == 0 { 0.0 } else { u * 1e6 },
                _ => -(u.abs()) - 0.25,
            };
        }
    }
    x
}

#[test]
fn simd_levels_equal_the_reference_on_awkward_rows_and_ragged_block_counts() {
    let levels = Simd::available();
    assert!(levels.contains(&Simd::Scalar) && levels.contains(&Simd::Portable));
    for &ty in GgmlType::QUANTIZED {
        let (block, _) = ty.block();
        // 3 blocks per row and 11 rows: the last SIMD step is always partial
        let cols = 3 * block;
        let x = awkward(11, cols);
        let w: Vec<f32> = (0..cols).map(|i| unit(i, 9).abs() * 4.0).collect();
        for imatrix in [None, Some(w.as_slice())] {
            let reference = encode(Simd::Scalar, ty, &x, cols, imatrix);
            for &simd in &levels[1..] {
                let got = encode(simd, ty, &x, cols, imatrix);
                assert!(
                    got == reference,
                    "{ty} imatrix={} {}: block {:?} differs from the one-lane reference",
                    imatrix.is_some(),
                    simd.name(),
                    first_difference(ty, &got, &reference)
                );
            }
        }
    }
}

#[test]
fn rows_are_independent_of_how_they_are_split() {
    // The same rows quantized together and one at a time (thread chunks, SIMD groups) agree.
    let x = awkward(9, 2 * QK_K);
    let w: Vec<f32> = (0..2 * QK_K).map(|i| unit(i, 11).abs()).collect();
    for &ty in GgmlType::QUANTIZED {
        let all = encode(Simd::detect(), ty, &x, 2 * QK_K, Some(&w));
        let row_bytes = all.len() / 9;
        for r in 0..9 {
            let one = encode(Simd::detect(), ty, &x[r * 2 * QK_K..(r + 1) * 2 * QK_K], 2 * QK_K, Some(&w));
            assert_eq!(one, all[r * row_bytes..(r + 1) * row_bytes], "{ty} row {r}");
        }
    }
}

#[test]
fn decoding_inverts_encoding_within_the_format_error() {
    let x: Vec<f32> = (0..4 * QK_K).map(|i| unit(i, 5) * 2.0).collect();
    for &ty in GgmlType::QUANTIZED {
        let q = encode(Simd::detect(), ty, &x, QK_K, None);
        let mut back = vec![0f32; x.len()];
        ggml::dequantize(ty, &q, &mut back).unwrap();
        let err = x.iter().zip(&back).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        // the widest step of each format on values in [-1, 1)
        let bound = match ty.code_bits() {
            2 => 0.5,
            3 => 0.3,
            4 => 0.15,
            5 => 0.07,
            6 => 0.035,
            _ => 0.01,
        };
        assert!(err < bound, "{ty}: max error {err} >= {bound}");
    }
    // plain floats round-trip exactly (bf16/f16 of values they hold exactly)
    let h: Vec<f32> = (0..64).map(|i| (i as f32 - 32.0) * 0.25).collect();
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
        let q = encode(Simd::detect(), ty, &h, 64, None);
        let mut back = vec![0f32; 64];
        ggml::dequantize(ty, &q, &mut back).unwrap();
        assert_eq!(back, h, "{ty}");
    }
}

#[test]
fn shapes_and_importance_rows_are_checked() {
    let x = vec![0.5f32; 384];
    let e = ggml::check_rows(GgmlType::Q4_K, x.len(), 384, None).unwrap_err().to_string();
    assert!(e.contains("multiple of 256") && e.contains("384"), "{e}");
    let e = ggml::check_rows(GgmlType::Q4_0, x.len(), 100, None).unwrap_err().to_string();
    assert!(e.contains("not whole rows"), "{e}");
    let e = ggml::check_rows(GgmlType::Q4_0, x.len(), 384, Some(&[1.0; 10])).unwrap_err().to_string();
    assert!(e.contains("10 values") && e.contains("384"), "{e}");
    let e = ggml::check_rows(GgmlType::Q4_0, x.len(), 384, Some(&[f32::NAN; 384])).unwrap_err().to_string();
    assert!(e.contains("non-finite"), "{e}");
    let e = ggml::check_rows(GgmlType::IQ2_XXS, 256, 256, None).unwrap_err().to_string();
    assert!(e.contains("cannot quantize to IQ2_XXS"), "{e}");
    let mut out = vec![0u8; 3];
    assert!(ggml::quantize(GgmlType::Q4_0, &x, 384, None, &mut out).is_err());
    let mut back = vec![0f32; 32];
    assert!(ggml::dequantize(GgmlType::Q4_0, &[0u8; 17], &mut back).is_err());
}

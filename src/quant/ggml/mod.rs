//! ggml's block formats (the GGUF tensor types), defined to give the bytes of ggml's own
//! quantizer `ggml_quantize_chunk` (ggml 0.20.x, `ggml-quants.c`), with and without an
//! importance matrix.
//!
//! * [`types`]: every ggml type id and its block geometry.
//! * [`lanes`]: the number type the algorithms are written in (one block per lane);
//!   `f32` is the plain reference, wider lanes the vectorized form of the same operations.
//! * [`search`]: ggml's scale searches (`make_qx_quants`, `make_q3_quants`, `make_qkx2/3_quants`,
//!   `make_qp_quants`).
//! * [`legacy`], [`q2_k`], [`q3_k`], [`q4_k`] (Q4_K and Q5_K), [`q6_k`]: one file per format,
//!   encoder and decoder.
//! * [`fp16`]: ggml's half-precision conversions.
//!
//! Entry points: [`quantize`] (rows in parallel, the widest lanes the CPU has) and
//! [`dequantize`].

// The block code follows ggml's C loops index by index (`for j in 0..16 { … x[16*j + i] … }`),
// which is how it is checked against them; and it builds Options with `match` rather than
// `Option::map`, whose closures LLVM may leave out of line (see `lanes::build`).
#![allow(clippy::needless_range_loop, clippy::manual_map)]

pub mod fp16;
pub mod lanes;
pub mod legacy;
pub mod q2_k;
pub mod q3_k;
pub mod q4_k;
pub mod q6_k;
pub mod search;
pub mod types;

use std::sync::OnceLock;

use rayon::prelude::*;

use crate::error::{QuantError, Result};
use lanes::{F32s, Lanes};
pub use types::{GgmlType, QK_K};

/// How many lanes the encoders run, chosen once per process from the CPU's features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Simd {
    /// One block at a time (`f32` lanes): the plain reference.
    Scalar,
    /// Four blocks in baseline SSE2 (or whatever the target's baseline is).
    Portable,
    /// Eight blocks in AVX2 registers.
    Avx2,
    /// Sixteen blocks in AVX-512 registers.
    Avx512,
}

impl Simd {
    /// The widest level this CPU runs (`ARROW_QUANT_GGML_SIMD=scalar|portable|avx2|avx512`
    /// lowers it, for comparisons).
    pub fn detect() -> Simd {
        static LEVEL: OnceLock<Simd> = OnceLock::new();
        *LEVEL.get_or_init(|| {
            let best = Self::available().last().copied().unwrap_or(Simd::Portable);
            match std::env::var("ARROW_QUANT_GGML_SIMD").ok().as_deref() {
                Some("scalar") => Simd::Scalar,
                Some("portable") => Simd::Portable,
                Some("avx2") if Self::available().contains(&Simd::Avx2) => Simd::Avx2,
                _ => best,
            }
        })
    }

    /// Every level this CPU can run, narrowest first.
    pub fn available() -> Vec<Simd> {
        let mut v = vec![Simd::Scalar, Simd::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                v.push(Simd::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                v.push(Simd::Avx512);
            }
        }
        v
    }

    pub fn name(self) -> &'static str {
        match self {
            Simd::Scalar => "scalar",
            Simd::Portable => "portable",
            Simd::Avx2 => "avx2",
            Simd::Avx512 => "avx512",
        }
    }
}

/// Elements per parallel task (whole rows; a longer row is one task).
const CHUNK_ELEMS: usize = 64 * 1024;

/// ggml quantizes NaN and Inf into garbage without a word; every entry point refuses them first
/// with this (in parallel: it is a full pass over the input). Names the first bad index.
pub fn check_finite(name: &str, x: &[f32]) -> Result<()> {
    const CHUNK: usize = 1 << 16;
    // `fold`, not `any`: a loop without an early exit vectorizes.
    let bad = crate::threads::install(|| {
        x.par_chunks(CHUNK).enumerate().find_first(|(_, c)| c.iter().fold(false, |bad, v| bad | !v.is_finite()))
    });
    if let Some((k, c)) = bad {
        let i = c.iter().position(|v| !v.is_finite()).expect("the chunk has one");
        return Err(QuantError::NonFinite { layer: name.to_string(), index: k * CHUNK + i, value: c[i] });
    }
    Ok(())
}

/// The largest magnitude in `x` and whether it holds a NaN or an infinity, in one pass that
/// vectorizes with plain SSE2: per lane, a compare-and-select maximum of `|v|` (which skips
/// NaN; the flag catches it) and an exponent-all-ones flag (bit 31 of
/// `(bits & exp_mask) + 2^23`).
pub fn magnitude(x: &[f32]) -> (f32, bool) {
    const L: usize = 8;
    let (mut m, mut bad) = ([0f32; L], [0u32; L]);
    let mut one = |j: usize, v: f32| {
        let bits = v.to_bits() & 0x7fff_ffff;
        let a = f32::from_bits(bits);
        m[j] = if a > m[j] { a } else { m[j] };
        bad[j] |= (bits & 0x7f80_0000) + 0x0080_0000;
    };
    let chunks = x.chunks_exact(L);
    let rest = chunks.remainder();
    for c in chunks {
        for j in 0..L {
            one(j, c[j]);
        }
    }
    for (j, &v) in rest.iter().enumerate() {
        one(j, v);
    }
    (m.iter().fold(0f32, |a, &b| a.max(b)), bad.iter().fold(0, |a, &b| a | b) & 0x8000_0000 != 0)
}

/// Checks that `x` can be encoded as `ty` in rows of `n_per_row`, and returns the byte count.
pub fn check_rows(ty: GgmlType, n_elements: usize, n_per_row: usize, imatrix: Option<&[f32]>) -> Result<usize> {
    if !ty.can_encode() {
        return Err(QuantError::value(format!("cannot quantize to {ty}: supported types are f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0, q2_k, q3_k, q4_k, q5_k, q6_k")));
    }
    if n_per_row == 0 || !n_elements.is_multiple_of(n_per_row) {
        return Err(QuantError::value(format!("{n_elements} elements are not whole rows of {n_per_row}")));
    }
    let (block, _) = ty.block();
    let row_bytes = ty.row_bytes(n_per_row).ok_or_else(|| {
        QuantError::value(format!("{ty} needs rows whose length is a multiple of {block}; this row has {n_per_row} elements"))
    })?;
    if let Some(w) = imatrix {
        if w.len() != n_per_row {
            return Err(QuantError::value(format!(
                "the importance matrix has {} values; it needs one per column ({n_per_row})",
                w.len()
            )));
        }
        if let Some(i) = w.iter().position(|v| !v.is_finite()) {
            return Err(QuantError::value(format!("the importance matrix has a non-finite value at column {i}: {}", w[i])));
        }
    }
    Ok(n_elements / n_per_row * row_bytes)
}

/// Encodes `x` (rows of `n_per_row` along the last axis) as `ty`, exactly as
/// `ggml_quantize_chunk(ty, x, out, 0, rows, n_per_row, imatrix)` does. `out` must hold
/// [`check_rows`] bytes. Rows run in parallel; the bytes do not depend on the thread count or
/// the SIMD level.
pub fn quantize(ty: GgmlType, x: &[f32], n_per_row: usize, imatrix: Option<&[f32]>, out: &mut [u8]) -> Result<()> {
    quantize_with(Simd::detect(), ty, x, n_per_row, imatrix, out)
}

/// [`quantize`] at a given SIMD level (for tests and benchmarks).
pub fn quantize_with(simd: Simd, ty: GgmlType, x: &[f32], n_per_row: usize, imatrix: Option<&[f32]>, out: &mut [u8]) -> Result<()> {
    let n_bytes = check_rows(ty, x.len(), n_per_row, imatrix)?;
    if out.len() != n_bytes {
        return Err(QuantError::value(format!("output buffer has {} bytes, {ty} needs {n_bytes}", out.len())));
    }
    if x.is_empty() {
        return Ok(());
    }
    if !simd_available(simd) {
        return Err(QuantError::value(format!("this CPU cannot run the {} encoders", simd.name())));
    }
    let row_bytes = n_bytes / (x.len() / n_per_row);
    let rows_per_task = (CHUNK_ELEMS / n_per_row).max(1);
    crate::threads::install(|| {
        out.par_chunks_mut(rows_per_task * row_bytes)
            .zip(x.par_chunks(rows_per_task * n_per_row))
            .for_each(|(o, xs)| encode_rows(simd, ty, xs, n_per_row, imatrix, o))
    });
    Ok(())
}

fn simd_available(simd: Simd) -> bool {
    Simd::available().contains(&simd)
}

fn encode_rows(simd: Simd, ty: GgmlType, x: &[f32], n_per_row: usize, imatrix: Option<&[f32]>, out: &mut [u8]) {
    match simd {
        Simd::Scalar => encode_rows_in::<f32>(ty, x, n_per_row, imatrix, out),
        Simd::Portable => encode_rows_in::<F32s<4>>(ty, x, n_per_row, imatrix, out),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `quantize_with` only selects these levels after runtime detection of the features.
        Simd::Avx2 => unsafe { encode_rows_avx2(ty, x, n_per_row, imatrix, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Simd::Avx512 => unsafe { encode_rows_avx512(ty, x, n_per_row, imatrix, out) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("x86 levels are never available here"),
    }
}

// The same generic code compiled with wider registers: everything below `encode_rows_in` is
// `#[inline(always)]`, so it is generated inside these functions with their features enabled.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn encode_rows_avx2(ty: GgmlType, x: &[f32], n_per_row: usize, imatrix: Option<&[f32]>, out: &mut [u8]) {
    encode_rows_in::<lanes::x86::Avx2>(ty, x, n_per_row, imatrix, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
fn encode_rows_avx512(ty: GgmlType, x: &[f32], n_per_row: usize, imatrix: Option<&[f32]>, out: &mut [u8]) {
    encode_rows_in::<lanes::x86::Avx512>(ty, x, n_per_row, imatrix, out)
}

/// The mean square of a row, `sigma2` of the 32-element types' `quantize_row_*_impl`: summed in
/// order, then divided by the row's length.
#[inline(always)]
pub fn row_sigma2(row: &[f32]) -> f32 {
    let mut sum_x2 = 0f32;
    for &v in row {
        sum_x2 += v * v;
    }
    sum_x2 / row.len() as f32
}

/// [`row_sigma2`] of each row of `n_per_row` (rows in parallel; the GPU kernels' input).
pub fn rows_sigma2(x: &[f32], n_per_row: usize) -> Vec<f32> {
    crate::threads::install(|| x.par_chunks_exact(n_per_row).map(row_sigma2).collect())
}

/// Encodes whole rows, `V::N` blocks at a time. The blocks of one step may come from different
/// rows; a short last step repeats the last block in the spare lanes and drops their output.
#[inline(always)]
fn encode_rows_in<V: Lanes>(ty: GgmlType, x: &[f32], n_per_row: usize, imatrix: Option<&[f32]>, out: &mut [u8]) {
    let (qk, bytes) = ty.block();
    if ty.is_float() {
        return encode_floats(ty, x, out);
    }
    let blocks_per_row = n_per_row / qk;
    let n_blocks = x.len() / qk;
    // A matrix the type ignores (Q8_0) is dropped here: gathering it and the rows' sigma2 for
    // nothing made Q8_0 with one 4.7x slower.
    let imatrix = imatrix.filter(|_| ty.uses_imatrix());
    // The legacy `_impl` quantizers weight by the mean square of the whole row.
    let row_sigma2: Vec<f32> = match (imatrix, qk) {
        (Some(_), 32) => x.chunks_exact(n_per_row).map(row_sigma2).collect(),
        _ => Vec::new(),
    };
    let mut xt = [V::splat(0.0); QK_K];
    let mut wt = [V::splat(0.0); QK_K];
    let mut spare = [0u8; lanes::MAX_LANES * 210];
    let mut q3 = q3_k::Scratch::new();
    let mut k0 = 0;
    while k0 < n_blocks {
        let lanes = V::N.min(n_blocks - k0);
        let block = |b: usize| k0 + b.min(lanes - 1);
        if lanes == V::N {
            V::load_blocks(&x[k0 * qk..(k0 + lanes) * qk], qk, &mut xt);
        } else {
            for i in 0..qk {
                xt[i] = V::from_fn(|b| x[block(b) * qk + i]);
            }
        }
        let qw = match imatrix {
            Some(w) => {
                for i in 0..qk {
                    wt[i] = V::from_fn(|b| w[(block(b) % blocks_per_row) * qk + i]);
                }
                Some(&wt[..qk])
            }
            None => None,
        };
        let sigma2 = if row_sigma2.is_empty() { V::splat(0.0) } else { V::from_fn(|b| row_sigma2[block(b) / blocks_per_row]) };
        let dst = if lanes == V::N { &mut out[k0 * bytes..(k0 + V::N) * bytes] } else { &mut spare[..V::N * bytes] };
        if k0 + 2 * V::N <= n_blocks {
            prefetch(&x[(k0 + V::N) * qk..(k0 + 2 * V::N) * qk]);
        }
        encode_blocks(ty, &xt[..qk], qw, sigma2, dst, &mut q3);
        if lanes < V::N {
            out[k0 * bytes..(k0 + lanes) * bytes].copy_from_slice(&spare[..lanes * bytes]);
        }
        k0 += lanes;
    }
}

/// Asks for `data` to be brought into the cache: the next step's blocks, read while this step
/// computes (the hardware prefetchers do not follow `V::N` interleaved block streams well).
#[inline(always)]
fn prefetch(data: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in data.chunks(16) {
        // SAFETY: a prefetch of a valid address (the start of a live slice) has no effect on
        // program state.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line.as_ptr().cast()) };
    }
}

#[inline(always)]
fn encode_blocks<V: Lanes>(ty: GgmlType, x: &[V], qw: Option<&[V]>, sigma2: V, out: &mut [u8], q3: &mut q3_k::Scratch) {
    match ty {
        GgmlType::Q4_0 => legacy::encode_q4_0(x, qw, sigma2, out),
        GgmlType::Q4_1 => legacy::encode_q4_1(x, qw, sigma2, out),
        GgmlType::Q5_0 => legacy::encode_q5_0(x, qw, sigma2, out),
        GgmlType::Q5_1 => legacy::encode_q5_1(x, qw, sigma2, out),
        GgmlType::Q8_0 => legacy::encode_q8_0(x, out),
        GgmlType::Q2_K => q2_k::encode(x, qw, out),
        GgmlType::Q3_K => q3_k::encode(x, qw, out, q3),
        GgmlType::Q4_K => q4_k::encode(q4_k::Bits::Four, x, qw, out),
        GgmlType::Q5_K => q4_k::encode(q4_k::Bits::Five, x, qw, out),
        GgmlType::Q6_K => q6_k::encode(x, qw, out),
        other => unreachable!("{other} is not an encodable block type"),
    }
}

/// F32, F16 and BF16 rows, as `ggml_quantize_chunk` writes them.
fn encode_floats(ty: GgmlType, x: &[f32], out: &mut [u8]) {
    match ty {
        GgmlType::F32 => {
            for (o, v) in out.chunks_exact_mut(4).zip(x) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for (o, v) in out.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&fp16::f32_to_f16_bits(*v).to_le_bytes());
            }
        }
        GgmlType::BF16 => {
            for (o, v) in out.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&fp16::f32_to_bf16_bits(*v).to_le_bytes());
            }
        }
        _ => unreachable!(),
    }
}

/// Expands `data` (whole blocks of `ty`) into `out`, as ggml's `dequantize_row_*` (or its
/// f16/bf16 → f32 conversions) do.
/// Checks that `n_bytes` of `ty` data hold exactly `n` elements (before anything is allocated
/// for them).
pub fn check_decode(ty: GgmlType, n_bytes: usize, n: usize) -> Result<()> {
    if !ty.can_decode() {
        return Err(QuantError::value(format!("cannot decode {ty} tensors")));
    }
    let (block, bytes) = ty.block();
    if !n.is_multiple_of(block) || Some(n_bytes) != (n / block).checked_mul(bytes) {
        return Err(QuantError::value(format!(
            "{n_bytes} bytes of {ty} data do not hold {n} elements (blocks of {block} elements in {bytes} bytes)"
        )));
    }
    Ok(())
}

pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<()> {
    check_decode(ty, data.len(), out.len())?;
    let (block, bytes) = ty.block();
    const CHUNK: usize = 64 * QK_K;
    let in_chunk = CHUNK / block * bytes;
    crate::threads::install(|| out.par_chunks_mut(CHUNK).zip(data.par_chunks(in_chunk)).for_each(|(y, d)| decode_blocks(ty, d, y)));
    Ok(())
}

fn decode_blocks(ty: GgmlType, data: &[u8], out: &mut [f32]) {
    match ty {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            // exact in any case; half converts whole slices with F16C where the CPU has it
            use half::slice::HalfFloatSliceExt;
            match bytemuck::try_cast_slice::<u8, half::f16>(data) {
                Ok(halves) if cfg!(target_endian = "little") => halves.convert_to_f32_slice(out),
                _ => {
                    let halves: Vec<half::f16> = data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]])).collect();
                    halves.convert_to_f32_slice(out)
                }
            }
        }
        GgmlType::BF16 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = fp16::bf16_bits_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => legacy::decode(ty, data, out),
        GgmlType::Q2_K => q2_k::decode(data, out),
        GgmlType::Q3_K => q3_k::decode(data, out),
        GgmlType::Q4_K => q4_k::decode(q4_k::Bits::Four, data, out),
        GgmlType::Q5_K => q4_k::decode(q4_k::Bits::Five, data, out),
        GgmlType::Q6_K => q6_k::decode(data, out),
        other => unreachable!("{other} is not decodable"),
    }
}

#[cfg(test)]
mod tests {
    use super::magnitude;

    #[test]
    fn magnitude_finds_the_largest_and_the_non_finite() {
        assert_eq!(magnitude(&[]), (0.0, false));
        let mut x: Vec<f32> = (0..37).map(|i| (i as f32 - 20.0) * 0.5).collect();
        assert_eq!(magnitude(&x), (10.0, false));
        x[36] = -70000.0; // in the remainder
        assert_eq!(magnitude(&x), (70000.0, false));
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for at in [0, 9, 36] {
                let mut y = x.clone();
                y[at] = bad;
                assert!(magnitude(&y).1, "{bad} at {at}");
            }
        }
        assert_eq!(magnitude(&[f32::MAX, -f32::MIN_POSITIVE]), (f32::MAX, false));
    }
}

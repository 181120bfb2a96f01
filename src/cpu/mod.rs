//! The CPU backend: rayon across layers, rows and runs of groups; vectorized inner loops
//! (`kernels`), compiled for AVX2 as well and picked at run time.

#[cfg(target_arch = "x86_64")]
mod avx2;
mod kernels;
mod measured;

use rayon::prelude::*;

use crate::backend::{Backend, DequantJob, MeasuredJob, QuantJob};
use crate::quant::metrics::ErrorStats;
use crate::error::Result;
use crate::quant::{reference, GroupLayout, GroupParams};
use kernels::{decode, with_bits, Scan};

/// Groups handed to one task: large enough to amortize scheduling, small enough to balance a
/// single huge row over every core.
const SPAN_ELEMENTS: usize = 1 << 15;

#[derive(Clone, Copy, Debug)]
pub struct CpuBackend {
    portable_only: bool,
}

impl CpuBackend {
    /// Uses the AVX2 kernels when the running CPU has them.
    pub const fn new() -> Self {
        Self { portable_only: false }
    }

    /// Only the portable kernels: to test them on machines that have AVX2, and to measure
    /// what the runtime dispatch buys.
    pub const fn portable() -> Self {
        Self { portable_only: true }
    }

    fn simd(&self) -> bool {
        !self.portable_only && has_avx2()
    }
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

/// A group failed validation; [`first_error`] finds which and why.
struct Invalid;

impl Backend for CpuBackend {
    fn name(&self) -> String {
        let kernels = if self.simd() { "avx2" } else { "portable simd" };
        format!("cpu (rayon, {} threads, {kernels})", crate::threads::num_threads())
    }

    fn quantize(&self, jobs: &mut [QuantJob<'_>]) -> Result<()> {
        let simd = self.simd();
        let failed = crate::threads::install(|| {
            jobs.par_iter_mut().enumerate().filter_map(|(i, job)| quantize_job(job, simd).is_err().then_some(i)).min()
        });
        match failed {
            Some(i) => Err(reference::first_error(jobs[i].name, &jobs[i].layout, jobs[i].weights).expect("a job that failed has an invalid group")),
            None => Ok(()),
        }
    }

    fn dequantize(&self, jobs: &mut [DequantJob<'_>]) -> Result<()> {
        let simd = self.simd();
        crate::threads::install(|| jobs.par_iter_mut().for_each(|job| dequantize_job(job, simd)));
        Ok(())
    }

    /// Fused: each group is scanned, encoded, decoded and measured while it is in L1, so the
    /// tensor is read from memory once (see [`measured`]).
    fn quantize_measured(&self, job: &mut MeasuredJob<'_>) -> Result<ErrorStats> {
        measured::quantize_measured(job, self.simd())
    }
}

/// Splits a job into rows, and each row into spans of whole groups, for rayon.
fn quantize_job(job: &mut QuantJob<'_>, simd: bool) -> std::result::Result<(), Invalid> {
    let l = job.layout;
    if l.n_elements() == 0 {
        return Ok(());
    }
    let span_groups = (SPAN_ELEMENTS / l.group_size).max(1);
    let gpr = l.groups_per_row();
    job.weights
        .par_chunks(l.row_len)
        .zip(job.packed.par_chunks_mut(l.row_bytes()))
        .zip(job.scales.par_chunks_mut(gpr))
        .zip(job.zero_points.par_chunks_mut(gpr))
        .try_for_each(|(((w, p), s), z)| {
            w.par_chunks(span_groups * l.group_size)
                .zip(p.par_chunks_mut(span_groups * l.group_bytes()))
                .zip(s.par_chunks_mut(span_groups))
                .zip(z.par_chunks_mut(span_groups))
                .try_for_each(|(((w, p), s), z)| quantize_span(w, p, s, z, &l, simd))
        })
}

/// The group kernels, in a portable and an AVX2 flavour.
trait Kernels {
    /// Whether [`crate::quant::metrics::Lanes`] may use AVX2 inside these kernels' callers.
    const AVX2: bool;
    fn scan(values: &[f32]) -> Scan;
    fn encode<const B: usize>(values: &[f32], p: &GroupParams, out: &mut [u8]);
    fn decode<const B: usize>(packed: &[u8], scale: f32, lo: f32, out: &mut [f32]);
}

struct Portable;

impl Kernels for Portable {
    const AVX2: bool = false;
    #[inline(always)]
    fn scan(values: &[f32]) -> Scan {
        kernels::scan(values)
    }
    #[inline(always)]
    fn encode<const B: usize>(values: &[f32], p: &GroupParams, out: &mut [u8]) {
        kernels::encode::<B>(values, p, out)
    }
    #[inline(always)]
    fn decode<const B: usize>(packed: &[u8], scale: f32, lo: f32, out: &mut [f32]) {
        kernels::decode::<B>(packed, scale, lo, out)
    }
}

#[cfg(target_arch = "x86_64")]
struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Kernels for Avx2 {
    const AVX2: bool = true;
    #[inline(always)]
    fn scan(values: &[f32]) -> Scan {
        // SAFETY: `Avx2` kernels only run inside `quantize_span_avx2` and
        // `measured::chunk_avx2`, reached after runtime detection of AVX2.
        unsafe { avx2::scan(values) }
    }
    #[inline(always)]
    fn encode<const B: usize>(values: &[f32], p: &GroupParams, out: &mut [u8]) {
        // SAFETY: as above.
        unsafe { avx2::encode::<B>(values, p, out) }
    }
    #[inline(always)]
    fn decode<const B: usize>(packed: &[u8], scale: f32, lo: f32, out: &mut [f32]) {
        // SAFETY: as above.
        unsafe { avx2::decode::<B>(packed, scale, lo, out) }
    }
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::is_x86_feature_detected!("avx2");
    #[allow(unreachable_code)]
    false
}

/// A run of consecutive groups of one row.
fn quantize_span(w: &[f32], p: &mut [u8], s: &mut [f32], z: &mut [f32], l: &GroupLayout, simd: bool) -> std::result::Result<(), Invalid> {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is only true when the running CPU supports AVX2 (`has_avx2`).
        return unsafe { quantize_span_avx2(w, p, s, z, l) };
    }
    quantize_groups::<Portable>(w, p, s, z, l)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn quantize_span_avx2(w: &[f32], p: &mut [u8], s: &mut [f32], z: &mut [f32], l: &GroupLayout) -> std::result::Result<(), Invalid> {
    quantize_groups::<Avx2>(w, p, s, z, l)
}

#[inline(always)]
fn quantize_groups<K: Kernels>(w: &[f32], p: &mut [u8], s: &mut [f32], z: &mut [f32], l: &GroupLayout) -> std::result::Result<(), Invalid> {
    let max_code = l.bit_width.max_code();
    let groups = w.chunks(l.group_size).zip(p.chunks_mut(l.group_bytes()));
    for (((values, packed), scale), zero) in groups.zip(s.iter_mut()).zip(z.iter_mut()) {
        let Scan::Range { lo, hi } = K::scan(values) else { return Err(Invalid) };
        let params = GroupParams::from_range(lo, hi, max_code).map_err(|_| Invalid)?;
        with_bits!(l.bit_width, K::encode(values, &params, packed));
        *scale = params.scale;
        *zero = params.lo;
    }
    Ok(())
}

fn dequantize_job(job: &mut DequantJob<'_>, simd: bool) {
    let l = job.layout;
    if l.n_elements() == 0 {
        return;
    }
    let span_groups = (SPAN_ELEMENTS / l.group_size).max(1);
    let gpr = l.groups_per_row();
    job.out
        .par_chunks_mut(l.row_len)
        .zip(job.packed.par_chunks(l.row_bytes()))
        .zip(job.scales.par_chunks(gpr))
        .zip(job.zero_points.par_chunks(gpr))
        .for_each(|(((o, p), s), z)| {
            o.par_chunks_mut(span_groups * l.group_size)
                .zip(p.par_chunks(span_groups * l.group_bytes()))
                .zip(s.par_chunks(span_groups))
                .zip(z.par_chunks(span_groups))
                .for_each(|(((o, p), s), z)| dequantize_span(o, p, s, z, &l, simd))
        });
}

fn dequantize_span(o: &mut [f32], p: &[u8], s: &[f32], z: &[f32], l: &GroupLayout, simd: bool) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is only true when the running CPU supports AVX2 (`has_avx2`).
        return unsafe { dequantize_span_avx2(o, p, s, z, l) };
    }
    dequantize_span_generic(o, p, s, z, l)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dequantize_span_avx2(o: &mut [f32], p: &[u8], s: &[f32], z: &[f32], l: &GroupLayout) {
    let groups = o.chunks_mut(l.group_size).zip(p.chunks(l.group_bytes()));
    for (((out, packed), &scale), &lo) in groups.zip(s).zip(z) {
        with_bits!(l.bit_width, avx2::decode(packed, scale, lo, out));
    }
}

fn dequantize_span_generic(o: &mut [f32], p: &[u8], s: &[f32], z: &[f32], l: &GroupLayout) {
    let groups = o.chunks_mut(l.group_size).zip(p.chunks(l.group_bytes()));
    for (((out, packed), &scale), &lo) in groups.zip(s).zip(z) {
        with_bits!(l.bit_width, decode(packed, scale, lo, out));
    }
}

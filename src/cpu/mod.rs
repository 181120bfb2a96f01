//! The CPU backend: rayon across layers, rows and runs of groups; vectorized inner loops
//! (`kernels`, portable), with AVX2 and AVX-512 flavours (`avx2`, `avx512`) picked at run time
//! ([`Isa`]). Every flavour computes the same bytes.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod kernels;
pub(crate) mod measured;

use rayon::prelude::*;

use crate::backend::{Backend, DequantJob, MeasuredJob, QuantJob};
use crate::quant::metrics::ErrorStats;
use crate::error::Result;
use crate::quant::{lsq, reference, GroupLayout, GroupParams, Method};
use kernels::{with_bits, Scan};

/// Groups handed to one task: large enough to amortize scheduling, small enough to balance a
/// single huge row over every core.
const SPAN_ELEMENTS: usize = 1 << 15;

/// The instruction sets the kernels come in, from the most portable up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Plain Rust that LLVM vectorizes for the build's baseline target.
    Portable,
    /// x86-64 with AVX2.
    Avx2,
    /// x86-64 with AVX-512F.
    Avx512,
}

impl Isa {
    /// The best set the running CPU supports, from the one feature check the crate has
    /// ([`crate::quant::ggml::Simd::available`]).
    pub fn detected() -> Self {
        use crate::quant::ggml::Simd;
        match Simd::available().last() {
            Some(Simd::Avx512) => Self::Avx512,
            Some(Simd::Avx2) => Self::Avx2,
            _ => Self::Portable,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Portable => "portable simd",
            Self::Avx2 => "avx2",
            Self::Avx512 => "avx512",
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct CpuBackend {
    /// The best kernels this backend may use; the running CPU may allow fewer.
    limit: Isa,
}

impl CpuBackend {
    /// The best kernels the running CPU has (AVX-512, else AVX2, else portable).
    pub const fn new() -> Self {
        Self { limit: Isa::Avx512 }
    }

    /// Only the portable kernels: to test them on machines that have AVX2, and to measure
    /// what the runtime dispatch buys.
    pub const fn portable() -> Self {
        Self { limit: Isa::Portable }
    }

    /// At most the kernels of `isa` (fewer where the CPU lacks them): to test and measure each
    /// flavour on one machine.
    pub const fn up_to(isa: Isa) -> Self {
        Self { limit: isa }
    }

    /// The kernels this backend runs on this CPU.
    pub fn isa(&self) -> Isa {
        self.limit.min(Isa::detected())
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
        format!("cpu (rayon, {} threads, {})", crate::threads::num_threads(), self.isa().name())
    }

    fn quantize(&self, jobs: &mut [QuantJob<'_>]) -> Result<()> {
        let isa = self.isa();
        let failed = if inline(jobs.iter().map(|j| &j.layout)) {
            jobs.iter_mut().enumerate().find_map(|(i, job)| quantize_here(job, isa).is_err().then_some(i))
        } else {
            crate::threads::install(|| jobs.par_iter_mut().enumerate().filter_map(|(i, job)| quantize_job(job, isa).is_err().then_some(i)).min())
        };
        match failed {
            Some(i) => Err(reference::first_error(jobs[i].name, &jobs[i].layout, jobs[i].weights).expect("a job that failed has an invalid group")),
            None => Ok(()),
        }
    }

    fn dequantize(&self, jobs: &mut [DequantJob<'_>]) -> Result<()> {
        let isa = self.isa();
        if inline(jobs.iter().map(|j| &j.layout)) {
            jobs.iter_mut().for_each(|job| dequantize_here(job, isa));
        } else {
            crate::threads::install(|| jobs.par_iter_mut().for_each(|job| dequantize_job(job, isa)));
        }
        Ok(())
    }

    /// Fused: each group is scanned, encoded, decoded and measured while it is in L1, so the
    /// tensor is read from memory once (see [`measured`]).
    fn quantize_measured(&self, job: &mut MeasuredJob<'_>) -> Result<ErrorStats> {
        measured::quantize_measured(job, self.isa())
    }
}

/// Whether a call runs on the calling thread ([`crate::threads::runs_inline`]); an `lsq` value
/// counts as 8 min/max values of work.
fn inline<'a>(layouts: impl Iterator<Item = &'a GroupLayout>) -> bool {
    crate::threads::runs_inline(layouts.map(|l| l.n_elements() * if l.method == Method::Lsq { 8 } else { 1 }).sum())
}

/// Rows handed to one task at most: about [`SPAN_ELEMENTS`]. Without a bound, rayon splits a
/// layer of many short rows only as often as it sees steals, and a worker that woke late
/// (common in VMs) found little to take: one core sat idle for much of a call, and throughput
/// jumped between two levels from one call to the next.
fn rows_per_task(row_len: usize) -> usize {
    (SPAN_ELEMENTS / row_len.max(1)).max(1)
}

/// The rows a job is split into. Where every row ends on a group boundary, consecutive rows'
/// groups, codes and parameters are consecutive too, so the job is one long row of the same
/// groups: it splits into even spans however short its rows are, instead of one nested split
/// per row (which cost 15% on layers of 8192-value rows, 2^26 values, 2 threads).
fn as_rows(l: GroupLayout) -> GroupLayout {
    if l.row_len.is_multiple_of(l.group_size) {
        GroupLayout { n_rows: 1, row_len: l.n_elements(), ..l }
    } else {
        l
    }
}

/// Splits a job into rows, and each row into spans of whole groups, for rayon: one task per
/// span (`with_max_len(1)`). Left to split adaptively, rayon cut a layer into a few large pieces;
/// a worker that woke late (common in VMs) found little left to take, and in about a third of
/// the calls one core sat idle for much of the call (CPU time / wall time 1.5–1.6 instead of
/// 2.0 on 2 cores, 2^24 values). Spans of 2^15 values keep the per-task cost negligible.
fn quantize_job(job: &mut QuantJob<'_>, isa: Isa) -> std::result::Result<(), Invalid> {
    if job.layout.n_elements() == 0 {
        return Ok(());
    }
    let l = as_rows(job.layout);
    let span_groups = (SPAN_ELEMENTS / l.group_size).max(1);
    let gpr = l.groups_per_row();
    job.weights
        .par_chunks(l.row_len)
        .zip(job.packed.par_chunks_mut(l.row_bytes()))
        .zip(job.scales.par_chunks_mut(gpr))
        .zip(job.zero_points.par_chunks_mut(gpr))
        .with_max_len(rows_per_task(l.row_len))
        .try_for_each(|(((w, p), s), z)| {
            w.par_chunks(span_groups * l.group_size)
                .zip(p.par_chunks_mut(span_groups * l.group_bytes()))
                .zip(s.par_chunks_mut(span_groups))
                .zip(z.par_chunks_mut(span_groups))
                .with_max_len(1)
                .try_for_each(|(((w, p), s), z)| quantize_span(w, p, s, z, &l, isa))
        })
}

/// [`quantize_job`] on the calling thread.
fn quantize_here(job: &mut QuantJob<'_>, isa: Isa) -> std::result::Result<(), Invalid> {
    if job.layout.n_elements() == 0 {
        return Ok(());
    }
    let l = as_rows(job.layout);
    let gpr = l.groups_per_row();
    let rows = job.weights.chunks(l.row_len).zip(job.packed.chunks_mut(l.row_bytes())).zip(job.scales.chunks_mut(gpr)).zip(job.zero_points.chunks_mut(gpr));
    rows.into_iter().try_for_each(|(((w, p), s), z)| quantize_span(w, p, s, z, &l, isa))
}

/// The group kernels, in a portable, an AVX2 and an AVX-512 flavour; `lsq`'s step 2
/// ([`lsq::Evaluate`]) included.
trait Kernels: lsq::Evaluate {
    /// Whether [`crate::quant::metrics::Lanes`] may use AVX2 inside these kernels' callers
    /// (true for both x86 flavours: every AVX-512 CPU has AVX2).
    const AVX2: bool;
    fn scan(values: &[f32]) -> Scan;
    /// A group's min/max codes, packed.
    fn encode<const B: usize>(values: &[f32], p: &GroupParams, out: &mut [u8]);
    /// A group's codes on an `lsq` grid (step 5 of `lsq`), packed: min/max's `encode` with the
    /// lower clamp, as the grid may start above some of the values.
    fn encode_lsq<const B: usize>(values: &[f32], g: &lsq::Grid, out: &mut [u8]);
    fn decode<const B: usize>(packed: &[u8], scale: f32, lo: f32, out: &mut [f32]);
}

struct Portable;

impl lsq::Evaluate for Portable {
    #[inline(always)]
    fn evaluate(values: &[f32], g: &lsq::Grid, max_code: f32) -> lsq::Evaluation {
        lsq::Plain::evaluate(values, g, max_code)
    }
    #[inline(always)]
    fn sse(values: &[f32], g: &lsq::Grid, max_code: f32) -> f32 {
        lsq::Plain::sse(values, g, max_code)
    }
}

impl Kernels for Portable {
    const AVX2: bool = false;
    #[inline(always)]
    fn scan(values: &[f32]) -> Scan {
        kernels::scan(values)
    }
    #[inline(always)]
    fn encode<const B: usize>(values: &[f32], p: &GroupParams, out: &mut [u8]) {
        kernels::encode::<B, false>(values, p, out)
    }
    #[inline(always)]
    fn encode_lsq<const B: usize>(values: &[f32], g: &lsq::Grid, out: &mut [u8]) {
        kernels::encode::<B, true>(values, &grid_params(g), out)
    }
    #[inline(always)]
    fn decode<const B: usize>(packed: &[u8], scale: f32, lo: f32, out: &mut [f32]) {
        kernels::decode::<B>(packed, scale, lo, out)
    }
}

#[cfg(target_arch = "x86_64")]
struct Avx2;

#[cfg(target_arch = "x86_64")]
impl lsq::Evaluate for Avx2 {
    #[inline(always)]
    fn evaluate(values: &[f32], g: &lsq::Grid, max_code: f32) -> lsq::Evaluation {
        // SAFETY: as for `Kernels for Avx2` below.
        unsafe { avx2::lsq_evaluate(values, g, max_code) }
    }
    #[inline(always)]
    fn sse(values: &[f32], g: &lsq::Grid, max_code: f32) -> f32 {
        // SAFETY: as for `Kernels for Avx2` below.
        unsafe { avx2::lsq_sse(values, g, max_code) }
    }
}

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
        unsafe { avx2::encode::<B, false>(values, p, out) }
    }
    #[inline(always)]
    fn encode_lsq<const B: usize>(values: &[f32], g: &lsq::Grid, out: &mut [u8]) {
        // SAFETY: as above.
        unsafe { avx2::encode::<B, true>(values, &grid_params(g), out) }
    }
    #[inline(always)]
    fn decode<const B: usize>(packed: &[u8], scale: f32, lo: f32, out: &mut [f32]) {
        // SAFETY: as above.
        unsafe { avx2::decode::<B>(packed, scale, lo, out) }
    }
}

#[cfg(target_arch = "x86_64")]
struct Avx512;

#[cfg(target_arch = "x86_64")]
impl lsq::Evaluate for Avx512 {
    #[inline(always)]
    fn evaluate(values: &[f32], g: &lsq::Grid, max_code: f32) -> lsq::Evaluation {
        // SAFETY: as for `Kernels for Avx512` below.
        unsafe { avx512::lsq_evaluate(values, g, max_code) }
    }
    #[inline(always)]
    fn sse(values: &[f32], g: &lsq::Grid, max_code: f32) -> f32 {
        // SAFETY: as for `Kernels for Avx512` below.
        unsafe { avx512::lsq_sse(values, g, max_code) }
    }
}

#[cfg(target_arch = "x86_64")]
impl Kernels for Avx512 {
    const AVX2: bool = true;
    #[inline(always)]
    fn scan(values: &[f32]) -> Scan {
        // SAFETY: `Avx512` kernels only run inside `quantize_span_avx512` and
        // `measured::chunk_avx512`, reached after runtime detection of AVX-512F (`Isa`).
        unsafe { avx512::scan(values) }
    }
    #[inline(always)]
    fn encode<const B: usize>(values: &[f32], p: &GroupParams, out: &mut [u8]) {
        // SAFETY: as above.
        unsafe { avx512::encode::<B, false>(values, p, out) }
    }
    #[inline(always)]
    fn encode_lsq<const B: usize>(values: &[f32], g: &lsq::Grid, out: &mut [u8]) {
        // SAFETY: as above.
        unsafe { avx512::encode::<B, true>(values, &grid_params(g), out) }
    }
    #[inline(always)]
    fn decode<const B: usize>(packed: &[u8], scale: f32, lo: f32, out: &mut [f32]) {
        // SAFETY: as above.
        unsafe { avx512::decode::<B>(packed, scale, lo, out) }
    }
}

/// A run of consecutive groups of one row.
fn quantize_span(w: &[f32], p: &mut [u8], s: &mut [f32], z: &mut [f32], l: &GroupLayout, isa: Isa) -> std::result::Result<(), Invalid> {
    // SAFETY (both calls): `isa` comes from `CpuBackend::isa`, which never exceeds what
    // `Isa::detected` found on the running CPU.
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { quantize_span_avx512(w, p, s, z, l) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { quantize_span_avx2(w, p, s, z, l) },
        _ => quantize_groups::<Portable>(w, p, s, z, l),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn quantize_span_avx2(w: &[f32], p: &mut [u8], s: &mut [f32], z: &mut [f32], l: &GroupLayout) -> std::result::Result<(), Invalid> {
    quantize_groups::<Avx2>(w, p, s, z, l)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f")]
fn quantize_span_avx512(w: &[f32], p: &mut [u8], s: &mut [f32], z: &mut [f32], l: &GroupLayout) -> std::result::Result<(), Invalid> {
    quantize_groups::<Avx512>(w, p, s, z, l)
}

/// Groups scanned before any of them is encoded. Scanning a group ends in a chain of
/// dependent steps (the lane reduction, then the division for its parameters) that takes as
/// long as the scan itself; scanning a batch first lets the CPU overlap those chains across
/// groups instead of waiting on each. The batch (up to 16 × the group's values) stays in L1.
const SCAN_BATCH: usize = 16;

#[inline(always)]
fn quantize_groups<K: Kernels>(w: &[f32], p: &mut [u8], s: &mut [f32], z: &mut [f32], l: &GroupLayout) -> std::result::Result<(), Invalid> {
    let max_code = l.bit_width.max_code();
    let batch = SCAN_BATCH * l.group_size;
    let batches = w.chunks(batch).zip(p.chunks_mut(SCAN_BATCH * l.group_bytes())).zip(s.chunks_mut(SCAN_BATCH)).zip(z.chunks_mut(SCAN_BATCH));
    for (((w, p), s), z) in batches {
        let mut ranges = [(0f32, 0f32); SCAN_BATCH];
        for (values, range) in w.chunks(l.group_size).zip(ranges.iter_mut()) {
            let Scan::Range { lo, hi } = K::scan(values) else { return Err(Invalid) };
            *range = (lo, hi);
        }
        if l.method == Method::Lsq {
            lsq_batch::<K>(w, p, s, z, l, &ranges)?;
            continue;
        }
        let groups = w.chunks(l.group_size).zip(p.chunks_mut(l.group_bytes())).zip(ranges);
        for (((values, packed), (lo, hi)), (scale, zero)) in groups.zip(s.iter_mut().zip(z.iter_mut())) {
            let params = GroupParams::from_range(lo, hi, max_code).map_err(|_| Invalid)?;
            with_bits!(l.bit_width, K::encode(values, &params, packed));
            *scale = params.scale;
            *zero = params.lo;
        }
    }
    Ok(())
}

/// `lsq` for one scanned batch of groups.
#[inline(always)]
fn lsq_batch<K: Kernels>(w: &[f32], p: &mut [u8], s: &mut [f32], z: &mut [f32], l: &GroupLayout, ranges: &[(f32, f32)]) -> std::result::Result<(), Invalid> {
    const EMPTY: &[f32] = &[];
    let max_code = l.bit_width.max_code();
    let mut groups = [EMPTY; lsq::BATCH];
    let mut starts = [GroupParams { lo: 0.0, scale: 0.0, inv: 0.0 }; lsq::BATCH];
    for (i, values) in w.chunks(l.group_size).enumerate() {
        groups[i] = values;
        starts[i] = GroupParams::from_range(ranges[i].0, ranges[i].1, max_code).map_err(|_| Invalid)?;
    }
    let n = s.len();
    refine_and_pack::<K>(&groups[..n], &starts[..n], l, p, s, z);
    Ok(())
}

/// Up to [`lsq::BATCH`] groups with their min/max parameters: refined together
/// (`lsq::refine_batch`), then each packed into `p`, with its scale and zero point.
#[inline(always)]
fn refine_and_pack<K: Kernels>(groups: &[&[f32]], starts: &[GroupParams], l: &GroupLayout, p: &mut [u8], s: &mut [f32], z: &mut [f32]) {
    let mut grids = [lsq::Grid { scale: 0.0, zero: 0.0, inv: 0.0 }; lsq::BATCH];
    let grids = &mut grids[..groups.len()];
    lsq::refine_batch::<K>(groups, starts, l.bit_width.max_code(), grids);
    for (((values, packed), grid), (scale, zero)) in groups.iter().zip(p.chunks_mut(l.group_bytes())).zip(grids.iter()).zip(s.iter_mut().zip(z.iter_mut())) {
        with_bits!(l.bit_width, K::encode_lsq(values, grid, packed));
        (*scale, *zero) = (grid.scale, grid.zero);
    }
}

/// An `lsq` grid as the encoders' parameters: its codes are `(w − zero) × inv`, rounded and
/// clamped, as min/max's are `(w − lo) × inv`.
#[inline(always)]
fn grid_params(g: &lsq::Grid) -> GroupParams {
    GroupParams { lo: g.zero, scale: g.scale, inv: g.inv }
}

fn dequantize_job(job: &mut DequantJob<'_>, isa: Isa) {
    if job.layout.n_elements() == 0 {
        return;
    }
    let l = as_rows(job.layout);
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
                .with_max_len(1)
                .for_each(|(((o, p), s), z)| dequantize_span(o, p, s, z, &l, isa))
        });
}

/// [`dequantize_job`] on the calling thread.
fn dequantize_here(job: &mut DequantJob<'_>, isa: Isa) {
    if job.layout.n_elements() == 0 {
        return;
    }
    let l = as_rows(job.layout);
    let gpr = l.groups_per_row();
    let rows = job.out.chunks_mut(l.row_len).zip(job.packed.chunks(l.row_bytes())).zip(job.scales.chunks(gpr)).zip(job.zero_points.chunks(gpr));
    rows.for_each(|(((o, p), s), z)| dequantize_span(o, p, s, z, &l, isa));
}

fn dequantize_span(o: &mut [f32], p: &[u8], s: &[f32], z: &[f32], l: &GroupLayout, isa: Isa) {
    // SAFETY (both calls): as in `quantize_span`.
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { dequantize_span_avx512(o, p, s, z, l) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { dequantize_span_avx2(o, p, s, z, l) },
        _ => dequantize_groups::<Portable>(o, p, s, z, l),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dequantize_span_avx2(o: &mut [f32], p: &[u8], s: &[f32], z: &[f32], l: &GroupLayout) {
    dequantize_groups::<Avx2>(o, p, s, z, l)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f")]
fn dequantize_span_avx512(o: &mut [f32], p: &[u8], s: &[f32], z: &[f32], l: &GroupLayout) {
    dequantize_groups::<Avx512>(o, p, s, z, l)
}

#[inline(always)]
fn dequantize_groups<K: Kernels>(o: &mut [f32], p: &[u8], s: &[f32], z: &[f32], l: &GroupLayout) {
    let groups = o.chunks_mut(l.group_size).zip(p.chunks(l.group_bytes()));
    for (((out, packed), &scale), &lo) in groups.zip(s).zip(z) {
        with_bits!(l.bit_width, K::decode(packed, scale, lo, out));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SIMD encoders round with `cvtps2dq` where the scalar one adds 2^23. A group's
    /// parameters make every product `t = (v − lo)·inv` finite and ≥ +0 (`v ≥ lo`, and `inv`
    /// is finite and ≥ 0); over that whole domain, up to and past 2^23 and 2^31 where the
    /// clamp takes over, both must give the same codes.
    #[test]
    fn every_flavour_encodes_like_the_scalar_one_over_the_whole_product_range() {
        let values: Vec<f32> = [
            0.0,
            1.0e-45,
            0.25,
            0.5,
            0.75,
            1.5,
            2.5,
            3.49,
            3.5,
            254.5,
            255.5,
            8_388_607.5,
            8_388_608.0,
            1.0e9,
            2.2e9,
            3.0e38,
        ]
        .iter()
        .cycle()
        .take(64 + 7)
        .copied()
        .collect();
        let params = [
            GroupParams {
                lo: 0.0,
                scale: 1.0,
                inv: 1.0,
            },
            GroupParams {
                lo: 0.0,
                scale: 1.0,
                inv: 0.0,
            },
            GroupParams {
                lo: 0.0,
                scale: 1.0,
                inv: 3.0,
            },
            GroupParams {
                lo: 0.0,
                scale: 1.0,
                inv: 1.0e-38,
            },
            GroupParams {
                lo: 0.0,
                scale: 1.0,
                inv: f32::MAX,
            },
            GroupParams::from_range(0.0, 3.0e38, 15).unwrap(),
        ];
        for p in &params {
            macro_rules! check {
                ($b:literal) => {{
                    let mut want = vec![0u8; (values.len() * $b).div_ceil(8)];
                    Portable::encode::<$b>(&values, p, &mut want);
                    #[cfg(target_arch = "x86_64")]
                    for isa in [Isa::Avx2, Isa::Avx512]
                        .into_iter()
                        .filter(|&i| i <= Isa::detected())
                    {
                        let mut got = vec![0u8; want.len()];
                        match isa {
                            Isa::Avx512 => Avx512::encode::<$b>(&values, p, &mut got),
                            _ => Avx2::encode::<$b>(&values, p, &mut got),
                        }
                        assert_eq!(got, want, "{isa:?}, {} bits, {p:?}", $b);
                    }
                }};
            }
            check!(2);
            check!(4);
            check!(8);
        }
    }
}

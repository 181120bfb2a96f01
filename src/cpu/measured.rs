//! The converter's kernel: quantize a tensor and measure the result in one pass.
//!
//! A tensor is cut into the measured chunks of [`crate::quant::metrics`] (whole rows, in
//! parallel); inside a chunk each group is converted from its stored dtype, scanned, encoded,
//! decoded again and fed to the chunk's [`Lanes`] while it sits in L1. The codes are those of
//! [`super::CpuBackend::quantize`] and the statistics those of the plain
//! [`crate::backend::measure_decoded`], bit for bit (tests below and in `tests/`).

use rayon::prelude::*;

use super::kernels::{with_bits, Scan};
use super::{refine_and_pack, Invalid, Isa, Kernels, Portable};
use crate::backend::MeasuredJob;
use crate::error::Result;
use crate::quant::metrics::{rows_per_chunk, ErrorStats, Lanes};
use crate::quant::{lsq, reference, GroupLayout, GroupParams, Method, Values};

#[cfg(test)]
thread_local! {
    /// Calls of the fused pass on this thread: lets tests see which path a backend took.
    pub(crate) static FUSED_CALLS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

pub(super) fn quantize_measured(job: &mut MeasuredJob<'_>, isa: Isa) -> Result<ErrorStats> {
    #[cfg(test)]
    FUSED_CALLS.with(|c| c.set(c.get() + 1));
    let l = job.layout;
    if job.values.len() != l.n_elements() {
        return Err(crate::error::QuantError::layer_value(job.name, format!("{} values for a layout of {}", job.values.len(), l.n_elements())));
    }
    if l.n_elements() == 0 {
        return Ok(ErrorStats::default());
    }
    let rows = rows_per_chunk(l.row_len);
    let values = job.values;
    let chunks: Vec<std::result::Result<ErrorStats, Invalid>> = crate::threads::install(|| {
        job.packed
            .par_chunks_mut(rows * l.row_bytes())
            .zip(job.scales.par_chunks_mut(rows * l.groups_per_row()))
            .zip(job.zero_points.par_chunks_mut(rows * l.groups_per_row()))
            .enumerate()
            .with_max_len(1)
            .map(|(c, ((p, s), z))| {
                let first_row = c * rows;
                let chunk = GroupLayout { n_rows: rows.min(l.n_rows - first_row), ..l };
                measure_chunk(&values, first_row * l.row_len, &chunk, p, s, z, isa)
            })
            .collect()
    });
    let mut stats = ErrorStats::default();
    for c in chunks {
        match c {
            Ok(c) => stats = stats.merge(c),
            // The same error as the plain path: NaN/Inf anywhere first, then the quantizer's.
            Err(Invalid) => {
                let w = values.to_f32();
                crate::quant::ggml::check_finite(job.name, &w)?;
                return Err(reference::first_error(job.name, &l, &w).expect("a chunk that failed has an invalid group"));
            }
        }
    }
    Ok(stats)
}

fn measure_chunk(
    values: &Values<'_>,
    start: usize,
    l: &GroupLayout,
    p: &mut [u8],
    s: &mut [f32],
    z: &mut [f32],
    isa: Isa,
) -> std::result::Result<ErrorStats, Invalid> {
    // SAFETY (both calls): `isa` never exceeds what `Isa::detected` found on this CPU.
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { chunk_avx512(values, start, l, p, s, z) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { chunk_avx2(values, start, l, p, s, z) },
        _ => chunk::<Portable>(values, start, l, p, s, z),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f")]
fn chunk_avx512(values: &Values<'_>, start: usize, l: &GroupLayout, p: &mut [u8], s: &mut [f32], z: &mut [f32]) -> std::result::Result<ErrorStats, Invalid> {
    chunk::<super::Avx512>(values, start, l, p, s, z)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn chunk_avx2(values: &Values<'_>, start: usize, l: &GroupLayout, p: &mut [u8], s: &mut [f32], z: &mut [f32]) -> std::result::Result<ErrorStats, Invalid> {
    chunk::<super::Avx2>(values, start, l, p, s, z)
}

/// One measured chunk: `l.n_rows` rows starting at element `start` of the tensor.
#[inline(always)]
fn chunk<K: Kernels>(values: &Values<'_>, start: usize, l: &GroupLayout, p: &mut [u8], s: &mut [f32], z: &mut [f32]) -> std::result::Result<ErrorStats, Invalid> {
    let max_code = l.bit_width.max_code();
    let mut lanes = Lanes::new(l.n_elements());
    // One group converted from the stored dtype, and one group decoded back.
    let mut input = vec![0f32; l.group_size];
    let mut back = vec![0f32; l.group_size];
    let gpr = l.groups_per_row();
    let rows = p.chunks_mut(l.row_bytes()).zip(s.chunks_mut(gpr)).zip(z.chunks_mut(gpr));
    for (r, ((p, s), z)) in rows.enumerate() {
        let row_start = start + r * l.row_len;
        if l.method == Method::Lsq {
            lsq_row::<K>(values, row_start, l, p, s, z, &mut lanes, &mut input, &mut back)?;
            continue;
        }
        let groups = p.chunks_mut(l.group_bytes()).zip(s.iter_mut()).zip(z.iter_mut());
        for (g, ((packed, scale), zero)) in groups.enumerate() {
            let at = row_start + g * l.group_size;
            let n = l.group_size.min(l.row_len - g * l.group_size);
            let w = values.get(at..at + n, &mut input);
            let Scan::Range { lo, hi } = K::scan(w) else { return Err(Invalid) };
            let params = GroupParams::from_range(lo, hi, max_code).map_err(|_| Invalid)?;
            with_bits!(l.bit_width, K::encode(w, &params, packed));
            *scale = params.scale;
            *zero = params.lo;
            measure_group::<K>(w, packed, *scale, *zero, l, &mut back[..n], &mut lanes);
        }
    }
    Ok(lanes.finish())
}

/// Decodes one packed group into `back` and adds the pair to the chunk's statistics.
#[inline(always)]
fn measure_group<K: Kernels>(w: &[f32], packed: &[u8], scale: f32, zero: f32, l: &GroupLayout, back: &mut [f32], lanes: &mut Lanes) {
    with_bits!(l.bit_width, K::decode(packed, scale, zero, back));
    #[cfg(target_arch = "x86_64")]
    if K::AVX2 {
        // SAFETY: only the x86 kernels set `AVX2`, and they run after runtime detection of
        // AVX2 or AVX-512 (`chunk_avx2`, `chunk_avx512`).
        unsafe { lanes.push_avx2(w, back) };
        return;
    }
    lanes.push(w, back);
}

/// One row of a measured chunk by `lsq`: its groups are scanned and refined [`lsq::BATCH`] at
/// a time (`lsq::refine_batch`, as `CpuBackend::quantize` does), then packed, decoded and
/// measured one by one.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn lsq_row<K: Kernels>(
    values: &Values<'_>,
    row_start: usize,
    l: &GroupLayout,
    p: &mut [u8],
    s: &mut [f32],
    z: &mut [f32],
    lanes: &mut Lanes,
    input: &mut Vec<f32>,
    back: &mut [f32],
) -> std::result::Result<(), Invalid> {
    const EMPTY: &[f32] = &[];
    let max_code = l.bit_width.max_code();
    input.resize(lsq::BATCH * l.group_size, 0.0);
    let batch_len = lsq::BATCH * l.group_size;
    let batches = p.chunks_mut(lsq::BATCH * l.group_bytes()).zip(s.chunks_mut(lsq::BATCH)).zip(z.chunks_mut(lsq::BATCH));
    for (b, ((p, s), z)) in batches.enumerate() {
        let at = row_start + b * batch_len;
        let n = batch_len.min(l.row_len - b * batch_len);
        let w = values.get(at..at + n, input);
        let mut groups = [EMPTY; lsq::BATCH];
        let mut starts = [GroupParams { lo: 0.0, scale: 0.0, inv: 0.0 }; lsq::BATCH];
        for (i, g) in w.chunks(l.group_size).enumerate() {
            let Scan::Range { lo, hi } = K::scan(g) else { return Err(Invalid) };
            groups[i] = g;
            starts[i] = GroupParams::from_range(lo, hi, max_code).map_err(|_| Invalid)?;
        }
        let k = s.len();
        refine_and_pack::<K>(&groups[..k], &starts[..k], l, p, s, z);
        for ((g, packed), (&scale, &zero)) in groups[..k].iter().zip(p.chunks(l.group_bytes())).zip(s.iter().zip(z.iter())) {
            measure_group::<K>(g, packed, scale, zero, l, &mut back[..g.len()], lanes);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use half::{bf16, f16};
    use proptest::prelude::*;

    use super::*;
    use crate::backend::{Backend, DequantJob, QuantJob};
    use crate::cpu::CpuBackend;
    use crate::quant::{BitWidth, QuantConfig};

    /// The CPU backend's quantizer and dequantizer with the trait's plain `quantize_measured`.
    struct Plain(CpuBackend);

    impl Backend for Plain {
        fn name(&self) -> String {
            "plain".into()
        }
        fn quantize(&self, jobs: &mut [QuantJob<'_>]) -> Result<()> {
            self.0.quantize(jobs)
        }
        fn dequantize(&self, jobs: &mut [DequantJob<'_>]) -> Result<()> {
            self.0.dequantize(jobs)
        }
    }

    type Out = (Vec<u8>, Vec<f32>, Vec<f32>, std::result::Result<[u64; 6], String>);

    fn run(backend: &dyn Backend, values: Values<'_>, layout: GroupLayout) -> Out {
        let (mut p, mut s, mut z) = (vec![0u8; layout.packed_len()], vec![0f32; layout.n_groups()], vec![0f32; layout.n_groups()]);
        let r = backend.quantize_measured(&mut MeasuredJob { name: "t", values, layout, packed: &mut p, scales: &mut s, zero_points: &mut z });
        let r = r
            .map(|s| [s.n as u64, s.max_abs_error.to_bits(), s.sum_sq_error.to_bits(), s.sum_sq_signal.to_bits(), s.dot.to_bits(), s.sum_sq_recon.to_bits()])
            .map_err(|e| e.to_string());
        if r.is_err() {
            return (vec![], vec![], vec![], r);
        }
        (p, s, z, r)
    }

    /// Fused (every kernel flavour) against plain, for one tensor stored as `dtype`.
    fn check(w: &[f32], layout: GroupLayout, dtype: u8) {
        let bytes: Vec<u8> = match dtype {
            1 | 2 => w.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect(),
            3 => w.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes()).collect(),
            _ => [0u8].into_iter().chain(w.iter().flat_map(|v| v.to_le_bytes())).collect(),
        };
        let values = match dtype {
            0 => Values::F32(w),
            1 | 2 => Values::F16(&bytes),
            3 => Values::BF16(&bytes),
            _ => Values::f32_bytes(&bytes[1..]),
        };
        let want = run(&Plain(CpuBackend::new()), values, layout);
        for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
            assert_eq!(run(&CpuBackend::up_to(isa), values, layout), want, "{isa:?}, dtype {dtype}");
        }
    }

    fn layout(rows: usize, row_len: usize, bits: i64, group: i64) -> GroupLayout {
        GroupLayout::new(rows, row_len, QuantConfig::new(BitWidth::new(bits).unwrap(), group).unwrap())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Codes, parameters, statistics and errors are those of the plain path, for every
        /// shape (partial last groups, rows of any length), bit width and stored dtype.
        #[test]
        fn fused_equals_plain(
            rows in 1usize..6,
            row_len in 1usize..300,
            bits in prop::sample::select(vec![2i64, 4, 8]),
            group in prop::sample::select(vec![8i64, 16, 32, 128]),
            dtype in 0u8..5,
            seed in any::<u64>(),
            poison in prop::option::of((any::<prop::sample::Index>(), prop::sample::select(vec![f32::NAN, f32::INFINITY, -f32::MAX, f32::MAX]))),
        ) {
            let mut x = seed | 1;
            let mut w: Vec<f32> = (0..rows * row_len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
                })
                .collect();
            if let Some((at, v)) = poison {
                let i = at.index(w.len());
                w[i] = v;
                if v == f32::MAX {
                    // a range that overflows: both ends in the same group
                    w[i - i % 8] = -f32::MAX;
                }
            }
            check(&w, layout(rows, row_len, bits, group), dtype);
        }
    }

    /// Tensors of several measured chunks, the last one partial.
    #[test]
    fn many_chunks() {
        let w: Vec<f32> = (0..2500 * 1000).map(|i| ((i as f32) * 0.37).sin()).collect();
        for dtype in [0, 3] {
            check(&w, layout(2500, 1000, 4, 128), dtype);
        }
    }
}

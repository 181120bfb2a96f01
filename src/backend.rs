//! The small interface every compute backend implements, and the job types it works on.
//!
//! A job borrows its input and writes into output slices that the caller allocated once (for
//! the Python path: the very buffers of the output Arrow arrays), so a backend never allocates
//! result storage of its own and results reach the caller without a copy.

use crate::error::{QuantError, Result};
use crate::quant::metrics::{rows_per_chunk, ErrorStats};
use crate::quant::{GroupLayout, Values};

/// One layer to quantize.
pub struct QuantJob<'a> {
    pub name: &'a str,
    pub weights: &'a [f32],
    pub layout: GroupLayout,
    /// `layout.packed_len()` bytes.
    pub packed: &'a mut [u8],
    /// `layout.n_groups()` values each.
    pub scales: &'a mut [f32],
    pub zero_points: &'a mut [f32],
}

/// One quantized layer to expand back to `f32`.
pub struct DequantJob<'a> {
    pub name: &'a str,
    pub layout: GroupLayout,
    pub packed: &'a [u8],
    pub scales: &'a [f32],
    pub zero_points: &'a [f32],
    /// `layout.n_elements()` values.
    pub out: &'a mut [f32],
}

/// One tensor to quantize and measure (the converter's job): its values in their stored dtype,
/// and the error statistics of the result (see [`crate::quant::metrics`]) computed on the way.
pub struct MeasuredJob<'a> {
    pub name: &'a str,
    pub values: Values<'a>,
    pub layout: GroupLayout,
    pub packed: &'a mut [u8],
    pub scales: &'a mut [f32],
    pub zero_points: &'a mut [f32],
}

/// A compute backend. Implementations must produce the bytes of [`crate::quant::reference`].
pub trait Backend: Send + Sync {
    /// A short human-readable description ("cpu (rayon, 2 threads, avx2)", the adapter name…).
    fn name(&self) -> String;

    /// Quantizes every job. On error (NaN/Inf, overflowing range) the error names the first
    /// offending layer in job order; the outputs are then unspecified.
    fn quantize(&self, jobs: &mut [QuantJob<'_>]) -> Result<()>;

    fn dequantize(&self, jobs: &mut [DequantJob<'_>]) -> Result<()>;

    /// Quantizes one tensor and measures the result against its values. The plain way, which
    /// any backend can use and the fused CPU kernels are tested against: convert to f32,
    /// [`Backend::quantize`], then decode a chunk at a time and compare.
    ///
    /// Errors are those of a check of the whole tensor for NaN/Inf first, then of the
    /// quantizer, whatever the backend met first.
    fn quantize_measured(&self, job: &mut MeasuredJob<'_>) -> Result<ErrorStats> {
        let w = job.values.to_f32();
        let quantized = self.quantize(&mut [QuantJob {
            name: job.name,
            weights: &w,
            layout: job.layout,
            packed: job.packed,
            scales: job.scales,
            zero_points: job.zero_points,
        }]);
        if let Err(e) = quantized {
            return Err(crate::quant::ggml::check_finite(job.name, &w).err().unwrap_or(e));
        }
        measure_decoded(self, job.name, job.layout, job.packed, job.scales, job.zero_points, &w)
    }
}

/// Error statistics of a quantized tensor against `w`, a measured chunk at a time.
pub fn measure_decoded<B: Backend + ?Sized>(
    backend: &B,
    name: &str,
    l: GroupLayout,
    packed: &[u8],
    scales: &[f32],
    zero_points: &[f32],
    w: &[f32],
) -> Result<ErrorStats> {
    if w.len() != l.n_elements() {
        return Err(QuantError::layer_value(name, format!("{} values for a layout of {}", w.len(), l.n_elements())));
    }
    let rows_per = rows_per_chunk(l.row_len);
    let mut buf = vec![0f32; rows_per.min(l.n_rows) * l.row_len];
    let (rb, gpr) = (l.row_bytes(), l.groups_per_row());
    let mut stats = ErrorStats::default();
    let mut r0 = 0;
    while r0 < l.n_rows {
        let r1 = (r0 + rows_per).min(l.n_rows);
        let sub = GroupLayout { n_rows: r1 - r0, ..l };
        let out = &mut buf[..sub.n_elements()];
        backend.dequantize(&mut [DequantJob {
            name,
            layout: sub,
            packed: &packed[r0 * rb..r1 * rb],
            scales: &scales[r0 * gpr..r1 * gpr],
            zero_points: &zero_points[r0 * gpr..r1 * gpr],
            out,
        }])?;
        stats.add(&w[r0 * l.row_len..r1 * l.row_len], &buf[..sub.n_elements()]);
        r0 = r1;
    }
    Ok(stats)
}

/// An owned quantized tensor, for Rust callers who do not manage output buffers themselves.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedTensor {
    pub layout: GroupLayout,
    pub packed: Vec<u8>,
    pub scales: Vec<f32>,
    pub zero_points: Vec<f32>,
}

impl QuantizedTensor {
    /// Output buffers for `layout`, zeroed.
    fn zeroed(layout: GroupLayout) -> Self {
        Self { layout, packed: vec![0; layout.packed_len()], scales: vec![0.0; layout.n_groups()], zero_points: vec![0.0; layout.n_groups()] }
    }

    /// Quantizes one tensor with `backend`.
    pub fn quantize(backend: &dyn Backend, name: &str, weights: &[f32], layout: GroupLayout) -> Result<Self> {
        assert_eq!(weights.len(), layout.n_elements(), "weights do not match the layout");
        let mut q = Self::zeroed(layout);
        backend.quantize(&mut [QuantJob {
            name,
            weights,
            layout,
            packed: &mut q.packed,
            scales: &mut q.scales,
            zero_points: &mut q.zero_points,
        }])?;
        Ok(q)
    }

    /// Quantizes one tensor with `backend` and measures the error it makes
    /// ([`Backend::quantize_measured`]).
    pub fn quantize_measured(backend: &dyn Backend, name: &str, values: Values<'_>, layout: GroupLayout) -> Result<(Self, ErrorStats)> {
        let mut q = Self::zeroed(layout);
        let stats = backend.quantize_measured(&mut MeasuredJob {
            name,
            values,
            layout,
            packed: &mut q.packed,
            scales: &mut q.scales,
            zero_points: &mut q.zero_points,
        })?;
        Ok((q, stats))
    }

    pub fn dequantize(&self, backend: &dyn Backend) -> Result<Vec<f32>> {
        let mut out = vec![0f32; self.layout.n_elements()];
        backend.dequantize(&mut [DequantJob {
            name: "",
            layout: self.layout,
            packed: &self.packed,
            scales: &self.scales,
            zero_points: &self.zero_points,
            out: &mut out,
        }])?;
        Ok(out)
    }
}

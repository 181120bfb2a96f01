//! The small interface every compute backend implements, and the job types it works on.
//!
//! A job borrows its input and writes into output slices that the caller allocated once (for
//! the Python path: the very buffers of the output Arrow arrays), so a backend never allocates
//! result storage of its own and results reach the caller without a copy.

use crate::error::Result;
use crate::quant::GroupLayout;

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

/// A compute backend. Implementations must produce the bytes of [`crate::quant::reference`].
pub trait Backend: Send + Sync {
    /// A short human-readable description ("cpu (rayon, 2 threads, avx2)", the adapter name…).
    fn name(&self) -> String;

    /// Quantizes every job. On error (NaN/Inf, overflowing range) the error names the first
    /// offending layer in job order; the outputs are then unspecified.
    fn quantize(&self, jobs: &mut [QuantJob<'_>]) -> Result<()>;

    fn dequantize(&self, jobs: &mut [DequantJob<'_>]) -> Result<()>;
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
    /// Quantizes one tensor with `backend`.
    pub fn quantize(backend: &dyn Backend, name: &str, weights: &[f32], layout: GroupLayout) -> Result<Self> {
        assert_eq!(weights.len(), layout.n_elements(), "weights do not match the layout");
        let mut packed = vec![0u8; layout.packed_len()];
        let mut scales = vec![0f32; layout.n_groups()];
        let mut zero_points = vec![0f32; layout.n_groups()];
        backend.quantize(&mut [QuantJob {
            name,
            weights,
            layout,
            packed: &mut packed,
            scales: &mut scales,
            zero_points: &mut zero_points,
        }])?;
        Ok(Self { layout, packed, scales, zero_points })
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

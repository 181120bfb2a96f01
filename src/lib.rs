//! arrow_quant_v2: group-wise 2/4/8-bit quantization of weight tensors, with Arrow in and out.
//!
//! The math is defined once, in [`quant`]; [`cpu`] and `gpu` are backends behind the
//! [`backend::Backend`] interface and produce the same bytes. [`arrow`] turns tables of layers
//! into jobs and results into RecordBatches; `python` is the only module that knows pyo3.

pub mod arrow;
pub mod backend;
pub mod contain;
pub mod cpu;
pub mod device;
pub mod error;
pub mod gguf;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod model;
pub mod quant;
pub mod readahead;
pub mod threads;

#[cfg(feature = "python")]
mod python;

pub use backend::{Backend, DequantJob, MeasuredJob, QuantJob, QuantizedTensor};
pub use device::Device;
pub use error::{QuantError, Result};
pub use quant::{BitWidth, GroupLayout, Method, QuantConfig, Values};

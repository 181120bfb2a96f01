//! Whole models: reading checkpoints, deciding per tensor what to quantize, writing GGUF or
//! Arrow IPC, and the per-tensor quality report.
//!
//! * [`safetensors_reader`]: checkpoints (single file, sharded, diffusers folders), tensor by tensor.
//! * [`rules`]: which tensors stay in high precision (and `--keep` / `--quantize` globs).
//! * [`atomic`]: outputs written under a temporary name and renamed when complete.
//! * [`convert`]: the pipeline; [`arrow_out`]: the Arrow IPC output and the report table;
//!   [`quantized`]: reading a converted file back (inspect, dequantize).

pub mod arrow_out;
pub mod atomic;
pub mod convert;
pub mod quantized;
pub mod rules;
pub mod safetensors_reader;

pub use convert::{convert, NoProgress, Options, OutputFormat, Progress, QuantType, TensorReport};
pub use safetensors_reader::{Checkpoint, TensorDtype, TensorInfo};

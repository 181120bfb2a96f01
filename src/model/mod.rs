//! Whole models: reading checkpoints, deciding per tensor what to quantize, writing GGUF or
//! Arrow IPC, and the per-tensor quality report.
//!
//! * [`safetensors_reader`]: checkpoints (single file, sharded, diffusers folders), tensor by tensor.
//! * [`rules`]: which tensors stay in high precision (and `--keep` / `--quantize` globs).
//! * [`atomic`]: outputs written under a temporary name and renamed when complete.
//! * [`source`]: the model read, a safetensors checkpoint or a GGUF file.
//! * [`convert`]: the conversion, through [`pipeline`] (read-ahead, encode, write on three
//!   threads); [`gguf_out`]: GGUF output (llama.cpp's mixes, metadata, one
//!   tensor's encoding); [`arrow_out`]: the Arrow IPC output and the report table;
//!   [`quantized`]: reading a converted file back (inspect, dequantize).

pub mod arrow_out;
pub mod atomic;
pub mod convert;
pub mod gguf_out;
pub mod pipeline;
pub mod quantized;
pub mod rules;
pub mod safetensors_reader;
pub mod source;

pub use convert::{convert, CosinePolicy, NoProgress, Options, OutputFormat, Progress, QuantType, TensorReport};
pub use safetensors_reader::{Checkpoint, TensorDtype, TensorInfo};

//! The fuzz targets, one module each, with `check(input)`: the AFL++ binaries in `src/bin` call
//! it on every input, and the main crate's `tests/fuzz_regressions.rs` replays the seeds and
//! every crash ever found through the same function.
//!
//! The binaries use `fuzz_nohook!`: a panic that the code under test catches and turns into an
//! error on purpose (third-party readers that panic on malformed files, see
//! `model::quantized::read_batches`) is a result, not a finding; a panic that escapes `check` is.

pub mod arrow_stream;
pub mod gguf_reader;
pub mod imatrix_reader;
pub mod quantized_reader;
pub mod safetensors_reader;

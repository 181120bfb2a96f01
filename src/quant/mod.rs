//! The quantization contract: the one definition of the math that every backend must meet
//! byte for byte.
//!
//! * [`spec`]: bit widths and group sizes, validated once.
//! * [`layout`]: how a tensor's elements are cut into groups and where each group's bytes go.
//! * [`params`]: per-group min/max → `lo`, `scale`, `inv` (the only divisions).
//! * [`codes`]: per-element code and its inverse.
//! * [`lsq`]: `method="lsq"`, the min/max grid refined by alternating least squares.
//! * [`pack`]: bit packing of codes into bytes.
//! * [`reference`]: the plain scalar quantizer built from the pieces above; the backends are
//!   tested against it.
//! * [`metrics`]: error measures between original and dequantized weights.
//! * [`values`]: weights in their stored dtype (f32, f16, bf16, f64), read as f32.
//! * [`ggml`]: ggml's block formats (GGUF's Q4_0 … Q6_K), a second scheme beside the affine one.

pub mod codes;
pub mod ggml;
pub mod layout;
pub mod lsq;
pub mod metrics;
pub mod pack;
pub mod params;
pub mod reference;
pub mod spec;
pub mod values;

pub use layout::GroupLayout;
pub use params::GroupParams;
pub use spec::{BitWidth, Method, QuantConfig};
pub use values::Values;

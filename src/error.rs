//! One error type for the crate; `python` maps each variant to a Python exception class in one
//! place. Messages name the layer and the problem, and some are matched on by code written for
//! the earlier API of this package, so their wording is part of the interface.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum QuantError {
    #[error("Invalid bit_width: {0}. Must be 2, 4, or 8")]
    InvalidBitWidth(i64),

    #[error("Invalid group_size: {0}. Must be a positive multiple of 8, at most 4294967288")]
    InvalidGroupSize(i64),

    #[error("Missing required column '{0}'")]
    MissingColumn(String),

    #[error("Layer '{layer}' contains NaN or Inf at index {index} (value {value}); only finite weights can be quantized")]
    NonFinite { layer: String, index: usize, value: f32 },

    #[error("Layer '{layer}': group {group} spans [{lo:e}, {hi:e}], a width that overflows float32; such a group cannot be quantized")]
    RangeOverflow { layer: String, group: usize, lo: f32, hi: f32 },

    /// A shape that disagrees with the data it describes (the weights' count, the quantized
    /// bytes or the number of scales).
    #[error("Layer '{layer}': {message}")]
    ShapeMismatch { layer: String, message: String },

    /// A tensor whose quantization misses a required cosine similarity.
    #[error("Layer '{layer}': cosine similarity {cosine:.6} at {bits} bits is below the required {threshold}")]
    BelowThreshold { layer: String, bits: u8, cosine: f64, threshold: f64 },

    /// A value that is present but wrong (null, empty list, bad option).
    #[error("{}", with_layer(.layer, .message))]
    InvalidValue { layer: Option<String>, message: String },

    /// A value of the wrong type (non-numeric weights, non-string names).
    #[error("{}", with_layer(.layer, .message))]
    InvalidType { layer: Option<String>, message: String },

    /// No usable compute device (no adapter, no driver, lost device).
    #[error("{0}")]
    Device(String),

    /// The chosen device has no exact implementation of what was asked (a method or type):
    /// refused rather than run differently. `auto` runs such work on the CPU.
    #[error("{0}")]
    Unsupported(String),

    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

fn with_layer(layer: &Option<String>, message: &str) -> String {
    match layer {
        Some(name) => format!("Layer '{name}': {message}"),
        None => message.to_string(),
    }
}

impl QuantError {
    pub fn value(message: impl Into<String>) -> Self {
        Self::InvalidValue { layer: None, message: message.into() }
    }

    pub fn layer_value(layer: &str, message: impl Into<String>) -> Self {
        Self::InvalidValue { layer: Some(layer.to_string()), message: message.into() }
    }

    pub fn shape_mismatch(layer: &str, message: impl Into<String>) -> Self {
        Self::ShapeMismatch { layer: layer.to_string(), message: message.into() }
    }

    pub fn layer_type(layer: &str, message: impl Into<String>) -> Self {
        Self::InvalidType { layer: Some(layer.to_string()), message: message.into() }
    }

    pub fn type_error(message: impl Into<String>) -> Self {
        Self::InvalidType { layer: None, message: message.into() }
    }
}

pub type Result<T, E = QuantError> = std::result::Result<T, E>;

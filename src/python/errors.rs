//! The one place where crate errors become Python exceptions, and where a panic is stopped
//! before it reaches Python.

use std::panic::{catch_unwind, AssertUnwindSafe};

use std::io::ErrorKind;

use pyo3::exceptions::{PyFileNotFoundError, PyNotImplementedError, PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::{create_exception, PyErr, PyResult};

use crate::contain::{contain, panic_message};
use crate::error::QuantError;

// The earlier package's exception classes, under the built-ins callers already catch: code
// written against either package (`except ValueError`, `except OSError`, or the class itself)
// keeps working.
create_exception!(arrow_quant_v2, QuantizationError, PyValueError, "Quantization of a layer failed (e.g. a group whose range overflows float32).");
create_exception!(arrow_quant_v2, ConfigurationError, PyValueError, "An option or config value is out of range (bit width, group size, a DiffusionQuantConfig field).");
create_exception!(arrow_quant_v2, ValidationError, PyValueError, "The data failed validation: NaN/Inf weights, or a quality threshold (min_accuracy) not reached.");
create_exception!(arrow_quant_v2, ModelNotFoundError, PyFileNotFoundError, "A model path (or another input file) does not exist.");
create_exception!(arrow_quant_v2, MetadataError, PyValueError, "A model's metadata (metadata.json, a safetensors index) is unreadable or invalid.");
create_exception!(arrow_quant_v2, ShapeMismatchError, PyValueError, "A shape disagrees with the data it describes.");

impl From<QuantError> for PyErr {
    fn from(e: QuantError) -> PyErr {
        let message = e.to_string();
        match e {
            QuantError::InvalidBitWidth(_) | QuantError::InvalidGroupSize(_) => ConfigurationError::new_err(message),
            QuantError::NonFinite { .. } | QuantError::BelowThreshold { .. } => ValidationError::new_err(message),
            QuantError::RangeOverflow { .. } => QuantizationError::new_err(message),
            QuantError::ShapeMismatch { .. } => ShapeMismatchError::new_err(message),
            QuantError::InvalidType { .. } => PyTypeError::new_err(message),
            QuantError::Device(_) => PyRuntimeError::new_err(message),
            QuantError::Unsupported(_) => PyNotImplementedError::new_err(message),
            QuantError::Io { source, .. } if source.kind() == ErrorKind::NotFound => ModelNotFoundError::new_err(message),
            QuantError::Io { .. } => PyOSError::new_err(message),
            QuantError::MissingColumn(_) | QuantError::InvalidValue { .. } => PyValueError::new_err(message),
        }
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("QuantizationError", py.get_type::<QuantizationError>())?;
    m.add("ConfigurationError", py.get_type::<ConfigurationError>())?;
    m.add("ValidationError", py.get_type::<ValidationError>())?;
    m.add("ModelNotFoundError", py.get_type::<ModelNotFoundError>())?;
    m.add("MetadataError", py.get_type::<MetadataError>())?;
    m.add("ShapeMismatchError", py.get_type::<ShapeMismatchError>())?;
    Ok(())
}

/// Runs the body of an exported function. pyo3 would turn a panic into `PanicException`, a
/// `BaseException` that `except Exception` does not catch; every panic is a bug of ours, so it
/// becomes a `RuntimeError` that says so and carries the message. (The goal stays zero panics:
/// the tests assert on the specific errors, never on this one.)
pub fn guarded<T>(function: &str, body: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| {
        Err(PyRuntimeError::new_err(format!(
            "{function}: internal error (a bug in arrow_quant_v2, please report it): {}",
            panic_message(payload.as_ref())
        )))
    })
}

/// Runs an import from an outside Arrow producer. arrow-rs's C Data Interface import asserts
/// on some malformed structures (a child or buffer count that does not fit the declared type);
/// such a panic is the producer's fault, so it is a `ValueError` (the outer error). The import's
/// own result is returned as it is, for the caller to map.
pub fn importing<T, E>(body: impl FnOnce() -> Result<T, E>) -> PyResult<Result<T, E>> {
    contain(body).map_err(|message| {
        PyValueError::new_err(format!(
            "the Arrow data given is malformed (its C Data Interface structures do not match its schema): {message}"
        ))
    })
}

//! The one place where crate errors become Python exceptions, and where a panic is stopped
//! before it reaches Python.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::{PyErr, PyResult};

use crate::contain::{contain, panic_message};
use crate::error::QuantError;

impl From<QuantError> for PyErr {
    fn from(e: QuantError) -> PyErr {
        let message = e.to_string();
        match e {
            QuantError::InvalidType { .. } => PyTypeError::new_err(message),
            QuantError::Device(_) => PyRuntimeError::new_err(message),
            QuantError::Io { .. } => PyOSError::new_err(message),
            _ => PyValueError::new_err(message),
        }
    }
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

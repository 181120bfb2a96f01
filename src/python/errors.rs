//! The one place where crate errors become Python exceptions.

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::PyErr;

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

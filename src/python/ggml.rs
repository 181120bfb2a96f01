//! `gguf_quantize` / `gguf_dequantize`: ggml's block formats on numpy arrays (the Python
//! wrappers in `arrow_quant_v2.gguf` normalize dtypes and shapes first).

use numpy::{PyArray1, PyReadonlyArray1};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::errors::guarded;
use crate::device::{Device, GgmlDevice};
use crate::error::{QuantError, Result};
use crate::gguf::mix::{fallback, TensorDesc};
use crate::quant::ggml::{self, GgmlType};

fn tensor_type(name: &str) -> Result<GgmlType> {
    name.parse::<GgmlType>().map_err(|_| {
        QuantError::value(format!(
            "Unknown GGUF type '{name}'. Must be one of f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0, q2_k, q3_k, q4_k, q5_k, q6_k \
             (mixes such as q4_k_m are chosen per tensor by the model converter)"
        ))
    })
}

/// Encodes contiguous float32 rows of `n_per_row` as `type_name` on `device` (see
/// [`GgmlDevice`]); the GIL is released.
#[pyfunction]
#[pyo3(signature = (x, n_per_row, type_name, imatrix = None, device = "auto"))]
fn _gguf_quantize<'py>(
    py: Python<'py>,
    x: PyReadonlyArray1<'py, f32>,
    n_per_row: usize,
    type_name: &str,
    imatrix: Option<PyReadonlyArray1<'py, f32>>,
    device: &str,
) -> PyResult<Bound<'py, PyBytes>> {
    guarded("gguf_quantize", || {
        let ty = tensor_type(type_name)?;
        let device = device.parse::<Device>()?;
        let x = x.as_slice()?;
        let imatrix = imatrix.as_ref().map(|w| w.as_slice()).transpose()?;
        let out = py.detach(|| -> Result<Vec<u8>> {
            ggml::check_finite("array", x)?;
            let n_bytes = ggml::check_rows(ty, x.len(), n_per_row, imatrix).map_err(|e| with_fallback(e, ty, n_per_row))?;
            let dev = GgmlDevice::new(device)?;
            let mut out = vec![0u8; n_bytes];
            dev.quantize(ty, x, n_per_row, imatrix, &mut out)?;
            Ok(out)
        })?;
        Ok(PyBytes::new(py, &out))
    })
}

/// A row that does not fit `ty`'s blocks: name the type llama.cpp falls back to for such a
/// tensor (the model converter uses it on its own).
fn with_fallback(e: QuantError, ty: GgmlType, n_per_row: usize) -> QuantError {
    if ty.row_bytes(n_per_row).is_some() {
        return e;
    }
    match fallback(&TensorDesc::new("array", &[n_per_row as u64], ty), ty) {
        Ok((fb, _)) => QuantError::value(format!("{e}; llama.cpp quantizes such rows as {}", fb.name())),
        Err(_) => QuantError::value(format!("{e}; llama.cpp has no fallback type for it")),
    }
}

/// Decodes `n` elements of `type_name` blocks to a flat float32 array.
#[pyfunction]
fn _gguf_dequantize<'py>(py: Python<'py>, data: &[u8], type_name: &str, n: usize) -> PyResult<Bound<'py, PyArray1<f32>>> {
    guarded("gguf_dequantize", || {
        let ty = tensor_type(type_name)?;
        let out = py.detach(|| -> Result<Vec<f32>> {
            ggml::check_decode(ty, data.len(), n)?;
            let mut out = vec![0f32; n];
            ggml::dequantize(ty, data, &mut out)?;
            Ok(out)
        })?;
        Ok(PyArray1::from_vec(py, out))
    })
}

/// The types with a GPU kernel (without an importance matrix), by name.
#[pyfunction]
fn _gguf_gpu_types() -> Vec<String> {
    GgmlType::QUANTIZED.iter().filter(|&&t| GgmlDevice::has_kernel(t)).map(|t| t.name().to_ascii_lowercase()).collect()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_gguf_gpu_types, m)?)?;
    m.add_function(wrap_pyfunction!(_gguf_quantize, m)?)?;
    m.add_function(wrap_pyfunction!(_gguf_dequantize, m)?)?;
    Ok(())
}

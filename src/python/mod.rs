//! The Python extension module `arrow_quant_v2._native`: the only code that knows pyo3.
//!
//! Inputs cross through the Arrow PyCapsule interface with `pyo3-arrow` (any producer:
//! pyarrow, polars, duckdb, nanoarrow); outputs go back as pyarrow objects through the same
//! interface, without copies. The GIL is released while batches are read and quantized.

mod errors;
mod ggml;
mod model;

use arrow_array::RecordBatch;
use arrow_schema::{ArrowError, SchemaRef};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3_arrow::input::AnyRecordBatch;
use pyo3_arrow::{PyRecordBatch, PySchema, PyTable};

use crate::arrow::schema::{dequantized_schema, quantized_schema, with_method, read_metadata, schema_metadata, LAYER_NAME, WEIGHTS};
use crate::arrow::quantize::unify_code_types;
use crate::arrow::validate::validate_batch;
use crate::arrow::{dequantize_batch, quantize_batch};
use errors::{guarded, importing};
use crate::device::{backend, Device};
use crate::error::{QuantError, Result};
use crate::quant::{BitWidth, Method, QuantConfig};

fn config(bit_width: i64, group_size: i64, method: &str) -> Result<QuantConfig> {
    Ok(QuantConfig::new(BitWidth::new(bit_width)?, group_size)?.with_method(Method::parse(method)?))
}

fn arrow_input(data: &Bound<'_, PyAny>, what: &str) -> PyResult<AnyRecordBatch> {
    importing(|| data.extract::<AnyRecordBatch>())?.map_err(|_| {
        PyTypeError::new_err(format!(
            "{what} expects an Arrow table, record batch or stream (any object with __arrow_c_stream__ or __arrow_c_array__, e.g. pyarrow, polars, duckdb), got {}",
            data.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "an unknown type".into())
        ))
    })
}

fn read_error(e: ArrowError) -> QuantError {
    QuantError::value(format!("could not read the input stream: {e}"))
}

fn require_columns(schema: &SchemaRef, columns: &[&str]) -> Result<()> {
    for &c in columns {
        if schema.column_with_name(c).is_none() {
            return Err(QuantError::MissingColumn(c.to_string()));
        }
    }
    Ok(())
}

/// Runs `f` on every batch of the input, without the GIL. Each batch is imported (a panic of
/// the import is the producer's fault: `ValueError`) and fully validated against the stream's
/// schema before `f` reads it.
fn map_batches(
    py: Python<'_>,
    input: AnyRecordBatch,
    required: &[&str],
    f: impl Fn(&RecordBatch) -> Result<RecordBatch> + Send + Sync,
) -> PyResult<Vec<RecordBatch>> {
    let mut reader = importing(|| input.into_reader())??;
    let schema = reader.schema();
    require_columns(&schema, required)?;
    py.detach(|| {
        let mut out = Vec::new();
        while let Some(batch) = importing(|| reader.next().transpose())?.map_err(read_error)? {
            validate_batch(&batch, Some(&schema))?;
            out.push(f(&batch)?);
        }
        Ok(out)
    })
}

fn quantize_table<'py>(py: Python<'py>, input: AnyRecordBatch, config: QuantConfig, device: Device) -> PyResult<Bound<'py, PyAny>> {
    let backend = backend(device)?;
    let batches = unify_code_types(map_batches(py, input, &[LAYER_NAME, WEIGHTS], |b| quantize_batch(b, config, backend))?)?;
    let schema = match batches.first() {
        Some(b) => b.schema(),
        None => with_method(&quantized_schema(config.group_size, false), config.method)?,
    };
    PyTable::try_new(batches, schema)?.into_pyarrow(py)
}

fn dequantize_table<'py>(py: Python<'py>, input: AnyRecordBatch, group_size: Option<i64>, device: Device) -> PyResult<Bound<'py, PyAny>> {
    let backend = backend(device)?;
    let batches = map_batches(py, input, &[LAYER_NAME], |b| dequantize_batch(b, group_size, backend))?;
    PyTable::try_new(batches, dequantized_schema())?.into_pyarrow(py)
}

/// A RecordBatch given on its own (`__arrow_c_array__`): validated like a stream's batches.
fn one_batch(batch: PyRecordBatch, required: &[&str]) -> Result<RecordBatch> {
    let batch = batch.into_inner();
    validate_batch(&batch, None)?;
    require_columns(&batch.schema(), required)?;
    Ok(batch)
}

#[pyfunction]
#[pyo3(signature = (table, *, bit_width = 4, group_size = 128, device = "auto", method = "minmax"))]
fn quantize_arrow<'py>(py: Python<'py>, table: &Bound<'py, PyAny>, bit_width: i64, group_size: i64, device: &str, method: &str) -> PyResult<Bound<'py, PyAny>> {
    guarded("quantize_arrow", || {
        let config = config(bit_width, group_size, method)?;
        let device: Device = device.parse()?;
        quantize_table(py, arrow_input(table, "quantize_arrow")?, config, device)
    })
}

/// `quantize_arrow` that returns the kind it was given: a RecordBatch for a RecordBatch, a
/// Table for a Table or any stream (what Ray's `map_batches` and `datasets.map` pass).
#[pyfunction]
#[pyo3(signature = (batch, *, bit_width = 4, group_size = 128, device = "auto", method = "minmax"))]
fn quantize_arrow_batch<'py>(py: Python<'py>, batch: &Bound<'py, PyAny>, bit_width: i64, group_size: i64, device: &str, method: &str) -> PyResult<Bound<'py, PyAny>> {
    guarded("quantize_arrow_batch", || {
        let config = config(bit_width, group_size, method)?;
        let device: Device = device.parse()?;
        match arrow_input(batch, "quantize_arrow_batch")? {
            AnyRecordBatch::RecordBatch(b) => {
                let batch = one_batch(b, &[LAYER_NAME, WEIGHTS])?;
                let backend = backend(device)?;
                let out = py.detach(|| quantize_batch(&batch, config, backend))?;
                PyRecordBatch::new(out).into_pyarrow(py)
            }
            stream => quantize_table(py, stream, config, device),
        }
    })
}

#[pyfunction]
#[pyo3(signature = (table, *, device = "auto", group_size = None))]
fn dequantize_arrow<'py>(py: Python<'py>, table: &Bound<'py, PyAny>, device: &str, group_size: Option<i64>) -> PyResult<Bound<'py, PyAny>> {
    guarded("dequantize_arrow", || {
        let device: Device = device.parse()?;
        dequantize_table(py, arrow_input(table, "dequantize_arrow")?, group_size, device)
    })
}

/// `dequantize_arrow` that returns the kind it was given (see `quantize_arrow_batch`).
#[pyfunction]
#[pyo3(signature = (batch, *, device = "auto", group_size = None))]
fn dequantize_arrow_batch<'py>(py: Python<'py>, batch: &Bound<'py, PyAny>, device: &str, group_size: Option<i64>) -> PyResult<Bound<'py, PyAny>> {
    guarded("dequantize_arrow_batch", || {
        let device: Device = device.parse()?;
        match arrow_input(batch, "dequantize_arrow_batch")? {
            AnyRecordBatch::RecordBatch(b) => {
                let batch = one_batch(b, &[LAYER_NAME])?;
                let backend = backend(device)?;
                let out = py.detach(|| dequantize_batch(&batch, group_size, backend))?;
                PyRecordBatch::new(out).into_pyarrow(py)
            }
            stream => dequantize_table(py, stream, group_size, device),
        }
    })
}

/// The schema `quantize_arrow` returns for `method` (for engines that declare output types up
/// front): lsq's adds the `method` column and metadata entry.
#[pyfunction]
#[pyo3(name = "quantized_schema", signature = (group_size = 128, method = "minmax"))]
fn quantized_schema_of<'py>(py: Python<'py>, group_size: i64, method: &str) -> PyResult<Bound<'py, PyAny>> {
    guarded("quantized_schema", || {
        let config = config(4, group_size, method)?;
        let schema = crate::arrow::schema::with_method(&quantized_schema(config.group_size, false), config.method)?;
        PySchema::new(schema).into_pyarrow(py)
    })
}

/// The schema `dequantize_arrow` returns.
#[pyfunction]
#[pyo3(name = "dequantized_schema")]
fn dequantized_schema_of(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    guarded("dequantized_schema", || PySchema::new(dequantized_schema()).into_pyarrow(py))
}

/// The arrow_quant entries of a schema's metadata (the JSON key and the keys of files written
/// before 0.3), as a JSON object: `quant_metadata` in Python reads them with this, so the rule
/// is the Rust one.
#[pyfunction]
fn read_quant_metadata(metadata: std::collections::HashMap<String, String>) -> PyResult<String> {
    guarded("read_quant_metadata", || {
        let entries: serde_json::Map<String, serde_json::Value> = read_metadata(&metadata)?.into_iter().collect();
        Ok(serde_json::Value::Object(entries).to_string())
    })
}

/// The (key, value) schema metadata pair that holds these entries (a JSON object), written as
/// the Rust outputs write it.
#[pyfunction]
fn quant_metadata_entry(entries: &str) -> PyResult<(String, String)> {
    guarded("quant_metadata_entry", || {
        let map: std::collections::BTreeMap<String, serde_json::Value> =
            serde_json::from_str(entries).map_err(|e| QuantError::value(format!("metadata entries are not a JSON object: {e}")))?;
        Ok(schema_metadata(map).into_iter().next().expect("one key"))
    })
}

/// Which backend `device` resolves to, e.g. "cpu (rayon, 2 threads, avx512)"; for "auto",
/// followed by why it was chosen ("[auto: measured faster: cpu 21.0 GB/s, gpu …]").
#[pyfunction]
#[pyo3(signature = (device = "auto"))]
fn backend_name(py: Python<'_>, device: &str) -> PyResult<String> {
    // The first "auto" may start the GPU and measure both paths: without the GIL.
    py.detach(|| guarded("backend_name", || Ok(crate::device::describe(device.parse()?)?)))
}

/// Sets the worker threads of every later call in this process (0: the default, which is
/// `RAYON_NUM_THREADS` when set, else one per core).
#[pyfunction]
fn set_num_threads(n: i64) -> PyResult<()> {
    guarded("set_num_threads", || {
        let n = usize::try_from(n).map_err(|_| QuantError::value(format!("num_threads must be 0 (the default) or positive, got {n}")))?;
        Ok(crate::threads::set_num_threads(n).map_err(QuantError::value)?)
    })
}

/// The worker threads calls in this process use.
#[pyfunction]
fn get_num_threads() -> usize {
    crate::threads::num_threads()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(quantize_arrow, m)?)?;
    m.add_function(wrap_pyfunction!(quantize_arrow_batch, m)?)?;
    m.add_function(wrap_pyfunction!(dequantize_arrow, m)?)?;
    m.add_function(wrap_pyfunction!(dequantize_arrow_batch, m)?)?;
    m.add_function(wrap_pyfunction!(quantized_schema_of, m)?)?;
    m.add_function(wrap_pyfunction!(dequantized_schema_of, m)?)?;
    m.add_function(wrap_pyfunction!(backend_name, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(read_quant_metadata, m)?)?;
    m.add_function(wrap_pyfunction!(quant_metadata_entry, m)?)?;
    errors::register(m)?;
    model::register(m)?;
    ggml::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

//! Whole-model functions: `quantize_safetensors` and `read_quantized`.

use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3_arrow::PyTable;

use super::errors::guarded;
use crate::device::Device;
use crate::error::{QuantError, Result};
use crate::model::arrow_out::report_batch;
use crate::model::pipeline::Limits;
use crate::model::quantized::read_batches;
use crate::model::{convert, Checkpoint, Options, OutputFormat, Progress, QuantType};
use crate::quant::ggml::GgmlType;
use crate::quant::{BitWidth, Method, QuantConfig};

/// Reports progress to a Python callable and/or an indicatif bar; checks for Ctrl-C between
/// tensors. A Python exception is kept and re-raised once the conversion has cleaned up.
struct PyProgress {
    callback: Option<Py<PyAny>>,
    bar: Option<ProgressBar>,
    error: Option<PyErr>,
}

impl Progress for PyProgress {
    fn advance(&mut self, done: u64, total: u64) -> Result<()> {
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.set_position(done);
        }
        let result = Python::attach(|py| -> PyResult<()> {
            py.check_signals()?;
            if let Some(cb) = &self.callback {
                cb.call1(py, (done, total))?;
            }
            Ok(())
        });
        result.map_err(|e| {
            self.error = Some(e);
            QuantError::value("interrupted by the progress callback")
        })
    }
}

fn strings(v: Option<&Bound<'_, PyAny>>, what: &str) -> PyResult<Vec<String>> {
    match v {
        None => Ok(Vec::new()),
        Some(v) if v.is_none() => Ok(Vec::new()),
        Some(v) => {
            if let Ok(s) = v.extract::<String>() {
                return Ok(vec![s]);
            }
            v.extract::<Vec<String>>().map_err(|_| PyTypeError::new_err(format!("{what} must be a glob string or a list of them")))
        }
    }
}

/// Quantizes a model (a safetensors checkpoint: file, sharded folder or diffusers folder; or a
/// GGUF file) into an Arrow IPC, Parquet or GGUF file; returns the per-tensor quality report as
/// a pyarrow.Table.
#[pyfunction]
#[pyo3(signature = (src, dst, *, format = None, r#type = None, bit_width = 4, group_size = 128, method = "minmax", device = "auto", keep = None, quantize = None, min_cosine = None, cosine_policy = "lowest", num_threads = 0, metadata = None, progress = None, imatrix = None, pure = false, allow_requantize = false, leave_output_tensor = false, output_tensor_type = None, token_embedding_type = None, read_ahead_mib = 256))]
#[allow(clippy::too_many_arguments)]
fn quantize_model<'py>(
    py: Python<'py>,
    src: PathBuf,
    dst: PathBuf,
    format: Option<&str>,
    r#type: Option<&str>,
    bit_width: i64,
    group_size: i64,
    method: &str,
    device: &str,
    keep: Option<&Bound<'py, PyAny>>,
    quantize: Option<&Bound<'py, PyAny>>,
    min_cosine: Option<f64>,
    cosine_policy: &str,
    num_threads: usize,
    metadata: Option<std::collections::BTreeMap<String, String>>,
    progress: Option<&Bound<'py, PyAny>>,
    imatrix: Option<PathBuf>,
    pure: bool,
    allow_requantize: bool,
    leave_output_tensor: bool,
    output_tensor_type: Option<&str>,
    token_embedding_type: Option<&str>,
    read_ahead_mib: u64,
) -> PyResult<Bound<'py, PyAny>> {
    guarded("quantize_model", || {
        let opts = Options {
            format: format.map(str::parse::<OutputFormat>).transpose()?,
            qtype: r#type.map(str::parse::<QuantType>).transpose()?,
            config: QuantConfig::new(BitWidth::new(bit_width)?, group_size)?.with_method(Method::parse(method)?),
            device: device.parse::<Device>()?,
            keep: strings(keep, "keep")?,
            quantize: strings(quantize, "quantize")?,
            min_cosine,
            cosine_policy: cosine_policy.parse()?,
            threads: num_threads,
            metadata: metadata.unwrap_or_default().into_iter().collect(),
            arch: None,
            name: None,
            pure,
            allow_requantize,
            imatrix,
            leave_output_tensor,
            output_tensor_type: output_tensor_type.map(str::parse::<GgmlType>).transpose()?,
            token_embedding_type: token_embedding_type.map(str::parse::<GgmlType>).transpose()?,
            report: None,
            pipeline: match read_ahead_mib {
                0 => Limits::sequential(),
                mib => Limits { read_ahead: mib.saturating_mul(1 << 20), ..Limits::default() },
            },
        };
        let (callback, bar) = match progress {
            None => (None, None),
            Some(p) if p.is_none() => (None, None),
            Some(p) if p.is_callable() => (Some(p.clone().unbind()), None),
            Some(p) => {
                let on: bool = p.extract().map_err(|_| PyTypeError::new_err("progress must be a bool or a callable(done_bytes, total_bytes)"))?;
                let bar = on.then(|| {
                    let b = ProgressBar::new(0);
                    b.set_style(ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}").expect("valid template"));
                    b
                });
                (None, bar)
            }
        };
        let mut prog = PyProgress { callback, bar, error: None };
        let result = py.detach(|| convert(&src, &dst, &opts, &mut prog));
        if let Some(bar) = &prog.bar {
            bar.finish_and_clear();
        }
        if let Some(e) = prog.error.take() {
            return Err(e);
        }
        let reports = result?;
        let batch = report_batch(&reports);
        let schema = batch.schema();
        PyTable::try_new(vec![batch], schema)?.into_pyarrow(py)
    })
}

/// Reads an Arrow IPC file written by `quantize_safetensors` (or any Arrow IPC file).
#[pyfunction]
fn read_quantized<'py>(py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyAny>> {
    guarded("read_quantized", || {
        let (schema, batches) = py.detach(|| read_batches(&path))?;
        PyTable::try_new(batches, schema)?.into_pyarrow(py)
    })
}

/// One tensor of a checkpoint's listing: (name, dtype, shape, file index, byte offset, bytes).
type TensorEntry = (String, String, Vec<usize>, usize, u64, u64);

/// The listing of a safetensors checkpoint (file, index or folder), every header checked by our
/// reader: (files, tensors, `__metadata__`). `ShardedSafeTensorsLoader` maps the bytes itself.
#[pyfunction]
fn checkpoint_index(py: Python<'_>, path: PathBuf) -> PyResult<(Vec<String>, Vec<TensorEntry>, std::collections::BTreeMap<String, String>)> {
    guarded("checkpoint_index", || {
        let ck = py.detach(|| Checkpoint::open(&path))?;
        let files = ck.files.iter().map(|f| f.to_string_lossy().into_owned()).collect();
        let tensors = ck.tensors.iter().map(|t| (t.name.clone(), t.dtype.name(), t.shape.clone(), t.file, t.start, t.len)).collect();
        Ok((files, tensors, ck.metadata))
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(checkpoint_index, m)?)?;
    m.add_function(wrap_pyfunction!(quantize_model, m)?)?;
    // The earlier name, for code written before GGUF inputs were accepted.
    m.add("quantize_safetensors", m.getattr("quantize_model")?)?;
    m.add_function(wrap_pyfunction!(read_quantized, m)?)?;
    Ok(())
}

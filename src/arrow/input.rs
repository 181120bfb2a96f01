//! A table of layers, validated, with each layer's weights as an `f32` slice.
//!
//! float32 weights are borrowed straight from the Arrow value buffer; float16 and float64 are
//! converted once (`as f32`), since every backend computes in f32.

use std::borrow::Cow;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float16Type, Float32Type, Float64Type, Int64Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use rayon::prelude::*;

use super::lists::{layer_names, required, ListColumn};
use super::schema::{LAYER_NAME, SHAPE, WEIGHTS};
use crate::error::{QuantError, Result};

pub struct Layer<'a> {
    pub name: String,
    pub weights: Cow<'a, [f32]>,
    /// As given, or `[len(weights)]` when the table has no shape.
    pub shape: Vec<usize>,
}

/// Reads and validates every layer of `batch`. Errors name the layer and the problem.
pub fn read_layers(batch: &RecordBatch) -> Result<Vec<Layer<'_>>> {
    let names = layer_names(batch, LAYER_NAME)?;
    let weights = ListColumn::new(required(batch, WEIGHTS)?.as_ref(), WEIGHTS)?;
    let value_type = weights.values.data_type().clone();
    if !matches!(value_type, DataType::Float32 | DataType::Float16 | DataType::Float64) {
        let first = names.first().map(String::as_str).unwrap_or("");
        return Err(QuantError::type_error(format!(
            "Column 'weights' must hold float32, float16 or float64 values, got {value_type} (first layer '{first}')"
        )));
    }
    let shapes = match batch.column_by_name(SHAPE) {
        Some(col) => Some(ShapeColumn::new(col.as_ref())?),
        None => None,
    };

    let read = |(row, name): (usize, String)| {
        let weights = layer_weights(&weights, row, &name)?;
        let shape = match &shapes {
            Some(s) => s.shape(row, &name, weights.len())?,
            None => vec![weights.len()],
        };
        Ok(Layer { name, weights, shape })
    };
    if crate::threads::runs_inline(weights.values.len()) {
        return names.into_iter().enumerate().map(read).collect();
    }
    // Every layer's result, then the first error in row order: rayon's own collect into a
    // `Result` returns whichever error a thread met first.
    let layers: Vec<Result<Layer<'_>>> = crate::threads::install(|| names.into_par_iter().enumerate().map(read).collect());
    layers.into_iter().collect()
}

fn layer_weights<'a>(col: &ListColumn<'a>, row: usize, name: &str) -> Result<Cow<'a, [f32]>> {
    if col.null_rows[row] {
        return Err(QuantError::layer_value(name, "weights is null"));
    }
    if let Some(i) = col.first_null_item(row) {
        return Err(QuantError::layer_value(name, format!("weights contain a null at index {i}")));
    }
    let range = col.ranges[row].clone();
    if range.is_empty() {
        return Err(QuantError::layer_value(name, "weights list is empty; there is nothing to quantize"));
    }
    Ok(match col.values.data_type() {
        DataType::Float32 => Cow::Borrowed(&col.values.as_primitive::<Float32Type>().values()[range]),
        DataType::Float16 => {
            Cow::Owned(col.values.as_primitive::<Float16Type>().values()[range].iter().map(|h| h.to_f32()).collect())
        }
        DataType::Float64 => {
            Cow::Owned(col.values.as_primitive::<Float64Type>().values()[range].iter().map(|&d| d as f32).collect())
        }
        _ => unreachable!("checked by read_layers"),
    })
}

/// The number of elements of a tensor of shape `dims`; `None` when the product overflows.
pub(crate) fn element_count(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// The optional `shape` column, with integer items of any width read as i64.
pub(crate) struct ShapeColumn<'a> {
    lists: ListColumn<'a>,
    dims: arrow_array::ArrayRef,
}

impl<'a> ShapeColumn<'a> {
    pub(crate) fn new(array: &'a dyn Array) -> Result<Self> {
        let lists = ListColumn::new(array, SHAPE)?;
        if !lists.values.data_type().is_integer() {
            return Err(QuantError::type_error(format!(
                "Column 'shape' must hold integers, got list<{}>",
                lists.values.data_type()
            )));
        }
        let dims = arrow_cast::cast(lists.values, &DataType::Int64)
            .map_err(|e| QuantError::value(format!("Column 'shape' could not be read as int64: {e}")))?;
        Ok(Self { lists, dims })
    }

    fn shape(&self, row: usize, name: &str, n_weights: usize) -> Result<Vec<usize>> {
        let dims = self.dims(row, name)?;
        if element_count(&dims) != Some(n_weights) {
            return Err(QuantError::shape_mismatch(
                name,
                format!("shape {dims:?} does not match the number of weights ({n_weights})"),
            ));
        }
        Ok(dims)
    }

    /// The dimensions of row `row`, each checked to be present and non-negative.
    pub(crate) fn dims(&self, row: usize, name: &str) -> Result<Vec<usize>> {
        if self.lists.null_rows[row] {
            return Err(QuantError::layer_value(name, "shape is null (omit the shape column to infer [len(weights)])"));
        }
        if let Some(i) = self.lists.first_null_item(row) {
            return Err(QuantError::layer_value(name, format!("shape has a null dimension at index {i}")));
        }
        let dims = &self.dims.as_primitive::<Int64Type>().values()[self.lists.ranges[row].clone()];
        if let Some(&d) = dims.iter().find(|&&d| d < 0) {
            return Err(QuantError::layer_value(name, format!("shape {dims:?} has a negative dimension {d}")));
        }
        let dims: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
        if element_count(&dims).is_none() {
            return Err(QuantError::layer_value(name, format!("shape {dims:?} has more elements than can be addressed")));
        }
        Ok(dims)
    }
}

//! Uniform, validated access to the rows of a list-typed column (list, large_list or
//! fixed_size_list), whatever Arrow producer made it.

use std::ops::Range;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow_schema::DataType;

use crate::error::{QuantError, Result};

/// The values array of a list column and the range of values of each row.
pub struct ListColumn<'a> {
    pub values: &'a ArrayRef,
    pub ranges: Vec<Range<usize>>,
    /// Which rows are null (the list itself, not its items).
    pub null_rows: Vec<bool>,
}

impl<'a> ListColumn<'a> {
    pub fn new(array: &'a dyn Array, column: &str) -> Result<Self> {
        let null_rows = (0..array.len()).map(|i| array.is_null(i)).collect();
        let (values, ranges) = match array.data_type() {
            DataType::List(_) => {
                let a = array.as_list::<i32>();
                (a.values(), a.offsets().windows(2).map(|w| w[0] as usize..w[1] as usize).collect())
            }
            DataType::LargeList(_) => {
                let a = array.as_list::<i64>();
                (a.values(), a.offsets().windows(2).map(|w| w[0] as usize..w[1] as usize).collect())
            }
            DataType::FixedSizeList(_, n) => {
                let a = array.as_fixed_size_list();
                let n = *n as usize;
                let ranges = (0..a.len()).map(|i| {
                    let start = a.value_offset(i) as usize;
                    start..start + n
                });
                (a.values(), ranges.collect())
            }
            other => {
                return Err(QuantError::type_error(format!(
                    "Column '{column}' must be a list (list, large_list or fixed_size_list), got {other}"
                )))
            }
        };
        Ok(Self { values, ranges, null_rows })
    }

    /// The first null item of row `row`, as an index within the row.
    pub fn first_null_item(&self, row: usize) -> Option<usize> {
        let nulls = self.values.logical_nulls()?;
        let range = self.ranges[row].clone();
        range.clone().find(|&i| nulls.is_null(i)).map(|i| i - range.start)
    }
}

/// A required column, or the error the earlier API raised.
pub fn required<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| QuantError::MissingColumn(name.to_string()))
}

/// The `layer_name` column as utf8, whatever string type the producer chose (utf8,
/// large_utf8, utf8_view), with a null or non-string column rejected.
pub fn layer_names(batch: &RecordBatch, column: &str) -> Result<Vec<String>> {
    string_column(batch, column)
}

/// A string column of any string type, without nulls.
pub fn string_column(batch: &RecordBatch, column: &str) -> Result<Vec<String>> {
    let array = required(batch, column)?;
    let strings: StringArray = match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().clone(),
        DataType::LargeUtf8 | DataType::Utf8View => arrow_cast::cast(array, &DataType::Utf8)
            .map_err(|e| QuantError::value(format!("Column '{column}' could not be read as strings: {e}")))?
            .as_string::<i32>()
            .clone(),
        other => {
            return Err(QuantError::type_error(format!("Column '{column}' must hold strings, got {other}")));
        }
    };
    (0..strings.len())
        .map(|i| {
            if strings.is_null(i) {
                Err(QuantError::value(format!("Column '{column}' has a null at row {i}")))
            } else {
                Ok(strings.value(i).to_string())
            }
        })
        .collect()
}

//! Checks on Arrow data from outside producers, before any value is read.
//!
//! Data imported through the C Data Interface is taken on trust by arrow-rs (it builds arrays
//! unchecked), so a producer that lies about offsets or lengths would make us read out of
//! bounds. Full validation (offsets monotone and inside their child arrays, lengths, null
//! counts, UTF-8) costs one pass over the offsets, not over the weights.
//!
//! One thing cannot be checked: the C Data Interface carries no buffer sizes, so a variable-size
//! data buffer (the bytes of a string column) is taken to be as long as its last offset says.

use arrow_array::RecordBatch;
use arrow_schema::Schema;

use crate::error::{QuantError, Result};

/// Validates every column of `batch` and, when a stream declared a schema, that the batch
/// matches it column by column (a batch that does not would have its buffers reinterpreted).
pub fn validate_batch(batch: &RecordBatch, declared: Option<&Schema>) -> Result<()> {
    if let Some(declared) = declared {
        let got = batch.schema_ref();
        if got.fields().len() != declared.fields().len() {
            return Err(QuantError::value(format!(
                "a batch of the stream has {} columns, but the stream's schema declares {}",
                got.fields().len(),
                declared.fields().len()
            )));
        }
        for (g, d) in got.fields().iter().zip(declared.fields()) {
            if g.name() != d.name() || g.data_type() != d.data_type() {
                return Err(QuantError::value(format!(
                    "Column '{}': a batch of the stream has column '{}' of type {}, but the stream's schema declares '{}' of type {}",
                    d.name(),
                    g.name(),
                    g.data_type(),
                    d.name(),
                    d.data_type()
                )));
            }
        }
    }
    for (field, column) in batch.schema_ref().fields().iter().zip(batch.columns()) {
        column
            .to_data()
            .validate_full()
            .map_err(|e| QuantError::value(format!("Column '{}' is not valid Arrow data: {e}", field.name())))?;
    }
    Ok(())
}

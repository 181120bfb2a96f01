//! Fuzz target: Arrow data from an outside producer, through the Arrow C stream interface,
//! into `quantize_arrow` / `dequantize_arrow`'s code path: import (arrow-rs's
//! `ArrowArrayStreamReader`, which pyo3-arrow uses), full validation against the stream's
//! schema, then `quantize_batch` / `dequantize_batch`. It must give a result or an error, never
//! panic or read out of bounds.
//!
//! The input is an Arrow IPC stream: any schema, any batches. They are decoded *without*
//! validation, so offsets, lengths, null counts and UTF-8 may lie, as a buggy producer's would,
//! then exported through the C stream interface and imported again. Two lies cannot cross that
//! interface honestly, because it carries no buffer sizes: a buffer shorter than its array's
//! length needs, and a variable-size data buffer shorter than its last offset says. Inputs
//! with those are skipped (`ArrayData::validate`, the cheap check, finds the first; the second
//! is checked here); every other lie reaches the consumer.

use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};

use arrow_array::ffi_stream::{ArrowArrayStreamReader, FFI_ArrowArrayStream};
use arrow_array::{Array, RecordBatch, RecordBatchIterator, RecordBatchReader};
use arrow_data::ArrayData;
use arrow_ipc::reader::StreamReader;
use arrow_quant_v2::arrow::validate::validate_batch;
use arrow_quant_v2::arrow::{dequantize_batch, quantize_batch};
use arrow_quant_v2::cpu::CpuBackend;
use arrow_quant_v2::{BitWidth, QuantConfig};
use arrow_schema::{DataType, SchemaRef};

/// Whether `data` can be described honestly by the C Data Interface (see the module comment).
fn representable(data: &ArrayData) -> bool {
    if data.validate().is_err() {
        return false;
    }
    let last_offset_fits = |width: usize| {
        let offsets = &data.buffers()[0];
        let at = (data.offset() + data.len()) * width;
        if data.is_empty() && offsets.len() < at + width {
            return true;
        }
        let Some(bytes) = offsets.get(at..at + width) else { return false };
        let last = if width == 4 { i32::from_le_bytes(bytes.try_into().unwrap()) as i64 } else { i64::from_le_bytes(bytes.try_into().unwrap()) };
        last >= 0 && (last as usize) <= data.buffers()[1].len()
    };
    let ok = match data.data_type() {
        DataType::Utf8 | DataType::Binary => last_offset_fits(4),
        DataType::LargeUtf8 | DataType::LargeBinary => last_offset_fits(8),
        // Views point into variadic buffers whose lengths do cross the interface.
        _ => true,
    };
    ok && data.child_data().iter().all(representable)
}

/// The producer: the input decoded without validation, if it can cross the C interface.
fn produce(input: &[u8]) -> Option<(SchemaRef, Vec<RecordBatch>)> {
    // arrow-ipc allocates the sizes a stream declares; a producer that could not allocate them
    // would not exist, so such inputs are skipped (and a process abort is not a finding).
    arrow_quant_v2::arrow::ipc::check_stream(input).ok()?;
    let reader = StreamReader::try_new(Cursor::new(input), None).ok()?;
    // SAFETY: the decoded arrays may be invalid; nothing reads their values before
    // `representable` and the consumer's own validation, which is what is under test.
    let reader = unsafe { reader.with_skip_validation(true) };
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<RecordBatch>, _>>().ok()?;
    batches.iter().all(|b| b.columns().iter().all(|c| representable(&c.to_data()))).then_some((schema, batches))
}

/// One input; panics (assertion failures included) are the findings.
pub fn check(input: &[u8]) {
    // Panics on the producer's side (arrow-ipc decoding garbage unchecked) are not ours.
    let Ok(Some((schema, batches))) = catch_unwind(|| produce(input)) else { return };

    // Export through the C stream interface, then import as pyo3-arrow does. A panic of the
    // import is the producer's fault: Python maps it to a ValueError (`importing`).
    let source = RecordBatchIterator::new(batches.into_iter().map(Ok), schema);
    let stream = FFI_ArrowArrayStream::new(Box::new(source) as Box<dyn RecordBatchReader + Send>);
    let imported = catch_unwind(AssertUnwindSafe(|| {
        let reader = ArrowArrayStreamReader::try_new(stream).ok()?;
        let declared = reader.schema();
        Some((declared, reader.collect::<Vec<_>>()))
    }));
    let Ok(Some((declared, batches))) = imported else { return };

    // The consumer: what `map_batches` does for each batch.
    let backend = CpuBackend::new();
    let config = QuantConfig::new(BitWidth::B4, 32).unwrap();
    for batch in batches {
        let Ok(batch) = batch else { return };
        if validate_batch(&batch, Some(&declared)).is_err() {
            continue;
        }
        if declared.column_with_name("weights").is_some() {
            let _ = std::hint::black_box(quantize_batch(&batch, config, &backend));
        }
        if declared.column_with_name("quantized_data").is_some() {
            let _ = std::hint::black_box(dequantize_batch(&batch, Some(32), &backend));
        }
    }
}

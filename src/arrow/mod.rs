//! Arrow in and out: tables of layers become backend jobs, and results are written straight
//! into the buffers of the output RecordBatch.
//!
//! * [`schema`]: column names, the quantized schema and its metadata.
//! * [`lists`]: uniform access to list, large_list and fixed_size_list columns.
//! * [`input`]: validating a table of layers and viewing its weights as `f32` slices.
//! * [`quantize`] / [`dequantize`]: one RecordBatch in, one out.
//! * [`alloc`]: zeroed output buffers, on huge pages where the system allows.
//! * [`ipc`]: Arrow IPC bytes from outside, sizes checked before arrow-ipc allocates them.
//! * [`validate`]: full validation of data from outside producers, before it is read.

pub mod alloc;
pub mod dequantize;
pub mod input;
pub mod ipc;
pub mod lists;
pub mod quantize;
pub mod schema;
pub mod validate;

pub use dequantize::dequantize_batch;
pub use quantize::quantize_batch;

/// Cuts `buf` into consecutive mutable pieces of the given lengths.
pub(crate) fn split_mut<'a, T>(mut buf: &'a mut [T], lengths: impl IntoIterator<Item = usize>) -> Vec<&'a mut [T]> {
    lengths
        .into_iter()
        .map(|n| {
            let (head, tail) = std::mem::take(&mut buf).split_at_mut(n);
            buf = tail;
            head
        })
        .collect()
}

//! One RecordBatch of layers in, one RecordBatch of quantized layers out.
//!
//! The output buffers (packed codes, scales, zero points) are allocated once for the whole
//! batch, cut into one slice per layer for the backend, and then become the Arrow arrays
//! without being copied.

use std::sync::Arc;

use arrow_array::{ArrayRef, BinaryArray, Float32Array, Int64Array, Int8Array, LargeBinaryArray, ListArray, RecordBatch, StringArray};
use arrow_buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::DataType;

use super::input::{read_layers, Layer};
use super::schema::{list_field, quantized_schema, with_method};
use super::alloc::zeroed;
use super::split_mut;
use crate::backend::{Backend, QuantJob};
use crate::error::{QuantError, Result};
use crate::quant::{GroupLayout, Method, QuantConfig};

/// Quantizes every layer of `batch` with `backend`.
pub fn quantize_batch(batch: &RecordBatch, config: QuantConfig, backend: &dyn Backend) -> Result<RecordBatch> {
    let layers = read_layers(batch)?;
    quantize_layers(&layers, config, backend)
}

/// Quantizes already validated layers (also used by callers that read tensors from files).
pub fn quantize_layers(layers: &[Layer<'_>], config: QuantConfig, backend: &dyn Backend) -> Result<RecordBatch> {
    let layouts: Vec<GroupLayout> = layers.iter().map(|l| GroupLayout::from_shape(&l.shape, config)).collect();
    let packed_lens: Vec<usize> = layouts.iter().map(GroupLayout::packed_len).collect();
    let group_counts: Vec<usize> = layouts.iter().map(GroupLayout::n_groups).collect();
    let total_groups: usize = group_counts.iter().sum();
    if total_groups > i32::MAX as usize {
        return Err(QuantError::value(format!(
            "{total_groups} groups in one batch exceed the 2^31 scales a list<float32> column can hold; split the table"
        )));
    }

    let mut packed = zeroed::<u8>(packed_lens.iter().sum());
    let mut scales = zeroed::<f32>(total_groups);
    let mut zero_points = zeroed::<f32>(total_groups);
    {
        let packed = split_mut(&mut packed, packed_lens.iter().copied());
        let scales = split_mut(&mut scales, group_counts.iter().copied());
        let zero_points = split_mut(&mut zero_points, group_counts.iter().copied());
        let mut jobs: Vec<QuantJob<'_>> = layers
            .iter()
            .zip(&layouts)
            .zip(packed.into_iter().zip(scales).zip(zero_points))
            .map(|((layer, &layout), ((packed, scales), zero_points))| QuantJob {
                name: &layer.name,
                weights: &layer.weights,
                layout,
                packed,
                scales,
                zero_points,
            })
            .collect();
        backend.quantize(&mut jobs)?;
    }

    let large = packed.len() > i32::MAX as usize;
    let data: ArrayRef = binary_array(Buffer::from_vec(packed), &packed_lens, large);
    let scales = float_lists(scales, &group_counts);
    let zero_points = float_lists(zero_points, &group_counts);
    let names = StringArray::from_iter_values(layers.iter().map(|l| l.name.as_str()));
    let shapes = int64_lists(layers.iter().map(|l| l.shape.iter().map(|&d| d as i64)));
    let bits = Int8Array::from_iter_values(layouts.iter().map(|l| l.bit_width.bits() as i8));
    let group_sizes = Int64Array::from_value(config.group_size as i64, layers.len());
    let schema = with_method(&quantized_schema(config.group_size, large), config.method)?;
    let mut columns: Vec<ArrayRef> = vec![Arc::new(names), data, Arc::new(scales), Arc::new(zero_points), Arc::new(shapes), Arc::new(bits), Arc::new(group_sizes)];
    if config.method != Method::MinMax {
        columns.push(Arc::new(StringArray::from_iter_values(std::iter::repeat_n(config.method.name(), layers.len()))));
    }
    RecordBatch::try_new(schema, columns)
    .map_err(|e| QuantError::value(format!("could not assemble the output batch: {e}")))
}

fn binary_array(values: Buffer, lengths: &[usize], large: bool) -> ArrayRef {
    if large {
        Arc::new(LargeBinaryArray::new(OffsetBuffer::from_lengths(lengths.iter().copied()), values, None))
    } else {
        Arc::new(BinaryArray::new(OffsetBuffer::from_lengths(lengths.iter().copied()), values, None))
    }
}

/// A list<float32> column over one shared value buffer.
pub(crate) fn float_lists(values: Vec<f32>, lengths: &[usize]) -> ListArray {
    let values = Float32Array::new(ScalarBuffer::from(values), None);
    ListArray::new(list_field(DataType::Float32), OffsetBuffer::from_lengths(lengths.iter().copied()), Arc::new(values), None)
}

pub(crate) fn int64_lists<I: IntoIterator<Item = i64>>(rows: impl Iterator<Item = I>) -> ListArray {
    let mut lengths = Vec::new();
    let mut values = Vec::new();
    for row in rows {
        let before = values.len();
        values.extend(row);
        lengths.push(values.len() - before);
    }
    ListArray::new(
        list_field(DataType::Int64),
        OffsetBuffer::from_lengths(lengths),
        Arc::new(Int64Array::from(values)),
        None,
    )
}

/// Gives every batch the same schema: when one batch needed `large_binary` codes, the others'
/// `quantized_data` are widened too, so the batches form one table.
pub fn unify_code_types(batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
    let Some(large) = batches.iter().find(|b| b.schema().field(1).data_type() == &DataType::LargeBinary) else {
        return Ok(batches);
    };
    let schema = large.schema();
    batches
        .into_iter()
        .map(|b| {
            let mut columns = b.columns().to_vec();
            columns[1] = arrow_cast::cast(&columns[1], &DataType::LargeBinary)
                .map_err(|e| QuantError::value(format!("could not widen quantized_data: {e}")))?;
            RecordBatch::try_new(schema.clone(), columns).map_err(|e| QuantError::value(e.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::CpuBackend;
    use std::borrow::Cow;

    fn batch(values: &[f32]) -> RecordBatch {
        let layers = [Layer { name: "l".into(), weights: Cow::Borrowed(values), shape: vec![values.len()] }];
        quantize_layers(&layers, QuantConfig::default(), &CpuBackend::new()).unwrap()
    }

    #[test]
    fn one_large_batch_widens_the_others() {
        let small = batch(&[1.0, 2.0, 3.0]);
        let wide = unify_code_types(vec![small.clone()]).unwrap().remove(0);
        assert_eq!(wide.schema(), small.schema(), "nothing to widen");

        let mut cols = small.columns().to_vec();
        cols[1] = arrow_cast::cast(&cols[1], &DataType::LargeBinary).unwrap();
        let large = RecordBatch::try_new(quantized_schema(128, true), cols).unwrap();
        let out = unify_code_types(vec![small.clone(), large.clone()]).unwrap();
        assert!(out.iter().all(|b| b.schema() == large.schema()));
        assert_eq!(out[0].column(1).as_ref(), large.column(1).as_ref());
    }
}

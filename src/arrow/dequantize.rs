//! One RecordBatch of quantized layers in, one RecordBatch of float32 weights out.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int64Type};
use arrow_array::{Array, RecordBatch, StringArray};
use arrow_schema::DataType;

use super::input::ShapeColumn;
use super::lists::{layer_names, required, ListColumn};
use super::quantize::{float_lists, int64_lists};
use super::schema::{dequantized_schema, read_metadata, BIT_WIDTH, GROUP_SIZE, LAYER_NAME, META_GROUP_SIZE, META_KEY, QUANTIZED_DATA, SCALES, SHAPE, ZERO_POINTS};
use super::split_mut;
use crate::backend::{Backend, DequantJob};
use crate::error::{QuantError, Result};
use crate::quant::{BitWidth, GroupLayout, QuantConfig};

/// Where a quantized batch's group size comes from, in this order: its `group_size` column
/// (each row's own; an explicit `group_size` must agree), the explicit argument, the schema
/// metadata. Only quantized rows need one: a batch of raw (kept) rows has none to give.
enum GroupSizes {
    PerRow(arrow_array::Int64Array, Option<i64>),
    Fixed(i64),
    Missing,
}

impl GroupSizes {
    fn of(batch: &RecordBatch, group_size: Option<i64>) -> Result<Self> {
        if batch.column_by_name(GROUP_SIZE).is_some() {
            return Ok(Self::PerRow(integer_column(batch, GROUP_SIZE)?, group_size));
        }
        if let Some(g) = group_size {
            return Ok(Self::Fixed(g));
        }
        let meta = read_metadata(batch.schema_ref().metadata())?;
        match meta.get(META_GROUP_SIZE) {
            None => Ok(Self::Missing),
            Some(v) => v
                .as_i64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .map(Self::Fixed)
                .ok_or_else(|| QuantError::value(format!("schema metadata '{META_KEY}' has a group_size that is not an integer: {v}"))),
        }
    }

    fn row(&self, row: usize, name: &str) -> Result<i64> {
        match self {
            Self::PerRow(col, given) => {
                let g = col.value(row);
                match given {
                    Some(given) if *given != g => Err(QuantError::layer_value(name, format!("group_size={given} was given, but the row's group_size column says {g}"))),
                    _ => Ok(g),
                }
            }
            Self::Fixed(g) => Ok(*g),
            Self::Missing => Err(QuantError::value(format!(
                "the quantized table has no '{GROUP_SIZE}' column and no group size in its '{META_KEY}' schema metadata (it may have been dropped by a conversion); pass group_size explicitly"
            ))),
        }
    }
}

/// One row of a quantized batch, checked against its shape, bit width and group size.
pub(crate) struct Row {
    pub kind: RowKind,
    pub shape: Vec<usize>,
    /// Elements of the tensor (the product of `shape`, known not to overflow).
    pub n: usize,
    /// Bytes of `quantized_data`.
    pub data_len: usize,
}

/// The columns of a quantized batch, whatever integer, string, binary and list types the
/// producer chose, and each row checked: sizes against the shape, bit width and group size
/// (with overflow checks), no nulls, finite parameters. Nothing is decoded or allocated for the
/// output yet, so a damaged table costs nothing before it is refused.
pub(crate) struct QuantizedRows<'a> {
    pub names: Vec<String>,
    pub rows: Vec<Row>,
    data: BinaryColumn,
    scales: ListColumn<'a>,
    zero_points: ListColumn<'a>,
}

impl<'a> QuantizedRows<'a> {
    pub(crate) fn check(batch: &'a RecordBatch, group_size: Option<i64>) -> Result<Self> {
        let group_sizes = GroupSizes::of(batch, group_size)?;
        let names = layer_names(batch, LAYER_NAME)?;
        let data = binary_column(batch)?;
        let scales = float_list_column(batch, SCALES)?;
        let zero_points = float_list_column(batch, ZERO_POINTS)?;
        let shapes = ShapeColumn::new(required(batch, SHAPE)?.as_ref())?;
        let bits = integer_column(batch, BIT_WIDTH)?;

        // Rows are either quantized (bit_width 2/4/8) or kept in high precision by the model
        // converter (bit_width 16/32: raw little-endian f16/f32 in quantized_data, no scales).
        let mut rows = Vec::with_capacity(names.len());
        for (row, name) in names.iter().enumerate() {
            let shape = shapes.dims(row, name)?;
            // `dims` refuses shapes whose product overflows.
            let n: usize = shape.iter().product();
            let width = bits.value(row);
            let kind = match width {
                16 | 32 => {
                    let need = n.checked_mul(width as usize / 8).ok_or_else(|| {
                        QuantError::layer_value(name, format!("shape {shape:?} at {width} bits has more bytes than can be addressed"))
                    })?;
                    check_len(name, "quantized_data bytes", data.lens[row], need)?;
                    RowKind::Raw(width)
                }
                _ => {
                    let bit_width = BitWidth::new(width).map_err(|e| QuantError::layer_value(name, e.to_string()))?;
                    if n == 0 {
                        // The quantizer refuses empty layers, so it never writes such a row.
                        return Err(QuantError::layer_value(name, format!("shape {shape:?} has no elements; a quantized row has at least one")));
                    }
                    let group_size = group_sizes.row(row, name)?;
                    let layout = GroupLayout::from_shape(&shape, QuantConfig::new(bit_width, group_size)?);
                    check_len(name, "quantized_data bytes", data.lens[row], layout.packed_len())?;
                    check_len(name, "scales", scales.ranges[row].len(), layout.n_groups())?;
                    check_len(name, "zero_points", zero_points.ranges[row].len(), layout.n_groups())?;
                    for (col, c) in [(SCALES, &scales), (ZERO_POINTS, &zero_points)] {
                        if c.null_rows[row] || c.first_null_item(row).is_some() {
                            return Err(QuantError::layer_value(name, format!("{col} contains a null")));
                        }
                        // The quantizer never writes a non-finite parameter: such a table was damaged.
                        let values = &c.values.as_primitive::<Float32Type>().values()[c.ranges[row].clone()];
                        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                            return Err(QuantError::layer_value(name, format!("{col} has a non-finite value {} at group {i}", values[i])));
                        }
                    }
                    RowKind::Quantized(layout)
                }
            };
            rows.push(Row { kind, shape, n, data_len: data.lens[row] });
        }
        Ok(Self { names, rows, data, scales, zero_points })
    }
}

/// Expands every layer of a quantized batch back to float32. Rows with `bit_width` 16 or 32
/// (tensors a model conversion kept in high precision) are decoded from their raw bytes.
pub fn dequantize_batch(batch: &RecordBatch, group_size: Option<i64>, backend: &dyn Backend) -> Result<RecordBatch> {
    let QuantizedRows { names, rows, data, scales, zero_points } = QuantizedRows::check(batch, group_size)?;
    let counts: Vec<usize> = rows.iter().map(|r| r.n).collect();
    let mut out = super::alloc::zeroed::<f32>(counts.iter().sum::<usize>());
    {
        let outs = split_mut(&mut out, counts.iter().copied());
        let scale_values = scales.values.as_primitive::<Float32Type>().values();
        let zero_values = zero_points.values.as_primitive::<Float32Type>().values();
        let mut jobs: Vec<DequantJob<'_>> = Vec::new();
        for (row, out) in outs.into_iter().enumerate() {
            match rows[row].kind {
                RowKind::Raw(width) => decode_raw(width, data.value(row), out),
                RowKind::Quantized(layout) => jobs.push(DequantJob {
                    name: &names[row],
                    layout,
                    packed: data.value(row),
                    scales: &scale_values[scales.ranges[row].clone()],
                    zero_points: &zero_values[zero_points.ranges[row].clone()],
                    out,
                }),
            }
        }
        backend.dequantize(&mut jobs)?;
    }
    let dims: Vec<Vec<usize>> = rows.into_iter().map(|r| r.shape).collect();

    let weights = float_lists(out, &counts);
    let shapes = int64_lists(dims.iter().map(|d| d.iter().map(|&x| x as i64)));
    RecordBatch::try_new(
        dequantized_schema(),
        vec![Arc::new(StringArray::from(names)), Arc::new(weights), Arc::new(shapes)],
    )
    .map_err(|e| QuantError::value(format!("could not assemble the output batch: {e}")))
}

pub(crate) enum RowKind {
    Quantized(GroupLayout),
    /// Stored as little-endian f16 (16) or f32 (32) values.
    Raw(i64),
}

fn decode_raw(width: i64, bytes: &[u8], out: &mut [f32]) {
    if width == 32 {
        for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
            *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
    } else {
        for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        }
    }
}

fn check_len(name: &str, what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(QuantError::shape_mismatch(name, format!("has {got} {what}, but its shape, bit_width and group_size need {want}")));
    }
    Ok(())
}

/// `quantized_data` as binary or large_binary, row by row.
struct BinaryColumn {
    array: Arc<dyn Array>,
    lens: Vec<usize>,
}

impl BinaryColumn {
    fn value(&self, row: usize) -> &[u8] {
        match self.array.data_type() {
            DataType::LargeBinary => self.array.as_binary::<i64>().value(row),
            _ => self.array.as_binary::<i32>().value(row),
        }
    }
}

fn binary_column(batch: &RecordBatch) -> Result<BinaryColumn> {
    let col = required(batch, QUANTIZED_DATA)?;
    let array = match col.data_type() {
        DataType::Binary | DataType::LargeBinary => col.clone(),
        DataType::BinaryView | DataType::FixedSizeBinary(_) => arrow_cast::cast(col, &DataType::LargeBinary)
            .map_err(|e| QuantError::value(format!("Column '{QUANTIZED_DATA}' could not be read as binary: {e}")))?,
        other => return Err(QuantError::type_error(format!("Column '{QUANTIZED_DATA}' must be binary, got {other}"))),
    };
    if let Some(row) = (0..array.len()).find(|&i| array.is_null(i)) {
        return Err(QuantError::value(format!("Column '{QUANTIZED_DATA}' has a null at row {row}")));
    }
    let lens = (0..array.len())
        .map(|i| match array.data_type() {
            DataType::LargeBinary => array.as_binary::<i64>().value(i).len(),
            _ => array.as_binary::<i32>().value(i).len(),
        })
        .collect();
    Ok(BinaryColumn { array, lens })
}

fn float_list_column<'a>(batch: &'a RecordBatch, name: &str) -> Result<ListColumn<'a>> {
    let col = ListColumn::new(required(batch, name)?.as_ref(), name)?;
    if col.values.data_type() != &DataType::Float32 {
        return Err(QuantError::type_error(format!("Column '{name}' must be list<float32>, got list<{}>", col.values.data_type())));
    }
    Ok(col)
}

fn integer_column(batch: &RecordBatch, name: &str) -> Result<arrow_array::Int64Array> {
    let col = required(batch, name)?;
    if !col.data_type().is_integer() {
        return Err(QuantError::type_error(format!("Column '{name}' must hold integers, got {}", col.data_type())));
    }
    if let Some(row) = (0..col.len()).find(|&i| col.is_null(i)) {
        return Err(QuantError::value(format!("Column '{name}' has a null at row {row}")));
    }
    let cast = arrow_cast::cast(col, &DataType::Int64).map_err(|e| QuantError::value(format!("Column '{name}': {e}")))?;
    Ok(cast.as_primitive::<Int64Type>().clone())
}

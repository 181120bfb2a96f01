//! The quantized table's schema and the metadata that makes it self-describing.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef};

pub const LAYER_NAME: &str = "layer_name";
pub const WEIGHTS: &str = "weights";
pub const SHAPE: &str = "shape";
pub const QUANTIZED_DATA: &str = "quantized_data";
pub const SCALES: &str = "scales";
pub const ZERO_POINTS: &str = "zero_points";
pub const BIT_WIDTH: &str = "bit_width";

/// Schema metadata keys.
pub const META_SCHEME: &str = "arrow_quant.scheme";
pub const META_GROUP_SIZE: &str = "arrow_quant.group_size";
pub const META_PACKING: &str = "arrow_quant.packing";
pub const META_VERSION: &str = "arrow_quant.version";

pub const SCHEME: &str = "affine-minmax-v1";
pub const PACKING: &str = "lsb-first; each group starts on a byte boundary; groups, then rows, in order";

fn list_of(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("item", item, false)))
}

/// The six columns of a quantized table, with `group_size` and the scheme in the metadata.
/// `large` selects `large_binary` for `quantized_data` (needed past 2 GiB of codes per batch).
pub fn quantized_schema(group_size: usize, large: bool) -> SchemaRef {
    let data = if large { DataType::LargeBinary } else { DataType::Binary };
    let metadata = HashMap::from([
        (META_SCHEME.to_string(), SCHEME.to_string()),
        (META_GROUP_SIZE.to_string(), group_size.to_string()),
        (META_PACKING.to_string(), PACKING.to_string()),
        (META_VERSION.to_string(), env!("CARGO_PKG_VERSION").to_string()),
    ]);
    Arc::new(
        Schema::new(vec![
            Field::new(LAYER_NAME, DataType::Utf8, false),
            Field::new(QUANTIZED_DATA, data, false),
            Field::new(SCALES, list_of(DataType::Float32), false),
            Field::new(ZERO_POINTS, list_of(DataType::Float32), false),
            Field::new(SHAPE, list_of(DataType::Int64), false),
            Field::new(BIT_WIDTH, DataType::UInt8, false),
        ])
        .with_metadata(metadata),
    )
}

/// `layer_name`, `weights` (list<float32>), `shape`: what dequantization gives back.
pub fn dequantized_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(LAYER_NAME, DataType::Utf8, false),
        Field::new(WEIGHTS, list_of(DataType::Float32), false),
        Field::new(SHAPE, list_of(DataType::Int64), false),
    ]))
}

pub(crate) fn list_field(item: DataType) -> Arc<Field> {
    Arc::new(Field::new("item", item, false))
}

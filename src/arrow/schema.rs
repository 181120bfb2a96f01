//! The quantized table's schema and the metadata that makes it self-describing.
//!
//! Everything needed to dequantize a row is in its columns (`bit_width`, `group_size`), in types
//! every engine takes (Spark has no unsigned integers), because Ray's Parquet reader, Spark,
//! polars, duckdb and `datasets` drop schema metadata. The metadata is kept too, as one key whose
//! value is a JSON object with sorted keys: Arrow's schema metadata is a hash map, which Arrow
//! IPC, Parquet and the C Data Interface write in a random order per process when it has several
//! keys, so files written from the same input would differ.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde_json::Value;

use crate::error::{QuantError, Result};
use crate::quant::Method;

pub const LAYER_NAME: &str = "layer_name";
pub const WEIGHTS: &str = "weights";
pub const SHAPE: &str = "shape";
pub const QUANTIZED_DATA: &str = "quantized_data";
pub const SCALES: &str = "scales";
pub const ZERO_POINTS: &str = "zero_points";
pub const BIT_WIDTH: &str = "bit_width";
pub const GROUP_SIZE: &str = "group_size";
/// Present only when the scales were not chosen by min/max (`lsq`): how they were chosen.
/// Dequantizing never needs it; it tells a reader what the numbers are worth, and, being a
/// column, it survives the engines that drop schema metadata.
pub const METHOD: &str = "method";

/// The schema metadata key; its value is a JSON object (see the module doc).
pub const META_KEY: &str = "arrow_quant";
/// Entries of that object.
pub const META_SCHEME: &str = "scheme";
pub const META_GROUP_SIZE: &str = "group_size";
pub const META_PACKING: &str = "packing";
pub const META_VERSION: &str = "version";
pub const META_METHOD: &str = "method";

pub const SCHEME: &str = "affine-minmax-v1";
pub const PACKING: &str = "lsb-first; each group starts on a byte boundary; groups, then rows, in order";

fn list_of(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("item", item, false)))
}

/// The metadata entries of every quantized table.
pub fn quantized_metadata(group_size: usize) -> BTreeMap<String, Value> {
    BTreeMap::from([
        (META_SCHEME.to_string(), Value::from(SCHEME)),
        (META_GROUP_SIZE.to_string(), Value::from(group_size)),
        (META_PACKING.to_string(), Value::from(PACKING)),
        (META_VERSION.to_string(), Value::from(env!("CARGO_PKG_VERSION"))),
    ])
}

/// Schema metadata holding `entries` under [`META_KEY`], in a fixed order.
pub fn schema_metadata(entries: BTreeMap<String, Value>) -> HashMap<String, String> {
    // From a BTreeMap: sorted whether or not serde_json preserves insertion order.
    let object: serde_json::Map<String, Value> = entries.into_iter().collect();
    HashMap::from([(META_KEY.to_string(), Value::Object(object).to_string())])
}

/// The arrow_quant entries of a schema's metadata: the JSON object under [`META_KEY`], and the
/// separate `arrow_quant.<entry>` keys that files written before 0.3 carry (as strings).
pub fn read_metadata(metadata: &HashMap<String, String>) -> Result<BTreeMap<String, Value>> {
    let mut out = BTreeMap::new();
    if let Some(json) = metadata.get(META_KEY) {
        match serde_json::from_str::<Value>(json) {
            Ok(Value::Object(map)) => out.extend(map),
            _ => return Err(QuantError::value(format!("schema metadata '{META_KEY}' is not a JSON object: {json:.80}"))),
        }
    }
    for (k, v) in metadata {
        if let Some(entry) = k.strip_prefix("arrow_quant.") {
            out.entry(entry.to_string()).or_insert_with(|| Value::from(v.as_str()));
        }
    }
    Ok(out)
}

/// The seven columns of a quantized table (`layer_name`, `quantized_data`, `scales`,
/// `zero_points`, `shape`, `bit_width` as int8, `group_size` as int64), with the scheme and
/// group size in the metadata too. `large` selects `large_binary` for `quantized_data` (needed
/// past 2 GiB of codes per batch).
pub fn quantized_schema(group_size: usize, large: bool) -> SchemaRef {
    let data = if large { DataType::LargeBinary } else { DataType::Binary };
    Arc::new(
        Schema::new(vec![
            Field::new(LAYER_NAME, DataType::Utf8, false),
            Field::new(QUANTIZED_DATA, data, false),
            Field::new(SCALES, list_of(DataType::Float32), false),
            Field::new(ZERO_POINTS, list_of(DataType::Float32), false),
            Field::new(SHAPE, list_of(DataType::Int64), false),
            Field::new(BIT_WIDTH, DataType::Int8, false),
            Field::new(GROUP_SIZE, DataType::Int64, false),
        ])
        .with_metadata(schema_metadata(quantized_metadata(group_size))),
    )
}

/// `schema` with the [`METHOD`] column appended and the method in its metadata, for a table
/// quantized by a method other than min/max (min/max tables keep the seven columns they always
/// had, so their readers see no change).
pub fn with_method(schema: &SchemaRef, method: Method) -> Result<SchemaRef> {
    if method == Method::MinMax {
        return Ok(schema.clone());
    }
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(METHOD, DataType::Utf8, false));
    let mut entries = read_metadata(schema.metadata())?;
    entries.insert(META_METHOD.to_string(), Value::from(method.name()));
    Ok(Arc::new(Schema::new(fields).with_metadata(schema_metadata(entries))))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_one_sorted_key_and_old_keys_are_still_read() {
        let schema = quantized_schema(64, false);
        let meta = schema.metadata();
        assert_eq!(meta.len(), 1);
        let json = &meta[META_KEY];
        assert!(json.starts_with(r#"{"group_size":64,"packing":"#), "{json}");
        let entries = read_metadata(meta).unwrap();
        assert_eq!(entries[META_GROUP_SIZE], Value::from(64));
        assert_eq!(entries[META_SCHEME], Value::from(SCHEME));

        let legacy = HashMap::from([("arrow_quant.group_size".to_string(), "32".to_string()), ("other".to_string(), "x".to_string())]);
        let entries = read_metadata(&legacy).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[META_GROUP_SIZE], Value::from("32"));

        let bad = HashMap::from([(META_KEY.to_string(), "[1,2]".to_string())]);
        assert!(read_metadata(&bad).is_err());
    }
}

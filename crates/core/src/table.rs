//! The table's schema and parquet settings, shared by fragments and the merge.

use std::sync::Arc;

use arrow_array::builder::{ListBuilder, StringBuilder};
use arrow_array::{Array, ArrayRef};
use arrow_schema::{DataType, Field, SchemaRef};
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

/// Rows per parquet row group (bounds the writers' buffered memory).
pub const ROW_GROUP_ROWS: usize = 65536;

/// The four columns of the seed's table.
pub fn base_fields() -> Vec<Field> {
    vec![
        Field::new("width", DataType::Int64, true),
        Field::new("height", DataType::Int64, true),
        Field::new("caption", DataType::Utf8, true),
        Field::new("filename", DataType::Utf8, true),
    ]
}

/// A fragment-only column: the hash ([`crate::layout::fnv1a64`]) of the
/// path under `data/` of the JSON each row came from. The merge leaves it
/// out of the table and drops the rows whose JSON a later shard's file of
/// the same path replaced, as `tar xf` of the shards in order does.
pub const JSON_KEY_COLUMN: &str = "__shardprep_json_key";

/// The fragment's field of [`JSON_KEY_COLUMN`].
pub fn json_key_field() -> Field {
    Field::new(JSON_KEY_COLUMN, DataType::UInt64, true)
}

/// The element field of `list<string>` extra columns.
pub fn list_item_field() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Utf8, true))
}

/// Parquet settings shared by fragments and the merged table.
pub fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by(format!("shardprep {}", env!("CARGO_PKG_VERSION")))
        .build()
}

/// A string column as a `list<string>` column: each value becomes a one-item list.
pub fn strings_to_lists(col: &ArrayRef) -> ArrayRef {
    let mut b = ListBuilder::new(StringBuilder::new()).with_field(list_item_field());
    if let Some(s) = col.as_any().downcast_ref::<arrow_array::StringArray>() {
        for i in 0..s.len() {
            if s.is_null(i) {
                b.append_null();
            } else {
                b.values().append_value(s.value(i));
                b.append(true);
            }
        }
    } else {
        (0..col.len()).for_each(|_| b.append_null());
    }
    Arc::new(b.finish())
}

/// Makes columns match `schema`: a string column where the schema wants
/// `list<string>` becomes one-item lists (all-null placeholders included).
pub fn conform(cols: Vec<ArrayRef>, schema: &SchemaRef) -> Vec<ArrayRef> {
    cols.into_iter()
        .zip(schema.fields())
        .map(|(col, field)| {
            if col.data_type() == field.data_type() {
                col
            } else {
                strings_to_lists(&col)
            }
        })
        .collect()
}

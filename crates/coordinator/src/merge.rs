//! Merging the per-shard fragments into the final parquet table, in shard
//! order, streaming batch by batch (never all rows in memory), and finding
//! file names that occur in more than one shard.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Array, BooleanArray, Int64Array, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use shardprep_core::layout::fnv1a64;
use shardprep_core::table::{
    JSON_KEY_COLUMN, base_fields, conform, list_item_field, writer_properties,
};

use crate::CoordinatorError;
use crate::written::ShadowedJson;

/// One file name found in several shards.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DuplicateName {
    pub filename: String,
    /// The shards that have a row for it, in shard order.
    pub shards: Vec<String>,
}

/// What the merge produced.
#[derive(Debug, Clone)]
pub struct MergeOutcome {
    pub rows: u64,
    /// Rows left out: a later shard's JSON of the same path replaced theirs.
    pub rows_shadowed: u64,
    /// JSONs a later shard's file replaced (count; the first few).
    pub json_replaced: u64,
    pub json_replaced_listed: Vec<crate::written::ShadowedName>,
    /// File names with rows in more than one shard (capped list).
    pub duplicates: Vec<DuplicateName>,
    /// How many file names have rows in more than one shard.
    pub duplicate_count: u64,
}

/// What the merge changes in the fragments' rows.
#[derive(Debug, Default)]
pub struct Edits {
    /// Rows left out: a later shard's file replaced their JSON.
    pub shadowed: ShadowedJson,
    /// Table row number → (width, height): rows paired with an image
    /// another shard wrote, given that image's size (`--dims image`).
    pub dims: BTreeMap<u64, (i64, i64)>,
}

/// Duplicates listed by name in the report.
const DUPLICATES_LISTED: usize = 100;
const BATCH: usize = 8192;

fn merr(path: &Path, e: impl std::fmt::Display) -> CoordinatorError {
    CoordinatorError::Merge(format!("{}: {e}", path.display()))
}

fn open_reader(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>, CoordinatorError> {
    let f = File::open(path).map_err(|e| merr(path, e))?;
    ParquetRecordBatchReaderBuilder::try_new(f).map_err(|e| merr(path, e))
}

/// The record batches of a fragment, `BATCH` rows at a time.
fn read_batches(
    path: &Path,
) -> Result<impl Iterator<Item = Result<RecordBatch, CoordinatorError>> + '_, CoordinatorError> {
    let reader = open_reader(path)?
        .with_batch_size(BATCH)
        .build()
        .map_err(|e| merr(path, e))?;
    Ok(reader.map(move |batch| batch.map_err(|e| merr(path, e))))
}

/// The record batches of a fragment with only those of the columns `names`
/// it has, `BATCH` rows at a time.
pub(crate) fn read_columns<'a>(
    path: &'a Path,
    names: &[&str],
) -> Result<impl Iterator<Item = Result<RecordBatch, CoordinatorError>> + 'a, CoordinatorError> {
    let builder = open_reader(path)?;
    let schema = builder.schema().clone();
    let roots = names.iter().filter_map(|n| schema.index_of(n).ok());
    let mask = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(BATCH)
        .build()
        .map_err(|e| merr(path, e))?;
    Ok(reader.map(move |batch| batch.map_err(|e| merr(path, e))))
}

/// The merged schema: the seed's columns, then each extra column as
/// `list<string>` if any fragment has it so, else as string.
fn merged_schema(
    fragments: &[(String, PathBuf)],
    extra: &[String],
) -> Result<SchemaRef, CoordinatorError> {
    let mut lists = vec![false; extra.len()];
    for (_, path) in fragments {
        let b = open_reader(path)?;
        let schema = b.schema();
        for (i, name) in extra.iter().enumerate() {
            if let Ok(f) = schema.field_with_name(name) {
                lists[i] |= matches!(f.data_type(), DataType::List(_));
            }
        }
    }
    let mut fields = base_fields();
    for (name, list) in extra.iter().zip(lists) {
        let dt = if list {
            DataType::List(list_item_field())
        } else {
            DataType::Utf8
        };
        fields.push(Field::new(name, dt, true));
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// Merges `fragments` (shard name, fragment path; in shard order) into `dest`
/// through a temporary file and a rename, without the rows of the JSONs
/// `edits` names.
pub fn merge(
    fragments: &[(String, PathBuf)],
    extra: &[String],
    dest: &Path,
    edits: &Edits,
) -> Result<MergeOutcome, CoordinatorError> {
    let schema = merged_schema(fragments, extra)?;
    let tmp = shardprep_core::layout::unique_tmp(dest);
    let merged = merge_into((fragments, edits), schema, &tmp, dest);
    if merged.is_err() {
        // Never leave a half-written table behind (e.g. on a full disk).
        let _ = std::fs::remove_file(&tmp);
    }
    merged
}

/// The merge proper: rows of `fragments` into `tmp`, then renamed to `dest`.
fn merge_into(
    (fragments, edits): (&[(String, PathBuf)], &Edits),
    schema: Arc<Schema>,
    tmp: &Path,
    dest: &Path,
) -> Result<MergeOutcome, CoordinatorError> {
    let tmp = tmp.to_path_buf();
    let file = File::create(&tmp).map_err(|e| merr(&tmp, e))?;
    let mut writer = ArrowWriter::try_new(
        BufWriter::with_capacity(1 << 20, file),
        schema.clone(),
        Some(writer_properties()),
    )
    .map_err(|e| merr(&tmp, e))?;
    // (hash of file name, shard index) for every row: 16 bytes a row.
    let mut names: Vec<(u64, u32)> = Vec::new();
    let (mut rows, mut rows_shadowed) = (0u64, 0u64);
    for (si, (shard, path)) in fragments.iter().enumerate() {
        let replaced = edits.shadowed.by_shard.get(shard);
        for batch in read_batches(path)? {
            let mut batch = batch?;
            if let Some(keys) = replaced {
                let before = batch.num_rows();
                batch = without_replaced(batch, keys).map_err(|e| merr(path, e))?;
                rows_shadowed += (before - batch.num_rows()) as u64;
            }
            let cols = schema
                .fields()
                .iter()
                .map(|f| {
                    batch.column_by_name(f.name()).cloned().unwrap_or_else(|| {
                        arrow_array::new_null_array(&DataType::Utf8, batch.num_rows())
                    })
                })
                .collect();
            let out = RecordBatch::try_new(schema.clone(), conform(cols, &schema))
                .and_then(|b| with_dims(b, rows, &edits.dims))
                .map_err(|e| merr(path, e))?;
            if let Some(fname) = out.column(3).as_any().downcast_ref::<StringArray>() {
                for i in 0..fname.len() {
                    if fname.is_valid(i) {
                        names.push((fnv1a64(fname.value(i).as_bytes()), si as u32));
                    }
                }
            }
            rows += out.num_rows() as u64;
            writer.write(&out).map_err(|e| merr(&tmp, e))?;
        }
    }
    let buf = writer.into_inner().map_err(|e| merr(&tmp, e))?;
    let file = buf.into_inner().map_err(|e| merr(&tmp, e.into_error()))?;
    file.sync_all().map_err(|e| merr(&tmp, e))?;
    drop(file);
    shardprep_core::layout::rename_into_place(&tmp, dest).map_err(|e| merr(dest, e))?;
    if let Some(parent) = dest.parent() {
        crate::commit::sync_dir(parent);
    }
    let (duplicate_count, duplicates) = find_duplicates(names, fragments)?;
    Ok(MergeOutcome {
        rows,
        rows_shadowed,
        json_replaced: edits.shadowed.count,
        json_replaced_listed: edits.shadowed.listed.clone(),
        duplicates,
        duplicate_count,
    })
}

/// `batch` (table rows `first..`) with the width and height `dims` gives
/// its rows (columns 0 and 1 of the seed's schema).
fn with_dims(
    batch: RecordBatch,
    first: u64,
    dims: &BTreeMap<u64, (i64, i64)>,
) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let end = first + batch.num_rows() as u64;
    if dims.range(first..end).next().is_none() {
        return Ok(batch);
    }
    let mut cols = batch.columns().to_vec();
    for (c, col) in cols.iter_mut().take(2).enumerate() {
        let Some(old) = col.as_any().downcast_ref::<Int64Array>() else {
            continue;
        };
        let new: Int64Array = (0..old.len())
            .map(|i| match dims.get(&(first + i as u64)) {
                Some(d) => Some(if c == 0 { d.0 } else { d.1 }),
                None => old.is_valid(i).then(|| old.value(i)),
            })
            .collect();
        *col = Arc::new(new);
    }
    RecordBatch::try_new(batch.schema(), cols)
}

/// `batch` without the rows whose JSON key is in `keys` (a fragment
/// without the key column, from an older version, keeps every row).
pub(crate) fn without_replaced(
    batch: RecordBatch,
    keys: &foldhash::HashSet<u64>,
) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let Some(col) = json_keys(&batch) else {
        return Ok(batch);
    };
    let keep: BooleanArray = (0..col.len())
        .map(|i| Some(!(col.is_valid(i) && keys.contains(&col.value(i)))))
        .collect();
    arrow_select::filter::filter_record_batch(&batch, &keep)
}

pub(crate) fn json_keys(batch: &RecordBatch) -> Option<&UInt64Array> {
    batch
        .column_by_name(JSON_KEY_COLUMN)
        .and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
}

/// How many rows of `fragments` the merge leaves out for `shadowed`: what
/// the judge expects the table to lack (only the shards `shadowed` names
/// are read, and only their key column).
pub fn shadowed_rows(
    fragments: &[(String, PathBuf)],
    shadowed: &ShadowedJson,
) -> Result<u64, CoordinatorError> {
    let mut n = 0u64;
    for (shard, path) in fragments {
        let Some(keys) = shadowed.by_shard.get(shard) else {
            continue;
        };
        let builder = open_reader(path)?;
        let Some(at) = builder.schema().index_of(JSON_KEY_COLUMN).ok() else {
            continue;
        };
        let mask = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), [at]);
        let reader = builder
            .with_projection(mask)
            .with_batch_size(BATCH)
            .build()
            .map_err(|e| merr(path, e))?;
        for batch in reader {
            let batch = batch.map_err(|e| merr(path, e))?;
            if let Some(col) = json_keys(&batch) {
                n += (0..col.len())
                    .filter(|&i| col.is_valid(i) && keys.contains(&col.value(i)))
                    .count() as u64;
            }
        }
    }
    Ok(n)
}

/// File names whose rows come from more than one of `fragments` (count, and
/// the first few by name), without writing a table: what the report lists
/// when some shards failed and nothing is merged.
pub fn duplicates_among(
    fragments: &[(String, PathBuf)],
) -> Result<(u64, Vec<DuplicateName>), CoordinatorError> {
    let mut names: Vec<(u64, u32)> = Vec::new();
    for (si, (_, path)) in fragments.iter().enumerate() {
        for batch in read_batches(path)? {
            let batch = batch?;
            if let Some(fname) = batch
                .column_by_name("filename")
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            {
                names.extend(
                    (0..fname.len())
                        .filter(|&i| fname.is_valid(i))
                        .map(|i| (fnv1a64(fname.value(i).as_bytes()), si as u32)),
                );
            }
        }
    }
    find_duplicates(names, fragments)
}

/// File names whose rows come from more than one shard: these overwrite each
/// other in the flat `data/` folder (the seed loses one silently).
fn find_duplicates(
    mut names: Vec<(u64, u32)>,
    fragments: &[(String, PathBuf)],
) -> Result<(u64, Vec<DuplicateName>), CoordinatorError> {
    names.sort_unstable();
    let mut dup_hashes = HashSet::new();
    for w in names.windows(2) {
        if w[0].0 == w[1].0 && w[0].1 != w[1].1 {
            dup_hashes.insert(w[0].0);
        }
    }
    drop(names);
    if dup_hashes.is_empty() {
        return Ok((0, Vec::new()));
    }
    // Second pass, only to name the first few.
    let mut listed: Vec<DuplicateName> = Vec::new();
    for (shard, path) in fragments {
        for batch in read_batches(path)? {
            let batch = batch?;
            let Some(fname) = batch
                .column_by_name("filename")
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            else {
                continue;
            };
            for i in 0..fname.len() {
                let name = fname.value(i);
                if !dup_hashes.contains(&fnv1a64(name.as_bytes())) {
                    continue;
                }
                match listed.iter().position(|d| d.filename == name) {
                    Some(k) => {
                        let d = &mut listed[k];
                        if d.shards.last() != Some(shard) {
                            d.shards.push(shard.clone());
                        }
                    }
                    None if listed.len() < DUPLICATES_LISTED => listed.push(DuplicateName {
                        filename: name.to_string(),
                        shards: vec![shard.clone()],
                    }),
                    None => {}
                }
            }
        }
    }
    Ok((dup_hashes.len() as u64, listed))
}

//! The per-shard parquet fragment: rows are gathered into arrow arrays in
//! batches and streamed into a parquet file, so memory stays bounded whatever
//! the shard's size.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{Int64Builder, ListBuilder, StringBuilder, UInt64Builder};
use arrow_array::{Array, ArrayRef, BooleanArray, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use shardprep_core::layout::fnv1a64;
use shardprep_core::table::{
    JSON_KEY_COLUMN, base_fields, conform, json_key_field, list_item_field, writer_properties,
};

use crate::sample::{ExtraValue, Row};

/// Rows gathered before they are handed to the parquet writer.
const BATCH_ROWS: usize = 8192;
/// Batches held back while an extra column's type is unknown.
const MAX_HELD: usize = 8;

/// Errors while writing a fragment.
#[derive(Debug, thiserror::Error)]
pub enum FragmentError {
    #[error("could not create fragment {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error("could not write parquet fragment: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("could not build arrow batch: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("could not sync fragment to disk: {0}")]
    Sync(std::io::Error),
}

enum ExtraBuilder {
    /// Type not known yet: no non-missing value seen so far (count of nulls).
    Undecided(usize),
    Text(StringBuilder),
    List(ListBuilder<StringBuilder>),
}

impl ExtraBuilder {
    fn append(&mut self, v: &ExtraValue) {
        if let ExtraBuilder::Undecided(nulls) = self {
            let nulls = *nulls;
            *self = match v {
                ExtraValue::Missing => {
                    *self = ExtraBuilder::Undecided(nulls + 1);
                    return;
                }
                ExtraValue::Text(_) => {
                    let mut b = StringBuilder::new();
                    (0..nulls).for_each(|_| b.append_null());
                    ExtraBuilder::Text(b)
                }
                ExtraValue::List(_) => {
                    let mut b =
                        ListBuilder::new(StringBuilder::new()).with_field(list_item_field());
                    (0..nulls).for_each(|_| b.append_null());
                    ExtraBuilder::List(b)
                }
            };
        }
        match (self, v) {
            (ExtraBuilder::Undecided(_), _) => {}
            (ExtraBuilder::Text(b), ExtraValue::Missing) => b.append_null(),
            (ExtraBuilder::Text(b), ExtraValue::Text(s)) => b.append_value(s),
            (ExtraBuilder::Text(b), ExtraValue::List(items)) => {
                b.append_value(serde_json::to_string(items).unwrap_or_default())
            }
            (ExtraBuilder::List(b), ExtraValue::Missing) => b.append_null(),
            (ExtraBuilder::List(b), ExtraValue::Text(s)) => {
                b.values().append_value(s);
                b.append(true);
            }
            (ExtraBuilder::List(b), ExtraValue::List(items)) => {
                for s in items {
                    b.values().append_value(s);
                }
                b.append(true);
            }
        }
    }
}

/// Writes rows into one parquet file.
pub struct FragmentWriter {
    path: std::path::PathBuf,
    extra_names: Vec<String>,
    width: Int64Builder,
    height: Int64Builder,
    caption: StringBuilder,
    filename: StringBuilder,
    extras: Vec<ExtraBuilder>,
    json_key: UInt64Builder,
    pending: usize,
    /// Batches held until every extra column's type is known (first batch only).
    held: Vec<Vec<ArrayRef>>,
    writer: Option<(ArrowWriter<BufWriter<File>>, SchemaRef)>,
    file: Option<BufWriter<File>>,
    rows: u64,
    /// Rows taken back: by JSON key, the rows of that key numbered below
    /// the cutoff (in push order) are left out at the end.
    withdrawn: foldhash::HashMap<u64, u64>,
}

/// A closed fragment: its rows, and (only when rows were withdrawn) which.
pub struct FragmentDone {
    pub rows: u64,
    pub withdrawn: Option<Withdrawals>,
}

/// The rows a fragment left out, and the images its rows still name.
#[derive(Default)]
pub struct Withdrawals {
    /// Each left-out row: its number in push order and the image it named.
    pub rows: Vec<(u64, String)>,
    /// Hashes ([`shardprep_core::layout::fnv1a64`]) of the images the
    /// rows kept name.
    pub live_images: foldhash::HashSet<u64>,
}

impl FragmentWriter {
    /// Creates the fragment file at `path`; `extra` names the extra columns.
    pub fn create(path: &Path, extra: &[String]) -> Result<Self, FragmentError> {
        let file = File::create(path).map_err(|source| FragmentError::Create {
            path: path.display().to_string(),
            source,
        })?;
        Ok(FragmentWriter {
            path: path.to_path_buf(),
            extra_names: extra.to_vec(),
            width: Int64Builder::with_capacity(BATCH_ROWS),
            height: Int64Builder::with_capacity(BATCH_ROWS),
            caption: StringBuilder::new(),
            filename: StringBuilder::new(),
            extras: extra.iter().map(|_| ExtraBuilder::Undecided(0)).collect(),
            json_key: UInt64Builder::with_capacity(BATCH_ROWS),
            pending: 0,
            held: Vec::new(),
            writer: None,
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            rows: 0,
            withdrawn: foldhash::HashMap::default(),
        })
    }

    /// Adds a row made by the JSON whose path under `data/` hashes to
    /// `json_key`; returns its number (for [`FragmentWriter::withdraw`]).
    pub fn push(&mut self, row: &Row, json_key: u64) -> Result<u64, FragmentError> {
        let number = self.rows;
        self.width.append_value(row.width);
        self.height.append_value(row.height);
        self.caption.append_value(&row.caption);
        self.filename.append_value(&row.filename);
        for (b, v) in self.extras.iter_mut().zip(&row.extras) {
            b.append(v);
        }
        self.json_key.append_value(json_key);
        self.pending += 1;
        self.rows += 1;
        if self.pending >= BATCH_ROWS {
            self.flush_batch(false)?;
        }
        Ok(number)
    }

    /// Takes back the rows pushed so far with `json_key`: a later member
    /// replaced their JSON. Rare (a name twice in one shard), so the file
    /// is rewritten without them at the end.
    pub fn withdraw_before(&mut self, json_key: u64) {
        self.withdrawn.insert(json_key, self.rows);
    }

    fn flush_batch(&mut self, last: bool) -> Result<(), FragmentError> {
        if self.pending > 0 {
            let mut cols: Vec<ArrayRef> = vec![
                Arc::new(self.width.finish()),
                Arc::new(self.height.finish()),
                Arc::new(self.caption.finish()),
                Arc::new(self.filename.finish()),
            ];
            for b in &mut self.extras {
                cols.push(match b {
                    // Still unknown: keep the null count; decided when the batch is written.
                    ExtraBuilder::Undecided(n) => {
                        let mut s = StringBuilder::new();
                        (0..*n).for_each(|_| s.append_null());
                        *n = 0;
                        Arc::new(s.finish())
                    }
                    ExtraBuilder::Text(s) => Arc::new(s.finish()),
                    ExtraBuilder::List(l) => Arc::new(l.finish()),
                });
            }
            cols.push(Arc::new(self.json_key.finish()));
            self.pending = 0;
            self.held.push(cols);
        }
        // The writer's schema is fixed once every extra column has a type, or at the end.
        let decided = self
            .extras
            .iter()
            .all(|b| !matches!(b, ExtraBuilder::Undecided(_)));
        // Held batches are bounded: a column still without a value after
        // MAX_HELD batches is taken to be a string column.
        if self.writer.is_none() && (decided || last || self.held.len() >= MAX_HELD) {
            for b in &mut self.extras {
                if matches!(b, ExtraBuilder::Undecided(_)) {
                    *b = ExtraBuilder::Text(StringBuilder::new());
                }
            }
            let mut fields = base_fields();
            for (name, b) in self.extra_names.iter().zip(&self.extras) {
                let dt = match b {
                    ExtraBuilder::List(_) => DataType::List(list_item_field()),
                    _ => DataType::Utf8,
                };
                debug_assert!(!matches!(b, ExtraBuilder::Undecided(_)));
                fields.push(Field::new(name, dt, true));
            }
            fields.push(json_key_field());
            let schema: SchemaRef = Arc::new(Schema::new(fields));
            let file = self.file.take().ok_or_else(|| {
                FragmentError::Parquet(parquet::errors::ParquetError::General(
                    "fragment writer reused".into(),
                ))
            })?;
            let writer = ArrowWriter::try_new(file, schema.clone(), Some(writer_properties()))?;
            self.writer = Some((writer, schema));
        }
        if let Some((writer, schema)) = &mut self.writer {
            for cols in self.held.drain(..) {
                let cols = conform(cols, schema);
                writer.write(&RecordBatch::try_new(schema.clone(), cols)?)?;
            }
        }
        Ok(())
    }

    /// Writes the remaining rows, the footer, and syncs the file to disk.
    pub fn finish(mut self) -> Result<FragmentDone, FragmentError> {
        self.flush_batch(true)?;
        let (writer, _) = self.writer.take().ok_or_else(|| {
            FragmentError::Parquet(parquet::errors::ParquetError::General(
                "fragment writer has no schema".into(),
            ))
        })?;
        let buf = writer.into_inner()?;
        let file = buf
            .into_inner()
            .map_err(|e| FragmentError::Sync(e.into_error()))?;
        if self.withdrawn.is_empty() {
            file.sync_all().map_err(FragmentError::Sync)?;
            return Ok(FragmentDone {
                rows: self.rows,
                withdrawn: None,
            });
        }
        drop(file);
        let w = rewrite_without(&self.path, &self.withdrawn)?;
        Ok(FragmentDone {
            rows: self.rows - w.rows.len() as u64,
            withdrawn: Some(w),
        })
    }
}

/// Rewrites the fragment at `path` without the rows `withdrawn` names,
/// through a temporary file and a rename.
fn rewrite_without(
    path: &Path,
    withdrawn: &foldhash::HashMap<u64, u64>,
) -> Result<Withdrawals, FragmentError> {
    let io = |e: std::io::Error| FragmentError::Create {
        path: path.display().to_string(),
        source: e,
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).map_err(io)?)?;
    let schema = reader.schema().clone();
    let tmp = path.with_extension("parquet.tmp");
    let out = BufWriter::with_capacity(1 << 20, File::create(&tmp).map_err(io)?);
    let mut writer = ArrowWriter::try_new(out, schema, Some(writer_properties()))?;
    let (mut number, mut w) = (0u64, Withdrawals::default());
    for batch in reader.with_batch_size(BATCH_ROWS).build()? {
        let batch = batch?;
        let keys = column::<UInt64Array>(&batch, JSON_KEY_COLUMN)?;
        let names = column::<StringArray>(&batch, "filename")?;
        let mut keep = Vec::with_capacity(batch.num_rows());
        for i in 0..batch.num_rows() {
            let cutoff = withdrawn.get(&keys.value(i)).copied().unwrap_or(0);
            let name = names.value(i);
            match number < cutoff {
                true => w.rows.push((number, name.to_string())),
                false => _ = w.live_images.insert(fnv1a64(name.as_bytes())),
            }
            keep.push(Some(number >= cutoff));
            number += 1;
        }
        let keep: BooleanArray = keep.into_iter().collect();
        writer.write(&arrow_select::filter::filter_record_batch(&batch, &keep)?)?;
    }
    let file = writer
        .into_inner()?
        .into_inner()
        .map_err(|e| FragmentError::Sync(e.into_error()))?;
    file.sync_all().map_err(FragmentError::Sync)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(w)
}

/// The fragment's column `name` as `A`.
fn column<'b, A: 'static>(batch: &'b RecordBatch, name: &str) -> Result<&'b A, FragmentError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<A>())
        .ok_or_else(|| {
            FragmentError::Parquet(parquet::errors::ParquetError::General(format!(
                "the fragment has no column {name} of the expected type"
            )))
        })
}

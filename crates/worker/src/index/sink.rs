//! [`IndexSink`]: the webshart index as an output of the shard walk.
//!
//! Every kept member with a UTF-8 name gets an entry (its data offset and
//! size). An image directly in `data/` keeps its entry only when the walk
//! wrote a row for it (the parquet's sample): the entry then carries the
//! row's caption and the header's width and height, which is what
//! SimpleTuner's webshart backend needs to take it. The other images get no
//! entry, so the trainer takes from the index exactly the samples it takes
//! from the parquet; the walk counts them (`images_left_out`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use shardprep_core::issue::IssueKind;
use shardprep_core::manifest::IndexCounts;

use super::IndexStats;
use super::doc::{FileEntry, index_bytes};
use crate::integrity::ImageFacts;
use crate::shard::ShardError;
use crate::shard::member::Kind;
use crate::shard::output::{End, KeptMember, KeptRow, Output};
use crate::shard::tally::Tally;

/// The index of one shard being built.
pub(crate) struct IndexSink {
    /// The index's `path`: the shard's name.
    shard: String,
    /// The tar's size.
    filesize: u64,
    files: BTreeMap<String, FileEntry>,
    /// Images directly in `data/`: checked path (as text) → entry key.
    images: HashMap<String, String>,
    /// Entry keys of images below the top (never a sample).
    nested: Vec<String>,
    /// Header sizes of the images directly in `data/`.
    header_dims: HashMap<String, (u32, u32)>,
    /// Each row's caption and the JSON's width and height, by image name.
    rows: HashMap<String, (String, (i64, i64))>,
}

impl IndexSink {
    /// The index of the shard `shard`, a tar of `filesize` bytes.
    pub(crate) fn new(shard: &str, filesize: u64) -> Self {
        IndexSink {
            shard: shard.to_string(),
            filesize,
            files: BTreeMap::new(),
            images: HashMap::new(),
            nested: Vec::new(),
            header_dims: HashMap::new(),
            rows: HashMap::new(),
        }
    }

    /// Gives the images with a row their caption and size; drops the others.
    fn resolve_images(&mut self) -> IndexStats {
        let mut stats = IndexStats::default();
        for key in &self.nested {
            self.files.remove(key);
        }
        for (rel, key) in &self.images {
            let row = self.rows.get(rel);
            let Some((caption, json_dims)) = row else {
                self.files.remove(key);
                continue;
            };
            let Some(entry) = self.files.get_mut(key) else {
                continue;
            };
            entry.captions = Some(caption.clone());
            stats.images_with_caption += 1;
            match self.header_dims.get(rel) {
                Some(&(w, h)) => {
                    entry.set_dimensions(w, h);
                    stats.images_with_dimensions += 1;
                    if (i64::from(w), i64::from(h)) != *json_dims {
                        stats.dimension_mismatches += 1;
                    }
                }
                // Unreadable header (counted by the image checks): no size,
                // so the trainer does not take it.
                None => stats.images_without_dimensions += 1,
            }
        }
        stats
    }
}

impl Output for IndexSink {
    /// The index document and its counts.
    type Done = (Vec<u8>, IndexStats);

    fn takes_sparse(&self) -> bool {
        false
    }

    fn member(&mut self, m: &KeptMember<'_>, tally: &mut Tally) {
        let Ok(key) = std::str::from_utf8(m.stored_name) else {
            let detail = "webshart index keys are text; not indexed";
            tally.reject(m.name, IssueKind::NameNotUtf8, detail);
            return;
        };
        self.files
            .insert(key.to_string(), FileEntry::plain(m.data_offset, m.size));
        if m.kind == Kind::Image {
            if m.top_level {
                // A top-level path is one plain name: the row's `filename`.
                let rel = m.rel.to_string_lossy().into_owned();
                self.images.insert(rel, key.to_string());
            } else {
                self.nested.push(key.to_string());
            }
        }
    }

    fn image(&mut self, rel: &Path, facts: &ImageFacts) {
        // A name that is not text gets no entry (`name_not_utf8`).
        let Some(rel) = rel.to_str() else {
            return;
        };
        match facts.header {
            Ok((w, h)) if w > 0 && h > 0 => {
                self.header_dims.insert(rel.to_string(), (w, h));
            }
            _ => {
                // A later copy of the name wins, as in `data/`.
                self.header_dims.remove(rel);
            }
        }
    }

    fn row(&mut self, r: &KeptRow<'_>) {
        let row = r.row;
        self.rows
            .insert(row.filename.clone(), (row.caption.clone(), r.json_dims));
    }

    fn finish(mut self, end: &mut End<'_>) -> Result<Self::Done, ShardError> {
        let mut stats = self.resolve_images();
        let index = index_bytes(&self.shard, self.filesize, &self.files);
        stats.entries = self.files.len() as u64;
        stats.index_bytes = index.len() as u64;
        end.tally.counts.index = IndexCounts {
            entries: stats.entries,
            images_with_dimensions: stats.images_with_dimensions,
            images_without_dimensions: stats.images_without_dimensions,
            dimension_mismatches: stats.dimension_mismatches,
            images_with_caption: stats.images_with_caption,
        };
        end.attempt.write_index(&index, end.source)?;
        tracing::debug!(shard = %self.shard, filesize = self.filesize, entries = stats.entries, "index built");
        Ok((index, stats))
    }
}

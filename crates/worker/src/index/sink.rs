//! [`IndexSink`]: the webshart index as an output of the shard walk.
//!
//! Every kept member with a UTF-8 name gets an entry (its data offset and
//! size). An image directly in `data/` keeps its entry only when the walk
//! wrote a row for it (the parquet's sample): the entry then carries the
//! row's caption and the header's width and height, which is what
//! SimpleTuner's webshart backend needs to take it. The other images get no
//! entry, so the trainer takes from the index exactly the samples it takes
//! from the parquet; the walk counts them (`images_left_out`).

use std::path::Path;

use foldhash::HashMap;
use shardprep_core::issue::IssueKind;
use shardprep_core::manifest::IndexCounts;

use super::IndexStats;
use super::doc::{FileEntry, index_bytes};
use crate::integrity::ImageFacts;
use crate::shard::ShardError;
use crate::shard::member::Kind;
use crate::shard::output::{End, KeptMember, KeptRow, Output, WithdrawnRow};
use crate::shard::tally::Tally;

/// One member's entry as it was read.
struct Slot {
    key: String,
    entry: FileEntry,
    /// Left out of the index (an image no row names, or below the top).
    dropped: bool,
    /// A top-level image's header size (`None`: not read or unreadable).
    dims: Option<(u32, u32)>,
}

/// The index of one shard being built: entries in tar order, sorted by
/// name at the end (a later copy of a name wins, as in `data/`).
pub(crate) struct IndexSink {
    /// The index's `path`: the shard's name.
    shard: String,
    /// The tar's size.
    filesize: u64,
    slots: Vec<Slot>,
    /// Images directly in `data/`: checked path (as text) → latest slot.
    images: HashMap<String, usize>,
    /// Each row's caption, the JSON's width and height and the row's
    /// number, by image name.
    rows: HashMap<String, (String, (i64, i64), u64)>,
}

impl IndexSink {
    /// The index of the shard `shard`, a tar of `filesize` bytes.
    pub(crate) fn new(shard: &str, filesize: u64) -> Self {
        IndexSink {
            shard: shard.to_string(),
            filesize,
            slots: Vec::new(),
            images: HashMap::default(),
            rows: HashMap::default(),
        }
    }

    /// Gives the images with a row their caption and size; drops the others.
    fn resolve_images(&mut self) -> IndexStats {
        let mut stats = IndexStats::default();
        for (rel, &at) in &self.images {
            let slot = &mut self.slots[at];
            let Some((caption, json_dims, _)) = self.rows.remove(rel) else {
                slot.dropped = true;
                continue;
            };
            slot.entry.captions = Some(caption);
            stats.images_with_caption += 1;
            match slot.dims {
                Some((w, h)) => {
                    slot.entry.set_dimensions(w, h);
                    stats.images_with_dimensions += 1;
                    if (i64::from(w), i64::from(h)) != json_dims {
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

    /// The kept entries sorted by name, the last copy of each name.
    fn sorted_entries(mut slots: Vec<Slot>) -> Vec<(String, FileEntry)> {
        // Stable: copies of a name stay in tar order.
        slots.sort_by(|a, b| a.key.cmp(&b.key));
        let mut last: Vec<Slot> = Vec::with_capacity(slots.len());
        for slot in slots {
            match last.last_mut() {
                Some(prev) if prev.key == slot.key => *prev = slot,
                _ => last.push(slot),
            }
        }
        last.into_iter()
            .filter(|s| !s.dropped)
            .map(|s| (s.key, s.entry))
            .collect()
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
        let at = self.slots.len();
        self.slots.push(Slot {
            key: key.to_string(),
            entry: FileEntry::plain(m.data_offset, m.size),
            // An image below the top is never a sample.
            dropped: m.kind == Kind::Image && !m.top_level,
            dims: None,
        });
        if m.kind == Kind::Image && m.top_level {
            // A top-level path is one plain name: the row's `filename`.
            let rel = m.rel.to_string_lossy().into_owned();
            self.images.insert(rel, at);
        }
    }

    fn image(&mut self, rel: &Path, facts: &ImageFacts) {
        // A name that is not text gets no entry (`name_not_utf8`).
        let Some(at) = rel.to_str().and_then(|rel| self.images.get(rel)) else {
            return;
        };
        // A later copy of the name wins, as in `data/`.
        self.slots[*at].dims = match facts.header {
            Ok((w, h)) if w > 0 && h > 0 => Some((w, h)),
            _ => None,
        };
    }

    fn row(&mut self, r: &KeptRow<'_>) {
        let row = r.row;
        self.rows.insert(
            row.filename.clone(),
            (row.caption.clone(), r.json_dims, r.number),
        );
    }

    fn row_withdrawn(&mut self, w: &WithdrawnRow<'_>) {
        if self.rows.get(w.image).is_some_and(|r| r.2 == w.number) {
            self.rows.remove(w.image);
        }
    }

    fn finish(mut self, end: &mut End<'_>) -> Result<Self::Done, ShardError> {
        let mut stats = self.resolve_images();
        let files = Self::sorted_entries(std::mem::take(&mut self.slots));
        let index = index_bytes(&self.shard, self.filesize, &files);
        stats.entries = files.len() as u64;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(key: &str, offset: u64, dropped: bool) -> Slot {
        Slot {
            key: key.into(),
            entry: FileEntry::plain(offset, 1),
            dropped,
            dims: None,
        }
    }

    #[test]
    fn entries_are_sorted_by_name_and_the_last_copy_of_a_name_wins() {
        let slots = vec![
            slot("b.json", 0, false),
            slot("a.jpg", 512, false),
            slot("c/x.jpg", 1024, true),
            slot("b.json", 1536, false),
            slot("d.jpg", 2048, false),
            slot("d.jpg", 2560, true),
        ];
        let got: Vec<(String, u64)> = IndexSink::sorted_entries(slots)
            .into_iter()
            .map(|(k, e)| (k, e.offset))
            .collect();
        assert_eq!(got, vec![("a.jpg".into(), 512), ("b.json".into(), 1536)]);
    }
}

//! What the page draws, gathered from the output as the trainer reads it:
//! each sample's size and caption, from the merged parquet (extract mode)
//! or the webshart indexes (index mode; SimpleTuner buckets those by the
//! index's sizes). Counts are kept by value (distinct sizes, distinct caption
//! lengths), so the page's numbers are exact at any data-set size.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Array, RecordBatch};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::PageError;
use super::buckets::{BucketRule, Placement, bucket_name};

/// File name endings SimpleTuner 4.10.1 lists as images (`image_file_extensions`:
/// (those PIL opens; the common ones).
const IMAGE_EXTENSIONS: [&str; 16] = [
    "jpg", "jpeg", "jpe", "jfif", "png", "webp", "jxl", "bmp", "dib", "tiff", "tif", "gif", "ppm",
    "pgm", "tga", "jp2",
];

/// Tokens a CLIP text encoder takes, its start and end tokens included.
pub const CLIP_TOKENS: u64 = 77;

/// The samples the trainer will see and their captions.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Distinct (width, height) → samples.
    pub sizes: BTreeMap<(u64, u64), u64>,
    /// Samples whose row (or index entry) lacks a width or height.
    pub no_size: u64,
    /// Rows naming a file an earlier row already named (the trainer uses the first).
    pub duplicate_rows: u64,
    /// Rows whose file name is not an image the trainer lists.
    pub not_images: u64,
    /// Index mode: samples without a caption (SimpleTuner's `caption_missing`).
    pub caption_missing: u64,
    /// Caption length in characters → samples.
    pub chars: BTreeMap<u64, u64>,
    /// Caption length in words → samples.
    pub words: BTreeMap<u64, u64>,
    /// Estimated CLIP tokens (start and end included) → samples.
    pub tokens: BTreeMap<u64, u64>,
    /// Where the sizes came from (shown on the page).
    pub source: String,
}

impl Stats {
    /// Counts one sample.
    fn add(&mut self, size: Option<(u64, u64)>, caption: Option<&str>) {
        match size {
            Some(s) => *self.sizes.entry(s).or_default() += 1,
            None => self.no_size += 1,
        }
        let text = caption.unwrap_or("");
        *self.chars.entry(text.chars().count() as u64).or_default() += 1;
        *self
            .words
            .entry(text.split_whitespace().count() as u64)
            .or_default() += 1;
        *self.tokens.entry(estimate_clip_tokens(text)).or_default() += 1;
    }

    /// Adds another part's samples (another shard's) into these.
    pub fn merge(&mut self, o: &Stats) {
        let add = |a: &mut BTreeMap<u64, u64>, b: &BTreeMap<u64, u64>| {
            b.iter().for_each(|(k, v)| *a.entry(*k).or_default() += v)
        };
        for (k, v) in &o.sizes {
            *self.sizes.entry(*k).or_default() += v;
        }
        add(&mut self.chars, &o.chars);
        add(&mut self.words, &o.words);
        add(&mut self.tokens, &o.tokens);
        self.no_size += o.no_size;
        self.duplicate_rows += o.duplicate_rows;
        self.not_images += o.not_images;
        self.caption_missing += o.caption_missing;
        if self.source.is_empty() {
            self.source = o.source.clone();
        }
    }

    /// Samples counted (with or without a size).
    pub fn samples(&self) -> u64 {
        self.sizes.values().sum::<u64>() + self.no_size
    }

    /// Samples whose caption would be cut at [`CLIP_TOKENS`] (estimated).
    pub fn over_clip(&self) -> u64 {
        self.tokens.range(CLIP_TOKENS + 1..).map(|(_, n)| n).sum()
    }

    /// The buckets under `rule`.
    pub fn buckets(&self, rule: &BucketRule) -> Buckets {
        let mut b = Buckets::default();
        for (&(w, h), &n) in &self.sizes {
            match rule.place(w, h) {
                Placement::Bucket(a) => {
                    let e = b.by_aspect.entry(Aspect(a)).or_default();
                    e.0 += n;
                    *e.1.entry((w, h)).or_default() += n;
                }
                Placement::TooSmall => b.too_small += n,
                Placement::Invalid => b.invalid += n,
            }
        }
        // A row without a size compares as NaN in SimpleTuner's size check.
        if rule.minimum_image_size.is_some() {
            b.too_small += self.no_size;
        } else {
            b.invalid += self.no_size;
        }
        b
    }
}

/// An aspect ratio that sorts (the rounded values are never NaN).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Aspect(pub f64);

impl Eq for Aspect {}
impl PartialOrd for Aspect {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Aspect {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0)
    }
}

impl Aspect {
    /// SimpleTuner's name of the bucket.
    pub fn name(self) -> String {
        bucket_name(self.0)
    }
}

/// A bucket's samples and the sizes they have.
pub type BucketSamples = (u64, BTreeMap<(u64, u64), u64>);

/// The samples per bucket and those left out.
#[derive(Debug, Default, Clone)]
pub struct Buckets {
    /// Aspect → (samples, their sizes).
    pub by_aspect: BTreeMap<Aspect, BucketSamples>,
    /// Below `minimum_image_size`: SimpleTuner's `too_small`.
    pub too_small: u64,
    /// A zero edge (or no size without a minimum): the trainer cannot size them.
    pub invalid: u64,
}

impl Buckets {
    pub fn bucketed(&self) -> u64 {
        self.by_aspect.values().map(|v| v.0).sum()
    }
}

/// A rough count of CLIP BPE tokens: its pre-tokenizer's pieces (letter
/// runs, single digits, single other characters), a letter run longer than
/// 8 counted as one token per 6 letters, plus the start and end tokens.
/// An estimate: the real count needs CLIP's vocabulary.
pub fn estimate_clip_tokens(text: &str) -> u64 {
    let mut tokens = 2;
    let mut run = 0u64;
    let close = |run: &mut u64, tokens: &mut u64| {
        if *run > 0 {
            *tokens += if *run > 8 { run.div_ceil(6) } else { 1 };
            *run = 0;
        }
    };
    for c in text.chars() {
        if c.is_alphabetic() {
            run += 1;
            continue;
        }
        close(&mut run, &mut tokens);
        if !c.is_whitespace() {
            tokens += 1;
        }
    }
    close(&mut run, &mut tokens);
    tokens
}

fn is_image(name: &str) -> bool {
    name.rsplit_once('.')
        .is_some_and(|(_, ext)| IMAGE_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()))
}

/// The samples of an extract-mode table (the merged parquet or committed
/// fragments, in shard order): one per distinct image file name, with its
/// first row's size, as SimpleTuner's `parquet_database.loc[name]` picks it.
pub fn from_parquets(paths: &[PathBuf]) -> Result<Stats, PageError> {
    let mut stats = Stats {
        source: "the parquet table (the width and height the trainer buckets by)".into(),
        ..Stats::default()
    };
    let mut seen: HashSet<u64> = HashSet::new();
    for path in paths {
        for batch in read_table(path)? {
            let batch = batch.map_err(|e| PageError::read(path, e))?;
            add_batch(&mut stats, &mut seen, &batch);
        }
    }
    Ok(stats)
}

/// The four base columns of `path`, batch by batch.
fn read_table(
    path: &Path,
) -> Result<parquet::arrow::arrow_reader::ParquetRecordBatchReader, PageError> {
    let file = File::open(path).map_err(|e| PageError::read(path, e))?;
    let b = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| PageError::read(path, e))?;
    let wanted: Vec<usize> = ["width", "height", "caption", "filename"]
        .iter()
        .filter_map(|n| b.schema().index_of(n).ok())
        .collect();
    let mask = ProjectionMask::roots(b.parquet_schema(), wanted);
    b.with_projection(mask)
        .with_batch_size(8192)
        .build()
        .map_err(|e| PageError::read(path, e))
}

fn add_batch(stats: &mut Stats, seen: &mut HashSet<u64>, batch: &RecordBatch) {
    let int = |name: &str| {
        batch
            .column_by_name(name)
            .and_then(|c| c.as_primitive_opt::<Int64Type>().cloned())
    };
    let text = |name: &str| {
        batch
            .column_by_name(name)
            .and_then(|c| c.as_string_opt::<i32>().cloned())
    };
    let (width, height, caption, filename) = (
        int("width"),
        int("height"),
        text("caption"),
        text("filename"),
    );
    for i in 0..batch.num_rows() {
        let name = filename
            .as_ref()
            .filter(|c| c.is_valid(i))
            .map_or("", |c| c.value(i));
        if !is_image(name) {
            stats.not_images += 1;
            continue;
        }
        if !seen.insert(shardprep_core::layout::fnv1a64(name.as_bytes())) {
            stats.duplicate_rows += 1;
            continue;
        }
        let get = |c: &Option<arrow_array::Int64Array>| {
            c.as_ref()
                .filter(|c| c.is_valid(i))
                .map(|c| c.value(i).max(0) as u64)
        };
        let size = get(&width).zip(get(&height));
        let cap = caption
            .as_ref()
            .filter(|c| c.is_valid(i))
            .map(|c| c.value(i));
        stats.add(size, cap);
    }
}

/// The samples of index-mode shards: every image entry of each index, its
/// size from the image header, its caption from the entry's `captions`.
pub fn from_indexes(paths: &[PathBuf]) -> Result<Stats, PageError> {
    let mut stats = Stats::of_indexes();
    for path in paths {
        crate::index_file::read(path, &mut |name, e| stats.add_index_entry(name, e))
            .map_err(|e| PageError::read(path, e))?;
    }
    Ok(stats)
}

impl Stats {
    /// No samples yet, to be counted from webshart indexes.
    pub(crate) fn of_indexes() -> Stats {
        Stats {
            source: "the webshart indexes (each image's header size, which the trainer buckets by)"
                .into(),
            ..Stats::default()
        }
    }

    /// Counts one entry of a webshart index (images only: those are the samples).
    pub(crate) fn add_index_entry(&mut self, name: &str, e: &crate::index_file::IndexEntry<'_>) {
        if !is_image(name) {
            return;
        }
        let caption = e.captions.as_deref();
        if caption.is_none_or(str::is_empty) {
            self.caption_missing += 1;
        }
        self.add(e.width.zip(e.height), caption);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_estimate_counts_pieces_and_the_two_special_tokens() {
        assert_eq!(estimate_clip_tokens(""), 2);
        assert_eq!(estimate_clip_tokens("a red cat."), 6);
        assert_eq!(estimate_clip_tokens("photo 1920"), 7);
        assert_eq!(estimate_clip_tokens("antidisestablishment"), 2 + 4);
    }

    #[test]
    fn image_names_are_those_simpletuner_lists() {
        assert!(is_image("a/b.JPG"));
        assert!(is_image("x.webp"));
        assert!(!is_image("x.json"));
        assert!(!is_image("noext"));
    }
}

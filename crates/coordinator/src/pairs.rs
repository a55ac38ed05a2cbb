//! Rows paired with another shard's files.
//!
//! A worker pairs each row with its image, and writes its caption file,
//! within its own shard. `tar xf` of all the shards pairs across them: a
//! later shard's file replaces an earlier one's of the same name, and a
//! JSON can name an image only another shard holds. So when the file lists
//! show a name written twice, or a shard has a JSON without its image, the
//! job's end finds the rows whose image another shard wrote last, checks
//! each such image in `data/` as the workers would (the binary supplies the
//! check, [`PairCheck`]), and makes every caption file several shards wrote
//! hold the caption of the last row naming it, as the seed's
//! `extract-captions.py` leaves it. The caption files it writes are listed
//! in `OUT/.shardprep/paired.files`, which the judge reads after the
//! shards' lists. Nothing is read when no name repeats.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Array, Int64Array, RecordBatch, StringArray};
use shardprep_core::durability::{bytes_crc, files_list_header, files_list_record, listed_path};
use shardprep_core::layout::{OutputLayout, stem};
use shardprep_core::manifest::MemberIssue;
use shardprep_core::table::JSON_KEY_COLUMN;

use crate::CoordinatorError;
use crate::merge::{json_keys, read_columns, without_replaced};
use crate::written::{ListsRead, ShadowedJson, ShardWrote, paths_of};

/// The image checks of one row against the image its JSON names in
/// `data/`, as the workers make them (supplied by the binary, which has
/// the workers' checks; `verify --deep` runs the same).
pub trait PairCheck: Send + Sync {
    /// The checks of the row `data/<json>` makes, against its image in
    /// `data`; `None` when that JSON makes no row or its image is not there.
    fn check(&self, data: &Path, json: &str) -> Option<PairVerdict>;
}

/// What [`PairCheck`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairVerdict {
    /// Each problem: its kind (as reports name it) and what exactly.
    pub problems: Vec<(String, String)>,
    /// The row's width and height as the job's `--dims` takes them.
    pub dims: (i64, i64),
}

/// The job's [`PairCheck`] (a wrapper, so that the config stays `Debug`).
#[derive(Clone)]
pub struct PairChecker(pub Arc<dyn PairCheck>);

impl std::fmt::Debug for PairChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PairChecker")
    }
}

/// A row whose image another shard wrote last.
struct Foreign {
    row: u64,
    shard: usize,
    key: Option<u64>,
    image: String,
    dims: (i64, i64),
}

/// What the scan of the fragments found.
#[derive(Default)]
struct Found {
    foreign: Vec<Foreign>,
    /// Caption path → the caption of the last row naming it, for the paths
    /// written more than once.
    captions: BTreeMap<String, String>,
}

/// What the job's end did for rows paired across shards.
#[derive(Debug, Default)]
pub struct Paired {
    /// Rows whose image another shard wrote last (checked again).
    pub rows: u64,
    /// The first few of their images.
    pub rows_listed: Vec<String>,
    /// Image problems found, with the name of the row's shard.
    pub issues: Vec<(String, MemberIssue)>,
    /// Table rows given the image's size (`--dims image`).
    pub dims: BTreeMap<u64, (i64, i64)>,
    /// Caption files written again (count; the first few).
    pub captions_rewritten: u64,
    pub captions_rewritten_listed: Vec<String>,
    /// Whether `paired.files` changed (the lists must be read again).
    pub list_changed: bool,
    /// Caption files that could not be written.
    pub problems: Vec<String>,
}

/// Whether a job can have rows paired across shards: its `lists` show a
/// name written more than once, or some shard has a JSON without its image.
pub(crate) fn may_pair(lists: &ListsRead, json_without_image: bool) -> bool {
    json_without_image || lists.any_contested()
}

/// Finds the rows paired across shards, checks their images with `check`
/// and rewrites the caption files several shards wrote (when `textfile`).
pub(crate) fn pair(
    layout: &OutputLayout,
    (fragments, shards, lists): (&[(String, PathBuf)], &[ShardWrote], &ListsRead),
    textfile: bool,
    check: Option<&PairChecker>,
) -> Result<Paired, CoordinatorError> {
    let index: BTreeMap<&str, usize> = shards
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let found = scan(fragments, (&index, lists, lists.shadowed()), textfile)?;
    let listed = found.foreign.iter().take(crate::findings::LISTED);
    let mut paired = Paired {
        rows: found.foreign.len() as u64,
        rows_listed: listed.map(|f| f.image.clone()).collect(),
        ..Paired::default()
    };
    if let Some(check) = check {
        check_images(layout, shards, found.foreign, check, &mut paired);
    }
    write_captions(layout, &found.captions, &mut paired)?;
    Ok(paired)
}

/// Reads the fragments' rows (less those `shadowed` leaves out, numbered
/// as the table numbers them) for the rows whose image another shard wrote
/// last and the caption files written more than once.
fn scan(
    fragments: &[(String, PathBuf)],
    (index, lists, shadowed): (&BTreeMap<&str, usize>, &ListsRead, &ShadowedJson),
    textfile: bool,
) -> Result<Found, CoordinatorError> {
    let mut found = Found::default();
    let mut row = 0u64;
    for (shard, path) in fragments {
        let Some(&si) = index.get(shard.as_str()) else {
            continue;
        };
        let columns = ["width", "height", "caption", "filename", JSON_KEY_COLUMN];
        for batch in read_columns(path, &columns)? {
            let mut batch = batch?;
            if let Some(keys) = shadowed.by_shard.get(shard) {
                batch = without_replaced(batch, keys).map_err(|e| merr(path, e))?;
            }
            scan_batch(&batch, (si, &mut row), (lists, textfile), &mut found);
        }
    }
    Ok(found)
}

/// One batch of [`scan`]; `row` is the table's number of its first row.
fn scan_batch(
    batch: &RecordBatch,
    (shard, row): (usize, &mut u64),
    (lists, textfile): (&ListsRead, bool),
    found: &mut Found,
) {
    let col = |n: &str| batch.column_by_name(n);
    let names = col("filename").and_then(|c| c.as_any().downcast_ref::<StringArray>());
    let captions = col("caption").and_then(|c| c.as_any().downcast_ref::<StringArray>());
    let int = |n: &str| col(n).and_then(|c| c.as_any().downcast_ref::<Int64Array>().cloned());
    let (widths, heights, keys) = (int("width"), int("height"), json_keys(batch));
    let first = *row;
    *row += batch.num_rows() as u64;
    let Some(names) = names else { return };
    for i in (0..names.len()).filter(|&i| names.is_valid(i)) {
        let name = names.value(i);
        if lists
            .last_shard(name.as_bytes())
            .is_some_and(|last| last != shard)
        {
            let dim = |a: &Option<Int64Array>| a.as_ref().map_or(0, |a| a.value(i));
            found.foreign.push(Foreign {
                row: first + i as u64,
                shard,
                key: keys.filter(|k| k.is_valid(i)).map(|k| k.value(i)),
                image: name.to_string(),
                dims: (dim(&widths), dim(&heights)),
            });
        }
        let txt = format!("{}.txt", stem(name));
        if textfile && lists.contested(txt.as_bytes()) {
            let caption = captions.filter(|c| c.is_valid(i)).map(|c| c.value(i));
            found
                .captions
                .insert(txt, caption.unwrap_or_default().to_string());
        }
    }
}

/// Checks the image of each `foreign` row against the row's JSON, found
/// by its path in the row's shard's list.
fn check_images(
    layout: &OutputLayout,
    shards: &[ShardWrote],
    foreign: Vec<Foreign>,
    check: &PairChecker,
    paired: &mut Paired,
) {
    let mut wanted: BTreeMap<usize, foldhash::HashSet<u64>> = BTreeMap::new();
    for f in &foreign {
        if let Some(k) = f.key {
            wanted.entry(f.shard).or_default().insert(k);
        }
    }
    let paths = paths_of(layout, shards, &wanted);
    let data = layout.data_dir();
    for f in foreign {
        let json = match f.key.and_then(|k| paths.get(&k)) {
            Some(p) => p.clone(),
            // A fragment of an older version has no key: the JSON of its stem.
            None => format!("{}.json", stem(&f.image)),
        };
        let Some(verdict) = check.0.check(&data, &json) else {
            continue;
        };
        let from = &shards[f.shard].name;
        for (kind, detail) in verdict.problems {
            let detail = format!(
                "{detail} (the image is another shard's file of that name, which replaced or completes this one's; the row is {from}'s {json})"
            );
            let (member, kind) = (f.image.clone(), kind);
            let issue = MemberIssue {
                member,
                kind,
                detail,
            };
            paired.issues.push((from.clone(), issue));
        }
        if verdict.dims != f.dims {
            paired.dims.insert(f.row, verdict.dims);
        }
    }
}

/// Makes each caption file of `captions` hold its caption (written again
/// only when it does not), and lists them all in `paired.files` (removed
/// when there are none).
fn write_captions(
    layout: &OutputLayout,
    captions: &BTreeMap<String, String>,
    paired: &mut Paired,
) -> Result<(), CoordinatorError> {
    let (data, list_path) = (layout.data_dir(), layout.paired_files_path());
    let mut list = files_list_header();
    for (txt, caption) in captions {
        let Some(rel) = listed_path(txt.as_bytes()) else {
            continue;
        };
        let path = data.join(rel);
        if std::fs::read(&path).ok().as_deref() != Some(caption.as_bytes()) {
            if let Err(e) = crate::commit::write_atomic(&path, caption.as_bytes()) {
                // Not listed: the check finds the file not as the row says.
                paired.problems.push(format!(
                    "data/{txt} should hold the caption of the last row naming it, but it cannot be written ({e}); fix what is at that path and run the job again"
                ));
                continue;
            }
            paired.captions_rewritten += 1;
            if paired.captions_rewritten_listed.len() < crate::findings::LISTED {
                paired.captions_rewritten_listed.push(txt.clone());
            }
        }
        // The file holds exactly the caption now: no need to read it again.
        let crc = Some(bytes_crc(caption.as_bytes()));
        list.extend(files_list_record(
            txt.as_bytes(),
            Some(caption.len() as u64),
            crc,
        ));
    }
    let before = std::fs::read(&list_path).ok();
    let wanted = (!captions.is_empty()).then_some(list);
    if before != wanted {
        paired.list_changed = true;
        match wanted {
            Some(bytes) => crate::commit::write_atomic(&list_path, &bytes)?,
            None => {
                let _ = std::fs::remove_file(&list_path);
            }
        }
    }
    Ok(())
}

fn merr(path: &Path, e: impl std::fmt::Display) -> CoordinatorError {
    CoordinatorError::Merge(format!("{}: {e}", path.display()))
}

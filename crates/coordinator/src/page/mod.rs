//! `OUT/report.html`: one self-contained page (inline CSS and SVG, thumbnails
//! as data URIs, no script, nothing fetched) that shows a finished job — or,
//! served live at `/` of `--metrics-listen`, a running one — the way a user
//! looks before training: verdict, counts, timings, where the output is and
//! the dataloader entry, the trainer's aspect buckets, image sizes, caption
//! lengths, per-shard speed, and each problem with what to do about it.
//!
//! Layout:
//! - [`buckets`]: SimpleTuner 4.10.1's bucket of an image size.
//! - [`stats`]: sizes and captions of the samples, from the parquet or the indexes.
//! - `charts`: the pictures (plotters, SVG backend).
//! - `thumbs`: small thumbnails of problem images.
//! - `html`: the page's sections.
//! - [`live`]: the page of a running job, cached per committed shard.

pub mod buckets;
mod charts;
mod html;
pub mod live;
pub mod stats;
mod thumbs;

use std::path::{Path, PathBuf};

use shardprep_core::index_format::IndexFormat;
use shardprep_core::layout::OutputLayout;

use crate::report::Report;
use buckets::{BucketRule, DEFAULT_ALIGNMENT, ResolutionType};
use stats::Stats;

/// The page's file name beside `report.json`.
pub const PAGE_FILE: &str = "report.html";

/// Errors while building the page.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error(
        "cannot read {path}: {detail}; run `shardprep verify` on the output to see what is damaged"
    )]
    Read { path: String, detail: String },
    #[error("cannot write {path}: {source}; check that the output folder is writable")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot draw the {chart} chart: {detail} (a bug in shardprep; please report it)")]
    Chart { chart: &'static str, detail: String },
}

impl PageError {
    pub(crate) fn read(path: &Path, e: impl std::fmt::Display) -> PageError {
        PageError::Read {
            path: path.display().to_string(),
            detail: e.to_string(),
        }
    }
}

/// Choices the page cannot read from the output.
#[derive(Debug, Clone, Copy)]
pub struct PageOptions {
    /// The model family's bucket alignment in pixels (`--aspect_bucket_alignment`).
    pub alignment: u32,
}

impl Default for PageOptions {
    fn default() -> Self {
        PageOptions {
            alignment: DEFAULT_ALIGNMENT,
        }
    }
}

/// What one rendering of the page shows.
pub(crate) struct Page<'a> {
    pub report: &'a Report,
    /// `multidatabackend.json` as written (the entry to use).
    pub entry: Option<serde_json::Value>,
    pub rule: BucketRule,
    /// The samples (none when nothing committed could be read).
    pub stats: Result<Stats, String>,
    pub thumbs: Vec<thumbs::Thumb>,
    /// A running job: the page refreshes itself and says so.
    pub live: Option<live::LiveState>,
}

/// What a finished job's page reads from `OUT` besides the report: the
/// dataloader entry, the samples' statistics and the problem images. It
/// does not depend on the verdict, so the job's end gathers it while it
/// checks the output ([`gather_files`], then [`write_gathered`]).
pub struct Gathered {
    entry: Option<serde_json::Value>,
    stats: Result<Stats, String>,
    thumbs: Vec<thumbs::Thumb>,
}

/// Gathers what the page of `report`'s job shows from `out`.
pub fn gather_files(out: &Path, report: &Report) -> Gathered {
    gather_files_with(out, report, None)
}

/// [`gather_files`], with the samples' numbers when the caller counted
/// them already (the end of an index job, while it checked the indexes).
pub fn gather_files_with(out: &Path, report: &Report, stats: Option<Stats>) -> Gathered {
    let layout = OutputLayout::new(out.to_path_buf());
    let stats = match stats {
        Some(s) => Ok(s),
        None => read_stats(&layout, report).map_err(|e| e.to_string()),
    };
    Gathered {
        entry: read_entry(&layout),
        stats,
        thumbs: thumbs::of_problems(&layout, report),
    }
}

/// Writes `OUT/report.html` for `report` (atomically: temporary name, rename).
pub fn write_page(out: &Path, report: &Report, opts: PageOptions) -> Result<PathBuf, PageError> {
    write_gathered(out, report, gather_files(out, report), opts)
}

/// Writes `OUT/report.html` for `report` from files gathered before.
pub fn write_gathered(
    out: &Path,
    report: &Report,
    g: Gathered,
    opts: PageOptions,
) -> Result<PathBuf, PageError> {
    let page = Page {
        report,
        rule: rule_of(g.entry.as_ref(), opts),
        entry: g.entry,
        stats: g.stats,
        thumbs: g.thumbs,
        live: None,
    };
    let text = html::render(&page);
    let path = out.join(PAGE_FILE);
    let tmp = shardprep_core::layout::unique_tmp(&path);
    let written = std::fs::write(&tmp, text.as_bytes())
        .and_then(|()| shardprep_core::layout::rename_into_place(&tmp, &path));
    written.map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        PageError::Write {
            path: path.display().to_string(),
            source,
        }
    })?;
    Ok(path)
}

/// Reads `OUT/report.json` and writes the page (`shardprep report OUT`).
pub fn regenerate(out: &Path, opts: PageOptions) -> Result<PathBuf, PageError> {
    let layout = OutputLayout::new(out.to_path_buf());
    let path = layout.report_path();
    let bytes = std::fs::read(&path).map_err(|e| PageError::read(&path, e))?;
    let report: Report = serde_json::from_slice(&bytes).map_err(|e| PageError::read(&path, e))?;
    write_page(out, &report, opts)
}

/// Everything the page of a finished job shows.
fn gather<'a>(
    layout: &OutputLayout,
    report: &'a Report,
    opts: PageOptions,
    live: Option<live::LiveState>,
) -> Page<'a> {
    let entry = read_entry(layout);
    let stats = read_stats(layout, report).map_err(|e| e.to_string());
    Page {
        report,
        rule: rule_of(entry.as_ref(), opts),
        entry,
        stats,
        thumbs: thumbs::of_problems(layout, report),
        live,
    }
}

/// `OUT/multidatabackend.json`, if it reads.
fn read_entry(layout: &OutputLayout) -> Option<serde_json::Value> {
    let bytes = std::fs::read(layout.backend_path()).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The bucket settings of the entry (the seed's where it says nothing).
pub(crate) fn rule_of(entry: Option<&serde_json::Value>, opts: PageOptions) -> BucketRule {
    let e = entry.and_then(|v| v.get(0));
    let num = |k: &str, d: f64| {
        e.and_then(|e| e.get(k))
            .and_then(|v| v.as_f64())
            .unwrap_or(d)
    };
    let rtype = e
        .and_then(|e| e.get("resolution_type"))
        .and_then(|v| v.as_str())
        .and_then(ResolutionType::parse)
        .unwrap_or(ResolutionType::Area);
    let min = match e.and_then(|e| e.get("minimum_image_size")) {
        Some(serde_json::Value::Null) => None,
        Some(v) => v.as_f64(),
        None => Some(0.75),
    };
    BucketRule {
        resolution: num("resolution", 1.0),
        resolution_type: rtype,
        minimum_image_size: min,
        alignment: opts.alignment,
        rounding: 2,
    }
}

/// The samples: the merged parquet, or (no merge: failed shards) the
/// committed fragments; the indexes in index mode.
fn read_stats(layout: &OutputLayout, report: &Report) -> Result<Stats, PageError> {
    let done: Vec<&str> = report
        .shards
        .iter()
        .filter(|s| s.counts.is_some())
        .map(|s| s.name.as_str())
        .collect();
    let webshart =
        matches!(report.written_formats(), Some(Ok(f)) if f.contains(IndexFormat::Webshart));
    if webshart {
        let paths: Vec<PathBuf> = done.iter().filter_map(|n| layout.index_path(n)).collect();
        return stats::from_indexes(&paths);
    }
    match report.parquet.as_deref().map(PathBuf::from) {
        Some(p) if p.is_file() => stats::from_parquets(&[p]),
        _ => {
            let paths: Vec<PathBuf> = done.iter().map(|n| layout.fragment_path(n)).collect();
            let mut s = stats::from_parquets(&paths)?;
            s.source =
                "the committed shards' fragments (no merged table: some shards failed)".into();
            Ok(s)
        }
    }
}

/// A report value that may be a string or a string-serialised enum.
pub(crate) fn as_text<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

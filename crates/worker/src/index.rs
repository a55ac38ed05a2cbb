//! Index mode: the shard walk ([`crate::shard::pass::ShardPass`]) with the
//! webshart index ([`sink::IndexSink`], document in [`doc`]) and the other
//! trainers' indexes ([`formats::FormatsSink`], `--index-format`) as its outputs,
//! over a tar read at chosen offsets ([`crate::window`]): only the headers, the
//! JSON members and the first bytes of each image are read, the rest is
//! seeked over. A remote shard is read the same way, by range requests
//! ([`shardprep_remote::open_ranged`]): the images' bytes are never
//! transferred.
//!
//! The walk is extract mode's: the same members under the same names, the
//! same refusals, duplicates, rows, image checks (header sizes) and errors,
//! so both modes give the trainer the same samples: an image gets an entry
//! with its size and caption exactly when the parquet has a row for it
//! (the others get no entry; the report counts them in `images_left_out`).
//! GNU sparse members get no entry (`sparse_file`): no offset and length
//! can serve their expanded bytes; names that are not UTF-8 neither
//! (`name_not_utf8`).

pub mod doc;
pub(crate) mod formats;
pub(crate) mod sink;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use shardprep_core::fields::FieldMap;
use shardprep_core::layout::OutputLayout;
use shardprep_core::manifest::{MemberIssue, ShardCounts};

use crate::shard::attempt::Attempt;
use crate::shard::input::ShardSource;
use crate::shard::pass::ShardPass;
use crate::shard::{LiveProgress, ShardError, ShardOutput, ShardTask, limits, walk};
use crate::tar_reader::{Limits, TarReader};
use crate::window::{Cursor, Window};
use formats::FormatsSink;
use shardprep_core::index_format::{IndexFormat, IndexFormats};
use shardprep_core::mode::JobOutput;
use sink::IndexSink;

pub use shardprep_core::layout::INDEX_DIR;

/// Counts only index mode has (beside the [`ShardCounts`] of the manifest).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexStats {
    /// Entries in the index (members that are regular files with a safe UTF-8 name).
    pub entries: u64,
    /// Images whose header gave their width and height.
    pub images_with_dimensions: u64,
    /// Images whose header could not be read (no `width`/`height` in their entry).
    pub images_without_dimensions: u64,
    /// Images whose header disagrees with the width/height of their JSON.
    pub dimension_mismatches: u64,
    /// Images whose entry carries `captions` (from the JSON of the same key).
    pub images_with_caption: u64,
    /// Size of the index document in bytes.
    pub index_bytes: u64,
}

/// One indexed file, before anything is written under the output.
#[derive(Debug, Clone)]
pub struct IndexedShard {
    /// The webshart index document (byte-identical for the same tar).
    pub index: Vec<u8>,
    pub counts: ShardCounts,
    pub issues: Vec<MemberIssue>,
    pub issues_not_listed: u64,
    pub stats: IndexStats,
}

/// `<shard name without .tar>.json`: where webshart looks for a shard's
/// index relative to its metadata folder. `None` for a name that would
/// leave the folder.
pub fn index_rel_path(shard_name: &str) -> Option<PathBuf> {
    shardprep_core::layout::index_rel_path(shard_name)
}

/// `OUT/index/<shard name without .tar>.json`.
pub fn index_path(layout: &OutputLayout, shard_name: &str) -> Option<PathBuf> {
    layout.index_path(shard_name)
}

/// Moves a verified shard's index from `.shardprep/tmp/` to its place under
/// `OUT/index/` (synced, then renamed, then the folder synced). Returns the path.
pub fn publish_index(
    layout: &OutputLayout,
    shard_name: &str,
    index_tmp: &str,
) -> io::Result<PathBuf> {
    let dest = index_path(layout, shard_name).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("shard name {shard_name:?} cannot name an index file under {INDEX_DIR}/"),
        )
    })?;
    let parent = dest.parent().unwrap_or(layout.root());
    std::fs::create_dir_all(parent)?;
    shardprep_core::layout::rename_into_place(layout.tmp_dir().join(index_tmp), &dest)?;
    File::open(parent)?.sync_all()?;
    Ok(dest)
}

/// Indexes one leased shard: writes the index, the fragment and the
/// manifest under temporary names in `.shardprep/tmp/`. `remote`: the
/// shard's URL and the runtime that does its range requests. `cancel`
/// stops it between members.
pub fn index_shard(
    task: &ShardTask,
    remote: Option<(String, tokio::runtime::Handle)>,
    cancel: &AtomicBool,
    live: &LiveProgress,
) -> Result<ShardOutput, ShardError> {
    let started = Instant::now();
    let win = match remote {
        None => open_local(&task.shard_path, &task.shard_name)?,
        Some((url, handle)) => open_remote(task, &url, handle)?,
    };
    index_window(task, win, limits(task), (cancel, live), started).map(|(out, _)| out)
}

/// Indexes the tar at `path` (named `shard_name` in errors and in the
/// index's `path`) as [`index_shard`] does, with `fields` and `limits`,
/// writing its parquet rows to `fragment_path`; returns the index instead
/// of leaving it in `tmp/` (for tools and tests).
pub fn index_file(
    path: &Path,
    shard_name: &str,
    fields: &FieldMap,
    limits: Limits,
    fragment_path: &Path,
    cancel: &AtomicBool,
    live: &LiveProgress,
) -> Result<IndexedShard, ShardError> {
    let started = Instant::now();
    let scratch = fragment_path.with_extension("attempt");
    let task = ShardTask {
        fields: fields.clone(),
        outputs: JobOutput::index(IndexFormats::default()),
        max_sparse_size: limits.max_sparse_size,
        ..ShardTask::new(
            path.to_path_buf(),
            shard_name,
            OutputLayout::new(scratch.clone()),
        )
    };
    let win = open_local(path, shard_name)?;
    let done = index_window(&task, win, limits, (cancel, live), started);
    let moved = match &done {
        Ok((out, _)) => shardprep_core::layout::rename_into_place(
            task.layout.tmp_dir().join(&out.fragment_tmp),
            fragment_path,
        ),
        Err(_) => Ok(()),
    };
    let _ = std::fs::remove_dir_all(&scratch);
    let (out, (webshart, _)) = done?;
    let (index, stats) = webshart.unwrap_or_default();
    if let Err(e) = moved {
        return Err(ShardSource::new(shard_name).write_error(fragment_path, e));
    }
    let m = out.manifest;
    Ok(IndexedShard {
        index,
        counts: m.counts,
        issues: m.issues,
        issues_not_listed: m.issues_not_listed,
        stats,
    })
}

/// What [`index_window`] hands back beside the attempt: webshart's index
/// and counts, when it was asked for.
type IndexDone = (Option<(Vec<u8>, IndexStats)>, Option<()>);

/// The walk of `task`'s shard read through `win`, with the indexes the
/// task asks for as its outputs.
fn index_window(
    task: &ShardTask,
    mut win: Window,
    limits: Limits,
    (cancel, live): (&AtomicBool, &LiveProgress),
    started: Instant,
) -> Result<(ShardOutput, IndexDone), ShardError> {
    let source = ShardSource::new(&task.shard_name);
    let head = win.bytes_at(0).map_err(|e| ShardError::Read {
        shard: task.shard_name.clone(),
        what: e.to_string(),
        offset: 0,
    })?;
    source.check_head(&head[..head.len().min(2)])?;
    let default = IndexFormats::default();
    let formats = task.outputs.index_formats().unwrap_or(&default);
    let webshart = formats
        .contains(IndexFormat::Webshart)
        .then(|| IndexSink::new(&task.shard_name, win.file_len()));
    let others = match formats.has_other_than_webshart() {
        false => None,
        true if win.is_remote() => return Err(source.formats_need_local(formats)),
        true => Some(FormatsSink::new(
            formats.clone(),
            &task.shard_name,
            &task.shard_path,
            win.file_len(),
        )?),
    };
    let sink = (webshart, others);
    let attempt = Attempt::create(task, &source)?;
    let pass = ShardPass::open(task, &source, (cancel, live), attempt, sink)?;
    let archive = TarReader::seeking(Cursor::new(win), limits);
    walk(pass, archive, &source, started)
}

/// Opens a local shard.
fn open_local(path: &Path, shard_name: &str) -> Result<Window, ShardError> {
    let open_err = |source: io::Error| ShardError::Open {
        shard: shard_name.to_string(),
        path: path.display().to_string(),
        source,
    };
    let file = File::open(path).map_err(open_err)?;
    let filesize = file.metadata().map_err(open_err)?.len();
    Ok(Window::new(file, filesize))
}

/// Opens a remote shard for range requests; its size must be the one the
/// job listed (else the object changed since: a re-run lists it again).
fn open_remote(
    task: &ShardTask,
    url: &str,
    handle: tokio::runtime::Handle,
) -> Result<Window, ShardError> {
    let remote_err = |source| ShardError::Remote {
        shard: task.shard_name.clone(),
        url: shardprep_remote::redact(url),
        source: Box::new(source),
    };
    let options = shardprep_remote::ReadOptions::default();
    let obj = shardprep_remote::open_ranged(url, handle, &options).map_err(remote_err)?;
    if obj.size() != task.identity.size {
        return Err(remote_err(shardprep_remote::RemoteError::Changed {
            url: obj.url().to_string(),
            detail: format!(
                "{} bytes now, {} when the job listed it; run the job again to list it anew",
                obj.size(),
                task.identity.size
            ),
        }));
    }
    Ok(Window::remote(obj))
}

//! One streaming pass over one tar shard: extract members into `data/`,
//! write caption files, build the parquet fragment and the manifest.
//!
//! Runs on a blocking thread. Memory is bounded: member data is streamed
//! through one buffer, JSON members are read whole only up to a cap, rows go
//! to the fragment in batches, and per-member bookkeeping is one 64-bit hash.
//!
//! Layout:
//! - this file: the task, its outcome and errors, and the loop over members;
//! - [`input`]: the tar stream (byte counts, input failures, first checks);
//! - [`member`]: one member (path, kind, offset) and the errors naming it;
//! - [`pass`]: [`pass::ShardPass`], the walk: the pass's state and the
//!   rules every output shares, one method per step (`member`,
//!   `json_member`, `file_member`, `finish`);
//! - [`output`]: what the walk hands an output ([`output::Output`]), and
//!   the walk's input;
//! - [`data_files`]: extract mode's output, the members and captions
//!   written into `data/` (index mode's are in `crate::index`);
//! - [`attempt`]: the attempt's temporary files and its manifest;
//! - [`captions`]: caption files for images no row captions, caption warnings;
//! - [`tally`]: the counts and the issues listed by name.

pub(crate) mod attempt;
mod captions;
mod checks;
mod data_files;
pub(crate) mod input;
mod json_rows;
pub(crate) mod member;
pub(crate) mod output;
pub(crate) mod pass;
pub(crate) mod tally;

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use shardprep_core::durability::DataSync;
use shardprep_core::fields::FieldMap;
use shardprep_core::layout::OutputLayout;
use shardprep_core::manifest::{ShardIdentity, ShardManifest, ShardProgress};
use shardprep_core::mode::JobOutput;
use shardprep_core::proto::FailureKind;
use shardprep_remote::RemoteError;

use crate::extract::writeback::Writeback;
use crate::fragment::FragmentError;
use crate::integrity::IntegrityConfig;
use crate::tar_reader::{Limits, TarReader};
use attempt::Attempt;
use data_files::DataFiles;
use input::ShardSource;
pub(crate) use member::unknown_type_warning;
use output::{Output, WalkInput};
use pass::ShardPass;

/// JSON members larger than this are extracted but not parsed.
pub const MAX_JSON_BYTES: u64 = 16 << 20;

/// Everything needed to process one leased shard.
#[derive(Debug, Clone)]
pub struct ShardTask {
    /// The tar file to read.
    pub shard_path: PathBuf,
    /// The shard's name in the job (relative to the input root).
    pub shard_name: String,
    pub identity: ShardIdentity,
    pub layout: OutputLayout,
    pub fields: FieldMap,
    /// What the pass writes: `data/` files and captions, or indexes.
    pub outputs: JobOutput,
    pub lease_id: u64,
    pub attempt: u32,
    pub worker_id: String,
    /// The shards live in `data/` itself (the Hugging Face layout): top-level
    /// `*.tar` members are not extracted, so no shard is ever overwritten.
    pub shards_in_data_dir: bool,
    /// When `data/` is flushed to disk (see `shardprep_core::durability`).
    pub data_sync: DataSync,
    /// The worker's background writeback of `data/`, shared by its shards.
    pub writeback: Writeback,
    /// Threads creating small files while the tar is read (`0`: the reading
    /// thread writes each file itself); see [`crate::writers`].
    pub write_threads: usize,
    /// The checks of the images themselves (see [`crate::integrity`]).
    pub integrity: IntegrityConfig,
    /// Closes when the lease ends: no file is published after that (see
    /// [`crate::fence`]). The default stays open.
    pub fence: crate::fence::Fence,
    /// Sparse members expanding past this many bytes are refused
    /// (`--max-sparse-size`).
    pub max_sparse_size: u64,
}

impl ShardTask {
    /// A task for the tar at `shard_path`, named `shard_name`, writing into
    /// `layout`, with every other setting at the CLI's default: DALLE-3
    /// fields, captions and extraction on, lease 1 attempt 1, no flush, the
    /// reading thread writes, default image checks, an open fence.
    pub fn new(shard_path: PathBuf, shard_name: &str, layout: OutputLayout) -> Self {
        ShardTask {
            shard_path,
            shard_name: shard_name.to_string(),
            identity: ShardIdentity::default(),
            layout,
            fields: FieldMap::dalle3(),
            outputs: JobOutput::default(),
            lease_id: 1,
            attempt: 1,
            worker_id: "worker".into(),
            shards_in_data_dir: false,
            data_sync: DataSync::None,
            writeback: Writeback::default(),
            write_threads: 0,
            integrity: IntegrityConfig::default(),
            fence: crate::fence::Fence::default(),
            max_sparse_size: crate::tar_reader::DEFAULT_MAX_SPARSE_SIZE,
        }
    }
}

/// Live counters a heartbeat reports while the shard runs.
#[derive(Debug, Default)]
pub struct LiveProgress {
    pub members: AtomicU64,
    pub bytes_read: AtomicU64,
    pub json_files: AtomicU64,
    pub rows: AtomicU64,
}

impl LiveProgress {
    /// The counts as they are now.
    pub fn snapshot(&self) -> ShardProgress {
        ShardProgress {
            members: self.members.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            json_files: self.json_files.load(Ordering::Relaxed),
            rows: self.rows.load(Ordering::Relaxed),
        }
    }
}

/// A processed shard: its fragment and manifest, written under temporary names.
#[derive(Debug, Clone)]
pub struct ShardOutput {
    /// Fragment file name in `.shardprep/tmp/`.
    pub fragment_tmp: String,
    /// Manifest file name in `.shardprep/tmp/`.
    pub manifest_tmp: String,
    pub manifest: ShardManifest,
}

/// Why a shard could not be processed.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("shard {shard}: cannot open {path}: {source}")]
    Open {
        shard: String,
        path: String,
        source: io::Error,
    },
    #[error("shard {shard}: cannot open {url}: {source}")]
    Remote {
        shard: String,
        /// The URL with credentials redacted.
        url: String,
        /// Boxed: the error is large, and rare.
        source: Box<RemoteError>,
    },
    #[error("shard {shard}: {what} (at byte offset {offset}{})", member.as_ref().map(|m| format!(", member {m:?}")).unwrap_or_default())]
    Corrupt {
        shard: String,
        what: String,
        offset: u64,
        member: Option<String>,
    },
    #[error(
        "shard {shard}: cannot write {path}: {source}; check free space and permissions of the output directory"
    )]
    Write {
        shard: String,
        path: String,
        source: io::Error,
    },
    #[error("shard {shard}: {source}")]
    Fragment {
        shard: String,
        source: FragmentError,
    },
    #[error(
        "shard {shard}: cannot read the input: {what} (at byte offset {offset}); another attempt will retry"
    )]
    Read {
        shard: String,
        what: String,
        offset: u64,
    },
    #[error("shard {shard}: cannot write its --index-format pieces: {source}")]
    Formats {
        shard: String,
        source: shardprep_formats::FormatsError,
    },
    #[error("shard {0}: cancelled (lease lost or shutting down)")]
    Cancelled(String),
    #[error(
        "shard {shard}: the processing thread panicked: {message}; this is a bug in shardprep, please report it with the shard"
    )]
    Panicked { shard: String, message: String },
}

impl ShardError {
    /// How the coordinator should treat this failure: a corrupt tar stays
    /// corrupt, anything else may succeed on another attempt.
    pub fn failure_kind(&self) -> FailureKind {
        if matches!(self, ShardError::Corrupt { .. }) {
            FailureKind::Permanent
        } else {
            FailureKind::Retryable
        }
    }
}

/// Processes one local shard file from start to end. `cancel` stops it
/// between members (and between chunks of a large member).
pub fn process_shard(
    task: &ShardTask,
    cancel: &AtomicBool,
    live: &LiveProgress,
) -> Result<ShardOutput, ShardError> {
    let file = File::open(&task.shard_path).map_err(|source| ShardError::Open {
        shard: task.shard_name.clone(),
        path: task.shard_path.display().to_string(),
        source,
    })?;
    process_stream(task, file, cancel, live)
}

/// Processes one shard read from `input` (a local file or a remote stream).
pub fn process_stream(
    task: &ShardTask,
    input: impl Read,
    cancel: &AtomicBool,
    live: &LiveProgress,
) -> Result<ShardOutput, ShardError> {
    let started = Instant::now();
    let source = ShardSource::new(&task.shard_name);
    let reader = source.reader(input, &live.bytes_read)?;
    let attempt = Attempt::create(task, &source)?;
    let files = DataFiles::open(task, &attempt, &source)?;
    let pass = ShardPass::open(task, &source, (cancel, live), attempt, files)?;
    let archive = TarReader::with_limits(reader, limits(task));
    walk(pass, archive, &source, started).map(|(out, ())| out)
}

/// The tar reader's limits for `task`.
pub(crate) fn limits(task: &ShardTask) -> Limits {
    Limits {
        max_sparse_size: task.max_sparse_size,
        ..Limits::default()
    }
}

/// Feeds every member of `archive` to `pass`, then ends it.
pub(crate) fn walk<R: WalkInput, O: Output>(
    mut pass: ShardPass<'_, O>,
    mut archive: TarReader<R>,
    source: &ShardSource,
    started: Instant,
) -> Result<(ShardOutput, O::Done), ShardError> {
    loop {
        if pass.cancelled() {
            return Err(source.cancelled());
        }
        let Some(mut entry) = archive.next_entry().map_err(|e| source.tar_error(e))? else {
            break;
        };
        pass.member(&mut entry)?;
        if let Some(n) = archive.get_mut().bytes_read() {
            pass.live().bytes_read.store(n, Ordering::Relaxed);
        }
    }
    if let Some(n) = archive.get_mut().bytes_read() {
        pass.live().bytes_read.store(n, Ordering::Relaxed);
    }
    pass.finish(started)
}

/// Writes a small file and syncs it.
pub fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

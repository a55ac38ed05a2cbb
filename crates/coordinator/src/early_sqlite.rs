//! Energon's `index.sqlite` built while the shards commit (`--index-format`
//! with energon): each committed shard's rows are added on a thread of
//! their own as its commit lands, so that the job's end mostly writes the
//! key index (`shardprep_formats::energon_sqlite::SqliteBuild`). Rows go in under
//! each shard's place in the job's list; the end takes the build only when
//! that is the final dataset (every shard done and not empty, no key twice)
//! and otherwise rebuilds from the pieces in dataset order.

use std::sync::Mutex;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::thread::JoinHandle;

use shardprep_core::layout::{OutputLayout, unique_tmp};
use shardprep_formats::energon_sqlite::SqliteBuild;
use shardprep_formats::shard::ShardPiece;
use shardprep_formats::{EarlyEnergon, EarlyShard, FormatsError, paths};

use crate::lock;

/// The build and the thread that feeds it.
pub(crate) struct EarlySqlite {
    /// Shards committed: `(place in the job's list, name)`.
    tx: Mutex<Option<SyncSender<(u64, String)>>>,
    thread: Mutex<Option<JoinHandle<Option<EarlyEnergon>>>>,
}

impl EarlySqlite {
    /// Starts a build in `OUT/.shardprep/tmp/` (swept at a job's start) for
    /// a job of `shards` shards; `None` when it cannot start (the end then
    /// builds from the pieces).
    pub(crate) fn start(layout: &OutputLayout, shards: usize) -> Option<EarlySqlite> {
        let tmp = unique_tmp(&layout.tmp_dir().join("energon-index.sqlite"));
        let build = match SqliteBuild::create(&tmp) {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(error = %e, "energon's index is built at the end instead");
                let _ = std::fs::remove_file(&tmp);
                return None;
            }
        };
        // Each shard is sent once (recovered or committed): never full.
        let (tx, rx) = sync_channel(shards.saturating_mul(2).max(1));
        let layout = layout.clone();
        let thread = std::thread::Builder::new()
            .name("energon-sqlite".into())
            .spawn(move || add_committed(&layout, build, tmp, rx))
            .ok()?;
        Some(EarlySqlite {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Shard `name`, at place `id` of the job's list, has its pieces in
    /// place (committed now or by an earlier run).
    pub(crate) fn committed(&self, id: usize, name: &str) {
        if let Some(tx) = lock(&self.tx).as_ref() {
            // A full or closed channel leaves the shard out: the end rebuilds.
            let _ = tx.try_send((id as u64, name.to_string()));
        }
    }

    /// Waits for the shards sent so far to be added; the build, unless a
    /// shard could not be added (or it was taken already).
    pub(crate) fn finish(&self) -> Option<EarlyEnergon> {
        lock(&self.tx).take();
        let thread = lock(&self.thread).take()?;
        thread.join().ok().flatten()
    }
}

/// Adds each committed shard's energon rows until the channel closes.
fn add_committed(
    layout: &OutputLayout,
    mut build: SqliteBuild,
    tmp: std::path::PathBuf,
    rx: Receiver<(u64, String)>,
) -> Option<EarlyEnergon> {
    let mut shards = Vec::new();
    let mut next = rx.recv().ok();
    while let Some((id, name)) = next {
        let added = add_shard(layout, &mut build, id, &name).and_then(|shard| {
            shards.push(shard);
            next_shard(&rx, &build)
        });
        next = match added {
            Ok(next) => next,
            Err(e) => {
                tracing::debug!(shard = %name, error = %e, "energon's index is built at the end instead");
                drop(build);
                let _ = std::fs::remove_file(&tmp);
                return None;
            }
        };
    }
    Some(EarlyEnergon { build, tmp, shards })
}

/// Adds shard `name`'s rows (read borrowed from its piece) as shard `id`.
fn add_shard(
    layout: &OutputLayout,
    build: &mut SqliteBuild,
    id: u64,
    name: &str,
) -> Result<EarlyShard, FormatsError> {
    ShardPiece::with_energon_rows(&paths::piece(layout, name), |count, rows| {
        build.add(id, rows)?;
        Ok(EarlyShard {
            id,
            rows: (rows.samples.len() + rows.parts.len()) as u64,
            count,
            excluded: rows.excluded.iter().map(|k| k.to_string()).collect(),
            name: name.to_string(),
        })
    })?
}

/// The next committed shard, `None` once the job's end has come. When none
/// waits, the pages written so far are written back first, while the walk
/// goes on (not at the end: it syncs the file anyway).
fn next_shard(
    rx: &Receiver<(u64, String)>,
    build: &SqliteBuild,
) -> Result<Option<(u64, String)>, FormatsError> {
    match rx.try_recv() {
        Ok(more) => Ok(Some(more)),
        Err(TryRecvError::Disconnected) => Ok(None),
        Err(TryRecvError::Empty) => {
            build.write_back()?;
            Ok(rx.recv().ok())
        }
    }
}

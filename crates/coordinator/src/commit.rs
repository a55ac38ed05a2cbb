//! Committing fragments and recovering committed ones after a restart.
//!
//! A worker writes `tmp/<stem>.<lease>.parquet` and its manifest and syncs
//! them; the coordinator, while it holds the scheduler's lock and has checked
//! that the lease is current, renames them to `fragments/<stem>.parquet` and
//! `fragments/<stem>.manifest.json`, manifest last. The manifest's presence is
//! the commit: a fragment exists whole or not at all, and a stale attempt can
//! never commit a second one.
//!
//! In index mode the shard's webshart index (`tmp/<stem>.<lease>.index.json`)
//! is synced and renamed to `OUT/index/<shard>.json` before the manifest: a
//! committed shard has its index, and a shard that failed never gets one.

use std::path::Path;

use shardprep_core::durability;
use shardprep_core::layout::{AttemptFiles, OutputLayout};
use shardprep_core::manifest::{ShardIdentity, ShardManifest};
use shardprep_core::mode::Mode;

use crate::CoordinatorError;

/// Reads the committed manifest of a shard, if it is complete and matches
/// the shard's current identity. A changed input shard is redone.
///
/// A shard committed before its files were flushed (`data_synced: false`),
/// on a boot other than `boot_id` (this machine's now), may have lost files
/// to a power loss: its file list is checked (each file present, with the
/// size it was written with) and the shard is redone if one is not.
pub fn recover(
    layout: &OutputLayout,
    name: &str,
    identity: ShardIdentity,
    boot_id: &str,
) -> Option<ShardManifest> {
    let path = layout.manifest_path(name);
    let bytes = std::fs::read(&path).ok()?;
    let manifest: ShardManifest = match serde_json::from_slice(&bytes) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(shard = name, error = %e, "unreadable manifest; the shard will be redone");
            return None;
        }
    };
    if manifest.shard_name != name {
        return None;
    }
    if manifest.identity != identity {
        tracing::warn!(
            shard = name,
            "the shard changed since it was committed (size or mtime); redoing it"
        );
        forget_outdated(layout, name);
        return None;
    }
    if !layout.fragment_path(name).is_file() {
        tracing::warn!(
            shard = name,
            "the committed fragment is missing; redoing the shard"
        );
        return None;
    }
    if !manifest.data_synced && (manifest.boot_id.is_empty() || manifest.boot_id != boot_id) {
        let damaged = match std::fs::read(layout.files_list_path(name)) {
            Ok(list) => durability::first_damaged_file(&layout.data_dir(), &list, false),
            Err(e) => Some(format!("no file list ({e})")),
        };
        if let Some(damaged) = damaged {
            tracing::warn!(
                shard = name,
                damaged = %damaged,
                "the machine restarted before this shard's files were flushed to disk \
                 and some are missing or short; redoing the shard"
            );
            uncommit(layout, name);
            return None;
        }
        tracing::info!(
            shard = name,
            "files written before a restart checked: all present with their sizes"
        );
    }
    Some(manifest)
}

/// Takes a shard's commit back (its manifest, then its fragment): the job
/// redoes it, and its files in `data/` are written again over the old ones.
pub fn uncommit(layout: &OutputLayout, name: &str) {
    for p in [layout.manifest_path(name), layout.fragment_path(name)] {
        let _ = std::fs::remove_file(p);
    }
    remove_index(layout, name);
}

/// Removes a shard's published index, if any: an index is only ever there
/// for a committed shard.
fn remove_index(layout: &OutputLayout, name: &str) {
    if let Some(p) = layout.index_path(name) {
        let _ = std::fs::remove_file(p);
    }
}

/// Removes what an outdated version of a shard left: the files it extracted
/// (from its file list; a new version may have other names) and its
/// committed fragment, so the output becomes what the new version gives.
pub fn forget_outdated(layout: &OutputLayout, name: &str) {
    let list = layout.files_list_path(name);
    let data = layout.data_dir();
    let mut removed = 0u64;
    if let Ok(bytes) = std::fs::read(&list) {
        for f in durability::parse_files_list(&bytes) {
            // Only plain relative paths below data/ (the worker wrote nothing else).
            let Some(rel) = durability::listed_path(f.rel) else {
                continue;
            };
            if std::fs::remove_file(data.join(rel)).is_ok() {
                removed += 1;
            }
        }
    }
    for p in [list, layout.manifest_path(name), layout.fragment_path(name)] {
        let _ = std::fs::remove_file(p);
    }
    remove_index(layout, name);
    tracing::info!(
        shard = name,
        removed,
        "removed the files of the outdated version of the shard"
    );
}

/// A file name from a worker: a plain name inside `tmp/`, nothing else.
fn tmp_file(layout: &OutputLayout, name: &str) -> Result<std::path::PathBuf, CoordinatorError> {
    if name.is_empty() || name.contains('/') || name.contains("..") || name.contains('\0') {
        return Err(CoordinatorError::BadCommit(format!(
            "{name:?} is not a file name in tmp/"
        )));
    }
    Ok(layout.tmp_dir().join(name))
}

/// Reads and checks the temporary manifest a worker wrote for `lease_id`.
pub fn read_tmp_manifest(
    layout: &OutputLayout,
    manifest_tmp: &str,
    shard_name: &str,
    lease_id: u64,
) -> Result<ShardManifest, CoordinatorError> {
    let path = tmp_file(layout, manifest_tmp)?;
    let bytes = std::fs::read(&path)
        .map_err(|e| CoordinatorError::BadCommit(format!("cannot read {}: {e}", path.display())))?;
    let m: ShardManifest = serde_json::from_slice(&bytes).map_err(|e| {
        CoordinatorError::BadCommit(format!("bad manifest {}: {e}", path.display()))
    })?;
    if m.shard_name != shard_name || m.lease_id != lease_id {
        return Err(CoordinatorError::BadCommit(format!(
            "manifest {} is for shard {:?} lease {}, not {shard_name:?} lease {lease_id}",
            path.display(),
            m.shard_name,
            m.lease_id
        )));
    }
    Ok(m)
}

/// Moves a worker's temporary fragment and manifest of lease `lease_id`
/// into place (file list first, then the fragment, in index mode the
/// index, manifest last). The caller makes the renames durable with
/// [`sync_dir`] on the fragments folder once it no longer holds the
/// scheduler's lock.
pub fn commit(
    layout: &OutputLayout,
    shard_name: &str,
    lease_id: u64,
    (fragment_tmp, manifest_tmp): (&str, &str),
    mode: Mode,
) -> Result<(), CoordinatorError> {
    let frag_src = tmp_file(layout, fragment_tmp)?;
    let man_src = tmp_file(layout, manifest_tmp)?;
    let io = |what: &str, p: &Path, e: std::io::Error| CoordinatorError::Output {
        path: p.display().to_string(),
        what: what.to_string(),
        source: e,
    };
    let frag_dst = layout.fragment_path(shard_name);
    let man_dst = layout.manifest_path(shard_name);
    // The list of files the attempt wrote, named as the worker names it.
    let src = tmp_file(layout, &AttemptFiles::new(shard_name, lease_id).files)?;
    if src.exists() {
        let dst = layout.files_list_path(shard_name);
        std::fs::rename(&src, &dst).map_err(|e| io("commit file list", &dst, e))?;
    }
    std::fs::rename(&frag_src, &frag_dst).map_err(|e| io("commit fragment", &frag_dst, e))?;
    if mode == Mode::Index {
        publish_index(layout, shard_name, lease_id)?;
    }
    std::fs::rename(&man_src, &man_dst).map_err(|e| io("commit manifest", &man_dst, e))?;
    Ok(())
}

/// Syncs the attempt's index and renames it to `OUT/index/<shard>.json`
/// (folders created as needed, the folder synced after the rename).
fn publish_index(
    layout: &OutputLayout,
    shard_name: &str,
    lease_id: u64,
) -> Result<(), CoordinatorError> {
    let src = tmp_file(layout, &AttemptFiles::new(shard_name, lease_id).index)?;
    let dst = layout.index_path(shard_name).ok_or_else(|| {
        CoordinatorError::BadCommit(format!(
            "shard name {shard_name:?} cannot name an index file under index/"
        ))
    })?;
    let io = |what: &str, p: &Path, e: std::io::Error| CoordinatorError::Output {
        path: p.display().to_string(),
        what: what.to_string(),
        source: e,
    };
    let file = std::fs::File::open(&src).map_err(|e| {
        CoordinatorError::BadCommit(format!(
            "the worker wrote no index {} for this index-mode shard: {e}",
            src.display()
        ))
    })?;
    file.sync_all().map_err(|e| io("sync index", &src, e))?;
    let parent = dst.parent().unwrap_or(layout.root());
    std::fs::create_dir_all(parent).map_err(|e| io("create index folder", parent, e))?;
    std::fs::rename(&src, &dst).map_err(|e| io("publish index", &dst, e))?;
    sync_dir(parent);
    Ok(())
}

/// Removes a stale attempt's temporary files of lease `lease_id` (best effort).
pub fn discard(layout: &OutputLayout, lease_id: u64, fragment_tmp: &str, manifest_tmp: &str) {
    let attempt = AttemptFiles::of_fragment(fragment_tmp, lease_id);
    let files_tmp = attempt.as_ref().map(|a| a.files.as_str());
    let index_tmp = attempt.as_ref().map(|a| a.index.as_str());
    for name in [Some(fragment_tmp), Some(manifest_tmp), files_tmp, index_tmp]
        .into_iter()
        .flatten()
    {
        if let Ok(p) = tmp_file(layout, name) {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Makes renames in `dir` durable (best effort: not every filesystem supports it).
pub fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so that
/// readers see the old content or the new, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CoordinatorError> {
    use std::io::Write;
    let err = |what: &str, e: std::io::Error| CoordinatorError::Output {
        path: path.display().to_string(),
        what: what.to_string(),
        source: e,
    };
    let tmp = shardprep_core::layout::unique_tmp(path);
    let written = std::fs::File::create(&tmp)
        .map_err(|e| err("create", e))
        .and_then(|mut f| {
            f.write_all(bytes).map_err(|e| err("write", e))?;
            f.sync_all().map_err(|e| err("sync", e))
        })
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| err("rename", e)));
    if let Err(e) = written {
        // Never leave a half-written file behind (e.g. on a full disk).
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Some(parent) = path.parent() {
        sync_dir(parent);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> (tempfile::TempDir, OutputLayout) {
        let dir = tempfile::tempdir().unwrap();
        let layout = OutputLayout::new(dir.path());
        std::fs::create_dir_all(layout.tmp_dir()).unwrap();
        std::fs::create_dir_all(layout.fragments_dir()).unwrap();
        (dir, layout)
    }

    fn write_attempt(layout: &OutputLayout, a: &AttemptFiles) {
        for name in [&a.fragment, &a.manifest, &a.files, &a.index] {
            std::fs::write(layout.tmp_dir().join(name), name.as_bytes()).unwrap();
        }
    }

    /// `str::replace(".parquet", ".files")` once named the wrong file for such a shard.
    #[test]
    fn a_shard_named_like_a_parquet_discards_its_own_file_list() {
        let (_dir, layout) = layout();
        let a = AttemptFiles::new("a.parquet.tar", 9);
        write_attempt(&layout, &a);
        discard(&layout, 9, &a.fragment, &a.manifest);
        let left: Vec<_> = std::fs::read_dir(layout.tmp_dir()).unwrap().collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    #[test]
    fn a_shard_named_like_a_parquet_commits_its_file_list() {
        let (_dir, layout) = layout();
        let a = AttemptFiles::new("a.parquet.tar", 9);
        write_attempt(&layout, &a);
        commit(
            &layout,
            "a.parquet.tar",
            9,
            (&a.fragment, &a.manifest),
            Mode::Extract,
        )
        .unwrap();
        let list = std::fs::read(layout.files_list_path("a.parquet.tar")).unwrap();
        assert_eq!(list, a.files.as_bytes());
        assert!(layout.manifest_path("a.parquet.tar").is_file());
        assert!(layout.fragment_path("a.parquet.tar").is_file());
    }

    #[test]
    fn index_mode_publishes_the_index_and_a_missing_one_is_no_commit() {
        let (_dir, layout) = layout();
        let name = "sub/s-1.tar";
        let a = AttemptFiles::new(name, 4);
        write_attempt(&layout, &a);
        commit(&layout, name, 4, (&a.fragment, &a.manifest), Mode::Index).unwrap();
        let index = layout.index_path(name).unwrap();
        assert_eq!(std::fs::read(&index).unwrap(), a.index.as_bytes());
        assert!(layout.manifest_path(name).is_file());
        // Taking the commit back takes the index with it.
        uncommit(&layout, name);
        assert!(!index.exists());

        let b = AttemptFiles::new(name, 5);
        write_attempt(&layout, &b);
        std::fs::remove_file(layout.tmp_dir().join(&b.index)).unwrap();
        let err = commit(&layout, name, 5, (&b.fragment, &b.manifest), Mode::Index).unwrap_err();
        assert!(err.to_string().contains("no index"), "{err}");
        assert!(!layout.manifest_path(name).exists());
        assert!(!index.exists());
    }
}

//! The mechanics of a commit, and of taking one back (which commits to keep
//! is [`crate::judge`]'s decision).
//!
//! A worker writes `tmp/<stem>.<lease>.parquet` and its manifest and syncs
//! them. The coordinator [`prepare`]s the attempt without the scheduler's
//! lock (reads the manifest; in index mode syncs the index and seals its
//! size and checksum into the manifest); then, holding the lock and having
//! checked that the lease is current, [`publish`] renames them to
//! `fragments/<stem>.parquet` and `fragments/<stem>.manifest.json`, manifest
//! last; the folders are synced after the lock is released. The manifest's
//! presence is the commit: a fragment exists whole or not at all, and a
//! stale attempt can never commit a second one.
//!
//! In index mode the shard's webshart index (`tmp/<stem>.<lease>.index.json`)
//! is renamed to `OUT/index/<shard>.json` before the manifest, and so are
//! the pieces of the other `--index-format`s
//! ([`shardprep_formats::prepare_shard`]): a committed shard has its
//! indexes, and a shard that failed never gets one.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shardprep_core::durability;
use shardprep_core::index_format::IndexFormat;
use shardprep_core::layout::{AttemptFiles, OutputLayout};
use shardprep_core::manifest::{FileSeal, Seals, ShardManifest};
use shardprep_core::mode::JobOutput;
use shardprep_formats::PreparedPieces;

use crate::CoordinatorError;

/// A shard's commit as it is on disk (`fragments/<stem>.manifest.json`):
/// the worker's manifest, and what the coordinator sealed when it committed:
/// in index mode the index file's size and checksum, and in both modes the
/// fragment, the file list and the other formats' pieces (`files`; absent
/// in commits of older versions, which are judged without them).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Commit {
    #[serde(flatten)]
    pub manifest: ShardManifest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_file: Option<FileSeal>,
    #[serde(default, skip_serializing_if = "Seals::is_empty")]
    pub files: Seals,
}

/// Reads a shard's commit: `Ok(None)` when there is none, `Err(why)` when
/// its manifest cannot be read or is another shard's.
pub fn read_commit(layout: &OutputLayout, name: &str) -> Result<Option<Commit>, String> {
    let path = layout.manifest_path(name);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(format!(
                "its manifest {} cannot be read ({e})",
                path.display()
            ));
        }
    };
    let c: Commit = serde_json::from_slice(&bytes)
        .map_err(|e| format!("its manifest {} is not valid ({e})", path.display()))?;
    if c.manifest.shard_name != name {
        return Err(format!(
            "its manifest {} is shard {:?}'s",
            path.display(),
            c.manifest.shard_name
        ));
    }
    Ok(Some(c))
}

/// Takes a shard's commit back (its manifest, then its fragment): the job
/// redoes it, and its files in `data/` are written again over the old ones.
pub fn uncommit(layout: &OutputLayout, name: &str) {
    for p in [layout.manifest_path(name), layout.fragment_path(name)] {
        let _ = std::fs::remove_file(p);
    }
    remove_index(layout, name);
}

/// Removes a shard's published indexes, if any (webshart's and the other
/// formats' pieces): an index is only ever there for a committed shard.
fn remove_index(layout: &OutputLayout, name: &str) {
    if let Some(p) = layout.index_path(name) {
        let _ = std::fs::remove_file(p);
    }
    shardprep_formats::remove_shard(layout, name);
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
fn read_tmp_manifest(
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

/// A worker's attempt, checked and ready to be published.
#[derive(Debug)]
pub struct Prepared {
    pub shard: String,
    pub lease_id: u64,
    pub manifest: ShardManifest,
    fragment_tmp: PathBuf,
    manifest_tmp: PathBuf,
    files_tmp: PathBuf,
    /// Index mode: the attempt's index and where it is published.
    index: Option<(PathBuf, PathBuf)>,
    /// Index mode: the pieces of energon, DALI and wids.
    pieces: Option<PreparedPieces>,
}

fn io_err(what: &str, p: &Path, e: std::io::Error) -> CoordinatorError {
    CoordinatorError::Output {
        path: p.display().to_string(),
        what: what.to_string(),
        source: e,
    }
}

/// Reads and checks the attempt of `shard_name` under `lease_id`; seals its
/// fragment, file list and pieces (in index mode also syncs its index and
/// seals it, and creates the index's folder) into the manifest, and
/// prepares the other formats' pieces. All the file work of a commit but
/// the renames: the caller runs it without the scheduler's lock.
pub fn prepare(
    layout: &OutputLayout,
    shard_name: &str,
    lease_id: u64,
    (fragment_tmp, manifest_tmp): (&str, &str),
    outputs: &JobOutput,
) -> Result<Prepared, CoordinatorError> {
    let manifest = read_tmp_manifest(layout, manifest_tmp, shard_name, lease_id)?;
    let attempt = AttemptFiles::new(shard_name, lease_id);
    let mut prepared = Prepared {
        shard: shard_name.to_string(),
        lease_id,
        manifest,
        fragment_tmp: tmp_file(layout, fragment_tmp)?,
        manifest_tmp: tmp_file(layout, manifest_tmp)?,
        files_tmp: tmp_file(layout, &attempt.files)?,
        index: None,
        pieces: None,
    };
    if outputs.writes_other_formats() {
        let pieces = shardprep_formats::prepare_shard(layout, shard_name, lease_id)
            .map_err(|e| CoordinatorError::BadCommit(e.to_string()))?;
        prepared.pieces = Some(pieces);
    }
    let mut index_file = None;
    if outputs.writes_index(IndexFormat::Webshart) {
        let src = tmp_file(layout, &attempt.index)?;
        let dst = layout.index_path(shard_name).ok_or_else(|| {
            CoordinatorError::BadCommit(format!(
                "shard name {shard_name:?} cannot name an index file under index/"
            ))
        })?;
        index_file = Some(seal_index(&src)?);
        let parent = dst.parent().unwrap_or(layout.root());
        std::fs::create_dir_all(parent).map_err(|e| io_err("create index folder", parent, e))?;
        prepared.index = Some((src, dst));
    }
    let commit = Commit {
        manifest: prepared.manifest.clone(),
        index_file,
        files: prepared.seals(layout)?,
    };
    let bytes = serde_json::to_vec_pretty(&commit).map_err(|e| CoordinatorError::Encode {
        what: "the shard's manifest",
        detail: e.to_string(),
    })?;
    write_atomic(&prepared.manifest_tmp, &bytes)?;
    Ok(prepared)
}

/// Syncs an attempt's index and returns its size and checksum.
fn seal_index(src: &Path) -> Result<FileSeal, CoordinatorError> {
    let file = std::fs::File::open(src).map_err(|e| {
        CoordinatorError::BadCommit(format!(
            "the worker wrote no index {} for this index-mode shard: {e}",
            src.display()
        ))
    })?;
    file.sync_all().map_err(|e| io_err("sync index", src, e))?;
    FileSeal::of(src).map_err(|e| io_err("read index", src, e))
}

/// Publishes a prepared attempt: renames its file list, fragment, index
/// (index mode) and manifest, manifest last. Runs under the scheduler's
/// lock after the lease was found current; [`Prepared::sync`] makes the
/// renames durable once the lock is released.
pub fn publish(layout: &OutputLayout, p: &Prepared) -> Result<(), CoordinatorError> {
    let name = &p.shard;
    if p.files_tmp.exists() {
        let dst = layout.files_list_path(name);
        shardprep_core::layout::rename_into_place(&p.files_tmp, &dst)
            .map_err(|e| io_err("commit file list", &dst, e))?;
    }
    let frag_dst = layout.fragment_path(name);
    shardprep_core::layout::rename_into_place(&p.fragment_tmp, &frag_dst)
        .map_err(|e| io_err("commit fragment", &frag_dst, e))?;
    if let Some((src, dst)) = &p.index {
        shardprep_core::layout::rename_into_place(src, dst)
            .map_err(|e| io_err("publish index", dst, e))?;
    }
    if let Some(pieces) = &p.pieces {
        pieces
            .publish()
            .map_err(|e| CoordinatorError::BadCommit(e.to_string()))?;
    }
    let man_dst = layout.manifest_path(name);
    shardprep_core::layout::rename_into_place(&p.manifest_tmp, &man_dst)
        .map_err(|e| io_err("commit manifest", &man_dst, e))
}

impl Prepared {
    /// The seals of the attempt's fragment, file list and pieces, by the
    /// paths they are published at.
    fn seals(&self, layout: &OutputLayout) -> Result<Seals, CoordinatorError> {
        let name = &self.shard;
        let mut files = vec![(self.fragment_tmp.clone(), layout.fragment_path(name))];
        if self.files_tmp.exists() {
            files.push((self.files_tmp.clone(), layout.files_list_path(name)));
        }
        if let Some(pieces) = &self.pieces {
            files.extend(
                pieces
                    .files()
                    .map(|(s, d)| (s.to_path_buf(), d.to_path_buf())),
            );
        }
        let mut seals = Seals::default();
        for (src, dst) in files {
            seals
                .seal(layout.root(), &dst, &src)
                .map_err(|e| io_err("seal", &src, e))?;
        }
        Ok(seals)
    }

    /// Makes the published renames durable (the index's folder and the
    /// fragments folder).
    pub fn sync(&self, layout: &OutputLayout) {
        if let Some((_, dst)) = &self.index {
            sync_dir(dst.parent().unwrap_or(layout.root()));
        }
        if let Some(pieces) = &self.pieces {
            pieces.sync();
        }
        sync_dir(&layout.fragments_dir());
    }
}

/// Removes a stale attempt's temporary files of lease `lease_id` (best effort).
pub fn discard(layout: &OutputLayout, lease_id: u64, fragment_tmp: &str, manifest_tmp: &str) {
    let attempt = AttemptFiles::of_fragment(fragment_tmp, lease_id);
    let files_tmp = attempt.as_ref().map(|a| a.files.as_str());
    let index_tmp = attempt.as_ref().map(|a| a.index.as_str());
    if let Some(stem) = fragment_tmp.strip_suffix(&format!(".{lease_id}.parquet")) {
        shardprep_formats::discard_attempt(layout, stem, lease_id);
    }
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
        .and_then(|()| {
            shardprep_core::layout::rename_into_place(&tmp, path).map_err(|e| err("rename", e))
        });
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
    use shardprep_core::mode::Mode;

    fn layout() -> (tempfile::TempDir, OutputLayout) {
        let dir = tempfile::tempdir().unwrap();
        let layout = OutputLayout::new(dir.path());
        std::fs::create_dir_all(layout.tmp_dir()).unwrap();
        std::fs::create_dir_all(layout.fragments_dir()).unwrap();
        (dir, layout)
    }

    fn write_attempt(layout: &OutputLayout, a: &AttemptFiles) {
        for name in [&a.fragment, &a.files, &a.index] {
            std::fs::write(layout.tmp_dir().join(name), name.as_bytes()).unwrap();
        }
    }

    /// A worker's manifest of `shard` under `lease_id`, in `tmp/`.
    fn write_manifest(layout: &OutputLayout, a: &AttemptFiles, shard: &str, lease_id: u64) {
        let m = ShardManifest {
            shard_name: shard.into(),
            identity: Default::default(),
            lease_id,
            attempt: 1,
            worker_id: "w".into(),
            fragment: a.fragment.clone(),
            counts: Default::default(),
            issues: Vec::new(),
            issues_not_listed: 0,
            elapsed_ms: 1,
            data_synced: true,
            boot_id: String::new(),
            image_checks: Default::default(),
            image_issues: Vec::new(),
            image_issues_not_listed: 0,
        };
        let path = layout.tmp_dir().join(&a.manifest);
        std::fs::write(path, serde_json::to_vec(&m).unwrap()).unwrap();
    }

    fn commit(
        layout: &OutputLayout,
        shard: &str,
        lease_id: u64,
        tmp: (&str, &str),
        mode: Mode,
    ) -> Result<(), CoordinatorError> {
        let outputs = match mode {
            Mode::Extract => JobOutput::default(),
            Mode::Index => JobOutput::index(Default::default()),
        };
        let p = prepare(layout, shard, lease_id, tmp, &outputs)?;
        publish(layout, &p)
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
        write_manifest(&layout, &a, "a.parquet.tar", 9);
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
        write_manifest(&layout, &a, name, 4);
        commit(&layout, name, 4, (&a.fragment, &a.manifest), Mode::Index).unwrap();
        let index = layout.index_path(name).unwrap();
        assert_eq!(std::fs::read(&index).unwrap(), a.index.as_bytes());
        // The commit seals the index: its size and checksum are in the manifest.
        let c = read_commit(&layout, name).unwrap().unwrap();
        assert_eq!(c.index_file, Some(FileSeal::of(&index).unwrap()));
        assert_eq!(c.manifest.lease_id, 4);
        // Taking the commit back takes the index with it.
        uncommit(&layout, name);
        assert!(!index.exists());

        let b = AttemptFiles::new(name, 5);
        write_attempt(&layout, &b);
        write_manifest(&layout, &b, name, 5);
        std::fs::remove_file(layout.tmp_dir().join(&b.index)).unwrap();
        let err = commit(&layout, name, 5, (&b.fragment, &b.manifest), Mode::Index).unwrap_err();
        assert!(err.to_string().contains("no index"), "{err}");
        assert!(!layout.manifest_path(name).exists());
        assert!(!index.exists());
    }
    /// A stale attempt of an index job with energon/DALI/wids leaves nothing
    /// in `tmp/` (its pieces and the energon link included), and an attempt
    /// without its piece is no commit: nothing of it is published.
    #[test]
    fn index_formats_pieces_are_discarded_with_a_stale_attempt_and_required_for_a_commit() {
        let (_dir, layout) = layout();
        let name = "sub/s-2.tar";
        let a = AttemptFiles::new(name, 6);
        write_attempt(&layout, &a);
        let pieces = shardprep_formats::paths::AttemptNames::new(name, 6);
        for p in [
            &pieces.piece,
            &pieces.energon_idx,
            &pieces.energon_link,
            &pieces.dali_idx,
        ] {
            std::fs::write(layout.tmp_dir().join(p), b"x").unwrap();
        }
        discard(&layout, 6, &a.fragment, &a.manifest);
        let left: Vec<_> = std::fs::read_dir(layout.tmp_dir()).unwrap().collect();
        assert!(left.is_empty(), "left behind: {left:?}");

        let b = AttemptFiles::new(name, 7);
        write_attempt(&layout, &b);
        write_manifest(&layout, &b, name, 7);
        let outputs = JobOutput::index("webshart,energon".parse().unwrap());
        let err = prepare(&layout, name, 7, (&b.fragment, &b.manifest), &outputs).unwrap_err();
        assert!(err.to_string().contains("no formats piece"), "{err}");
        assert!(!layout.manifest_path(name).exists());
        assert!(layout.index_path(name).is_some_and(|p| !p.exists()));
    }
}

//! Where everything lives under an output directory `OUT/`.
//!
//! ```text
//! OUT/data/                      extracted members and caption .txt files
//! OUT/index/                     one webshart index per shard (`--mode index`)
//! OUT/<dataset-id>.parquet       the merged table
//! OUT/report.json                counts, verdict, failures
//! OUT/multidatabackend.json      the SimpleTuner dataloader entry
//! OUT/.shardprep/fragments/      one committed parquet fragment + manifest per shard
//! OUT/.shardprep/tmp/            fragments being written (renamed into fragments/ on commit)
//! ```

use std::path::{Path, PathBuf};

/// Paths of one output directory.
#[derive(Debug, Clone)]
pub struct OutputLayout {
    root: PathBuf,
}

impl OutputLayout {
    /// Layout rooted at `root` (the seed's `dalle3/` folder).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        OutputLayout { root: root.into() }
    }
    /// The output root.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `OUT/data`: extracted files and captions.
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }
    /// `OUT/index`: the webshart index files (`--mode index`).
    pub fn index_dir(&self) -> PathBuf {
        self.root.join(INDEX_DIR)
    }
    /// `OUT/index/<shard name without .tar>.json`, where webshart looks for a
    /// shard's index; `None` for a name that would leave the folder.
    pub fn index_path(&self, shard_name: &str) -> Option<PathBuf> {
        Some(self.index_dir().join(index_rel_path(shard_name)?))
    }
    /// `OUT/.shardprep`: the job's private state.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join(".shardprep")
    }
    /// Committed fragments and their manifests.
    pub fn fragments_dir(&self) -> PathBuf {
        self.state_dir().join("fragments")
    }
    /// The list of the caption files the job's end wrote into `data/` for
    /// rows paired with another shard's files (same format as a shard's list).
    pub fn paired_files_path(&self) -> PathBuf {
        self.state_dir().join("paired.files")
    }
    /// Fragments being written.
    pub fn tmp_dir(&self) -> PathBuf {
        self.state_dir().join("tmp")
    }
    /// The merged parquet table.
    pub fn parquet_path(&self, dataset_id: &str) -> PathBuf {
        self.root.join(format!("{dataset_id}.parquet"))
    }
    /// `OUT/report.json`.
    pub fn report_path(&self) -> PathBuf {
        self.root.join("report.json")
    }
    /// `OUT/multidatabackend.json`.
    pub fn backend_path(&self) -> PathBuf {
        self.root.join("multidatabackend.json")
    }
    /// Committed fragment of a shard.
    pub fn fragment_path(&self, shard_name: &str) -> PathBuf {
        self.fragments_dir()
            .join(format!("{}.parquet", shard_file_stem(shard_name)))
    }
    /// The list of files (NUL-separated relative paths) a shard's committed attempt wrote into `data/`.
    pub fn files_list_path(&self, shard_name: &str) -> PathBuf {
        self.fragments_dir()
            .join(format!("{}.files", shard_file_stem(shard_name)))
    }
    /// Committed manifest of a shard (its presence is the commit).
    pub fn manifest_path(&self, shard_name: &str) -> PathBuf {
        self.fragments_dir()
            .join(format!("{}.manifest.json", shard_file_stem(shard_name)))
    }
}

/// Folder of the index files under the output root.
pub const INDEX_DIR: &str = "index";

/// `<shard name without .tar>.json`: a shard's index relative to `OUT/index/`
/// (`.` components dropped); `None` for an empty, absolute or `..` name.
pub fn index_rel_path(shard_name: &str) -> Option<PathBuf> {
    use std::path::Component;
    let base = shard_name.strip_suffix(".tar").unwrap_or(shard_name);
    let named = format!("{base}.json");
    if named.contains('\0') {
        return None;
    }
    let mut out = PathBuf::new();
    for comp in Path::new(&named).components() {
        match comp {
            Component::Normal(c) => out.push(c),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// The temporary files of one attempt at a shard, as names inside
/// `OUT/.shardprep/tmp/`: `<stem>.<lease>.parquet`, `.manifest.json`,
/// `.files` (the attempt's list of files written into `data/`) and
/// `.index.json` (its webshart index, in index mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptFiles {
    pub fragment: String,
    pub manifest: String,
    pub files: String,
    pub index: String,
}

impl AttemptFiles {
    /// The names for the attempt of `shard_name` under `lease_id`.
    pub fn new(shard_name: &str, lease_id: u64) -> Self {
        Self::named(&shard_file_stem(shard_name), lease_id)
    }

    /// The names of the attempt whose fragment is `fragment` (a name built
    /// by [`AttemptFiles::new`] for `lease_id`); `None` for any other name.
    /// Only the ending is parsed, so a shard named `a.parquet.tar` is fine.
    pub fn of_fragment(fragment: &str, lease_id: u64) -> Option<Self> {
        let stem = fragment.strip_suffix(&format!(".{lease_id}.parquet"))?;
        (!stem.is_empty()).then(|| Self::named(stem, lease_id))
    }

    fn named(stem: &str, lease_id: u64) -> Self {
        AttemptFiles {
            fragment: format!("{stem}.{lease_id}.parquet"),
            manifest: format!("{stem}.{lease_id}.manifest.json"),
            files: format!("{stem}.{lease_id}.files"),
            index: format!("{stem}.{lease_id}.index.json"),
        }
    }
}

/// A file-name-safe, collision-free stem for a shard name: the name with
/// unusual characters replaced, plus a hash of the exact name.
pub fn shard_file_stem(shard_name: &str) -> String {
    let safe: String = shard_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(80)
        .collect();
    format!("{safe}-{:016x}", fnv1a64(shard_name.as_bytes()))
}

/// Python's `os.path.splitext(name)[0]`: the name without its last extension
/// (a leading dot does not start an extension). The seed names caption files
/// `data/<stem of image_name>.txt`.
pub fn stem(name: &str) -> &str {
    match name.rfind('.') {
        Some(i) if name[..i].chars().any(|c| c != '.') => &name[..i],
        _ => name,
    }
}

/// Peak resident memory of this process (`VmHWM`), in bytes; 0 if unknown.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// FNV-1a, 64 bit: a stable hash for names (not for security).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// A temporary name beside `path` that no other writer uses (this process's
/// pid and a random number), for a write-then-rename of `path`.
pub fn unique_tmp(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(
        ".{}-{:08x}.tmp",
        std::process::id(),
        crate::auth::random_u64() as u32
    ));
    path.with_file_name(name)
}

/// Renames `src` onto `dst`, a file the output owns (state, table, report,
/// indexes; never a member in `data/`). A directory at `dst` can only be
/// damage, since shardprep writes a file there: it is removed first, so that
/// a re-run repairs it instead of failing on `EISDIR` every time.
pub fn rename_into_place(src: impl AsRef<Path>, dst: impl AsRef<Path>) -> std::io::Result<()> {
    use std::io::ErrorKind::{DirectoryNotEmpty, IsADirectory};
    let (src, dst) = (src.as_ref(), dst.as_ref());
    match std::fs::rename(src, dst) {
        Err(e) if matches!(e.kind(), IsADirectory | DirectoryNotEmpty) => {
            std::fs::remove_dir_all(dst).map_err(|r| {
                std::io::Error::new(
                    r.kind(),
                    format!("a directory is in the way ({e}) and cannot be removed: {r}"),
                )
            })?;
            std::fs::rename(src, dst)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_in_the_way_of_an_owned_file_is_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst) = (tmp.path().join("new"), tmp.path().join("report.json"));
        std::fs::write(&src, b"{}").unwrap();
        std::fs::create_dir_all(dst.join("junk")).unwrap();
        rename_into_place(&src, &dst).unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), b"{}");
        // A missing source is still an error, with nothing removed.
        std::fs::remove_file(&dst).unwrap();
        std::fs::create_dir(&dst).unwrap();
        assert!(rename_into_place(&src, &dst).is_err());
        assert!(dst.is_dir());
    }

    #[test]
    fn stems_are_safe_and_distinct() {
        let a = shard_file_stem("data-000000.tar");
        assert!(a.starts_with("data-000000.tar-"));
        let b = shard_file_stem("../evil/x.tar");
        assert!(!b.contains('/'));
        assert_ne!(shard_file_stem("a b.tar"), shard_file_stem("a_b.tar"));
    }

    #[test]
    fn index_paths_stay_inside_the_index_folder() {
        let l = OutputLayout::new("/o");
        assert_eq!(
            l.index_path("a/b-000.tar"),
            Some(PathBuf::from("/o/index/a/b-000.json"))
        );
        assert_eq!(index_rel_path("./x.tar"), Some(PathBuf::from("x.json")));
        assert_eq!(index_rel_path("../x.tar"), None);
        assert_eq!(index_rel_path("/x.tar"), None);
    }

    #[test]
    fn attempt_files_survive_a_shard_named_like_a_parquet() {
        let a = AttemptFiles::new("a.parquet.tar", 7);
        let stem = shard_file_stem("a.parquet.tar");
        assert_eq!(a.fragment, format!("{stem}.7.parquet"));
        assert_eq!(a.manifest, format!("{stem}.7.manifest.json"));
        assert_eq!(a.files, format!("{stem}.7.files"));
        assert_eq!(a.index, format!("{stem}.7.index.json"));
        assert_eq!(AttemptFiles::of_fragment(&a.fragment, 7), Some(a.clone()));
        assert_eq!(AttemptFiles::of_fragment(&a.fragment, 8), None);
        assert_eq!(AttemptFiles::of_fragment(".7.parquet", 7), None);
    }
}

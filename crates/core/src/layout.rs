//! Where everything lives under an output directory `OUT/`.
//!
//! ```text
//! OUT/data/                      extracted members and caption .txt files
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
    /// `OUT/.shardprep`: the job's private state.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join(".shardprep")
    }
    /// Committed fragments and their manifests.
    pub fn fragments_dir(&self) -> PathBuf {
        self.state_dir().join("fragments")
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

/// Names, inside `OUT/.shardprep/tmp/`, of the files one attempt (lease) at
/// a shard writes before its commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptTmpNames {
    /// `<stem>.<lease>.parquet`: the fragment.
    pub fragment: String,
    /// `<stem>.<lease>.manifest.json`: the manifest.
    pub manifest: String,
    /// `<stem>.<lease>.files`: the list of files written into `data/`.
    pub files_list: String,
}

/// The temporary file names of attempt `lease_id` at `shard_name`.
pub fn attempt_tmp_names(shard_name: &str, lease_id: u64) -> AttemptTmpNames {
    let base = format!("{}.{lease_id}", shard_file_stem(shard_name));
    AttemptTmpNames {
        fragment: format!("{base}.parquet"),
        manifest: format!("{base}.manifest.json"),
        files_list: format!("{base}.files"),
    }
}

/// The files list beside the temporary fragment `fragment_tmp` (a name made
/// by [`attempt_tmp_names`]); `None` when it does not end in `.parquet`.
/// Only the last `.parquet` is replaced: a shard name may contain it too.
pub fn files_list_tmp_name(fragment_tmp: &str) -> Option<String> {
    fragment_tmp
        .strip_suffix(".parquet")
        .map(|base| format!("{base}.files"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_are_safe_and_distinct() {
        let a = shard_file_stem("data-000000.tar");
        assert!(a.starts_with("data-000000.tar-"));
        let b = shard_file_stem("../evil/x.tar");
        assert!(!b.contains('/'));
        assert_ne!(shard_file_stem("a b.tar"), shard_file_stem("a_b.tar"));
    }

    #[test]
    fn attempt_names_share_one_base_even_with_parquet_in_the_shard_name() {
        let n = attempt_tmp_names("x.parquet.tar", 7);
        let base = format!("{}.7", shard_file_stem("x.parquet.tar"));
        assert_eq!(n.fragment, format!("{base}.parquet"));
        assert_eq!(n.manifest, format!("{base}.manifest.json"));
        assert_eq!(n.files_list, format!("{base}.files"));
        assert_eq!(files_list_tmp_name(&n.fragment), Some(n.files_list));
        assert_eq!(files_list_tmp_name("x.manifest.json"), None);
    }
}

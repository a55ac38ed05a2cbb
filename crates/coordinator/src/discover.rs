//! Finding the shards of a job: the `*.tar` files directly inside the input
//! directory, in name order, each with its identity (size, mtime).

use std::path::{Path, PathBuf};

use shardprep_core::manifest::ShardIdentity;

use crate::CoordinatorError;

/// One input shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSource {
    /// Name relative to the input directory (what workers are told).
    pub name: String,
    pub path: PathBuf,
    pub identity: ShardIdentity,
}

/// Identity of a file: size and modification time in nanoseconds.
pub fn identity_of(path: &Path) -> std::io::Result<ShardIdentity> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok(ShardIdentity {
        size: m.len(),
        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
    })
}

/// What the input folder holds.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    pub shards: Vec<ShardSource>,
    /// `*.tar` files that cannot be shards (e.g. a name that is not UTF-8), with why.
    pub refused: Vec<String>,
}

/// Lists `*.tar` files in `dir` (not recursive), sorted by name. Only these,
/// present now, are the job's shards: files extracted later into the same
/// folder (the Hugging Face layout puts shards in `data/`) are never shards.
pub fn discover(dir: &Path) -> Result<Discovery, CoordinatorError> {
    let read = std::fs::read_dir(dir).map_err(|source| CoordinatorError::Input {
        path: dir.display().to_string(),
        source,
    })?;
    let mut shards = Vec::new();
    let mut refused = Vec::new();
    for entry in read {
        let entry = entry.map_err(|source| CoordinatorError::Input {
            path: dir.display().to_string(),
            source,
        })?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            if name.as_encoded_bytes().ends_with(b".tar") {
                let msg = format!(
                    "input file {:?} was not processed: its name is not UTF-8; rename it and run again",
                    name
                );
                tracing::error!("{msg}");
                refused.push(msg);
            }
            continue;
        };
        if !name.ends_with(".tar") {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let identity = identity_of(&path).map_err(|source| CoordinatorError::Input {
            path: path.display().to_string(),
            source,
        })?;
        shards.push(ShardSource {
            name: name.to_string(),
            path,
            identity,
        });
    }
    shards.sort_by(|a, b| a.name.cmp(&b.name));
    if shards.is_empty() {
        return Err(CoordinatorError::NoShards {
            path: dir.display().to_string(),
        });
    }
    Ok(Discovery { shards, refused })
}

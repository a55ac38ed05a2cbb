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
    /// For remote inputs: the URL workers stream.
    pub url: Option<String>,
}

/// Where a job's shards come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputSpec {
    /// A local folder of `*.tar` files.
    Local(PathBuf),
    /// `s3://`, `gs://`, `az://`, `http(s)://` (brace notation) or `hf://`.
    Remote(String),
    /// A file listing shard URLs or paths, one per line (`--input-list`).
    List(PathBuf),
}

impl InputSpec {
    /// A local path or a remote location, told apart by its scheme.
    pub fn parse(input: &str) -> Self {
        if shardprep_remote::is_remote(input) {
            InputSpec::Remote(input.to_string())
        } else {
            InputSpec::Local(PathBuf::from(input))
        }
    }

    /// For logs and the report (credentials removed).
    pub fn display(&self) -> String {
        match self {
            InputSpec::Local(p) => std::path::absolute(p)
                .unwrap_or_else(|_| p.clone())
                .display()
                .to_string(),
            InputSpec::Remote(u) => shardprep_remote::redact(u),
            InputSpec::List(p) => format!("list {}", p.display()),
        }
    }
}

/// The identity of a remote shard: its size, and a hash of its ETag or
/// last-modified in the field that holds a local file's mtime.
fn remote_identity(size: u64, version: &str) -> ShardIdentity {
    ShardIdentity {
        size,
        mtime_ns: shardprep_core::layout::fnv1a64(version.as_bytes()) as i64,
    }
}

/// Lists the shards of any input, and the root workers resolve them against.
pub async fn discover_input(input: &InputSpec) -> Result<(String, Discovery), CoordinatorError> {
    let listing = match input {
        InputSpec::Local(dir) => {
            let dir = dir.clone();
            let root = std::path::absolute(&dir)
                .unwrap_or_else(|_| dir.clone())
                .display()
                .to_string();
            let d = tokio::task::spawn_blocking(move || discover(&dir))
                .await
                .map_err(|e| CoordinatorError::TaskFailed {
                    task: "input discovery",
                    detail: e.to_string(),
                })??;
            return Ok((root, d));
        }
        InputSpec::Remote(url) => shardprep_remote::list(url).await,
        InputSpec::List(file) => shardprep_remote::list_file(file).await,
    }
    .map_err(|e| CoordinatorError::Remote(e.to_string()))?;
    let shards = listing
        .shards
        .into_iter()
        .map(|s| ShardSource {
            identity: remote_identity(s.size, &s.version),
            path: PathBuf::from(shardprep_remote::redact(&s.url)),
            url: Some(s.url),
            name: s.name,
        })
        .collect();
    Ok((
        listing.root,
        Discovery {
            shards,
            refused: Vec::new(),
        },
    ))
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
            url: None,
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

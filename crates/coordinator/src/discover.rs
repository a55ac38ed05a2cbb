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
        ..Default::default()
    }
}

/// Lists the shards of any input, and the root workers resolve them against.
/// `recursive`: a local folder's subfolders too (index mode: webshart finds
/// the tars of every subfolder of its `source`).
pub async fn discover_input(
    input: &InputSpec,
    recursive: bool,
) -> Result<(String, Discovery), CoordinatorError> {
    let listing = match input {
        InputSpec::Local(dir) => {
            let dir = dir.clone();
            let root = std::path::absolute(&dir)
                .unwrap_or_else(|_| dir.clone())
                .display()
                .to_string();
            let d = tokio::task::spawn_blocking(move || discover_in(&dir, recursive))
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

/// Identity of a file: size, mtime, inode and ctime (nanoseconds).
pub fn identity_of(path: &Path) -> std::io::Result<ShardIdentity> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok(ShardIdentity {
        size: m.len(),
        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        inode: m.ino(),
        ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
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
    discover_in(dir, false)
}

/// [`discover`], with `recursive` the `*.tar` files of the subfolders too
/// (named `sub/x.tar`; symlinked folders are not followed).
pub fn discover_in(dir: &Path, recursive: bool) -> Result<Discovery, CoordinatorError> {
    let mut found = Discovery::default();
    let mut folders = vec![(dir.to_path_buf(), String::new())];
    while let Some((folder, prefix)) = folders.pop() {
        let err = |source| CoordinatorError::Input {
            path: folder.display().to_string(),
            source,
        };
        for entry in std::fs::read_dir(&folder).map_err(err)? {
            let entry = entry.map_err(err)?;
            if recursive && entry.file_type().is_ok_and(|t| t.is_dir()) {
                if let Some(name) = entry.file_name().to_str() {
                    folders.push((entry.path(), format!("{prefix}{name}/")));
                }
                continue;
            }
            tar_entry(&entry, &prefix, &mut found)?;
        }
    }
    found.shards.sort_by(|a, b| a.name.cmp(&b.name));
    if found.shards.is_empty() {
        return Err(CoordinatorError::NoShards {
            path: dir.display().to_string(),
        });
    }
    Ok(found)
}

/// Adds `entry` (in the folder named `prefix` under the input) if it is a `*.tar` file.
fn tar_entry(
    entry: &std::fs::DirEntry,
    prefix: &str,
    found: &mut Discovery,
) -> Result<(), CoordinatorError> {
    let name = entry.file_name();
    let Some(name) = name.to_str() else {
        if name.as_encoded_bytes().ends_with(b".tar") {
            let msg = format!(
                "input file {:?} was not processed: its name is not UTF-8; rename it and run again",
                entry.path()
            );
            tracing::error!("{msg}");
            found.refused.push(msg);
        }
        return Ok(());
    };
    if !name.ends_with(".tar") {
        return Ok(());
    }
    let path = entry.path();
    if !std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
        return Ok(());
    }
    let identity = identity_of(&path).map_err(|source| CoordinatorError::Input {
        path: path.display().to_string(),
        source,
    })?;
    found.shards.push(ShardSource {
        name: format!("{prefix}{name}"),
        path,
        identity,
        url: None,
    });
    Ok(())
}

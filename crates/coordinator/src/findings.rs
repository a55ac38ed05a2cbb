//! What a check of an output found: the lines checked and the problems.
//! Shared by the judge, `verify` and the index checks.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};

use serde::Serialize;

use crate::page::stats::Stats;

/// What was checked and what is wrong.
#[derive(Debug, Default, Serialize)]
pub struct Findings {
    pub checked: Vec<String>,
    pub problems: Vec<String>,
    /// Files in `data/` that no shard wrote (a trainer's caches, e.g.
    /// SimpleTuner's `aspect_ratio_bucket_*.json`), the first few by name.
    /// Not counted and not a problem.
    pub foreign_files: Vec<String>,
    /// How many such files there are in all.
    pub foreign_files_total: u64,
    /// Committed shards whose output is damaged (files in `data/` missing
    /// or changed, the file list, fragment or index unreadable or changed):
    /// redoing them repairs the output.
    pub damaged_shards: BTreeSet<String>,
    /// Index mode: the samples' sizes and captions as the webshart indexes
    /// give them, counted while the check read them (the page shows them
    /// without reading the indexes again).
    #[serde(skip)]
    pub shape: Option<Stats>,
}

impl Findings {
    /// Adds `other`'s findings to these.
    pub fn merge(&mut self, other: Findings) {
        self.checked.extend(other.checked);
        self.problems.extend(other.problems);
        self.foreign_files.extend(other.foreign_files);
        self.foreign_files_total += other.foreign_files_total;
        self.damaged_shards.extend(other.damaged_shards);
        match (&mut self.shape, other.shape) {
            (Some(mine), Some(theirs)) => mine.merge(&theirs),
            (mine, theirs) => *mine = mine.take().or(theirs),
        }
    }
}

/// Problems listed one by one before they are only counted.
pub const LISTED: usize = 20;

/// Calls `each` with the path, relative to `root`, of every file (not
/// directory) under `root`; unreadable directories are passed over. Names
/// are read straight from the directory (no allocation per file: `data/`
/// holds hundreds of thousands).
pub fn for_each_file(root: &Path, mut each: impl FnMut(&Path)) {
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let Ok(fd) = rustix::fs::open(root.join(&rel), flags, Mode::empty()) else {
            continue;
        };
        let Ok(mut dir) = Dir::read_from(&fd) else {
            continue;
        };
        let mut path = rel.clone();
        while let Some(Ok(e)) = dir.read() {
            let name = OsStr::from_bytes(e.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            let is_dir = match e.file_type() {
                FileType::Directory => true,
                FileType::Unknown => rustix::fs::statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory),
                _ => false,
            };
            path.push(name);
            if is_dir {
                stack.push(path.clone());
            } else {
                each(&path);
            }
            path.pop();
        }
    }
}

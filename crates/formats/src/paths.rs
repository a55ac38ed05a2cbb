//! Where the formats live under `OUT/`:
//!
//! ```text
//! OUT/energon/                     energon's dataset root (point energon here)
//! OUT/energon/.nv-meta/            index.sqlite, .info.json, split.yaml, index.uuid
//! OUT/energon/<shard>              symlink to the input tar (energon opens <root>/<shard>)
//! OUT/energon/<shard stem>.tar.idx sample offsets (energon looks beside the tar it opens)
//! OUT/dali/<shard stem>.idx        DALI's index of each shard with a sample
//! OUT/dali/dali.json               {"paths": [tars], "index_paths": [idx files]} in one order
//! OUT/wids/wids.json               the wids dataset description
//! OUT/.shardprep/fragments/<stem>.formats.json   the committed per-shard piece
//! ```
//! Nothing is written outside `OUT`: energon reaches the tars through the
//! symlinks, DALI and wids through absolute paths.

use std::path::{Component, Path, PathBuf};

use shardprep_core::layout::{OutputLayout, shard_file_stem};

pub const ENERGON_DIR: &str = "energon";
pub const NV_META: &str = ".nv-meta";
pub const DALI_DIR: &str = "dali";
pub const WIDS_DIR: &str = "wids";

/// A shard name as a relative path (`.` dropped); `None` for an empty,
/// absolute or `..` name.
pub fn safe_rel(shard_name: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for comp in Path::new(shard_name).components() {
        match comp {
            Component::Normal(c) => out.push(c),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty() && !shard_name.contains('\0')).then_some(out)
}

pub fn energon_root(layout: &OutputLayout) -> PathBuf {
    layout.root().join(ENERGON_DIR)
}

pub fn nv_meta(layout: &OutputLayout) -> PathBuf {
    energon_root(layout).join(NV_META)
}

/// `OUT/energon/<shard>`: the symlink energon opens.
pub fn energon_tar(layout: &OutputLayout, shard_name: &str) -> Option<PathBuf> {
    Some(energon_root(layout).join(safe_rel(shard_name)?))
}

/// Where energon looks for a tar's offsets: Python's
/// `Path.with_suffix(".tar.idx")` of the tar's path.
pub fn energon_tar_idx(layout: &OutputLayout, shard_name: &str) -> Option<PathBuf> {
    let tar = energon_tar(layout, shard_name)?;
    let file = tar.file_name()?.to_str()?;
    let stem = match file.rfind('.') {
        Some(i) if i > 0 => &file[..i],
        _ => file,
    };
    Some(tar.with_file_name(format!("{stem}.tar.idx")))
}

/// `OUT/dali/<shard without .tar>.idx`.
pub fn dali_idx(layout: &OutputLayout, shard_name: &str) -> Option<PathBuf> {
    let rel = safe_rel(shard_name.strip_suffix(".tar").unwrap_or(shard_name))?;
    let mut name = rel.into_os_string();
    name.push(".idx");
    Some(layout.root().join(DALI_DIR).join(name))
}

pub fn dali_list(layout: &OutputLayout) -> PathBuf {
    layout.root().join(DALI_DIR).join("dali.json")
}

pub fn wids_json(layout: &OutputLayout) -> PathBuf {
    layout.root().join(WIDS_DIR).join("wids.json")
}

/// The committed per-shard piece.
pub fn piece(layout: &OutputLayout, shard_name: &str) -> PathBuf {
    layout
        .fragments_dir()
        .join(format!("{}.formats.json", shard_file_stem(shard_name)))
}

/// An attempt's temporary files in `.shardprep/tmp/`: the piece, energon's
/// `.tar.idx` and DALI's `.idx`.
pub struct AttemptNames {
    pub piece: String,
    pub energon_idx: String,
    /// The symlink to the tar, made in `tmp/` and renamed into `energon/`.
    pub energon_link: String,
    pub dali_idx: String,
}

impl AttemptNames {
    pub fn new(shard_name: &str, lease_id: u64) -> Self {
        Self::from_stem(&shard_file_stem(shard_name), lease_id)
    }

    /// The names for a shard whose file stem is `stem`.
    pub fn from_stem(stem: &str, lease_id: u64) -> Self {
        AttemptNames {
            piece: format!("{stem}.{lease_id}.formats.json"),
            energon_idx: format!("{stem}.{lease_id}.energon.idx"),
            energon_link: format!("{stem}.{lease_id}.energon.tar"),
            dali_idx: format!("{stem}.{lease_id}.dali.idx"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn energon_finds_the_idx_beside_the_tar() {
        let l = OutputLayout::new("/o");
        let idx = energon_tar_idx(&l, "data-000001.tar").unwrap();
        assert_eq!(idx, PathBuf::from("/o/energon/data-000001.tar.idx"));
        assert_eq!(
            dali_idx(&l, "a/b.tar").unwrap(),
            PathBuf::from("/o/dali/a/b.idx")
        );
        assert!(energon_tar(&l, "../x.tar").is_none());
    }
}

//! The neutral per-shard input every format is built from: the tar's
//! members in order, as the walk saw them, and which images have a row.

use std::path::PathBuf;

/// What a reader can do with a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberKind {
    /// A regular file whose data is one run of bytes in the tar.
    Regular,
    /// A GNU sparse file: a regular file to Python's `tarfile`, but no
    /// offset and length serve its expanded bytes.
    Sparse,
    /// Anything else (directories, links, devices, unknown types): not part of a sample.
    Other,
}

/// One member of the tar, in tar order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarMember {
    /// The final name (PAX `path`, GNU long name, ustar prefix joined).
    pub name: Vec<u8>,
    /// Offset of its first header (its first PAX/GNU extension header).
    pub start_offset: u64,
    /// Offset of its own ustar header.
    pub header_offset: u64,
    /// Offset of its data.
    pub data_offset: u64,
    /// Size of its data.
    pub size: u64,
    pub kind: MemberKind,
    /// The raw `name` field of its own ustar header (NULs trimmed) and its
    /// type flag, as readers that parse raw headers (wids) see it: only
    /// needed for wids, and `None` when it is `name` itself
    /// ([`TarMember::raw_name`]).
    pub raw_header_name: Option<Vec<u8>>,
    pub typeflag: u8,
}

impl TarMember {
    /// What [`TarMember::raw_header_name`] holds for the ustar `name` field
    /// `field` of a member named `name`: the field without its NULs, unless
    /// that is `name` (then nothing is stored).
    pub fn raw_name(field: &[u8], name: &[u8]) -> Option<Vec<u8>> {
        let raw = trim_nul(field);
        (raw != name).then(|| raw.to_vec())
    }
}

/// Python's `str.strip("\x00")` on bytes (how wids reads a ustar name field).
pub(crate) fn trim_nul(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&c| c != 0).unwrap_or(b.len());
    let end = b.iter().rposition(|&c| c != 0).map_or(start, |i| i + 1);
    &b[start..end]
}

/// One walked shard, before any format is built.
#[derive(Debug, Clone, Default)]
pub struct ShardInput {
    /// The shard's name in the job (relative to the input root).
    pub shard_name: String,
    /// The tar file (absolute), where readers will open it.
    pub tar_path: PathBuf,
    /// The tar file's size.
    pub filesize: u64,
    /// Offset just past the last member's data and padding (where the
    /// end-of-archive blocks start).
    pub end_offset: u64,
    pub members: Vec<TarMember>,
    /// Names of the images the parquet has a row for: a sample is kept
    /// exactly when it holds one of them.
    pub row_images: foldhash::HashSet<String>,
}

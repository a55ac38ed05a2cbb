//! The neutral per-shard input every format is built from: the tar's
//! members in order, as the walk saw them, and which images have a row.
//!
//! Names are kept in one buffer per shard (a shard has tens of thousands
//! of members: one allocation each would cost more than the formats).

use std::ops::Range;
use std::path::PathBuf;

use crate::packed::PackedStrs;

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

/// One member of the tar, in tar order (its names borrowed from the shard).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TarMember<'a> {
    /// The final name (PAX `path`, GNU long name, ustar prefix joined).
    pub name: &'a [u8],
    /// Offset of its first header (its first PAX/GNU extension header).
    pub start_offset: u64,
    /// Offset of its own ustar header.
    pub header_offset: u64,
    /// Offset of its data.
    pub data_offset: u64,
    /// Size of its data.
    pub size: u64,
    pub kind: MemberKind,
    /// The raw `name` field of its own ustar header, as readers that parse
    /// raw headers (wids) see it. Given to [`ShardInput::push`]: the field
    /// as read (NULs included), or `None` when wids is not asked for.
    /// Read back: the field without its NULs, `None` when that is `name`.
    pub raw_header_name: Option<&'a [u8]>,
    pub typeflag: u8,
}

/// A recorded member: [`TarMember`] with its names as ranges of the buffer.
#[derive(Debug, Clone)]
struct Recorded {
    name: Range<usize>,
    /// The raw header name, when it differs from `name`.
    raw: Option<Range<usize>>,
    start_offset: u64,
    header_offset: u64,
    data_offset: u64,
    size: u64,
    kind: MemberKind,
    typeflag: u8,
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
    members: Vec<Recorded>,
    /// Every member's name (and raw header name, where it differs).
    names: Vec<u8>,
    /// The names of the images the parquet has a row for (a sample is
    /// kept exactly when it holds one of them).
    row_images: PackedStrs,
    /// Rows of `row_images` taken back (their JSON was replaced).
    withdrawn_rows: foldhash::HashSet<usize>,
}

impl ShardInput {
    pub fn new(shard_name: String, tar_path: PathBuf, filesize: u64) -> Self {
        ShardInput {
            shard_name,
            tar_path,
            filesize,
            ..ShardInput::default()
        }
    }

    /// Records the next member in tar order (its names copied); its data
    /// and padding end at `end_offset` in the tar.
    pub fn push(&mut self, m: TarMember<'_>, end_offset: u64) {
        let name = self.append(m.name);
        let raw = m
            .raw_header_name
            .map(trim_nul)
            .filter(|raw| *raw != m.name)
            .map(|raw| self.append(raw));
        self.end_offset = self.end_offset.max(end_offset);
        self.members.push(Recorded {
            name,
            raw,
            start_offset: m.start_offset,
            header_offset: m.header_offset,
            data_offset: m.data_offset,
            size: m.size,
            kind: m.kind,
            typeflag: m.typeflag,
        });
    }

    fn append(&mut self, bytes: &[u8]) -> Range<usize> {
        let start = self.names.len();
        self.names.extend_from_slice(bytes);
        start..self.names.len()
    }

    /// Records that the image member `name` has a parquet row.
    pub fn add_row_image(&mut self, name: &str) {
        self.row_images.push(name);
    }

    /// Takes back row `number` (counted from 0 in the order of
    /// [`ShardInput::add_row_image`]): a later member replaced its JSON.
    pub fn withdraw_row_image(&mut self, number: usize) {
        self.withdrawn_rows.insert(number);
    }

    /// The members in tar order.
    pub fn members(&self) -> impl ExactSizeIterator<Item = TarMember<'_>> {
        self.members.iter().map(|r| TarMember {
            name: &self.names[r.name.clone()],
            start_offset: r.start_offset,
            header_offset: r.header_offset,
            data_offset: r.data_offset,
            size: r.size,
            kind: r.kind,
            raw_header_name: r.raw.clone().map(|raw| &self.names[raw]),
            typeflag: r.typeflag,
        })
    }

    /// The names of the images with a row, as a set.
    pub(crate) fn row_images(&self) -> foldhash::HashSet<&str> {
        let mut set = foldhash::HashSet::default();
        set.reserve(self.row_images.len());
        let live = |(i, _): &(usize, &str)| !self.withdrawn_rows.contains(i);
        set.extend(
            self.row_images
                .iter()
                .enumerate()
                .filter(live)
                .map(|(_, n)| n),
        );
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_back_and_raw_names_only_when_they_differ() {
        let mut input = ShardInput::new("s.tar".into(), "/s.tar".into(), 4096);
        let member = |name: &'static [u8], raw: Option<&'static [u8]>| TarMember {
            name,
            start_offset: 0,
            header_offset: 0,
            data_offset: 512,
            size: 600,
            kind: MemberKind::Regular,
            raw_header_name: raw,
            typeflag: b'0',
        };
        input.push(member(b"a.jpg", Some(b"a.jpg\0\0\0")), 1536);
        input.push(member(b"long/name.jpg", Some(b"long/na\0")), 1536);
        input.push(member(b"b.jpg", None), 1536);
        input.add_row_image("a.jpg");
        let back: Vec<_> = input
            .members()
            .map(|m| (m.name, m.raw_header_name))
            .collect();
        assert_eq!(
            back,
            vec![
                (&b"a.jpg"[..], None),
                (&b"long/name.jpg"[..], Some(&b"long/na"[..])),
                (&b"b.jpg"[..], None),
            ]
        );
        assert_eq!(input.end_offset, 512 + 1024);
        assert!(input.row_images().contains("a.jpg"));
        assert!(!input.row_images().contains("b.jpg"));
    }
}

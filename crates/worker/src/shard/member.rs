//! One tar member as the pass sees it: its checked path under `data/`, its
//! kind, its place in the stream, and the errors that name it.

use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use shardprep_core::issue::IssueKind;
use shardprep_core::layout::fnv1a64;

use super::ShardError;
use super::input::ShardSource;
use crate::tar_reader::{EntryKind, TarError};
use crate::writers::{WriteKind, WriteTag};

/// What a regular member is, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Json,
    Image,
    Other,
}

/// The member's kind, as both passes count it.
pub(crate) fn kind_of(rel: &Path) -> Kind {
    let name = file_name(rel.as_os_str().as_bytes());
    // `*.json` exactly as `find -name '*.json'` and `glob('data/*.json')` match.
    if name.ends_with(b".json") {
        return Kind::Json;
    }
    let Some(i) = name.iter().rposition(|b| *b == b'.') else {
        return Kind::Other;
    };
    let ext = &name[i + 1..];
    const IMAGES: [&[u8]; 8] = [
        b"png", b"jpg", b"jpeg", b"webp", b"gif", b"bmp", b"tif", b"tiff",
    ];
    if IMAGES.iter().any(|e| ext.eq_ignore_ascii_case(e)) {
        Kind::Image
    } else {
        Kind::Other
    }
}

/// The last segment of a checked path (one without `.`, `..`, empty or
/// trailing segments, as [`crate::extract::safe_relative_path`] makes them).
pub(crate) fn file_name(rel: &[u8]) -> &[u8] {
    match rel.iter().rposition(|b| *b == b'/') {
        Some(i) => &rel[i + 1..],
        None => rel,
    }
}

/// The report key of an entry type that is never extracted (links,
/// devices...); `None` for regular files, directories and unknown types
/// (extracted as regular files, as GNU tar does).
pub(crate) fn refused_entry_type(kind: EntryKind) -> Option<IssueKind> {
    match kind {
        EntryKind::File | EntryKind::Directory | EntryKind::Other(_) => None,
        EntryKind::Symlink => Some(IssueKind::Symlink),
        EntryKind::HardLink => Some(IssueKind::HardLink),
        EntryKind::CharDevice | EntryKind::BlockDevice => Some(IssueKind::Device),
        EntryKind::Fifo => Some(IssueKind::Fifo),
        EntryKind::VolumeLabel => Some(IssueKind::VolumeLabel),
        EntryKind::MultiVolume => Some(IssueKind::MultivolumeContinuation),
    }
}

/// The warning key and detail of a member with an unknown type flag, which
/// GNU tar extracts as a regular file ("Unknown file type ..., extracted as
/// normal file"), and so does shardprep.
pub(crate) fn unknown_type_warning(flag: u8) -> (IssueKind, String) {
    let shown = if flag.is_ascii_graphic() {
        format!("'{}'", flag as char)
    } else {
        format!("0x{flag:02x}")
    };
    (
        IssueKind::UnknownEntryType,
        format!("unknown type flag {shown}: read as a regular file, as GNU tar extracts it"),
    )
}

/// A regular file member being read.
pub(crate) struct Member<'a> {
    source: &'a ShardSource,
    /// The name in the tar (lossy UTF-8), as the report shows it.
    pub name: String,
    /// The checked path under `data/`.
    pub rel: PathBuf,
    /// Bytes of data the header announces.
    pub size: u64,
    /// Offset of the member's data in the tar stream.
    pub data_pos: u64,
    pub kind: Kind,
    /// Directly in `data/`, where the seed's samples are.
    pub top_level: bool,
}

impl<'a> Member<'a> {
    pub(super) fn new(
        source: &'a ShardSource,
        name: String,
        rel: PathBuf,
        size: u64,
        data_pos: u64,
    ) -> Self {
        Member {
            source,
            kind: kind_of(&rel),
            top_level: !rel.as_os_str().as_bytes().contains(&b'/'),
            name,
            rel,
            size,
            data_pos,
        }
    }

    /// The checked path as bytes.
    pub(super) fn rel_bytes(&self) -> &[u8] {
        self.rel.as_os_str().as_bytes()
    }

    /// The hash the pass keeps of the path.
    pub(super) fn key(&self) -> u64 {
        fnv1a64(self.rel_bytes())
    }

    /// What to know of a write of this member (or of its caption) when its
    /// outcome comes back.
    pub(super) fn tag(&self, kind: WriteKind) -> WriteTag {
        WriteTag {
            member: self.name.clone(),
            kind,
        }
    }

    /// The tar ended `copied` bytes into this member's data.
    pub(super) fn truncated(&self, copied: u64) -> ShardError {
        self.source.corrupt(
            format!(
                "the tar is truncated: member data ends after {copied} of {} bytes",
                self.size
            ),
            self.data_pos + copied,
            Some(&self.name),
        )
    }

    /// Reading this member's data failed: the input (retryable) or the
    /// archive (truncated, corrupt), as the tar reader says.
    pub(super) fn read_error(&self, e: io::Error) -> ShardError {
        let e = TarError::from_io(e, self.data_pos, Some(&self.name));
        self.source.tar_error(e)
    }

    /// Reads the rest of this member's data without writing it; `already`
    /// bytes were read before.
    pub(super) fn drain(&self, entry: &mut dyn Read, already: u64) -> Result<(), ShardError> {
        let n = already + io::copy(entry, &mut io::sink()).map_err(|e| self.read_error(e))?;
        if n < self.size {
            Err(self.truncated(n))
        } else {
            Ok(())
        }
    }

    /// Reads until `buf` is full or the data ends; returns the bytes read.
    pub(super) fn read_into(
        &self,
        entry: &mut dyn Read,
        buf: &mut [u8],
    ) -> Result<usize, ShardError> {
        match self.read_partial(entry, buf) {
            (got, None) => Ok(got),
            (_, Some(e)) => Err(e),
        }
    }

    /// Like [`Member::read_into`], but keeps the bytes read before an error
    /// (a truncated member is left as `tar xf` leaves it).
    pub(super) fn read_partial(
        &self,
        entry: &mut dyn Read,
        buf: &mut [u8],
    ) -> (usize, Option<ShardError>) {
        let mut got = 0;
        while got < buf.len() {
            match entry.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (got, Some(self.read_error(e))),
            }
        }
        (got, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_extension_any_case() {
        let k = |s: &str| kind_of(Path::new(s));
        assert_eq!(k("a.json"), Kind::Json);
        assert_eq!(
            k("d/a.JSON"),
            Kind::Other,
            "*.json matches as find -name does"
        );
        assert_eq!(k("a.PNG"), Kind::Image);
        assert_eq!(k("d.png/a.JpEg"), Kind::Image);
        assert_eq!(k("d.png/a"), Kind::Other);
        assert_eq!(k("a.tiff"), Kind::Image);
        assert_eq!(k("a.txt"), Kind::Other);
        assert_eq!(k(".png"), Kind::Image);
    }
}

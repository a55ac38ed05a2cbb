//! What the walk ([`super::pass::ShardPass`]) hands an output: the members
//! it keeps, the facts of each top-level image and the rows it writes, all
//! decided by the walk alone (names, refusals, duplicates, JSON → row,
//! image ↔ row pairing, image checks), so outputs cannot disagree on which
//! samples exist. The shape is ripgrep's searcher/sink: the walk drives,
//! every method but the ones an output needs has a default that does nothing.
//!
//! An output that points into the tar (webshart today; energon, DALI, wids
//! next) gets, per kept member, its stored name, its checked path, its
//! first-header, header and data offsets and its size ([`KeptMember`]); per
//! kept sample, the row naming its image ([`Output::row`]); and at the end
//! the tally, to add its own counts. A member's bytes are read only when
//! the walk or an output needs them (see [`Output::takes_sparse`] and
//! [`WalkInput`]): an output that only points into the tar costs the
//! headers, the JSONs and the image heads.

use std::io::{BufReader, Read};
use std::path::Path;

use crate::index::window::{Cursor, Window};
use crate::integrity::ImageFacts;
use crate::sample::Row;

use super::ShardError;
use super::attempt::Attempt;
use super::input::{Counting, ShardSource};
use super::member::Kind;
use super::tally::Tally;

/// One regular member the walk keeps (not refused, not a directory), as an
/// output sees it.
pub struct KeptMember<'m> {
    /// The name as stored in the tar (PAX `path`, GNU long name, ...).
    pub stored_name: &'m [u8],
    /// The name as the report shows it (lossy UTF-8).
    pub name: &'m str,
    /// The checked path under `data/`.
    pub rel: &'m Path,
    pub kind: Kind,
    /// Directly in `data/`, where the seed's samples are.
    pub top_level: bool,
    /// Offset of the member's first header (its PAX/GNU extension headers).
    #[allow(
        dead_code,
        reason = "for the outputs that name header offsets (issue 28)"
    )]
    pub start_offset: u64,
    /// Offset of the member's own header.
    #[allow(
        dead_code,
        reason = "for the outputs that name header offsets (issue 28)"
    )]
    pub header_offset: u64,
    /// Offset of its data.
    pub data_offset: u64,
    /// Bytes of data.
    pub size: u64,
}

/// A row the walk wrote: the parquet's row and the sample of its image.
pub struct KeptRow<'r> {
    /// The row as the fragment has it (`width`/`height` as `--dims` says).
    pub row: &'r Row,
    /// The width and height its JSON claims.
    pub json_dims: (i64, i64),
}

/// An output of the walk. Calls come in member order: `member` for each
/// kept member, `image` for each top-level image once its bytes (or head)
/// were read, `row` for each row written (rows wait for their image's
/// verdict under `--dims image` / `--on-bad-image skip`), then `finish`.
pub trait Output {
    /// What `finish` hands back.
    type Done;

    /// Whether GNU sparse members are taken; when not, the walk refuses them
    /// (`sparse_file`): no offset and length can serve their expanded bytes.
    fn takes_sparse(&self) -> bool {
        true
    }

    /// A member the walk keeps; `tally` records what the output refuses.
    fn member(&mut self, _m: &KeptMember<'_>, _tally: &mut Tally) {}

    /// The facts of a top-level image (`rel`: its checked path).
    fn image(&mut self, _rel: &Path, _facts: &ImageFacts) {}

    /// A row the walk wrote: the sample of the image it names.
    fn row(&mut self, _row: &KeptRow<'_>) {}

    /// The end of the shard: every count of the walk is in `end.tally`;
    /// an output writes its files into `end.attempt` (before the manifest).
    fn finish(self, end: &mut End<'_>) -> Result<Self::Done, ShardError>;
}

/// What an output gets at the end of the shard.
pub struct End<'e> {
    pub tally: &'e mut Tally,
    pub attempt: &'e Attempt,
    pub source: &'e ShardSource,
}

/// The walk's own files only (`data/`, captions, parquet): nothing more.
pub struct FilesOnly;

impl Output for FilesOnly {
    type Done = ();
    fn finish(self, _end: &mut End<'_>) -> Result<(), ShardError> {
        Ok(())
    }
}

/// The input of a walk: a stream, or a tar read at chosen offsets whose
/// members' data need not be read at all.
pub trait WalkInput: Read {
    /// Positioned reads beside the stream, when the input has them.
    fn window(&mut self) -> Option<&mut Window> {
        None
    }

    /// Bytes read from the input so far, when the input counts them itself
    /// (a stream's are counted as they pass, into `LiveProgress`).
    fn bytes_read(&mut self) -> Option<u64> {
        None
    }
}

impl<R: Read> WalkInput for BufReader<Counting<'_, R>> {}

impl WalkInput for Cursor {
    fn window(&mut self) -> Option<&mut Window> {
        Some(Cursor::window(self))
    }

    fn bytes_read(&mut self) -> Option<u64> {
        Some(Cursor::window(self).bytes_read())
    }
}

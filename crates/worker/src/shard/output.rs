//! What the walk ([`super::pass::ShardPass`]) hands an output: the members
//! it keeps, the facts of each top-level image and the rows it writes, all
//! decided by the walk alone (names, refusals, duplicates, JSON → row,
//! image ↔ row pairing, image checks), so outputs cannot disagree on which
//! samples exist. The shape is ripgrep's searcher/sink: the walk drives,
//! every method but the ones an output needs has a default that does nothing.
//!
//! Outputs compose: a pair of outputs is an output, and so is an optional
//! one (index mode's webshart index beside energon/DALI/wids).
//!
//! An output that points into the tar (webshart, energon, DALI, wids) gets
//! every member as read ([`Output::entry`]) and, per kept member, its stored name, its checked path, its
//! first-header, header and data offsets and its size ([`KeptMember`]); per
//! kept sample, the row naming its image ([`Output::row`]); and at the end
//! the tally, to add its own counts. A member's bytes are read only when
//! the walk or an output needs them (see [`Output::takes_sparse`] and
//! [`WalkInput`]): an output that only points into the tar costs the
//! headers, the JSONs and the image heads.

use std::io::{BufReader, Read};
use std::path::Path;

use crate::integrity::ImageFacts;
use crate::sample::Row;
use crate::tar_reader::EntryMeta;
use crate::window::{Cursor, Window};

use super::ShardError;
use super::attempt::Attempt;
use super::input::{Counting, ShardSource};
use super::member::Kind;
use super::tally::Tally;

/// One regular member the walk keeps (not refused, not a directory), as an
/// output sees it (its headers' offsets are in [`Output::entry`]'s meta).
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

    /// Every member the walk reads, in tar order, before the walk judges it
    /// (refused members, directories and links included).
    fn entry(&mut self, _meta: &EntryMeta) {}

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

/// Two outputs of one walk (nest pairs for more): each sees every call.
impl<A: Output, B: Output> Output for (A, B) {
    type Done = (A::Done, B::Done);

    fn takes_sparse(&self) -> bool {
        self.0.takes_sparse() && self.1.takes_sparse()
    }

    fn entry(&mut self, meta: &EntryMeta) {
        self.0.entry(meta);
        self.1.entry(meta);
    }

    fn member(&mut self, m: &KeptMember<'_>, tally: &mut Tally) {
        self.0.member(m, tally);
        self.1.member(m, tally);
    }

    fn image(&mut self, rel: &Path, facts: &ImageFacts) {
        self.0.image(rel, facts);
        self.1.image(rel, facts);
    }

    fn row(&mut self, row: &KeptRow<'_>) {
        self.0.row(row);
        self.1.row(row);
    }

    fn finish(self, end: &mut End<'_>) -> Result<Self::Done, ShardError> {
        Ok((self.0.finish(end)?, self.1.finish(end)?))
    }
}

/// An output the job may not ask for.
impl<O: Output> Output for Option<O> {
    type Done = Option<O::Done>;

    fn takes_sparse(&self) -> bool {
        self.as_ref().is_none_or(Output::takes_sparse)
    }

    fn entry(&mut self, meta: &EntryMeta) {
        if let Some(o) = self {
            o.entry(meta);
        }
    }

    fn member(&mut self, m: &KeptMember<'_>, tally: &mut Tally) {
        if let Some(o) = self {
            o.member(m, tally);
        }
    }

    fn image(&mut self, rel: &Path, facts: &ImageFacts) {
        if let Some(o) = self {
            o.image(rel, facts);
        }
    }

    fn row(&mut self, row: &KeptRow<'_>) {
        if let Some(o) = self {
            o.row(row);
        }
    }

    fn finish(self, end: &mut End<'_>) -> Result<Self::Done, ShardError> {
        self.map(|o| o.finish(end)).transpose()
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

//! What the walk ([`super::pass::ShardPass`]) hands an output: the members
//! it keeps, the facts of each top-level image and the rows it writes, all
//! decided by the walk alone (names, refusals, duplicates, JSON → row,
//! image ↔ row pairing, image checks), so outputs cannot disagree on which
//! samples exist. The shape is ripgrep's searcher/sink: the walk drives,
//! every method but the ones an output needs has a default that does nothing.
//!
//! Two kinds of output:
//! - one that takes the members' bytes ([`Output::takes_bytes`]): extract
//!   mode's [`super::data_files::DataFiles`] writes them into `data/`. It
//!   reads each file member through [`MemberBytes`], which feeds the walk's
//!   image check as the bytes pass, and reports what it wrote or refused
//!   into the tally ([`Cx`]) as the outcomes come back ([`Output::settle`]);
//! - one that points into the tar (webshart, energon, DALI, wids): it gets
//!   every member as read ([`Output::entry`]) and, per kept member, its
//!   stored name, its checked path, its first-header, header and data
//!   offsets and its size ([`KeptMember`]); per kept sample, the row naming
//!   its image ([`Output::row`]); and at the end the tally, to add its own
//!   counts. When no output takes bytes, a member's bytes are read only
//!   when the walk needs them (see [`WalkInput`]): the headers, the JSONs
//!   and the image heads.
//!
//! Outputs compose: a pair of outputs is an output (at most one of the
//! two takes bytes), and so is an optional one (index mode's webshart
//! index beside energon/DALI/wids).

use foldhash::HashSet;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use crate::integrity::{ImageCheck, ImageFacts, IntegrityConfig};
use crate::sample::Row;
use crate::tar_reader::{Entry, EntryMeta, ExtractError};
use crate::window::{Cursor, Window};

use super::ShardError;
use super::attempt::Attempt;
use super::input::{Counting, ShardSource};
use super::member::{Kind, Member};
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
    /// The JSON member it came from: its name in the tar, its checked path.
    pub json_member: &'r str,
    pub json_rel: &'r Path,
    /// Its number in the shard's rows, in order (what
    /// [`Output::row_withdrawn`] names).
    pub number: u64,
}

/// A row the walk took back at the shard's end: a later member at its
/// JSON's path replaced the JSON (as `tar xf` leaves only the later file).
pub struct WithdrawnRow<'w> {
    /// Its number (as [`KeptRow::number`]).
    pub number: u64,
    /// The image it named.
    pub image: &'w str,
    /// Whether a row the shard keeps names that image too.
    pub named_by_a_kept_row: bool,
}

/// What an output's hooks may record into, and stop on.
pub struct Cx<'c> {
    pub tally: &'c mut Tally,
    pub source: &'c ShardSource,
    /// Set when the lease is lost or the worker stops.
    pub cancel: &'c AtomicBool,
}

/// A JSON member's bytes, for an output that takes them.
pub struct JsonBytes<'j, 'm> {
    pub m: &'j Member<'m>,
    /// What the walk read of it: all of it, or its first
    /// [`super::MAX_JSON_BYTES`]; the output may take the buffer.
    pub head: &'j mut Vec<u8>,
    /// The rest of its data.
    pub rest: &'j mut dyn Read,
    /// Its JSON made a row.
    pub made_row: bool,
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

    /// Whether the output takes the members' bytes ([`Output::json_bytes`],
    /// [`Output::file_bytes`]).
    fn takes_bytes(&self) -> bool {
        false
    }

    /// A directory member the walk keeps (`rel`: its checked path).
    fn directory(&mut self, _name: &str, _rel: &Path, _cx: &mut Cx<'_>) -> Result<(), ShardError> {
        Ok(())
    }

    /// Whether a file the output wrote already holds `m`'s path and wins
    /// over it (extract mode: a caption file, as the seed writes captions
    /// after extracting); the walk then refuses `m`.
    fn shadows(&mut self, _m: &Member<'_>, _cx: &mut Cx<'_>) -> Result<bool, ShardError> {
        Ok(false)
    }

    /// A kept JSON member's bytes (when [`Output::takes_bytes`]).
    fn json_bytes(&mut self, _j: JsonBytes<'_, '_>, _cx: &mut Cx<'_>) -> Result<(), ShardError> {
        Ok(())
    }

    /// Any other kept member's bytes (when [`Output::takes_bytes`]); returns
    /// where the member is whole on disk when it is already (a decode check
    /// of a large image reads it back from there).
    fn file_bytes<R: WalkInput>(
        &mut self,
        _bytes: &mut MemberBytes<'_, '_, R>,
        _cx: &mut Cx<'_>,
    ) -> Result<Option<PathBuf>, ShardError> {
        Ok(None)
    }

    /// After each member: the outcomes of earlier writes are counted.
    fn settle(&mut self, _cx: &mut Cx<'_>) -> Result<(), ShardError> {
        Ok(())
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

    /// A row written earlier is taken back (at the shard's end, before
    /// [`Output::finish`]).
    fn row_withdrawn(&mut self, _row: &WithdrawnRow<'_>) {}

    /// The end of the shard: every count of the walk is in `end.tally`;
    /// an output writes its files into `end.attempt` (before the manifest).
    fn finish(self, end: &mut End<'_>) -> Result<Self::Done, ShardError>;
}

/// What an output gets at the end of the shard.
pub struct End<'e> {
    pub tally: &'e mut Tally,
    pub attempt: &'e Attempt,
    pub source: &'e ShardSource,
    pub cancel: &'e AtomicBool,
    /// Hashes of the checked paths of the shard's members.
    pub members: &'e HashSet<u64>,
}

/// Two outputs of one walk (nest pairs for more): each sees every call;
/// the members' bytes go to the one that takes them (at most one does).
impl<A: Output, B: Output> Output for (A, B) {
    type Done = (A::Done, B::Done);

    fn takes_sparse(&self) -> bool {
        self.0.takes_sparse() && self.1.takes_sparse()
    }

    fn takes_bytes(&self) -> bool {
        debug_assert!(!(self.0.takes_bytes() && self.1.takes_bytes()));
        self.0.takes_bytes() || self.1.takes_bytes()
    }

    fn directory(&mut self, name: &str, rel: &Path, cx: &mut Cx<'_>) -> Result<(), ShardError> {
        self.0.directory(name, rel, cx)?;
        self.1.directory(name, rel, cx)
    }

    fn shadows(&mut self, m: &Member<'_>, cx: &mut Cx<'_>) -> Result<bool, ShardError> {
        Ok(self.0.shadows(m, cx)? | self.1.shadows(m, cx)?)
    }

    fn json_bytes(&mut self, j: JsonBytes<'_, '_>, cx: &mut Cx<'_>) -> Result<(), ShardError> {
        match self.0.takes_bytes() {
            true => self.0.json_bytes(j, cx),
            false => self.1.json_bytes(j, cx),
        }
    }

    fn file_bytes<R: WalkInput>(
        &mut self,
        bytes: &mut MemberBytes<'_, '_, R>,
        cx: &mut Cx<'_>,
    ) -> Result<Option<PathBuf>, ShardError> {
        match self.0.takes_bytes() {
            true => self.0.file_bytes(bytes, cx),
            false => self.1.file_bytes(bytes, cx),
        }
    }

    fn settle(&mut self, cx: &mut Cx<'_>) -> Result<(), ShardError> {
        self.0.settle(cx)?;
        self.1.settle(cx)
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

    fn row_withdrawn(&mut self, row: &WithdrawnRow<'_>) {
        self.0.row_withdrawn(row);
        self.1.row_withdrawn(row);
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

    fn takes_bytes(&self) -> bool {
        self.as_ref().is_some_and(Output::takes_bytes)
    }

    fn directory(&mut self, name: &str, rel: &Path, cx: &mut Cx<'_>) -> Result<(), ShardError> {
        match self {
            Some(o) => o.directory(name, rel, cx),
            None => Ok(()),
        }
    }

    fn shadows(&mut self, m: &Member<'_>, cx: &mut Cx<'_>) -> Result<bool, ShardError> {
        match self {
            Some(o) => o.shadows(m, cx),
            None => Ok(false),
        }
    }

    fn json_bytes(&mut self, j: JsonBytes<'_, '_>, cx: &mut Cx<'_>) -> Result<(), ShardError> {
        match self {
            Some(o) => o.json_bytes(j, cx),
            None => Ok(()),
        }
    }

    fn file_bytes<R: WalkInput>(
        &mut self,
        bytes: &mut MemberBytes<'_, '_, R>,
        cx: &mut Cx<'_>,
    ) -> Result<Option<PathBuf>, ShardError> {
        match self {
            Some(o) => o.file_bytes(bytes, cx),
            None => Ok(None),
        }
    }

    fn settle(&mut self, cx: &mut Cx<'_>) -> Result<(), ShardError> {
        match self {
            Some(o) => o.settle(cx),
            None => Ok(()),
        }
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

    fn row_withdrawn(&mut self, row: &WithdrawnRow<'_>) {
        if let Some(o) = self {
            o.row_withdrawn(row);
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

/// A kept file member's bytes as an output reads them: a top-level image's
/// pass through the walk's image check, so no output can read around it.
pub struct MemberBytes<'b, 'e, R: WalkInput> {
    m: &'b Member<'b>,
    entry: &'b mut Entry<'e, R>,
    cfg: &'b IntegrityConfig,
    check: Check<'b>,
    whole: Option<ImageFacts>,
}

/// Where the image check of a member stands.
enum Check<'c> {
    /// Not an image the walk checks.
    Off,
    /// To be checked, no byte read yet.
    Due,
    /// Fed as the bytes are read (boxed: large, and only for large members).
    Feeding(Box<ImageCheck<'c>>),
    /// Checked whole, in memory: the facts are in `MemberBytes::whole`.
    Whole,
    /// Written with its holes seeked over: not checked.
    Sparse,
}

impl<'b, 'e, R: WalkInput> MemberBytes<'b, 'e, R> {
    /// `m`'s bytes from `entry`, checked as `cfg` says when `checked`.
    pub(super) fn new(
        m: &'b Member<'b>,
        entry: &'b mut Entry<'e, R>,
        cfg: &'b IntegrityConfig,
        checked: bool,
    ) -> Self {
        let check = match checked {
            true => Check::Due,
            false => Check::Off,
        };
        MemberBytes {
            m,
            entry,
            cfg,
            check,
            whole: None,
        }
    }

    /// The member.
    pub fn member(&self) -> &'b Member<'b> {
        self.m
    }

    /// A GNU sparse member (see [`MemberBytes::write_sparse`]).
    pub fn is_sparse(&self) -> bool {
        self.entry.meta().sparse.is_some()
    }

    /// Reads the whole member into `buf` (cleared first). On a read error
    /// or a cut tar, `buf` holds the bytes read before it.
    pub fn read_whole(&mut self, buf: &mut Vec<u8>) -> Result<(), ShardError> {
        let m = self.m;
        buf.clear();
        buf.resize(m.size as usize, 0);
        let (got, failed) = m.read_partial(self.entry, buf);
        buf.truncate(got);
        if let Some(e) = failed {
            return Err(e);
        }
        if (got as u64) < m.size {
            return Err(m.truncated(got as u64));
        }
        if matches!(self.check, Check::Due) {
            self.whole = Some(ImageCheck::whole(self.cfg, buf));
            self.check = Check::Whole;
        }
        Ok(())
    }

    /// Writes the member's expanded data into `file`, its holes seeked over
    /// (the image check does not see it).
    pub fn write_sparse(
        &mut self,
        file: &mut File,
        keep_going: &dyn Fn() -> bool,
    ) -> Result<u64, ExtractError> {
        self.check = Check::Sparse;
        self.entry.write_to_file(file, keep_going)
    }

    /// The image's facts, once the output is done with the bytes; `written`:
    /// where it is whole on disk, if it is. `None` when it was not checked.
    pub(super) fn facts(self, written: Option<&Path>) -> Option<ImageFacts> {
        match self.check {
            Check::Off | Check::Sparse => None,
            Check::Due => Some(ImageCheck::new(self.cfg, self.m.size).finish(written)),
            Check::Feeding(c) => Some(c.finish(written)),
            Check::Whole => self.whole,
        }
    }
}

impl<R: WalkInput> Read for MemberBytes<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if matches!(self.check, Check::Due) {
            self.check = Check::Feeding(Box::new(ImageCheck::new(self.cfg, self.m.size)));
        }
        let n = self.entry.read(buf)?;
        if let Check::Feeding(c) = &mut self.check {
            c.update(&buf[..n]);
        }
        Ok(n)
    }
}

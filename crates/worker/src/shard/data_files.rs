//! [`DataFiles`]: extract mode's output. The walk's kept members go into
//! `data/` as they are, and each row's caption into `data/<stem>.txt`
//! (the seed's `extract-captions.py`); an extracted image no row captions
//! gets a caption file at the end (see [`super::captions`]).
//!
//! Writes are published whole and fenced by [`DataDir`]; small ones go to
//! its writer threads and their outcomes come back later: each outcome is
//! counted (files and captions written, refusals) when the walk settles
//! the output after a member ([`Output::settle`]) and at the end.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use foldhash::HashSet;

use shardprep_core::issue::IssueKind;
use shardprep_core::layout::fnv1a64;

use super::attempt::Attempt;
use super::captions::{UnlistedImages, caption_path, path_key};
use super::input::ShardSource;
use super::member::{Kind, Member, kind_of};
use super::output::{Cx, End, JsonBytes, KeptRow, MemberBytes, Output, WalkInput, WithdrawnRow};
use super::{MAX_JSON_BYTES, ShardError, ShardTask};
use crate::extract::writeback::FlushEvery;
use crate::extract::{DataDir, PlaceError};
use crate::sample::{caption_of, stem};
use crate::tar_reader::ExtractError;
use crate::writers::{Finished, POOL_MAX_FILE, WriteKind, WriteTag};

/// Members and captions written into `data/` for one pass.
pub(crate) struct DataFiles<'t> {
    task: &'t ShardTask,
    data: DataDir,
    /// The attempt's list of the files it wrote.
    files_list: PathBuf,
    /// Caption files queued or written (hashes of `<stem>.txt`); a refused
    /// caption is taken back out when its outcome comes back.
    captions_written: HashSet<u64>,
    /// Images no row captions, when members and captions are both written.
    unlisted: Option<UnlistedImages>,
}

impl<'t> DataFiles<'t> {
    /// Opens `data/` for `task`'s attempt: writer threads, background flush
    /// and the files list as the task asks.
    pub(crate) fn open(
        task: &'t ShardTask,
        attempt: &Attempt,
        source: &ShardSource,
    ) -> Result<Self, ShardError> {
        let files_list = attempt.files_list();
        let root = task.layout.data_dir();
        std::fs::create_dir_all(&root).map_err(|e| source.write_error(&root, e))?;
        let writes = task.outputs.writes_data();
        let threads = if writes { task.write_threads } else { 0 };
        let mut data = DataDir::new(root.clone())
            .and_then(|d| d.with_fence(task.fence.clone()))
            .and_then(|d| d.with_writers(threads))
            .map_err(|e| source.write_error(&root, e))?;
        if writes {
            // Writeback overlaps extraction in every mode, even when nothing
            // waits for it (see `crate::extract::writeback`).
            let every = FlushEvery::for_sync(task.data_sync);
            data = data.with_background_flush(task.writeback.clone(), every);
        }
        let data = data
            .with_log(&files_list)
            .map_err(|e| source.write_error(&files_list, e))?;
        let unlisted = (task.outputs.writes_members() && task.outputs.writes_captions())
            .then(UnlistedImages::default);
        Ok(DataFiles {
            task,
            data,
            files_list,
            captions_written: HashSet::default(),
            unlisted,
        })
    }

    /// Writes the JSON read into `head` (and the rest of a large one).
    fn write_json(&mut self, j: JsonBytes<'_, '_>, cx: &mut Cx<'_>) -> Result<(), ShardError> {
        let m = j.m;
        let written = if m.size <= POOL_MAX_FILE {
            // Counted when the write's outcome comes back.
            let bytes = std::mem::replace(j.head, self.data.buffer());
            self.data
                .queue_bytes(m.rel.clone(), bytes, m.tag(WriteKind::Member));
            false
        } else if m.size <= MAX_JSON_BYTES {
            let res = self.data.write_bytes(&m.rel, j.head);
            placed(cx, &m.name, res)?
        } else {
            // Too large to parse: write the part read, then stream the rest.
            let cancel = cx.cancel;
            let mut chained = (&j.head[..]).chain(j.rest);
            let keep_going = || !cancel.load(Ordering::Relaxed);
            let res = self
                .data
                .write_stream(&m.rel, &mut chained, m.size, &keep_going);
            streamed(cx, m, res)?
        };
        if written {
            cx.tally.extracted(m.size);
        }
        Ok(())
    }

    /// Reads a small member whole and queues its write.
    fn queue_small<R: WalkInput>(
        &mut self,
        bytes: &mut MemberBytes<'_, '_, R>,
    ) -> Result<(), ShardError> {
        let m = bytes.member();
        let mut buf = self.data.buffer();
        let read = bytes.read_whole(&mut buf);
        self.data
            .queue_bytes(m.rel.clone(), buf, m.tag(WriteKind::Member));
        if read.is_err() {
            // The cut member stays as read so far, as `tar xf` leaves it.
            self.data.wait_all();
        }
        read
    }

    /// A member too large for the writer pool, streamed into its file;
    /// returns its path when it is whole there.
    fn stream<R: WalkInput>(
        &mut self,
        bytes: &mut MemberBytes<'_, '_, R>,
        cx: &mut Cx<'_>,
    ) -> Result<Option<PathBuf>, ShardError> {
        let m = bytes.member();
        let cancel = cx.cancel;
        let keep_going = || !cancel.load(Ordering::Relaxed);
        let res = self.data.write_stream(&m.rel, bytes, m.size, &keep_going);
        if !streamed(cx, m, res)? {
            return Ok(None);
        }
        cx.tally.extracted(m.size);
        self.image_written(&m.rel, &m.name);
        Ok(Some(self.data.root().join(&m.rel)))
    }

    /// A GNU sparse member: written with its holes seeked over, so it takes
    /// only its data's space on disk.
    fn sparse<R: WalkInput>(
        &mut self,
        bytes: &mut MemberBytes<'_, '_, R>,
        cx: &mut Cx<'_>,
    ) -> Result<(), ShardError> {
        let m = bytes.member();
        let cancel = cx.cancel;
        let keep_going = || !cancel.load(Ordering::Relaxed);
        let res = self
            .data
            .write_with(&m.rel, |f| bytes.write_sparse(f, &keep_going));
        match res {
            Ok(Ok(n)) => {
                cx.tally.extracted(n);
                // A sparse image needs its caption file like any other.
                self.image_written(&m.rel, &m.name);
                Ok(())
            }
            Ok(Err(ExtractError::Cancelled)) => Err(cx.source.cancelled()),
            Ok(Err(ExtractError::Tar(e))) => Err(cx.source.tar_error(*e)),
            Ok(Err(ExtractError::Write(e))) => {
                Err(cx.source.write_error(&self.data.root().join(&m.rel), e))
            }
            Err(place) => placed(cx, &m.name, Err(place)).map(|_| ()),
        }
    }

    /// An extracted file is whole in `data/`: an image needs a caption file.
    fn image_written(&mut self, rel: &Path, member: &str) {
        if let Some(unlisted) = self.unlisted.as_mut()
            && kind_of(rel) == Kind::Image
        {
            unlisted.image_written(rel, member, &self.captions_written);
        }
    }

    /// Counts the queued writes whose outcomes are due: files written,
    /// captions written, refusals; passes disk errors up.
    fn settle_writes(&mut self, cx: &mut Cx<'_>) -> Result<(), ShardError> {
        while let Some(done) = self.next_done(cx.source)? {
            let member = done.tag.member;
            match done.tag.kind {
                WriteKind::Member => {
                    if placed(cx, &member, done.result)? {
                        cx.tally.extracted(done.size);
                        self.image_written(&done.rel, &member);
                    }
                }
                WriteKind::Caption => {
                    let key = path_key(&done.rel);
                    if placed(cx, &member, done.result)? {
                        self.captions_written.insert(key);
                        cx.tally.counts.captions_written += 1;
                    } else {
                        self.captions_written.remove(&key);
                    }
                }
                WriteKind::UnlistedCaption => unlisted_caption_done(cx, &member, done.result)?,
            }
        }
        Ok(())
    }

    fn next_done(&mut self, source: &ShardSource) -> Result<Option<Finished>, ShardError> {
        self.data.next_done().map_err(|e| {
            let (path, e) = e.into_io();
            source.write_error(&path, e)
        })
    }

    /// Writes a caption file for every extracted image that still has none
    /// (see [`super::captions`]); `members`: the shard's member paths.
    fn write_unlisted_captions(
        &mut self,
        members: &HashSet<u64>,
        cx: &mut Cx<'_>,
    ) -> Result<(), ShardError> {
        let Some(unlisted) = self.unlisted.take() else {
            return Ok(());
        };
        for c in unlisted.missing(&self.captions_written, members) {
            let mut bytes = self.data.buffer();
            bytes.extend_from_slice(c.text.as_bytes());
            let tag = WriteTag {
                member: c.member,
                kind: WriteKind::UnlistedCaption,
            };
            self.data.queue_bytes(c.path, bytes, tag);
            self.settle_writes(cx)?;
        }
        self.data.wait_all();
        self.settle_writes(cx)
    }

    /// Flushes `data/` (before the commit when the task asks for it) and
    /// closes the files list. The background writeback goes on.
    fn close(&mut self, source: &ShardSource) -> Result<(), ShardError> {
        let root = self.data.root().to_path_buf();
        if self.task.data_sync.per_shard() && self.task.outputs.writes_data() {
            // Extracted files reach the disk before the fragment is committed.
            self.data.sync().map_err(|e| source.write_error(&root, e))?;
        }
        self.data
            .finish_log()
            .map_err(|e| source.write_error(&self.files_list, e))
    }
}

impl Output for DataFiles<'_> {
    type Done = ();

    fn takes_bytes(&self) -> bool {
        self.task.outputs.writes_members()
    }

    /// Created as a real directory when extracting.
    fn directory(&mut self, name: &str, rel: &Path, cx: &mut Cx<'_>) -> Result<(), ShardError> {
        if !self.task.outputs.writes_members() {
            return Ok(());
        }
        match self.data.ensure_dirs(rel) {
            Ok(()) => Ok(()),
            Err(PlaceError::Io(p, e)) => Err(cx.source.write_error(&p, e)),
            Err(refused) => {
                cx.tally
                    .reject(name, IssueKind::UnsafeDirectory, refused.to_string());
                Ok(())
            }
        }
    }

    /// Whether a caption file was written at `m`'s path.
    fn shadows(&mut self, m: &Member<'_>, cx: &mut Cx<'_>) -> Result<bool, ShardError> {
        let key = m.key();
        if !(self.task.outputs.writes_captions()
            && m.top_level
            && self.captions_written.contains(&key))
        {
            return Ok(false);
        }
        // Was that caption really written? Settle it first.
        self.data.wait_for_path(&m.rel);
        self.settle_writes(cx)?;
        Ok(self.captions_written.contains(&key))
    }

    fn json_bytes(&mut self, j: JsonBytes<'_, '_>, cx: &mut Cx<'_>) -> Result<(), ShardError> {
        // The caption text of a JSON that made no row, for the caption file
        // of its own image if no row captions that (read before the
        // buffer is handed to a writer).
        let own_text = match self.unlisted {
            Some(_) if !j.made_row && j.m.size <= MAX_JSON_BYTES => {
                caption_of(j.head, &self.task.fields)
            }
            _ => None,
        };
        let m = j.m;
        self.write_json(j, cx)?;
        if let (Some(unlisted), Some(text)) = (self.unlisted.as_mut(), own_text) {
            unlisted.json_text(&m.rel, text);
        }
        Ok(())
    }

    fn file_bytes<R: WalkInput>(
        &mut self,
        bytes: &mut MemberBytes<'_, '_, R>,
        cx: &mut Cx<'_>,
    ) -> Result<Option<PathBuf>, ShardError> {
        if bytes.is_sparse() {
            self.sparse(bytes, cx)?;
            Ok(None)
        } else if bytes.member().size <= POOL_MAX_FILE {
            self.queue_small(bytes)?;
            Ok(None)
        } else {
            self.stream(bytes, cx)
        }
    }

    /// The row's caption into `data/<stem>.txt`.
    fn row(&mut self, r: &KeptRow<'_>) {
        if !self.task.outputs.writes_captions() {
            return;
        }
        let txt = format!("{}.txt", stem(&r.row.filename));
        let key = fnv1a64(txt.as_bytes());
        // Taken back out if the write is refused.
        self.captions_written.insert(key);
        if let Some(unlisted) = self.unlisted.as_mut() {
            unlisted.row_caption(key);
            if key != path_key(&caption_path(r.json_rel)) {
                // The row captions another image than the JSON's own.
                unlisted.json_text(r.json_rel, r.row.caption.clone());
            }
        }
        let mut bytes = self.data.buffer();
        bytes.extend_from_slice(r.row.caption.as_bytes());
        let tag = WriteTag {
            member: r.json_member.to_string(),
            kind: WriteKind::Caption,
        };
        self.data.queue_bytes(PathBuf::from(txt), bytes, tag);
    }

    /// The withdrawn row's caption file is no longer a row's, unless a
    /// kept row names its image (see [`UnlistedImages::row_withdrawn`]).
    fn row_withdrawn(&mut self, w: &WithdrawnRow<'_>) {
        if let Some(unlisted) = self.unlisted.as_mut()
            && !w.named_by_a_kept_row
        {
            unlisted.row_withdrawn(PathBuf::from(format!("{}.txt", stem(w.image))), w.image);
        }
    }

    fn settle(&mut self, cx: &mut Cx<'_>) -> Result<(), ShardError> {
        self.settle_writes(cx)
    }

    /// Settles every write, writes the missing caption files, flushes
    /// `data/` as configured and closes the files list.
    fn finish(mut self, end: &mut End<'_>) -> Result<(), ShardError> {
        let mut cx = Cx {
            tally: end.tally,
            source: end.source,
            cancel: end.cancel,
        };
        self.data.wait_all();
        self.settle_writes(&mut cx)?;
        self.write_unlisted_captions(end.members, &mut cx)?;
        self.close(end.source)
    }
}

/// Records a refused placement; passes disk errors up. `Ok(true)` when written.
fn placed(cx: &mut Cx<'_>, member: &str, res: Result<(), PlaceError>) -> Result<bool, ShardError> {
    match res {
        Ok(()) => Ok(true),
        Err(PlaceError::Io(p, e)) => Err(cx.source.write_error(&p, e)),
        Err(refused) => {
            let detail = format!("not written: {}", refused.path().display());
            cx.tally.reject(member, refused.reason(), detail);
            Ok(false)
        }
    }
}

/// Settles a streamed write of `m`: `Ok(true)` when it is whole in its file.
fn streamed(
    cx: &mut Cx<'_>,
    m: &Member<'_>,
    res: Result<Result<u64, io::Error>, PlaceError>,
) -> Result<bool, ShardError> {
    match res {
        Ok(Ok(n)) if n == m.size => Ok(true),
        Ok(Ok(n)) => Err(m.truncated(n)),
        Ok(Err(_)) if cx.cancel.load(Ordering::Relaxed) => Err(cx.source.cancelled()),
        Ok(Err(e)) => Err(m.read_error(e)),
        Err(place) => placed(cx, &m.name, Err(place)),
    }
}

fn unlisted_caption_done(
    cx: &mut Cx<'_>,
    member: &str,
    res: Result<(), PlaceError>,
) -> Result<(), ShardError> {
    match res {
        Ok(()) => cx.tally.counts.captions_for_unlisted_images += 1,
        Err(PlaceError::Io(p, e)) => return Err(cx.source.write_error(&p, e)),
        Err(refused) => {
            let detail = format!("no caption file for this image: {refused}");
            cx.tally
                .issue(member, IssueKind::UnlistedCaptionNotWritten, detail);
        }
    }
    Ok(())
}

//! [`ShardPass`]: the output handles and the state of one pass over a
//! shard, with one method per step. The caller feeds it tar entries with
//! [`ShardPass::member`] and ends with [`ShardPass::finish`].

use std::collections::HashSet;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use shardprep_core::durability;
use shardprep_core::issue::IssueKind;
use shardprep_core::layout::{fnv1a64, shard_file_stem};
use shardprep_core::manifest::ShardManifest;

use super::attempt::Attempt;
use super::captions::{UnlistedImages, caption_path, caption_warnings, path_key};
use super::checks::{ImageChecks, Pending, head_facts};
use super::input::ShardSource;
use super::member::{Kind, Member, kind_of, refused_entry_type};
use super::output::{End, KeptMember, KeptRow, Output, WalkInput};
use super::tally::{NameSet, Tally};
use super::{LiveProgress, MAX_JSON_BYTES, ShardError, ShardOutput, ShardTask};
use crate::extract::{DataDir, PlaceError, safe_relative_path};
use crate::fragment::FragmentWriter;
use crate::integrity::{CheckingReader, Claims, ImageCheck, ImageFacts, hash_claims};
use crate::sample::{Parsed, Row, Skip, caption_of, parse_sample, stem};
use crate::tar_reader::{Entry, EntryKind, ExtractError};
use crate::writers::{Finished, POOL_MAX_FILE, WriteKind, WriteTag};

/// One pass over one shard: where it writes, and what it has seen so far.
pub(crate) struct ShardPass<'a, O: Output> {
    task: &'a ShardTask,
    source: &'a ShardSource,
    cancel: &'a AtomicBool,
    live: &'a LiveProgress,
    /// This attempt's files in `tmp/`.
    attempt: Attempt,
    /// Members or captions are written into `data/` at all.
    writes_files: bool,
    data: DataDir,
    fragment: FragmentWriter,
    tally: Tally,
    /// Hashes of the member paths seen so far (duplicates).
    seen_members: HashSet<u64>,
    /// Top-level images of the shard.
    images: NameSet,
    /// Images the rows name.
    referenced: NameSet,
    /// Caption files queued or written (hashes of `<stem>.txt`); a refused
    /// caption is taken back out when its outcome comes back.
    captions_written: HashSet<u64>,
    /// Images no row captions, when members and captions are both written
    /// (see [`super::captions`]).
    unlisted: Option<UnlistedImages>,
    /// The JSON member being read (reused).
    json_buf: Vec<u8>,
    /// The checks of the images themselves.
    checks: ImageChecks,
    /// Where the decided members, images and rows go besides `data/`.
    out: O,
}

impl<'a, O: Output> ShardPass<'a, O> {
    /// Creates this attempt's fragment and files list and opens `data/`
    /// (`uses_data_dir` false: nothing goes into `data/`, which is neither
    /// created nor listed).
    pub(crate) fn open(
        task: &'a ShardTask,
        source: &'a ShardSource,
        (cancel, live): (&'a AtomicBool, &'a LiveProgress),
        out: O,
        uses_data_dir: bool,
    ) -> Result<Self, ShardError> {
        let attempt = Attempt::create(task, source)?;
        let fragment = FragmentWriter::create(&attempt.fragment(), &task.fields.extra)
            .map_err(|e| source.fragment_error(e))?;
        let writes_files = task.outputs.writes_data();
        let data = if uses_data_dir {
            open_data_dir(task, writes_files, &attempt.files_list(), source)?
        } else {
            // Never written into: no member is extracted, no caption written.
            let dir = attempt.dir();
            DataDir::new(dir.to_path_buf()).map_err(|e| source.write_error(dir, e))?
        };
        Ok(ShardPass {
            task,
            source,
            cancel,
            live,
            attempt,
            writes_files,
            data,
            fragment,
            tally: Tally::new(&task.shard_name),
            seen_members: HashSet::new(),
            images: NameSet::default(),
            referenced: NameSet::default(),
            captions_written: HashSet::new(),
            unlisted: (task.outputs.writes_members() && task.outputs.writes_captions())
                .then(UnlistedImages::default),
            json_buf: Vec::new(),
            checks: ImageChecks::new(&task.integrity),
            out,
        })
    }

    /// The live counters of the pass.
    pub(crate) fn live(&self) -> &LiveProgress {
        self.live
    }

    /// The lease was lost or the worker is stopping.
    pub(crate) fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// Handles one tar entry; returns the stream offset where it ends.
    pub(crate) fn member<R: WalkInput>(
        &mut self,
        entry: &mut Entry<'_, R>,
    ) -> Result<u64, ShardError> {
        self.tally.counts.members += 1;
        self.live.members.fetch_add(1, Ordering::Relaxed);
        let meta = entry.meta();
        self.out.entry(meta);
        let (size, data_pos, end, kind) =
            (meta.size, meta.data_offset, meta.end_offset(), meta.kind);
        let name = meta.name_lossy();
        let refusal = meta.refusal.clone();
        let rel = match safe_relative_path(&meta.name) {
            Ok(rel) => rel,
            Err(why) => {
                let detail = "member name would leave data/; not extracted";
                self.tally.reject(&name, why.reason(), detail);
                return Ok(end);
            }
        };
        if let Some(refusal) = refusal {
            self.tally.reject(&name, refusal.reason, refusal.detail);
        } else if kind == EntryKind::Directory {
            self.directory(&name, &rel)?;
        } else if let Some(reason) = refused_entry_type(kind) {
            let detail = format!("{kind:?} members are not extracted");
            self.tally.reject(&name, reason, detail);
        } else if meta.sparse.is_some() && !self.out.takes_sparse() {
            let detail = "a sparse file's data is not one run of bytes in the tar, so no offset and length can serve it; not indexed (extract mode expands it)";
            self.tally.reject(&name, IssueKind::SparseFile, detail);
        } else {
            if let EntryKind::Other(flag) = kind {
                let (key, detail) = super::unknown_type_warning(flag);
                self.tally.member_warning(&name, key, detail);
            }
            let member = Member::new(self.source, name, rel, size, data_pos);
            let stored = meta.name.clone();
            self.kept(&member, &stored);
            self.file(&member, entry)?;
        }
        Ok(end)
    }

    /// Hands a kept member to the output.
    fn kept(&mut self, m: &Member, stored_name: &[u8]) {
        let kept = KeptMember {
            stored_name,
            name: &m.name,
            rel: &m.rel,
            kind: m.kind,
            top_level: m.top_level,
            data_offset: m.data_pos,
            size: m.size,
        };
        self.out.member(&kept, &mut self.tally);
    }

    /// A directory member: created (as a real directory) when extracting.
    fn directory(&mut self, name: &str, rel: &Path) -> Result<(), ShardError> {
        if !self.task.outputs.writes_members() {
            return Ok(());
        }
        match self.data.ensure_dirs(rel) {
            Ok(()) => Ok(()),
            Err(PlaceError::Io(p, e)) => Err(self.source.write_error(&p, e)),
            Err(refused) => {
                self.tally
                    .reject(name, IssueKind::UnsafeDirectory, refused.to_string());
                Ok(())
            }
        }
    }

    /// A regular member: duplicates and the guard of input shards first,
    /// then the step of its kind, then the writes that came due.
    fn file<R: WalkInput>(
        &mut self,
        m: &Member,
        entry: &mut Entry<'_, R>,
    ) -> Result<(), ShardError> {
        if !self.seen_members.insert(m.key()) {
            self.tally.counts.duplicate_members += 1;
            self.tally.issue(
                &m.name,
                IssueKind::DuplicateMember,
                "the same name appears again in this shard; the later copy wins",
            );
        }
        if self.task.shards_in_data_dir && m.top_level && m.rel_bytes().ends_with(b".tar") {
            self.tally.reject(&m.name, IssueKind::WouldOverwriteInput, "a .tar member at the top of data/ could overwrite an input shard (shards and data/ are the same folder); not extracted");
            return Ok(());
        }
        let shadowed = self.shadowed_by_caption(m)?;
        match m.kind {
            Kind::Json => self.json_member(m, entry, shadowed)?,
            Kind::Image | Kind::Other => self.file_member(m, entry, shadowed)?,
        }
        self.settle_writes()
    }

    /// Whether a caption file was written at this member's path. The seed
    /// writes captions after extracting: a caption wins over a `.txt`
    /// member of the same name.
    fn shadowed_by_caption(&mut self, m: &Member) -> Result<bool, ShardError> {
        let key = m.key();
        if !(self.task.outputs.writes_captions()
            && m.top_level
            && self.captions_written.contains(&key))
        {
            return Ok(false);
        }
        // Was that caption really written? Settle it first.
        self.data.wait_for_path(&m.rel);
        self.settle_writes()?;
        Ok(self.captions_written.contains(&key))
    }

    /// A `.json` member: read (up to [`MAX_JSON_BYTES`]), written, and, at
    /// the top of `data/`, turned into a row and a caption.
    fn json_member<R: WalkInput>(
        &mut self,
        m: &Member,
        entry: &mut Entry<'_, R>,
        shadowed: bool,
    ) -> Result<(), ShardError> {
        self.tally.counts.json_files += 1;
        self.live.json_files.fetch_add(1, Ordering::Relaxed);
        // A JSON too large to parse is read only to be written.
        let read = m.size <= MAX_JSON_BYTES || self.task.outputs.writes_members();
        if read {
            self.read_json(m, entry)?;
        } else {
            self.json_buf.clear();
        }
        let parsed = (m.size <= MAX_JSON_BYTES && m.top_level)
            .then(|| parse_sample(&self.json_buf, &self.task.fields));
        let hashes = self.hash_claims(parsed.as_ref());
        let own_text = self.own_caption_text(m, parsed.as_ref());
        if self.task.outputs.writes_members() && !shadowed {
            self.write_json(m, entry)?;
        } else if m.size > MAX_JSON_BYTES {
            skip_data(m, entry, if read { MAX_JSON_BYTES } else { 0 })?;
        }
        if m.size > MAX_JSON_BYTES {
            let detail = format!("{} bytes, more than {MAX_JSON_BYTES}", m.size);
            self.tally.skip(&m.name, IssueKind::JsonTooLarge, detail);
        } else if !m.top_level {
            // The seed's glob('data/*.json') reads only top-level JSONs.
            self.tally.skip(
                &m.name,
                IssueKind::JsonInSubdirectory,
                "only JSONs directly in data/ are samples, as in the seed",
            );
        } else if let Some(parsed) = parsed {
            self.sample(m, parsed, hashes)?;
        }
        if let (Some(unlisted), Some(text)) = (self.unlisted.as_mut(), own_text) {
            unlisted.json_text(&m.rel, text);
        }
        Ok(())
    }

    /// The caption text of a JSON that made no row, for the caption file
    /// of its own image if no row captions that (read before `json_buf` is
    /// handed to a writer).
    fn own_caption_text(
        &self,
        m: &Member,
        parsed: Option<&Result<Parsed, Skip>>,
    ) -> Option<String> {
        let made_row = matches!(parsed, Some(Ok(Parsed::Row(_))));
        if self.unlisted.is_none() || made_row || m.size > MAX_JSON_BYTES {
            return None;
        }
        caption_of(&self.json_buf, &self.task.fields)
    }

    /// Reads the JSON's first [`MAX_JSON_BYTES`] into `json_buf`.
    fn read_json(&mut self, m: &Member, entry: &mut dyn Read) -> Result<(), ShardError> {
        // Sized read: read_to_end would zero its whole spare capacity on
        // every call through the tar reader (perf: 1% of the run in memset,
        // ~8 KiB per JSON).
        let take = m.size.min(MAX_JSON_BYTES) as usize;
        self.json_buf.clear();
        self.json_buf.resize(take, 0);
        let got = m.read_into(entry, &mut self.json_buf)?;
        if got < take {
            return Err(m.truncated(got as u64));
        }
        Ok(())
    }

    /// Writes the JSON read into `json_buf` (and the rest of a large one).
    fn write_json(&mut self, m: &Member, entry: &mut dyn Read) -> Result<(), ShardError> {
        let written = if m.size <= POOL_MAX_FILE {
            // Counted when the write's outcome comes back.
            let bytes = std::mem::replace(&mut self.json_buf, self.data.buffer());
            self.data
                .queue_bytes(m.rel.clone(), bytes, m.tag(WriteKind::Member));
            false
        } else if m.size <= MAX_JSON_BYTES {
            let res = self.data.write_bytes(&m.rel, &self.json_buf);
            self.placed(&m.name, res)?
        } else {
            // Too large to parse: write the part read, then stream the rest.
            let cancel = self.cancel;
            let mut chained = (&self.json_buf[..]).chain(entry);
            let keep_going = || !cancel.load(Ordering::Relaxed);
            let res = self
                .data
                .write_stream(&m.rel, &mut chained, m.size, &keep_going);
            self.streamed(m, res)?
        };
        if written {
            self.tally.extracted(m.size);
        }
        Ok(())
    }

    /// The hash fields of a JSON that made a row, read before `json_buf`
    /// is handed to a writer (none unless hashes are checked).
    fn hash_claims(&self, parsed: Option<&Result<Parsed, Skip>>) -> Vec<Option<String>> {
        let specs = &self.checks.cfg().hashes;
        if specs.is_empty() || !matches!(parsed, Some(Ok(Parsed::Row(_)))) {
            return Vec::new();
        }
        hash_claims(&self.json_buf, specs)
    }

    /// What a top-level JSON amounts to: a row, not a sample, or a skip.
    fn sample(
        &mut self,
        m: &Member,
        parsed: Result<Parsed, Skip>,
        hashes: Vec<Option<String>>,
    ) -> Result<(), ShardError> {
        match parsed {
            // Not a sample, but its JSON still names its image.
            Ok(Parsed::NoWidth { filename }) => {
                if let Some(f) = filename {
                    self.referenced.insert(f.as_bytes());
                    self.tally.samples.no_width.insert(f.as_bytes());
                }
            }
            Ok(Parsed::Row(row)) => self.row(m, row, hashes)?,
            Err(skip) => {
                if skip.has_width {
                    self.tally.counts.json_with_width += 1;
                }
                tracing::debug!(shard = %self.task.shard_name, member = %m.name, reason = %skip.reason, "{}", skip.detail);
                self.tally.skip(&m.name, skip.reason, skip.detail);
            }
        }
        Ok(())
    }

    /// A JSON's row: written now, or (when rows wait for their image)
    /// handed to the checks; its image is judged against its claims.
    fn row(&mut self, m: &Member, row: Row, hashes: Vec<Option<String>>) -> Result<(), ShardError> {
        self.tally.counts.json_with_width += 1;
        for w in caption_warnings(&row.caption) {
            self.tally.caption_warning(&m.name, w);
        }
        self.referenced.insert(row.filename.as_bytes());
        let claims = Claims {
            width: Some(row.width),
            height: Some(row.height),
            hashes,
        };
        let json_dims = (row.width, row.height);
        if self.checks.defers_rows() {
            let image = row.filename.clone();
            let pending = Pending {
                row,
                json_dims,
                member: m.name.clone(),
                rel: m.rel.clone(),
            };
            self.checks.json(&image, claims, Some(pending));
        } else {
            // The ledger only judges: the row is written now, as it is.
            self.checks.json(&row.filename, claims, None);
            self.write_row(&m.name, &m.rel, row, json_dims)?;
        }
        self.settle_checks()
    }

    /// Writes the rows the checks released and counts their verdicts.
    fn settle_checks(&mut self) -> Result<(), ShardError> {
        for p in self.checks.settle(&mut self.tally) {
            self.write_row(&p.member, &p.rel, p.row, p.json_dims)?;
        }
        Ok(())
    }

    /// A row: into the fragment and the output, and its caption into
    /// `data/<stem>.txt` (`member`, `rel`: its JSON).
    fn write_row(
        &mut self,
        member: &str,
        rel: &Path,
        row: Row,
        json_dims: (i64, i64),
    ) -> Result<(), ShardError> {
        self.tally.samples.rows.insert(row.filename.as_bytes());
        self.out.row(&KeptRow {
            row: &row,
            json_dims,
        });
        if self.task.outputs.writes_captions() {
            let txt = format!("{}.txt", stem(&row.filename));
            let key = fnv1a64(txt.as_bytes());
            // Taken back out if the write is refused.
            self.captions_written.insert(key);
            if let Some(unlisted) = self.unlisted.as_mut() {
                unlisted.row_caption(key);
                if key != path_key(&caption_path(rel)) {
                    // The row captions another image than the JSON's own.
                    unlisted.json_text(rel, row.caption.clone());
                }
            }
            let mut bytes = self.data.buffer();
            bytes.extend_from_slice(row.caption.as_bytes());
            let tag = WriteTag {
                member: member.to_string(),
                kind: WriteKind::Caption,
            };
            self.data.queue_bytes(PathBuf::from(txt), bytes, tag);
        }
        self.fragment
            .push(&row)
            .map_err(|e| self.source.fragment_error(e))?;
        self.live.rows.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// An image or any other member: extracted as it is.
    fn file_member<R: WalkInput>(
        &mut self,
        m: &Member,
        entry: &mut Entry<'_, R>,
        shadowed: bool,
    ) -> Result<(), ShardError> {
        if m.kind == Kind::Image {
            self.tally.counts.images += 1;
            if m.top_level {
                self.images.insert(m.rel_bytes());
            } else {
                self.tally.samples.nested.insert(m.rel_bytes());
            }
        } else {
            self.tally.counts.other_files += 1;
        }
        if shadowed {
            self.tally.reject(
                &m.name,
                IssueKind::ShadowedByCaption,
                "a caption file of the same name was written; the caption wins, as in the seed",
            );
        } else if self.task.outputs.writes_members() && entry.meta().sparse.is_some() {
            self.sparse_file(m, entry)?;
        } else if self.task.outputs.writes_members() && m.size <= POOL_MAX_FILE {
            self.queue_small(m, entry)?;
        } else if self.task.outputs.writes_members() {
            self.stream_member(m, entry)?;
        } else if m.kind == Kind::Image && m.top_level {
            let cfg = &self.task.integrity;
            let whole = cfg.check_decode || !cfg.hashes.is_empty();
            let head = match entry.input_mut().window() {
                // Only the header is needed: the rest is seeked over.
                Some(win) if !whole => {
                    Some(head_facts(win, m.data_pos, m.size).map_err(|e| m.read_error(e))?)
                }
                _ => None,
            };
            let facts = match head {
                Some(facts) => facts,
                None => {
                    let mut check = ImageCheck::new(cfg, m.size);
                    let mut reader = CheckingReader {
                        inner: &mut *entry,
                        check: &mut check,
                    };
                    m.drain(&mut reader, 0)?;
                    check.finish(None)
                }
            };
            self.image_checked(m, facts)?;
        } else {
            skip_data(m, entry, 0)?;
        }
        Ok(())
    }

    /// A member too large for the writer pool, streamed into its file
    /// (a top-level image through its check).
    fn stream_member(&mut self, m: &Member, entry: &mut dyn Read) -> Result<(), ShardError> {
        let cancel = self.cancel;
        let keep_going = || !cancel.load(Ordering::Relaxed);
        if !(m.kind == Kind::Image && m.top_level) {
            let res = self.data.write_stream(&m.rel, entry, m.size, &keep_going);
            if self.streamed(m, res)? {
                self.tally.extracted(m.size);
                self.image_written(&m.rel, &m.name);
            }
            return Ok(());
        }
        let mut check = ImageCheck::new(&self.task.integrity, m.size);
        let mut reader = CheckingReader {
            inner: entry,
            check: &mut check,
        };
        let res = self
            .data
            .write_stream(&m.rel, &mut reader, m.size, &keep_going);
        let written = self.streamed(m, res)?;
        // Only a decode reads the file back.
        let path =
            (written && self.task.integrity.check_decode).then(|| self.data.root().join(&m.rel));
        let facts = check.finish(path.as_deref());
        if written {
            self.tally.extracted(m.size);
            self.image_written(&m.rel, &m.name);
        }
        self.image_checked(m, facts)
    }

    /// A top-level image's facts go to the checks.
    fn image_checked(&mut self, m: &Member, facts: ImageFacts) -> Result<(), ShardError> {
        self.out.image(&m.rel, &facts);
        self.checks
            .image(&String::from_utf8_lossy(m.rel_bytes()), facts);
        self.settle_checks()
    }

    /// A GNU sparse member: written with its holes seeked over, so it takes
    /// only its data's space on disk.
    fn sparse_file<R: WalkInput>(
        &mut self,
        m: &Member,
        entry: &mut Entry<'_, R>,
    ) -> Result<(), ShardError> {
        let cancel = self.cancel;
        let keep_going = || !cancel.load(Ordering::Relaxed);
        let res = self
            .data
            .write_with(&m.rel, |f| entry.write_to_file(f, &keep_going));
        match res {
            Ok(Ok(n)) => {
                self.tally.extracted(n);
                Ok(())
            }
            Ok(Err(ExtractError::Cancelled)) => Err(self.source.cancelled()),
            Ok(Err(ExtractError::Tar(e))) => Err(self.source.tar_error(*e)),
            Ok(Err(ExtractError::Write(e))) => {
                Err(self.source.write_error(&self.data.root().join(&m.rel), e))
            }
            Err(place) => self.placed(&m.name, Err(place)).map(|_| ()),
        }
    }

    /// Reads a small member whole and queues its write.
    fn queue_small(&mut self, m: &Member, entry: &mut dyn Read) -> Result<(), ShardError> {
        let mut bytes = self.data.buffer();
        bytes.resize(m.size as usize, 0);
        let (got, failed) = m.read_partial(entry, &mut bytes);
        bytes.truncate(got);
        let whole = failed.is_none() && got as u64 == m.size;
        let facts = (whole && m.kind == Kind::Image && m.top_level)
            .then(|| ImageCheck::whole(&self.task.integrity, &bytes));
        self.data
            .queue_bytes(m.rel.clone(), bytes, m.tag(WriteKind::Member));
        if failed.is_some() || (got as u64) < m.size {
            // The cut member stays as read so far, as `tar xf` leaves it.
            self.data.wait_all();
            return Err(failed.unwrap_or_else(|| m.truncated(got as u64)));
        }
        match facts {
            Some(facts) => self.image_checked(m, facts),
            None => Ok(()),
        }
    }

    /// Records a refused placement; passes disk errors up. `Ok(true)` when written.
    fn placed(&mut self, member: &str, res: Result<(), PlaceError>) -> Result<bool, ShardError> {
        match res {
            Ok(()) => Ok(true),
            Err(PlaceError::Io(p, e)) => Err(self.source.write_error(&p, e)),
            Err(refused) => {
                let detail = format!("not written: {}", refused.path().display());
                self.tally.reject(member, refused.reason(), detail);
                Ok(false)
            }
        }
    }

    /// Settles a streamed write of `m`: `Ok(true)` when it is whole in its file.
    fn streamed(
        &mut self,
        m: &Member,
        res: Result<Result<u64, io::Error>, PlaceError>,
    ) -> Result<bool, ShardError> {
        match res {
            Ok(Ok(n)) if n == m.size => Ok(true),
            Ok(Ok(n)) => Err(m.truncated(n)),
            Ok(Err(_)) if self.cancelled() => Err(self.source.cancelled()),
            Ok(Err(e)) => Err(m.read_error(e)),
            Err(place) => self.placed(&m.name, Err(place)),
        }
    }

    /// Counts the queued writes whose outcomes are due: files written,
    /// captions written, refusals; passes disk errors up.
    fn settle_writes(&mut self) -> Result<(), ShardError> {
        while let Some(done) = self.next_done()? {
            let key = path_key(&done.rel);
            let member = done.tag.member;
            match done.tag.kind {
                WriteKind::Member => {
                    if self.placed(&member, done.result)? {
                        self.tally.extracted(done.size);
                        self.image_written(&done.rel, &member);
                    }
                }
                WriteKind::Caption => {
                    if self.placed(&member, done.result)? {
                        self.captions_written.insert(key);
                        self.tally.counts.captions_written += 1;
                    } else {
                        self.captions_written.remove(&key);
                    }
                }
                WriteKind::UnlistedCaption => self.unlisted_caption_done(&member, done.result)?,
            }
        }
        Ok(())
    }

    /// An extracted file is whole in `data/`: an image needs a caption file.
    fn image_written(&mut self, rel: &Path, member: &str) {
        if let Some(unlisted) = self.unlisted.as_mut()
            && kind_of(rel) == Kind::Image
        {
            unlisted.image_written(rel, member, &self.captions_written);
        }
    }

    /// Writes a caption file for every extracted image that still has none
    /// (see [`super::captions`]).
    fn write_unlisted_captions(&mut self) -> Result<(), ShardError> {
        let Some(unlisted) = self.unlisted.take() else {
            return Ok(());
        };
        for c in unlisted.missing(&self.captions_written, &self.seen_members) {
            let mut bytes = self.data.buffer();
            bytes.extend_from_slice(c.text.as_bytes());
            let tag = WriteTag {
                member: c.member,
                kind: WriteKind::UnlistedCaption,
            };
            self.data.queue_bytes(c.path, bytes, tag);
            self.settle_writes()?;
        }
        self.data.wait_all();
        self.settle_writes()
    }

    fn unlisted_caption_done(
        &mut self,
        member: &str,
        res: Result<(), PlaceError>,
    ) -> Result<(), ShardError> {
        match res {
            Ok(()) => self.tally.counts.captions_for_unlisted_images += 1,
            Err(PlaceError::Io(p, e)) => return Err(self.source.write_error(&p, e)),
            Err(refused) => {
                let detail = format!("no caption file for this image: {refused}");
                self.tally
                    .issue(member, IssueKind::UnlistedCaptionNotWritten, detail);
            }
        }
        Ok(())
    }

    fn next_done(&mut self) -> Result<Option<Finished>, ShardError> {
        self.data.next_done().map_err(|e| {
            let (path, e) = e.into_io();
            self.source.write_error(&path, e)
        })
    }

    /// Settles every write, checks names across the shard, closes the
    /// fragment, flushes `data/` as configured and writes the manifest.
    pub(crate) fn finish(mut self, started: Instant) -> Result<(ShardOutput, O::Done), ShardError> {
        self.checks.finish();
        self.settle_checks()?;
        self.data.wait_all();
        self.settle_writes()?;
        self.write_unlisted_captions()?;
        self.tally.cross_check(&self.referenced, &self.images);
        self.tally.left_out(&self.images);
        let source = self.source;
        self.tally.counts.rows = self
            .fragment
            .finish()
            .map_err(|e| source.fragment_error(e))?;
        self.tally.counts.bytes_read = self.live.bytes_read.load(Ordering::Relaxed);
        let mut end = End {
            tally: &mut self.tally,
            attempt: &self.attempt,
            source,
        };
        let done = self.out.finish(&mut end)?;
        let files_list = self.attempt.files_list();
        close_data(
            &mut self.data,
            self.task,
            self.writes_files,
            &files_list,
            source,
        )?;
        let manifest = manifest(self.task, self.tally, self.writes_files, started);
        Ok((self.attempt.finish(manifest, source)?, done))
    }
}

/// Opens `data/` for this pass: writer threads, background flush and the
/// files list as the task asks.
fn open_data_dir(
    task: &ShardTask,
    writes_files: bool,
    files_list: &Path,
    source: &ShardSource,
) -> Result<DataDir, ShardError> {
    let root = task.layout.data_dir();
    std::fs::create_dir_all(&root).map_err(|e| source.write_error(&root, e))?;
    let threads = if writes_files { task.write_threads } else { 0 };
    let mut data = DataDir::new(root.clone())
        .and_then(|d| d.with_fence(task.fence.clone()))
        .and_then(|d| d.with_writers(threads))
        .map_err(|e| source.write_error(&root, e))?;
    if writes_files && task.data_sync.background_flush() {
        // Writeback overlaps extraction even when the shard's end does not wait
        // for it: a flat directory of small files is flushed 2-3x faster so.
        data = data
            .with_background_flush()
            .map_err(|e| source.write_error(&root, e))?;
    }
    data.with_log(files_list)
        .map_err(|e| source.write_error(files_list, e))
}

/// Flushes `data/` (before the commit when the task asks for it) and
/// closes the files list.
fn close_data(
    data: &mut DataDir,
    task: &ShardTask,
    writes_files: bool,
    files_list: &Path,
    source: &ShardSource,
) -> Result<(), ShardError> {
    let root = data.root().to_path_buf();
    if task.data_sync.per_shard() && writes_files {
        // Extracted files reach the disk before the fragment is committed.
        data.sync().map_err(|e| source.write_error(&root, e))?;
    } else {
        data.stop_background_flush()
            .map_err(|e| source.write_error(&root, e))?;
    }
    data.finish_log()
        .map_err(|e| source.write_error(files_list, e))
}

fn manifest(task: &ShardTask, tally: Tally, writes_files: bool, started: Instant) -> ShardManifest {
    ShardManifest {
        shard_name: task.shard_name.clone(),
        identity: task.identity,
        lease_id: task.lease_id,
        attempt: task.attempt,
        worker_id: task.worker_id.clone(),
        fragment: format!("{}.parquet", shard_file_stem(&task.shard_name)),
        counts: tally.counts,
        issues: tally.issues,
        issues_not_listed: tally.issues_not_listed,
        elapsed_ms: started.elapsed().as_millis() as u64,
        data_synced: !writes_files || task.data_sync.per_shard(),
        boot_id: durability::boot_id(),
        image_checks: task.integrity.to_checks(),
        image_issues: tally.image_issues,
        image_issues_not_listed: tally.image_issues_not_listed,
    }
}

/// Passes over the rest of `m`'s data, `already` bytes of it read: seeked
/// over when the input reads at chosen offsets, else read and dropped.
fn skip_data<R: WalkInput>(
    m: &Member,
    entry: &mut Entry<'_, R>,
    already: u64,
) -> Result<(), ShardError> {
    if entry.input_mut().window().is_some() {
        // The next header is read past the rest (a cut tar fails there).
        return Ok(());
    }
    m.drain(entry, already)
}

//! [`ShardPass`]: the walk. The state of one pass over a shard and the
//! rules every output shares, with one method per step; what it decides
//! goes to its [`Output`] (extract mode's `data/` files, index mode's
//! indexes). The caller feeds it tar entries with [`ShardPass::member`] and
//! ends with [`ShardPass::finish`].

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use foldhash::HashSet;

use shardprep_core::durability;
use shardprep_core::issue::IssueKind;
use shardprep_core::layout::{fnv1a64, shard_file_stem};
use shardprep_core::manifest::ShardManifest;

use super::attempt::Attempt;
use super::captions::caption_warnings;
use super::checks::{ImageChecks, Pending, head_facts};
use super::input::ShardSource;
use super::json_rows::{JsonId, JsonRows};
use super::member::{Kind, Member, refused_entry_type};
use super::output::{
    Cx, End, JsonBytes, KeptMember, KeptRow, MemberBytes, Output, WalkInput, WithdrawnRow,
};
use super::tally::{NameSet, Tally};
use super::{LiveProgress, MAX_JSON_BYTES, ShardError, ShardOutput, ShardTask};
use crate::extract::safe_relative_path;
use crate::fragment::{FragmentWriter, Withdrawals};
use crate::integrity::{CheckingReader, Claims, ImageCheck, ImageFacts, hash_claims};
use crate::sample::{Parsed, Row, Skip, parse_sample};
use crate::tar_reader::{Entry, EntryKind};

/// One pass over one shard: where it writes, and what it has seen so far.
pub(crate) struct ShardPass<'a, O: Output> {
    task: &'a ShardTask,
    source: &'a ShardSource,
    cancel: &'a AtomicBool,
    live: &'a LiveProgress,
    /// This attempt's files in `tmp/`.
    attempt: Attempt,
    fragment: FragmentWriter,
    tally: Tally,
    /// Hashes of the member paths seen so far (duplicates).
    seen_members: HashSet<u64>,
    /// Top-level images of the shard.
    images: NameSet,
    /// Images the rows name.
    referenced: NameSet,
    /// The latest JSON member at each path, and its row.
    json_rows: JsonRows,
    /// The JSON member being read (reused).
    json_buf: Vec<u8>,
    /// The checks of the images themselves.
    checks: ImageChecks,
    /// Where the decided members, images and rows go.
    out: O,
}

impl<'a, O: Output> ShardPass<'a, O> {
    /// Starts the pass of `attempt` (creates its fragment) into `out`.
    pub(crate) fn open(
        task: &'a ShardTask,
        source: &'a ShardSource,
        (cancel, live): (&'a AtomicBool, &'a LiveProgress),
        attempt: Attempt,
        out: O,
    ) -> Result<Self, ShardError> {
        let fragment = FragmentWriter::create(&attempt.fragment(), &task.fields.extra)
            .map_err(|e| source.fragment_error(e))?;
        Ok(ShardPass {
            task,
            source,
            cancel,
            live,
            attempt,
            fragment,
            tally: Tally::new(&task.shard_name),
            seen_members: HashSet::default(),
            images: NameSet::default(),
            referenced: NameSet::default(),
            json_rows: JsonRows::default(),
            json_buf: Vec::new(),
            checks: ImageChecks::new(&task.integrity),
            out,
        })
    }

    /// The output and what its hooks record into.
    fn out_cx(&mut self) -> (&mut O, Cx<'_>) {
        let cx = Cx {
            tally: &mut self.tally,
            source: self.source,
            cancel: self.cancel,
        };
        (&mut self.out, cx)
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
            let (out, mut cx) = self.out_cx();
            out.directory(&name, &rel, &mut cx)?;
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

    /// A regular member: duplicates and the guard of input shards first,
    /// then the step of its kind, then the writes that came due.
    fn file<R: WalkInput>(
        &mut self,
        m: &Member,
        entry: &mut Entry<'_, R>,
    ) -> Result<(), ShardError> {
        let repeated = !self.seen_members.insert(m.key());
        if repeated {
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
        let (out, mut cx) = self.out_cx();
        let shadowed = out.shadows(m, &mut cx)?;
        match m.kind {
            Kind::Json => self.json_member(m, entry, (shadowed, repeated))?,
            Kind::Image | Kind::Other => self.file_member(m, entry, shadowed)?,
        }
        let (out, mut cx) = self.out_cx();
        out.settle(&mut cx)
    }

    /// A `.json` member: read (up to [`MAX_JSON_BYTES`]), written, and, at
    /// the top of `data/`, turned into a row and a caption.
    fn json_member<R: WalkInput>(
        &mut self,
        m: &Member,
        entry: &mut Entry<'_, R>,
        (shadowed, repeated): (bool, bool),
    ) -> Result<(), ShardError> {
        self.tally.counts.json_files += 1;
        self.live.json_files.fetch_add(1, Ordering::Relaxed);
        let json = self.replaces_json(m, repeated);
        // A JSON too large to parse is read only to be written.
        let takes_bytes = self.out.takes_bytes();
        let read = m.size <= MAX_JSON_BYTES || takes_bytes;
        if read {
            self.read_json(m, entry)?;
        } else {
            self.json_buf.clear();
        }
        let parsed = (m.size <= MAX_JSON_BYTES && m.top_level)
            .then(|| parse_sample(&self.json_buf, &self.task.fields));
        let hashes = self.hash_claims(parsed.as_ref());
        if takes_bytes && !shadowed {
            let j = JsonBytes {
                m,
                head: &mut self.json_buf,
                rest: entry,
                made_row: matches!(parsed, Some(Ok(Parsed::Row(_)))),
            };
            let mut cx = Cx {
                tally: &mut self.tally,
                source: self.source,
                cancel: self.cancel,
            };
            self.out.json_bytes(j, &mut cx)?;
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
            self.sample(m, parsed, (hashes, json))?;
        }
        Ok(())
    }

    /// A JSON member's id (`repeated`: a member at its path came before);
    /// at the top of `data/`, the rows of the members at its path it
    /// replaces are withdrawn, as `tar xf` leaves only the later file for
    /// the seed's `compile.py` to read.
    fn replaces_json(&mut self, m: &Member, repeated: bool) -> JsonId {
        let json = self.json_rows.member(m.key(), repeated);
        if repeated && m.top_level {
            self.fragment.withdraw_before(json.key);
        }
        json
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
        (hashes, json): (Vec<Option<String>>, JsonId),
    ) -> Result<(), ShardError> {
        match parsed {
            // Not a sample, but its JSON still names its image.
            Ok(Parsed::NoWidth { filename }) => {
                if let Some(f) = filename {
                    self.referenced.insert(f.as_bytes());
                    self.tally.samples.no_width.insert(f.as_bytes());
                }
            }
            Ok(Parsed::Row(row)) => self.row(m, row, (hashes, json))?,
            Err(skip) => {
                if skip.has_width {
                    self.tally.counts.json_with_width += 1;
                }
                // Its image has a JSON (one that made no row): left out, not an orphan.
                if let Some(f) = &skip.filename {
                    self.referenced.insert(f.as_bytes());
                }
                tracing::debug!(shard = %self.task.shard_name, member = %m.name, reason = %skip.reason, "{}", skip.detail);
                self.tally.skip(&m.name, skip.reason, skip.detail);
            }
        }
        Ok(())
    }

    /// A JSON's row: written now, or (when rows wait for their image)
    /// handed to the checks; its image is judged against its claims.
    fn row(
        &mut self,
        m: &Member,
        row: Row,
        (hashes, json): (Vec<Option<String>>, JsonId),
    ) -> Result<(), ShardError> {
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
                json,
            };
            self.checks.json(&image, claims, Some(pending));
        } else {
            // The ledger only judges: the row is written now, as it is.
            self.checks.json(&row.filename, claims, None);
            self.write_row((&m.name, &m.rel, json), row, json_dims)?;
        }
        self.settle_checks()
    }

    /// Writes the rows the checks released and counts their verdicts.
    fn settle_checks(&mut self) -> Result<(), ShardError> {
        for p in self.checks.settle(&mut self.tally) {
            self.write_row((&p.member, &p.rel, p.json), p.row, p.json_dims)?;
        }
        Ok(())
    }

    /// A row: into the fragment and the output, and its caption into
    /// `data/<stem>.txt` (`member`, `rel`, `json`: its JSON). A row that
    /// waited for its image's verdict while a later member replaced its
    /// JSON is not written.
    fn write_row(
        &mut self,
        (member, rel, json): (&str, &Path, JsonId),
        row: Row,
        json_dims: (i64, i64),
    ) -> Result<(), ShardError> {
        if !self.json_rows.live(json) {
            return Ok(());
        }
        self.tally.samples.rows.insert(row.filename.as_bytes());
        let number = self
            .fragment
            .push(&row, json.key)
            .map_err(|e| self.source.fragment_error(e))?;
        self.out.row(&KeptRow {
            row: &row,
            json_dims,
            json_member: member,
            json_rel: rel,
            number,
        });
        self.live.rows.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// An image or any other member: its bytes to the output that takes
    /// them, or (a top-level image) read as far as its checks need.
    fn file_member<R: WalkInput>(
        &mut self,
        m: &Member,
        entry: &mut Entry<'_, R>,
        shadowed: bool,
    ) -> Result<(), ShardError> {
        let checked = m.kind == Kind::Image && m.top_level;
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
        let facts = if shadowed {
            self.tally.reject(
                &m.name,
                IssueKind::ShadowedByCaption,
                "a caption file of the same name was written; the caption wins, as in the seed",
            );
            None
        } else if self.out.takes_bytes() {
            let mut bytes = MemberBytes::new(m, entry, &self.task.integrity, checked);
            let mut cx = Cx {
                tally: &mut self.tally,
                source: self.source,
                cancel: self.cancel,
            };
            let written = self.out.file_bytes(&mut bytes, &mut cx)?;
            bytes.facts(written.as_deref())
        } else if checked {
            Some(self.image_facts(m, entry)?)
        } else {
            skip_data(m, entry, 0)?;
            None
        };
        match facts {
            Some(facts) => self.image_checked(m, facts),
            None => Ok(()),
        }
    }

    /// A top-level image's facts when no output takes its bytes: from its
    /// header alone when the checks need no more and the input seeks.
    fn image_facts<R: WalkInput>(
        &mut self,
        m: &Member,
        entry: &mut Entry<'_, R>,
    ) -> Result<ImageFacts, ShardError> {
        let cfg = &self.task.integrity;
        let whole = cfg.check_decode || !cfg.hashes.is_empty();
        if let Some(win) = entry.input_mut().window()
            && !whole
        {
            // Only the header is needed: the rest is seeked over.
            return head_facts(win, m.data_pos, m.size).map_err(|e| m.read_error(e));
        }
        let mut check = ImageCheck::new(cfg, m.size);
        let mut reader = CheckingReader {
            inner: &mut *entry,
            check: &mut check,
        };
        m.drain(&mut reader, 0)?;
        Ok(check.finish(None))
    }

    /// A top-level image's facts go to the checks.
    fn image_checked(&mut self, m: &Member, facts: ImageFacts) -> Result<(), ShardError> {
        self.out.image(&m.rel, &facts);
        self.checks
            .image(&String::from_utf8_lossy(m.rel_bytes()), facts);
        self.settle_checks()
    }

    /// Settles the checks, checks names across the shard, closes the
    /// fragment, ends the output and writes the manifest.
    pub(crate) fn finish(mut self, started: Instant) -> Result<(ShardOutput, O::Done), ShardError> {
        self.checks.finish();
        self.settle_checks()?;
        let source = self.source;
        let fragment = self
            .fragment
            .finish()
            .map_err(|e| source.fragment_error(e))?;
        self.tally.counts.rows = fragment.rows;
        if let Some(w) = fragment.withdrawn {
            withdraw_rows(&mut self.tally, &mut self.out, w);
        }
        self.tally.cross_check(&self.referenced, &self.images);
        self.tally.left_out(&self.images);
        self.tally.counts.bytes_read = self.live.bytes_read.load(Ordering::Relaxed);
        let mut end = End {
            tally: &mut self.tally,
            attempt: &self.attempt,
            source,
            cancel: self.cancel,
            members: &self.seen_members,
        };
        let done = self.out.finish(&mut end)?;
        let manifest = manifest(self.task, self.tally, started);
        Ok((self.attempt.finish(manifest, source)?, done))
    }
}

/// The rows the fragment left out (their JSON was replaced): the images
/// they named have a row only if a kept row names them, and `out` takes
/// them back.
fn withdraw_rows<O: Output>(tally: &mut Tally, out: &mut O, w: Withdrawals) {
    tally.samples.rows.retain(&w.live_images);
    for (number, image) in &w.rows {
        let named_by_a_kept_row = w.live_images.contains(&fnv1a64(image.as_bytes()));
        out.row_withdrawn(&WithdrawnRow {
            number: *number,
            image,
            named_by_a_kept_row,
        });
    }
}

fn manifest(task: &ShardTask, tally: Tally, started: Instant) -> ShardManifest {
    let writes_files = task.outputs.writes_data();
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

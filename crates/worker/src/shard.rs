//! One streaming pass over one tar shard: extract members into `data/`,
//! write caption files, build the parquet fragment and the manifest.
//!
//! Runs on a blocking thread. Memory is bounded: member data is streamed
//! through one buffer, JSON members are read whole only up to a cap, rows go
//! to the fragment in batches, and per-member bookkeeping is one 64-bit hash.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use shardprep_core::durability::{self, DataSync};
use shardprep_core::fields::FieldMap;
use shardprep_core::layout::{OutputLayout, fnv1a64, shard_file_stem};
use shardprep_core::manifest::{
    ISSUE_LIST_CAP, MemberIssue, ShardCounts, ShardIdentity, ShardManifest,
};
use shardprep_core::proto::FailureKind;

use crate::extract::{DataDir, PlaceError, safe_relative_path};
use crate::fragment::{FragmentError, FragmentWriter};
use crate::sample::{Parsed, parse_sample, stem};
use crate::writers::{POOL_MAX_FILE, WriteTag};

/// JSON members larger than this are extracted but not parsed.
pub const MAX_JSON_BYTES: u64 = 16 << 20;
/// Names kept for listing problems found only at the end of a shard.
const NAMES_KEPT: usize = 4096;

/// Everything needed to process one leased shard.
#[derive(Debug, Clone)]
pub struct ShardTask {
    /// The tar file to read.
    pub shard_path: PathBuf,
    /// The shard's name in the job (relative to the input root).
    pub shard_name: String,
    pub identity: ShardIdentity,
    pub layout: OutputLayout,
    pub fields: FieldMap,
    pub write_captions: bool,
    pub extract: bool,
    pub lease_id: u64,
    pub attempt: u32,
    pub worker_id: String,
    /// The shards live in `data/` itself (the Hugging Face layout): top-level
    /// `*.tar` members are not extracted, so no shard is ever overwritten.
    pub shards_in_data_dir: bool,
    /// When `data/` is flushed to disk (see `shardprep_core::durability`).
    pub data_sync: DataSync,
    /// Threads creating small files while the tar is read (`0`: the reading
    /// thread writes each file itself); see [`crate::writers`].
    pub write_threads: usize,
}

/// Live counters a heartbeat reports while the shard runs.
#[derive(Debug, Default)]
pub struct LiveProgress {
    pub members: AtomicU64,
    pub bytes_read: AtomicU64,
    pub json_files: AtomicU64,
    pub rows: AtomicU64,
}

/// A processed shard: its fragment and manifest, written under temporary names.
#[derive(Debug, Clone)]
pub struct ShardOutput {
    /// Fragment file name in `.shardprep/tmp/`.
    pub fragment_tmp: String,
    /// Manifest file name in `.shardprep/tmp/`.
    pub manifest_tmp: String,
    pub manifest: ShardManifest,
}

/// Why a shard could not be processed.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("shard {shard}: cannot open {path}: {source}")]
    Open {
        shard: String,
        path: String,
        source: io::Error,
    },
    #[error("shard {shard}: {what} (at byte offset {offset}{})", member.as_ref().map(|m| format!(", member {m:?}")).unwrap_or_default())]
    Corrupt {
        shard: String,
        what: String,
        offset: u64,
        member: Option<String>,
    },
    #[error(
        "shard {shard}: cannot write {path}: {source}; check free space and permissions of the output directory"
    )]
    Write {
        shard: String,
        path: String,
        source: io::Error,
    },
    #[error("shard {shard}: {source}")]
    Fragment {
        shard: String,
        source: FragmentError,
    },
    #[error(
        "shard {shard}: cannot read the input: {what} (at byte offset {offset}); another attempt will retry"
    )]
    Read {
        shard: String,
        what: String,
        offset: u64,
    },
    #[error("shard {0}: cancelled (lease lost or shutting down)")]
    Cancelled(String),
}

impl ShardError {
    /// How the coordinator should treat this failure: a corrupt tar stays
    /// corrupt, anything else may succeed on another attempt.
    pub fn failure_kind(&self) -> FailureKind {
        if matches!(self, ShardError::Corrupt { .. }) {
            FailureKind::Permanent
        } else {
            FailureKind::Retryable
        }
    }
}

/// A reader that counts the bytes it hands out.
/// Also remembers a failure of the input itself (a disk or network error),
/// so that it is not mistaken for a corrupt tar.
struct Counting<'a, R> {
    inner: R,
    count: &'a AtomicU64,
    failure: &'a RefCell<Option<String>>,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.count.fetch_add(n as u64, Ordering::Relaxed);
                Ok(n)
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    *self.failure.borrow_mut() = Some(e.to_string());
                }
                Err(e)
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Json,
    Image,
    Other,
}

fn kind_of(rel: &Path) -> Kind {
    let name = rel.file_name().map(|n| n.as_bytes()).unwrap_or_default();
    // `*.json` exactly as `find -name '*.json'` and `glob('data/*.json')` match.
    if name.ends_with(b".json") {
        return Kind::Json;
    }
    let ext = match name.iter().rposition(|b| *b == b'.') {
        Some(i) => name[i + 1..].to_ascii_lowercase(),
        None => return Kind::Other,
    };
    match ext.as_slice() {
        b"png" | b"jpg" | b"jpeg" | b"webp" | b"gif" | b"bmp" | b"tif" | b"tiff" => Kind::Image,
        _ => Kind::Other,
    }
}

/// Bookkeeping of one pass.
struct Tally {
    shard: String,
    counts: ShardCounts,
    issues: Vec<MemberIssue>,
    issues_not_listed: u64,
}

impl Tally {
    /// Counts a member whose `size` bytes are all in its file.
    fn extracted(&mut self, size: u64) {
        self.counts.files_extracted += 1;
        self.counts.bytes_written += size;
    }
    fn issue(&mut self, member: &str, kind: &str, detail: impl Into<String>) {
        if self.issues.len() < ISSUE_LIST_CAP {
            self.issues.push(MemberIssue {
                member: member.to_string(),
                kind: kind.to_string(),
                detail: detail.into(),
            });
        } else {
            self.issues_not_listed += 1;
        }
    }
    fn reject(&mut self, member: &str, reason: &str, detail: impl Into<String>) {
        *self
            .counts
            .rejected_members
            .entry(reason.to_string())
            .or_default() += 1;
        let detail = detail.into();
        tracing::warn!(shard = %self.shard, member, reason, "{detail}");
        self.issue(member, reason, detail);
    }
    fn skip(&mut self, member: &str, reason: &str, detail: impl Into<String>) {
        *self.counts.skipped.entry(reason.to_string()).or_default() += 1;
        self.issue(member, reason, detail);
    }
}

/// Hashes of names with the first few names kept for the report.
#[derive(Default)]
struct NameSet {
    hashes: HashSet<u64>,
    names: HashMap<u64, String>,
}

impl NameSet {
    fn insert(&mut self, name: &[u8]) -> bool {
        let h = fnv1a64(name);
        if self.names.len() < NAMES_KEPT {
            self.names
                .entry(h)
                .or_insert_with(|| String::from_utf8_lossy(name).into_owned());
        }
        self.hashes.insert(h)
    }
    /// Names (where kept) of the entries missing from `other`, and their count.
    fn missing_from(&self, other: &NameSet) -> (u64, Vec<String>) {
        let mut n = 0;
        let mut names = Vec::new();
        for h in &self.hashes {
            if !other.hashes.contains(h) {
                n += 1;
                if let Some(name) = self.names.get(h) {
                    names.push(name.clone());
                }
            }
        }
        names.sort();
        (n, names)
    }
}

/// Processes one local shard file from start to end. `cancel` stops it
/// between members (and between chunks of a large member).
pub fn process_shard(
    task: &ShardTask,
    cancel: &AtomicBool,
    live: &LiveProgress,
) -> Result<ShardOutput, ShardError> {
    let file = File::open(&task.shard_path).map_err(|source| ShardError::Open {
        shard: task.shard_name.clone(),
        path: task.shard_path.display().to_string(),
        source,
    })?;
    process_stream(task, file, cancel, live)
}

/// Processes one shard read from `input` (a local file or a remote stream).
pub fn process_stream(
    task: &ShardTask,
    input: impl Read,
    cancel: &AtomicBool,
    live: &LiveProgress,
) -> Result<ShardOutput, ShardError> {
    let started = Instant::now();
    let shard = task.shard_name.clone();
    let file = input;
    let input_failure: RefCell<Option<String>> = RefCell::new(None);
    // A failure of the input (disk, network) is worth retrying; a bad tar is not.
    let corrupt =
        |what: String, offset: u64, member: Option<String>| match input_failure.borrow().clone() {
            Some(why) => ShardError::Read {
                shard: shard.clone(),
                what: why,
                offset,
            },
            None => ShardError::Corrupt {
                shard: shard.clone(),
                what,
                offset,
                member,
            },
        };
    let mut reader = BufReader::with_capacity(
        256 << 10,
        Counting {
            inner: file,
            count: &live.bytes_read,
            failure: &input_failure,
        },
    );
    {
        let head = reader
            .fill_buf()
            .map_err(|e| corrupt(format!("read error: {e}"), 0, None))?;
        if head.is_empty() {
            return Err(corrupt(
                "the file is empty, not a tar archive".into(),
                0,
                None,
            ));
        }
        if head.starts_with(&[0x1f, 0x8b]) {
            return Err(corrupt(
                "the file is gzip-compressed; shardprep reads plain tar shards: decompress it (gunzip) first".into(),
                0,
                None,
            ));
        }
    }

    let tmp_dir = task.layout.tmp_dir();
    let stem_name = shard_file_stem(&shard);
    let fragment_tmp = format!("{stem_name}.{}.parquet", task.lease_id);
    let manifest_tmp = format!("{stem_name}.{}.manifest.json", task.lease_id);
    let files_tmp = tmp_dir.join(format!("{stem_name}.{}.files", task.lease_id));
    let write_err = |path: &Path, source: io::Error| ShardError::Write {
        shard: shard.clone(),
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(&tmp_dir).map_err(|e| write_err(&tmp_dir, e))?;
    let fragment_path = tmp_dir.join(&fragment_tmp);
    let mut fragment =
        FragmentWriter::create(&fragment_path, &task.fields.extra).map_err(|source| {
            ShardError::Fragment {
                shard: shard.clone(),
                source,
            }
        })?;
    let data_root = task.layout.data_dir();
    std::fs::create_dir_all(&data_root).map_err(|e| write_err(&data_root, e))?;
    let writes_files = task.extract || task.write_captions;
    let mut data = DataDir::new(data_root.clone())
        .and_then(|d| d.with_writers(if writes_files { task.write_threads } else { 0 }))
        .map_err(|e| write_err(&data_root, e))?;
    if writes_files && task.data_sync.background_flush() {
        // Writeback overlaps extraction even when the shard's end does not wait
        // for it: a flat directory of small files is flushed 2-3x faster so.
        data = data
            .with_background_flush()
            .map_err(|e| write_err(&data_root, e))?;
    }
    let mut data = data
        .with_log(&files_tmp)
        .map_err(|e| write_err(&files_tmp, e))?;

    let mut tally = Tally {
        shard: shard.clone(),
        counts: ShardCounts::default(),
        issues: Vec::new(),
        issues_not_listed: 0,
    };
    let mut seen_members: HashSet<u64> = HashSet::new();
    let mut images = NameSet::default();
    let mut referenced = NameSet::default();
    let mut captions_written: HashSet<u64> = HashSet::new();
    let mut json_buf: Vec<u8> = Vec::new();
    let mut last_good_end: u64 = 0;
    let keep_going = || !cancel.load(Ordering::Relaxed);

    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| corrupt(format!("not a readable tar: {e}"), 0, None))?;
    for entry in entries {
        if !keep_going() {
            return Err(ShardError::Cancelled(shard.clone()));
        }
        let mut entry = entry.map_err(|e| {
            corrupt(
                format!("broken tar header after the last good member: {e}"),
                last_good_end,
                None,
            )
        })?;
        tally.counts.members += 1;
        live.members.fetch_add(1, Ordering::Relaxed);
        let size = entry.size();
        let data_pos = entry.raw_file_position();
        let member_end = data_pos + size.div_ceil(512) * 512;
        let name_bytes = entry.path_bytes().into_owned();
        let member = String::from_utf8_lossy(&name_bytes).into_owned();
        let etype = entry.header().entry_type();

        let rel = match safe_relative_path(&name_bytes) {
            Ok(rel) => rel,
            Err(why) => {
                tally.reject(
                    &member,
                    why.reason(),
                    "member name would leave data/; not extracted",
                );
                last_good_end = member_end;
                continue;
            }
        };
        if etype.is_dir() {
            if task.extract {
                match data.ensure_dirs(&rel) {
                    Ok(()) => {}
                    Err(PlaceError::Io(p, e)) => return Err(write_err(&p, e)),
                    Err(other) => tally.reject(&member, "unsafe_directory", format!("{other:?}")),
                }
            }
            last_good_end = member_end;
            continue;
        }
        if !(etype.is_file() || etype == tar::EntryType::Continuous) {
            let reason = match etype {
                tar::EntryType::Symlink => "symlink",
                tar::EntryType::Link => "hard_link",
                tar::EntryType::Char | tar::EntryType::Block => "device",
                tar::EntryType::Fifo => "fifo",
                tar::EntryType::GNUSparse => "sparse_file",
                _ => "unsupported_entry_type",
            };
            tally.reject(
                &member,
                reason,
                format!("{etype:?} members are not extracted"),
            );
            last_good_end = member_end;
            continue;
        }
        let top_level = rel.components().count() == 1;
        let rel_bytes = rel.as_os_str().as_bytes();
        if !seen_members.insert(fnv1a64(rel_bytes)) {
            tally.counts.duplicate_members += 1;
            tally.issue(
                &member,
                "duplicate_member",
                "the same name appears again in this shard; the later copy wins",
            );
        }
        if task.shards_in_data_dir && top_level && rel_bytes.ends_with(b".tar") {
            tally.reject(&member, "would_overwrite_input", "a .tar member at the top of data/ could overwrite an input shard (shards and data/ are the same folder); not extracted");
            last_good_end = member_end;
            continue;
        }
        let kind = kind_of(&rel);
        // The seed writes captions after extracting: a caption wins over a `.txt` member of the same name.
        let mut shadowed =
            task.write_captions && top_level && captions_written.contains(&fnv1a64(rel_bytes));
        if shadowed {
            // Was that caption really written? Settle it first.
            data.wait_for_path(&rel);
            settle_writes(&mut data, &mut tally, &mut captions_written)
                .map_err(|(p, e)| write_err(&p, e))?;
            shadowed = captions_written.contains(&fnv1a64(rel_bytes));
        }
        let tag = |caption: bool| WriteTag {
            member: member.clone(),
            caption,
        };

        let truncated = |copied: u64| {
            corrupt(
                format!("the tar is truncated: member data ends after {copied} of {size} bytes"),
                data_pos + copied,
                Some(member.clone()),
            )
        };
        let read_err =
            |e: io::Error| corrupt(format!("read error: {e}"), data_pos, Some(member.clone()));
        // Reads the rest of a member that is not written; `already` bytes were read before.
        let drain = |entry: &mut dyn Read, already: u64| -> Result<(), ShardError> {
            let n = already + io::copy(entry, &mut io::sink()).map_err(read_err)?;
            if n < size { Err(truncated(n)) } else { Ok(()) }
        };
        // Settles a streamed write of this member: `Ok(true)` when it is whole in its file.
        let settle = |res: Result<Result<u64, io::Error>, PlaceError>, tally: &mut Tally| {
            stream_result(
                res,
                tally,
                &member,
                size,
                &keep_going,
                &shard,
                &truncated,
                &read_err,
                &write_err,
            )
        };

        match kind {
            Kind::Json => {
                tally.counts.json_files += 1;
                live.json_files.fetch_add(1, Ordering::Relaxed);
                // Sized read: read_to_end would zero its whole spare capacity
                // on every call through the tar reader (perf: 1% of the run in
                // memset, ~8 KiB per JSON).
                let take = size.min(MAX_JSON_BYTES) as usize;
                json_buf.clear();
                json_buf.resize(take, 0);
                let got = read_full(&mut entry, &mut json_buf).map_err(read_err)?;
                if got < take {
                    return Err(truncated(got as u64));
                }
                let parsed = (size <= MAX_JSON_BYTES && top_level)
                    .then(|| parse_sample(&json_buf, &task.fields));
                if task.extract && !shadowed {
                    let written = if size <= POOL_MAX_FILE {
                        // Counted when the write's outcome comes back.
                        let bytes = std::mem::replace(&mut json_buf, data.buffer());
                        data.queue_bytes(rel.clone(), bytes, tag(false));
                        false
                    } else if size <= MAX_JSON_BYTES {
                        let res = data.write_bytes(&rel, &json_buf);
                        place(&mut tally, &member, res).map_err(|(p, e)| write_err(&p, e))?
                    } else {
                        // Too large to parse: write the part read, then stream the rest.
                        let mut chained = (&json_buf[..]).chain(&mut entry);
                        let res = data.write_stream(&rel, &mut chained, size, &keep_going);
                        settle(res, &mut tally)?
                    };
                    if written {
                        tally.extracted(size);
                    }
                } else if size > MAX_JSON_BYTES {
                    drain(&mut entry, MAX_JSON_BYTES)?;
                }
                if size > MAX_JSON_BYTES {
                    tally.skip(
                        &member,
                        "json_too_large",
                        format!("{size} bytes, more than {MAX_JSON_BYTES}"),
                    );
                } else if !top_level {
                    // The seed's glob('data/*.json') reads only top-level JSONs.
                    tally.skip(
                        &member,
                        "json_in_subdirectory",
                        "only JSONs directly in data/ are samples, as in the seed",
                    );
                } else if let Some(parsed) = parsed {
                    match parsed {
                        Ok(Parsed::NoWidth) => {}
                        Ok(Parsed::Row(row)) => {
                            tally.counts.json_with_width += 1;
                            if task.write_captions {
                                let txt = format!("{}.txt", stem(&row.filename));
                                // Taken back out if the write is refused.
                                captions_written.insert(fnv1a64(txt.as_bytes()));
                                let mut bytes = data.buffer();
                                bytes.extend_from_slice(row.caption.as_bytes());
                                data.queue_bytes(PathBuf::from(txt), bytes, tag(true));
                            }
                            referenced.insert(row.filename.as_bytes());
                            fragment.push(&row).map_err(|source| ShardError::Fragment {
                                shard: shard.clone(),
                                source,
                            })?;
                            live.rows.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(skip) => {
                            if skip.has_width {
                                tally.counts.json_with_width += 1;
                            }
                            tracing::debug!(shard = %shard, member, reason = skip.reason, "{}", skip.detail);
                            tally.skip(&member, skip.reason, skip.detail);
                        }
                    }
                }
            }
            Kind::Image | Kind::Other => {
                if kind == Kind::Image {
                    tally.counts.images += 1;
                    if top_level {
                        images.insert(rel_bytes);
                    }
                } else {
                    tally.counts.other_files += 1;
                }
                if shadowed {
                    tally.reject(&member, "shadowed_by_caption", "a caption file of the same name was written; the caption wins, as in the seed");
                } else if task.extract && size <= POOL_MAX_FILE {
                    let mut bytes = data.buffer();
                    bytes.resize(size as usize, 0);
                    let got = read_full(&mut entry, &mut bytes).map_err(read_err)?;
                    bytes.truncate(got);
                    data.queue_bytes(rel, bytes, tag(false));
                    if (got as u64) < size {
                        // The cut member stays as read so far, as `tar xf` leaves it.
                        data.wait_all();
                        return Err(truncated(got as u64));
                    }
                } else if task.extract {
                    let res = data.write_stream(&rel, &mut entry, size, &keep_going);
                    if settle(res, &mut tally)? {
                        tally.extracted(size);
                    }
                } else {
                    drain(&mut entry, 0)?;
                }
            }
        }
        settle_writes(&mut data, &mut tally, &mut captions_written)
            .map_err(|(p, e)| write_err(&p, e))?;
        last_good_end = member_end;
    }
    data.wait_all();
    settle_writes(&mut data, &mut tally, &mut captions_written)
        .map_err(|(p, e)| write_err(&p, e))?;

    if tally.counts.members == 0 {
        return Err(corrupt(
            "the tar has no members (empty or not a tar archive)".into(),
            0,
            None,
        ));
    }
    let (n, names) = referenced.missing_from(&images);
    tally.counts.json_without_image = n;
    for name in names {
        tally.issue(
            &name,
            "json_without_image",
            "a JSON names this image, but the shard does not contain it",
        );
    }
    let (n, names) = images.missing_from(&referenced);
    tally.counts.images_without_json = n;
    for name in names {
        tally.issue(
            &name,
            "image_without_json",
            "no JSON of the shard names this image",
        );
    }

    let rows = fragment.finish().map_err(|source| ShardError::Fragment {
        shard: shard.clone(),
        source,
    })?;
    tally.counts.rows = rows;
    tally.counts.bytes_read = live.bytes_read.load(Ordering::Relaxed);
    if task.data_sync.per_shard() && writes_files {
        // Extracted files reach the disk before the fragment is committed.
        data.sync().map_err(|e| write_err(&data_root, e))?;
    } else {
        data.stop_background_flush()
            .map_err(|e| write_err(&data_root, e))?;
    }
    data.finish_log().map_err(|e| write_err(&files_tmp, e))?;

    let manifest = ShardManifest {
        shard_name: shard.clone(),
        identity: task.identity,
        lease_id: task.lease_id,
        attempt: task.attempt,
        worker_id: task.worker_id.clone(),
        fragment: format!("{stem_name}.parquet"),
        counts: tally.counts,
        issues: tally.issues,
        issues_not_listed: tally.issues_not_listed,
        elapsed_ms: started.elapsed().as_millis() as u64,
        data_synced: !writes_files || task.data_sync.per_shard(),
        boot_id: durability::boot_id(),
    };
    let manifest_path = tmp_dir.join(&manifest_tmp);
    write_synced(
        &manifest_path,
        &serde_json::to_vec_pretty(&manifest).unwrap_or_default(),
    )
    .map_err(|e| write_err(&manifest_path, e))?;
    Ok(ShardOutput {
        fragment_tmp,
        manifest_tmp,
        manifest,
    })
}

/// Reads until `buf` is full or the source ends; returns the bytes read.
fn read_full(src: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match src.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Writes a small file and syncs it.
pub fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Counts the queued writes whose outcomes are due: files written, captions
/// written, refusals; passes disk errors up.
fn settle_writes(
    data: &mut DataDir,
    tally: &mut Tally,
    captions_written: &mut HashSet<u64>,
) -> Result<(), (PathBuf, io::Error)> {
    while let Some(done) = data.next_done().map_err(PlaceError::into_io)? {
        let caption = done.tag.caption;
        match place(tally, &done.tag.member, done.result)? {
            true if caption => {
                captions_written.insert(fnv1a64(done.rel.as_os_str().as_bytes()));
                tally.counts.captions_written += 1;
            }
            true => tally.extracted(done.size),
            false if caption => {
                captions_written.remove(&fnv1a64(done.rel.as_os_str().as_bytes()));
            }
            false => {}
        }
    }
    Ok(())
}

/// Records a refused placement; passes disk errors up. `Ok(true)` when written.
fn place(
    tally: &mut Tally,
    member: &str,
    res: Result<(), PlaceError>,
) -> Result<bool, (PathBuf, io::Error)> {
    match res {
        Ok(()) => Ok(true),
        Err(PlaceError::Io(p, e)) => Err((p, e)),
        Err(other) => {
            let (reason, path) = place_reason(&other);
            tally.reject(member, reason, format!("not written: {}", path.display()));
            Ok(false)
        }
    }
}

fn place_reason(e: &PlaceError) -> (&'static str, &Path) {
    match e {
        PlaceError::NotADirectory(p) => ("path_through_non_directory", p),
        PlaceError::SymlinkInTheWay(p) => ("symlink_in_the_way", p),
        PlaceError::DirectoryInTheWay(p) => ("directory_in_the_way", p),
        PlaceError::NameTooLong(p) => ("name_too_long", p),
        PlaceError::Io(p, _) => ("io_error", p),
    }
}

#[allow(clippy::too_many_arguments)]
fn stream_result(
    res: Result<Result<u64, io::Error>, PlaceError>,
    tally: &mut Tally,
    member: &str,
    size: u64,
    keep_going: &dyn Fn() -> bool,
    shard: &str,
    truncated: &dyn Fn(u64) -> ShardError,
    read_err: &dyn Fn(io::Error) -> ShardError,
    write_err: &dyn Fn(&Path, io::Error) -> ShardError,
) -> Result<bool, ShardError> {
    match res {
        Ok(Ok(n)) if n == size => Ok(true),
        Ok(Ok(n)) => Err(truncated(n)),
        Ok(Err(_)) if !keep_going() => Err(ShardError::Cancelled(shard.to_string())),
        Ok(Err(e)) => Err(read_err(e)),
        Err(PlaceError::Io(p, e)) => Err(write_err(&p, e)),
        Err(other) => {
            let (reason, path) = place_reason(&other);
            tally.reject(member, reason, format!("not written: {}", path.display()));
            Ok(false)
        }
    }
}

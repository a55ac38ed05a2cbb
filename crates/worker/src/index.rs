//! Index mode: one pass over a tar shard that writes its webshart index
//! (see [`doc`]) and the same parquet rows as the extract pass, and reads
//! only the headers, the JSON members and the first bytes of each image —
//! the rest of every image is seeked over, never read. A remote shard is
//! read the same way, by range requests ([`shardprep_remote::open_ranged`]):
//! the images' bytes are never transferred.
//!
//! The tar is walked by the extract pass's reader ([`TarReader::seeking`]):
//! the same members under the same names (PAX, GNU long names, header-only
//! types, V7 directories), checked as in the extract pass (unsafe names,
//! links and devices are refused and get no entry; duplicates are counted,
//! the later copy wins), and the same errors: a tar cut off mid-member fails
//! with the shard and the member named. GNU sparse members get no entry
//! (`sparse_file`): no offset and length can serve their expanded bytes.

pub mod doc;
pub mod window;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use shardprep_core::durability;
use shardprep_core::fields::FieldMap;
use shardprep_core::layout::{AttemptFiles, OutputLayout, fnv1a64, shard_file_stem};
use shardprep_core::manifest::{MemberIssue, ShardCounts, ShardIdentity, ShardManifest};

use crate::extract::safe_relative_path;
use crate::fragment::FragmentWriter;
use crate::sample::{Parsed, parse_sample};
use crate::shard::input::ShardSource;
use crate::shard::member::{Kind, kind_of};
use crate::shard::{LiveProgress, MAX_JSON_BYTES, ShardError, write_synced};
use crate::tar_reader::{Entry, EntryKind, EntryMeta, Limits, TarReader};
use doc::{FileEntry, caption_of, index_bytes, sample_key};
use shardprep_core::manifest::IndexCounts;
use window::{Cursor, Window};

pub use shardprep_core::layout::INDEX_DIR;

/// Everything needed to index one leased shard.
#[derive(Debug, Clone)]
pub struct IndexTask {
    /// The local tar file (for a remote shard: its redacted URL, for messages).
    pub shard_path: PathBuf,
    /// A remote shard: its URL and the runtime that does the range requests.
    pub remote: Option<(String, tokio::runtime::Handle)>,
    /// The shard's name in the job (relative to the input root).
    pub shard_name: String,
    pub identity: ShardIdentity,
    pub layout: OutputLayout,
    pub fields: FieldMap,
    pub lease_id: u64,
    pub attempt: u32,
    pub worker_id: String,
    /// Sparse members expanding past this are refused (`--max-sparse-size`).
    pub max_sparse_size: u64,
}

/// Counts only index mode has (beside the [`ShardCounts`] of the manifest).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexStats {
    /// Entries in the index (members that are regular files with a safe UTF-8 name).
    pub entries: u64,
    /// Images whose header gave their width and height.
    pub images_with_dimensions: u64,
    /// Images whose header could not be read (no `width`/`height` in their entry).
    pub images_without_dimensions: u64,
    /// Images whose header disagrees with the width/height of their JSON.
    pub dimension_mismatches: u64,
    /// Images whose entry carries `captions` (from the JSON of the same key).
    pub images_with_caption: u64,
    /// Size of the index document in bytes.
    pub index_bytes: u64,
}

/// One indexed file, before anything is written under the output.
#[derive(Debug, Clone)]
pub struct IndexedShard {
    /// The webshart index document (byte-identical for the same tar).
    pub index: Vec<u8>,
    pub counts: ShardCounts,
    pub issues: Vec<MemberIssue>,
    pub issues_not_listed: u64,
    pub stats: IndexStats,
}

/// An indexed shard whose files wait in `.shardprep/tmp/` for the commit.
#[derive(Debug, Clone)]
pub struct IndexOutput {
    /// Index file name in `.shardprep/tmp/` (publish it with [`publish_index`]).
    pub index_tmp: String,
    /// Fragment file name in `.shardprep/tmp/`.
    pub fragment_tmp: String,
    /// Manifest file name in `.shardprep/tmp/`.
    pub manifest_tmp: String,
    pub manifest: ShardManifest,
    pub stats: IndexStats,
}

/// `<shard name without .tar>.json`: where webshart looks for a shard's
/// index relative to its metadata folder. `None` for a name that would
/// leave the folder.
pub fn index_rel_path(shard_name: &str) -> Option<PathBuf> {
    shardprep_core::layout::index_rel_path(shard_name)
}

/// `OUT/index/<shard name without .tar>.json`.
pub fn index_path(layout: &OutputLayout, shard_name: &str) -> Option<PathBuf> {
    layout.index_path(shard_name)
}

/// Moves a verified shard's index from `.shardprep/tmp/` to its place under
/// `OUT/index/` (synced, then renamed, then the folder synced). Returns the path.
pub fn publish_index(
    layout: &OutputLayout,
    shard_name: &str,
    index_tmp: &str,
) -> io::Result<PathBuf> {
    let dest = index_path(layout, shard_name).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("shard name {shard_name:?} cannot name an index file under {INDEX_DIR}/"),
        )
    })?;
    let parent = dest.parent().unwrap_or(layout.root());
    std::fs::create_dir_all(parent)?;
    std::fs::rename(layout.tmp_dir().join(index_tmp), &dest)?;
    File::open(parent)?.sync_all()?;
    Ok(dest)
}

/// Indexes one leased shard: writes the index, the fragment and the
/// manifest under temporary names in `.shardprep/tmp/`. `cancel` stops it
/// between members.
pub fn index_shard(
    task: &IndexTask,
    cancel: &AtomicBool,
    live: &LiveProgress,
) -> Result<IndexOutput, ShardError> {
    let started = Instant::now();
    let shard = &task.shard_name;
    let write_err = |path: &Path, source: io::Error| ShardError::Write {
        shard: shard.clone(),
        path: path.display().to_string(),
        source,
    };
    let tmp_dir = task.layout.tmp_dir();
    std::fs::create_dir_all(&tmp_dir).map_err(|e| write_err(&tmp_dir, e))?;
    let stem = shard_file_stem(shard);
    let AttemptFiles {
        fragment: fragment_tmp,
        manifest: manifest_tmp,
        index: index_tmp,
        ..
    } = AttemptFiles::new(shard, task.lease_id);
    let fragment_path = tmp_dir.join(&fragment_tmp);
    let limits = Limits {
        max_sparse_size: task.max_sparse_size,
        ..Limits::default()
    };
    let win = match &task.remote {
        None => open_local(&task.shard_path, shard)?,
        Some((url, handle)) => open_remote(task, url, handle.clone())?,
    };
    let done = index_window(
        win,
        shard,
        &task.fields,
        limits,
        &fragment_path,
        cancel,
        live,
    )?;
    let index_path = tmp_dir.join(&index_tmp);
    write_synced(&index_path, &done.index).map_err(|e| write_err(&index_path, e))?;
    let manifest = ShardManifest {
        shard_name: shard.clone(),
        identity: task.identity,
        lease_id: task.lease_id,
        attempt: task.attempt,
        worker_id: task.worker_id.clone(),
        fragment: format!("{stem}.parquet"),
        counts: done.counts,
        issues: done.issues,
        issues_not_listed: done.issues_not_listed,
        elapsed_ms: started.elapsed().as_millis() as u64,
        data_synced: true,
        boot_id: durability::boot_id(),
        // Index mode reads no image bytes past their headers: its
        // dimension checks are counted in `counts.index`.
        image_checks: Default::default(),
        image_issues: Vec::new(),
        image_issues_not_listed: 0,
    };
    let manifest_path = tmp_dir.join(&manifest_tmp);
    write_synced(
        &manifest_path,
        &serde_json::to_vec_pretty(&manifest).unwrap_or_default(),
    )
    .map_err(|e| write_err(&manifest_path, e))?;
    Ok(IndexOutput {
        index_tmp,
        fragment_tmp,
        manifest_tmp,
        manifest,
        stats: done.stats,
    })
}

/// Indexes the tar at `path` (named `shard_name` in errors and in the
/// index's `path`), writing its parquet rows to `fragment_path`. The tar is
/// walked by [`TarReader::seeking`] with `limits`: the members, names and
/// errors of the extract pass, and the data it does not need seeked over.
pub fn index_file(
    path: &Path,
    shard_name: &str,
    fields: &FieldMap,
    limits: Limits,
    fragment_path: &Path,
    cancel: &AtomicBool,
    live: &LiveProgress,
) -> Result<IndexedShard, ShardError> {
    let win = open_local(path, shard_name)?;
    index_window(win, shard_name, fields, limits, fragment_path, cancel, live)
}

/// Opens a local shard.
fn open_local(path: &Path, shard_name: &str) -> Result<Window, ShardError> {
    let open_err = |source: io::Error| ShardError::Open {
        shard: shard_name.to_string(),
        path: path.display().to_string(),
        source,
    };
    let file = File::open(path).map_err(open_err)?;
    let filesize = file.metadata().map_err(open_err)?.len();
    Ok(Window::new(file, filesize))
}

/// Opens a remote shard for range requests; its size must be the one the
/// job listed (else the object changed since: a re-run lists it again).
fn open_remote(
    task: &IndexTask,
    url: &str,
    handle: tokio::runtime::Handle,
) -> Result<Window, ShardError> {
    let remote_err = |source| ShardError::Remote {
        shard: task.shard_name.clone(),
        url: shardprep_remote::redact(url),
        source: Box::new(source),
    };
    let options = shardprep_remote::ReadOptions::default();
    let obj = shardprep_remote::open_ranged(url, handle, &options).map_err(remote_err)?;
    if obj.size() != task.identity.size {
        return Err(remote_err(shardprep_remote::RemoteError::Changed {
            url: obj.url().to_string(),
            detail: format!(
                "{} bytes now, {} when the job listed it; run the job again to list it anew",
                obj.size(),
                task.identity.size
            ),
        }));
    }
    Ok(Window::remote(obj))
}

/// Indexes the tar `win` reads (named `shard_name` in errors and in the
/// index's `path`), writing its parquet rows to `fragment_path`; the walk
/// is as in [`index_file`].
pub fn index_window(
    mut win: Window,
    shard_name: &str,
    fields: &FieldMap,
    limits: Limits,
    fragment_path: &Path,
    cancel: &AtomicBool,
    live: &LiveProgress,
) -> Result<IndexedShard, ShardError> {
    let fragment = FragmentWriter::create(fragment_path, &fields.extra).map_err(|source| {
        ShardError::Fragment {
            shard: shard_name.to_string(),
            source,
        }
    })?;
    let source = ShardSource::new(shard_name);
    let mut pass = Pass::new(shard_name, &source, fields, fragment);
    pass.check_start(&mut win)?;
    let mut tar = TarReader::seeking(Cursor::new(win), limits);
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(source.cancelled());
        }
        if !pass.member(&mut tar, live)? {
            break;
        }
        let read = tar.get_mut().window().bytes_read();
        live.bytes_read.store(read, Ordering::Relaxed);
    }
    pass.finish(tar.get_mut().window())
}

/// What the JSON of one sample key says.
struct JsonInfo {
    caption: Option<String>,
    /// Width and height of its row, when it made one.
    dims: Option<(i64, i64)>,
}

/// The state of one pass.
struct Pass<'a> {
    shard: &'a str,
    source: &'a ShardSource,
    fields: &'a FieldMap,
    fragment: FragmentWriter,
    counts: ShardCounts,
    issues: Vec<MemberIssue>,
    issues_not_listed: u64,
    stats: IndexStats,
    files: BTreeMap<String, FileEntry>,
    /// Index keys of the image entries, resolved against `json` at the end.
    image_keys: Vec<String>,
    json: HashMap<String, JsonInfo>,
    seen: HashSet<u64>,
    /// Top-level image names and the images rows name (for the report's pairing counts).
    images: HashSet<String>,
    referenced: HashSet<String>,
    json_buf: Vec<u8>,
}

impl<'a> Pass<'a> {
    fn new(
        shard: &'a str,
        source: &'a ShardSource,
        fields: &'a FieldMap,
        fragment: FragmentWriter,
    ) -> Self {
        Pass {
            shard,
            source,
            fields,
            fragment,
            counts: ShardCounts::default(),
            issues: Vec::new(),
            issues_not_listed: 0,
            stats: IndexStats::default(),
            files: BTreeMap::new(),
            image_keys: Vec::new(),
            json: HashMap::new(),
            seen: HashSet::new(),
            images: HashSet::new(),
            referenced: HashSet::new(),
            json_buf: Vec::new(),
        }
    }

    fn corrupt(&self, what: impl Into<String>, offset: u64, member: Option<&str>) -> ShardError {
        self.source.corrupt(what.into(), offset, member)
    }

    fn read_err(&self, e: &io::Error, offset: u64) -> ShardError {
        ShardError::Read {
            shard: self.shard.to_string(),
            what: e.to_string(),
            offset,
        }
    }

    /// Refuses an empty or compressed file before walking it.
    fn check_start(&mut self, win: &mut Window) -> Result<(), ShardError> {
        let head: Vec<u8> = match win.bytes_at(0) {
            Ok(b) => b.iter().take(2).copied().collect(),
            Err(e) => return Err(self.read_err(&e, 0)),
        };
        if head.is_empty() {
            return Err(self.corrupt("the file is empty, not a tar archive", 0, None));
        }
        if head.starts_with(&[0x1f, 0x8b]) {
            return Err(self.corrupt(
                "the file is gzip-compressed; shardprep reads plain tar shards: decompress it (gunzip) first",
                0,
                None,
            ));
        }
        Ok(())
    }

    fn issue(&mut self, member: &str, kind: &str, detail: impl Into<String>) {
        let (list, n) = (&mut self.issues, &mut self.issues_not_listed);
        shardprep_core::manifest::list_issue(list, n, member, kind, detail);
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

    /// Reads the next member and handles it: checks, then its entry, row
    /// and caption. `Ok(false)` at the end of the archive.
    fn member(
        &mut self,
        tar: &mut TarReader<Cursor>,
        live: &LiveProgress,
    ) -> Result<bool, ShardError> {
        let source = self.source;
        let Some(mut entry) = tar.next_entry().map_err(|e| source.tar_error(e))? else {
            return Ok(false);
        };
        let m = entry.meta().clone();
        self.counts.members += 1;
        live.members.fetch_add(1, Ordering::Relaxed);
        let Some(rel) = self.indexable(&m) else {
            return Ok(true);
        };
        let name = m.name_lossy();
        if !self.seen.insert(fnv1a64(rel.as_os_str().as_bytes())) {
            self.counts.duplicate_members += 1;
            self.issue(
                &name,
                "duplicate_member",
                "the same name appears again in this shard; the later copy wins",
            );
        }
        let top_level = rel.components().count() == 1;
        // JSON keys must be text: a name that is not UTF-8 gets no entry (its row still counts).
        let key = std::str::from_utf8(&m.name).ok().map(str::to_string);
        if key.is_none() {
            self.reject(
                &name,
                "name_not_utf8",
                "webshart index keys are text; not indexed",
            );
        }
        let mut file = FileEntry::plain(m.data_offset, m.size);
        match kind_of(&rel) {
            Kind::Json => {
                live.json_files.fetch_add(1, Ordering::Relaxed);
                self.json(&m, &mut entry, key.as_deref(), top_level, live)?;
            }
            Kind::Image => {
                self.counts.images += 1;
                if top_level {
                    self.images
                        .insert(String::from_utf8_lossy(rel.as_os_str().as_bytes()).into_owned());
                }
                drop(entry);
                self.image(&m, tar.get_mut().window(), &mut file);
                if let Some(k) = &key {
                    self.image_keys.push(k.clone());
                }
            }
            Kind::Other => self.counts.other_files += 1,
        }
        if let Some(k) = key {
            self.files.insert(k, file);
        }
        Ok(true)
    }

    /// The checked path of a member that gets an entry; `None` (refused
    /// and recorded as the extract pass does, or a directory) otherwise.
    fn indexable(&mut self, m: &EntryMeta) -> Option<PathBuf> {
        let name = m.name_lossy();
        let rel = match safe_relative_path(&m.name) {
            Ok(rel) => rel,
            Err(why) => {
                let detail = "member name would leave data/; not indexed";
                self.reject(&name, why.reason(), detail);
                return None;
            }
        };
        if let Some(refusal) = &m.refusal {
            self.reject(&name, refusal.reason, refusal.detail.clone());
            return None;
        }
        match m.kind {
            EntryKind::Directory => return None,
            EntryKind::File | EntryKind::Other(_) => {}
            kind => {
                let reason = refused_type(kind);
                self.reject(&name, reason, format!("{kind:?} members are not indexed"));
                return None;
            }
        }
        if m.sparse.is_some() {
            let detail = "a sparse file's data is not one run of bytes in the tar, so no offset and length can serve it; not indexed (extract mode expands it)";
            self.reject(&name, "sparse_file", detail);
            return None;
        }
        if let EntryKind::Other(flag) = m.kind {
            self.warn_unknown_type(&name, flag);
        }
        Some(rel)
    }

    /// An unknown type flag: indexed as a regular file, as GNU tar extracts it.
    fn warn_unknown_type(&mut self, name: &str, flag: u8) {
        let (key, detail) = crate::shard::unknown_type_warning(flag);
        *self
            .counts
            .member_warnings
            .entry(key.to_string())
            .or_default() += 1;
        self.issue(name, key, detail);
    }

    /// A JSON member: its row (as the extract pass makes it) and its caption.
    fn json(
        &mut self,
        m: &EntryMeta,
        entry: &mut Entry<'_, Cursor>,
        key: Option<&str>,
        top_level: bool,
        live: &LiveProgress,
    ) -> Result<(), ShardError> {
        self.counts.json_files += 1;
        let name = &m.name_lossy();
        if m.size > MAX_JSON_BYTES {
            let detail = format!("{} bytes, more than {MAX_JSON_BYTES}", m.size);
            self.skip(name, "json_too_large", detail);
            return Ok(());
        }
        let mut buf = std::mem::take(&mut self.json_buf);
        buf.clear();
        buf.resize(m.size as usize, 0);
        let mut got = 0;
        while got < buf.len() {
            match entry.read_data(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => return Err(self.source.tar_error(e)),
            }
        }
        buf.truncate(got);
        let mut info = JsonInfo {
            caption: None,
            dims: None,
        };
        if top_level {
            self.row(&buf, name, &mut info, live)?;
        } else {
            self.skip(
                name,
                "json_in_subdirectory",
                "only JSONs directly in data/ are samples, as in the seed",
            );
        }
        if info.caption.is_none() {
            info.caption = caption_of(&buf, &self.fields.caption);
        }
        if let Some(k) = key {
            self.json.insert(sample_key(k).to_string(), info);
        }
        self.json_buf = buf;
        Ok(())
    }

    /// The parquet row of a top-level JSON, exactly as the extract pass makes it.
    fn row(
        &mut self,
        json: &[u8],
        name: &str,
        info: &mut JsonInfo,
        live: &LiveProgress,
    ) -> Result<(), ShardError> {
        match parse_sample(json, self.fields) {
            // Not a sample, but its JSON still names its image.
            Ok(Parsed::NoWidth { filename }) => {
                if let Some(f) = filename {
                    self.referenced.insert(f);
                }
            }
            Ok(Parsed::Row(row)) => {
                self.counts.json_with_width += 1;
                self.referenced.insert(row.filename.clone());
                info.dims = Some((row.width, row.height));
                info.caption = Some(row.caption.clone());
                self.fragment
                    .push(&row)
                    .map_err(|source| ShardError::Fragment {
                        shard: self.shard.to_string(),
                        source,
                    })?;
                live.rows.fetch_add(1, Ordering::Relaxed);
            }
            Err(skip) => {
                if skip.has_width {
                    self.counts.json_with_width += 1;
                }
                self.skip(name, skip.reason, skip.detail);
            }
        }
        Ok(())
    }

    /// An image member: its dimensions from its first bytes.
    fn image(&mut self, m: &EntryMeta, win: &mut Window, entry: &mut FileEntry) {
        let name = &m.name_lossy();
        let dims = imagesize::reader_size(win.member(m.data_offset, m.size));
        match dims {
            Ok(d) if d.width > 0 && d.height > 0 => {
                let w = u32::try_from(d.width).unwrap_or(u32::MAX);
                let h = u32::try_from(d.height).unwrap_or(u32::MAX);
                entry.set_dimensions(w, h);
                self.stats.images_with_dimensions += 1;
            }
            other => {
                self.stats.images_without_dimensions += 1;
                let why = match other {
                    Err(e) => e.to_string(),
                    Ok(d) => format!("{}x{}", d.width, d.height),
                };
                let detail =
                    format!("no width/height from the image header ({why}); the entry has none");
                self.issue(name, "no_image_dimensions", detail);
            }
        }
    }

    /// Pairs images with their JSON's caption, counts, and builds the document.
    fn finish(mut self, win: &Window) -> Result<IndexedShard, ShardError> {
        self.attach_captions();
        let mut missing: Vec<String> = self.referenced.difference(&self.images).cloned().collect();
        missing.sort();
        self.counts.json_without_image = missing.len() as u64;
        for name in missing {
            let detail = "a JSON names this image, but the shard does not contain it";
            self.issue(&name, "json_without_image", detail);
        }
        let mut unnamed: Vec<String> = self.images.difference(&self.referenced).cloned().collect();
        unnamed.sort();
        self.counts.images_without_json = unnamed.len() as u64;
        for name in unnamed {
            self.issue(
                &name,
                "image_without_json",
                "no JSON of the shard names this image",
            );
        }
        self.counts.rows = self
            .fragment
            .finish()
            .map_err(|source| ShardError::Fragment {
                shard: self.shard.to_string(),
                source,
            })?;
        self.counts.bytes_read = win.bytes_read();
        tracing::debug!(shard = %self.shard, bytes_read = self.counts.bytes_read, range_requests = win.requests(), filesize = win.file_len(), "index pass done");
        let index = index_bytes(self.shard, win.file_len(), &self.files);
        self.stats.entries = self.files.len() as u64;
        self.stats.index_bytes = index.len() as u64;
        self.counts.index = IndexCounts {
            entries: self.stats.entries,
            images_with_dimensions: self.stats.images_with_dimensions,
            images_without_dimensions: self.stats.images_without_dimensions,
            dimension_mismatches: self.stats.dimension_mismatches,
            images_with_caption: self.stats.images_with_caption,
        };
        Ok(IndexedShard {
            index,
            counts: self.counts,
            issues: self.issues,
            issues_not_listed: self.issues_not_listed,
            stats: self.stats,
        })
    }

    /// Gives each image entry its JSON's caption; reports disagreeing sizes.
    fn attach_captions(&mut self) {
        let keys = std::mem::take(&mut self.image_keys);
        let mut mismatches = Vec::new();
        for name in keys {
            let Some(info) = self.json.get(sample_key(&name)) else {
                continue;
            };
            let Some(entry) = self.files.get_mut(&name) else {
                continue;
            };
            if entry.captions.is_none()
                && let Some(c) = &info.caption
            {
                entry.captions = Some(c.clone());
                self.stats.images_with_caption += 1;
            }
            if let (Some((jw, jh)), Some(w), Some(h)) = (info.dims, entry.width, entry.height)
                && (i64::from(w), i64::from(h)) != (jw, jh)
            {
                mismatches.push((
                    name,
                    format!("image header {w}x{h}, JSON {jw}x{jh}; the index has the header's"),
                ));
            }
        }
        self.stats.dimension_mismatches = mismatches.len() as u64;
        for (name, detail) in mismatches {
            self.issue(&name, "dimensions_disagree", detail);
        }
    }
}

/// The report key of a member type that is not indexed (as the extract pass names it).
fn refused_type(kind: EntryKind) -> &'static str {
    crate::shard::refused_entry_type(kind).unwrap_or("unsupported_entry_type")
}

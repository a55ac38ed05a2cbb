//! Per-shard counts, and the manifest committed beside each parquet fragment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::depth::CheckDepth;
use crate::issue::IssueKind;

/// How many problems of each shard are listed by name (the counts are always complete).
pub const ISSUE_LIST_CAP: usize = 100;

/// What one pass over a shard found and wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardCounts {
    /// Tar entries seen (all types).
    pub members: u64,
    /// Bytes consumed from the tar stream.
    pub bytes_read: u64,
    /// Bytes of member data written into `data/`.
    pub bytes_written: u64,
    /// Members ending in `.json` (what `find data -name '*.json'` counts).
    pub json_files: u64,
    /// JSONs that have the width field (the seed's samples).
    pub json_with_width: u64,
    /// Members ending in `.png`, `.jpg`, `.jpeg` (any case), or other image types.
    pub images: u64,
    /// Other regular members (extracted as they are).
    pub other_files: u64,
    /// Files written into `data/` (members, not captions).
    pub files_extracted: u64,
    /// `data/<stem>.txt` files written.
    pub captions_written: u64,
    /// Rows in the fragment.
    pub rows: u64,
    /// JSONs with width that were not turned into a row, by reason.
    pub skipped: BTreeMap<String, u64>,
    /// Members not extracted (unsafe path, link, device...), by reason.
    pub rejected_members: BTreeMap<String, u64>,
    /// Rows whose image file is not in the shard.
    pub json_without_image: u64,
    /// Image members that no JSON of the shard names.
    pub images_without_json: u64,
    /// Member names seen twice in the shard (the later one wins on disk).
    pub duplicate_members: u64,
    /// `data/<stem>.txt` files written for extracted images that no row
    /// captions (their JSON's caption text, else empty), so that a trainer
    /// walking `data/` finds a caption file beside every image. Not in
    /// `captions_written`, which stays the seed's count.
    #[serde(default)]
    pub captions_for_unlisted_images: u64,
    /// Row captions that the textfile and parquet modes will read
    /// differently, by kind (`newline`, `surrounding_whitespace`): warnings,
    /// the rows are kept as they are.
    #[serde(default)]
    pub caption_warnings: BTreeMap<String, u64>,
    /// Members handled with a warning, by kind (`unknown_entry_type`: an
    /// unknown type flag, extracted as a regular file as GNU tar does).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub member_warnings: BTreeMap<String, u64>,
    /// What the webshart index of the shard holds (`--mode index`; zero otherwise).
    #[serde(default, skip_serializing_if = "IndexCounts::is_zero")]
    pub index: IndexCounts,
    /// Problems found in the images themselves, by reason (`dims_mismatch`,
    /// `unreadable_image_header`, `decode_failed`, `too_many_pixels`,
    /// `hash_mismatch`); the images are listed in the issues.
    #[serde(default)]
    pub image_problems: BTreeMap<String, u64>,
    /// Top-level images whose header (and, when asked, decode and hashes)
    /// were checked.
    #[serde(default)]
    pub images_checked: u64,
    /// Images the trainer gets no sample for, by reason: those the parquet
    /// has no row for (`no_width`: a JSON without width names it, the seed's
    /// rule; `bad_image`: its row was left out by `--on-bad-image skip`;
    /// `no_row`: no JSON of the shard made a row for it; `in_subdirectory`:
    /// not directly in `data/`). The same in every mode: index mode gives
    /// these images no index entry.
    #[serde(default)]
    pub images_left_out: BTreeMap<String, u64>,
}

/// Counts of a shard's webshart index.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexCounts {
    /// Entries in the index (members with a safe UTF-8 name).
    pub entries: u64,
    /// Images whose header gave their width and height.
    pub images_with_dimensions: u64,
    /// Images whose header could not be read (their entry has no width/height).
    pub images_without_dimensions: u64,
    /// Images whose header disagrees with the width/height of their JSON.
    pub dimension_mismatches: u64,
    /// Image entries that carry `captions`.
    pub images_with_caption: u64,
}

impl IndexCounts {
    /// Whether every count is zero (an extract-mode shard).
    pub fn is_zero(&self) -> bool {
        *self == IndexCounts::default()
    }
    /// Adds another shard's counts into this one.
    pub fn add(&mut self, o: &IndexCounts) {
        self.entries += o.entries;
        self.images_with_dimensions += o.images_with_dimensions;
        self.images_without_dimensions += o.images_without_dimensions;
        self.dimension_mismatches += o.dimension_mismatches;
        self.images_with_caption += o.images_with_caption;
    }
}

impl ShardCounts {
    /// Adds another shard's counts into this one.
    pub fn add(&mut self, o: &ShardCounts) {
        self.members += o.members;
        self.bytes_read += o.bytes_read;
        self.bytes_written += o.bytes_written;
        self.json_files += o.json_files;
        self.json_with_width += o.json_with_width;
        self.images += o.images;
        self.other_files += o.other_files;
        self.files_extracted += o.files_extracted;
        self.captions_written += o.captions_written;
        self.rows += o.rows;
        for (k, v) in &o.skipped {
            *self.skipped.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.rejected_members {
            *self.rejected_members.entry(k.clone()).or_default() += v;
        }
        self.json_without_image += o.json_without_image;
        self.images_without_json += o.images_without_json;
        self.duplicate_members += o.duplicate_members;
        self.captions_for_unlisted_images += o.captions_for_unlisted_images;
        for (k, v) in &o.caption_warnings {
            *self.caption_warnings.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.member_warnings {
            *self.member_warnings.entry(k.clone()).or_default() += v;
        }
        self.index.add(&o.index);
        for (k, v) in &o.image_problems {
            *self.image_problems.entry(k.clone()).or_default() += v;
        }
        self.images_checked += o.images_checked;
        for (k, v) in &o.images_left_out {
            *self.images_left_out.entry(k.clone()).or_default() += v;
        }
    }

    /// Total of skipped samples over all reasons.
    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }
}

/// How far a pass over a shard has got (what a heartbeat reports).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardProgress {
    pub members: u64,
    pub bytes_read: u64,
    pub json_files: u64,
    pub rows: u64,
}

impl From<&ShardCounts> for ShardProgress {
    /// The progress of a finished pass.
    fn from(c: &ShardCounts) -> Self {
        ShardProgress {
            members: c.members,
            bytes_read: c.bytes_read,
            json_files: c.json_files,
            rows: c.rows,
        }
    }
}

/// One named problem inside a shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberIssue {
    /// The member's name in the tar (lossy UTF-8).
    pub member: String,
    /// A short machine-readable kind, e.g. `unsafe_path`, `invalid_width`.
    pub kind: String,
    /// What exactly was wrong.
    pub detail: String,
}

/// Lists a problem in `list` while it has fewer than [`ISSUE_LIST_CAP`],
/// else counts it in `not_listed`.
pub fn list_issue(
    list: &mut Vec<MemberIssue>,
    not_listed: &mut u64,
    member: &str,
    kind: IssueKind,
    detail: impl Into<String>,
) {
    if list.len() < ISSUE_LIST_CAP {
        list.push(MemberIssue {
            member: member.to_string(),
            kind: kind.as_str().to_string(),
            detail: detail.into(),
        });
    } else {
        *not_listed += 1;
    }
}

/// Identity of an input shard: a changed shard is redone on resume.
///
/// Local shards: size, mtime, inode and ctime (a `cp` over the file plus
/// `touch -r` keeps size and mtime but not ctime; a new file gets a new
/// inode). Remote shards: size and a hash of the ETag in `mtime_ns`; inode
/// and ctime stay 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardIdentity {
    pub size: u64,
    pub mtime_ns: i64,
    /// Inode number (0: unknown, e.g. a manifest written before it was kept).
    #[serde(default)]
    pub inode: u64,
    /// Status-change time in nanoseconds (0: unknown).
    #[serde(default)]
    pub ctime_ns: i64,
}

impl ShardIdentity {
    /// Whether `now` is the same input as the one this identity was taken
    /// of. Inode and ctime are compared only when both sides know them, so
    /// that manifests of older versions still recover.
    pub fn same_input(&self, now: &ShardIdentity) -> bool {
        let known = |a: u64, b: u64| a == 0 || b == 0 || a == b;
        self.size == now.size
            && self.mtime_ns == now.mtime_ns
            && known(self.inode, now.inode)
            && known(self.ctime_ns as u64, now.ctime_ns as u64)
    }
}

/// Written next to a committed fragment; its presence marks the shard done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardManifest {
    pub shard_name: String,
    pub identity: ShardIdentity,
    pub lease_id: u64,
    pub attempt: u32,
    pub worker_id: String,
    /// File name of the fragment inside the fragments directory.
    pub fragment: String,
    pub counts: ShardCounts,
    /// Problems listed by name, at most [`ISSUE_LIST_CAP`].
    pub issues: Vec<MemberIssue>,
    /// Problems beyond the listed ones.
    pub issues_not_listed: u64,
    pub elapsed_ms: u64,
    /// Whether the shard's `data/` files were flushed to disk before the
    /// commit (see [`crate::durability`]). Older manifests: they were.
    #[serde(default = "yes")]
    pub data_synced: bool,
    /// Boot id of the worker's machine when it committed (empty: unknown).
    #[serde(default)]
    pub boot_id: String,
    /// The image checks this pass made (older manifests: the header only).
    #[serde(default)]
    pub image_checks: ImageChecks,
    /// Images with problems (counted in `counts.image_problems`), listed by
    /// name and reason, at most [`ISSUE_LIST_CAP`].
    #[serde(default)]
    pub image_issues: Vec<MemberIssue>,
    /// Image problems beyond the listed ones.
    #[serde(default)]
    pub image_issues_not_listed: u64,
}

/// Size and CRC-32 of a file a commit published whole (a shard's index
/// file), recorded in the commit so that a re-run finds it changed: by its
/// size at [`CheckDepth::Sizes`], by its bytes at [`CheckDepth::Checksums`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSeal {
    pub size: u64,
    pub crc32: u32,
}

impl FileSeal {
    /// The seal of the file at `path` as it is now (reads it).
    pub fn of(path: &std::path::Path) -> std::io::Result<FileSeal> {
        let size = std::fs::metadata(path)?.len();
        let crc32 = crate::durability::file_crc(path)?;
        Ok(FileSeal { size, crc32 })
    }

    /// Why the file at `path` is no longer the one sealed, if it is not.
    pub fn damage(&self, path: &std::path::Path, depth: CheckDepth) -> Option<String> {
        crate::durability::damage(path, Some(self.size), Some(self.crc32), depth)
    }
}

/// Derived files sealed when they were written, by their path under
/// `OUT/`: what the judge compares them with (sizes by default, checksums
/// with `--deep`), so that no derived file is trusted blindly.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Seals(BTreeMap<String, FileSeal>);

impl Seals {
    /// Whether nothing is sealed (a commit or report of an older version).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Seals the regular file at `file` (read now) under `published`, its
    /// path below `root`; symbolic links are not sealed (they point at inputs).
    pub fn seal(&mut self, root: &Path, published: &Path, file: &Path) -> std::io::Result<()> {
        if !std::fs::symlink_metadata(file)?.is_file() {
            return Ok(());
        }
        let rel = published.strip_prefix(root).unwrap_or(published);
        self.0
            .insert(rel.to_string_lossy().into_owned(), FileSeal::of(file)?);
        Ok(())
    }

    /// Every sealed file under `root` that is not as sealed at `depth`:
    /// its path and why.
    pub fn damage(&self, root: &Path, depth: CheckDepth) -> Vec<(PathBuf, String)> {
        self.0
            .iter()
            .filter_map(|(rel, seal)| {
                let path = root.join(rel);
                let inside = Path::new(rel)
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)));
                if !inside {
                    return Some((path, "not a path inside the output".into()));
                }
                let why = seal.damage(&path, depth)?;
                Some((path, why))
            })
            .collect()
    }
}

/// The image checks a job asks for, as its flags spell them (parsed by the
/// worker). The default is the seed's rows: dimensions from the JSON, no
/// decode, no hashes, bad images kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageChecks {
    /// Where the table's `width`/`height` come from: `json` (or empty) or `image`.
    #[serde(default)]
    pub dims: String,
    /// Decode every image fully.
    #[serde(default)]
    pub decode: bool,
    /// Leave out the rows (and captions) of bad images.
    #[serde(default)]
    pub skip_bad: bool,
    /// Hash fields verified against the image bytes, `NAME=ALGO`.
    #[serde(default)]
    pub hash_fields: Vec<String>,
    /// Refuse to decode images claiming more pixels (`0`: the default cap).
    #[serde(default)]
    pub max_pixels: u64,
}

fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_including_caption_extras_and_old_manifests_still_read() {
        let mut a = ShardCounts {
            captions_for_unlisted_images: 2,
            ..Default::default()
        };
        a.caption_warnings.insert("newline".into(), 1);
        let mut total = ShardCounts::default();
        total.add(&a);
        total.add(&a);
        assert_eq!(total.captions_for_unlisted_images, 4);
        assert_eq!(total.caption_warnings["newline"], 2);
        let mut old = serde_json::to_value(ShardCounts::default()).unwrap();
        let o = old.as_object_mut().unwrap();
        o.remove("captions_for_unlisted_images");
        o.remove("caption_warnings");
        let back: ShardCounts = serde_json::from_value(old).unwrap();
        assert_eq!(back, ShardCounts::default());
    }
}

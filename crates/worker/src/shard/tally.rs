//! The bookkeeping of one pass: counts, problems listed by name (capped),
//! and the sets of names compared at the shard's end.

use foldhash::{HashMap, HashSet};

use shardprep_core::issue::IssueKind;
use shardprep_core::layout::fnv1a64;
use shardprep_core::manifest::{MemberIssue, ShardCounts, list_issue};

use super::captions::CaptionWarning;

/// Names kept for listing problems found only at the end of a shard.
const NAMES_KEPT: usize = 4096;

/// Counts and listed issues of one pass.
pub struct Tally {
    shard: String,
    pub counts: ShardCounts,
    pub issues: Vec<MemberIssue>,
    pub issues_not_listed: u64,
    /// Problems of the images themselves, listed apart.
    pub image_issues: Vec<MemberIssue>,
    pub image_issues_not_listed: u64,
    /// Which images the trainer gets a sample for (see [`Tally::left_out`]).
    pub(super) samples: Samples,
}

/// The images a row was written for, and why others got none.
#[derive(Default)]
pub(super) struct Samples {
    /// Images named by a written row.
    pub rows: NameSet,
    /// Images named by a JSON without width.
    pub no_width: NameSet,
    /// Images whose row `--on-bad-image skip` left out.
    pub bad: NameSet,
    /// Image members not directly in `data/`.
    pub nested: NameSet,
}

impl Tally {
    pub(super) fn new(shard: &str) -> Self {
        Tally {
            shard: shard.to_string(),
            counts: ShardCounts::default(),
            issues: Vec::new(),
            issues_not_listed: 0,
            image_issues: Vec::new(),
            image_issues_not_listed: 0,
            samples: Samples::default(),
        }
    }

    /// Counts the images no row was written for, by reason
    /// (`images`: the top-level images of the shard).
    pub(super) fn left_out(&mut self, images: &NameSet) {
        let mut add = |reason: IssueKind, n: u64| {
            if n > 0 {
                *self
                    .counts
                    .images_left_out
                    .entry(reason.as_str().into())
                    .or_default() += n;
            }
        };
        let s = &self.samples;
        let (mut bad, mut no_width, mut no_row) = (0, 0, 0);
        for h in images.hashes.iter().filter(|h| !s.rows.hashes.contains(h)) {
            if s.bad.hashes.contains(h) {
                bad += 1;
            } else if s.no_width.hashes.contains(h) {
                no_width += 1;
            } else {
                no_row += 1;
            }
        }
        add(IssueKind::BadImage, bad);
        add(IssueKind::NoWidth, no_width);
        add(IssueKind::NoRow, no_row);
        add(IssueKind::InSubdirectory, s.nested.hashes.len() as u64);
    }

    /// Counts a member whose `size` bytes are all in its file.
    pub(super) fn extracted(&mut self, size: u64) {
        self.counts.files_extracted += 1;
        self.counts.bytes_written += size;
    }

    /// Lists a problem by name while the list has room, else counts it.
    pub(super) fn issue(&mut self, member: &str, kind: IssueKind, detail: impl Into<String>) {
        list_issue(
            &mut self.issues,
            &mut self.issues_not_listed,
            member,
            kind,
            detail,
        );
    }

    /// Counts and lists (while the list has room) a problem of an image.
    pub(super) fn image_problem(&mut self, image: &str, reason: IssueKind, detail: &str) {
        *self
            .counts
            .image_problems
            .entry(reason.as_str().to_string())
            .or_default() += 1;
        tracing::debug!(shard = %self.shard, image, %reason, "{detail}");
        let (list, n) = (&mut self.image_issues, &mut self.image_issues_not_listed);
        list_issue(list, n, image, reason, detail);
    }

    /// A member not extracted, for `reason`.
    pub(crate) fn reject(&mut self, member: &str, reason: IssueKind, detail: impl Into<String>) {
        *self
            .counts
            .rejected_members
            .entry(reason.as_str().to_string())
            .or_default() += 1;
        let detail = detail.into();
        tracing::warn!(shard = %self.shard, member, %reason, "{detail}");
        self.issue(member, reason, detail);
    }

    /// A member handled, with a warning of kind `key` (it is still extracted).
    pub(super) fn member_warning(
        &mut self,
        member: &str,
        key: IssueKind,
        detail: impl Into<String>,
    ) {
        *self
            .counts
            .member_warnings
            .entry(key.as_str().to_string())
            .or_default() += 1;
        let detail = detail.into();
        tracing::warn!(shard = %self.shard, member, %key, "{detail}");
        self.issue(member, key, detail);
    }

    /// A JSON with width that did not become a row, for `reason`.
    pub(super) fn skip(&mut self, member: &str, reason: IssueKind, detail: impl Into<String>) {
        *self
            .counts
            .skipped
            .entry(reason.as_str().to_string())
            .or_default() += 1;
        self.issue(member, reason, detail);
    }

    /// A row whose caption textfile and parquet modes read differently.
    pub(super) fn caption_warning(&mut self, member: &str, w: &CaptionWarning) {
        *self
            .counts
            .caption_warnings
            .entry(w.key.to_string())
            .or_default() += 1;
        self.issue(member, w.issue, w.detail);
    }

    /// Counts and lists the rows whose image is not in the shard and the
    /// images no row names.
    pub(super) fn cross_check(&mut self, referenced: &NameSet, images: &NameSet) {
        let (n, names) = referenced.missing_from(images);
        self.counts.json_without_image = n;
        for name in names {
            self.issue(
                &name,
                IssueKind::JsonWithoutImage,
                "a JSON names this image, but the shard does not contain it",
            );
        }
        let (n, names) = images.missing_from(referenced);
        self.counts.images_without_json = n;
        for name in names {
            self.issue(
                &name,
                IssueKind::ImageWithoutJson,
                "no JSON of the shard names this image",
            );
        }
    }
}

/// Hashes of names with the first few names kept for the report.
#[derive(Default)]
pub(crate) struct NameSet {
    hashes: HashSet<u64>,
    names: HashMap<u64, String>,
}

impl NameSet {
    pub(crate) fn insert(&mut self, name: &[u8]) -> bool {
        let h = fnv1a64(name);
        if self.names.len() < NAMES_KEPT {
            self.names
                .entry(h)
                .or_insert_with(|| String::from_utf8_lossy(name).into_owned());
        }
        self.hashes.insert(h)
    }

    /// Keeps only the entries whose hash is in `live`.
    pub(crate) fn retain(&mut self, live: &HashSet<u64>) {
        self.hashes.retain(|h| live.contains(h));
        self.names.retain(|h, _| live.contains(h));
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

//! `shardprep verify OUT` on an index-mode output (`--mode index`): every
//! done shard has its webshart index, every entry lies inside its tar (whose
//! size is the index's `filesize`), every image entry with dimensions starts
//! with an image signature at its `offset`, the counts match the report, and
//! no index is there for a shard that is not done.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde_json::Value;
use shardprep_core::layout::OutputLayout;
use shardprep_core::manifest::IndexCounts;

use crate::findings::{Findings, LISTED};
use crate::index_file::{self, IndexEntry};
use crate::page::stats::Stats;
use crate::report::{Report, ShardPhase};

/// Member endings the index pass treats as images (as the extract pass counts them).
const IMAGE_EXTS: [&str; 8] = ["png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff"];

/// Whether `head` starts like a PNG, JPEG, WebP, GIF, BMP or TIFF file.
pub fn has_image_signature(head: &[u8]) -> bool {
    head.starts_with(b"\x89PNG\r\n\x1a\n")
        || head.starts_with(&[0xff, 0xd8, 0xff])
        || (head.len() >= 12 && head.starts_with(b"RIFF") && &head[8..12] == b"WEBP")
        || head.starts_with(b"GIF87a")
        || head.starts_with(b"GIF89a")
        || head.starts_with(b"BM")
        || head.starts_with(b"II*\0")
        || head.starts_with(b"MM\0*")
}

fn is_image(name: &str) -> bool {
    name.rsplit_once('.')
        .is_some_and(|(_, ext)| IMAGE_EXTS.contains(&ext.to_ascii_lowercase().as_str()))
}

/// What the checks of all shards found, totalled.
#[derive(Default)]
struct Tally {
    counts: IndexCounts,
    /// Problems of each kind so far (to cap the listing).
    listed: u64,
    over_cap: u64,
}

impl Tally {
    fn problem(&mut self, f: &mut Findings, msg: String) {
        self.listed += 1;
        if self.listed <= LISTED as u64 {
            f.problems.push(msg);
        } else {
            self.over_cap += 1;
        }
    }
}

/// The folder of the tars: the webshart entry's `source` when it is a
/// folder (also for an input list), else the report's `input`.
fn tars_folder(layout: &OutputLayout, report: &Report) -> Option<PathBuf> {
    let entry: Option<Value> = std::fs::read(layout.backend_path())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let source = entry.as_ref().and_then(|e| e[0]["source"].as_str());
    match source.map(PathBuf::from) {
        Some(dir) if dir.is_absolute() && dir.is_dir() => Some(dir),
        _ => (!report.input.is_empty()).then(|| PathBuf::from(&report.input)),
    }
}

/// Checks the indexes of the done shards the report lists, with the tars
/// under the entry's `source` folder (remote tars: without reading them).
pub fn check_index_output(layout: &OutputLayout, report: &Report, f: &mut Findings) {
    let Some(input) = tars_folder(layout, report) else {
        f.problems.push(
            "report.json names no input folder: the index cannot be checked against the tars"
                .into(),
        );
        return;
    };
    let remote = shardprep_remote::is_remote(&report.input);
    let mut tally = Tally::default();
    let mut expected = HashSet::new();
    let mut shape = Stats::of_indexes();
    let done: Vec<_> = report
        .shards
        .iter()
        .filter(|s| s.state == ShardPhase::Done)
        .collect();
    let checked = check_shards(layout, &input, remote, &done);
    for (s, found) in done.iter().zip(checked) {
        let name = s.name.as_str();
        let Some((path, counts, problems, unlisted, stats)) = found else {
            tally.problem(f, format!("shard {name:?} cannot name an index file"));
            continue;
        };
        expected.insert(path);
        shape.merge(&stats);
        add(&mut tally.counts, &counts);
        for p in problems {
            tally.problem(f, p);
        }
        // Problems past the cap inside the shard's own check.
        tally.listed += unlisted;
        tally.over_cap += unlisted;
        let entries = s.counts.as_ref().map_or(0, |c| c.index.entries);
        if counts.entries != entries {
            let msg = format!(
                "index of shard {name} has {} entries, report.json says {entries}",
                counts.entries
            );
            tally.problem(f, msg);
        }
    }
    f.shape = Some(shape);
    check_stray(layout, &expected, &mut tally, f);
    check_totals(report, &tally.counts, f);
    if tally.over_cap > 0 {
        f.problems
            .push(format!("{} more index problems not listed", tally.over_cap));
    }
    if remote && !done.is_empty() {
        f.checked.push(format!(
            "the tars are remote ({}): entries checked against the size each shard had when indexed; image signatures not read (one request per image)",
            input.display()
        ));
    }
    if tally.listed == 0 {
        f.checked.push(format!(
            "{} shards have their index: {} entries, all inside their tars; {} images with dimensions start with an image signature",
            done.len(),
            tally.counts.entries,
            tally.counts.images_with_dimensions
        ));
    }
}

fn add(a: &mut IndexCounts, b: &IndexCounts) {
    a.entries += b.entries;
    a.images_with_dimensions += b.images_with_dimensions;
    a.images_without_dimensions += b.images_without_dimensions;
    a.images_with_caption += b.images_with_caption;
}

/// One done shard's index checked: its path, its counts, its problems,
/// how many more it found past the listing cap and its samples' shape
/// (`None`: its name cannot name an index file).
type ShardFound = Option<(PathBuf, IndexCounts, Vec<String>, u64, Stats)>;

/// Checks the done shards' indexes on two threads (each index is parsed
/// and its images' first bytes read: the end of every index job waits for
/// it); the results come back in shard order.
fn check_shards(
    layout: &OutputLayout,
    input: &Path,
    remote: bool,
    done: &[&crate::report::ShardReport],
) -> Vec<ShardFound> {
    let one = |s: &&crate::report::ShardReport| -> ShardFound {
        let name = s.name.as_str();
        let path = layout.index_path(name)?;
        let tar = if remote {
            Tar::Remote(listed_size(layout, name))
        } else {
            Tar::Local(input.join(name))
        };
        let (mut tally, mut found) = (Tally::default(), Findings::default());
        let mut stats = Stats::default();
        check_shard(&path, &tar, name, (&mut tally, &mut found), &mut stats);
        Some((path, tally.counts, found.problems, tally.over_cap, stats))
    };
    let half = done.len().div_ceil(2);
    let (first, second) = done.split_at(half);
    std::thread::scope(|scope| {
        let later = scope.spawn(|| second.iter().map(one).collect::<Vec<_>>());
        let mut all: Vec<ShardFound> = first.iter().map(one).collect();
        match later.join() {
            Ok(rest) => all.extend(rest),
            // A panic on that thread: check its half here instead.
            Err(_) => all.extend(second.iter().map(one)),
        }
        all
    })
}

/// Where a shard's bytes are checked.
enum Tar {
    /// A local tar: its size and image signatures are read.
    Local(PathBuf),
    /// A remote tar: only the size its commit recorded (if readable).
    Remote(Option<u64>),
}

/// The size of a shard as its committed manifest recorded it.
fn listed_size(layout: &OutputLayout, name: &str) -> Option<u64> {
    let bytes = std::fs::read(layout.manifest_path(name)).ok()?;
    let m: shardprep_core::manifest::ShardManifest = serde_json::from_slice(&bytes).ok()?;
    Some(m.identity.size)
}

/// One shard's index against its tar; its images counted into `stats`
/// when the whole file reads.
fn check_shard(
    index: &Path,
    tar: &Tar,
    name: &str,
    (tally, f): (&mut Tally, &mut Findings),
    stats: &mut Stats,
) {
    let unreadable = |e: String| {
        format!(
            "shard {name} is done but its index {} is missing or unreadable ({e}); run the job again to redo it",
            index.display()
        )
    };
    let bytes = match std::fs::read(index) {
        Ok(b) => b,
        Err(e) => return tally.problem(f, unreadable(e.to_string())),
    };
    let (file, size) = match tar {
        Tar::Local(path) => match File::open(path) {
            Ok(file) => {
                let size = file.metadata().map(|m| m.len()).unwrap_or(0);
                (Some(file), size)
            }
            Err(e) => {
                return tally.problem(f, format!("cannot open shard {}: {e}", path.display()));
            }
        },
        Tar::Remote(Some(size)) => (None, *size),
        Tar::Remote(None) => {
            let msg = format!(
                "shard {name} is done but its manifest is missing or unreadable; run the job again to redo it"
            );
            return tally.problem(f, msg);
        }
    };
    // Entries are checked as they are read; what they found counts only
    // when the whole file reads.
    let (mut entries, mut found) = (Tally::default(), Findings::default());
    let mut shape = Stats::default();
    let head = index_file::parse(&bytes, &mut |member, e| {
        check_entry(
            file.as_ref(),
            size,
            name,
            member,
            e,
            &mut entries,
            &mut found,
        );
        shape.add_index_entry(member, e);
    });
    let head = match head {
        Ok(head) => head,
        Err(e) => return tally.problem(f, unreadable(e)),
    };
    if head.filesize != Some(size) {
        let said = head.filesize.map_or("none".to_string(), |n| n.to_string());
        let msg = format!(
            "index of shard {name}: filesize {said} but the tar has {size} bytes (the tar changed? run the job again)"
        );
        tally.problem(f, msg);
    }
    if !head.has_files {
        return tally.problem(f, format!("index of shard {name} has no \"files\" object"));
    }
    add(&mut tally.counts, &entries.counts);
    stats.merge(&shape);
    for p in found.problems {
        tally.problem(f, p);
    }
    tally.listed += entries.over_cap;
    tally.over_cap += entries.over_cap;
}

/// One entry: inside the tar; an image with dimensions starts with a signature.
fn check_entry(
    file: Option<&File>,
    size: u64,
    shard: &str,
    member: &str,
    e: &IndexEntry<'_>,
    tally: &mut Tally,
    f: &mut Findings,
) {
    tally.counts.entries += 1;
    let (Some(offset), Some(length)) = (e.offset, e.length) else {
        let msg = format!("index of shard {shard}: entry {member:?} has no offset/length");
        return tally.problem(f, msg);
    };
    if offset.checked_add(length).is_none_or(|end| end > size) {
        let msg = format!(
            "index of shard {shard}: entry {member:?} ({offset}+{length}) ends past the tar's {size} bytes"
        );
        return tally.problem(f, msg);
    }
    if e.captions.is_some() && is_image(member) {
        tally.counts.images_with_caption += 1;
    }
    if !is_image(member) {
        return;
    }
    if e.width.is_none() {
        tally.counts.images_without_dimensions += 1;
        return;
    }
    tally.counts.images_with_dimensions += 1;
    let Some(file) = file else { return };
    let mut head = [0u8; 12];
    let n = file.read_at(&mut head, offset).unwrap_or(0);
    if !has_image_signature(&head[..n.min(length as usize)]) {
        let msg = format!(
            "index of shard {shard}: entry {member:?} at offset {offset} does not start with an image signature (the index does not match the tar)"
        );
        tally.problem(f, msg);
    }
}

/// Index files of shards that are not done (a failed shard gets none).
fn check_stray(
    layout: &OutputLayout,
    expected: &HashSet<PathBuf>,
    tally: &mut Tally,
    f: &mut Findings,
) {
    for path in crate::judge::stray_indexes(layout, expected) {
        let msg = format!(
            "{} is the index of no done shard (webshart would load it); run the job again: it removes it",
            path.display()
        );
        tally.problem(f, msg);
    }
}

/// The totals against the report's `index` counts.
fn check_totals(report: &Report, got: &IndexCounts, f: &mut Findings) {
    let Some(want) = &report.index else {
        f.problems
            .push("report.json of an index-mode output has no \"index\" counts".into());
        return;
    };
    let pairs = [
        ("entries", got.entries, want.entries),
        (
            "images with dimensions",
            got.images_with_dimensions,
            want.images_with_dimensions,
        ),
        (
            "images without dimensions",
            got.images_without_dimensions,
            want.images_without_dimensions,
        ),
        (
            "images with a caption",
            got.images_with_caption,
            want.images_with_caption,
        ),
    ];
    let mut ok = true;
    for (what, got, want) in pairs {
        if got != want {
            ok = false;
            f.problems.push(format!(
                "the indexes hold {got} {what}, report.json says {want}"
            ));
        }
    }
    if ok {
        f.checked
            .push("the indexes' counts match report.json".into());
    }
}

/// The webshart entry of `multidatabackend.json` points at this output's index.
pub fn check_webshart_backend(layout: &OutputLayout, f: &mut Findings) {
    let entry = std::fs::read(layout.backend_path())
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    let e = entry.as_ref().map(|v| &v[0]);
    let index = std::path::absolute(layout.index_dir()).unwrap_or_else(|_| layout.index_dir());
    let ok = e.is_some_and(|e| {
        e["type"] == "webshart"
            && e["metadata_backend"] == "webshart"
            && e["caption_strategy"] == "webshart"
            && e["source"].is_string()
            && e["metadata"].is_string()
    });
    if ok {
        f.checked.push(format!(
            "multidatabackend.json has the webshart entry (metadata {})",
            e.and_then(|e| e["metadata"].as_str()).unwrap_or_default()
        ));
    } else {
        f.problems.push(format!(
            "multidatabackend.json is missing or has no webshart entry (type webshart, metadata {})",
            index.display()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_of_the_image_types_and_nothing_else() {
        assert!(has_image_signature(b"\x89PNG\r\n\x1a\n...."));
        assert!(has_image_signature(&[0xff, 0xd8, 0xff, 0xe0]));
        assert!(has_image_signature(b"RIFF\0\0\0\0WEBPVP8 "));
        assert!(has_image_signature(b"GIF89a"));
        assert!(!has_image_signature(b"RIFF\0\0\0\0WAVE"));
        assert!(!has_image_signature(b"{\"caption\""));
        assert!(!has_image_signature(b""));
        assert!(is_image("a/b.JPG") && !is_image("a.json") && !is_image("png"));
    }
}

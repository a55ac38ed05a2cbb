//! What the shards wrote into `data/`, from their committed file lists
//! (`OUT/.shardprep/fragments/<shard>.files`), against what `data/` holds.

use std::collections::BTreeMap;

use shardprep_core::depth::CheckDepth;
use shardprep_core::durability::{CheckedDir, listed_path, parse_files_list};
use shardprep_core::layout::{OutputLayout, fnv1a64};

use crate::findings::{Findings, LISTED, for_each_file};

/// A committed shard: its name and how many files its counts say it wrote
/// into `data/` (members and captions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardWrote {
    pub name: String,
    pub files: u64,
}

/// The check of the written files: findings, for each damaged shard the
/// first thing found wrong, and the paths written and found damaged (so
/// that the checks of the table's rows need no second `stat`).
#[derive(Debug, Default)]
pub struct WrittenCheck {
    pub findings: Findings,
    pub why: BTreeMap<String, String>,
    pub paths: WrittenPaths,
}

/// The paths under `data/` the shards wrote, hashed with [`fnv1a64`], and
/// those of them not as written.
#[derive(Debug, Default)]
pub struct WrittenPaths {
    /// Hash of each relative path → the last write of it: (shard index,
    /// record index in that shard's list). Earlier writes were overwritten.
    last_writer: foldhash::HashMap<u64, (usize, usize)>,
    /// The records (shard index, record index) a later write overwrote
    /// (none unless two shards or two members wrote one name).
    overwritten: foldhash::HashSet<(usize, usize)>,
    /// Paths written more than once (by two shards, or twice by one): their
    /// last write is checked by its bytes too, since two writers of a path
    /// can write the same size, and on two workers the last to land on
    /// disk need not be the last in shard order.
    contested: foldhash::HashSet<u64>,
    damaged: foldhash::HashSet<u64>,
    /// The JSONs a later shard's file of the same path replaced.
    pub shadowed: ShadowedJson,
}

/// JSON files of a shard that a later shard's file of the same path
/// replaced in `data/`: their rows leave the table, since the seed's
/// `compile.py` reads the JSONs `data/` holds after `tar xf` of the shards
/// in order. `by_shard` is the paths' hashes
/// ([`shardprep_core::table::JSON_KEY_COLUMN`]) by shard name.
#[derive(Debug, Default, Clone)]
pub struct ShadowedJson {
    pub by_shard: BTreeMap<String, foldhash::HashSet<u64>>,
    /// How many (a JSON replaced by each of two later shards counts twice).
    pub count: u64,
    /// The first few, by path and shards.
    pub listed: Vec<ShadowedName>,
}

/// A JSON of `shard` that the file of shard `by` replaced.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShadowedName {
    pub json: String,
    pub shard: String,
    pub by: String,
}

impl ShadowedJson {
    fn add(&mut self, hash: u64, rel: &[u8], shard: &str, by: &str) {
        if self
            .by_shard
            .entry(shard.to_string())
            .or_default()
            .insert(hash)
        {
            self.count += 1;
            if self.listed.len() < LISTED {
                self.listed.push(ShadowedName {
                    json: String::from_utf8_lossy(rel).into_owned(),
                    shard: shard.to_string(),
                    by: by.to_string(),
                });
            }
        }
    }
}

impl WrittenPaths {
    /// Whether a shard wrote `rel` (a path relative to `data/`).
    pub fn wrote(&self, rel: &str) -> bool {
        self.last_writer.contains_key(&fnv1a64(rel.as_bytes()))
    }
    /// Whether a shard wrote `rel` and it is no longer as written.
    pub fn damaged(&self, rel: &str) -> bool {
        self.damaged.contains(&fnv1a64(rel.as_bytes()))
    }
    /// Whether `rel` was written more than once (no hashing when nothing was).
    pub(crate) fn contested(&self, rel: &[u8]) -> bool {
        !self.contested.is_empty() && self.contested.contains(&fnv1a64(rel))
    }
    fn wrote_hash(&self, h: u64) -> bool {
        self.last_writer.contains_key(&h)
    }
}

/// What the shards wrote, from their lists.
struct Written {
    paths: WrittenPaths,
    /// Distinct `*.json` paths written.
    json: u64,
    /// The length of each shard's list as read (0: empty or unreadable).
    /// The lists are read again, one at a time, to check the files: a job
    /// of millions of files would otherwise hold them all (~50 bytes a file).
    list_len: Vec<usize>,
    /// The length of the job end's list of caption files (`paired.files`).
    end_len: usize,
}

/// The writer index of the job end's own files in [`WrittenPaths`].
const END: usize = usize::MAX;

/// A shard whose list could not be read again as it was read first.
struct Unreadable {
    shard: usize,
    why: String,
}

/// A written file found not as written.
struct Damaged {
    /// The index of the shard that wrote it last.
    shard: usize,
    hash: u64,
    rel: String,
    why: String,
    json: bool,
}

/// Reads the file lists of `shards` (in shard order; a later shard's file
/// overwrites an earlier one's of the same name, as on disk).
fn read_written(layout: &OutputLayout, shards: &[ShardWrote], c: &mut WrittenCheck) -> Written {
    let mut w = Written {
        paths: WrittenPaths::default(),
        json: 0,
        list_len: Vec::with_capacity(shards.len()),
        end_len: 0,
    };
    // Sized once (the job's end would otherwise rehash a map of every file
    // of `data/` several times): the shards' counts, bounded by what the
    // lists can hold (a record takes at least 4 bytes) so that a damaged
    // count cannot ask for more.
    let counted: u64 = shards.iter().map(|s| s.files).sum();
    let list_bytes = |s: &ShardWrote| std::fs::metadata(layout.files_list_path(&s.name));
    let bound = shards
        .iter()
        .map(|s| list_bytes(s).map_or(0, |m| m.len() / 4))
        .sum::<u64>();
    let capacity = usize::try_from(counted.min(bound)).unwrap_or(0);
    w.paths.last_writer.reserve(capacity);
    for (i, shard) in shards.iter().enumerate() {
        let bytes = read_list(layout, shard, c);
        for (j, rec) in parse_files_list(&bytes).into_iter().enumerate() {
            let hash = fnv1a64(rec.rel);
            match w.paths.last_writer.insert(hash, (i, j)) {
                Some(earlier) => {
                    w.paths.overwritten.insert(earlier);
                    w.paths.contested.insert(hash);
                    if earlier.0 != i && rec.rel.ends_with(b".json") {
                        let (was, by) = (&shards[earlier.0].name, &shard.name);
                        w.paths.shadowed.add(hash, rec.rel, was, by);
                    }
                }
                None => w.json += u64::from(rec.rel.ends_with(b".json")),
            }
        }
        w.list_len.push(bytes.len());
    }
    read_end_list(layout, &mut w);
    w
}

/// The caption files the job's end wrote last (`paired.files`, absent when
/// no row was paired across shards): they replace the shards' writes.
fn read_end_list(layout: &OutputLayout, w: &mut Written) {
    let Ok(bytes) = std::fs::read(layout.paired_files_path()) else {
        return;
    };
    for (j, rec) in parse_files_list(&bytes).into_iter().enumerate() {
        let hash = fnv1a64(rec.rel);
        if let Some(earlier) = w.paths.last_writer.insert(hash, (END, j)) {
            w.paths.overwritten.insert(earlier);
        }
        w.paths.contested.insert(hash);
    }
    w.end_len = bytes.len();
}

/// The bytes of `shard`'s file list; empty, with the shard marked damaged,
/// when it cannot be read.
fn read_list(layout: &OutputLayout, shard: &ShardWrote, c: &mut WrittenCheck) -> Vec<u8> {
    let path = layout.files_list_path(&shard.name);
    match std::fs::read(&path) {
        Ok(b) => b,
        // A shard that wrote nothing into data/ needs no list.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && shard.files == 0 => Vec::new(),
        Err(e) => {
            c.list_unreadable(&shard.name, unreadable_list(&path, &e));
            Vec::new()
        }
    }
}

impl WrittenCheck {
    /// `shard`'s file list cannot be read (`why`): the shard is damaged
    /// and redone.
    fn list_unreadable(&mut self, shard: &str, why: String) {
        self.findings.damaged_shards.insert(shard.to_string());
        self.findings.problems.push(format!(
            "shard {shard}: {why}; run the job again: it redoes the shard"
        ));
        self.why.entry(shard.to_string()).or_insert(why);
    }
}

/// Why the file list at `path` does not tell what its shard wrote.
fn unreadable_list(path: &std::path::Path, e: &std::io::Error) -> String {
    format!(
        "its file list {} cannot be read ({e}), so what it wrote into data/ cannot be checked",
        path.display()
    )
}

/// What the committed `shards` (in shard order) wrote into `data/`, from
/// their lists alone (nothing in `data/` is read): for the merge, which
/// JSONs a later shard replaced; then for [`check_written`].
pub fn read_lists(layout: &OutputLayout, shards: &[ShardWrote]) -> ListsRead {
    let mut check = WrittenCheck::default();
    let written = read_written(layout, shards, &mut check);
    ListsRead { written, check }
}

/// The committed shards' file lists as read, with what reading them found
/// (a list that cannot be read): the job's end reads them once, for the
/// merge and for [`check_written`].
pub struct ListsRead {
    written: Written,
    check: WrittenCheck,
}

impl ListsRead {
    /// The JSONs a later shard's file replaced.
    pub fn shadowed(&self) -> &ShadowedJson {
        &self.written.paths.shadowed
    }
    /// Whether some path was written more than once (by two shards, twice
    /// by one, or by the job's end).
    pub fn any_contested(&self) -> bool {
        !self.written.paths.contested.is_empty()
    }
    /// Whether `rel` was written more than once.
    pub fn contested(&self, rel: &[u8]) -> bool {
        self.written.paths.contested(rel)
    }
    /// The index (in the shards the lists were read for) of the shard that
    /// wrote `rel` last; `None` if no shard wrote it or the job's end did.
    pub fn last_shard(&self, rel: &[u8]) -> Option<usize> {
        match self.written.paths.last_writer.get(&fnv1a64(rel)) {
            Some(&(i, _)) if i != END => Some(i),
            _ => None,
        }
    }
}

/// The paths, among those `shards` (in the order the lists were read for)
/// wrote, whose hashes are in `wanted` (hash → path): reads the lists
/// again, only those of the shards `wanted` names.
pub fn paths_of(
    layout: &OutputLayout,
    shards: &[ShardWrote],
    wanted: &BTreeMap<usize, foldhash::HashSet<u64>>,
) -> foldhash::HashMap<u64, String> {
    let mut found = foldhash::HashMap::default();
    for (&i, hashes) in wanted {
        let Some(shard) = shards.get(i) else { continue };
        let bytes = std::fs::read(layout.files_list_path(&shard.name)).unwrap_or_default();
        for rec in parse_files_list(&bytes) {
            let h = fnv1a64(rec.rel);
            if hashes.contains(&h) {
                found.insert(h, String::from_utf8_lossy(rec.rel).into_owned());
            }
        }
    }
    found
}

/// Checks what the job wrote into `data/`: every file each committed shard
/// (`shards`, in shard order) lists is there as it was written (size; at
/// [`CheckDepth::Checksums`] bytes too), and the JSON members it holds
/// number `expected`. The files are checked on two threads.
/// `read`: the lists as [`read_lists`] read them for these `shards`, if
/// the caller has them.
pub fn check_written(
    layout: &OutputLayout,
    (shards, read): (&[ShardWrote], Option<ListsRead>),
    expected: Option<u64>,
    depth: CheckDepth,
) -> WrittenCheck {
    let read = read.filter(|r| r.written.list_len.len() == shards.len());
    let ListsRead {
        mut written,
        check: mut c,
    } = read.unwrap_or_else(|| read_lists(layout, shards));
    let data = CheckedDir::open(&layout.data_dir());
    let half = shards.len().div_ceil(2);
    let (data_ref, written_ref) = (&data, &written);
    let check = |range| find_damaged(layout, shards, range, (data_ref, written_ref), depth);
    let (found, unreadable): (Vec<Damaged>, Vec<Unreadable>) = std::thread::scope(|scope| {
        let second = scope.spawn(|| check(half..shards.len()));
        let (mut found, mut unreadable) = check(0..half);
        // A panic is a bug: it must not pass for "nothing damaged".
        let (f2, u2) = second
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e));
        found.extend(f2);
        unreadable.extend(u2);
        (found, unreadable)
    });
    let found = found
        .into_iter()
        .chain(end_damaged(layout, (&data, &written)));
    for Unreadable { shard, why } in unreadable {
        c.list_unreadable(&shards[shard].name, why);
    }
    let mut missing = Vec::new();
    let (mut n_missing, mut json_missing) = (0u64, 0u64);
    for Damaged {
        shard,
        hash,
        rel,
        why,
        json,
    } in found
    {
        n_missing += 1;
        written.paths.damaged.insert(hash);
        if shard == END {
            // The job's end writes it again; no shard is redone for it.
            if missing.len() < LISTED {
                missing.push(format!("data/{rel} ({why}, from the job's end)"));
            }
            continue;
        }
        let shard = &shards[shard].name;
        c.findings.damaged_shards.insert(shard.clone());
        c.why
            .entry(shard.clone())
            .or_insert_with(|| format!("data/{rel} is {why}"));
        json_missing += u64::from(json);
        if missing.len() < LISTED {
            missing.push(format!("data/{rel} ({why}, from shard {shard})"));
        }
    }
    c.paths = written.paths;
    let present = written.json - json_missing;
    written_findings(
        &mut c.findings,
        written.json,
        present,
        (n_missing, &missing),
        depth,
    );
    if let Some(e) = expected {
        match json_count_problem(e, present) {
            Some(p) => c.findings.problems.push(format!(
                "{p}: data/ holds {present} *.json files, expected {e}"
            )),
            None => c
                .findings
                .checked
                .push(format!("JSON count matches the expected {e}")),
        }
    }
    c
}

/// The files of `shards[range]`'s lists that are not as written (each
/// shard's last write of a path only), and the lists that could not be
/// read again as they were read first.
fn find_damaged(
    layout: &OutputLayout,
    shards: &[ShardWrote],
    range: std::ops::Range<usize>,
    (data, written): (&CheckedDir, &Written),
    depth: CheckDepth,
) -> (Vec<Damaged>, Vec<Unreadable>) {
    let (mut found, mut unreadable) = (Vec::new(), Vec::new());
    for i in range {
        if written.list_len[i] == 0 {
            continue; // nothing listed, or unreadable (already a finding)
        }
        let path = layout.files_list_path(&shards[i].name);
        let bytes = match std::fs::read(&path) {
            Ok(b) if b.len() == written.list_len[i] => b,
            read => {
                let why = match read {
                    Ok(_) => format!(
                        "its file list {} changed while the job's end checked it",
                        path.display()
                    ),
                    Err(e) => unreadable_list(&path, &e),
                };
                unreadable.push(Unreadable { shard: i, why });
                continue;
            }
        };
        for (j, rec) in parse_files_list(&bytes).into_iter().enumerate() {
            let Some(rel) = listed_path(rec.rel) else {
                continue;
            };
            if written.paths.overwritten.contains(&(i, j)) {
                continue; // overwritten by a later write
            }
            let depth = match written.paths.contested(rec.rel) {
                true => CheckDepth::Checksums,
                false => depth,
            };
            if let Some(why) = data.damage(rel, rec.size, rec.crc, depth) {
                found.push(Damaged {
                    shard: i,
                    hash: fnv1a64(rec.rel),
                    rel: rel.display().to_string(),
                    why,
                    json: rec.rel.ends_with(b".json"),
                });
            }
        }
    }
    (found, unreadable)
}

/// The caption files of the job end's list that are not as it wrote them
/// (always by their bytes: several writers wrote each of them). A list
/// that changed since it was read counts all its files as damaged.
fn end_damaged(layout: &OutputLayout, (data, written): (&CheckedDir, &Written)) -> Vec<Damaged> {
    if written.end_len == 0 {
        return Vec::new();
    }
    let bytes = std::fs::read(layout.paired_files_path()).unwrap_or_default();
    let changed = bytes.len() != written.end_len;
    parse_files_list(&bytes)
        .into_iter()
        .filter_map(|rec| {
            let rel = listed_path(rec.rel)?;
            let why = match changed {
                true => Some(
                    "listed in a paired.files that changed while the job's end checked it".into(),
                ),
                false => data.damage(rel, rec.size, rec.crc, CheckDepth::Checksums),
            }?;
            Some(Damaged {
                shard: END,
                hash: fnv1a64(rec.rel),
                rel: rel.display().to_string(),
                why,
                json: false,
            })
        })
        .collect()
}

/// The findings of [`check_written`]: the JSON files there, and the files
/// missing or changed (`damaged`: how many, the first few named).
fn written_findings(
    f: &mut Findings,
    json: u64,
    present: u64,
    (n_missing, missing): (u64, &[String]),
    depth: CheckDepth,
) {
    f.checked.push(format!(
        "data/ holds {present} *.json files the shards wrote"
    ));
    if present < json {
        f.problems.push(format!(
            "the shards wrote {json} JSON members into data/ but only {present} *.json files of them are there"
        ));
    }
    if n_missing > 0 {
        f.problems.push(format!(
            "{n_missing} files the shards wrote into data/ are missing or changed since the job: {}; run the job again{}: it redoes the shards they came from (and the job's end writes its own again)",
            missing.join(", "),
            if depth.reads_bytes() { " with --deep" } else { "" }
        ));
    } else {
        f.checked.push(match depth {
            CheckDepth::Sizes => "every file the shards wrote is in data/ with its size".into(),
            CheckDepth::Checksums => {
                "every file the shards wrote is in data/ with its size and checksum".into()
            }
        });
    }
}

/// The problem with the global JSON count, if there is one.
fn json_count_problem(expected: u64, found: u64) -> Option<String> {
    (found != expected).then(|| {
        format!(
            "JSON count mismatch: expected {expected} JSON files, found {found} ({} {})",
            found.abs_diff(expected),
            if found < expected { "missing" } else { "extra" }
        )
    })
}

/// Nothing was extracted (`--no-extract`, index mode): the shards' count of
/// JSON members is what there is.
pub fn check_json_members(found: u64, expected: u64, f: &mut Findings) {
    match json_count_problem(expected, found) {
        None => f
            .checked
            .push(format!("the shards held {found} JSON files, as expected")),
        Some(p) => f.problems.push(format!(
            "{p}: the shards held {found} JSON files, expected {expected}"
        )),
    }
}

/// Foreign files listed by name.
const FOREIGN_LISTED: usize = 20;

/// Lists the files in `data/` that no shard wrote (by name, capped): a
/// trainer's caches. They are neither counted nor a problem.
pub fn list_foreign(layout: &OutputLayout, ours: &WrittenPaths, f: &mut Findings) {
    for_each_file(&layout.data_dir(), |rel| {
        if ours.wrote_hash(fnv1a64(rel.as_os_str().as_encoded_bytes())) {
            return;
        }
        f.foreign_files_total += 1;
        if f.foreign_files.len() < FOREIGN_LISTED {
            f.foreign_files.push(rel.display().to_string());
        }
    });
    f.foreign_files.sort();
    if f.foreign_files_total > 0 {
        f.checked.push(format!(
            "{} foreign files in data/ came from no shard (a trainer's caches?), not counted: {}{}",
            f.foreign_files_total,
            f.foreign_files.join(", "),
            if f.foreign_files_total > f.foreign_files.len() as u64 {
                ", …"
            } else {
                ""
            }
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardprep_core::durability::{files_list_header, files_list_record};

    /// An output with `data/a.json` (3 bytes) and `data/b.png` (missing),
    /// both listed by shard `s0`.
    fn output() -> (tempfile::TempDir, OutputLayout, Vec<ShardWrote>) {
        let tmp = tempfile::tempdir().unwrap();
        let layout = OutputLayout::new(tmp.path());
        std::fs::create_dir_all(layout.data_dir()).unwrap();
        std::fs::write(layout.data_dir().join("a.json"), b"{}\n").unwrap();
        let list = layout.files_list_path("s0");
        std::fs::create_dir_all(list.parent().unwrap()).unwrap();
        let mut bytes = files_list_header();
        bytes.extend(files_list_record(b"a.json", Some(3), None));
        bytes.extend(files_list_record(b"b.png", Some(5), None));
        std::fs::write(&list, bytes).unwrap();
        let shards = vec![ShardWrote {
            name: "s0".into(),
            files: 2,
        }];
        (tmp, layout, shards)
    }

    #[test]
    fn a_missing_file_names_its_shard() {
        let (_tmp, layout, shards) = output();
        let c = check_written(&layout, (&shards, None), Some(1), CheckDepth::Sizes);
        assert!(c.findings.damaged_shards.contains("s0"));
        assert!(c.paths.damaged("b.png") && !c.paths.damaged("a.json"));
        assert!(c.why["s0"].contains("data/b.png"), "{:?}", c.why);
    }

    #[test]
    fn a_list_changed_between_its_two_reads_is_a_finding_not_a_pass() {
        let (_tmp, layout, shards) = output();
        let mut c = WrittenCheck::default();
        let written = read_written(&layout, &shards, &mut c);
        // Both files fine now, but the list grows before the files are checked.
        std::fs::write(layout.data_dir().join("b.png"), b"12345").unwrap();
        let list = layout.files_list_path("s0");
        let mut bytes = std::fs::read(&list).unwrap();
        bytes.extend(files_list_record(b"c.txt", Some(1), None));
        std::fs::write(&list, bytes).unwrap();
        let data = CheckedDir::open(&layout.data_dir());
        let (found, unreadable) =
            find_damaged(&layout, &shards, 0..1, (&data, &written), CheckDepth::Sizes);
        assert!(found.is_empty());
        assert_eq!(unreadable.len(), 1);
        assert!(
            unreadable[0].why.contains("changed"),
            "{}",
            unreadable[0].why
        );
    }
}

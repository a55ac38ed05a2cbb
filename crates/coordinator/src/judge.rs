//! The one judge of an output, and the owner of `OUT/.shardprep/`: is what
//! `OUT` holds what the shards say, and if not, what must be redone or
//! rebuilt, and why. A job starting over an output asks it which committed
//! shards to keep ([`recover`]); the job's end asks it whether the table
//! reads back ([`table_problem`]) and which index files belong to no shard
//! ([`stray_indexes`]); `verify` asks it the same questions
//! ([`check_commits`]) at the same [`CheckDepth`], in the same words, so the
//! two cannot disagree.
//!
//! What each depth finds (`--deep` on `run`, `coordinator` and `verify`):
//! - [`CheckDepth::Sizes`]: a committed shard's manifest, every file its
//!   commit sealed (fragment, file list, index file, energon/DALI pieces:
//!   size), its fragment (footer and row count), every file it lists in
//!   `data/` (present, with its size: one `stat` each), its energon/DALI
//!   pieces (every entry at a tar header of its size: one read per sample,
//!   at both depths); the published table (footer, rows = the fragments'
//!   rows), the dataset-wide energon/DALI/wids files, and every file the
//!   job's end sealed into the report ([`published_problems`]: size).
//! - [`CheckDepth::Checksums`]: also the bytes: every listed file and every
//!   sealed file against its CRC-32, every page of the fragments, and (in
//!   `verify`) each caption file against its row.
//!
//! A shard found damaged is taken back ([`commit::uncommit`]) and redone; a
//! shard whose input changed is forgotten with its files
//! ([`commit::forget_outdated`]); these are the only two ways committed
//! output is deleted.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use shardprep_core::depth::CheckDepth;
use shardprep_core::index_format::IndexFormat;
use shardprep_core::layout::OutputLayout;
use shardprep_core::manifest::{Seals, ShardIdentity, ShardManifest};
use shardprep_core::mode::{JobOutput, Mode};

use crate::commit::{self, Commit};
use crate::discover::ShardSource;
use crate::findings::{Findings, for_each_file};
use crate::report::{Repair, RepairAction, Report, ShardPhase};
use crate::written::{ShardWrote, check_written};

/// The shards of a job as recovered from an earlier run: each with its
/// identity now and the manifest of its commit, if it is kept.
pub type Recovered = Vec<(String, ShardIdentity, Option<ShardManifest>)>;

/// What the judge found of the committed shards: per damaged shard, the
/// first thing found wrong; and the findings in `verify`'s words.
#[derive(Debug, Default)]
pub struct Judged {
    pub damaged: BTreeMap<String, String>,
    pub findings: Findings,
}

impl Judged {
    fn damage(&mut self, shard: &str, why: String) {
        self.findings.problems.push(format!(
            "shard {shard}: {why}; run the job again: it redoes the shard"
        ));
        self.findings.damaged_shards.insert(shard.to_string());
        self.damaged.entry(shard.to_string()).or_insert(why);
    }
}

/// Each shard of the job with its earlier commit if that still holds, and
/// the repairs made: commits of changed inputs, of the other mode, or
/// damaged at `depth` are taken back so that the job redoes them.
pub fn recover(
    layout: &OutputLayout,
    sources: &[ShardSource],
    outputs: &JobOutput,
    depth: CheckDepth,
) -> (Recovered, Vec<Repair>) {
    let mut repairs = Vec::new();
    let reported = reported_done(layout);
    let mut commits: Vec<Option<Commit>> = sources
        .iter()
        .map(|s| {
            let c = kept_commit(layout, s, outputs, &mut repairs);
            let reported_done = reported.contains(s.name.as_str());
            if c.is_none() && reported_done && !repairs.iter().any(|r| r.subject == s.name) {
                redo(layout, &s.name, no_commit(layout), &mut repairs);
            }
            c
        })
        .collect();
    let kept: Vec<(&str, &Commit)> = sources
        .iter()
        .zip(&commits)
        .filter_map(|(s, c)| Some((s.name.as_str(), c.as_ref()?)))
        .collect();
    let mut judged = check_commits(layout, &kept, outputs, depth);
    if outputs.mode() == Mode::Extract {
        let wrote: Vec<ShardWrote> = kept
            .iter()
            .map(|(name, c)| ShardWrote {
                name: name.to_string(),
                files: c.manifest.counts.files_extracted + c.manifest.counts.captions_written,
            })
            .collect();
        for (shard, why) in check_written(layout, (&wrote, None), None, depth).why {
            judged.damaged.entry(shard).or_insert(why);
        }
    }
    for (s, c) in sources.iter().zip(commits.iter_mut()) {
        if let Some(why) = judged.damaged.get(&s.name) {
            redo(layout, &s.name, why.clone(), &mut repairs);
            *c = None;
        }
    }
    let recovered = sources
        .iter()
        .zip(commits)
        .map(|(s, c)| (s.name.clone(), s.identity, c.map(|c| c.manifest)))
        .collect();
    (recovered, repairs)
}

/// The shards the last report lists as done (none without a readable report).
fn reported_done(layout: &OutputLayout) -> HashSet<String> {
    let report: Option<Report> = std::fs::read(layout.report_path())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    report
        .into_iter()
        .flat_map(|r| r.shards)
        .filter(|s| s.state == ShardPhase::Done)
        .map(|s| s.name)
        .collect()
}

/// What is wrong with a shard the report lists as done but that has no commit.
pub fn no_commit(layout: &OutputLayout) -> String {
    format!(
        "report.json says it is done but it has no commit in {}",
        layout.fragments_dir().display()
    )
}

/// A shard's commit, unless there is none, or it cannot be kept whatever
/// its files: unreadable, of a changed input, or of the other mode.
fn kept_commit(
    layout: &OutputLayout,
    s: &ShardSource,
    outputs: &JobOutput,
    repairs: &mut Vec<Repair>,
) -> Option<Commit> {
    let c = match commit::read_commit(layout, &s.name) {
        Ok(c) => c?,
        Err(why) => {
            redo(layout, &s.name, why, repairs);
            return None;
        }
    };
    if !c.manifest.identity.same_input(&s.identity) {
        let why = "its input changed since it was committed (size, mtime, inode or ctime)";
        tracing::warn!(shard = %s.name, "{why}; redoing the shard");
        commit::forget_outdated(layout, &s.name);
        repairs.push(Repair {
            subject: s.name.clone(),
            found: why.into(),
            action: RepairAction::RedoShard,
        });
        return None;
    }
    if let Some(why) = wrong_output(layout, &s.name, &c.manifest, outputs) {
        redo(layout, &s.name, why, repairs);
        return None;
    }
    Some(c)
}

/// Takes a shard's commit back so that the job redoes it, saying why.
fn redo(layout: &OutputLayout, shard: &str, why: String, repairs: &mut Vec<Repair>) {
    tracing::warn!(shard = %shard, "{why}; redoing the shard");
    commit::uncommit(layout, shard);
    repairs.push(Repair {
        subject: shard.to_string(),
        found: why,
        action: RepairAction::RedoShard,
    });
}

/// Why a commit cannot serve this job's outputs: an extract-mode job
/// redoes shards an index-mode run committed (they extracted nothing); an
/// index-mode job redoes shards committed without a format it asks for.
/// (An extract-mode commit has no index file: [`index_problem`].)
fn wrong_output(
    layout: &OutputLayout,
    name: &str,
    m: &ShardManifest,
    outputs: &JobOutput,
) -> Option<String> {
    match outputs.index_formats() {
        None => (!m.counts.index.is_zero())
            .then(|| "it was committed by an index-mode run, which extracted nothing".into()),
        Some(formats) => shardprep_formats::missing_piece(layout, name, formats)
            .map(|why| format!("it cannot serve --index-format {formats}: {why}")),
    }
}

/// Judges committed shards (`shards`, in shard order) at `depth`: every
/// file the commit sealed (fragment, file list, pieces) is as sealed, each
/// fragment reads back with the rows its commit counts, each index file
/// (index mode) is as sealed. (The files each wrote into `data/` are
/// [`check_written`]'s to judge: `recover` asks both, `verify` too.)
pub fn check_commits(
    layout: &OutputLayout,
    shards: &[(&str, &Commit)],
    outputs: &JobOutput,
    depth: CheckDepth,
) -> Judged {
    let mut j = Judged::default();
    for (name, c) in shards {
        for (path, why) in c.files.damage(layout.root(), depth) {
            j.damage(name, format!("its file {} is {why}", path.display()));
        }
        let fragment = layout.fragment_path(name);
        if let Err(why) = table_reads_back(&fragment, c.manifest.counts.rows, depth) {
            j.damage(name, format!("its fragment {why}"));
        }
        if outputs.writes_index(IndexFormat::Webshart)
            && let Some(why) = index_problem(layout, name, c, depth)
        {
            j.damage(name, why);
        }
        if let Some(formats) = outputs.index_formats()
            && let Err(why) = shardprep_formats::check_shard(layout, name, formats)
        {
            j.damage(
                name,
                format!("its --index-format pieces do not hold: {why}"),
            );
        }
    }
    let kept = shards.len() - j.damaged.len();
    j.findings.checked.push(format!(
        "{kept} of {} committed shards check out at depth {}: {} fragment",
        shards.len(),
        depth.as_str(),
        match outputs {
            JobOutput::Extract { .. } => "manifest and",
            JobOutput::Index { .. } => "manifest, index files and",
        }
    ));
    j
}

/// Why a shard's index file is not the one its commit published.
fn index_problem(
    layout: &OutputLayout,
    name: &str,
    c: &Commit,
    depth: CheckDepth,
) -> Option<String> {
    let Some(path) = layout.index_path(name) else {
        return Some("its name cannot name an index file".into());
    };
    let why = match &c.index_file {
        Some(seal) => seal.damage(&path, depth),
        // Committed before index files were sealed: present is all we know.
        None => (!path.is_file()).then(|| "missing".to_string()),
    };
    why.map(|why| format!("its index file is {why} ({})", path.display()))
}

/// Whether the parquet file at `path` reads back: its footer, its row
/// count (`rows`), and at [`CheckDepth::Checksums`] every page. The error
/// names the file and what is wrong with it.
pub fn table_reads_back(path: &Path, rows: u64, depth: CheckDepth) -> Result<(), String> {
    let at = path.display();
    let file = File::open(path).map_err(|e| format!("{at} cannot be opened ({e})"))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| format!("{at} does not read back ({e})"))?;
    let n = builder.metadata().file_metadata().num_rows();
    if u64::try_from(n).ok() != Some(rows) {
        return Err(format!("{at} holds {n} rows where there should be {rows}"));
    }
    if depth.reads_bytes() {
        let reader = builder
            .build()
            .map_err(|e| format!("{at} does not read back ({e})"))?;
        for batch in reader {
            batch.map_err(|e| format!("{at} does not read back ({e})"))?;
        }
    }
    Ok(())
}

/// Why the published table (`OUT/<id>.parquet`) is not the merge of the
/// fragments, which hold `fragment_rows` rows; `None` when it is.
pub fn table_problem(
    layout: &OutputLayout,
    dataset_id: &str,
    fragment_rows: u64,
    depth: CheckDepth,
) -> Option<String> {
    let path = layout.parquet_path(dataset_id);
    table_reads_back(&path, fragment_rows, depth)
        .err()
        .map(|why| format!("the table {why}"))
}

/// Seals what the job's end built from the commits: the table (when it
/// was merged) and the dataset-wide files of energon, DALI and wids.
pub fn seal_published(layout: &OutputLayout, dataset_id: &str, outputs: &JobOutput) -> Seals {
    let mut files = vec![layout.parquet_path(dataset_id), layout.backend_path()];
    if let Some(formats) = outputs.index_formats() {
        files.extend(shardprep_formats::dataset_files(layout, formats));
    }
    let mut seals = Seals::default();
    for f in files.into_iter().filter(|f| f.is_file()) {
        if let Err(e) = seals.seal(layout.root(), &f, &f) {
            tracing::warn!(file = %f.display(), error = %e, "cannot seal a published file; it is judged without its seal");
        }
    }
    seals
}

/// The files the job's end published (`report.published`) that are not as
/// sealed at `depth`, in `verify`'s words: a re-run builds them again.
pub fn published_problems(
    layout: &OutputLayout,
    report: &Report,
    depth: CheckDepth,
) -> Vec<String> {
    report
        .published
        .damage(layout.root(), depth)
        .into_iter()
        .map(|(path, why)| {
            format!(
                "{} is {why} since the job's end wrote it; run the job again: it rebuilds what the job's end writes (the table, the indexes)",
                path.display()
            )
        })
        .collect()
}

/// Problems of the dataset-wide files of energon, DALI and wids (the
/// job's end rebuilds them from the committed `done` shards' pieces), at
/// `depth`.
pub fn dataset_index_problems(
    layout: &OutputLayout,
    done: &[String],
    outputs: &JobOutput,
    depth: CheckDepth,
) -> Vec<String> {
    match outputs.index_formats() {
        Some(formats) => shardprep_formats::check_dataset(layout, done, formats, depth)
            .into_iter()
            .map(|p| format!("--index-format: {p}"))
            .collect(),
        None => Vec::new(),
    }
}

/// Index files under `OUT/index/` that belong to no done shard (`done`:
/// the index paths of the done shards): webshart would load them.
pub fn stray_indexes(layout: &OutputLayout, done: &HashSet<PathBuf>) -> Vec<PathBuf> {
    let mut stray = Vec::new();
    let root = layout.index_dir();
    for_each_file(&root, |rel| {
        let path = root.join(rel);
        if !done.contains(&path) {
            stray.push(path);
        }
    });
    stray.sort();
    stray
}

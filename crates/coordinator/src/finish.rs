//! The end of a job, once every shard is settled: the report's shard lines,
//! the fingerprint of what was merged, the already-done check of a re-run
//! (the output checked as `verify` checks it), the merge, the checks of
//! what was published, the end-of-job flush, the report and the
//! SimpleTuner entry. One short function per step; [`finish_job`] runs them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use shardprep_core::depth::CheckDepth;
use shardprep_core::index_format::{IndexFormat, IndexFormats};
use shardprep_core::layout::{OutputLayout, fnv1a64};
use shardprep_core::mode::JobOutput;

use crate::commit::write_atomic;
use crate::merge::{self, Edits, MergeOutcome};
use crate::pairs::{self, Paired};
use crate::report::{self, Repair, RepairAction, Report, ShardReport, ShardRows, Verdict};
use crate::rows::shard_rows;
use crate::scheduler::{ShardEntry, ShardState};
use crate::verify::{self, Findings, JobView};
use crate::webshart::WebshartSource;
use crate::written::{self, ListsRead};
use crate::{CoordinatorConfig, CoordinatorError, JobShared, judge, page};

/// How a job ended.
#[derive(Debug, Clone)]
pub struct JobOutcome {
    /// True when every shard is done and the output checked whole.
    pub ok: bool,
    pub report: Report,
    pub report_path: PathBuf,
}

/// Identifies the set of committed fragments and the settings they were
/// merged with: a re-run with the same fingerprint has nothing to merge.
pub(crate) fn fingerprint(entries: &[ShardEntry], config: &CoordinatorConfig) -> String {
    let mut fp = String::new();
    for e in entries {
        if let ShardState::Done(m) = &e.state {
            fp.push_str(&format!("{}:{}:{};", e.name, m.lease_id, m.counts.rows));
        }
    }
    fp.push_str(&format!(
        "{}|{:?}|{}",
        config.backend.dataset_id,
        config.fields,
        config.mode().as_str()
    ));
    if let Some(f) = config.outputs.index_formats()
        && *f != IndexFormats::default()
    {
        fp.push_str(&format!("|{f}"));
    }
    format!("{:016x}", fnv1a64(fp.as_bytes()))
}

/// The input's problems and one line per failed shard.
fn failure_problems(input_problems: &[String], failures: &[ShardReport]) -> Vec<String> {
    let mut problems = input_problems.to_vec();
    for f in failures {
        problems.push(format!(
            "shard {} failed after {} attempt(s): {}",
            f.name,
            f.attempts,
            f.error.as_deref().unwrap_or("unknown error")
        ));
    }
    problems
}

/// The report of an earlier run, if it verified exactly these fragments
/// with these settings.
fn already_done(prev: Report, config: &CoordinatorConfig, fingerprint: &str) -> Option<Report> {
    let same = prev.verdict == Verdict::Ok
        && prev.fingerprint == fingerprint
        && prev.expected_json == config.expect_json;
    same.then_some(prev)
}

/// What the merge gives the rest of the job's end: what it wrote, and the
/// shards' file lists it read (for the check of `data/`).
type Merged = (Option<MergeOutcome>, Option<ListsRead>, Option<Paired>);

/// Merges the fragments into the parquet when no shard failed; otherwise
/// removes any parquet, so that no table looks complete when it is not.
fn merge_or_withdraw(
    layout: &OutputLayout,
    rows: &ShardRows,
    config: &CoordinatorConfig,
    parquet_path: &Path,
    problems: &mut Vec<String>,
) -> Result<Merged, CoordinatorError> {
    if !rows.failures.is_empty() {
        if parquet_path.exists() {
            let _ = std::fs::remove_file(parquet_path);
        }
        problems.push("the parquet table was not written because some shards failed; fix or remove them and run again (finished shards are kept)".into());
        return Ok((None, None, None));
    }
    tracing::info!(fragments = rows.fragments.len(), "merging fragments");
    let (m, lists, mut paired) = merge_beside_lists(layout, rows, config, parquet_path)?;
    problems.extend(
        paired
            .as_mut()
            .map(|p| std::mem::take(&mut p.problems))
            .unwrap_or_default(),
    );
    if m.rows_shadowed > 0 {
        tracing::warn!(
            rows = m.rows_shadowed,
            "JSONs of earlier shards were replaced in data/ by later shards' files of the same name; their rows are left out of the table, as the seed's compile.py never sees them (listed in the report)"
        );
    }
    if m.duplicate_count > 0 {
        tracing::warn!(
            count = m.duplicate_count,
            "file names occur in more than one shard; later shards overwrite earlier files in data/ (listed in the report)"
        );
    }
    if m.rows + m.rows_shadowed != rows.totals.rows {
        problems.push(format!(
            "the merged parquet has {} rows and left out {} but the fragments hold {} rows",
            m.rows, m.rows_shadowed, rows.totals.rows
        ));
    }
    Ok((Some(m), lists, paired))
}

/// The merge, beside (extract mode) the read of the shards' file lists.
/// When the lists show a name written twice or a JSON without its image
/// (rare), the rows paired across shards are checked and their caption
/// files written ([`pairs`]), and the table is merged again with what that
/// and the JSONs a later shard's file replaced change.
fn merge_beside_lists(
    layout: &OutputLayout,
    rows: &ShardRows,
    config: &CoordinatorConfig,
    parquet_path: &Path,
) -> Result<(MergeOutcome, Option<ListsRead>, Option<Paired>), CoordinatorError> {
    let shards = verify::done_shards(&rows.shards);
    let extra = &config.fields.extra;
    let (merged, lists) = std::thread::scope(|scope| {
        let lists = config
            .outputs
            .writes_members()
            .then(|| scope.spawn(|| written::read_lists(layout, &shards)));
        let merged = merge::merge(&rows.fragments, extra, parquet_path, &Edits::default());
        // A panic is a bug: it must not pass for "nothing replaced".
        let lists = lists.map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
        (merged, lists)
    });
    let Some(l) = lists else {
        return Ok((merged?, None, None));
    };
    let orphan_json = rows.totals.json_without_image > 0;
    let paired = match pairs::may_pair(&l, orphan_json) {
        true => Some(pairs::pair(
            layout,
            (&rows.fragments, &shards, &l),
            config.outputs.writes_captions(),
            config.pair_check.as_ref(),
        )?),
        false => None,
    };
    let edits = Edits {
        shadowed: l.shadowed().clone(),
        dims: paired.as_ref().map(|p| p.dims.clone()).unwrap_or_default(),
    };
    let merged = match edits.shadowed.by_shard.is_empty() && edits.dims.is_empty() {
        true => merged?,
        false => merge::merge(&rows.fragments, extra, parquet_path, &edits)?,
    };
    // The job's end's own list changed: the check reads the lists again.
    let lists = (!paired.as_ref().is_some_and(|p| p.list_changed)).then_some(l);
    Ok((merged, lists, paired))
}

/// What `verify` would find wrong with the output `report` describes: the
/// files in `data/` (sizes: the job's start judged the kept shards at the
/// job's depth, and redone ones are new), and the table, the rows' files,
/// the entry and the indexes at the job's depth.
/// `lists`: the shards' file lists, when the merge read them.
fn output_problems(
    layout: &OutputLayout,
    config: &CoordinatorConfig,
    (report, lists): (&Report, Option<ListsRead>),
) -> Findings {
    let view = JobView::new(report, config.expect_json, Some(&config.backend.dataset_id));
    // `data/` (one stat per file, on two threads), then what was published
    // (the rows' files are judged by that one stat).
    let (mut f, written) = verify::check_data(layout, &view, CheckDepth::Sizes, lists);
    f.merge(verify::check_published(
        layout,
        &view,
        config.depth,
        &written,
    ));
    f
}

/// Index mode: removes the index files of no done shard (webshart would
/// load them; all of them when webshart's index is not asked for), as repairs.
fn remove_stray_indexes(layout: &OutputLayout, rows: &ShardRows, webshart: bool) -> Vec<Repair> {
    let (done, why): (HashSet<PathBuf>, &str) = if webshart {
        let done = rows.fragments.iter();
        let done = done.filter_map(|(name, _)| layout.index_path(name));
        (done.collect(), "it is the index of no done shard")
    } else {
        (
            HashSet::new(),
            "--index-format does not ask for webshart's index",
        )
    };
    let mut repairs = Vec::new();
    for path in judge::stray_indexes(layout, &done) {
        let found = format!("{why} (webshart would load it)");
        tracing::warn!(file = %path.display(), "{found}; removing it");
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::error!(file = %path.display(), error = %e, "cannot remove a stray index file");
            continue;
        }
        repairs.push(Repair {
            subject: path.display().to_string(),
            found,
            action: RepairAction::RemoveFile,
        });
    }
    repairs
}

/// Index mode: removes the folders of formats an earlier run wrote that
/// this job does not ask for (a trainer would read stale indexes), as repairs.
fn remove_unasked_formats(layout: &OutputLayout, formats: &IndexFormats) -> Vec<Repair> {
    shardprep_formats::remove_unasked(layout, formats)
        .into_iter()
        .map(|dir| {
            let found = format!("--index-format {formats} does not ask for the indexes it holds");
            tracing::warn!(folder = %dir.display(), "{found}; removed it");
            Repair {
                subject: dir.display().to_string(),
                found,
                action: RepairAction::RemoveFile,
            }
        })
        .collect()
}

/// The report of an earlier run, when it verified exactly these fragments
/// with these settings and the output still checks out as it says; else
/// the problems found in that output, as repairs to make.
fn unchanged_output(
    layout: &OutputLayout,
    config: &CoordinatorConfig,
    fingerprint: &str,
    repairs: &mut Vec<Repair>,
) -> Option<Report> {
    let path = layout.report_path();
    let prev = match read_report(&path) {
        Ok(r) => r,
        Err(why) => {
            tracing::warn!("{why}; merging the table again and rewriting the report");
            repairs.push(Repair {
                subject: path.display().to_string(),
                found: why,
                action: RepairAction::Remerge,
            });
            return None;
        }
    };
    let prev = already_done(prev, config, fingerprint)?;
    let found = output_problems(layout, config, (&prev, None)).problems;
    if found.is_empty() {
        return Some(prev);
    }
    for p in found {
        // What was found, without `verify`'s advice to run the job again.
        let found = p
            .split("; run the job again")
            .next()
            .unwrap_or(&p)
            .to_string();
        tracing::warn!("{found}; merging the table again and rewriting the report");
        repairs.push(Repair {
            subject: abs(layout.root()).display().to_string(),
            found,
            action: RepairAction::Remerge,
        });
    }
    None
}

/// Index mode with energon, DALI or wids: rebuilds their dataset-wide files
/// from the committed shards' pieces (failed shards are in none) and says
/// what they hold; a build that fails is a problem of the job.
fn build_formats(
    layout: &OutputLayout,
    config: &CoordinatorConfig,
    rows: &ShardRows,
    early: impl FnOnce() -> Option<shardprep_formats::EarlyEnergon>,
    problems: &mut Vec<String>,
) -> Option<shardprep_formats::FormatsReport> {
    let Some(formats) = config
        .outputs
        .index_formats()
        .filter(|f| f.has_other_than_webshart())
    else {
        if let Some(e) = early() {
            e.discard();
        }
        return None;
    };
    let done: Vec<String> = rows.fragments.iter().map(|(n, _)| n.clone()).collect();
    let started = Instant::now();
    let names = shardprep_formats::DatasetNames {
        name: &config.backend.dataset_id,
        caption_field: &config.fields.caption,
    };
    let summary = shardprep_formats::build_dataset(layout, &done, formats, names, early)
        .unwrap_or_else(|e| {
            problems.push(format!("--index-format {formats}: {e}"));
            shardprep_formats::DatasetSummary::default()
        });
    tracing::info!(formats = %formats, kept = summary.kept, samples = summary.samples, build_ms = started.elapsed().as_millis() as u64, sqlite_ms = summary.sqlite_ms, "index formats built");
    Some(shardprep_formats::FormatsReport {
        formats: formats.to_string(),
        not_indexed: rows.failures.iter().map(|f| f.name.clone()).collect(),
        summary,
    })
}

/// With `--data-sync end`, makes `data/` durable before the report says the
/// job verified (workers did not flush per shard). The problem, if any.
fn flush_data_at_end(layout: &OutputLayout, config: &CoordinatorConfig) -> Option<String> {
    if !(config.data_sync.at_end() && config.outputs.writes_data()) {
        return None;
    }
    let data = layout.data_dir();
    std::fs::File::open(&data)
        .and_then(|f| shardprep_core::durability::syncfs(&f))
        .err()
        .map(|e| format!("cannot flush {} to disk: {e}", data.display()))
}

/// Logs the verdict: one line when verified, each problem otherwise.
fn log_verdict(report: &Report) {
    if report.verdict == Verdict::Ok {
        tracing::info!(
            json = report.found_json,
            rows = report.rows,
            wall_ms = report.wall_ms,
            "job verified"
        );
    } else {
        for p in &report.problems {
            tracing::error!("{p}");
        }
    }
}

/// How the end of a job came out.
pub(crate) enum JobEnd {
    /// The report is written.
    Reported(Box<JobOutcome>),
    /// The check of the output found done shards' files in `data/` not as
    /// their lists say (on two workers, an earlier shard that wrote a path a
    /// later one wrote too may have landed last; or something changed a
    /// file meanwhile): the job redoes these shards (by index, with the
    /// repair to report) before it reports, rather than say "failed" over
    /// what a re-run repairs.
    Redo(Vec<(usize, Repair)>),
}

/// Merges, verifies and writes the report and the SimpleTuner entry, with
/// the repairs the job made (`shared.repairs`) and its own. With
/// `may_redo`, extract mode answers [`JobEnd::Redo`] instead of a report
/// when the check finds shards to redo.
pub(crate) fn finish_job(
    shared: &JobShared,
    config: &CoordinatorConfig,
    (started, started_at): (Instant, &str),
    may_redo: bool,
) -> Result<JobEnd, CoordinatorError> {
    let layout = &shared.layout;
    let (entries, workers_rss) = shared
        .state
        .read(|s| (s.shards().to_vec(), s.worker_peak_rss()));
    let rows = shard_rows(&entries, layout);
    let fingerprint = fingerprint(&entries, config);
    let report_path = layout.report_path();
    let mut problems = failure_problems(&shared.input_problems, &rows.failures);
    let mut repairs = crate::lock(&shared.repairs).clone();
    let earlier = repairs.len();
    if let Some(formats) = config.outputs.index_formats() {
        let webshart = formats.contains(IndexFormat::Webshart);
        repairs.extend(remove_stray_indexes(layout, &rows, webshart));
        repairs.extend(remove_unasked_formats(layout, formats));
    }

    let entry = backend_bytes(layout, config, shared.webshart.as_ref())?;
    repairs.extend(stale_backend(layout, entry.as_deref()));

    // Only a run that redid nothing can find the job already done.
    if problems.is_empty()
        && repairs.is_empty()
        && rows.recovered == rows.shards.len()
        && let Some(prev) = unchanged_output(layout, config, &fingerprint, &mut repairs)
    {
        return already_complete(shared, prev, &rows, entry.as_deref()).map(JobEnd::Reported);
    }

    let parquet_path = layout.parquet_path(&config.backend.dataset_id);
    let ((merged, lists, paired), formats) =
        merge_and_build(shared, config, &rows, &parquet_path, &mut problems)?;
    // With failed shards nothing is merged; the collisions among the shards
    // that did complete are still reported, so every problem shows at once.
    let collisions = match merged {
        None => Some(merge::duplicates_among(&rows.fragments)?),
        Some(_) => None,
    };
    let report = Report::new(config, started_at)
        .with_index_formats(formats)
        .with_shards(rows)
        .with_merge(merged.map(|m| (m, abs(&parquet_path))))
        .with_paired(paired)
        .with_duplicates(collisions);
    write_backend(layout, entry.as_deref())?;
    let report = report.with_published(judge::seal_published(
        layout,
        &config.backend.dataset_id,
        &config.outputs,
    ));
    let phase = Instant::now();
    let (found, page) = check_and_gather(layout, config, (&report, lists), problems.is_empty());
    tracing::debug!(
        ms = phase.elapsed().as_millis() as u64,
        "checked the output"
    );
    if may_redo && config.outputs.index_formats().is_none() && !found.damaged_shards.is_empty() {
        // This end's own repairs (a rewritten entry) are the next end's too.
        crate::lock(&shared.repairs).extend(repairs.split_off(earlier));
        return Ok(JobEnd::Redo(redo_list(&entries, &found)));
    }
    problems.extend(found.problems);
    problems.extend(flush_data_at_end(layout, config));
    let report = report
        .finish(problems, started.elapsed(), workers_rss, fingerprint)
        .with_repairs(repairs);
    let json = serde_json::to_vec_pretty(&report).map_err(|e| CoordinatorError::Encode {
        what: "report.json",
        detail: e.to_string(),
    })?;
    write_atomic(&report_path, &json)?;
    // Not kept while the page is rendered: with 10,000 shards each is ~10 MiB.
    drop(json);
    log_verdict(&report);
    let phase = Instant::now();
    write_page_logged(layout, &report, page);
    tracing::debug!(ms = phase.elapsed().as_millis() as u64, "wrote the page");
    Ok(JobEnd::Reported(Box::new(JobOutcome {
        ok: report.verdict == Verdict::Ok,
        report,
        report_path,
    })))
}

/// Merges the table beside the build of the formats' dataset-wide files
/// (energon's SQLite): neither reads what the other writes. Their problems
/// go to `problems`.
fn merge_and_build(
    shared: &JobShared,
    config: &CoordinatorConfig,
    rows: &ShardRows,
    parquet_path: &Path,
    problems: &mut Vec<String>,
) -> Result<(Merged, Option<shardprep_formats::FormatsReport>), CoordinatorError> {
    let layout = &shared.layout;
    let mut format_problems = Vec::new();
    let phase = Instant::now();
    let (merged, formats) = std::thread::scope(|scope| {
        let formats = scope.spawn(|| {
            let early = || shared.early_sqlite.as_ref().and_then(|e| e.finish());
            build_formats(layout, config, rows, early, &mut format_problems)
        });
        let merged = merge_or_withdraw(layout, rows, config, parquet_path, problems);
        (merged, formats.join())
    });
    let merged = merged?;
    let formats = formats.map_err(|_| CoordinatorError::TaskFailed {
        task: "building the index formats",
        detail: "the thread panicked".into(),
    })?;
    problems.extend(format_problems);
    tracing::debug!(
        ms = phase.elapsed().as_millis() as u64,
        "merged the table and built the formats"
    );
    Ok((merged, formats))
}

/// The end of a re-run that found the job already complete and verified:
/// the earlier report seen again; nothing is merged or rewritten.
fn already_complete(
    shared: &JobShared,
    prev: Report,
    rows: &ShardRows,
    entry: Option<&[u8]>,
) -> Result<Box<JobOutcome>, CoordinatorError> {
    let layout = &shared.layout;
    if let Some(early) = shared.early_sqlite.as_ref().and_then(|e| e.finish()) {
        early.discard();
    }
    let report_path = layout.report_path();
    tracing::info!(report = %report_path.display(), "the job is already complete and verified; nothing to redo");
    write_backend(layout, entry)?;
    let report = prev.seen_again(rows);
    write_page_logged(layout, &report, None);
    Ok(Box::new(JobOutcome {
        ok: true,
        report,
        report_path,
    }))
}

/// The shards `found` damaged, by index in `entries`, each with the repair
/// to report: the first problem that names it.
fn redo_list(entries: &[ShardEntry], found: &Findings) -> Vec<(usize, Repair)> {
    let names = |p: &&String, shard: &str| p.contains(&format!("shard {shard}"));
    entries
        .iter()
        .enumerate()
        .filter(|(_, e)| found.damaged_shards.contains(&e.name))
        .map(|(i, e)| {
            let why = found.problems.iter().find(|p| names(p, &e.name));
            let why = why.or(found.problems.first());
            let repair = Repair {
                subject: e.name.clone(),
                found: format!(
                    "the job's end found its files in data/ not as written: {}",
                    why.map_or("", String::as_str)
                ),
                action: RepairAction::RedoShard,
            };
            (i, repair)
        })
        .collect()
}

/// What `verify` finds in the output (when `check`: nothing failed
/// before), so that "verified" is never said over damage; and the files
/// the report page shows (they do not depend on the verdict). The check of
/// webshart's indexes counts the page's numbers as it reads them; else the
/// page's files are read on another thread meanwhile. `lists`: the
/// shards' file lists, when the merge read them.
fn check_and_gather(
    layout: &OutputLayout,
    config: &CoordinatorConfig,
    (report, lists): (&Report, Option<ListsRead>),
    check: bool,
) -> (Findings, Option<page::Gathered>) {
    let reads_indexes = config
        .outputs
        .index_formats()
        .is_some_and(|f| f.contains(IndexFormat::Webshart));
    if check && reads_indexes {
        let mut found = output_problems(layout, config, (report, lists));
        let page = page::gather_files_with(layout.root(), report, found.shape.take());
        return (found, Some(page));
    }
    std::thread::scope(|scope| {
        let page = scope.spawn(|| page::gather_files(layout.root(), report));
        let found = match check {
            true => output_problems(layout, config, (report, lists)),
            false => Findings::default(),
        };
        (found, page.join().ok())
    })
}

/// Writes `OUT/report.html` beside `report.json` (from `gathered` files
/// when the caller has them). A page that cannot be written is logged and
/// does not change the job's verdict.
fn write_page_logged(layout: &OutputLayout, report: &Report, gathered: Option<page::Gathered>) {
    let (out, opts) = (layout.root(), page::PageOptions::default());
    let written = match gathered {
        Some(g) => page::write_gathered(out, report, g, opts),
        None => page::write_page(out, report, opts),
    };
    match written {
        Ok(path) => tracing::info!(page = %path.display(), "wrote the report page"),
        Err(e) => tracing::warn!(error = %e, "cannot write the report page"),
    }
}

fn abs(p: &Path) -> PathBuf {
    report::absolute(p)
}

/// The report at `path`, or why it cannot be read.
fn read_report(path: &Path) -> Result<Report, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is not a shardprep report ({e})", path.display()))
}

/// The bytes of this job's `multidatabackend.json`; `None` when it writes
/// none (index mode without webshart's index).
fn backend_bytes(
    layout: &OutputLayout,
    config: &CoordinatorConfig,
    webshart: Option<&WebshartSource>,
) -> Result<Option<Vec<u8>>, CoordinatorError> {
    let out = abs(layout.root());
    let entry = match (&config.outputs, webshart) {
        (JobOutput::Index { formats }, _) if !formats.contains(IndexFormat::Webshart) => {
            return Ok(None);
        }
        (JobOutput::Index { .. }, Some(source)) => {
            report::webshart_entry(&config.backend, source, &out)
        }
        (outputs, _) => report::backend_entry(&config.backend, &out, outputs.writes_captions()),
    };
    let bytes = serde_json::to_vec_pretty(&entry).map_err(|e| CoordinatorError::Encode {
        what: "multidatabackend.json",
        detail: e.to_string(),
    })?;
    Ok(Some(bytes))
}

/// A repair when `OUT/multidatabackend.json` is there but not `entry`, what
/// this job writes (edited, or written with other entry settings): the
/// job's end writes it and seals it anew, with the report.
fn stale_backend(layout: &OutputLayout, entry: Option<&[u8]>) -> Option<Repair> {
    let path = layout.backend_path();
    let found = std::fs::read(&path).ok()?;
    (entry != Some(&found[..])).then(|| Repair {
        subject: abs(&path).display().to_string(),
        found: "it is not the entry this job writes (edited, or written with other settings)"
            .into(),
        action: RepairAction::Remerge,
    })
}

/// Writes `multidatabackend.json` as `entry` unless it already says the
/// same; removes it when the job writes none (the job's end seals it with
/// the table).
fn write_backend(layout: &OutputLayout, entry: Option<&[u8]>) -> Result<(), CoordinatorError> {
    let path = layout.backend_path();
    let Some(bytes) = entry else {
        let _ = std::fs::remove_file(&path);
        return Ok(());
    };
    if std::fs::read(&path).ok().as_deref() == Some(bytes) {
        return Ok(());
    }
    write_atomic(&path, bytes)
}

//! The end of a job, once every shard is settled: the report's shard lines,
//! the fingerprint of what was merged, the already-done check of a re-run,
//! the merge, the count checks, the end-of-job flush, the report and the
//! SimpleTuner entry. One short function per step; [`finish_job`] runs them.

use std::path::{Path, PathBuf};
use std::time::Instant;

use shardprep_core::layout::{OutputLayout, fnv1a64};
use shardprep_core::manifest::ShardCounts;
use shardprep_core::mode::Mode;

use crate::commit::write_atomic;
use crate::job::{JobOutcome, abs};
use crate::merge::{self, MergeOutcome};
use crate::report::{self, Report, ShardReport};
use crate::scheduler::{ShardEntry, ShardState};
use crate::verify::{self, Findings, ShardWrote};
use crate::{CoordinatorConfig, CoordinatorError, InputSpec, JobShared};

/// The report's shard lines and what they add up to.
#[derive(Debug, Default)]
pub(crate) struct ShardRows {
    pub shards: Vec<ShardReport>,
    pub failures: Vec<ShardReport>,
    /// Committed fragments (shard name, path), in shard order.
    pub fragments: Vec<(String, PathBuf)>,
    pub totals: ShardCounts,
    pub recovered: usize,
}

/// One shard's line in the report.
fn shard_report(e: &ShardEntry) -> ShardReport {
    let mut r = ShardReport {
        name: e.name.clone(),
        state: e.state_name().into(),
        attempts: e.attempts,
        recovered: e.recovered,
        worker: None,
        error: e.last_error.clone(),
        elapsed_ms: None,
        input_mb_per_s: None,
        counts: None,
        issues: Vec::new(),
        issues_not_listed: 0,
        image_issues: Vec::new(),
        image_issues_not_listed: 0,
    };
    if let ShardState::Done(m) = &e.state {
        r.worker = Some(m.worker_id.clone());
        r.elapsed_ms = Some(m.elapsed_ms);
        r.input_mb_per_s =
            Some(m.counts.bytes_read as f64 / 1e6 / (m.elapsed_ms.max(1) as f64 / 1000.0));
        r.counts = Some(m.counts.clone());
        r.issues = m.issues.clone();
        r.issues_not_listed = m.issues_not_listed;
        r.image_issues = m.image_issues.clone();
        r.image_issues_not_listed = m.image_issues_not_listed;
        r.error = None;
    }
    r
}

/// Every shard's line, the failed ones apart, the fragments to merge and the totals.
pub(crate) fn shard_rows(entries: &[ShardEntry], layout: &OutputLayout) -> ShardRows {
    let mut rows = ShardRows::default();
    for e in entries {
        let r = shard_report(e);
        if let ShardState::Done(m) = &e.state {
            rows.totals.add(&m.counts);
            rows.fragments
                .push((e.name.clone(), layout.fragment_path(&e.name)));
        } else {
            rows.failures.push(r.clone());
        }
        rows.recovered += usize::from(e.recovered);
        rows.shards.push(r);
    }
    rows
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
        config.mode.as_str()
    ));
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

/// The report of an earlier run that verified exactly these fragments with
/// these settings, if there is one and the parquet is still there.
fn already_done(
    layout: &OutputLayout,
    config: &CoordinatorConfig,
    fingerprint: &str,
) -> Option<Report> {
    let prev = read_report(&layout.report_path())?;
    let same = prev.verdict == "ok"
        && prev.fingerprint == fingerprint
        && layout.parquet_path(&config.backend.dataset_id).is_file()
        && prev.expected_json == config.expect_json;
    same.then_some(prev)
}

/// Merges the fragments into the parquet when no shard failed; otherwise
/// removes any parquet, so that no table looks complete when it is not.
fn merge_or_withdraw(
    rows: &ShardRows,
    config: &CoordinatorConfig,
    parquet_path: &Path,
    problems: &mut Vec<String>,
) -> Result<Option<MergeOutcome>, CoordinatorError> {
    if !rows.failures.is_empty() {
        if parquet_path.exists() {
            let _ = std::fs::remove_file(parquet_path);
        }
        problems.push("the parquet table was not written because some shards failed; fix or remove them and run again (finished shards are kept)".into());
        return Ok(None);
    }
    tracing::info!(fragments = rows.fragments.len(), "merging fragments");
    let m = merge::merge(&rows.fragments, &config.fields.extra, parquet_path)?;
    if m.duplicate_count > 0 {
        tracing::warn!(
            count = m.duplicate_count,
            "file names occur in more than one shard; later shards overwrite earlier files in data/ (listed in the report)"
        );
    }
    if m.rows != rows.totals.rows {
        problems.push(format!(
            "the merged parquet has {} rows but the fragments hold {} rows",
            m.rows, rows.totals.rows
        ));
    }
    Ok(Some(m))
}

/// [`verify::check_written`] on this job's committed shards: the files they
/// wrote are in `data/`, and the JSON count is the expected one.
fn written_check(layout: &OutputLayout, config: &CoordinatorConfig, rows: &ShardRows) -> Findings {
    let done: Vec<ShardWrote> = rows
        .shards
        .iter()
        .filter_map(|s| {
            let c = s.counts.as_ref()?;
            Some(ShardWrote {
                name: s.name.clone(),
                files: c.files_extracted + c.captions_written,
            })
        })
        .collect();
    verify::check_written(
        layout,
        &done,
        config.expect_json,
        rows.totals.json_files,
        config.extract,
        false,
    )
}

/// With `--data-sync end`, makes `data/` durable before the report says the
/// job verified (workers did not flush per shard). The problem, if any.
fn flush_data_at_end(layout: &OutputLayout, config: &CoordinatorConfig) -> Option<String> {
    if !(config.data_sync.at_end() && (config.extract || config.write_captions)) {
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
    if report.verdict == "ok" {
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

/// Merges, verifies and writes the report and the SimpleTuner entry.
pub(crate) fn finish_job(
    shared: &JobShared,
    config: &CoordinatorConfig,
    started: Instant,
    started_at: &str,
) -> Result<JobOutcome, CoordinatorError> {
    let layout = &shared.layout;
    let (entries, workers_rss) = shared
        .state
        .read(|s| (s.shards().to_vec(), s.worker_peak_rss()));
    let rows = shard_rows(&entries, layout);
    let fingerprint = fingerprint(&entries, config);
    let report_path = layout.report_path();
    let mut problems = failure_problems(&shared.input_problems, &rows.failures);

    // What `verify` judges too: both read the output by the same check.
    let written = written_check(layout, config, &rows);
    if problems.is_empty()
        && written.problems.is_empty()
        && let Some(prev) = already_done(layout, config, &fingerprint)
    {
        tracing::info!(report = %report_path.display(), "the job is already complete and verified; nothing to redo");
        write_backend(layout, config)?;
        return Ok(JobOutcome {
            ok: true,
            report: prev.seen_again(&rows),
            report_path,
        });
    }

    let parquet_path = layout.parquet_path(&config.backend.dataset_id);
    let merged = merge_or_withdraw(&rows, config, &parquet_path, &mut problems)?;
    // With failed shards nothing is merged; the collisions among the shards
    // that did complete are still reported, so every problem shows at once.
    let collisions = match merged {
        None => Some(merge::duplicates_among(&rows.fragments)?),
        Some(_) => None,
    };
    problems.extend(written.problems);
    problems.extend(flush_data_at_end(layout, config));
    let report = Report::new(config, started_at)
        .with_shards(rows)
        .with_merge(merged.map(|m| (m, abs(&parquet_path))))
        .with_duplicates(collisions)
        .finish(problems, started.elapsed(), workers_rss, fingerprint);
    let json = serde_json::to_vec_pretty(&report).map_err(|e| CoordinatorError::Encode {
        what: "report.json",
        detail: e.to_string(),
    })?;
    write_atomic(&report_path, &json)?;
    write_backend(layout, config)?;
    log_verdict(&report);
    Ok(JobOutcome {
        ok: report.verdict == "ok",
        report,
        report_path,
    })
}

fn read_report(path: &Path) -> Option<Report> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Writes `multidatabackend.json` unless it already says the same.
fn write_backend(
    layout: &OutputLayout,
    config: &CoordinatorConfig,
) -> Result<(), CoordinatorError> {
    let out = abs(layout.root());
    let entry = match (&config.mode, &config.input) {
        (Mode::Index, InputSpec::Local(input)) => {
            report::webshart_entry(&config.backend, &abs(input), &out)
        }
        _ => report::backend_entry(&config.backend, &out, config.write_captions),
    };
    let bytes = serde_json::to_vec_pretty(&entry).map_err(|e| CoordinatorError::Encode {
        what: "multidatabackend.json",
        detail: e.to_string(),
    })?;
    let path = layout.backend_path();
    if std::fs::read(&path).ok().as_deref() == Some(&bytes[..]) {
        return Ok(());
    }
    write_atomic(&path, &bytes)
}

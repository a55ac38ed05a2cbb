//! The report's shard lines from the scheduler's entries: each shard's
//! line, the failed ones apart, the fragments to merge and the totals (the
//! end of a job and the live page both read them).

use shardprep_core::layout::OutputLayout;

use crate::report::{ShardPhase, ShardReport, ShardRows};
use crate::scheduler::{ShardEntry, ShardState};

/// One shard's line in the report.
fn shard_report(e: &ShardEntry) -> ShardReport {
    let mut r = ShardReport {
        name: e.name.clone(),
        state: ShardPhase::of(&e.state),
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

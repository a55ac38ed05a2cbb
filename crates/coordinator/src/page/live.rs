//! The page of a running job, served at `/` of `--metrics-listen`: the
//! report as it stands (the committed shards' counts, the shards still
//! pending or leased), the samples of the committed shards, and a refresh
//! every few seconds. Once the job has ended, the page is its `report.html`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use shardprep_core::layout::OutputLayout;

use super::stats::{self, Stats};
use super::{Page, PageOptions, html, read_entry, rule_of, thumbs};
use crate::report::Report;
use crate::{CoordinatorConfig, JobShared, Phase};

/// Seconds between two reloads of the live page.
pub const REFRESH_SECS: u32 = 5;

/// Problem images newly decoded per rendering, so that a page comes quickly.
const THUMBS_PER_REFRESH: usize = 4;

/// What the page says about a running job.
#[derive(Debug, Clone)]
pub struct LiveState {
    /// `running`, `merging`, `finished` or `failed`.
    pub phase: String,
    pub refresh_secs: u32,
    pub note: String,
}

/// The live page's source: the job, its settings, and the samples of each
/// committed shard, read once per shard.
pub(crate) struct LivePage {
    config: CoordinatorConfig,
    started_at: String,
    opts: PageOptions,
    /// Committed shard (name and lease) → its samples.
    per_shard: Mutex<HashMap<(String, u64), Stats>>,
    /// Problem image → its thumbnail (or why there is none).
    thumbs: Mutex<HashMap<String, Result<String, String>>>,
}

impl LivePage {
    pub(crate) fn new(config: CoordinatorConfig, started_at: String) -> LivePage {
        LivePage {
            config,
            started_at,
            opts: PageOptions::default(),
            per_shard: Mutex::new(HashMap::new()),
            thumbs: Mutex::new(HashMap::new()),
        }
    }

    /// The page as the job stands now.
    pub(crate) fn render(&self, shared: &JobShared) -> String {
        let layout = &shared.layout;
        let phase = shared.phase();
        if matches!(phase, Phase::Finished | Phase::Failed) {
            // The job's own report.html once written, else the page of its report.json.
            if let Ok(page) = std::fs::read_to_string(layout.root().join(super::PAGE_FILE)) {
                return page;
            }
            if let Some(report) = read_report(layout) {
                return html::render(&super::gather(layout, &report, self.opts, None));
            }
        }
        let (entries, report) = self.provisional(shared);
        let stats = self.committed_stats(layout, &entries, &report);
        let entry = read_entry(layout);
        let page = Page {
            report: &report,
            rule: rule_of(entry.as_ref(), self.opts),
            entry,
            stats: stats.map_err(|e| e.to_string()),
            thumbs: thumbs::of_problems_cached(
                layout,
                &report,
                &mut crate::lock(&self.thumbs),
                THUMBS_PER_REFRESH,
            ),
            live: Some(LiveState {
                phase: phase_name(phase).into(),
                refresh_secs: REFRESH_SECS,
                note: "Counts, sizes and captions are those of the shards committed so far (a name repeated across shards is counted once per shard until the merge).".into(),
            }),
        };
        html::render(&page)
    }

    /// The report of the shards as they stand, and which are committed.
    fn provisional(&self, shared: &JobShared) -> (Vec<(String, u64)>, Report) {
        let entries = shared.state.read(|s| s.shards().to_vec());
        let committed = entries
            .iter()
            .filter_map(|e| match &e.state {
                crate::scheduler::ShardState::Done(m) => Some((e.name.clone(), m.lease_id)),
                _ => None,
            })
            .collect();
        let rows = crate::rows::shard_rows(&entries, &shared.layout);
        let mut report = Report::new(&self.config, &self.started_at).with_shards(rows);
        report.problems = shared.input_problems.clone();
        report.wall_ms = shared.started.elapsed().as_millis() as u64;
        let read: u64 = report
            .shards
            .iter()
            .filter_map(|s| s.counts.as_ref().map(|c| c.bytes_read))
            .sum();
        report.mb_per_s = read as f64 / 1e6 / (report.wall_ms.max(1) as f64 / 1000.0);
        (committed, report)
    }

    /// The samples of the committed shards, each shard read once.
    fn committed_stats(
        &self,
        layout: &OutputLayout,
        committed: &[(String, u64)],
        report: &Report,
    ) -> Result<Stats, super::PageError> {
        let mut cache = crate::lock(&self.per_shard);
        let mut total = Stats {
            source: String::new(),
            ..Stats::default()
        };
        for key in committed {
            if !cache.contains_key(key) {
                let s = shard_stats(layout, &key.0, report.mode == "index")?;
                cache.insert(key.clone(), s);
            }
            if let Some(s) = cache.get(key) {
                total.merge(s);
            }
        }
        Ok(total)
    }
}

/// One committed shard's samples: its fragment, or its index.
fn shard_stats(layout: &OutputLayout, name: &str, index: bool) -> Result<Stats, super::PageError> {
    if index {
        let paths: Vec<PathBuf> = layout.index_path(name).into_iter().collect();
        stats::from_indexes(&paths)
    } else {
        let mut s = stats::from_parquets(&[layout.fragment_path(name)])?;
        s.source = "the committed shards' fragments".into();
        Ok(s)
    }
}

fn read_report(layout: &OutputLayout) -> Option<Report> {
    serde_json::from_slice(&std::fs::read(layout.report_path()).ok()?).ok()
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Running => "running",
        Phase::Merging => "merging",
        Phase::Finished => "finished",
        Phase::Failed => "failed",
    }
}

//! `OUT/report.json` and the SimpleTuner dataloader entry `OUT/multidatabackend.json`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::json;
use shardprep_core::index_format::IndexFormats;
use shardprep_core::manifest::{IndexCounts, MemberIssue, Seals, ShardCounts};
use shardprep_core::mode::{JobOutput, Mode};

use crate::CoordinatorConfig;
use crate::merge::{DuplicateName, MergeOutcome};
use crate::scheduler::ShardState;
use crate::webshart::WebshartSource;
use crate::written::ShadowedName;

/// A report's verdict, written as `ok` or `failed`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Every shard done, and the output checked whole.
    Ok,
    /// Something failed or does not check out (see `problems`).
    #[default]
    Failed,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Failed => "failed",
        }
    }
}

/// Where a shard stood when the report was written, written as
/// `pending`, `leased`, `done` or `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShardPhase {
    Pending,
    Leased,
    Done,
    Failed,
}

impl ShardPhase {
    /// The phase of a scheduler state.
    pub(crate) fn of(state: &ShardState) -> Self {
        match state {
            ShardState::Pending => ShardPhase::Pending,
            ShardState::Leased { .. } => ShardPhase::Leased,
            ShardState::Done(_) => ShardPhase::Done,
            ShardState::Failed => ShardPhase::Failed,
        }
    }

    /// The phase as `report.json` writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            ShardPhase::Pending => "pending",
            ShardPhase::Leased => "leased",
            ShardPhase::Done => "done",
            ShardPhase::Failed => "failed",
        }
    }
}

/// What a re-run did about damage it found in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RepairAction {
    /// The shard's commit was taken back and the shard processed again.
    RedoShard,
    /// The fragments were merged into the table again, and the report and
    /// the entry rewritten.
    Remerge,
    /// A file that belongs to no done shard was removed.
    RemoveFile,
}

/// One repair a re-run made: what it found, and what it did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repair {
    /// The shard (for [`RepairAction::RedoShard`]) or file repaired.
    pub subject: String,
    /// What was wrong, in the words `verify` uses.
    pub found: String,
    pub action: RepairAction,
}

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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardReport {
    pub name: String,
    /// `done` or `failed` (or `pending`/`leased` if the job was interrupted).
    pub state: ShardPhase,
    pub attempts: u32,
    /// Committed by an earlier run of the coordinator (not redone).
    pub recovered: bool,
    pub worker: Option<String>,
    pub error: Option<String>,
    pub elapsed_ms: Option<u64>,
    /// Input read speed of the committed attempt (bytes read / its time), MB/s.
    #[serde(default)]
    pub input_mb_per_s: Option<f64>,
    pub counts: Option<ShardCounts>,
    pub issues: Vec<MemberIssue>,
    pub issues_not_listed: u64,
    /// Images with problems (bad header, size unlike the JSON's, failed
    /// decode, wrong hash), by name and reason.
    #[serde(default)]
    pub image_issues: Vec<MemberIssue>,
    #[serde(default)]
    pub image_issues_not_listed: u64,
}

/// Peak memory seen.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Resources {
    pub coordinator_peak_rss_bytes: u64,
    /// The largest peak over all workers (as they reported it).
    pub worker_peak_rss_bytes: u64,
}

/// The whole report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub shardprep_version: String,
    /// `extract` (members into `data/`) or `index` (a webshart index per shard).
    #[serde(default)]
    pub mode: String,
    /// Index mode: the index entries over all done shards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<IndexCounts>,
    /// Index mode with energon, DALI or wids (`--index-format`): the
    /// formats written and what they hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_formats: Option<shardprep_formats::FormatsReport>,
    pub verdict: Verdict,
    /// Why the verdict is `failed` (empty when ok).
    pub problems: Vec<String>,
    pub input: String,
    pub output: String,
    pub parquet: Option<String>,
    pub dataset_id: String,
    pub caption_field: String,
    pub captions: String,
    /// When `data/` was flushed to disk: `shard` (before each commit),
    /// `end` (before this report) or `none` (not waited for: the kernel
    /// finishes the writeback the workers started, as after `tar xf`).
    #[serde(default)]
    pub data_sync: String,
    /// The image checks the workers made (`verify --deep` repeats them).
    #[serde(default)]
    pub image_checks: shardprep_core::manifest::ImageChecks,
    pub expected_json: Option<u64>,
    /// Sum of the shards' `*.json` members: the seed's `find data -name '*.json' | wc -l`
    /// when no name repeats (`--expect-json` is checked against the files `data/` holds).
    pub found_json: u64,
    /// Rows of the merged parquet.
    pub rows: u64,
    /// Sum of the fragments' rows (`rows` + `rows_shadowed`).
    pub fragment_rows: u64,
    /// Rows left out of the table: their JSON's file in `data/` was
    /// replaced by a later shard's file of the same path, so the seed's
    /// `compile.py` would not see it.
    #[serde(default)]
    pub rows_shadowed: u64,
    /// JSON files of earlier shards that later shards' files replaced in `data/`.
    #[serde(default)]
    pub json_replaced: u64,
    #[serde(default)]
    pub json_replaced_listed: Vec<ShadowedName>,
    /// Rows whose image another shard wrote last (`tar xf` pairs them
    /// across shards): their images were checked again at the job's end.
    #[serde(default)]
    pub rows_paired_across_shards: u64,
    /// The first few of those rows' images.
    #[serde(default)]
    pub rows_paired_listed: Vec<String>,
    /// Caption files several shards wrote, written again by the job's end
    /// with the caption of the last row naming them (count; the first few).
    #[serde(default)]
    pub captions_rewritten: u64,
    #[serde(default)]
    pub captions_rewritten_listed: Vec<String>,
    pub shards_total: usize,
    pub shards_done: usize,
    pub shards_failed: usize,
    pub shards_recovered: usize,
    pub totals: ShardCounts,
    /// File names with rows in more than one shard (later ones overwrite earlier ones in data/).
    pub duplicate_filenames: u64,
    pub duplicate_filenames_listed: Vec<DuplicateName>,
    pub failures: Vec<ShardReport>,
    pub shards: Vec<ShardReport>,
    pub started_at: String,
    pub finished_at: String,
    pub wall_ms: u64,
    /// Throughput of this run (bytes read / wall time), in MB/s.
    pub mb_per_s: f64,
    pub resources: Resources,
    /// Identifies the set of committed fragments merged (for no-op re-runs).
    pub fingerprint: String,
    /// What this run found damaged in an earlier run's output and what it
    /// did about it (absent when nothing was).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repairs: Vec<Repair>,
    /// The files the job's end built from the commits (the table, the
    /// dataset-wide index files), sealed: size and CRC-32 by path under
    /// `OUT/`, for the judge (absent in reports of older versions).
    #[serde(default, skip_serializing_if = "Seals::is_empty")]
    pub published: Seals,
}

impl Report {
    /// The report of `config`'s job, started at `started_at`, with nothing
    /// counted yet; the `with_*` steps and [`Report::finish`] fill it in.
    pub(crate) fn new(config: &CoordinatorConfig, started_at: &str) -> Report {
        Report {
            shardprep_version: env!("CARGO_PKG_VERSION").into(),
            mode: config.mode().as_str().into(),
            index: None,
            index_formats: None,
            verdict: Verdict::Failed,
            problems: Vec::new(),
            input: config.input.display(),
            output: std::path::absolute(&config.output)
                .unwrap_or_else(|_| config.output.clone())
                .display()
                .to_string(),
            parquet: None,
            dataset_id: config.backend.dataset_id.clone(),
            caption_field: config.fields.caption.clone(),
            captions: match &config.outputs {
                JobOutput::Index { .. } => "webshart",
                JobOutput::Extract { captions: true, .. } => "textfile",
                JobOutput::Extract {
                    captions: false, ..
                } => "parquet",
            }
            .into(),
            data_sync: config.data_sync.as_str().into(),
            image_checks: config.image_checks.clone(),
            expected_json: config.expect_json,
            found_json: 0,
            rows: 0,
            fragment_rows: 0,
            rows_shadowed: 0,
            json_replaced: 0,
            json_replaced_listed: Vec::new(),
            rows_paired_across_shards: 0,
            rows_paired_listed: Vec::new(),
            captions_rewritten: 0,
            captions_rewritten_listed: Vec::new(),
            shards_total: 0,
            shards_done: 0,
            shards_failed: 0,
            shards_recovered: 0,
            totals: ShardCounts::default(),
            duplicate_filenames: 0,
            duplicate_filenames_listed: Vec::new(),
            failures: Vec::new(),
            shards: Vec::new(),
            started_at: started_at.to_string(),
            finished_at: String::new(),
            wall_ms: 0,
            mb_per_s: 0.0,
            resources: Resources::default(),
            fingerprint: String::new(),
            repairs: Vec::new(),
            published: Seals::default(),
        }
    }

    /// The shards' lines and totals.
    pub(crate) fn with_shards(mut self, rows: ShardRows) -> Report {
        self.found_json = rows.totals.json_files;
        self.fragment_rows = rows.totals.rows;
        self.shards_total = rows.shards.len();
        self.shards_failed = rows.failures.len();
        self.shards_done = self.shards_total - self.shards_failed;
        self.shards_recovered = rows.recovered;
        if self.mode == Mode::Index.as_str() {
            self.index = Some(rows.totals.index.clone());
        }
        self.totals = rows.totals;
        self.failures = rows.failures;
        self.shards = rows.shards;
        self
    }

    /// What the formats other than webshart hold (index mode).
    pub(crate) fn with_index_formats(
        mut self,
        f: Option<shardprep_formats::FormatsReport>,
    ) -> Report {
        self.index_formats = f;
        self
    }

    /// The formats an index-mode report says were written (webshart alone
    /// when it names none; `None` in extract mode or when unreadable).
    pub fn written_formats(&self) -> Option<Result<IndexFormats, String>> {
        if self.mode != Mode::Index.as_str() {
            return None;
        }
        Some(match &self.index_formats {
            None => Ok(IndexFormats::default()),
            Some(f) => f.formats.parse(),
        })
    }

    /// What the merge wrote (nothing when shards failed), and where.
    pub(crate) fn with_merge(mut self, merged: Option<(MergeOutcome, PathBuf)>) -> Report {
        if let Some((m, path)) = merged {
            self.rows = m.rows;
            self.rows_shadowed = m.rows_shadowed;
            self.json_replaced = m.json_replaced;
            self.json_replaced_listed = m.json_replaced_listed;
            self.duplicate_filenames = m.duplicate_count;
            self.duplicate_filenames_listed = m.duplicates;
            self.parquet = Some(path.display().to_string());
        }
        self
    }

    /// What the job's end found and did for rows paired across shards:
    /// their images' problems join their shards' lines and the totals.
    pub(crate) fn with_paired(mut self, paired: Option<crate::pairs::Paired>) -> Report {
        let Some(p) = paired else { return self };
        self.rows_paired_across_shards = p.rows;
        self.rows_paired_listed = p.rows_listed;
        self.captions_rewritten = p.captions_rewritten;
        self.captions_rewritten_listed = p.captions_rewritten_listed;
        for (shard, issue) in p.issues {
            *self
                .totals
                .image_problems
                .entry(issue.kind.clone())
                .or_default() += 1;
            let Some(s) = self.shards.iter_mut().find(|s| s.name == shard) else {
                continue;
            };
            if let Some(c) = s.counts.as_mut() {
                *c.image_problems.entry(issue.kind.clone()).or_default() += 1;
            }
            s.image_issues.push(issue);
        }
        self
    }

    /// File names several completed shards share, when no merge ran.
    pub(crate) fn with_duplicates(mut self, found: Option<(u64, Vec<DuplicateName>)>) -> Report {
        if let Some((count, listed)) = found {
            self.duplicate_filenames = count;
            self.duplicate_filenames_listed = listed;
        }
        self
    }

    /// This report as a re-run that found the job already done tells it:
    /// which shards this run recovered (all of them, as it redid none).
    pub(crate) fn seen_again(mut self, rows: &ShardRows) -> Report {
        self.shards_recovered = rows.recovered;
        for s in &mut self.shards {
            s.recovered = rows.shards.iter().any(|r| r.name == s.name && r.recovered);
        }
        self
    }

    /// What this run repaired.
    pub(crate) fn with_published(mut self, published: Seals) -> Report {
        self.published = published;
        self
    }

    pub(crate) fn with_repairs(mut self, repairs: Vec<Repair>) -> Report {
        self.repairs = repairs;
        self
    }

    /// The verdict (`ok` when there are no `problems`), timings and memory.
    pub(crate) fn finish(
        mut self,
        problems: Vec<String>,
        wall: std::time::Duration,
        worker_peak_rss_bytes: u64,
        fingerprint: String,
    ) -> Report {
        self.verdict = if problems.is_empty() {
            Verdict::Ok
        } else {
            Verdict::Failed
        };
        self.problems = problems;
        self.finished_at = now_rfc3339();
        self.wall_ms = wall.as_millis() as u64;
        let read_now: u64 = self
            .shards
            .iter()
            .filter(|s| !s.recovered)
            .filter_map(|s| s.counts.as_ref().map(|c| c.bytes_read))
            .sum();
        self.mb_per_s = read_now as f64 / 1e6 / (self.wall_ms.max(1) as f64 / 1000.0);
        self.resources = Resources {
            coordinator_peak_rss_bytes: peak_rss_bytes(),
            worker_peak_rss_bytes,
        };
        self.fingerprint = fingerprint;
        self
    }
}

/// Settings of the SimpleTuner dataloader entry (the seed's values by default).
#[derive(Debug, Clone, PartialEq)]
pub struct BackendSettings {
    pub dataset_id: String,
    /// Where the trainer mounts `OUT`: the default `instance_data_dir`,
    /// `parquet.path` and `cache_dir_vae` are rebased onto it (the
    /// per-path settings below still win). Default: absolute `OUT`.
    pub trainer_root: Option<PathBuf>,
    /// `data/` as the trainer sees it; default: absolute `OUT/data`.
    pub instance_data_dir: Option<PathBuf>,
    /// The parquet as the trainer sees it; default: absolute `OUT/<id>.parquet`.
    pub parquet_path: Option<PathBuf>,
    pub resolution: f64,
    pub maximum_image_size: f64,
    pub minimum_image_size: f64,
    pub target_downsample_size: f64,
    pub resolution_type: String,
    /// Default: absolute `OUT/cache/vae/<id>`.
    pub cache_dir_vae: Option<PathBuf>,
}

impl BackendSettings {
    /// The seed's dataloader settings for `dataset_id`.
    pub fn seed(dataset_id: &str) -> Self {
        BackendSettings {
            dataset_id: dataset_id.to_string(),
            trainer_root: None,
            instance_data_dir: None,
            parquet_path: None,
            resolution: 1.0,
            maximum_image_size: 2.0,
            minimum_image_size: 0.75,
            target_downsample_size: 1.75,
            resolution_type: "area".into(),
            cache_dir_vae: None,
        }
    }
}

/// `p` made absolute against the current directory (SimpleTuner matches
/// image paths by string, so a relative path matches nothing).
pub(crate) fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The dataloader entry, as a one-element JSON array (SimpleTuner's
/// `multidatabackend.json` is a list of entries). Every path in it is
/// absolute: relative settings are resolved against the current directory.
pub fn backend_entry(
    s: &BackendSettings,
    out_abs: &Path,
    textfile_captions: bool,
) -> serde_json::Value {
    let root = absolute(s.trainer_root.as_deref().unwrap_or(out_abs));
    let pick =
        |given: &Option<PathBuf>, default: PathBuf| absolute(given.as_ref().unwrap_or(&default));
    let data_dir = pick(&s.instance_data_dir, root.join("data"));
    let parquet = pick(
        &s.parquet_path,
        root.join(format!("{}.parquet", s.dataset_id)),
    );
    let cache = pick(
        &s.cache_dir_vae,
        root.join("cache").join("vae").join(&s.dataset_id),
    );
    json!([{
        "id": s.dataset_id,
        "type": "local",
        "instance_data_dir": data_dir.to_string_lossy(),
        "resolution": s.resolution,
        "maximum_image_size": s.maximum_image_size,
        "minimum_image_size": s.minimum_image_size,
        "target_downsample_size": s.target_downsample_size,
        "resolution_type": s.resolution_type,
        "cache_dir_vae": format!("{}/", cache.to_string_lossy().trim_end_matches('/')),
        "caption_strategy": if textfile_captions { "textfile" } else { "parquet" },
        "metadata_backend": "parquet",
        "parquet": {
            "path": parquet.to_string_lossy(),
            "caption_column": "caption",
            "filename_column": "filename",
            "width_column": "width",
            "height_column": "height",
            "identifier_includes_extension": true
        }
    }])
}

/// The webshart dataloader entry of an index-mode output (a one-element
/// array): SimpleTuner reads the tars at `source` (a local folder, or a Hub
/// repository with its `subfolder`) through the indexes in `<root>/index`,
/// with the extract entry's resolution settings.
pub fn webshart_entry(
    s: &BackendSettings,
    source: &WebshartSource,
    out_abs: &Path,
) -> serde_json::Value {
    let root = absolute(s.trainer_root.as_deref().unwrap_or(out_abs));
    let cache = root.join("cache");
    let mut entry = json!({
        "id": s.dataset_id,
        "type": "webshart",
        "dataset_type": "image",
        "source": match source {
            WebshartSource::Folder(dir) => absolute(Path::new(dir)).to_string_lossy().into_owned(),
            WebshartSource::Hub { repo, .. } => repo.clone(),
        },
        "metadata": root.join(shardprep_core::layout::INDEX_DIR).to_string_lossy(),
        "caption_strategy": "webshart",
        "metadata_backend": "webshart",
        "webshart": {
            "cache_dir": cache.join("webshart").to_string_lossy(),
            "shard_cache_gb": 0
        },
        "resolution": s.resolution,
        "maximum_image_size": s.maximum_image_size,
        "minimum_image_size": s.minimum_image_size,
        "target_downsample_size": s.target_downsample_size,
        "resolution_type": s.resolution_type,
        "cache_dir_vae": format!("{}/", cache.join("vae").join(&s.dataset_id).to_string_lossy()),
    });
    if let WebshartSource::Hub { subfolder, .. } = source
        && !subfolder.is_empty()
    {
        entry["subfolder"] = json!(subfolder);
    }
    json!([entry])
}

pub use shardprep_core::layout::peak_rss_bytes;

/// Current time as RFC 3339 (UTC, seconds).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_format() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_000_000);
        let s = humantime::format_rfc3339_seconds(t).to_string();
        assert_eq!(s, "2026-11-18T11:06:40Z");
        assert_eq!(now_rfc3339().len(), s.len());
    }

    #[test]
    fn verdicts_and_phases_are_written_as_before() {
        assert_eq!(serde_json::to_value(Verdict::Ok).unwrap(), "ok");
        assert_eq!(serde_json::to_value(Verdict::Failed).unwrap(), "failed");
        assert_eq!(serde_json::to_value(ShardPhase::Done).unwrap(), "done");
        assert_eq!(serde_json::to_value(ShardPhase::Leased).unwrap(), "leased");
        let r: Repair = serde_json::from_value(serde_json::json!(
            {"subject": "a.tar", "found": "x", "action": "redo_shard"}
        ))
        .unwrap();
        assert_eq!(r.action, RepairAction::RedoShard);
    }

    #[test]
    fn backend_entry_matches_the_seed() {
        let e = backend_entry(
            &BackendSettings::seed("dalle3"),
            Path::new("/x/dalle3"),
            true,
        );
        let e = &e[0];
        assert_eq!(e["id"], "dalle3");
        assert_eq!(e["type"], "local");
        assert_eq!(e["instance_data_dir"], "/x/dalle3/data");
        assert_eq!(e["resolution"], 1.0);
        assert_eq!(e["maximum_image_size"], 2.0);
        assert_eq!(e["minimum_image_size"], 0.75);
        assert_eq!(e["target_downsample_size"], 1.75);
        assert_eq!(e["resolution_type"], "area");
        assert_eq!(e["caption_strategy"], "textfile");
        assert_eq!(e["metadata_backend"], "parquet");
        assert_eq!(e["parquet"]["path"], "/x/dalle3/dalle3.parquet");
        assert_eq!(e["parquet"]["caption_column"], "caption");
        assert_eq!(e["parquet"]["filename_column"], "filename");
        assert_eq!(e["parquet"]["identifier_includes_extension"], true);
    }

    fn paths(s: &BackendSettings) -> [String; 3] {
        let e = &backend_entry(s, Path::new("/x/dalle3"), true)[0];
        [
            e["instance_data_dir"].as_str().unwrap().to_string(),
            e["parquet"]["path"].as_str().unwrap().to_string(),
            e["cache_dir_vae"].as_str().unwrap().to_string(),
        ]
    }

    #[test]
    fn trainer_root_rebases_every_path_and_per_path_settings_win() {
        let mut s = BackendSettings::seed("dalle3");
        s.trainer_root = Some("/mnt/train".into());
        assert_eq!(
            paths(&s),
            [
                "/mnt/train/data",
                "/mnt/train/dalle3.parquet",
                "/mnt/train/cache/vae/dalle3/"
            ]
        );
        s.parquet_path = Some("/elsewhere/t.parquet".into());
        assert_eq!(paths(&s)[1], "/elsewhere/t.parquet");
        assert_eq!(paths(&s)[0], "/mnt/train/data");
    }

    #[test]
    fn relative_paths_become_absolute_against_the_current_directory() {
        let cwd = std::env::current_dir().unwrap();
        let mut s = BackendSettings::seed("dalle3");
        s.instance_data_dir = Some("out/e/data".into());
        s.cache_dir_vae = Some("cache".into());
        s.trainer_root = Some("mnt".into());
        let [data, parquet, cache] = paths(&s);
        assert_eq!(data, cwd.join("out/e/data").display().to_string());
        assert_eq!(
            parquet,
            cwd.join("mnt/dalle3.parquet").display().to_string()
        );
        assert_eq!(cache, format!("{}/", cwd.join("cache").display()));
        for p in [data, parquet, cache] {
            assert!(Path::new(&p).is_absolute(), "{p}");
        }
    }

    #[test]
    fn webshart_entry_names_the_tars_the_index_and_the_cache() {
        let e = webshart_entry(
            &BackendSettings::seed("dalle3"),
            &WebshartSource::Folder("/in/tars".into()),
            Path::new("/x/out"),
        );
        let e = &e[0];
        assert!(e.get("subfolder").is_none());
        assert_eq!(e["type"], "webshart");
        assert_eq!(e["dataset_type"], "image");
        assert_eq!(e["source"], "/in/tars");
        assert_eq!(e["metadata"], "/x/out/index");
        assert_eq!(e["caption_strategy"], "webshart");
        assert_eq!(e["metadata_backend"], "webshart");
        assert_eq!(e["webshart"]["cache_dir"], "/x/out/cache/webshart");
        assert_eq!(e["webshart"]["shard_cache_gb"], 0);
        assert_eq!(e["resolution_type"], "area");
        assert_eq!(e["maximum_image_size"], 2.0);
    }

    #[test]
    fn webshart_entry_of_a_hub_folder_names_the_repository_and_its_subfolder() {
        let hub = |sub: &str| WebshartSource::Hub {
            repo: "o/n".into(),
            subfolder: sub.into(),
        };
        let settings = BackendSettings::seed("dalle3");
        let e = webshart_entry(&settings, &hub("data"), Path::new("/x/out"));
        assert_eq!(e[0]["source"], "o/n");
        assert_eq!(e[0]["subfolder"], "data");
        assert_eq!(e[0]["metadata"], "/x/out/index");
        let e = webshart_entry(&settings, &hub(""), Path::new("/x/out"));
        assert!(e[0].get("subfolder").is_none());
    }
}

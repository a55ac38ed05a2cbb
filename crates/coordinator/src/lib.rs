//! The shardprep coordinator: finds the shards, leases them to workers over
//! gRPC, commits their fragments, merges them into the final parquet,
//! verifies the counts and writes the report and the SimpleTuner entry.
//!
//! Layout:
//! - [`discover`]: the input's `*.tar` shards and their identities.
//! - [`scheduler`]: leases, heartbeats, retries (pure logic, unit-tested).
//! - [`service`]: the tonic handlers and the token check.
//! - [`judge`]: the one judge of an output and owner of `OUT/.shardprep/`:
//!   which committed shards hold, what to redo or rebuild, and why.
//! - [`commit`]: the mechanics of a commit (prepare, publish) and of taking one back.
//! - [`merge`]: fragments → final parquet, streaming, in shard order.
//! - [`report`]: `report.json` and `multidatabackend.json`.
//! - [`verify`]: checks of an existing output (`shardprep verify`), the
//!   published part of which the end of a job runs too.
//! - [`verify_index`]: the same for an index-mode output (`--mode index`).
//! - [`written`]: what the shards wrote into `data/` against their file lists.
//! - [`findings`]: what a check found (lines checked, problems).
//! - `early_sqlite`: energon's `index.sqlite` built while the shards commit.
//! - `index_file`: one shard's webshart index read in one streamed pass.
//! - `wire`: the coordinator's wire messages (job spec, lease, status).
//! - [`job`]: the life of a job from start to the end of serving ([`serve`]).
//! - [`page`]: `report.html`, the report as a page (also live at `/` of `--metrics-listen`).
//! - `metrics`: `GET /metrics` (Prometheus text format) and the live page at `/`.
//! - `rows`: the report's shard lines from the scheduler's entries.
//! - `finish`: the job's end: report rows, merge, checks, `report.json`.
//!
//! Imports go one way: `job` → `finish` → `verify` → `judge` → `commit`,
//! `written`, `report`; `lock` and `report` import no other module's items
//! but the config.

pub mod commit;
pub mod discover;
mod early_sqlite;
pub mod findings;
mod finish;
mod index_file;
pub mod job;
pub mod judge;
pub mod lock;
pub mod merge;
mod metrics;
pub mod page;
pub mod pairs;
pub mod report;
mod rows;
pub mod scheduler;
pub mod service;
pub mod verify;
pub mod verify_index;
pub mod webshart;
mod wire;
pub mod written;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use shardprep_core::depth::CheckDepth;
use shardprep_core::durability::DataSync;
use shardprep_core::fields::FieldMap;
use shardprep_core::layout::OutputLayout;
use shardprep_core::mode::{JobOutput, Mode};
use shardprep_core::proto;

pub use discover::InputSpec;
pub use finish::JobOutcome;
pub use job::serve;
pub use report::BackendSettings;
use scheduler::Scheduler;

/// Errors of the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("cannot read the input {path}: {source}")]
    Input {
        path: String,
        source: std::io::Error,
    },
    #[error("no *.tar shards in {path}: point --input at the folder that holds the shards")]
    NoShards { path: String },
    #[error(
        "cannot {what} {path}: {source}; check that the output directory is writable and has free space"
    )]
    Output {
        path: String,
        what: String,
        source: std::io::Error,
    },
    #[error("cannot list the remote input: {0}")]
    Remote(String),
    #[error("merge failed: {0}")]
    Merge(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("bad commit: {0}")]
    BadCommit(String),
    #[error("gRPC server failed: {0}")]
    Server(String),
    #[error(
        "cannot serve /metrics on {addr}: {source}; pick a free port with --metrics-listen (or leave it off)"
    )]
    MetricsListen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the {task} stopped unexpectedly (a bug in shardprep; please report it): {detail}")]
    TaskFailed { task: &'static str, detail: String },
    #[error("cannot encode {what} as JSON: {detail}")]
    Encode { what: &'static str, detail: String },
    #[error(
        "interrupted before the job finished; start the coordinator again with the same --output to resume"
    )]
    Interrupted,
    #[error(
        "another job is using this output ({path} is locked by {holder}); wait for it to end or give another --output"
    )]
    OutputBusy { path: String, holder: String },
}

/// Everything the coordinator needs to run a job.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Where the `*.tar` shards are: a folder, a remote location or a list.
    pub input: InputSpec,
    /// The output folder (the seed's `dalle3/`).
    pub output: PathBuf,
    /// Shared secret every RPC must carry.
    pub token: String,
    pub fields: FieldMap,
    /// What the job writes: members and captions into `data/`, or indexes
    /// of the tars in place (`--mode`, `--no-extract`, `--captions`,
    /// `--index-format`).
    pub outputs: JobOutput,
    /// The global JSON count to verify, if known (DALLE-3: 1,161,957).
    pub expect_json: Option<u64>,
    pub backend: BackendSettings,
    pub lease_timeout: Duration,
    /// A leased shard whose progress does not move for this long is re-leased.
    pub stall_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub max_attempts: u32,
    /// After the job, how long to wait for workers to hear that it is done.
    pub worker_grace: Duration,
    /// After the job, keep answering "done" at least this long (bounded by
    /// `worker_grace`), so that workers still in their reconnect backoff
    /// hear it too. `run`, which owns its workers, uses zero.
    pub linger: Duration,
    /// How often to log a progress line.
    pub progress_interval: Duration,
    /// When the files extracted into `data/` are flushed to disk.
    pub data_sync: DataSync,
    /// Serve gRPC over TLS with this certificate chain and key (PEM).
    pub tls: Option<ServerTls>,
    /// Serve `GET /metrics` (Prometheus text format, no token) here.
    pub metrics_listen: Option<SocketAddr>,
    /// Checks of the images themselves the workers make (issue 20).
    pub image_checks: shardprep_core::manifest::ImageChecks,
    /// How closely a re-run judges what earlier runs committed (`--deep`:
    /// checksums too, not only sizes).
    pub depth: CheckDepth,
    /// Sparse members expanding past this many bytes are refused.
    pub max_sparse_size: u64,
    /// How the job's end checks a row's image another shard wrote (the
    /// binary supplies the workers' checks; without it such rows are found
    /// and their caption files written, but their images are not checked).
    pub pair_check: Option<pairs::PairChecker>,
}

impl Default for CoordinatorConfig {
    /// The CLI's defaults: DALLE-3 fields, textfile captions, extraction on,
    /// the seed's dataloader settings, flushes per shard.
    fn default() -> Self {
        CoordinatorConfig {
            input: InputSpec::Local(PathBuf::from(".")),
            output: PathBuf::from("out"),
            token: String::new(),
            fields: FieldMap::dalle3(),
            outputs: JobOutput::default(),
            expect_json: None,
            backend: BackendSettings::seed("dalle3"),
            lease_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(300),
            heartbeat_interval: Duration::from_secs(1),
            max_attempts: 3,
            worker_grace: Duration::from_secs(10),
            // Workers retry with a backoff of at most 3 s: linger a little longer.
            linger: Duration::from_secs(4),
            progress_interval: Duration::from_secs(5),
            data_sync: DataSync::Shard,
            tls: None,
            metrics_listen: None,
            image_checks: Default::default(),
            depth: CheckDepth::Sizes,
            max_sparse_size: shardprep_core::size::DEFAULT_MAX_SPARSE_SIZE,
            pair_check: None,
        }
    }
}

impl CoordinatorConfig {
    /// A job reading `input` into `output` with every other setting at its default.
    pub fn new(input: InputSpec, output: impl Into<PathBuf>) -> Self {
        CoordinatorConfig {
            input,
            output: output.into(),
            ..Default::default()
        }
    }
    /// The shared secret every RPC must carry.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = token.into();
        self
    }
    /// How long to keep answering "done" after the job.
    pub fn with_linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }
    /// When the files extracted into `data/` are flushed.
    pub fn with_data_sync(mut self, data_sync: DataSync) -> Self {
        self.data_sync = data_sync;
        self
    }
    /// Check rows paired with another shard's image with `check`.
    pub fn with_pair_check(mut self, check: std::sync::Arc<dyn pairs::PairCheck>) -> Self {
        self.pair_check = Some(pairs::PairChecker(check));
        self
    }
    /// Refuse sparse members expanding past `bytes`.
    pub fn with_max_sparse_size(mut self, bytes: u64) -> Self {
        self.max_sparse_size = bytes;
        self
    }
    /// What the job writes (extract the members, or index the tars in place).
    pub fn with_outputs(mut self, outputs: JobOutput) -> Self {
        self.outputs = outputs;
        self
    }
    /// The job's mode.
    pub fn mode(&self) -> Mode {
        self.outputs.mode()
    }
    /// Serve gRPC over TLS.
    pub fn with_tls(mut self, tls: Option<ServerTls>) -> Self {
        self.tls = tls;
        self
    }
    /// Serve `GET /metrics` on `addr` (off when `None`).
    pub fn with_metrics_listen(mut self, addr: Option<SocketAddr>) -> Self {
        self.metrics_listen = addr;
        self
    }
}

/// TLS identity of the coordinator.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

/// Phase of the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    Merging,
    Finished,
    Failed,
}

impl Phase {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Merging => "merging",
            Phase::Finished => "finished",
            Phase::Failed => "failed",
        }
    }
}

/// Locks `m`, also after a panic elsewhere while it was held: every guarded
/// state here changes in single assignments and stays usable.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The job's scheduler and who waits on it. Changes go through
/// [`JobState::update`], which wakes the job driver and idle workers'
/// long polls itself, so no handler has to remember to.
pub(crate) struct JobState {
    sched: Mutex<Scheduler>,
    changed: tokio::sync::Notify,
    /// Bumped on every change that may turn a "wait" into work or "done":
    /// idle workers' lease requests wait on it (long poll).
    version: tokio::sync::watch::Sender<u64>,
}

impl JobState {
    pub(crate) fn new(sched: Scheduler) -> Self {
        JobState {
            sched: Mutex::new(sched),
            changed: tokio::sync::Notify::new(),
            version: tokio::sync::watch::channel(0).0,
        }
    }

    /// Reads the scheduler.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&Scheduler) -> R) -> R {
        f(&lock(&self.sched))
    }

    /// Changes the scheduler, then wakes everyone waiting for a change.
    pub(crate) fn update<R>(&self, f: impl FnOnce(&mut Scheduler) -> R) -> R {
        self.update_if(|s| (f(s), true))
    }

    /// Changes the scheduler; wakes the waiters only when `f` says that what
    /// they wait for may have changed.
    pub(crate) fn update_if<R>(&self, f: impl FnOnce(&mut Scheduler) -> (R, bool)) -> R {
        let (r, wake) = f(&mut lock(&self.sched));
        if wake {
            self.changed.notify_one();
            self.version.send_modify(|v| *v += 1);
        }
        r
    }

    /// Resolves at the next [`JobState::update`].
    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }

    /// A receiver of change notices, for long polls.
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.version.subscribe()
    }
}

/// State shared by the RPC handlers and the job driver.
pub struct JobShared {
    pub(crate) state: JobState,
    pub(crate) spec: proto::JobSpec,
    /// What the workers were told to write (the spec's output fields).
    pub(crate) outputs: JobOutput,
    pub(crate) layout: OutputLayout,
    pub(crate) started: Instant,
    pub(crate) bytes_total: u64,
    pub(crate) phase: Mutex<(Phase, String)>,
    /// When the job reached `Finished` or `Failed`.
    pub(crate) ended: OnceLock<Instant>,
    /// Input files that could not be shards: each fails the verdict.
    pub(crate) input_problems: Vec<String>,
    /// Per shard index: the URL of a remote shard.
    pub(crate) shard_urls: Vec<Option<String>>,
    /// Index mode: where the trainer's webshart reads the tars.
    pub(crate) webshart: Option<webshart::WebshartSource>,
    /// What the job's start found damaged in the output and took back, and
    /// what its end found and redid (see [`finish::JobEnd::Redo`]).
    pub(crate) repairs: Mutex<Vec<report::Repair>>,
    /// Energon's `index.sqlite` built as shards commit (index mode with energon).
    pub(crate) early_sqlite: Option<early_sqlite::EarlySqlite>,
    /// This job's hold on the output folder (one job per `OUT`).
    pub(crate) _lock: lock::OutputLock,
}

impl JobShared {
    pub(crate) fn set_phase(&self, p: Phase, verdict: &str) {
        *lock(&self.phase) = (p, verdict.to_string());
        if matches!(p, Phase::Finished | Phase::Failed) {
            let _ = self.ended.set(Instant::now());
        }
    }

    /// The job's phase.
    pub(crate) fn phase(&self) -> Phase {
        lock(&self.phase).0
    }

    /// When the job ended, once it has.
    pub(crate) fn ended(&self) -> Option<Instant> {
        self.ended.get().copied()
    }

    /// A snapshot of the job for `shardprep status`.
    pub fn status(&self) -> proto::StatusResponse {
        wire::status(self)
    }
}

//! The life of a job: prepare the output, discover and recover shards, serve
//! workers until every shard is settled, merge, verify, report, tell the
//! workers, stop.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardprep_core::layout::{OutputLayout, fnv1a64};
use shardprep_core::manifest::ShardCounts;
use shardprep_core::proto;
use shardprep_core::proto::coordinator_server::CoordinatorServer;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;

use crate::commit::{self, write_atomic};
use crate::discover::discover_input;
use crate::merge;
use crate::report::{self, Report, Resources, ShardReport};
use crate::scheduler::{Scheduler, ShardState};
use crate::service::{CoordinatorService, auth_interceptor};
use crate::{CoordinatorConfig, CoordinatorError, JobShared, Phase};

/// Largest request the server accepts (requests are small; this stops floods of junk).
const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// How a job ended.
#[derive(Debug, Clone)]
pub struct JobOutcome {
    /// True when every shard is done and the counts verified.
    pub ok: bool,
    pub report: Report,
    pub report_path: PathBuf,
}

fn out_err(path: &Path, what: &str, source: std::io::Error) -> CoordinatorError {
    CoordinatorError::Output {
        path: path.display().to_string(),
        what: what.to_string(),
        source,
    }
}

/// Creates the output folders and checks that they are writable.
fn prepare_output(layout: &OutputLayout) -> Result<(), CoordinatorError> {
    for dir in [layout.data_dir(), layout.fragments_dir(), layout.tmp_dir()] {
        std::fs::create_dir_all(&dir).map_err(|e| out_err(&dir, "create", e))?;
    }
    let probe = layout.state_dir().join(".write-probe");
    std::fs::write(&probe, b"ok").map_err(|e| out_err(&probe, "write", e))?;
    let _ = std::fs::remove_file(&probe);
    // Temporary files of attempts from an earlier run are stale.
    if let Ok(rd) = std::fs::read_dir(layout.tmp_dir()) {
        for e in rd.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(())
}

/// Runs a whole job, serving workers on `listener` until every shard is
/// settled, merged and verified and the workers have been told (or
/// `worker_grace` has passed). Resolving `shutdown` stops early with
/// [`CoordinatorError::Interrupted`]; committed shards stay committed.
pub async fn serve(
    config: CoordinatorConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<JobOutcome, CoordinatorError> {
    let started = Instant::now();
    let started_at = report::now_rfc3339();
    let layout = OutputLayout::new(config.output.clone());
    prepare_output(&layout)?;
    let (input_root, discovery) = discover_input(&config.input).await?;
    let sources = discovery.shards;
    let shard_urls: Vec<Option<String>> = sources.iter().map(|s| s.url.clone()).collect();
    let bytes_total = sources.iter().map(|s| s.identity.size).sum();
    let boot_id = shardprep_core::durability::boot_id();
    let recovered: Vec<_> = sources
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                s.identity,
                commit::recover(&layout, &s.name, s.identity, &boot_id),
            )
        })
        .collect();
    let n_recovered = recovered.iter().filter(|r| r.2.is_some()).count();
    tracing::info!(
        shards = sources.len(),
        recovered = n_recovered,
        input = %config.input.display(),
        output = %config.output.display(),
        "job starting{}",
        if n_recovered > 0 { "; shards committed by an earlier run are not redone" } else { "" }
    );
    let job_id = format!("{:016x}", shardprep_core::auth::random_u64());
    let mut sched = Scheduler::new(
        recovered,
        config.lease_timeout,
        config.max_attempts,
        shardprep_core::auth::random_u64() >> 16,
    );
    sched.stall_timeout = config.stall_timeout;
    let spec = proto::JobSpec {
        input_root,
        output_root: abs(&config.output).display().to_string(),
        caption_field: config.fields.caption.clone(),
        width_field: config.fields.width.clone(),
        height_field: config.fields.height.clone(),
        filename_field: config.fields.filename.clone(),
        extra_columns: config.fields.extra.clone(),
        write_captions: config.write_captions,
        extract: config.extract,
        heartbeat_interval_ms: config.heartbeat_interval.as_millis() as u64,
        lease_timeout_ms: config.lease_timeout.as_millis() as u64,
        job_id,
        data_sync: config.data_sync.to_proto(),
    };
    let shared = Arc::new(JobShared {
        sched: Mutex::new(sched),
        spec,
        layout: layout.clone(),
        started,
        bytes_total,
        phase: Mutex::new((Phase::Running, String::new())),
        input_problems: discovery.refused,
        shard_urls,
        changed: tokio::sync::Notify::new(),
        version: tokio::sync::watch::channel(0).0,
    });

    // The server runs until the job is over or `shutdown` resolves.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (interrupt_tx, mut interrupt_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = interrupt_tx.send(true);
    });
    let (health, health_svc) = tonic_health::server::health_reporter();
    let svc = CoordinatorServer::new(CoordinatorService {
        shared: shared.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let svc = InterceptedService::new(svc, auth_interceptor(Arc::new(config.token.clone())));
    health
        .set_serving::<CoordinatorServer<CoordinatorService>>()
        .await;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        let identity = tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem);
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| CoordinatorError::Server(format!("bad TLS certificate or key: {e}")))?;
    }
    let server = builder
        .timeout(Duration::from_secs(60))
        .concurrency_limit_per_connection(64)
        .max_concurrent_streams(Some(128))
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .add_service(health_svc)
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stop_rx.await;
        });
    let server = tokio::spawn(server);

    // Drive the job: expire leases, log progress, wait until settled.
    let mut last_log = Instant::now();
    let tick = (config.lease_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        {
            let mut s = shared.sched.lock().unwrap_or_else(|e| e.into_inner());
            let expired = s.expire(Instant::now());
            let settled = s.settled();
            drop(s);
            if expired > 0 {
                shared.version.send_modify(|v| *v += 1);
            }
            if settled {
                break;
            }
        }
        if last_log.elapsed() >= config.progress_interval {
            last_log = Instant::now();
            log_progress(&shared);
        }
        tokio::select! {
            _ = shared.changed.notified() => {}
            _ = tokio::time::sleep(tick) => {}
            _ = interrupt_rx.changed() => {
                let _ = stop_tx.send(());
                stop_server(server).await;
                return Err(CoordinatorError::Interrupted);
            }
        }
    }

    shared.set_phase(Phase::Merging, "");
    let finish = {
        let shared = shared.clone();
        let config = config.clone();
        let started_at = started_at.clone();
        tokio::task::spawn_blocking(move || finish_job(&shared, &config, started, &started_at))
    };
    let outcome = finish
        .await
        .map_err(|e| CoordinatorError::Server(e.to_string()))?;
    let (phase, verdict) = match &outcome {
        Ok(o) if o.ok => (Phase::Finished, o.report.verdict.as_str()),
        Ok(o) => (Phase::Failed, o.report.verdict.as_str()),
        Err(_) => (Phase::Failed, "failed"),
    };
    shared.set_phase(phase, verdict);
    // Tell the workers (their lease requests now answer "done"), then stop.
    shared
        .sched
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .finished = true;
    shared.wake();
    wait_for_workers(&shared, &config).await;
    let _ = stop_tx.send(());
    stop_server(server).await;
    outcome
}

/// Waits briefly for the server's graceful stop; an idle client connection
/// must not keep a finished job alive.
async fn stop_server(server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>) {
    let abort = server.abort_handle();
    match tokio::time::timeout(Duration::from_secs(2), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server stopped with an error"),
        Ok(Err(e)) if e.is_cancelled() => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server task failed"),
        Err(_) => {
            tracing::debug!("open client connections did not close in time; closing them");
            abort.abort();
        }
    }
}

fn abs(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn log_progress(shared: &JobShared) {
    let st = shared.status();
    let secs = shared.started.elapsed().as_secs_f64().max(0.001);
    let mb_s = st.bytes_read as f64 / 1e6 / secs;
    let frac = if st.bytes_total > 0 {
        st.bytes_read as f64 / st.bytes_total as f64
    } else {
        0.0
    };
    let eta = match st.eta_secs() {
        Some(s) if frac > 0.01 => format!("{s:.0}s"),
        _ => "?".into(),
    };
    tracing::info!(
        done = st.shards_done,
        leased = st.shards_leased,
        failed = st.shards_failed,
        total = st.shards_total,
        json = st.json_files,
        rows = st.rows,
        mb_per_s = format!("{mb_s:.1}"),
        eta = %eta,
        workers = st.workers.len(),
        "progress"
    );
}

/// After the job: wait until every worker seen recently was told "done",
/// at most `worker_grace`.
async fn wait_for_workers(shared: &JobShared, config: &CoordinatorConfig) {
    let start = Instant::now();
    let deadline = start + config.worker_grace;
    let linger_until = start + config.linger.min(config.worker_grace);
    let silent_after = config.heartbeat_interval * 2 + Duration::from_millis(500);
    loop {
        let waiting: Vec<String> = {
            let s = shared.sched.lock().unwrap_or_else(|e| e.into_inner());
            s.workers
                .iter()
                .filter(|(_, w)| !w.told_done && w.last_seen.elapsed() < silent_after)
                .map(|(id, _)| id.clone())
                .collect()
        };
        if waiting.is_empty() && Instant::now() >= linger_until {
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(workers = ?waiting, "workers did not collect the end of the job in time; stopping anyway");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Merges, verifies and writes the report and the SimpleTuner entry.
fn finish_job(
    shared: &JobShared,
    config: &CoordinatorConfig,
    started: Instant,
    started_at: &str,
) -> Result<JobOutcome, CoordinatorError> {
    let layout = &shared.layout;
    let (entries, workers_rss) = {
        let s = shared.sched.lock().unwrap_or_else(|e| e.into_inner());
        let rss = s
            .workers
            .values()
            .map(|w| w.peak_rss_bytes)
            .max()
            .unwrap_or(0);
        (s.shards.clone(), rss)
    };
    let mut totals = ShardCounts::default();
    let mut shards = Vec::new();
    let mut failures = Vec::new();
    let mut fragments = Vec::new();
    let mut fp = String::new();
    for e in &entries {
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
        };
        if let ShardState::Done(m) = &e.state {
            totals.add(&m.counts);
            r.worker = Some(m.worker_id.clone());
            r.elapsed_ms = Some(m.elapsed_ms);
            r.input_mb_per_s =
                Some(m.counts.bytes_read as f64 / 1e6 / (m.elapsed_ms.max(1) as f64 / 1000.0));
            r.counts = Some(m.counts.clone());
            r.issues = m.issues.clone();
            r.issues_not_listed = m.issues_not_listed;
            r.error = None;
            fragments.push((e.name.clone(), layout.fragment_path(&e.name)));
            fp.push_str(&format!("{}:{}:{};", e.name, m.lease_id, m.counts.rows));
        } else {
            failures.push(r.clone());
        }
        shards.push(r);
    }
    fp.push_str(&format!(
        "{}|{:?}",
        config.backend.dataset_id, config.fields
    ));
    let fingerprint = format!("{:016x}", fnv1a64(fp.as_bytes()));
    let parquet_path = layout.parquet_path(&config.backend.dataset_id);
    let report_path = layout.report_path();

    let mut problems = shared.input_problems.clone();
    for f in &failures {
        problems.push(format!(
            "shard {} failed after {} attempt(s): {}",
            f.name,
            f.attempts,
            f.error.as_deref().unwrap_or("unknown error")
        ));
    }

    // A finished job run again: same fragments, verified before → nothing to rewrite.
    if failures.is_empty()
        && problems.is_empty()
        && let Some(prev) = read_report(&report_path)
        && prev.verdict == "ok"
        && prev.fingerprint == fingerprint
        && parquet_path.is_file()
        && prev.expected_json == config.expect_json
    {
        tracing::info!(report = %report_path.display(), "the job is already complete and verified; nothing to redo");
        write_backend(layout, config)?;
        return Ok(JobOutcome {
            ok: true,
            report: prev,
            report_path,
        });
    }

    let mut rows = 0;
    let mut dup_count = 0;
    let mut dup_listed = Vec::new();
    let mut parquet = None;
    if failures.is_empty() {
        tracing::info!(fragments = fragments.len(), "merging fragments");
        let m = merge::merge(&fragments, &config.fields.extra, &parquet_path)?;
        rows = m.rows;
        dup_count = m.duplicate_count;
        dup_listed = m.duplicates;
        parquet = Some(abs(&parquet_path).display().to_string());
        if dup_count > 0 {
            tracing::warn!(
                count = dup_count,
                "file names occur in more than one shard; later shards overwrite earlier files in data/ (listed in the report)"
            );
        }
        if rows != totals.rows {
            problems.push(format!(
                "the merged parquet has {rows} rows but the fragments hold {} rows",
                totals.rows
            ));
        }
    } else {
        // Never leave a table that looks complete when it is not.
        if parquet_path.exists() {
            let _ = std::fs::remove_file(&parquet_path);
        }
        problems.push("the parquet table was not written because some shards failed; fix or remove them and run again (finished shards are kept)".into());
    }
    if let Some(expected) = config.expect_json
        && totals.json_files != expected
    {
        problems.push(format!(
            "JSON count mismatch: expected {expected} JSON files, found {} ({} {})",
            totals.json_files,
            totals.json_files.abs_diff(expected),
            if totals.json_files < expected {
                "missing"
            } else {
                "extra"
            }
        ));
    }
    if config.data_sync.at_end() && (config.extract || config.write_captions) {
        // Workers did not flush per shard: make data/ durable before the
        // report says the job is verified.
        let data = layout.data_dir();
        if let Err(e) =
            std::fs::File::open(&data).and_then(|f| shardprep_core::durability::syncfs(&f))
        {
            problems.push(format!("cannot flush {} to disk: {e}", data.display()));
        }
    }
    let ok = problems.is_empty();
    let wall_ms = started.elapsed().as_millis() as u64;
    let read_now: u64 = shards
        .iter()
        .filter(|s| !s.recovered)
        .filter_map(|s| s.counts.as_ref().map(|c| c.bytes_read))
        .sum();
    let report = Report {
        shardprep_version: env!("CARGO_PKG_VERSION").into(),
        verdict: if ok { "ok" } else { "failed" }.into(),
        problems,
        input: config.input.display(),
        output: abs(&config.output).display().to_string(),
        parquet,
        dataset_id: config.backend.dataset_id.clone(),
        caption_field: config.fields.caption.clone(),
        captions: if config.write_captions {
            "textfile"
        } else {
            "parquet"
        }
        .into(),
        data_sync: config.data_sync.as_str().into(),
        expected_json: config.expect_json,
        found_json: totals.json_files,
        rows,
        fragment_rows: totals.rows,
        shards_total: entries.len(),
        shards_done: entries.len() - failures.len(),
        shards_failed: failures.len(),
        shards_recovered: entries.iter().filter(|e| e.recovered).count(),
        totals,
        duplicate_filenames: dup_count,
        duplicate_filenames_listed: dup_listed,
        failures,
        shards,
        started_at: started_at.to_string(),
        finished_at: report::now_rfc3339(),
        wall_ms,
        mb_per_s: read_now as f64 / 1e6 / (wall_ms.max(1) as f64 / 1000.0),
        resources: Resources {
            coordinator_peak_rss_bytes: report::peak_rss_bytes(),
            worker_peak_rss_bytes: workers_rss,
        },
        fingerprint,
    };
    let json =
        serde_json::to_vec_pretty(&report).map_err(|e| CoordinatorError::Merge(e.to_string()))?;
    write_atomic(&report_path, &json)?;
    write_backend(layout, config)?;
    if ok {
        tracing::info!(
            json = report.found_json,
            rows = report.rows,
            wall_ms,
            "job verified"
        );
    } else {
        for p in &report.problems {
            tracing::error!("{p}");
        }
    }
    Ok(JobOutcome {
        ok,
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
    let entry = report::backend_entry(&config.backend, &abs(layout.root()), config.write_captions);
    let bytes =
        serde_json::to_vec_pretty(&entry).map_err(|e| CoordinatorError::Merge(e.to_string()))?;
    let path = layout.backend_path();
    if std::fs::read(&path).ok().as_deref() == Some(&bytes[..]) {
        return Ok(());
    }
    write_atomic(&path, &bytes)
}

//! The life of a job: prepare the output, discover and recover shards, serve
//! workers until every shard is settled, merge, verify, report, tell the
//! workers, stop.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardprep_core::index_format::IndexFormat;
use shardprep_core::layout::OutputLayout;
use shardprep_core::mode::Mode;
use shardprep_core::proto::coordinator_server::CoordinatorServer;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;

use crate::discover::discover_input;
use crate::finish::{JobEnd, JobOutcome, finish_job};
use crate::lock::OutputLock;
use crate::metrics::{self, MetricsServer};
use crate::page::live::LivePage;
use crate::report::{self, Repair};
use crate::scheduler::Scheduler;
use crate::service::{CoordinatorService, auth_interceptor};
use crate::{CoordinatorConfig, CoordinatorError, JobShared, JobState, Phase, judge, wire};

/// Largest request the server accepts (requests are small; this stops floods of junk).
const MAX_MESSAGE_BYTES: usize = 1 << 20;

fn out_err(path: &Path, what: &str, source: std::io::Error) -> CoordinatorError {
    CoordinatorError::Output {
        path: path.display().to_string(),
        what: what.to_string(),
        source,
    }
}

/// Creates the output folders, takes the job's lock on them and checks that
/// they are writable.
fn prepare_output(layout: &OutputLayout) -> Result<OutputLock, CoordinatorError> {
    for dir in [layout.data_dir(), layout.fragments_dir(), layout.tmp_dir()] {
        std::fs::create_dir_all(&dir).map_err(|e| out_err(&dir, "create", e))?;
    }
    let lock = OutputLock::acquire(&layout.state_dir())?;
    let probe = layout.state_dir().join(".write-probe");
    std::fs::write(&probe, b"ok").map_err(|e| out_err(&probe, "write", e))?;
    let _ = std::fs::remove_file(&probe);
    // Temporary files of attempts from an earlier run are stale.
    if let Ok(rd) = std::fs::read_dir(layout.tmp_dir()) {
        for e in rd.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(lock)
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
    let metrics_listener = metrics::bind(config.metrics_listen).await?;
    let shared = Arc::new(start_job(&config, started).await?);
    // Serves until `serve` returns, the lingering after the job included.
    let _metrics = metrics_listener.map(|l| {
        let page = LivePage::new(config.clone(), started_at.clone());
        MetricsServer::start(l, shared.clone(), page)
    });
    let (interrupt_tx, interrupt_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = interrupt_tx.send(true);
    });
    let server = Server::start(&config, listener, shared.clone()).await?;
    let mut redo_rounds = END_REDO_ROUNDS;
    let outcome = loop {
        if drive(&shared, &config, interrupt_rx.clone()).await.is_err() {
            server.stop().await;
            return Err(CoordinatorError::Interrupted);
        }
        shared.set_phase(Phase::Merging, "");
        let may_redo = redo_rounds > 0;
        match end_job(&shared, &config, (started, &started_at), may_redo).await {
            Ok(JobEnd::Redo(shards)) => {
                redo_rounds -= 1;
                redo_at_end(&shared, shards);
            }
            Ok(JobEnd::Reported(o)) => break Ok(*o),
            Err(e) => break Err(e),
        }
    };
    let (phase, verdict) = match &outcome {
        Ok(o) if o.ok => (Phase::Finished, o.report.verdict.as_str()),
        Ok(o) => (Phase::Failed, o.report.verdict.as_str()),
        Err(_) => (Phase::Failed, "failed"),
    };
    shared.set_phase(phase, verdict);
    // Tell the workers (their lease requests now answer "done"), then stop.
    shared.state.update(|s| s.finish());
    wait_for_workers(&shared, &config).await;
    server.stop().await;
    outcome
}

/// Runs blocking work (file I/O) off the async runtime; a panic in it
/// becomes [`CoordinatorError::TaskFailed`] naming `task`.
async fn blocking<T: Send + 'static>(
    task: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, CoordinatorError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CoordinatorError::TaskFailed {
            task,
            detail: e.to_string(),
        })
}

/// Prepares the output, discovers and recovers the shards, and builds the
/// state the handlers and the driver share.
async fn start_job(
    config: &CoordinatorConfig,
    started: Instant,
) -> Result<JobShared, CoordinatorError> {
    let layout = OutputLayout::new(config.output.clone());
    let lock = {
        let layout = layout.clone();
        blocking("output preparation", move || prepare_output(&layout)).await??
    };
    check_index_image_checks(config)?;
    check_index_formats(config)?;
    let index = config.mode() == Mode::Index;
    let known = if index {
        crate::webshart::before_listing(&config.input)?
    } else {
        None
    };
    let (mut input_root, mut discovery) = discover_input(&config.input, index).await?;
    let webshart = if index {
        let source = crate::webshart::after_listing(known, &mut input_root, &mut discovery)?;
        warn_hub_endpoint(&source);
        Some(source)
    } else {
        None
    };
    let sources = discovery.shards;
    let (recovered, repairs) = {
        let (layout, sources) = (layout.clone(), sources.clone());
        let (outputs, depth) = (config.outputs.clone(), config.depth);
        blocking("recovery of committed shards", move || {
            judge::recover(&layout, &sources, &outputs, depth)
        })
        .await?
    };
    let n_recovered = recovered.iter().filter(|r| r.2.is_some()).count();
    tracing::info!(
        shards = sources.len(),
        recovered = n_recovered,
        input = %config.input.display(),
        output = %config.output.display(),
        "job starting{}",
        if n_recovered > 0 { "; shards committed by an earlier run are not redone" } else { "" }
    );
    let early_sqlite = config
        .outputs
        .index_formats()
        .filter(|f| f.contains(IndexFormat::Energon))
        .and_then(|_| crate::early_sqlite::EarlySqlite::start(&layout, recovered.len()));
    if let Some(early) = &early_sqlite {
        for (id, (name, _, kept)) in recovered.iter().enumerate() {
            if kept.is_some() {
                early.committed(id, name);
            }
        }
    }
    let sched = Scheduler::new(
        recovered,
        config.lease_timeout,
        config.max_attempts,
        shardprep_core::auth::random_u64() >> 16,
    )
    .with_stall_timeout(config.stall_timeout);
    Ok(JobShared {
        state: JobState::new(sched),
        spec: wire::job_spec(config, input_root),
        outputs: config.outputs.clone(),
        layout,
        started,
        bytes_total: sources.iter().map(|s| s.identity.size).sum(),
        phase: std::sync::Mutex::new((Phase::Running, String::new())),
        ended: std::sync::OnceLock::new(),
        input_problems: discovery.refused,
        shard_urls: sources.iter().map(|s| s.url.clone()).collect(),
        webshart,
        repairs: std::sync::Mutex::new(repairs),
        early_sqlite,
        _lock: lock,
    })
}

/// webshart discovers Hub repositories on huggingface.co only (it ignores
/// `HF_ENDPOINT`): an index made from a mirror must match the tars there.
fn warn_hub_endpoint(source: &crate::webshart::WebshartSource) {
    let endpoint = std::env::var("HF_ENDPOINT").unwrap_or_default();
    let endpoint = endpoint.trim_end_matches('/');
    if matches!(source, crate::webshart::WebshartSource::Hub { .. })
        && !endpoint.is_empty()
        && endpoint != shardprep_remote::HF_DEFAULT_ENDPOINT
    {
        tracing::warn!(hf_endpoint = %endpoint, "the shards are read from HF_ENDPOINT, but webshart 0.6.0 reads the repository from huggingface.co: the index fits only if both hold the same tars");
    }
}

/// Refuses formats other than webshart on remote shards: their readers
/// open the tars by path.
fn check_index_formats(config: &CoordinatorConfig) -> Result<(), CoordinatorError> {
    match config.outputs.index_formats() {
        Some(f)
            if f.has_other_than_webshart()
                && !matches!(config.input, crate::InputSpec::Local(_)) =>
        {
            Err(CoordinatorError::Unsupported(format!(
                "--index-format {f}: energon, DALI and wids open the tars by path, so they need a local --input folder (keep webshart alone for remote shards)"
            )))
        }
        _ => Ok(()),
    }
}

/// Refuses image checks index mode cannot make: it reads no image bytes
/// past their headers, so it neither decodes nor hashes them.
fn check_index_image_checks(config: &CoordinatorConfig) -> Result<(), CoordinatorError> {
    let checks = &config.image_checks;
    if config.mode() == Mode::Index && (checks.decode || !checks.hash_fields.is_empty()) {
        return Err(CoordinatorError::Unsupported(
            "--mode index reads no image bytes past their headers, so --check-images decode \
             and --check-hashes do not apply: run them in --mode extract (or drop them)"
                .into(),
        ));
    }
    Ok(())
}

/// The running gRPC server (coordinator service + health).
struct Server {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Server {
    async fn start(
        config: &CoordinatorConfig,
        listener: TcpListener,
        shared: Arc<JobShared>,
    ) -> Result<Server, CoordinatorError> {
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (health, health_svc) = tonic_health::server::health_reporter();
        let svc = CoordinatorServer::new(CoordinatorService { shared })
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let svc = InterceptedService::new(svc, auth_interceptor(Arc::new(config.token.clone())));
        health
            .set_serving::<CoordinatorServer<CoordinatorService>>()
            .await;
        // Small answers go out at once: without TCP_NODELAY, a response
        // written in pieces waits for the peer's delayed ACK (~40 ms a call).
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &config.tls {
            let identity = tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem);
            builder = builder
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .map_err(|e| {
                    CoordinatorError::Server(format!("bad TLS certificate or key: {e}"))
                })?;
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
        Ok(Server {
            stop,
            task: tokio::spawn(server),
        })
    }

    /// Asks for a graceful stop and waits for it (briefly).
    async fn stop(self) {
        let _ = self.stop.send(());
        stop_server(self.task).await;
    }
}

/// Drives the job until every shard is settled: expires leases, logs
/// progress. `Err(())` when interrupted.
async fn drive(
    shared: &JobShared,
    config: &CoordinatorConfig,
    mut interrupt: tokio::sync::watch::Receiver<bool>,
) -> Result<(), ()> {
    let mut last_log = Instant::now();
    let tick = (config.lease_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        let settled = shared.state.update_if(|s| {
            let expired = s.expire(Instant::now());
            (s.settled(), expired > 0)
        });
        if settled {
            return Ok(());
        }
        if last_log.elapsed() >= config.progress_interval {
            last_log = Instant::now();
            log_progress(shared);
        }
        tokio::select! {
            _ = shared.state.changed() => {}
            _ = tokio::time::sleep(tick) => {}
            _ = interrupt.changed() => return Err(()),
        }
    }
}

/// How many times the end of a job may redo the shards its check found
/// damaged before it reports what it finds: the first round puts the files
/// of shards that wrote one path in shard order; more would only repeat it.
const END_REDO_ROUNDS: u32 = 2;

/// Merges, verifies and reports on a blocking thread.
async fn end_job(
    shared: &Arc<JobShared>,
    config: &CoordinatorConfig,
    (started, started_at): (Instant, &str),
    may_redo: bool,
) -> Result<JobEnd, CoordinatorError> {
    let (shared, config, started_at) = (shared.clone(), config.clone(), started_at.to_string());
    blocking("merge and report", move || {
        finish_job(&shared, &config, (started, &started_at), may_redo)
    })
    .await?
}

/// Queues `shards` (found damaged by the end's check) again, one at a time
/// in shard order, and records the repairs for the report.
fn redo_at_end(shared: &JobShared, shards: Vec<(usize, Repair)>) {
    let names: Vec<&str> = shards.iter().map(|(_, r)| r.subject.as_str()).collect();
    tracing::warn!(
        shards = %names.join(", "),
        "the end check found files in data/ not as the shards' lists say; redoing those shards one at a time in shard order"
    );
    let indices: Vec<usize> = shards.iter().map(|(i, _)| *i).collect();
    shared.state.update(|s| s.redo_in_order(&indices));
    shared.set_phase(Phase::Running, "");
    crate::lock(&shared.repairs).extend(shards.into_iter().map(|(_, r)| r));
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
    // Each worker told "done" is a change: no poll interval is waited out.
    let mut changes = shared.state.subscribe();
    loop {
        changes.borrow_and_update();
        let waiting: Vec<String> = {
            shared.state.read(|s| {
                s.workers()
                    .iter()
                    .filter(|(_, w)| !w.told_done && w.last_seen.elapsed() < silent_after)
                    .map(|(id, _)| id.clone())
                    .collect()
            })
        };
        if waiting.is_empty() && Instant::now() >= linger_until {
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(workers = ?waiting, "workers did not collect the end of the job in time; stopping anyway");
            return;
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

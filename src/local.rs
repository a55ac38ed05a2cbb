//! `run` (coordinator + N worker processes on this machine), `status` and
//! `verify`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use shardprep_coordinator::{CoordinatorConfig, CoordinatorError, JobOutcome};
use shardprep_core::auth;
use shardprep_core::durability::DataSync;

use crate::cli::{LogFormat, RunArgs, StatusArgs, VerifyArgs};
use crate::flags::{coordinator_config, token_from};
use crate::signal::shutdown_signal;
use crate::summary::{exit_code, print_summary};
use crate::workers::{Launcher, Workers};

/// `shardprep run`: the coordinator in this process on 127.0.0.1 (ephemeral
/// port, fresh token), N worker processes of this same binary, supervised.
pub async fn run(args: RunArgs, log: LogFormat) -> anyhow::Result<ExitCode> {
    let token = auth::generate_token()?;
    // Every worker runs on this machine: after a power loss, the boot id
    // tells a re-run which committed shards to check (see --data-sync).
    // `run` owns its workers and stops any it has left: no linger, except
    // long enough for a Prometheus scraping --metrics-listen to see the verdict.
    let config = coordinator_config(&args.job, token.clone(), DataSync::None)?;
    let linger = if config.metrics_listen.is_some() {
        Duration::from_secs(3)
    } else {
        Duration::ZERO
    };
    let config = config.with_linger(linger);
    let grace = config.worker_grace;
    let n = worker_count(args.workers);
    let mut coordinator = LocalCoordinator::start(config).await?;
    // An error before the job starts (no shards, a busy output) is printed
    // alone: no worker is started before the coordinator serves.
    if let Some(ended) = coordinator.started(&token).await {
        let outcome = ended.context("the coordinator task failed")??;
        print_summary(&outcome.report);
        return Ok(exit_code(outcome.ok));
    }
    tracing::info!(workers = n, coordinator = %coordinator.url, "starting local job");
    let launcher = Launcher {
        exe: std::env::current_exe().context("cannot find this program's own path")?,
        url: coordinator.url.clone(),
        token: token.clone(),
        log,
        fault_worker0: args.fault_worker0.clone(),
        write_threads: args
            .write_threads
            .unwrap_or_else(|| shardprep_worker::default_write_threads(n)),
        default_log_level: match crate::progress::active(args.progress) {
            true => "warn",
            false => "info",
        },
    };
    let mut workers = Workers::start(launcher, n)?;
    let progress = crate::progress::active(args.progress)
        .then(|| crate::progress::spawn(coordinator.url.clone(), token));
    let result = coordinator.supervise(&mut workers).await?;
    if let Some(p) = progress {
        p.finish().await;
    }
    workers.stop(grace).await;
    let outcome = result.context("the coordinator task failed")??;
    print_summary(&outcome.report);
    Ok(exit_code(outcome.ok))
}

/// `--workers`, or one per CPU.
fn worker_count(flag: Option<usize>) -> usize {
    flag.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
    .max(1)
}

type ServeResult = Result<JobOutcome, CoordinatorError>;

/// The coordinator of a `run`, serving on a task of this process.
struct LocalCoordinator {
    url: String,
    task: tokio::task::JoinHandle<ServeResult>,
    /// Ends the job early (Ctrl-C); taken when used.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl LocalCoordinator {
    /// Listens on an ephemeral port of 127.0.0.1 and starts serving.
    async fn start(config: CoordinatorConfig) -> anyhow::Result<LocalCoordinator> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot listen on 127.0.0.1")?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(shardprep_coordinator::serve(config, listener, async {
            let _ = stopped.await;
        }));
        Ok(LocalCoordinator {
            url,
            task,
            stop: Some(stop),
        })
    }

    /// Waits until the coordinator answers (its job has started); `Some`
    /// with its result when it ended first: an error before the job
    /// started, or a job that had nothing left to do.
    async fn started(
        &mut self,
        token: &str,
    ) -> Option<Result<ServeResult, tokio::task::JoinError>> {
        let (url, token) = (self.url.clone(), token.to_string());
        let answered = async move {
            loop {
                if let Ok(mut c) = shardprep_worker::client::client(&url, &token, None)
                    && c.status(shardprep_core::proto::StatusRequest {})
                        .await
                        .is_ok()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::select! {
            r = &mut self.task => Some(r),
            () = answered => None,
        }
    }

    /// Waits for the job to end while restarting dead workers; on SIGTERM or
    /// Ctrl-C asks the workers and the coordinator to stop (the job resumes
    /// on a re-run). Fails when every worker died too often.
    async fn supervise(
        &mut self,
        workers: &mut Workers,
    ) -> anyhow::Result<Result<ServeResult, tokio::task::JoinError>> {
        let mut signal = Box::pin(shutdown_signal());
        let mut signalled = false;
        loop {
            tokio::select! {
                r = &mut self.task => return Ok(r),
                _ = &mut signal, if !signalled => {
                    signalled = true;
                    tracing::warn!("stopping: workers give their shards back; run again with the same --output to resume");
                    workers.terminate();
                    if let Some(tx) = self.stop.take() {
                        let _ = tx.send(());
                    }
                }
                _ = tokio::time::sleep(SUPERVISE_EVERY) => workers.supervise()?,
            }
        }
    }
}

/// How often `run` looks for dead workers.
const SUPERVISE_EVERY: Duration = Duration::from_millis(200);

/// `shardprep status`.
pub async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let Some(token) = token_from(&args.token)? else {
        anyhow::bail!("no token: pass the job's token with --token-file FILE or SHARDPREP_TOKEN");
    };
    let tls = crate::flags::client_tls(&args.tls)?;
    let mut client = shardprep_worker::client::client(&args.coordinator, &token, tls.as_ref())?;
    let st = client
        .status(shardprep_core::proto::StatusRequest {})
        .await
        .with_context(|| format!("cannot get the status from {}", args.coordinator))?
        .into_inner();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&crate::local::status_json(&st))?
        );
    } else {
        print_status(&st);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn status_json(st: &shardprep_core::proto::StatusResponse) -> serde_json::Value {
    let progress = |p: &Option<shardprep_core::proto::Progress>| {
        p.as_ref().map(|p| {
            serde_json::json!({"members": p.members, "bytes_read": p.bytes_read, "json_files": p.json_files, "rows": p.rows})
        })
    };
    serde_json::json!({
        "job_id": st.job_id,
        "phase": st.phase,
        "verdict": st.verdict,
        "shards_total": st.shards_total,
        "shards_done": st.shards_done,
        "shards_failed": st.shards_failed,
        "shards_leased": st.shards_leased,
        "json_files": st.json_files,
        "rows": st.rows,
        "bytes_read": st.bytes_read,
        "bytes_total": st.bytes_total,
        "elapsed_ms": st.elapsed_ms,
        "mb_per_s": rate(st),
        "eta_s": eta(st),
        "shards": st.shards.iter().map(|s| serde_json::json!({
            "index": s.index, "name": s.name, "state": s.state, "worker": s.worker_id,
            "attempts": s.attempts, "last_error": s.last_error, "size": s.size, "progress": progress(&s.progress),
        })).collect::<Vec<_>>(),
        "workers": st.workers.iter().map(|w| serde_json::json!({
            "worker_id": w.worker_id, "hostname": w.hostname, "last_seen_ms_ago": w.last_seen_ms_ago,
            "current_shard": w.current_shard, "shards_done": w.shards_done,
        })).collect::<Vec<_>>(),
    })
}

fn rate(st: &shardprep_core::proto::StatusResponse) -> f64 {
    st.bytes_per_s() / 1e6
}

fn eta(st: &shardprep_core::proto::StatusResponse) -> Option<f64> {
    st.eta_secs()
}

fn print_status(st: &shardprep_core::proto::StatusResponse) {
    println!(
        "job {}  phase {}  shards {}/{} done, {} leased, {} failed",
        st.job_id, st.phase, st.shards_done, st.shards_total, st.shards_leased, st.shards_failed
    );
    println!(
        "json {}  rows {}  read {:.1}/{:.1} MB  {:.1} MB/s  ETA {}",
        st.json_files,
        st.rows,
        st.bytes_read as f64 / 1e6,
        st.bytes_total as f64 / 1e6,
        rate(st),
        eta(st)
            .map(|e| format!("{e:.0}s"))
            .unwrap_or_else(|| "?".into())
    );
    println!(
        "{:<6} {:<32} {:<8} {:<28} {:>8} last error",
        "#", "shard", "state", "worker", "attempts"
    );
    for s in &st.shards {
        println!(
            "{:<6} {:<32} {:<8} {:<28} {:>8} {}",
            s.index, s.name, s.state, s.worker_id, s.attempts, s.last_error
        );
    }
    println!(
        "{:<28} {:<20} {:>14} {:>6} current",
        "worker", "host", "last seen (ms)", "done"
    );
    for w in &st.workers {
        println!(
            "{:<28} {:<20} {:>14} {:>6} {}",
            w.worker_id, w.hostname, w.last_seen_ms_ago, w.shards_done, w.current_shard
        );
    }
}

/// `shardprep verify`.
pub fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let depth = shardprep_core::depth::CheckDepth::from_deep(args.deep);
    let mut findings = shardprep_coordinator::verify::verify_output(
        &args.output,
        args.expect_json,
        args.dataset_id.as_deref(),
        depth,
    );
    if depth.reads_bytes() {
        let deep = crate::deep::deep_check(&args.output);
        findings.checked.extend(deep.checked);
        findings.problems.extend(deep.problems);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&findings)?);
    } else {
        for line in &findings.checked {
            println!("ok       {line}");
        }
        for p in &findings.problems {
            println!("PROBLEM  {p}");
        }
        println!(
            "{}",
            if findings.problems.is_empty() {
                "verify: OK"
            } else {
                "verify: FAILED"
            }
        );
    }
    Ok(exit_code(findings.problems.is_empty()))
}

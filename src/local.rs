//! `run` (coordinator + N worker processes on this machine), `status`,
//! `verify`, and the end-of-job summary.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use shardprep_coordinator::report::Report;
use shardprep_coordinator::{CoordinatorConfig, CoordinatorError, JobOutcome};
use shardprep_core::auth;
use shardprep_core::durability::DataSync;

use crate::cli::{LogFormat, RunArgs, StatusArgs, VerifyArgs};
use crate::commands::{EXIT_JOB_FAILED, coordinator_config, shutdown_signal, token_from};
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

/// The exit code of a job that ran: 0 verified, [`EXIT_JOB_FAILED`] otherwise.
pub fn exit_code(verified: bool) -> ExitCode {
    if verified {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_JOB_FAILED)
    }
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

/// `reason=count, ...` or `none`.
fn by_reason(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    let parts: Vec<String> = counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
    parts.join(", ")
}

/// Prints the end-of-job table (the same numbers as report.json).
pub fn print_summary(r: &Report) {
    let t = &r.totals;
    let secs = r.wall_ms as f64 / 1000.0;
    let expected = r
        .expected_json
        .map(|e| e.to_string())
        .unwrap_or_else(|| "(not given)".into());
    println!("shardprep summary");
    println!("  verdict            {}", r.verdict.to_uppercase());
    println!(
        "  shards             {} done, {} failed, {} total ({} from an earlier run)",
        r.shards_done, r.shards_failed, r.shards_total, r.shards_recovered
    );
    println!(
        "  JSON files         {} (expected {expected})",
        r.found_json
    );
    println!("  rows               {}", r.rows);
    println!(
        "  captions written   {} (+{} for images without a row, so a trainer finds one beside every image)",
        t.captions_written, t.captions_for_unlisted_images
    );
    println!(
        "  caption warnings   {}",
        match by_reason(&t.caption_warnings).as_str() {
            "none" => "none".to_string(),
            w => format!("{w} (textfile and parquet captions differ for these)"),
        }
    );
    if !t.member_warnings.is_empty() {
        println!(
            "  member warnings    {} (unknown type flags, extracted as regular files as tar xf does)",
            by_reason(&t.member_warnings)
        );
    }
    println!("  images             {}", t.images);
    if let Some(ix) = &r.index {
        println!(
            "  index              {} entries, {} images with dimensions, {} without, {} disagree with their JSON",
            ix.entries,
            ix.images_with_dimensions,
            ix.images_without_dimensions,
            ix.dimension_mismatches
        );
    }
    println!("  skipped            {}", by_reason(&t.skipped));
    println!("  members refused    {}", by_reason(&t.rejected_members));
    print_image_checks(r);
    println!(
        "  duplicate names    {} across shards, {} within shards",
        r.duplicate_filenames, t.duplicate_members
    );
    println!("  wall time          {secs:.1} s");
    println!(
        "  throughput         {:.1} MB/s, {:.0} files/s",
        r.mb_per_s,
        r.index.as_ref().map_or(t.files_extracted, |ix| ix.entries) as f64 / secs.max(0.001)
    );
    if let Some(p) = &r.parquet {
        println!("  parquet            {p}");
    }
    for p in &r.problems {
        println!("  PROBLEM            {p}");
    }
}

/// Image problems listed in the summary, at most.
const IMAGE_ISSUES_SHOWN: usize = 10;

/// The summary's lines on the images themselves (issue 20).
fn print_image_checks(r: &Report) {
    let t = &r.totals;
    let c = &r.image_checks;
    let mut made = vec!["header size".to_string()];
    if c.decode {
        made.push("full decode".into());
    }
    if !c.hash_fields.is_empty() {
        made.push(format!("hashes {}", c.hash_fields.join(" ")));
    }
    println!(
        "  images checked     {} ({})",
        t.images_checked,
        made.join(", ")
    );
    println!("  image problems     {}", by_reason(&t.image_problems));
    let listed = r
        .shards
        .iter()
        .flat_map(|s| s.image_issues.iter().map(move |i| (s.name.as_str(), i)));
    for (shard, i) in listed.take(IMAGE_ISSUES_SHOWN) {
        println!("    {} {shard}/{}: {}", i.kind, i.member, i.detail);
    }
    let total: u64 = t.image_problems.values().sum();
    if total > IMAGE_ISSUES_SHOWN as u64 {
        println!("    ... (all listed in report.json, per shard: image_issues)");
    }
    if let Some(n) = t
        .skipped
        .get(shardprep_core::issue::IssueKind::BadImage.as_str())
    {
        println!("  bad-image rows     {n} left out (--on-bad-image skip)");
    }
}

/// `shardprep status`.
pub async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let Some(token) = token_from(&args.token)? else {
        anyhow::bail!("no token: pass the job's token with --token-file FILE or SHARDPREP_TOKEN");
    };
    let tls = crate::commands::client_tls(&args.tls)?;
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
    let mut findings = shardprep_coordinator::verify::verify_output_deep(
        &args.output,
        args.expect_json,
        args.dataset_id.as_deref(),
        args.deep,
    );
    if args.deep {
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

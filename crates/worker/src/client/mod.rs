//! The worker's gRPC loop: register, lease a shard, process it on a blocking
//! thread while heartbeats extend the lease, then complete or fail it.
//!
//! The worker survives its coordinator: calls that fail because it is
//! unreachable are retried with backoff (pods start in any order; a
//! coordinator may be restarted) until `connect_timeout` passes without
//! one success. It exits cleanly when the coordinator says the job is done,
//! and on shutdown gives its current shard back so it is re-leased at once.
//!
//! Layout:
//! - this file: the configuration, the errors, [`run`] and the loop, one
//!   leased shard from start to report (`work_on`);
//! - `rpc`: the channel, TLS, the token, and calls retried with backoff;
//! - `task`: the shard located inside the input, the pass's [`ShardTask`];
//! - `pass`: the pass on a blocking thread;
//! - `lease`: the lease held (its clock, fence and heartbeat watch);
//! - `report`: how the shard ended, as `Complete` or `Fail`;
//! - `fault`: faults a test injects (`--fault`).
//!
//! [`ShardTask`]: crate::shard::ShardTask

mod fault;
mod lease;
mod pass;
mod report;
mod rpc;
mod task;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardprep_core::mode::JobOutput;
use shardprep_core::proto;

pub use fault::Fault;
use lease::Lease;
use report::{report, report_failure};
use rpc::Ctx;
pub use rpc::{AuthInterceptor, ClientTls, client};
pub use task::resolve_shard;

/// How a worker is configured.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Coordinator URL, e.g. `http://127.0.0.1:50051`.
    pub coordinator: String,
    pub token: String,
    /// Unique id of this worker process.
    pub worker_id: String,
    /// Give up after the coordinator has been unreachable this long.
    pub connect_timeout: Duration,
    pub fault: Option<Fault>,
    /// Trust this CA (PEM) and use TLS; the URL must be `https://`.
    pub tls: Option<ClientTls>,
    /// Threads creating small files while a shard is read (`0`: none).
    pub write_threads: usize,
}

/// Writer threads per worker when `workers` workers share this machine:
/// the machine's cores divided among the workers, 1 to 4 (files in one
/// directory are created one at a time by the kernel, so more threads only
/// wait). Measured on 2 cores, 100k small samples: 1 worker took 1.5x the
/// `tar xf` loop inline, 1.3x with 1 thread, ~1.0x with 2 to 4.
pub fn default_write_threads(workers: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    write_threads_for(cores, workers)
}

fn write_threads_for(cores: usize, workers: usize) -> usize {
    (cores / workers.max(1)).clamp(1, 4)
}

/// Why a worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("invalid coordinator URL {0:?}: use e.g. http://HOST:50051")]
    Url(String),
    #[error("bad TLS settings: {0}")]
    Tls(String),
    #[error(
        "the coordinator at {url} refused our token: pass the job's token with --token-file or SHARDPREP_TOKEN"
    )]
    Unauthenticated { url: String },
    #[error("could not reach the coordinator at {url} for {waited:?}: {last}")]
    Unreachable {
        url: String,
        waited: Duration,
        last: String,
    },
    #[error("the coordinator answered {call} with an error: {status}")]
    Rpc { call: &'static str, status: String },
    #[error("interrupted while waiting for the coordinator")]
    Interrupted,
}

/// How a worker ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerExit {
    /// The coordinator said the job is done.
    JobDone,
    /// Stopped by a shutdown request.
    Shutdown,
}

/// Runs a worker until the job is done, `shutdown` resolves, or the
/// coordinator stays unreachable.
pub async fn run(
    config: WorkerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<WorkerExit, WorkerError> {
    match run_loop(config, shutdown).await {
        Err(WorkerError::Interrupted) => {
            tracing::info!("shutting down while the coordinator was unreachable");
            Ok(WorkerExit::Shutdown)
        }
        other => other,
    }
}

async fn run_loop(
    config: WorkerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<WorkerExit, WorkerError> {
    let client = client(&config.coordinator, &config.token, config.tls.as_ref())?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    let mut ctx = Ctx {
        config,
        client,
        shutdown: rx,
        writeback: Default::default(),
    };
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    tracing::info!(worker = %ctx.config.worker_id, url = %ctx.config.coordinator, "worker starting");
    loop {
        if ctx.stopping() {
            tracing::info!("shutting down: taking no more work");
            return Ok(WorkerExit::Shutdown);
        }
        // Registering each round picks up a restarted coordinator's new job id.
        let reg = proto::RegisterRequest {
            worker_id: ctx.config.worker_id.clone(),
            hostname: hostname.clone(),
            pid: std::process::id(),
        };
        let spec = ctx
            .call("register", |mut c| {
                let reg = reg.clone();
                async move { c.register(reg).await }
            })
            .await?
            .spec
            .unwrap_or_default();
        let req = proto::LeaseRequest {
            worker_id: ctx.config.worker_id.clone(),
        };
        // The coordinator's lease runs from when it received the request:
        // counting from before it was sent keeps the worker's deadline earlier.
        let sent = Instant::now();
        let lease = ctx
            .call("lease", |mut c| {
                let req = req.clone();
                async move { c.lease(req).await }
            })
            .await?;
        match lease.outcome {
            Some(proto::lease_response::Outcome::Done(_)) => {
                tracing::info!(worker = %ctx.config.worker_id, "the coordinator says the job is done; exiting");
                return Ok(WorkerExit::JobDone);
            }
            Some(proto::lease_response::Outcome::Shard(l)) => {
                work_on(&mut ctx, &spec, l, sent).await?;
            }
            Some(proto::lease_response::Outcome::WaitMs(ms)) => {
                let mut rx = ctx.shutdown.clone();
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(ms.clamp(10, 5000))) => {}
                    _ = rx.changed() => {}
                }
            }
            None => {
                return Err(WorkerError::Rpc {
                    call: "lease",
                    status: "empty answer".into(),
                });
            }
        }
    }
}

/// One leased shard: located, processed on a blocking thread while
/// heartbeats extend the lease, then reported to the coordinator.
async fn work_on(
    ctx: &mut Ctx,
    spec: &proto::JobSpec,
    l: proto::ShardLease,
    sent: Instant,
) -> Result<(), WorkerError> {
    let started = Instant::now();
    tracing::info!(shard = %l.shard_name, attempt = l.attempt, lease = l.lease_id, "processing shard");
    let located = match task::locate(spec, &l) {
        Ok(found) => found,
        Err(msg) => {
            let kind = proto::FailureKind::Permanent;
            return report_failure(ctx, &l, msg, kind).await;
        }
    };
    let outputs = match JobOutput::from_proto(spec) {
        Ok(outputs) => outputs,
        Err(msg) => {
            let kind = proto::FailureKind::Permanent;
            return report_failure(ctx, &l, msg, kind).await;
        }
    };
    let lease = Lease::begin(spec, l, sent);
    let task = task::shard_task(ctx, spec, &lease, &located, outputs);
    let fault = ctx.config.fault.clone();
    let handle = pass::spawn(
        task,
        located.url,
        fault,
        Arc::clone(&lease.cancel),
        Arc::clone(&lease.live),
    );
    let ended = lease.watch(ctx, handle).await?;
    report(ctx, &lease.grant, ended, started).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_threads_share_the_cores_among_workers() {
        assert_eq!(write_threads_for(2, 1), 2);
        assert_eq!(write_threads_for(2, 2), 1);
        assert_eq!(write_threads_for(1, 1), 1);
        assert_eq!(write_threads_for(8, 4), 2);
        assert_eq!(write_threads_for(2, 8), 1);
        assert_eq!(write_threads_for(64, 1), 4);
        assert_eq!(write_threads_for(4, 0), 4);
    }
}

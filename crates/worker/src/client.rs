//! The worker's gRPC loop: register, lease a shard, process it on a blocking
//! thread while heartbeats extend the lease, then complete or fail it.
//!
//! The worker survives its coordinator: calls that fail because it is
//! unreachable are retried with backoff (pods start in any order; a
//! coordinator may be restarted) until `connect_timeout` passes without
//! one success. It exits cleanly when the coordinator says the job is done,
//! and on shutdown gives its current shard back so it is re-leased at once.

use std::future::Future;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use shardprep_core::auth::{AUTH_HEADER, bearer};
use shardprep_core::durability::DataSync;
use shardprep_core::fields::FieldMap;
use shardprep_core::layout::{OutputLayout, peak_rss_bytes};
use shardprep_core::manifest::ShardIdentity;
use shardprep_core::proto;
use shardprep_core::proto::coordinator_client::CoordinatorClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::fence::Fence;
use crate::index::index_shard;
use crate::shard::{
    LiveProgress, ShardError, ShardOutput, ShardTask, process_shard, process_stream,
};
use shardprep_core::mode::{JobOutput, Mode};

/// Faults a test can inject into a worker (hidden `--fault` flag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Processing this shard always fails (retryable).
    Fail(String),
    /// After processing this shard, go silent (no heartbeats) for the
    /// duration, then report the completion late.
    Stall(String, Duration),
    /// Processing this shard never returns (heartbeats go on).
    Hang(String),
}

impl Fault {
    /// Parses `fail:SHARD`, `stall:SHARD:DURATION` or `hang:SHARD`.
    pub fn parse(s: &str) -> Result<Fault, String> {
        let mut parts = s.splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("fail"), Some(shard), None) => Ok(Fault::Fail(shard.into())),
            (Some("hang"), Some(shard), None) => Ok(Fault::Hang(shard.into())),
            (Some("stall"), Some(shard), Some(d)) => shardprep_core::duration::parse_duration(d)
                .map(|d| Fault::Stall(shard.into(), d))
                .map_err(|e| e.to_string()),
            _ => Err(format!(
                "bad fault {s:?}: use fail:SHARD, stall:SHARD:DUR or hang:SHARD"
            )),
        }
    }
}

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

/// TLS settings of a client.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// PEM of the CA (or self-signed certificate) the coordinator's certificate chains to.
    pub ca_pem: Vec<u8>,
    /// Name to check in the certificate (default: the URL's host).
    pub domain: Option<String>,
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

type Client = CoordinatorClient<InterceptedService<Channel, AuthInterceptor>>;

/// Adds the bearer token to every request.
#[derive(Clone)]
pub struct AuthInterceptor(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut().insert(AUTH_HEADER, self.0.clone());
        Ok(req)
    }
}

/// Connects lazily to a coordinator with the token attached to every call.
pub fn client(url: &str, token: &str, tls: Option<&ClientTls>) -> Result<Client, WorkerError> {
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|_| WorkerError::Url(url.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .tcp_nodelay(true);
    if let Some(t) = tls {
        let mut cfg = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&t.ca_pem));
        if let Some(d) = &t.domain {
            cfg = cfg.domain_name(d.clone());
        }
        endpoint = endpoint
            .tls_config(cfg)
            .map_err(|e| WorkerError::Tls(e.to_string()))?;
    }
    let value = bearer(token)
        .parse()
        .map_err(|_| WorkerError::Url(url.to_string()))?;
    Ok(CoordinatorClient::with_interceptor(
        endpoint.connect_lazy(),
        AuthInterceptor(value),
    ))
}

/// Whether a failed call may succeed if retried: the server is busy or
/// gone for now, or the connection broke (an HTTP/2 GOAWAY or reset, a
/// broken pipe, which tonic reports as `Internal` or `Unknown`).
fn transient(s: &Status) -> bool {
    let msg = s.message().to_ascii_lowercase();
    let broken_connection = s.code() == Code::Internal
        && [
            "goaway",
            "go away",
            "connection",
            "broken pipe",
            "reset",
            "h2 protocol error",
        ]
        .iter()
        .any(|w| msg.contains(w));
    broken_connection
        || matches!(
            s.code(),
            Code::Unavailable
                | Code::Unknown
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::ResourceExhausted
                | Code::Aborted
        )
}

struct Ctx {
    config: WorkerConfig,
    client: Client,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl Ctx {
    fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Calls `f` until it succeeds, retrying transient failures with
    /// backoff for up to `connect_timeout`.
    async fn call<T, F, Fut>(&mut self, name: &'static str, mut f: F) -> Result<T, WorkerError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let first_failure = Instant::now();
        let mut backoff = Duration::from_millis(100);
        let mut warned = false;
        loop {
            match f(self.client.clone()).await {
                Ok(r) => {
                    if warned {
                        tracing::info!(url = %self.config.coordinator, "reconnected to the coordinator");
                    }
                    return Ok(r.into_inner());
                }
                Err(s) if s.code() == Code::Unauthenticated => {
                    return Err(WorkerError::Unauthenticated {
                        url: self.config.coordinator.clone(),
                    });
                }
                Err(s) if transient(&s) => {
                    if first_failure.elapsed() >= self.config.connect_timeout {
                        return Err(WorkerError::Unreachable {
                            url: self.config.coordinator.clone(),
                            waited: first_failure.elapsed(),
                            last: s.message().to_string(),
                        });
                    }
                    if !warned {
                        tracing::warn!(url = %self.config.coordinator, call = name, error = %s.message(), "coordinator unreachable; retrying");
                        warned = true;
                    }
                    let mut stop = self.shutdown.clone();
                    if self.stopping() {
                        return Err(WorkerError::Interrupted);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => return Err(WorkerError::Interrupted),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(3));
                }
                Err(s) => {
                    return Err(WorkerError::Rpc {
                        call: name,
                        status: s.to_string(),
                    });
                }
            }
        }
    }
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

/// Resolves a shard name from the coordinator inside the input root,
/// refusing anything that would leave it.
pub fn resolve_shard(input_root: &Path, name: &str) -> Result<PathBuf, String> {
    let rel = Path::new(name);
    let plain = !name.is_empty() && rel.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        return Err(format!(
            "refusing shard {name:?}: not a relative name inside the input folder"
        ));
    }
    let root = input_root
        .canonicalize()
        .map_err(|e| format!("cannot open the input folder {}: {e}", input_root.display()))?;
    let path = root.join(rel);
    // The folders on the way must stay inside the input folder; the shard
    // itself may be a symlink the user made (e.g. into a download cache),
    // as long as it is a regular file.
    if let Some(parent) = path.parent() {
        let real_parent = parent
            .canonicalize()
            .map_err(|e| format!("cannot open shard {}: {e}", path.display()))?;
        if !real_parent.starts_with(&root) {
            return Err(format!(
                "refusing shard {name:?}: it resolves outside the input folder"
            ));
        }
    }
    let meta = std::fs::metadata(&path)
        .map_err(|e| format!("cannot open shard {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("refusing shard {name:?}: not a regular file"));
    }
    Ok(path)
}

fn fields_of(spec: &proto::JobSpec) -> FieldMap {
    FieldMap {
        caption: spec.caption_field.clone(),
        width: spec.width_field.clone(),
        height: spec.height_field.clone(),
        filename: spec.filename_field.clone(),
        extra: spec.extra_columns.clone(),
    }
}

// Made once per shard: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Ended {
    Processed(Result<ShardOutput, ShardError>),
    LeaseLost,
    /// No heartbeat got through before the worker's own lease deadline.
    DeadlinePassed,
    Shutdown,
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
    let (path, url) = match locate(spec, &l) {
        Ok(found) => found,
        Err(msg) => {
            let kind = proto::FailureKind::Permanent;
            return report_failure(ctx, l.lease_id, &l.shard_name, msg, kind).await;
        }
    };
    let outputs = match JobOutput::from_proto(spec) {
        Ok(outputs) => outputs,
        Err(msg) => {
            let kind = proto::FailureKind::Permanent;
            return report_failure(ctx, l.lease_id, &l.shard_name, msg, kind).await;
        }
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let lease = LeaseClock::of(spec);
    // The lease's clock started no earlier than `sent` + the time the
    // coordinator held the request.
    let granted = sent + Duration::from_millis(l.held_ms);
    let fence = Fence::new(
        Arc::clone(&cancel),
        l.lease_id,
        lease.deadline_from(granted),
    );
    let mut task = shard_task(ctx, spec, &l, (path, url.is_some()), outputs);
    task.fence = fence.clone();
    let live = Arc::new(LiveProgress::default());
    let fault = ctx.config.fault.clone();
    let handle = spawn_processing(task, url, fault, Arc::clone(&cancel), Arc::clone(&live));
    let ended = watch(ctx, lease, &l, handle, &fence, &live).await?;
    report(ctx, &l, ended, started).await
}

/// Where to read the leased shard: a local path inside the input folder, or
/// a URL under the input location (with its redacted form as the path).
fn locate(
    spec: &proto::JobSpec,
    l: &proto::ShardLease,
) -> Result<(PathBuf, Option<String>), String> {
    if l.url.is_empty() {
        return resolve_shard(Path::new(&spec.input_root), &l.shard_name).map(|p| (p, None));
    }
    if !shardprep_remote::is_under(&spec.input_root, &l.url) {
        return Err(format!(
            "refusing shard URL {}: it is not under the input location {}",
            shardprep_remote::redact(&l.url),
            shardprep_remote::redact(&spec.input_root)
        ));
    }
    Ok((
        PathBuf::from(shardprep_remote::redact(&l.url)),
        Some(l.url.clone()),
    ))
}

fn shard_task(
    ctx: &Ctx,
    spec: &proto::JobSpec,
    l: &proto::ShardLease,
    (path, remote): (PathBuf, bool),
    outputs: JobOutput,
) -> ShardTask {
    let layout = OutputLayout::new(&spec.output_root);
    let shards_in_data_dir = !remote
        && match (path.parent(), layout.data_dir().canonicalize()) {
            (Some(parent), Ok(data)) => parent == data,
            _ => false,
        };
    ShardTask {
        data_sync: DataSync::from_proto(spec.data_sync),
        shards_in_data_dir,
        shard_path: path,
        shard_name: l.shard_name.clone(),
        identity: ShardIdentity {
            size: l.size,
            mtime_ns: l.mtime_ns,
            inode: l.inode,
            ctime_ns: l.ctime_ns,
        },
        layout,
        fields: fields_of(spec),
        outputs,
        lease_id: l.lease_id,
        attempt: l.attempt,
        worker_id: ctx.config.worker_id.clone(),
        write_threads: ctx.config.write_threads,
        integrity: crate::integrity::IntegrityConfig::from_spec(spec),
        fence: Fence::default(),
        max_sparse_size: spec
            .max_sparse_size
            .unwrap_or(shardprep_core::size::DEFAULT_MAX_SPARSE_SIZE),
    }
}

/// Runs the pass on a blocking thread (after a test fault, if one is set
/// for this shard).
fn spawn_processing(
    task: ShardTask,
    url: Option<String>,
    fault: Option<Fault>,
    cancel: Arc<AtomicBool>,
    live: Arc<LiveProgress>,
) -> tokio::task::JoinHandle<Result<ShardOutput, ShardError>> {
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        match &fault {
            Some(Fault::Fail(s)) if *s == task.shard_name => {
                return Err(ShardError::Open {
                    shard: task.shard_name.clone(),
                    path: task.shard_path.display().to_string(),
                    source: std::io::Error::other("injected failure (--fault)"),
                });
            }
            Some(Fault::Hang(s)) if *s == task.shard_name => {
                while !cancel.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                return Err(ShardError::Cancelled(task.shard_name.clone()));
            }
            _ => {}
        }
        let index = task.outputs.mode() == Mode::Index;
        match url {
            // Range requests for what the index needs; a local entry of an input list as a file.
            Some(url) if index => {
                let remote = shardprep_remote::is_remote(&url).then_some((url, runtime));
                index_shard(&task, remote, &cancel, &live)
            }
            // Streamed with bounded read-ahead; dropped connections resume by range.
            Some(url) => match shardprep_remote::open_blocking(&url, runtime) {
                Ok(reader) => process_stream(&task, reader, &cancel, &live),
                Err(source) => Err(ShardError::Remote {
                    shard: task.shard_name.clone(),
                    url: task.shard_path.display().to_string(),
                    source: Box::new(source),
                }),
            },
            None if index => index_shard(&task, None, &cancel, &live),
            None => process_shard(&task, &cancel, &live),
        }
    })
}

/// The lease as the worker counts it: the coordinator's timeout less a
/// safety margin (a fifth), from the send time of the request that began
/// or renewed it, on the monotonic clock.
#[derive(Debug, Clone, Copy)]
struct LeaseClock {
    safe: Duration,
    interval: Duration,
}

impl LeaseClock {
    fn of(spec: &proto::JobSpec) -> Self {
        let timeout = Duration::from_millis(spec.lease_timeout_ms.max(100));
        LeaseClock {
            safe: timeout - timeout / 5,
            interval: Duration::from_millis(spec.heartbeat_interval_ms.max(50)),
        }
    }

    fn deadline_from(self, sent: Instant) -> Instant {
        sent + self.safe
    }
}

type BeatFuture<'a> =
    std::pin::Pin<Box<dyn Future<Output = (Instant, Result<Beat, WorkerError>)> + Send + 'a>>;

/// Awaits the heartbeat in flight, if any (else never resolves).
async fn beat_done(beat: &mut Option<BeatFuture<'_>>) -> (Instant, Result<Beat, WorkerError>) {
    match beat.as_mut() {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// Waits for the pass while heartbeats extend the lease. The deadline is
/// enforced on its own branch, never behind a heartbeat in flight (each
/// heartbeat's own timeout is the time left). When the lease is lost or
/// the worker shuts down, the fence closes and the pass (with its writer
/// threads) is waited for before moving on.
async fn watch(
    ctx: &Ctx,
    lease: LeaseClock,
    l: &proto::ShardLease,
    mut handle: tokio::task::JoinHandle<Result<ShardOutput, ShardError>>,
    fence: &Fence,
    live: &LiveProgress,
) -> Result<Ended, WorkerError> {
    let shard = &l.shard_name;
    let mut tick = tokio::time::interval(lease.interval);
    tick.tick().await;
    let mut shutdown = ctx.shutdown.clone();
    let mut beat: Option<BeatFuture<'_>> = None;
    let ended = loop {
        let deadline = fence.deadline();
        tokio::select! {
            r = &mut handle => break Ended::Processed(r.unwrap_or_else(|e| Err(thread_failed(shard, e)))),
            _ = shutdown.changed() => break Ended::Shutdown,
            _ = tokio::time::sleep_until(deadline.into()) => {
                if fence.deadline() > Instant::now() {
                    continue;
                }
                tracing::warn!(shard = %shard, "no heartbeat got through before the lease deadline; stopping the shard");
                break Ended::DeadlinePassed;
            }
            _ = tick.tick(), if beat.is_none() => {
                let sent = Instant::now();
                let left = deadline.saturating_duration_since(sent);
                beat = Some(Box::pin(async move {
                    let r = match tokio::time::timeout(left, heartbeat(ctx, l, live)).await {
                        Ok(r) => r,
                        Err(_) => Ok(Beat::Failed),
                    };
                    (sent, r)
                }));
            }
            (sent, r) = beat_done(&mut beat) => {
                beat = None;
                match r {
                    Ok(Beat::Renewed) => fence.extend_to(lease.deadline_from(sent)),
                    Ok(Beat::LeaseGone) => break Ended::LeaseLost,
                    Ok(Beat::Failed) => {}
                    Err(e) => {
                        stop_pass(fence, handle).await;
                        return Err(e);
                    }
                }
            }
        }
    };
    if matches!(ended, Ended::Processed(_)) {
        return Ok(ended);
    }
    stop_pass(fence, handle).await;
    Ok(ended)
}

/// Closes the fence and waits for the pass to return: its writer threads
/// have stopped by then, and queued writes were dropped, not published.
async fn stop_pass(
    fence: &Fence,
    handle: tokio::task::JoinHandle<Result<ShardOutput, ShardError>>,
) {
    fence.close();
    let _ = handle.await;
}

/// What one heartbeat found.
enum Beat {
    Renewed,
    /// The coordinator says the lease is no longer ours.
    LeaseGone,
    /// It did not get through (the lease may still be ours).
    Failed,
}

async fn heartbeat(
    ctx: &Ctx,
    l: &proto::ShardLease,
    live: &LiveProgress,
) -> Result<Beat, WorkerError> {
    let hb = proto::HeartbeatRequest {
        worker_id: ctx.config.worker_id.clone(),
        lease_id: l.lease_id,
        progress: Some(progress_of(live)),
    };
    let mut c = ctx.client.clone();
    match c.heartbeat(hb).await {
        Ok(r) if r.get_ref().lease_valid => Ok(Beat::Renewed),
        Ok(_) => {
            tracing::warn!(shard = %l.shard_name, "the coordinator says our lease is gone; abandoning the shard");
            Ok(Beat::LeaseGone)
        }
        Err(s) if s.code() == Code::Unauthenticated => Err(WorkerError::Unauthenticated {
            url: ctx.config.coordinator.clone(),
        }),
        Err(s) => {
            tracing::warn!(shard = %l.shard_name, error = %s.message(), "heartbeat failed");
            Ok(Beat::Failed)
        }
    }
}

/// The processing thread ended without a result: it panicked (a bug, named
/// with its message) or was cancelled by the runtime.
fn thread_failed(shard: &str, e: tokio::task::JoinError) -> ShardError {
    if !e.is_panic() {
        return ShardError::Cancelled(format!("{shard} (worker thread failed: {e})"));
    }
    let payload = e.into_panic();
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_string());
    ShardError::Panicked {
        shard: shard.to_string(),
        message,
    }
}

/// Tells the coordinator how the shard ended.
async fn report(
    ctx: &mut Ctx,
    l: &proto::ShardLease,
    ended: Ended,
    started: Instant,
) -> Result<(), WorkerError> {
    let shard = &l.shard_name;
    match ended {
        Ended::LeaseLost => Ok(()),
        Ended::Shutdown => {
            give_back(ctx, l, "the worker shut down").await;
            Ok(())
        }
        // The coordinator may still count the lease as ours (it hears from
        // this worker when it asks for work): say it is given up.
        Ended::DeadlinePassed => {
            give_back(ctx, l, "no heartbeat got through before the lease deadline").await;
            Ok(())
        }
        Ended::Processed(Err(e)) => {
            let kind = e.failure_kind();
            tracing::error!(shard = %shard, error = %e, kind = kind.as_str_name(), "shard failed");
            report_failure(ctx, l.lease_id, shard, e.to_string(), kind).await
        }
        Ended::Processed(Ok(out)) => {
            if let Some(Fault::Stall(s, d)) = &ctx.config.fault
                && s == shard
            {
                tracing::warn!(shard = %shard, pause = ?d, "test fault: stalling before reporting");
                tokio::time::sleep(*d).await;
            }
            complete(ctx, l, out, started).await
        }
    }
}

/// Gives the shard back (on shutdown, or past the worker's own lease
/// deadline) so that it is re-leased at once (best effort: if this does not
/// get through, the lease expires).
async fn give_back(ctx: &Ctx, l: &proto::ShardLease, why: &str) {
    tracing::info!(shard = %l.shard_name, "{why}: giving the shard back");
    let req = proto::FailRequest {
        worker_id: ctx.config.worker_id.clone(),
        lease_id: l.lease_id,
        error: why.into(),
        kind: proto::FailureKind::Abandoned as i32,
    };
    let mut c = ctx.client.clone();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.fail(req)).await;
}

/// Reports a processed shard; the coordinator commits it if the lease is
/// still current.
async fn complete(
    ctx: &mut Ctx,
    l: &proto::ShardLease,
    out: ShardOutput,
    started: Instant,
) -> Result<(), WorkerError> {
    let shard = &l.shard_name;
    let req = proto::CompleteRequest {
        worker_id: ctx.config.worker_id.clone(),
        lease_id: l.lease_id,
        fragment_tmp: out.fragment_tmp.clone(),
        manifest_tmp: out.manifest_tmp.clone(),
    };
    let r = ctx
        .call("complete", |mut c| {
            let req = req.clone();
            async move { c.complete(req).await }
        })
        .await?;
    if r.accepted {
        let c = &out.manifest.counts;
        tracing::info!(shard = %shard, rows = c.rows, json = c.json_files, members = c.members, secs = started.elapsed().as_secs_f64(), "shard done");
    } else {
        tracing::warn!(shard = %shard, reason = %r.message, "the coordinator did not accept the result");
    }
    Ok(())
}

fn progress_of(live: &LiveProgress) -> proto::Progress {
    proto::Progress {
        members: live.members.load(Ordering::Relaxed),
        bytes_read: live.bytes_read.load(Ordering::Relaxed),
        json_files: live.json_files.load(Ordering::Relaxed),
        rows: live.rows.load(Ordering::Relaxed),
        peak_rss_bytes: peak_rss_bytes(),
    }
}

async fn report_failure(
    ctx: &mut Ctx,
    lease_id: u64,
    shard: &str,
    error: String,
    kind: proto::FailureKind,
) -> Result<(), WorkerError> {
    let req = proto::FailRequest {
        worker_id: ctx.config.worker_id.clone(),
        lease_id,
        error,
        kind: kind as i32,
    };
    ctx.call("fail", |mut c| {
        let req = req.clone();
        async move { c.fail(req).await }
    })
    .await?;
    tracing::debug!(shard, "failure reported");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_must_stay_inside_the_input() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("in");
        std::fs::create_dir_all(input.join("sub")).unwrap();
        std::fs::write(input.join("ok.tar"), b"x").unwrap();
        std::fs::write(tmp.path().join("secret"), b"x").unwrap();
        std::fs::write(tmp.path().join("elsewhere.tar"), b"x").unwrap();
        // A symlinked shard (the user's own link, e.g. into a download cache) is fine.
        std::os::unix::fs::symlink(tmp.path().join("elsewhere.tar"), input.join("link.tar"))
            .unwrap();
        // A symlinked folder leading out of the input is not.
        std::os::unix::fs::symlink(tmp.path(), input.join("up")).unwrap();
        std::os::unix::fs::symlink("/dev/null", input.join("dev.tar")).unwrap();
        assert!(resolve_shard(&input, "ok.tar").is_ok());
        assert!(resolve_shard(&input, "link.tar").is_ok());
        for bad in [
            "../secret",
            "/etc/shadow",
            "a/../../secret",
            "",
            "up/secret",
            "dev.tar",
            "sub",
        ] {
            assert!(resolve_shard(&input, bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[tokio::test]
    async fn a_panicking_pass_is_named_a_panic_not_a_cancellation() {
        let join = tokio::task::spawn_blocking(|| -> () { panic!("boom at member 7") }).await;
        let e = thread_failed("s.tar", join.unwrap_err());
        assert!(
            matches!(&e, ShardError::Panicked { message, .. } if message == "boom at member 7")
        );
        let text = e.to_string();
        assert!(
            text.contains("s.tar") && text.contains("panicked: boom at member 7"),
            "{text}"
        );
        assert_eq!(e.failure_kind(), proto::FailureKind::Retryable);
    }

    #[test]
    fn fault_specs_parse() {
        assert_eq!(Fault::parse("fail:a.tar"), Ok(Fault::Fail("a.tar".into())));
        assert_eq!(
            Fault::parse("stall:a.tar:2s"),
            Ok(Fault::Stall("a.tar".into(), Duration::from_secs(2)))
        );
        assert!(Fault::parse("explode:a.tar").is_err());
    }

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

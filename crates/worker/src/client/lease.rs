//! The lease as the worker holds it: its own deadline on the monotonic
//! clock, the fence every publish passes, and the heartbeats that extend
//! it while the pass runs.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use shardprep_core::layout::peak_rss_bytes;
use shardprep_core::proto;
use tonic::Code;

use super::WorkerError;
use super::pass::{PassHandle, thread_failed};
use super::rpc::Ctx;
use crate::fence::Fence;
use crate::shard::{LiveProgress, ShardError, ShardOutput};

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

/// One lease held: what the coordinator granted, the worker's clock for it,
/// the fence the pass's files pass, and what the pass shares with the watch.
pub(super) struct Lease {
    pub(super) grant: proto::ShardLease,
    clock: LeaseClock,
    /// Closes when the lease is lost, the worker stops, or the deadline passes.
    pub(super) fence: Fence,
    /// Set when the fence closes; the pass stops when it sees it.
    pub(super) cancel: Arc<AtomicBool>,
    /// The pass's counts, sent with each heartbeat.
    pub(super) live: Arc<LiveProgress>,
}

/// How the watch over a pass ended.
// Made once per shard: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub(super) enum Ended {
    Processed(Result<ShardOutput, ShardError>),
    LeaseLost,
    /// No heartbeat got through before the worker's own lease deadline.
    DeadlinePassed,
    Shutdown,
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

/// What one heartbeat found.
enum Beat {
    Renewed,
    /// The coordinator says the lease is no longer ours.
    LeaseGone,
    /// It did not get through (the lease may still be ours).
    Failed,
}

impl Lease {
    /// Starts holding `grant`, answered to a lease request sent at `sent`.
    pub(super) fn begin(spec: &proto::JobSpec, grant: proto::ShardLease, sent: Instant) -> Self {
        let cancel = Arc::new(AtomicBool::new(false));
        let clock = LeaseClock::of(spec);
        // The lease's clock started no earlier than `sent` + the time the
        // coordinator held the request.
        let granted = sent + Duration::from_millis(grant.held_ms);
        let fence = Fence::new(
            Arc::clone(&cancel),
            grant.lease_id,
            clock.deadline_from(granted),
        );
        Lease {
            grant,
            clock,
            fence,
            cancel,
            live: Arc::new(LiveProgress::default()),
        }
    }

    /// Waits for the pass while heartbeats extend the lease. The deadline is
    /// enforced on its own branch, never behind a heartbeat in flight (each
    /// heartbeat's own timeout is the time left). When the lease is lost or
    /// the worker shuts down, the fence closes and the pass (with its writer
    /// threads) is waited for before moving on.
    pub(super) async fn watch(
        &self,
        ctx: &Ctx,
        mut handle: PassHandle,
    ) -> Result<Ended, WorkerError> {
        let shard = &self.grant.shard_name;
        let fence = &self.fence;
        let mut tick = tokio::time::interval(self.clock.interval);
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
                        let r = match tokio::time::timeout(left, self.heartbeat(ctx)).await {
                            Ok(r) => r,
                            Err(_) => Ok(Beat::Failed),
                        };
                        (sent, r)
                    }));
                }
                (sent, r) = beat_done(&mut beat) => {
                    beat = None;
                    match r {
                        Ok(Beat::Renewed) => fence.extend_to(self.clock.deadline_from(sent)),
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

    async fn heartbeat(&self, ctx: &Ctx) -> Result<Beat, WorkerError> {
        let l = &self.grant;
        let mut progress = proto::Progress::from(self.live.snapshot());
        progress.peak_rss_bytes = peak_rss_bytes();
        let hb = proto::HeartbeatRequest {
            worker_id: ctx.config.worker_id.clone(),
            lease_id: l.lease_id,
            progress: Some(progress),
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
}

/// Closes the fence and waits for the pass to return: its writer threads
/// have stopped by then, and queued writes were dropped, not published.
async fn stop_pass(fence: &Fence, handle: PassHandle) {
    fence.close();
    let _ = handle.await;
}

//! The gRPC service: thin handlers over the [`Scheduler`], the token check,
//! and the commit of fragments.

use std::sync::Arc;
use std::time::Instant;

use shardprep_core::auth::{AUTH_HEADER, check_bearer};
use shardprep_core::proto;
use shardprep_core::proto::FailureKind;
use shardprep_core::proto::coordinator_server::Coordinator;
use tonic::{Request, Response, Status};

use crate::commit;
use crate::scheduler::{LeaseAnswer, Progress};
use crate::{JobShared, wire};

/// How long an idle worker's lease request may wait for work.
const LONG_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// Checks the shared token on every request (constant-time compare).
pub fn auth_interceptor(
    token: Arc<String>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |req: Request<()>| {
        let ok = req
            .metadata()
            .get(AUTH_HEADER)
            .map(|v| check_bearer(v.as_bytes(), &token))
            .unwrap_or(false);
        if ok {
            Ok(req)
        } else {
            let peer = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
            tracing::warn!(peer = %peer, "refused a request without the right token");
            Err(Status::unauthenticated(
                "missing or wrong token: pass the job's token with --token-file or SHARDPREP_TOKEN",
            ))
        }
    }
}

/// The coordinator's RPC handlers.
#[derive(Clone)]
pub struct CoordinatorService {
    pub(crate) shared: Arc<JobShared>,
}

fn check_worker_id(id: &str) -> Result<(), Status> {
    if id.is_empty() || id.len() > 256 {
        return Err(Status::invalid_argument("worker_id must be 1 to 256 bytes"));
    }
    Ok(())
}

/// The lease of a result is no longer current: another worker has the shard.
fn late(shared: &JobShared, r: &proto::CompleteRequest) -> proto::CompleteResponse {
    commit::discard(&shared.layout, r.lease_id, &r.fragment_tmp, &r.manifest_tmp);
    tracing::warn!(worker = %r.worker_id, lease = r.lease_id, "late completion of a lease that expired; discarded (no duplicate rows)");
    wire::rejected(
        "the lease expired and the shard was given to another worker; the result was discarded"
            .into(),
    )
}

/// Checks and commits a worker's result. The attempt is read and prepared
/// (index synced and sealed) without the scheduler's lock; the lock is held
/// only across the check that the lease is current and the renames, so
/// that only the current lease can ever commit. The folders are synced
/// after. Runs on a blocking thread (file work).
fn commit_result(shared: &JobShared, r: &proto::CompleteRequest) -> proto::CompleteResponse {
    let layout = &shared.layout;
    let shard = shared.state.read(|s| {
        s.current_lease(r.lease_id)
            .map(|i| (i, s.shards()[i].name.clone()))
    });
    let Some((index, name)) = shard else {
        return late(shared, r);
    };
    let tmp = (r.fragment_tmp.as_str(), r.manifest_tmp.as_str());
    let prepared = commit::prepare(layout, &name, r.lease_id, tmp, &shared.outputs);
    let published = shared.state.update(|s| {
        let now = Instant::now();
        s.note_peak_rss(&r.worker_id, r.peak_rss_bytes, now);
        // Still the current lease? (It may have expired while preparing.)
        s.current_lease(r.lease_id)?;
        let result = prepared.and_then(|p| commit::publish(layout, &p).map(|()| p));
        Some(match result {
            Ok(p) => {
                let (rows, json) = (p.manifest.counts.rows, p.manifest.counts.json_files);
                s.complete(&r.worker_id, r.lease_id, p.manifest.clone(), now);
                // Before the job can see itself settled: the end waits for it.
                if let Some(early) = &shared.early_sqlite {
                    early.committed(index, &name);
                }
                let (done, failed, _) = s.tally();
                tracing::info!(shard = %name, worker = %r.worker_id, rows, json, done, failed, total = s.shards().len(), "shard committed");
                Ok(p)
            }
            Err(e) => {
                let msg = format!("commit failed: {e}");
                tracing::error!(shard = %name, worker = %r.worker_id, "{msg}");
                s.fail(&r.worker_id, r.lease_id, msg.clone(), FailureKind::Retryable, now);
                Err(msg)
            }
        })
    });
    match published {
        None => late(shared, r),
        Some(Ok(p)) => {
            p.sync(layout);
            wire::accepted()
        }
        Some(Err(msg)) => {
            commit::discard(layout, r.lease_id, &r.fragment_tmp, &r.manifest_tmp);
            wire::rejected(msg)
        }
    }
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn register(
        &self,
        req: Request<proto::RegisterRequest>,
    ) -> Result<Response<proto::RegisterResponse>, Status> {
        let r = req.into_inner();
        check_worker_id(&r.worker_id)?;
        let new = self
            .shared
            .state
            .update_if(|s| (s.register(&r.worker_id, &r.hostname, Instant::now()), false));
        if new {
            tracing::info!(worker = %r.worker_id, host = %r.hostname, pid = r.pid, "worker registered");
        }
        Ok(Response::new(proto::RegisterResponse {
            spec: Some(self.shared.spec.clone()),
        }))
    }

    async fn lease(
        &self,
        req: Request<proto::LeaseRequest>,
    ) -> Result<Response<proto::LeaseResponse>, Status> {
        let arrived = Instant::now();
        let r = req.into_inner();
        check_worker_id(&r.worker_id)?;
        // Long poll: an idle worker's request waits (bounded) for a change,
        // so it hears of a freed shard or of the end of the job at once.
        let mut changes = self.shared.state.subscribe();
        let deadline = tokio::time::Instant::now() + LONG_POLL;
        let answer = loop {
            changes.borrow_and_update();
            // A grant or a wait frees nothing that others wait for; a
            // worker told "done" is news for the end of the job.
            let answer = self.shared.state.update_if(|s| {
                let answer = s.lease(&r.worker_id, Instant::now());
                let told_done = answer == LeaseAnswer::Done;
                (answer, told_done)
            });
            if answer != LeaseAnswer::Wait || tokio::time::Instant::now() >= deadline {
                break answer;
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        };
        let outcome = match answer {
            LeaseAnswer::Shard(g) => {
                tracing::info!(shard = %g.name, worker = %r.worker_id, attempt = g.attempt, lease = g.lease_id, "shard leased");
                let url = self.shared.shard_urls.get(g.index).cloned().flatten();
                proto::lease_response::Outcome::Shard(wire::shard_lease(g, url, arrived.elapsed()))
            }
            // The request already waited: ask again soon.
            LeaseAnswer::Wait => proto::lease_response::Outcome::WaitMs(10),
            LeaseAnswer::Done => proto::lease_response::Outcome::Done(true),
        };
        Ok(Response::new(proto::LeaseResponse {
            outcome: Some(outcome),
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<proto::HeartbeatRequest>,
    ) -> Result<Response<proto::HeartbeatResponse>, Status> {
        let r = req.into_inner();
        check_worker_id(&r.worker_id)?;
        let wire = r.progress.unwrap_or_default();
        let valid = self.shared.state.update(|s| {
            s.heartbeat(
                &r.worker_id,
                r.lease_id,
                Progress::from(&wire),
                wire.peak_rss_bytes,
                Instant::now(),
            )
        });
        if !valid {
            tracing::warn!(worker = %r.worker_id, lease = r.lease_id, "heartbeat for a lease that is no longer held; telling the worker to stop");
        }
        Ok(Response::new(proto::HeartbeatResponse {
            lease_valid: valid,
        }))
    }

    async fn complete(
        &self,
        req: Request<proto::CompleteRequest>,
    ) -> Result<Response<proto::CompleteResponse>, Status> {
        let r = req.into_inner();
        check_worker_id(&r.worker_id)?;
        let shared = self.shared.clone();
        let resp = tokio::task::spawn_blocking(move || commit_result(&shared, &r))
            .await
            .map_err(|e| Status::internal(format!("commit task failed: {e}")))?;
        Ok(Response::new(resp))
    }

    async fn fail(
        &self,
        req: Request<proto::FailRequest>,
    ) -> Result<Response<proto::FailResponse>, Status> {
        let r = req.into_inner();
        check_worker_id(&r.worker_id)?;
        let kind = r.failure_kind();
        let outcome = self.shared.state.update(|s| {
            s.fail(
                &r.worker_id,
                r.lease_id,
                r.error.clone(),
                kind,
                Instant::now(),
            )
        });
        if let Some(o) = outcome {
            if !kind.counts_as_attempt() {
                tracing::info!(shard = %o.name, worker = %r.worker_id, reason = %r.error, "worker gave the shard back");
            } else if o.failed_for_good {
                tracing::error!(shard = %o.name, worker = %r.worker_id, attempts = o.attempts, error = %r.error, "shard failed for good");
            } else {
                tracing::warn!(shard = %o.name, worker = %r.worker_id, attempt = o.attempts, error = %r.error, "shard attempt failed; will retry");
            }
        }
        Ok(Response::new(proto::FailResponse {}))
    }

    async fn status(
        &self,
        _req: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        Ok(Response::new(self.shared.status()))
    }
}

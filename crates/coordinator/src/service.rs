//! The gRPC service: thin handlers over the [`Scheduler`], the token check,
//! and the commit of fragments.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use shardprep_core::auth::{AUTH_HEADER, check_bearer};
use shardprep_core::proto;
use shardprep_core::proto::FailureKind;
use shardprep_core::proto::coordinator_server::Coordinator;
use tonic::{Request, Response, Status};

use crate::JobShared;
use crate::commit;
use crate::scheduler::{LeaseAnswer, Progress, Scheduler, ShardState};

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

fn lock(m: &Mutex<Scheduler>) -> MutexGuard<'_, Scheduler> {
    // A panic while holding the lock leaves the scheduler usable: its
    // transitions are single assignments.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn progress(p: Option<proto::Progress>) -> Progress {
    let p = p.unwrap_or_default();
    Progress {
        members: p.members,
        bytes_read: p.bytes_read,
        json_files: p.json_files,
        rows: p.rows,
    }
}

fn check_worker_id(id: &str) -> Result<(), Status> {
    if id.is_empty() || id.len() > 256 {
        return Err(Status::invalid_argument("worker_id must be 1 to 256 bytes"));
    }
    Ok(())
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn register(
        &self,
        req: Request<proto::RegisterRequest>,
    ) -> Result<Response<proto::RegisterResponse>, Status> {
        let r = req.into_inner();
        check_worker_id(&r.worker_id)?;
        let mut s = lock(&self.shared.sched);
        let new = !s.workers.contains_key(&r.worker_id);
        s.touch(&r.worker_id, Some(&r.hostname), Instant::now());
        drop(s);
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
        let r = req.into_inner();
        check_worker_id(&r.worker_id)?;
        // Long poll: an idle worker's request waits (bounded) for a change,
        // so it hears of a freed shard or of the end of the job at once.
        let mut changes = self.shared.version.subscribe();
        let deadline = tokio::time::Instant::now() + LONG_POLL;
        let answer = loop {
            changes.borrow_and_update();
            let answer = lock(&self.shared.sched).lease(&r.worker_id, Instant::now());
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
                proto::lease_response::Outcome::Shard(proto::ShardLease {
                    lease_id: g.lease_id,
                    shard_index: g.index as u32,
                    shard_name: g.name,
                    attempt: g.attempt,
                    size: g.identity.size,
                    mtime_ns: g.identity.mtime_ns,
                    url: self
                        .shared
                        .shard_urls
                        .get(g.index)
                        .cloned()
                        .flatten()
                        .unwrap_or_default(),
                })
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
        let rss = r.progress.as_ref().map(|p| p.peak_rss_bytes).unwrap_or(0);
        let mut s = lock(&self.shared.sched);
        let valid = s.heartbeat(
            &r.worker_id,
            r.lease_id,
            progress(r.progress),
            Instant::now(),
        );
        let w = s.touch(&r.worker_id, None, Instant::now());
        w.peak_rss_bytes = w.peak_rss_bytes.max(rss);
        drop(s);
        if !valid {
            tracing::warn!(worker = %r.worker_id, lease = r.lease_id, "heartbeat for a lease that is no longer held; telling the worker to stop");
        }
        self.shared.wake();
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
        // File work on a blocking thread; the lock is held across check and
        // rename so that only the current lease can ever commit.
        let resp = tokio::task::spawn_blocking(move || {
            let layout = &shared.layout;
            let mut s = lock(&shared.sched);
            let now = Instant::now();
            let Some(i) = s.current_lease(r.lease_id) else {
                drop(s);
                commit::discard(layout, &r.fragment_tmp, &r.manifest_tmp);
                tracing::warn!(worker = %r.worker_id, lease = r.lease_id, "late completion of a lease that expired; discarded (no duplicate rows)");
                return proto::CompleteResponse {
                    accepted: false,
                    message: "the lease expired and the shard was given to another worker; the result was discarded".into(),
                };
            };
            let name = s.shards[i].name.clone();
            let result = commit::read_tmp_manifest(layout, &r.manifest_tmp, &name, r.lease_id)
                .and_then(|m| commit::commit(layout, &name, &r.fragment_tmp, &r.manifest_tmp).map(|()| m));
            match result {
                Ok(manifest) => {
                    let rows = manifest.counts.rows;
                    let json = manifest.counts.json_files;
                    s.complete(&r.worker_id, r.lease_id, manifest, now);
                    let (done, failed, _) = s.tally();
                    tracing::info!(shard = %name, worker = %r.worker_id, rows, json, done, failed, total = s.shards.len(), "shard committed");
                    proto::CompleteResponse {
                        accepted: true,
                        message: String::new(),
                    }
                }
                Err(e) => {
                    let msg = format!("commit failed: {e}");
                    tracing::error!(shard = %name, worker = %r.worker_id, "{msg}");
                    s.fail(&r.worker_id, r.lease_id, msg.clone(), FailureKind::Retryable, now);
                    drop(s);
                    commit::discard(layout, &r.fragment_tmp, &r.manifest_tmp);
                    proto::CompleteResponse {
                        accepted: false,
                        message: msg,
                    }
                }
            }
        })
        .await
        .map_err(|e| Status::internal(format!("commit task failed: {e}")))?;
        if resp.accepted {
            let dir = self.shared.layout.fragments_dir();
            let _ = tokio::task::spawn_blocking(move || commit::sync_dir(&dir)).await;
        }
        self.shared.wake();
        Ok(Response::new(resp))
    }

    async fn fail(
        &self,
        req: Request<proto::FailRequest>,
    ) -> Result<Response<proto::FailResponse>, Status> {
        let r = req.into_inner();
        check_worker_id(&r.worker_id)?;
        let mut s = lock(&self.shared.sched);
        let name = s
            .current_lease(r.lease_id)
            .map(|i| s.shards[i].name.clone());
        let current = s.fail(
            &r.worker_id,
            r.lease_id,
            r.error.clone(),
            r.failure_kind(),
            Instant::now(),
        );
        if let Some(name) = name.filter(|_| current) {
            let i = s.shards.iter().position(|x| x.name == name).unwrap_or(0);
            let st = &s.shards[i];
            if !r.failure_kind().counts_as_attempt() {
                tracing::info!(shard = %name, worker = %r.worker_id, "worker gave the shard back (shutting down)");
            } else if matches!(st.state, ShardState::Failed) {
                tracing::error!(shard = %name, worker = %r.worker_id, attempts = st.attempts, error = %r.error, "shard failed for good");
            } else {
                tracing::warn!(shard = %name, worker = %r.worker_id, attempt = st.attempts, error = %r.error, "shard attempt failed; will retry");
            }
        }
        drop(s);
        self.shared.wake();
        Ok(Response::new(proto::FailResponse {}))
    }

    async fn status(
        &self,
        _req: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        Ok(Response::new(self.shared.status()))
    }
}

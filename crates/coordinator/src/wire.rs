//! The coordinator's wire messages, built from its domain types in one
//! place (the shared conversions are in `shardprep_core::wire`): what
//! workers are told about the job, a granted lease, a commit's answer, the
//! job's status.

use std::time::Instant;

use shardprep_core::proto;

use crate::scheduler::{self, Grant, Scheduler, ShardState};
use crate::{CoordinatorConfig, JobShared, lock, report};

/// What every worker is told about the job.
pub(crate) fn job_spec(config: &CoordinatorConfig, input_root: String) -> proto::JobSpec {
    let mut spec = proto::JobSpec {
        input_root,
        output_root: report::absolute(&config.output).display().to_string(),
        caption_field: config.fields.caption.clone(),
        width_field: config.fields.width.clone(),
        height_field: config.fields.height.clone(),
        filename_field: config.fields.filename.clone(),
        extra_columns: config.fields.extra.clone(),
        heartbeat_interval_ms: config.heartbeat_interval.as_millis() as u64,
        lease_timeout_ms: config.lease_timeout.as_millis() as u64,
        job_id: format!("{:016x}", shardprep_core::auth::random_u64()),
        data_sync: config.data_sync.to_proto(),
        max_sparse_size: Some(config.max_sparse_size),
        ..Default::default()
    };
    config.outputs.to_proto(&mut spec);
    config.image_checks.to_proto(&mut spec);
    spec
}

/// The wire form of a granted shard.
pub(crate) fn shard_lease(
    g: Grant,
    url: Option<String>,
    held: std::time::Duration,
) -> proto::ShardLease {
    proto::ShardLease {
        lease_id: g.lease_id,
        shard_index: g.index as u32,
        shard_name: g.name,
        attempt: g.attempt,
        size: g.identity.size,
        mtime_ns: g.identity.mtime_ns,
        inode: g.identity.inode,
        ctime_ns: g.identity.ctime_ns,
        url: url.unwrap_or_default(),
        // Rounded down: the worker's deadline stays on the safe side.
        held_ms: held.as_millis() as u64,
    }
}

pub(crate) fn rejected(message: String) -> proto::CompleteResponse {
    proto::CompleteResponse {
        accepted: false,
        message,
    }
}

/// A result committed.
pub(crate) fn accepted() -> proto::CompleteResponse {
    proto::CompleteResponse {
        accepted: true,
        message: String::new(),
    }
}

/// A snapshot of the job for `shardprep status`.
pub(crate) fn status(job: &JobShared) -> proto::StatusResponse {
    let (phase, verdict) = lock(&job.phase).clone();
    let mut resp = proto::StatusResponse {
        phase: phase.name().into(),
        bytes_total: job.bytes_total,
        elapsed_ms: job.started.elapsed().as_millis() as u64,
        job_id: job.spec.job_id.clone(),
        verdict,
        ..Default::default()
    };
    job.state.read(|s| {
        resp.shards_total = s.shards().len() as u32;
        for (i, sh) in s.shards().iter().enumerate() {
            let st = shard_status(i, sh, &mut resp);
            resp.shards.push(st);
        }
        resp.workers = worker_statuses(s);
    });
    resp
}

/// One shard's line of the status, adding its numbers into `resp`'s totals.
fn shard_status(
    index: usize,
    sh: &scheduler::ShardEntry,
    resp: &mut proto::StatusResponse,
) -> proto::ShardStatus {
    let mut st = proto::ShardStatus {
        index: index as u32,
        name: sh.name.clone(),
        state: sh.state_name().into(),
        attempts: sh.attempts,
        last_error: sh.last_error.clone().unwrap_or_default(),
        size: sh.identity.size,
        ..Default::default()
    };
    let (worker, progress) = match &sh.state {
        ShardState::Done(m) => {
            resp.shards_done += 1;
            (&m.worker_id, scheduler::Progress::from(&m.counts))
        }
        ShardState::Leased {
            worker, progress, ..
        } => {
            resp.shards_leased += 1;
            (worker, *progress)
        }
        ShardState::Failed => {
            resp.shards_failed += 1;
            return st;
        }
        ShardState::Pending => return st,
    };
    resp.json_files += progress.json_files;
    resp.rows += progress.rows;
    resp.bytes_read += progress.bytes_read;
    st.worker_id = worker.clone();
    st.progress = Some(proto::Progress::from(progress));
    st
}

/// The workers' lines of the status, by id.
fn worker_statuses(s: &Scheduler) -> Vec<proto::WorkerStatus> {
    let now = Instant::now();
    let mut workers: Vec<_> = s.workers().iter().collect();
    workers.sort_by(|a, b| a.0.cmp(b.0));
    workers
        .into_iter()
        .map(|(id, w)| proto::WorkerStatus {
            worker_id: id.clone(),
            hostname: w.hostname.clone(),
            last_seen_ms_ago: now.saturating_duration_since(w.last_seen).as_millis() as u64,
            current_shard: w
                .current
                .and_then(|i| s.shards().get(i))
                .map(|sh| sh.name.clone())
                .unwrap_or_default(),
            shards_done: w.shards_done,
        })
        .collect()
}

//! How a shard ended, told to the coordinator: `Complete` for a result,
//! `Fail` for an error, or the shard given back.

use std::time::{Duration, Instant};

use shardprep_core::proto;

use super::WorkerError;
use super::lease::Ended;
use super::rpc::Ctx;
use crate::shard::ShardOutput;

/// Tells the coordinator how the shard ended.
pub(super) async fn report(
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
            report_failure(ctx, l, e.to_string(), kind).await
        }
        Ended::Processed(Ok(out)) => {
            if let Some(fault) = &ctx.config.fault {
                fault.before_report(shard).await;
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
        peak_rss_bytes: shardprep_core::layout::peak_rss_bytes(),
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

/// Reports that the shard failed, and how (retryable or not).
pub(super) async fn report_failure(
    ctx: &mut Ctx,
    l: &proto::ShardLease,
    error: String,
    kind: proto::FailureKind,
) -> Result<(), WorkerError> {
    let req = proto::FailRequest {
        worker_id: ctx.config.worker_id.clone(),
        lease_id: l.lease_id,
        error,
        kind: kind as i32,
    };
    ctx.call("fail", |mut c| {
        let req = req.clone();
        async move { c.fail(req).await }
    })
    .await?;
    let shard = l.shard_name.as_str();
    tracing::debug!(shard, "failure reported");
    Ok(())
}

//! The pass over the leased shard, on a blocking thread: streamed, read at
//! chosen offsets for an index, or replaced by a test fault.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use shardprep_core::mode::Mode;

use super::Fault;
use crate::index::index_shard;
use crate::shard::{
    LiveProgress, ShardError, ShardOutput, ShardTask, process_shard, process_stream,
};

/// The running pass.
pub(super) type PassHandle = tokio::task::JoinHandle<Result<ShardOutput, ShardError>>;

/// Runs the pass on a blocking thread (after a test fault, if one is set
/// for this shard).
pub(super) fn spawn(
    task: ShardTask,
    url: Option<String>,
    fault: Option<Fault>,
    cancel: Arc<AtomicBool>,
    live: Arc<LiveProgress>,
) -> PassHandle {
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        if let Some(ended) = fault.and_then(|f| f.instead_of_pass(&task, &cancel)) {
            return ended;
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

/// The processing thread ended without a result: it panicked (a bug, named
/// with its message) or was cancelled by the runtime.
pub(super) fn thread_failed(shard: &str, e: tokio::task::JoinError) -> ShardError {
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

#[cfg(test)]
mod tests {
    use super::*;
    use shardprep_core::proto;

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
}

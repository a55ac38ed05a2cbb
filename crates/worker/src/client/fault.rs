//! Faults a test injects into a worker (the hidden `--fault` flag).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::shard::{ShardError, ShardOutput, ShardTask};

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
    /// Processing this shard starts only after the duration (heartbeats
    /// go on): another worker's shard lands first.
    Delay(String, Duration),
}

impl Fault {
    /// Parses `fail:SHARD`, `stall:SHARD:DURATION`, `hang:SHARD` or
    /// `delay:SHARD:DURATION`.
    pub fn parse(s: &str) -> Result<Fault, String> {
        let mut parts = s.splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("fail"), Some(shard), None) => Ok(Fault::Fail(shard.into())),
            (Some("hang"), Some(shard), None) => Ok(Fault::Hang(shard.into())),
            (Some(kind @ ("stall" | "delay")), Some(shard), Some(d)) => {
                let d = shardprep_core::duration::parse_duration(d).map_err(|e| e.to_string())?;
                Ok(match kind {
                    "stall" => Fault::Stall(shard.into(), d),
                    _ => Fault::Delay(shard.into(), d),
                })
            }
            _ => Err(format!(
                "bad fault {s:?}: use fail:SHARD, stall:SHARD:DUR, hang:SHARD or delay:SHARD:DUR"
            )),
        }
    }

    /// What the pass ends with when this fault takes its place (`fail`,
    /// `hang` until cancelled), on the pass's blocking thread; `None` when
    /// the pass runs as usual.
    pub(super) fn instead_of_pass(
        &self,
        task: &ShardTask,
        cancel: &AtomicBool,
    ) -> Option<Result<ShardOutput, ShardError>> {
        match self {
            Fault::Fail(s) if *s == task.shard_name => Some(Err(ShardError::Open {
                shard: task.shard_name.clone(),
                path: task.shard_path.display().to_string(),
                source: std::io::Error::other("injected failure (--fault)"),
            })),
            Fault::Hang(s) if *s == task.shard_name => {
                sleep_unless_cancelled(cancel, None);
                Some(Err(ShardError::Cancelled(task.shard_name.clone())))
            }
            Fault::Delay(s, d) if *s == task.shard_name => {
                tracing::warn!(shard = %s, pause = ?d, "test fault: delaying the shard");
                sleep_unless_cancelled(cancel, Some(*d));
                None
            }
            _ => None,
        }
    }

    /// `stall`: goes silent after processing `shard`, before reporting it.
    pub(super) async fn before_report(&self, shard: &str) {
        if let Fault::Stall(s, d) = self
            && s == shard
        {
            tracing::warn!(shard = %shard, pause = ?d, "test fault: stalling before reporting");
            tokio::time::sleep(*d).await;
        }
    }
}

/// Sleeps until `cancel` is set, or `limit` has passed (`None`: no limit).
fn sleep_unless_cancelled(cancel: &AtomicBool, limit: Option<Duration>) {
    let until = limit.map(|d| std::time::Instant::now() + d);
    while !cancel.load(Ordering::Relaxed) && until.is_none_or(|u| std::time::Instant::now() < u) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_specs_parse() {
        assert_eq!(Fault::parse("fail:a.tar"), Ok(Fault::Fail("a.tar".into())));
        assert_eq!(
            Fault::parse("stall:a.tar:2s"),
            Ok(Fault::Stall("a.tar".into(), Duration::from_secs(2)))
        );
        assert_eq!(
            Fault::parse("delay:a.tar:1s"),
            Ok(Fault::Delay("a.tar".into(), Duration::from_secs(1)))
        );
        assert!(Fault::parse("explode:a.tar").is_err());
    }
}

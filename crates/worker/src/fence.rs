//! The lease fence: whether this attempt may still publish files.
//!
//! A file is written under a private name (an unnamed `O_TMPFILE`, or
//! `.<name>.sp<tag>`) and linked or renamed into place only if the fence is
//! still open right before. The fence closes when the cancel flag is set or
//! when the worker's own lease deadline (monotonic clock) has passed, so a
//! process that was paused past its lease sees it closed at once when it
//! resumes, before the thread that sets the flag has even run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

struct Inner {
    cancel: Arc<AtomicBool>,
    base: Instant,
    /// Milliseconds after `base` at which the fence closes.
    deadline_ms: AtomicU64,
    tag: u64,
}

/// Shared by the worker loop (which extends the deadline on each
/// acknowledged heartbeat) and the threads writing files.
#[derive(Clone)]
pub struct Fence(Arc<Inner>);

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fence")
            .field("open", &self.is_open())
            .field("tag", &self.0.tag)
            .finish()
    }
}

impl Default for Fence {
    /// A fence that stays open (tests and tools without a lease).
    fn default() -> Self {
        Fence::new(
            Arc::new(AtomicBool::new(false)),
            shardprep_core::auth::random_u64(),
            Instant::now() + Duration::from_secs(100 * 365 * 86_400),
        )
    }
}

impl Fence {
    /// A fence closing at `deadline` or when `cancel` is set; `tag` (the
    /// lease id) names the attempt's temporary files.
    pub fn new(cancel: Arc<AtomicBool>, tag: u64, deadline: Instant) -> Self {
        let base = Instant::now();
        let ms = deadline.saturating_duration_since(base).as_millis() as u64;
        Fence(Arc::new(Inner {
            cancel,
            base,
            deadline_ms: AtomicU64::new(ms),
            tag,
        }))
    }

    /// Moves the deadline to `at` (never earlier than it is).
    pub fn extend_to(&self, at: Instant) {
        let ms = at.saturating_duration_since(self.0.base).as_millis() as u64;
        self.0.deadline_ms.fetch_max(ms, Ordering::SeqCst);
    }

    /// The deadline as an instant.
    pub fn deadline(&self) -> Instant {
        self.0.base + Duration::from_millis(self.0.deadline_ms.load(Ordering::SeqCst))
    }

    /// Closes the fence now.
    pub fn close(&self) {
        self.0.cancel.store(true, Ordering::SeqCst);
    }

    /// Whether files may still be published.
    pub fn is_open(&self) -> bool {
        !self.0.cancel.load(Ordering::SeqCst) && Instant::now() < self.deadline()
    }

    /// The attempt's tag, for temporary names.
    pub fn tag(&self) -> u64 {
        self.0.tag
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_at_the_deadline_or_on_cancel() {
        let cancel = Arc::new(AtomicBool::new(false));
        let f = Fence::new(Arc::clone(&cancel), 7, Instant::now());
        assert!(!f.is_open(), "a zero lease is over at once");
        f.extend_to(Instant::now() + Duration::from_secs(60));
        assert!(f.is_open());
        f.extend_to(Instant::now());
        assert!(f.is_open(), "the deadline never moves back");
        cancel.store(true, Ordering::SeqCst);
        assert!(!f.is_open());
        assert!(Fence::default().is_open());
    }
}

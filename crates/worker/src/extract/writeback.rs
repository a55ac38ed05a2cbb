//! Background writeback of `data/`: a thread that runs `syncfs` whenever
//! enough has been written since the last one, so the disk writes back
//! while shards are still being extracted instead of all at the end.
//!
//! Writing back 300,000 small files costs ~4 CPU-s of the kernel's flusher
//! (block allocation, extent conversion), nearly all on one kernel thread:
//! left to a final `sync`, that runs with one CPU idle; started while the
//! workers extract, it overlaps them (bench/SPEED-DESIGNS.md section 9).
//!
//! One [`Writeback`] serves every shard a worker runs (clones share the
//! thread and the counts), so flushes stay evenly spaced across shards.

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex};

use shardprep_core::durability::{self, DataSync};

/// How much is written between two background flushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushEvery {
    pub files: u64,
    pub bytes: u64,
}

impl FlushEvery {
    /// `shard`: often, since each commit waits for what is left; `end` and
    /// `none`: 4x less often, so that `data/`'s directory blocks (a new
    /// entry dirties one almost at random) are rewritten fewer times.
    pub fn for_sync(sync: DataSync) -> Self {
        match sync {
            DataSync::Shard => FlushEvery {
                files: 4096,
                bytes: 64 << 20,
            },
            DataSync::End | DataSync::None => FlushEvery {
                files: 16384,
                bytes: 256 << 20,
            },
        }
    }
}

/// The background writeback of one worker process (a cheap handle).
#[derive(Debug, Clone, Default)]
pub struct Writeback {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    /// Files and bytes written since the last kick.
    files: AtomicU64,
    bytes: AtomicU64,
    /// Flushes finished (read by tests: nothing else waits for them).
    flushes: AtomicU64,
    thread: Mutex<Thread>,
}

/// The flush thread, started at the first kick.
#[derive(Debug, Default)]
enum Thread {
    #[default]
    NotStarted,
    /// Its queue. Capacity 1: a kick while a flush runs queues one more;
    /// more are dropped.
    Running(SyncSender<Arc<File>>),
    /// It could not be started (logged once): the kernel writes back alone.
    Failed,
}

impl Writeback {
    /// Counts `files` and `bytes` written under `dir` (an open directory of
    /// the filesystem to flush); starts a flush once `every` is reached.
    pub(crate) fn note(&self, dir: &Arc<File>, files: u64, bytes: u64, every: FlushEvery) {
        let s = &self.shared;
        let f = s.files.fetch_add(files, Ordering::Relaxed) + files;
        let b = s.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if f >= every.files || b >= every.bytes {
            s.files.store(0, Ordering::Relaxed);
            s.bytes.store(0, Ordering::Relaxed);
            self.kick(dir);
        }
    }

    /// Flushes finished so far.
    pub fn flushes(&self) -> u64 {
        self.shared.flushes.load(Ordering::Relaxed)
    }

    fn kick(&self, dir: &Arc<File>) {
        let mut thread = match self.shared.thread.lock() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        };
        if matches!(*thread, Thread::NotStarted) {
            *thread = self.start();
        }
        if let Thread::Running(tx) = &*thread {
            let _ = tx.try_send(Arc::clone(dir));
        }
    }

    /// Starts the thread; it ends when the last handle is dropped.
    fn start(&self) -> Thread {
        let (tx, rx) = mpsc::sync_channel::<Arc<File>>(1);
        // The thread holds only the counter, not the handle: dropping the
        // last handle drops the sender and ends the loop.
        let shared = Arc::downgrade(&self.shared);
        let spawned = std::thread::Builder::new()
            .name("shardprep-flush".into())
            .spawn(move || {
                let mut warned = false;
                while let Ok(dir) = rx.recv() {
                    let result = durability::syncfs(&dir);
                    if let Some(s) = shared.upgrade() {
                        s.flushes.fetch_add(1, Ordering::Relaxed);
                    }
                    // A shard that promises its files on disk flushes
                    // again itself and fails on the error; here it is only
                    // said once.
                    if let Err(e) = result
                        && !std::mem::replace(&mut warned, true)
                    {
                        tracing::warn!(error = %e, "the background writeback of data/ failed: files may not reach the disk; check the disk");
                    }
                }
            });
        match spawned {
            Ok(_) => Thread::Running(tx),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the background writeback thread; data/ is written back by the kernel alone");
                Thread::Failed
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flushes_are_spaced_by_what_was_written_across_shards() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Arc::new(File::open(tmp.path()).unwrap());
        let every = FlushEvery {
            files: 10,
            bytes: 1 << 20,
        };
        let wb = Writeback::default();
        // Two "shards" of 6 files each: one flush, at the 10th file.
        let second = wb.clone();
        for _ in 0..6 {
            wb.note(&dir, 1, 100, every);
        }
        assert!(
            matches!(*wb.shared.thread.lock().unwrap(), Thread::NotStarted),
            "not started yet"
        );
        for _ in 0..6 {
            second.note(&dir, 1, 100, every);
        }
        assert_eq!(wb.shared.files.load(Ordering::Relaxed), 2);
        // Bytes count too.
        wb.note(&dir, 1, 2 << 20, every);
        let waited = std::time::Instant::now();
        while wb.flushes() < 1 && waited.elapsed().as_secs() < 30 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(wb.flushes() >= 1, "the thread ran syncfs");
        assert!(wb.flushes() <= 2);
    }

    #[test]
    fn shard_mode_flushes_most_often() {
        let shard = FlushEvery::for_sync(DataSync::Shard);
        let none = FlushEvery::for_sync(DataSync::None);
        assert!(shard.files < none.files && shard.bytes < none.bytes);
        assert_eq!(none, FlushEvery::for_sync(DataSync::End));
    }
}

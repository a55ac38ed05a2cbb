//! The background flush of `data/` (`--data-sync shard|end`): a thread that
//! runs `syncfs` whenever enough has been written since the last one.

use std::fs::File;
use std::io;
use std::sync::mpsc;
use std::thread::JoinHandle;

use shardprep_core::durability;

/// Files and bytes written between two background flushes.
pub(super) const FLUSH_EVERY_FILES: u32 = 4096;
const FLUSH_EVERY_BYTES: u64 = 64 << 20;

/// A thread that runs `syncfs` whenever enough has been written since the
/// last one, so the disk writes back while the shard is still being
/// extracted (the kernel would otherwise wait up to 30 s, and the final
/// sync would pay for the whole shard on the critical path).
pub(super) struct Flusher {
    kick: mpsc::SyncSender<()>,
    thread: JoinHandle<io::Result<()>>,
    files: u32,
    bytes: u64,
}

impl Flusher {
    pub(super) fn start(fd: File) -> io::Result<Self> {
        // Capacity 1: a kick while a flush runs queues one more; more are dropped.
        let (kick, rx) = mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("shardprep-flush".into())
            .spawn(move || {
                let mut first_err = Ok(());
                while rx.recv().is_ok() {
                    if let Err(e) = durability::syncfs(&fd)
                        && first_err.is_ok()
                    {
                        first_err = Err(e);
                    }
                }
                first_err
            })?;
        Ok(Flusher {
            kick,
            thread,
            files: 0,
            bytes: 0,
        })
    }

    pub(super) fn note_file(&mut self) {
        self.files += 1;
        if self.files >= FLUSH_EVERY_FILES {
            self.kick();
        }
    }

    pub(super) fn note_bytes(&mut self, n: u64) {
        self.bytes += n;
        if self.bytes >= FLUSH_EVERY_BYTES {
            self.kick();
        }
    }

    fn kick(&mut self) {
        self.files = 0;
        self.bytes = 0;
        let _ = self.kick.try_send(());
    }

    /// Stops the thread; returns the first error a background flush met.
    /// (A flusher dropped without `stop` ends its thread too, unwaited: the
    /// dropped sender ends the loop.)
    pub(super) fn stop(self) -> io::Result<()> {
        let Flusher { kick, thread, .. } = self;
        drop(kick);
        thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the background flush thread panicked")))
    }
}

//! Small files written by a few threads while the tar is still being read.
//!
//! Profile of the many-small-files case (perf, 1 worker): ~80% of the time is
//! the kernel creating files (`openat` with `O_CREAT`: ext4 lookup + inode
//! allocation), so a worker that creates every file on the thread reading
//! the tar leaves the tar reader and the JSON parser waiting on each create.
//! [`WriteQueue`] hands small writes to `n` threads and gives their outcomes
//! back **in the order they were queued**, at points that depend only on the
//! data (never on timing), so a shard's report is the same whatever the
//! thread count, and `0` threads (write on the spot) gives the same result.
//!
//! Ordering rules that keep the tree identical to writing inline:
//! - writes to the same path go to the same thread, in queue order (a later
//!   duplicate member still wins);
//! - [`WriteQueue::wait_for_path`] before writing a path directly, and
//!   [`WriteQueue::wait_all`] before creating a directory (a queued file may
//!   stand where the directory would go).
//!
//! Memory is bounded: at most [`WINDOW`] writes and [`MAX_BYTES_IN_FLIGHT`]
//! bytes are queued before the oldest outcome is due; channels are bounded.

use std::collections::VecDeque;

use foldhash::HashMap;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use shardprep_core::layout::fnv1a64;

use crate::fence::Fence;
use crate::publish::{PlaceError, Target, stage};

/// Members up to this size are read whole and written by the pool; larger
/// ones are streamed by the reading thread through one buffer.
pub const POOL_MAX_FILE: u64 = 64 << 10;
/// Writes queued before the oldest one's outcome is due.
pub const WINDOW: usize = 1024;
/// Bytes queued before the oldest write's outcome is due.
pub const MAX_BYTES_IN_FLIGHT: u64 = 8 << 20;
/// Writes sent to a thread at once (one channel operation per batch). 64
/// rather than 16: a writer thread then creates files for longer between
/// wake-ups, 0.8-1.5 CPU-s less on a 300,000-file run in two A/B runs
/// (bench/SPEED-DESIGNS.md section 8); 256 measured the same as 64.
const BATCH: usize = 64;
/// Buffers kept for reuse per writer thread: the 32 of before batches grew
/// from 16 to 64, so the memory they hold does not grow with the batch.
const FREE_PER_THREAD: usize = 32;

/// What the caller needs to know about a write when its outcome comes back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteTag {
    /// The tar member the write comes from.
    pub member: String,
    pub kind: WriteKind,
}

/// What a queued write is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// The member's own data.
    Member,
    /// The caption file of a row (`data/<stem of image_name>.txt`).
    Caption,
    /// The caption file of an extracted image no row captions.
    UnlistedCaption,
}

/// The outcome of one queued write, handed out in queue order.
#[derive(Debug)]
pub struct Finished {
    pub rel: PathBuf,
    pub tag: WriteTag,
    /// Bytes the file was to hold.
    pub size: u64,
    /// CRC-32 of those bytes, when written.
    pub crc: Option<u32>,
    pub result: Result<(), PlaceError>,
}

struct Job {
    seq: u64,
    rel: PathBuf,
    data: Vec<u8>,
}

struct Outcome {
    seq: u64,
    rel: PathBuf,
    data: Vec<u8>,
    crc: Option<u32>,
    result: Result<(), PlaceError>,
}

enum Slot {
    /// Sent (or about to be sent) to thread `lane`.
    Pending {
        tag: WriteTag,
        size: u64,
        lane: usize,
    },
    Done(Finished),
}

/// One writer thread and the batch being filled for it.
struct Lane {
    tx: SyncSender<Vec<Job>>,
    batch: Vec<Job>,
}

/// Writes small files under `root`, inline or on a pool of threads.
pub struct WriteQueue {
    /// Where files are published.
    to: Target,
    /// Closed when the lease ends: queued writes are then dropped, not published.
    fence: Fence,
    lanes: Vec<Lane>,
    results: Option<Receiver<Vec<Outcome>>>,
    threads: Vec<JoinHandle<()>>,
    /// Writes not yet handed out, each with its path's hash; the front is
    /// `head_seq`.
    ring: VecDeque<(u64, Slot)>,
    head_seq: u64,
    /// Sum of `size` over `ring`.
    bytes: u64,
    /// Outcomes up to this sequence number are due now.
    due_until: Option<u64>,
    /// Path hash to the last queued write of that path still in `ring`.
    last_of_path: HashMap<u64, u64>,
    /// Buffers back from finished writes, for reuse.
    free: Vec<Vec<u8>>,
}

impl WriteQueue {
    /// A queue writing into `to` with `threads` writer threads; `0` writes
    /// each file on the spot. Files are published only while `fence` is open.
    pub(crate) fn new(to: Target, threads: usize, fence: Fence) -> std::io::Result<Self> {
        let mut q = WriteQueue {
            to,
            fence,
            lanes: Vec::new(),
            results: None,
            threads: Vec::new(),
            ring: VecDeque::new(),
            head_seq: 0,
            bytes: 0,
            due_until: None,
            last_of_path: HashMap::default(),
            free: Vec::new(),
        };
        if threads == 0 {
            return Ok(q);
        }
        // Capacities cover every write that can be in flight, so a send
        // never blocks while a writer waits to hand back its outcomes.
        let (out_tx, out_rx) = sync_channel::<Vec<Outcome>>(WINDOW + 8);
        for i in 0..threads {
            let (tx, rx) = sync_channel::<Vec<Job>>(WINDOW + 8);
            let out_tx = out_tx.clone();
            let to = q.to.clone();
            let fence = q.fence.clone();
            let handle = std::thread::Builder::new()
                .name(format!("shardprep-write-{i}"))
                .spawn(move || writer_loop(&to, &fence, rx, out_tx))?;
            q.threads.push(handle);
            q.lanes.push(Lane {
                tx,
                batch: Vec::with_capacity(BATCH),
            });
        }
        q.results = Some(out_rx);
        Ok(q)
    }

    /// A buffer to fill with the next file's bytes (reused when possible).
    pub fn buffer(&mut self) -> Vec<u8> {
        let mut b = self.free.pop().unwrap_or_default();
        b.clear();
        b
    }

    fn next_seq(&self) -> u64 {
        self.head_seq + self.ring.len() as u64
    }

    /// Queues writing `data` as the file `rel` (directories on the way must
    /// exist). Its outcome comes back from [`WriteQueue::pop_due`].
    pub fn push(&mut self, rel: PathBuf, data: Vec<u8>, tag: WriteTag) {
        let seq = self.next_seq();
        let size = data.len() as u64;
        let key = fnv1a64(rel.as_os_str().as_bytes());
        self.bytes += size;
        if self.lanes.is_empty() {
            let result = write_file(&self.to, &self.fence, &rel, &data);
            self.recycle(data);
            let done = Finished {
                rel,
                tag,
                size,
                crc: result.as_ref().ok().copied(),
                result: result.map(|_| ()),
            };
            self.ring.push_back((key, Slot::Done(done)));
            return;
        }
        let lane = (key % self.lanes.len() as u64) as usize;
        self.last_of_path.insert(key, seq);
        self.ring
            .push_back((key, Slot::Pending { tag, size, lane }));
        self.lanes[lane].batch.push(Job { seq, rel, data });
        if self.lanes[lane].batch.len() >= BATCH {
            self.send(lane);
        }
    }

    /// Adds an outcome settled without writing (e.g. refused before the
    /// write), so that it comes back in order with the others.
    pub fn push_finished(&mut self, done: Finished) {
        self.bytes += done.size;
        let key = fnv1a64(done.rel.as_os_str().as_bytes());
        self.ring.push_back((key, Slot::Done(done)));
    }

    /// Waits until every queued write of `rel` is on disk and makes those
    /// outcomes due; call before writing `rel` another way.
    pub fn wait_for_path(&mut self, rel: &Path) {
        let key = fnv1a64(rel.as_os_str().as_bytes());
        if let Some(&seq) = self.last_of_path.get(&key) {
            self.make_due(seq);
            self.wait_for(seq);
        }
    }

    /// Waits until every queued write is on disk and makes all outcomes due.
    pub fn wait_all(&mut self) {
        if self.ring.is_empty() {
            return;
        }
        self.make_due(self.next_seq() - 1);
        for lane in 0..self.lanes.len() {
            self.send(lane);
        }
        // Writes of different threads finish in any order: wait for each.
        for i in 0..self.ring.len() {
            self.wait_for(self.head_seq + i as u64);
        }
    }

    fn make_due(&mut self, seq: u64) {
        self.due_until = Some(self.due_until.map_or(seq, |d| d.max(seq)));
    }

    /// Whether anything is queued or not yet handed out.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// The oldest outcome, if it is due: the window is full, or a wait made
    /// it due. Blocks until that write is done.
    pub fn pop_due(&mut self) -> Option<Finished> {
        if self.ring.is_empty() {
            return None;
        }
        let due = self.ring.len() > WINDOW
            || self.bytes > MAX_BYTES_IN_FLIGHT
            || self.due_until.is_some_and(|d| d >= self.head_seq);
        if !due {
            return None;
        }
        self.wait_for(self.head_seq);
        let Some((key, Slot::Done(done))) = self.ring.pop_front() else {
            unreachable!("wait_for settles the head slot");
        };
        if self.last_of_path.get(&key) == Some(&self.head_seq) {
            self.last_of_path.remove(&key);
        }
        self.head_seq += 1;
        self.bytes -= done.size;
        Some(done)
    }

    /// Sends the batch being filled for `lane`, if any.
    fn send(&mut self, lane: usize) {
        let l = &mut self.lanes[lane];
        if l.batch.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut l.batch, Vec::with_capacity(BATCH));
        if let Err(failed) = l.tx.send(batch) {
            // The thread is gone (it panicked): settle its writes as errors.
            for job in failed.0 {
                self.settle(Outcome {
                    seq: job.seq,
                    crc: None,
                    result: Err(PlaceError::Io(
                        self.to.root.join(&job.rel),
                        std::io::Error::other("a writer thread stopped"),
                    )),
                    rel: job.rel,
                    data: job.data,
                });
            }
        }
    }

    /// Blocks until the write `seq` (still in `ring`) is done.
    fn wait_for(&mut self, seq: u64) {
        let Some(idx) = seq.checked_sub(self.head_seq).map(|i| i as usize) else {
            return;
        };
        loop {
            let lane = match self.ring.get(idx) {
                Some((_, Slot::Pending { lane, .. })) => *lane,
                _ => return,
            };
            if self.lanes[lane].batch.first().is_some_and(|j| j.seq <= seq) {
                self.send(lane);
                continue;
            }
            let got = self.results.as_ref().map(|rx| rx.recv());
            match got {
                Some(Ok(outcomes)) => {
                    for o in outcomes {
                        self.settle(o);
                    }
                }
                // No thread can answer any more: settle what is left as errors.
                _ => {
                    self.fail_pending();
                    return;
                }
            }
        }
    }

    fn fail_pending(&mut self) {
        for (_, slot) in self.ring.iter_mut() {
            if let Slot::Pending { tag, size, .. } = slot {
                *slot = Slot::Done(Finished {
                    rel: PathBuf::new(),
                    tag: tag.clone(),
                    size: *size,
                    crc: None,
                    result: Err(PlaceError::Io(
                        self.to.root.clone(),
                        std::io::Error::other("the writer threads stopped"),
                    )),
                });
            }
        }
    }

    fn settle(&mut self, o: Outcome) {
        let Some(idx) = o.seq.checked_sub(self.head_seq).map(|i| i as usize) else {
            return;
        };
        if let Some((_, slot)) = self.ring.get_mut(idx)
            && let Slot::Pending { tag, size, .. } = slot
        {
            *slot = Slot::Done(Finished {
                rel: o.rel,
                tag: tag.clone(),
                size: *size,
                crc: o.crc,
                result: o.result,
            });
        }
        self.recycle(o.data);
    }

    fn recycle(&mut self, data: Vec<u8>) {
        if self.free.len() < FREE_PER_THREAD * self.lanes.len().max(1) {
            self.free.push(data);
        }
    }
}

impl Drop for WriteQueue {
    fn drop(&mut self) {
        // Closing the channels ends the threads once their queued writes are done.
        self.lanes.clear();
        self.results = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn writer_loop(to: &Target, fence: &Fence, rx: Receiver<Vec<Job>>, out: SyncSender<Vec<Outcome>>) {
    while let Ok(batch) = rx.recv() {
        let done = batch
            .into_iter()
            .map(|job| {
                let result = write_file(to, fence, &job.rel, &job.data);
                Outcome {
                    crc: result.as_ref().ok().copied(),
                    result: result.map(|_| ()),
                    seq: job.seq,
                    rel: job.rel,
                    data: job.data,
                }
            })
            .collect();
        if out.send(done).is_err() {
            return;
        }
    }
}

/// Writes `data` as the file `rel` under the root (one write to a private
/// file, then published if the fence is still open); returns its CRC-32.
/// A closed fence drops the write without touching the disk.
fn write_file(to: &Target, fence: &Fence, rel: &Path, data: &[u8]) -> Result<u32, PlaceError> {
    if !fence.is_open() {
        return Err(PlaceError::fence_closed(&to.root, rel));
    }
    let mut staged = stage(to, rel, fence)?;
    staged
        .file
        .write_all(data)
        .map_err(|e| PlaceError::Io(to.root.join(rel), e))?;
    let crc = crc32fast::hash(data);
    staged.publish(fence)?;
    Ok(crc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::sync::Arc;

    fn queue(dir: &Path, threads: usize) -> WriteQueue {
        let to = Target {
            fd: Arc::new(File::open(dir).unwrap()),
            root: dir.to_path_buf(),
        };
        WriteQueue::new(to, threads, Fence::default()).unwrap()
    }

    fn tag(i: usize) -> WriteTag {
        WriteTag {
            member: format!("m{i}"),
            kind: WriteKind::Member,
        }
    }

    /// Queues `n` writes (with duplicates of a few paths) and returns the
    /// outcomes' members in the order handed out and the tree's contents.
    fn run(threads: usize, n: usize) -> (Vec<String>, Vec<(String, Vec<u8>)>) {
        let tmp = tempfile::tempdir().unwrap();
        let mut q = queue(tmp.path(), threads);
        let mut order = Vec::new();
        for i in 0..n {
            let mut b = q.buffer();
            b.extend_from_slice(format!("content {i}").as_bytes());
            // Every 7th write goes to one of three shared paths: the last write wins.
            let name = if i % 7 == 0 {
                format!("dup{}.txt", i % 3)
            } else {
                format!("{i:06}.txt")
            };
            q.push(PathBuf::from(name), b, tag(i));
            while let Some(d) = q.pop_due() {
                d.result.unwrap();
                order.push(d.tag.member);
            }
        }
        q.wait_all();
        while let Some(d) = q.pop_due() {
            d.result.unwrap();
            order.push(d.tag.member);
        }
        assert!(q.is_empty());
        let mut tree: Vec<(String, Vec<u8>)> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        tree.sort();
        (order, tree)
    }

    #[test]
    fn outcomes_come_back_in_queue_order_and_trees_match_inline() {
        let n = WINDOW * 3 + 17;
        let (order0, tree0) = run(0, n);
        let want: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
        assert_eq!(order0, want);
        for threads in [1, 3] {
            let (order, tree) = run(threads, n);
            assert_eq!(order, want, "{threads} threads");
            assert_eq!(tree, tree0, "{threads} threads");
        }
        // The last write to a shared path wins.
        let last_dup0 = (0..n).filter(|i| i % 7 == 0 && i % 3 == 0).max().unwrap();
        let dup0 = tree0.iter().find(|(n, _)| n == "dup0.txt").unwrap();
        assert_eq!(dup0.1, format!("content {last_dup0}").as_bytes());
    }

    #[test]
    fn nothing_is_due_before_the_window_fills_unless_waited_for() {
        let tmp = tempfile::tempdir().unwrap();
        let mut q = queue(tmp.path(), 2);
        for i in 0..10 {
            let b = q.buffer();
            q.push(PathBuf::from(format!("{i}")), b, tag(i));
        }
        assert!(q.pop_due().is_none());
        q.wait_for_path(Path::new("3"));
        // 0..=3 are due now, in order; 4.. are not.
        let got: Vec<String> = std::iter::from_fn(|| q.pop_due())
            .map(|d| d.tag.member)
            .collect();
        assert_eq!(got, ["m0", "m1", "m2", "m3"]);
        assert!(tmp.path().join("3").exists());
    }

    #[test]
    fn refusals_come_back_as_outcomes() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("taken")).unwrap();
        std::os::unix::fs::symlink("/nonexistent", tmp.path().join("link")).unwrap();
        for threads in [0, 2] {
            let mut q = queue(tmp.path(), threads);
            q.push(PathBuf::from("taken"), b"x".to_vec(), tag(0));
            q.push(PathBuf::from("link"), b"x".to_vec(), tag(1));
            q.wait_all();
            let a = q.pop_due().unwrap();
            assert!(matches!(a.result, Err(PlaceError::DirectoryInTheWay(_))));
            let b = q.pop_due().unwrap();
            assert!(matches!(b.result, Err(PlaceError::SymlinkInTheWay(_))));
            assert!(q.pop_due().is_none());
        }
    }
}

//! Writing files into `OUT/data/` safely: member names are checked before
//! use ([`names`]), directories are created without following symlinks, and
//! every file is published whole, only while the lease holds
//! ([`crate::publish`]), so nothing is ever written outside `data/`.
//!
//! Layout: [`DataDir`] (this file) owns `data/` for one pass: directories,
//! the files list, streamed and queued writes ([`crate::writers`]);
//! [`names`] checks member names; [`writeback`] is the background `syncfs`.

pub mod names;
pub mod writeback;

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use shardprep_core::durability;

use crate::fence::Fence;
use crate::publish::{Target, parent_dir, stage};
use crate::writers::{Finished, WriteQueue, WriteTag};
use writeback::{FlushEvery, Writeback};

pub use crate::publish::PlaceError;
pub use names::{UnsafeName, safe_relative_path};

/// Writes files under one `data/` directory.
pub struct DataDir {
    /// `data/`, opened once: files are created relative to it (`openat`),
    /// so the kernel does not walk the whole path for every member.
    target: Target,
    /// Small files queued to writer threads (or written on the spot).
    queue: WriteQueue,
    /// Files are published only while the attempt's lease holds.
    fence: Fence,
    /// Background writeback while the shard is written, if enabled.
    writeback: Option<(Writeback, FlushEvery)>,
    /// Directories below `root` already known to be real directories.
    known_dirs: HashSet<PathBuf>,
    buf: Vec<u8>,
    /// Every file created and its size (`durability::files_list_record`):
    /// lets a later run remove what an outdated version of the shard wrote,
    /// or find files a power loss took.
    log: Option<(io::BufWriter<File>, PathBuf)>,
}

/// Size of the copy buffer for member data.
const COPY_BUF: usize = 1 << 20;

impl DataDir {
    /// Writes under `root`, which must exist and is opened once here.
    pub fn new(root: PathBuf) -> io::Result<Self> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = rustix::fs::open(&root, flags, Mode::empty())?;
        let target = Target {
            fd: Arc::new(File::from(fd)),
            root,
        };
        let fence = Fence::default();
        Ok(DataDir {
            queue: WriteQueue::new(target.clone(), 0, fence.clone())?,
            fence,
            target,
            writeback: None,
            known_dirs: HashSet::new(),
            buf: vec![0u8; COPY_BUF],
            log: None,
        })
    }

    /// Publishes files only while `fence` is open (call before
    /// [`DataDir::with_writers`]): after the lease ends, nothing at a real
    /// path changes and queued writes are dropped.
    pub fn with_fence(mut self, fence: Fence) -> io::Result<Self> {
        self.fence = fence;
        self.with_writers(0)
    }

    /// Writes small files queued with [`DataDir::queue_bytes`] on `threads`
    /// threads (`0`: on the spot); see [`crate::writers`].
    pub fn with_writers(mut self, threads: usize) -> io::Result<Self> {
        self.queue = WriteQueue::new(self.target.clone(), threads, self.fence.clone())?;
        Ok(self)
    }

    /// Has `writeback` write back to disk in the background every `every`,
    /// while files are still being created, so that a later flush (or the
    /// kernel) has only the tail left. Nothing waits for it.
    pub fn with_background_flush(mut self, writeback: Writeback, every: FlushEvery) -> Self {
        self.writeback = Some((writeback, every));
        self
    }

    /// Flushes every dirty page of the filesystem holding `data/` (one
    /// `syncfs` per shard instead of one `fsync` per file). It reports a
    /// failed writeback of `data/` since it was opened, a background one too.
    pub fn sync(&mut self) -> io::Result<()> {
        self.queue.wait_all();
        durability::syncfs(&self.target.fd)
    }

    /// Counts a file (and its bytes) for the background writeback.
    fn note_written(&self, files: u64, bytes: u64) {
        if let Some((wb, every)) = &self.writeback {
            wb.note(&self.target.fd, files, bytes, *every);
        }
    }

    /// Records the relative path of every file written into `log_path`.
    pub fn with_log(mut self, log_path: &Path) -> io::Result<Self> {
        let f = File::create(log_path)?;
        let mut w = io::BufWriter::with_capacity(256 << 10, f);
        w.write_all(&durability::files_list_header())?;
        self.log = Some((w, log_path.to_path_buf()));
        Ok(self)
    }

    /// Flushes and syncs the log of written files (after logging the
    /// outcomes of queued writes not yet taken with [`DataDir::next_done`]).
    pub fn finish_log(&mut self) -> io::Result<()> {
        self.log_outstanding().map_err(|e| e.into_io().1)?;
        if let Some((w, _)) = self.log.as_mut() {
            w.flush()?;
            w.get_ref().sync_all()?;
        }
        Ok(())
    }

    /// The directory written into.
    pub fn root(&self) -> &Path {
        &self.target.root
    }

    /// Makes sure every directory of `rel` (a checked relative path) exists
    /// under the root as a real directory, not a symlink.
    pub fn ensure_dirs(&mut self, rel: &Path) -> Result<(), PlaceError> {
        let mut cur = PathBuf::new();
        for comp in rel.components() {
            cur.push(comp);
            if self.known_dirs.contains(&cur) {
                continue;
            }
            // A queued file may be about to take this name: settle first.
            self.queue.wait_all();
            let full = self.target.root.join(&cur);
            match std::fs::create_dir(&full) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let meta = std::fs::symlink_metadata(&full)
                        .map_err(|e| PlaceError::Io(full.clone(), e))?;
                    if !meta.is_dir() {
                        return Err(PlaceError::NotADirectory(full));
                    }
                }
                Err(e) if e.raw_os_error() == Some(Errno::NAMETOOLONG.raw_os_error()) => {
                    return Err(PlaceError::NameTooLong(full));
                }
                Err(e) => return Err(PlaceError::Io(full, e)),
            }
            self.known_dirs.insert(cur.clone());
        }
        Ok(())
    }

    /// Gets ready to write the file `rel` on this thread: its directories
    /// checked, queued writes of the same path landed first (the later one
    /// wins). The file is then started under a private name by
    /// [`stage`] and published by `Staged::publish`.
    fn prepare(&mut self, rel: &Path) -> Result<Target, PlaceError> {
        self.ensure_parent(rel)?;
        self.queue.wait_for_path(rel);
        self.note_written(1, 0);
        // A cheap handle (an `Arc`), so `self` stays free while the file is open.
        Ok(self.target.clone())
    }

    fn ensure_parent(&mut self, rel: &Path) -> Result<(), PlaceError> {
        match parent_dir(rel) {
            Some(parent) => self.ensure_dirs(parent),
            None => Ok(()),
        }
    }

    /// Queues writing `data` as the file `rel`; the outcome comes back, in
    /// queue order, from [`DataDir::next_done`] (a refusal too).
    pub fn queue_bytes(&mut self, rel: PathBuf, data: Vec<u8>, tag: WriteTag) {
        let size = data.len() as u64;
        if let Err(e) = self.ensure_parent(&rel) {
            self.queue.push_finished(Finished {
                rel,
                tag,
                size,
                crc: None,
                result: Err(e),
            });
            return;
        }
        self.note_written(1, size);
        self.queue.push(rel, data, tag);
    }

    /// An empty buffer for the next [`DataDir::queue_bytes`] (reused).
    pub fn buffer(&mut self) -> Vec<u8> {
        self.queue.buffer()
    }

    /// Makes every queued outcome due (see [`DataDir::next_done`]).
    pub fn wait_all(&mut self) {
        self.queue.wait_all();
    }

    /// Makes the outcomes of queued writes of `rel` due.
    pub fn wait_for_path(&mut self, rel: &Path) {
        self.queue.wait_for_path(rel);
    }

    /// The oldest queued write's outcome once it is due (the queue's window
    /// is full or a wait made it due), logged in the files list. `Err` only
    /// when the files list cannot be written.
    pub fn next_done(&mut self) -> Result<Option<Finished>, PlaceError> {
        let Some(done) = self.queue.pop_due() else {
            return Ok(None);
        };
        // A failed write published nothing: only written files are listed.
        if done.result.is_ok() {
            self.record(&done.rel, Some(done.size), done.crc)?;
        }
        Ok(Some(done))
    }

    /// Logs every queued write not yet handed out (their outcomes are dropped).
    fn log_outstanding(&mut self) -> Result<(), PlaceError> {
        self.queue.wait_all();
        while self.next_done()?.is_some() {}
        Ok(())
    }

    /// Adds a published file to the log with the size and CRC it was
    /// written with (`None`: unknown).
    fn record(
        &mut self,
        rel: &Path,
        size: Option<u64>,
        crc: Option<u32>,
    ) -> Result<(), PlaceError> {
        if let Some((w, path)) = self.log.as_mut() {
            let rel = rel.as_os_str().as_encoded_bytes();
            durability::write_files_list_record(w, rel, size, crc)
                .map_err(|e| PlaceError::Io(path.clone(), e))?;
        }
        Ok(())
    }

    /// Writes `data` as the file `rel`.
    pub fn write_bytes(&mut self, rel: &Path, data: &[u8]) -> Result<(), PlaceError> {
        let to = self.prepare(rel)?;
        let mut f = stage(&to, rel, &self.fence)?;
        f.file
            .write_all(data)
            .map_err(|e| PlaceError::Io(to.root.join(rel), e))?;
        f.publish(&self.fence)?;
        self.record(rel, Some(data.len() as u64), Some(crc32fast::hash(data)))
    }

    /// Writes the file `rel` through `write`, which may seek (a sparse
    /// member's holes); `write` returns the file's size. Published only when
    /// `write` succeeds (listed without a checksum: holes are not hashed).
    pub fn write_with<E>(
        &mut self,
        rel: &Path,
        write: impl FnOnce(&mut File) -> Result<u64, E>,
    ) -> Result<Result<u64, E>, PlaceError> {
        let to = self.prepare(rel)?;
        let mut f = stage(&to, rel, &self.fence)?;
        let result = write(&mut f.file);
        if let Ok(n) = &result {
            self.note_written(0, *n);
            f.publish(&self.fence)?;
            self.record(rel, Some(*n), None)?;
        }
        Ok(result)
    }

    /// Streams `size` bytes from `src` into the file `rel` with one buffer,
    /// checking `keep_going` and the fence between chunks. Returns the bytes
    /// copied, which are fewer than `size` only if `src` ended early (a
    /// truncated tar). The file appears only once complete.
    pub fn write_stream(
        &mut self,
        rel: &Path,
        src: &mut dyn Read,
        size: u64,
        keep_going: &dyn Fn() -> bool,
    ) -> Result<Result<u64, io::Error>, PlaceError> {
        let to = self.prepare(rel)?;
        let mut f = stage(&to, rel, &self.fence)?;
        let mut buf = std::mem::take(&mut self.buf);
        let mut crc = crc32fast::Hasher::new();
        let result = self.copy(&mut f.file, src, size, keep_going, &mut buf, &mut crc);
        self.buf = buf;
        if let Ok(Ok(n)) = &result {
            f.publish(&self.fence)?;
            self.record(rel, Some(*n), Some(crc.finalize()))?;
        }
        result.map_err(|e| PlaceError::Io(to.root.join(rel), e))
    }

    fn copy(
        &mut self,
        f: &mut File,
        src: &mut dyn Read,
        size: u64,
        keep_going: &dyn Fn() -> bool,
        buf: &mut [u8],
        crc: &mut crc32fast::Hasher,
    ) -> Result<Result<u64, io::Error>, io::Error> {
        let mut copied = 0u64;
        loop {
            if copied >= size {
                return Ok(Ok(copied));
            }
            if !keep_going() || !self.fence.is_open() {
                return Ok(Err(io::Error::new(io::ErrorKind::Interrupted, "cancelled")));
            }
            let want = buf.len().min((size - copied) as usize);
            let n = match src.read(&mut buf[..want]) {
                Ok(0) => return Ok(Ok(copied)),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Ok(Err(e)),
            };
            f.write_all(&buf[..n])?;
            crc.update(&buf[..n]);
            copied += n as u64;
            self.note_written(0, n as u64);
        }
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        // A shard that stops early still lists every file it created.
        let _ = self.log_outstanding();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_read_as_sentences_naming_the_path() {
        let e = PlaceError::NotADirectory(PathBuf::from("/o/data/link"));
        assert_eq!(
            e.to_string(),
            "/o/data/link: not a directory (a symlink or a file stands where a directory must be)"
        );
        assert_eq!(e.reason().as_str(), "path_through_non_directory");
        let io = PlaceError::Io(PathBuf::from("/o/data/x"), io::Error::other("disk full"));
        assert_eq!(io.to_string(), "cannot write /o/data/x: disk full");
        assert!(std::error::Error::source(&io).is_some());
        let (p, e) = PlaceError::NameTooLong(PathBuf::from("/o/n")).into_io();
        assert_eq!(p, PathBuf::from("/o/n"));
        assert!(e.to_string().contains("longer than the filesystem allows"));
    }

    #[test]
    fn too_long_names_are_refused_not_disk_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let mut d = DataDir::new(tmp.path().to_path_buf()).unwrap();
        let long = "x".repeat(300);
        assert!(matches!(
            d.write_bytes(Path::new(&long), b"no"),
            Err(PlaceError::NameTooLong(_))
        ));
        assert!(matches!(
            d.write_bytes(&Path::new(&long).join("f"), b"no"),
            Err(PlaceError::NameTooLong(_))
        ));
        d.write_bytes(Path::new("ok"), b"yes").unwrap();
    }

    #[test]
    fn never_follows_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, data.join("link")).unwrap();
        std::os::unix::fs::symlink(outside.join("f"), data.join("leaf")).unwrap();
        let mut d = DataDir::new(data.clone()).unwrap();
        assert!(matches!(
            d.write_bytes(Path::new("link/x"), b"no"),
            Err(PlaceError::NotADirectory(_))
        ));
        assert!(matches!(
            d.write_bytes(Path::new("leaf"), b"no"),
            Err(PlaceError::SymlinkInTheWay(_))
        ));
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        d.write_bytes(Path::new("sub/ok"), b"yes").unwrap();
        assert_eq!(std::fs::read(data.join("sub/ok")).unwrap(), b"yes");
    }

    #[test]
    fn background_flush_runs_alongside_and_sync_still_flushes() {
        let tmp = tempfile::tempdir().unwrap();
        let wb = Writeback::default();
        let every = FlushEvery {
            files: 16,
            bytes: 1 << 30,
        };
        let mut d = DataDir::new(tmp.path().to_path_buf())
            .unwrap()
            .with_writers(1)
            .unwrap()
            .with_background_flush(wb.clone(), every);
        // Enough files to kick the flush more than once.
        let n = 16 * 3 + 7;
        for i in 0..n {
            d.write_bytes(Path::new(&format!("{i:05}.txt")), format!("{i}").as_bytes())
                .unwrap();
        }
        d.sync().unwrap();
        let waited = std::time::Instant::now();
        while wb.flushes() == 0 && waited.elapsed().as_secs() < 30 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(wb.flushes() >= 1, "the background flush ran");
        // Writing on after a sync still works.
        d.write_bytes(Path::new("late.txt"), b"late").unwrap();
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), n + 1);
        assert_eq!(std::fs::read(tmp.path().join("00042.txt")).unwrap(), b"42");
    }
}

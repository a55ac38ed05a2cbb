//! Writing files into `OUT/data/` safely: member names are checked before
//! use, directories are created without following symlinks, and files are
//! opened with `O_NOFOLLOW`, so nothing is ever written outside `data/`.

use std::collections::HashSet;
use std::ffi::{CString, OsStr};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use shardprep_core::durability;

use crate::writers::{Finished, WriteQueue, WriteTag};

/// Why a member name cannot be used as a path under `data/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsafeName {
    Empty,
    Absolute,
    ParentDir,
    NulByte,
}

impl UnsafeName {
    /// Stable report key.
    pub fn reason(self) -> &'static str {
        match self {
            UnsafeName::Empty => "empty_name",
            UnsafeName::Absolute => "absolute_path",
            UnsafeName::ParentDir => "parent_dir_path",
            UnsafeName::NulByte => "nul_in_name",
        }
    }
}

/// The relative path a member name stands for, or why it is refused.
/// `./` segments and repeated slashes are dropped, as `tar xf` does;
/// absolute names and any `..` segment are refused (GNU tar strips or
/// refuses them too).
pub fn safe_relative_path(name: &[u8]) -> Result<PathBuf, UnsafeName> {
    if name.contains(&0) {
        return Err(UnsafeName::NulByte);
    }
    if name.first() == Some(&b'/') {
        return Err(UnsafeName::Absolute);
    }
    let mut out = PathBuf::new();
    for comp in Path::new(OsStr::from_bytes(name)).components() {
        match comp {
            Component::Normal(c) => out.push(c),
            Component::CurDir => {}
            Component::ParentDir => return Err(UnsafeName::ParentDir),
            Component::RootDir | Component::Prefix(_) => return Err(UnsafeName::Absolute),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(UnsafeName::Empty);
    }
    Ok(out)
}

/// Why a file could not be placed, when the cause is the tree (not the disk).
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    /// A symlink or non-directory stands where a directory must be.
    #[error("{}: not a directory (a symlink or a file stands where a directory must be)", .0.display())]
    NotADirectory(PathBuf),
    /// A symlink stands at the file's own path (never followed).
    #[error("{}: a symlink stands at the file's path (never followed)", .0.display())]
    SymlinkInTheWay(PathBuf),
    /// A directory stands at the file's path.
    #[error("{}: a directory stands at the file's path", .0.display())]
    DirectoryInTheWay(PathBuf),
    /// A name component (or the whole path) is longer than the filesystem
    /// allows: a property of the member, not of the disk.
    #[error("{}: the name is longer than the filesystem allows", .0.display())]
    NameTooLong(PathBuf),
    /// The disk or the permissions failed: the shard cannot go on.
    #[error("cannot write {}: {}", .0.display(), .1)]
    Io(PathBuf, #[source] io::Error),
}

impl PlaceError {
    /// The path and the I/O error, for callers that only report I/O (a
    /// refusal becomes an error that describes it).
    pub fn into_io(self) -> (PathBuf, io::Error) {
        let what = self.to_string();
        match self {
            PlaceError::Io(p, e) => (p, e),
            PlaceError::NotADirectory(p)
            | PlaceError::SymlinkInTheWay(p)
            | PlaceError::DirectoryInTheWay(p)
            | PlaceError::NameTooLong(p) => (p, io::Error::other(what)),
        }
    }

    /// Stable report key of the refusal.
    pub fn reason(&self) -> &'static str {
        match self {
            PlaceError::NotADirectory(_) => "path_through_non_directory",
            PlaceError::SymlinkInTheWay(_) => "symlink_in_the_way",
            PlaceError::DirectoryInTheWay(_) => "directory_in_the_way",
            PlaceError::NameTooLong(_) => "name_too_long",
            PlaceError::Io(..) => "io_error",
        }
    }

    /// The path that could not be written.
    pub fn path(&self) -> &Path {
        match self {
            PlaceError::NotADirectory(p)
            | PlaceError::SymlinkInTheWay(p)
            | PlaceError::DirectoryInTheWay(p)
            | PlaceError::NameTooLong(p)
            | PlaceError::Io(p, _) => p,
        }
    }
}

/// Writes files under one `data/` directory.
pub struct DataDir {
    root: PathBuf,
    /// `root`, opened once: files are created relative to it (`openat`),
    /// so the kernel does not walk the whole path for every member.
    root_fd: Arc<File>,
    /// Small files queued to writer threads (or written on the spot).
    queue: WriteQueue,
    /// Background writeback while the shard is written, if enabled.
    flusher: Option<Flusher>,
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
        let root_fd = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(&root)?;
        let root_fd = Arc::new(root_fd);
        Ok(DataDir {
            queue: WriteQueue::new(Arc::clone(&root_fd), root.clone(), 0)?,
            root,
            root_fd,
            flusher: None,
            known_dirs: HashSet::new(),
            buf: vec![0u8; COPY_BUF],
            log: None,
        })
    }

    /// Writes small files queued with [`DataDir::queue_bytes`] on `threads`
    /// threads (`0`: on the spot); see [`crate::writers`].
    pub fn with_writers(mut self, threads: usize) -> io::Result<Self> {
        self.queue = WriteQueue::new(Arc::clone(&self.root_fd), self.root.clone(), threads)?;
        Ok(self)
    }

    /// Starts writing back to disk in the background while files are still
    /// being created, so that [`DataDir::sync`] at the end of the shard has
    /// only the tail left to flush (instead of the whole shard at once).
    pub fn with_background_flush(mut self) -> io::Result<Self> {
        self.flusher = Some(Flusher::start(self.root_fd.as_ref().try_clone()?)?);
        Ok(self)
    }

    /// Flushes every dirty page of the filesystem holding `data/` (one
    /// `syncfs` per shard instead of one `fsync` per file), after stopping
    /// the background flush. The first error of either is returned.
    pub fn sync(&mut self) -> io::Result<()> {
        self.queue.wait_all();
        let background = self.stop_background_flush();
        durability::syncfs(&self.root_fd)?;
        background
    }

    /// Stops the background flush (waiting for a flush in progress) and
    /// returns the first error it met.
    pub fn stop_background_flush(&mut self) -> io::Result<()> {
        match self.flusher.take() {
            Some(f) => f.stop(),
            None => Ok(()),
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
        &self.root
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
            let full = self.root.join(&cur);
            match std::fs::create_dir(&full) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let meta = std::fs::symlink_metadata(&full)
                        .map_err(|e| PlaceError::Io(full.clone(), e))?;
                    if !meta.is_dir() {
                        return Err(PlaceError::NotADirectory(full));
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ENAMETOOLONG) => {
                    return Err(PlaceError::NameTooLong(full));
                }
                Err(e) => return Err(PlaceError::Io(full, e)),
            }
            self.known_dirs.insert(cur.clone());
        }
        Ok(())
    }

    /// Creates (or truncates) the file `rel`, never following a symlink at
    /// its own path; directories on the way were checked by `ensure_dirs`.
    fn open(&mut self, rel: &Path) -> Result<File, PlaceError> {
        self.ensure_parent(rel)?;
        // A queued write of the same path must land first (the later one wins).
        self.queue.wait_for_path(rel);
        let file = create_at(&self.root_fd, &self.root, rel)?;
        if let Some(f) = self.flusher.as_mut() {
            f.note_file();
        }
        Ok(file)
    }

    fn ensure_parent(&mut self, rel: &Path) -> Result<(), PlaceError> {
        match rel.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => self.ensure_dirs(parent),
            _ => Ok(()),
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
                result: Err(e),
            });
            return;
        }
        if let Some(f) = self.flusher.as_mut() {
            f.note_file();
            f.note_bytes(size);
        }
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
        match &done.result {
            Ok(()) => self.record(&done.rel, Some(done.size))?,
            // Created, then the write failed.
            Err(PlaceError::Io(..)) if !done.rel.as_os_str().is_empty() => {
                self.record(&done.rel, None)?
            }
            Err(_) => {}
        }
        Ok(Some(done))
    }

    /// Logs every queued write not yet handed out (their outcomes are dropped).
    fn log_outstanding(&mut self) -> Result<(), PlaceError> {
        self.queue.wait_all();
        while self.next_done()?.is_some() {}
        Ok(())
    }

    /// Adds a created file to the log with the size it was written with
    /// (`None` when the write failed part-way).
    fn record(&mut self, rel: &Path, size: Option<u64>) -> Result<(), PlaceError> {
        if let Some((w, path)) = self.log.as_mut() {
            let rec = durability::files_list_record(rel.as_os_str().as_encoded_bytes(), size);
            w.write_all(&rec)
                .map_err(|e| PlaceError::Io(path.clone(), e))?;
        }
        Ok(())
    }

    /// Writes `data` as the file `rel`.
    pub fn write_bytes(&mut self, rel: &Path, data: &[u8]) -> Result<(), PlaceError> {
        let mut f = self.open(rel)?;
        let written = f.write_all(data);
        self.record(rel, written.is_ok().then_some(data.len() as u64))?;
        written.map_err(|e| PlaceError::Io(self.root.join(rel), e))
    }

    /// Writes the file `rel` through `write`, which may seek (a sparse
    /// member's holes); `write` returns the file's size.
    pub fn write_with<E>(
        &mut self,
        rel: &Path,
        write: impl FnOnce(&mut File) -> Result<u64, E>,
    ) -> Result<Result<u64, E>, PlaceError> {
        let mut f = self.open(rel)?;
        let result = write(&mut f);
        let size = result.as_ref().ok().copied();
        if let (Some(fl), Some(n)) = (self.flusher.as_mut(), size) {
            fl.note_bytes(n);
        }
        self.record(rel, size)?;
        Ok(result)
    }

    /// Streams `size` bytes from `src` into the file `rel` with one buffer,
    /// checking `keep_going` between chunks. Returns the bytes copied, which
    /// are fewer than `size` only if `src` ended early (a truncated tar).
    pub fn write_stream(
        &mut self,
        rel: &Path,
        src: &mut dyn Read,
        size: u64,
        keep_going: &dyn Fn() -> bool,
    ) -> Result<Result<u64, io::Error>, PlaceError> {
        let mut f = self.open(rel)?;
        let mut copied = 0u64;
        let mut buf = std::mem::take(&mut self.buf);
        let result = loop {
            if copied >= size {
                break Ok(Ok(copied));
            }
            if !keep_going() {
                break Ok(Err(io::Error::new(io::ErrorKind::Interrupted, "cancelled")));
            }
            let want = buf.len().min((size - copied) as usize);
            let n = match src.read(&mut buf[..want]) {
                Ok(0) => break Ok(Ok(copied)),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Ok(Err(e)),
            };
            if let Err(e) = f.write_all(&buf[..n]) {
                break Err(PlaceError::Io(self.root.join(rel), e));
            }
            copied += n as u64;
            if let Some(fl) = self.flusher.as_mut() {
                fl.note_bytes(n as u64);
            }
        };
        self.buf = buf;
        let size = match &result {
            Ok(Ok(n)) => Some(*n),
            _ => None,
        };
        self.record(rel, size)?;
        result
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        // A shard that stops early still lists every file it created.
        let _ = self.log_outstanding();
    }
}

/// Creates (or truncates) the file `rel` under `root` (open as `root_fd`),
/// never following a symlink at its own path; directories on the way must
/// have been checked by [`DataDir::ensure_dirs`].
pub(crate) fn create_at(root_fd: &File, root: &Path, rel: &Path) -> Result<File, PlaceError> {
    let c_rel = CString::new(rel.as_os_str().as_bytes()).map_err(|e| {
        PlaceError::Io(
            root.join(rel),
            io::Error::new(io::ErrorKind::InvalidInput, e),
        )
    })?;
    // SAFETY: `root_fd` is an open descriptor and `c_rel` is a NUL-terminated
    // string; both outlive the call.
    let fd = unsafe {
        libc::openat(
            root_fd.as_raw_fd(),
            c_rel.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o644 as libc::c_uint,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        let full = root.join(rel);
        return Err(match e.raw_os_error() {
            Some(libc::ELOOP) => PlaceError::SymlinkInTheWay(full),
            Some(libc::EISDIR) => PlaceError::DirectoryInTheWay(full),
            Some(libc::ENOTDIR) => PlaceError::NotADirectory(full),
            Some(libc::ENAMETOOLONG) => PlaceError::NameTooLong(full),
            _ => PlaceError::Io(full, e),
        });
    }
    // SAFETY: `fd` was just returned by `openat` and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Files and bytes written between two background flushes.
const FLUSH_EVERY_FILES: u32 = 4096;
const FLUSH_EVERY_BYTES: u64 = 64 << 20;

/// A thread that runs `syncfs` whenever enough has been written since the
/// last one, so the disk writes back while the shard is still being
/// extracted (the kernel would otherwise wait up to 30 s, and the final
/// sync would pay for the whole shard on the critical path).
struct Flusher {
    kick: mpsc::SyncSender<()>,
    thread: JoinHandle<io::Result<()>>,
    files: u32,
    bytes: u64,
}

impl Flusher {
    fn start(fd: File) -> io::Result<Self> {
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

    fn note_file(&mut self) {
        self.files += 1;
        if self.files >= FLUSH_EVERY_FILES {
            self.kick();
        }
    }

    fn note_bytes(&mut self, n: u64) {
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
    fn stop(self) -> io::Result<()> {
        let Flusher { kick, thread, .. } = self;
        drop(kick);
        thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the background flush thread panicked")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert_eq!(
            safe_relative_path(b"a.png").unwrap(),
            PathBuf::from("a.png")
        );
        assert_eq!(
            safe_relative_path(b"./d//a.png").unwrap(),
            PathBuf::from("d/a.png")
        );
        assert_eq!(safe_relative_path(b"../x"), Err(UnsafeName::ParentDir));
        assert_eq!(safe_relative_path(b"a/../../x"), Err(UnsafeName::ParentDir));
        assert_eq!(safe_relative_path(b"/etc/x"), Err(UnsafeName::Absolute));
        assert_eq!(safe_relative_path(b"./"), Err(UnsafeName::Empty));
        assert_eq!(safe_relative_path(b""), Err(UnsafeName::Empty));
        assert!(safe_relative_path(b"caf\xe9.png").is_ok());
    }

    #[test]
    fn refusals_read_as_sentences_naming_the_path() {
        let e = PlaceError::NotADirectory(PathBuf::from("/o/data/link"));
        assert_eq!(
            e.to_string(),
            "/o/data/link: not a directory (a symlink or a file stands where a directory must be)"
        );
        assert_eq!(e.reason(), "path_through_non_directory");
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
    fn background_flush_runs_alongside_and_stops_cleanly() {
        let tmp = tempfile::tempdir().unwrap();
        let mut d = DataDir::new(tmp.path().to_path_buf())
            .unwrap()
            .with_background_flush()
            .unwrap();
        // Enough files to kick the flusher more than once.
        let n = FLUSH_EVERY_FILES as usize * 2 + 7;
        for i in 0..n {
            d.write_bytes(Path::new(&format!("{i:05}.txt")), format!("{i}").as_bytes())
                .unwrap();
        }
        d.sync().unwrap();
        assert!(d.flusher.is_none(), "sync stops the flusher");
        // Writing on after the flusher stopped still works.
        d.write_bytes(Path::new("late.txt"), b"late").unwrap();
        d.stop_background_flush().unwrap();
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), n + 1);
        assert_eq!(std::fs::read(tmp.path().join("00042.txt")).unwrap(), b"42");
    }
}

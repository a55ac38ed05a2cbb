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
use shardprep_core::issue::IssueKind;

use crate::fence::Fence;
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
    pub fn reason(self) -> IssueKind {
        match self {
            UnsafeName::Empty => IssueKind::EmptyName,
            UnsafeName::Absolute => IssueKind::AbsolutePath,
            UnsafeName::ParentDir => IssueKind::ParentDirPath,
            UnsafeName::NulByte => IssueKind::NulInName,
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
    pub fn reason(&self) -> IssueKind {
        match self {
            PlaceError::NotADirectory(_) => IssueKind::PathThroughNonDirectory,
            PlaceError::SymlinkInTheWay(_) => IssueKind::SymlinkInTheWay,
            PlaceError::DirectoryInTheWay(_) => IssueKind::DirectoryInTheWay,
            PlaceError::NameTooLong(_) => IssueKind::NameTooLong,
            PlaceError::Io(..) => IssueKind::IoError,
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
    /// Files are published only while the attempt's lease holds.
    fence: Fence,
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
        let fence = Fence::default();
        Ok(DataDir {
            queue: WriteQueue::new(Arc::clone(&root_fd), root.clone(), 0, fence.clone())?,
            fence,
            root,
            root_fd,
            flusher: None,
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
        self.queue = WriteQueue::new(
            Arc::clone(&self.root_fd),
            self.root.clone(),
            threads,
            self.fence.clone(),
        )?;
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

    /// Starts the file `rel` under a private name (published by
    /// [`Staged::publish`], never through a symlink at its own path);
    /// directories on the way were checked by `ensure_dirs`.
    fn open(&mut self, rel: &Path) -> Result<Staged, PlaceError> {
        self.ensure_parent(rel)?;
        // A queued write of the same path must land first (the later one wins).
        self.queue.wait_for_path(rel);
        let file = stage_at(&self.root_fd, &self.root, rel, &self.fence)?;
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
                crc: None,
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
            let rec = durability::files_list_record(rel.as_os_str().as_encoded_bytes(), size, crc);
            w.write_all(&rec)
                .map_err(|e| PlaceError::Io(path.clone(), e))?;
        }
        Ok(())
    }

    /// Writes `data` as the file `rel`.
    pub fn write_bytes(&mut self, rel: &Path, data: &[u8]) -> Result<(), PlaceError> {
        let mut f = self.open(rel)?;
        f.file
            .write_all(data)
            .map_err(|e| PlaceError::Io(self.root.join(rel), e))?;
        f.publish(&self.root)?;
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
        let mut f = self.open(rel)?;
        let result = write(&mut f.file);
        if let Ok(n) = &result {
            if let Some(fl) = self.flusher.as_mut() {
                fl.note_bytes(*n);
            }
            f.publish(&self.root)?;
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
        let mut f = self.open(rel)?;
        let mut buf = std::mem::take(&mut self.buf);
        let mut crc = crc32fast::Hasher::new();
        let result = self.copy(&mut f.file, src, size, keep_going, &mut buf, &mut crc);
        self.buf = buf;
        if let Ok(Ok(n)) = &result {
            f.publish(&self.root)?;
            self.record(rel, Some(*n), Some(crc.finalize()))?;
        }
        result.map_err(|e| PlaceError::Io(self.root.join(rel), e))
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
            if let Some(fl) = self.flusher.as_mut() {
                fl.note_bytes(n as u64);
            }
        }
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        // A shard that stops early still lists every file it created.
        let _ = self.log_outstanding();
    }
}

fn c_path(root: &Path, rel: &Path) -> Result<CString, PlaceError> {
    CString::new(rel.as_os_str().as_bytes()).map_err(|e| {
        PlaceError::Io(
            root.join(rel),
            io::Error::new(io::ErrorKind::InvalidInput, e),
        )
    })
}

/// The refusal an `errno` from creating or placing `rel` stands for.
fn place_error(root: &Path, rel: &Path, e: io::Error) -> PlaceError {
    let full = root.join(rel);
    match e.raw_os_error() {
        Some(libc::ELOOP) => PlaceError::SymlinkInTheWay(full),
        Some(libc::EISDIR) => PlaceError::DirectoryInTheWay(full),
        Some(libc::ENOTDIR) => PlaceError::NotADirectory(full),
        Some(libc::ENAMETOOLONG) => PlaceError::NameTooLong(full),
        _ => PlaceError::Io(full, e),
    }
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A file being written under a private name; it appears at its real path
/// only through [`Staged::publish`], complete, and only while the fence is
/// open. Dropped unpublished, it leaves nothing behind.
pub(crate) struct Staged {
    pub(crate) file: File,
    rel: PathBuf,
    /// The private name under the root when the file has one (no
    /// `O_TMPFILE` on this filesystem); `None`: an unnamed `O_TMPFILE`.
    named: Option<CString>,
    root_fd: Arc<File>,
    fence: Fence,
}

/// `dir/.<name>.sp<tag>`: the attempt's private name for `rel`.
fn private_name(rel: &Path, tag: u64) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(rel.file_name().unwrap_or_default());
    name.push(format!(".sp{tag:016x}"));
    rel.with_file_name(name)
}

/// Starts writing the file `rel` under `root` (open as `root_fd`) under a
/// private name; directories on the way must have been checked by
/// [`DataDir::ensure_dirs`].
pub(crate) fn stage_at(
    root_fd: &Arc<File>,
    root: &Path,
    rel: &Path,
    fence: &Fence,
) -> Result<Staged, PlaceError> {
    let parent = match rel.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let c_parent = c_path(root, parent)?;
    // SAFETY: `root_fd` is open and `c_parent` NUL-terminated, both outlive the call.
    let fd = unsafe {
        libc::openat(
            root_fd.as_raw_fd(),
            c_parent.as_ptr(),
            libc::O_TMPFILE | libc::O_WRONLY | libc::O_CLOEXEC,
            0o644 as libc::c_uint,
        )
    };
    let (fd, named) = if fd >= 0 {
        (fd, None)
    } else {
        let e = io::Error::last_os_error();
        if !matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR)) {
            return Err(place_error(root, parent, e));
        }
        // No O_TMPFILE here: a named private file instead.
        let tmp = c_path(root, &private_name(rel, fence.tag()))?;
        // SAFETY: as above.
        let fd = unsafe {
            libc::openat(
                root_fd.as_raw_fd(),
                tmp.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o644 as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(place_error(root, rel, io::Error::last_os_error()));
        }
        (fd, Some(tmp))
    };
    Ok(Staged {
        // SAFETY: `fd` was just returned by `openat` and is owned by nobody else.
        file: unsafe { File::from_raw_fd(fd) },
        rel: rel.to_path_buf(),
        named,
        root_fd: Arc::clone(root_fd),
        fence: fence.clone(),
    })
}

impl Staged {
    /// Puts the complete file at its path, replacing a regular file there
    /// atomically (never a symlink or a directory), if the fence is open.
    pub(crate) fn publish(mut self, root: &Path) -> Result<(), PlaceError> {
        if !self.fence.is_open() {
            return Err(PlaceError::Io(
                root.join(&self.rel),
                io::Error::new(
                    io::ErrorKind::Interrupted,
                    "the lease ended: the file is not published",
                ),
            ));
        }
        let dir = self.root_fd.as_raw_fd();
        let c_rel = c_path(root, &self.rel)?;
        if self.named.is_none() {
            let proc = CString::new(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
                .map_err(|e| PlaceError::Io(root.join(&self.rel), io::Error::other(e)))?;
            // SAFETY: both paths are NUL-terminated and outlive the call.
            let rc = unsafe {
                libc::linkat(
                    libc::AT_FDCWD,
                    proc.as_ptr(),
                    dir,
                    c_rel.as_ptr(),
                    libc::AT_SYMLINK_FOLLOW,
                )
            };
            match cvt(rc) {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(place_error(root, &self.rel, e)),
            }
            self.check_replaceable(root, &c_rel)?;
            self.name_privately(root, &proc)?;
        } else {
            self.check_replaceable(root, &c_rel)?;
        }
        let Some(tmp) = self.named.take() else {
            unreachable!("named above");
        };
        // SAFETY: both paths are NUL-terminated and outlive the call.
        let rc = unsafe { libc::renameat(dir, tmp.as_ptr(), dir, c_rel.as_ptr()) };
        cvt(rc).map(|_| ()).map_err(|e| {
            // SAFETY: as above.
            unsafe { libc::unlinkat(dir, tmp.as_ptr(), 0) };
            place_error(root, &self.rel, e)
        })
    }

    /// Refuses to replace a symlink or a directory standing at the path.
    fn check_replaceable(&self, root: &Path, c_rel: &CString) -> Result<(), PlaceError> {
        // SAFETY: `st` is written by the call; the path outlives it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::fstatat(
                self.root_fd.as_raw_fd(),
                c_rel.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        let full = root.join(&self.rel);
        match cvt(rc) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(place_error(root, &self.rel, e)),
            Ok(_) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => {
                Err(PlaceError::SymlinkInTheWay(full))
            }
            Ok(_) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                Err(PlaceError::DirectoryInTheWay(full))
            }
            Ok(_) => Ok(()),
        }
    }

    /// Gives the unnamed file its private name (to rename it over the path).
    fn name_privately(&mut self, root: &Path, proc: &CString) -> Result<(), PlaceError> {
        let tmp = c_path(root, &private_name(&self.rel, self.fence.tag()))?;
        let dir = self.root_fd.as_raw_fd();
        for _ in 0..2 {
            // SAFETY: both paths are NUL-terminated and outlive the call.
            let rc = unsafe {
                libc::linkat(
                    libc::AT_FDCWD,
                    proc.as_ptr(),
                    dir,
                    tmp.as_ptr(),
                    libc::AT_SYMLINK_FOLLOW,
                )
            };
            match cvt(rc) {
                Ok(_) => {
                    self.named = Some(tmp);
                    return Ok(());
                }
                // Left by an earlier try of this same attempt: it is ours.
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    // SAFETY: as above.
                    unsafe { libc::unlinkat(dir, tmp.as_ptr(), 0) };
                }
                Err(e) => return Err(place_error(root, &self.rel, e)),
            }
        }
        Err(PlaceError::Io(
            root.join(&self.rel),
            io::Error::other("the private name stays taken"),
        ))
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(tmp) = self.named.take() {
            // SAFETY: the path is NUL-terminated and outlives the call.
            unsafe { libc::unlinkat(self.root_fd.as_raw_fd(), tmp.as_ptr(), 0) };
        }
    }
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

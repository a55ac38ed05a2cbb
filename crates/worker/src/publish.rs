//! Publishing one file into `data/`: it is written under a private name (an
//! unnamed `O_TMPFILE`, or `.<name>.sp<tag>` where the filesystem has none)
//! and appears at its path only complete, by `linkat` (nothing there yet) or
//! `rename` over a regular file (never over a symlink or a directory), and
//! only while the attempt's [`Fence`] is open.
//!
//! The system calls go through `rustix` (no `unsafe` here). The unnamed file
//! is linked by its descriptor (`AT_EMPTY_PATH`); where the kernel refuses
//! that to a process without `CAP_DAC_READ_SEARCH`, through
//! `/proc/self/fd/N` (one more path walk per file), decided once per process.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use shardprep_core::issue::IssueKind;

use crate::fence::Fence;

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

    /// The refusal an `errno` from creating or placing `rel` stands for.
    pub(crate) fn from_errno(root: &Path, rel: &Path, e: Errno) -> PlaceError {
        let full = root.join(rel);
        match e {
            Errno::LOOP => PlaceError::SymlinkInTheWay(full),
            Errno::ISDIR => PlaceError::DirectoryInTheWay(full),
            Errno::NOTDIR => PlaceError::NotADirectory(full),
            Errno::NAMETOOLONG => PlaceError::NameTooLong(full),
            e => PlaceError::Io(full, e.into()),
        }
    }

    /// The error of a publish refused because the lease ended.
    pub(crate) fn fence_closed(root: &Path, rel: &Path) -> PlaceError {
        PlaceError::Io(
            root.join(rel),
            io::Error::new(
                io::ErrorKind::Interrupted,
                "the lease ended: the file is not published",
            ),
        )
    }
}

/// How this process links an unnamed file to a name (decided at first use).
static LINK_BY: AtomicU8 = AtomicU8::new(LINK_UNKNOWN);
const LINK_UNKNOWN: u8 = 0;
const LINK_EMPTY_PATH: u8 = 1;
const LINK_PROC: u8 = 2;

/// The directory files are published into: `root`, opened once.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) fd: Arc<File>,
    pub(crate) root: PathBuf,
}

/// A file being written under a private name; it appears at its real path
/// only through [`Staged::publish`], complete, and only while the fence is
/// open. Dropped unpublished, it leaves nothing behind.
pub(crate) struct Staged<'a> {
    pub(crate) file: File,
    rel: PathBuf,
    /// The private name under the root when the file has one (no
    /// `O_TMPFILE` on this filesystem); `None`: an unnamed `O_TMPFILE`.
    named: Option<PathBuf>,
    to: &'a Target,
}

/// `dir/.<name>.sp<tag>`: the attempt's private name for `rel`.
fn private_name(rel: &Path, tag: u64) -> PathBuf {
    let mut name = OsString::from(".");
    name.push(rel.file_name().unwrap_or_default());
    name.push(format!(".sp{tag:016x}"));
    rel.with_file_name(name)
}

/// The directories of the relative path `rel`, `None` for a plain name
/// (no `/`, the common case: found without parsing components).
pub(crate) fn parent_dir(rel: &Path) -> Option<&Path> {
    if !rel.as_os_str().as_encoded_bytes().contains(&b'/') {
        return None;
    }
    rel.parent().filter(|p| !p.as_os_str().is_empty())
}

/// Starts writing the file `rel` under the target under a private name;
/// directories on the way must have been checked (`DataDir::ensure_dirs`).
pub(crate) fn stage<'a>(
    to: &'a Target,
    rel: &Path,
    fence: &Fence,
) -> Result<Staged<'a>, PlaceError> {
    let parent = parent_dir(rel).unwrap_or(Path::new("."));
    let flags = OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC;
    let mode = Mode::from_raw_mode(0o644);
    let (fd, named) = match rustix::fs::openat(to.fd.as_fd(), parent, flags, mode) {
        Ok(fd) => (fd, None),
        Err(Errno::OPNOTSUPP | Errno::ISDIR) => {
            // No O_TMPFILE here: a named private file instead.
            let tmp = private_name(rel, fence.tag());
            let flags = OFlags::WRONLY
                | OFlags::CREATE
                | OFlags::TRUNC
                | OFlags::NOFOLLOW
                | OFlags::CLOEXEC;
            let fd = rustix::fs::openat(to.fd.as_fd(), &tmp, flags, mode)
                .map_err(|e| PlaceError::from_errno(&to.root, rel, e))?;
            (fd, Some(tmp))
        }
        Err(e) => return Err(PlaceError::from_errno(&to.root, parent, e)),
    };
    Ok(Staged {
        file: File::from(fd),
        rel: rel.to_path_buf(),
        named,
        to,
    })
}

impl Staged<'_> {
    /// Puts the complete file at its path, replacing a regular file there
    /// atomically (never a symlink or a directory), if the fence is open.
    pub(crate) fn publish(mut self, fence: &Fence) -> Result<(), PlaceError> {
        let root = &self.to.root;
        if !fence.is_open() {
            return Err(PlaceError::fence_closed(root, &self.rel));
        }
        if self.named.is_none() {
            match self.link_to(&self.rel) {
                Ok(()) => return Ok(()),
                Err(Errno::EXIST) => {}
                Err(e) => return Err(PlaceError::from_errno(root, &self.rel, e)),
            }
            self.check_replaceable()?;
            self.name_privately(fence.tag())?;
        } else {
            self.check_replaceable()?;
        }
        let Some(tmp) = self.named.take() else {
            unreachable!("named above");
        };
        let dir = self.to.fd.as_fd();
        rustix::fs::renameat(dir, &tmp, dir, &self.rel).map_err(|e| {
            let _ = rustix::fs::unlinkat(dir, &tmp, AtFlags::empty());
            PlaceError::from_errno(root, &self.rel, e)
        })
    }

    /// Links the unnamed file at `to` (relative to the root).
    fn link_to(&self, to: &Path) -> Result<(), Errno> {
        let dir = self.to.fd.as_fd();
        let by = LINK_BY.load(Ordering::Relaxed);
        if by != LINK_PROC {
            match rustix::fs::linkat(self.file.as_fd(), "", dir, to, AtFlags::EMPTY_PATH) {
                // ENOENT: this process may not link by descriptor.
                Err(Errno::NOENT | Errno::PERM) if by == LINK_UNKNOWN => {
                    LINK_BY.store(LINK_PROC, Ordering::Relaxed);
                }
                other => {
                    if other.is_ok() && by == LINK_UNKNOWN {
                        LINK_BY.store(LINK_EMPTY_PATH, Ordering::Relaxed);
                    }
                    return other;
                }
            }
        }
        let proc = format!("/proc/self/fd/{}", self.file.as_raw_fd());
        let cwd = rustix::fs::CWD;
        rustix::fs::linkat(cwd, proc.as_str(), dir, to, AtFlags::SYMLINK_FOLLOW)
    }

    /// Refuses to replace a symlink or a directory standing at the path.
    fn check_replaceable(&self) -> Result<(), PlaceError> {
        let root = &self.to.root;
        let full = || root.join(&self.rel);
        match rustix::fs::statat(self.to.fd.as_fd(), &self.rel, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(PlaceError::from_errno(root, &self.rel, e)),
            Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                FileType::Symlink => Err(PlaceError::SymlinkInTheWay(full())),
                FileType::Directory => Err(PlaceError::DirectoryInTheWay(full())),
                _ => Ok(()),
            },
        }
    }

    /// Gives the unnamed file its private name (to rename it over the path).
    fn name_privately(&mut self, tag: u64) -> Result<(), PlaceError> {
        let root = &self.to.root;
        let tmp = private_name(&self.rel, tag);
        for _ in 0..2 {
            match self.link_to(&tmp) {
                Ok(()) => {
                    self.named = Some(tmp);
                    return Ok(());
                }
                // Left by an earlier try of this same attempt: it is ours.
                Err(Errno::EXIST) => {
                    let _ = rustix::fs::unlinkat(self.to.fd.as_fd(), &tmp, AtFlags::empty());
                }
                Err(e) => return Err(PlaceError::from_errno(root, &self.rel, e)),
            }
        }
        Err(PlaceError::Io(
            root.join(&self.rel),
            io::Error::other("the private name stays taken"),
        ))
    }
}

impl Drop for Staged<'_> {
    fn drop(&mut self) {
        if let Some(tmp) = self.named.take() {
            let _ = rustix::fs::unlinkat(self.to.fd.as_fd(), &tmp, AtFlags::empty());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn target(dir: &Path) -> Target {
        Target {
            fd: Arc::new(File::open(dir).unwrap()),
            root: dir.to_path_buf(),
        }
    }

    fn put(to: &Target, fence: &Fence, rel: &str, bytes: &[u8]) -> Result<(), PlaceError> {
        let mut f = stage(to, Path::new(rel), fence)?;
        f.file.write_all(bytes).unwrap();
        f.publish(fence)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn parent_dirs_of_plain_and_nested_names() {
        assert_eq!(parent_dir(Path::new("a.png")), None);
        assert_eq!(parent_dir(Path::new("d/a.png")), Some(Path::new("d")));
        assert_eq!(parent_dir(Path::new("d/e/a.png")), Some(Path::new("d/e")));
    }

    #[test]
    fn a_file_appears_whole_and_replaces_only_a_regular_file() {
        let tmp = tempfile::tempdir().unwrap();
        let to = target(tmp.path());
        let fence = Fence::default();
        put(&to, &fence, "a.txt", b"first").unwrap();
        put(&to, &fence, "a.txt", b"second").unwrap();
        assert_eq!(std::fs::read(tmp.path().join("a.txt")).unwrap(), b"second");
        std::fs::create_dir(tmp.path().join("d")).unwrap();
        assert!(matches!(
            put(&to, &fence, "d", b"x"),
            Err(PlaceError::DirectoryInTheWay(_))
        ));
        assert_eq!(names(tmp.path()), ["a.txt", "d"], "no private name left");
    }

    #[test]
    fn a_closed_fence_publishes_nothing_and_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let to = target(tmp.path());
        let fence = Fence::default();
        put(&to, &fence, "kept.txt", b"committed").unwrap();
        let mut late = stage(&to, Path::new("kept.txt"), &fence).unwrap();
        late.file.write_all(b"late").unwrap();
        let mut new = stage(&to, Path::new("new.txt"), &fence).unwrap();
        new.file.write_all(b"late").unwrap();
        fence.close();
        assert!(late.publish(&fence).is_err());
        assert!(new.publish(&fence).is_err());
        assert_eq!(
            std::fs::read(tmp.path().join("kept.txt")).unwrap(),
            b"committed"
        );
        assert_eq!(names(tmp.path()), ["kept.txt"]);
    }

    #[test]
    fn linking_through_proc_gives_the_same_tree() {
        // What a process without CAP_DAC_READ_SEARCH does on older kernels.
        LINK_BY.store(LINK_PROC, Ordering::Relaxed);
        let tmp = tempfile::tempdir().unwrap();
        let to = target(tmp.path());
        let fence = Fence::default();
        put(&to, &fence, "p.txt", b"one").unwrap();
        put(&to, &fence, "p.txt", b"two").unwrap();
        assert_eq!(std::fs::read(tmp.path().join("p.txt")).unwrap(), b"two");
        assert_eq!(names(tmp.path()), ["p.txt"]);
    }
}

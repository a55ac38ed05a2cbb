//! When extracted files reach the disk, and how a restart finds out that a
//! power loss may have taken some of them.
//!
//! Fragments, manifests, the parquet and the report are always `fsync`ed.
//! The files in `data/` are flushed according to [`DataSync`]. A shard
//! committed before its files were flushed records the machine's boot id in
//! its manifest; a coordinator that recovers it after a reboot checks the
//! shard's files against its file list (each file present with the size it
//! was written with) and redoes the shard if any is not.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};

use crate::depth::CheckDepth;

/// Flushes the whole filesystem that holds `f` (`syncfs(2)`): one call
/// instead of an `fsync` per file.
pub fn syncfs(f: &File) -> io::Result<()> {
    Ok(rustix::fs::syncfs(f)?)
}

/// When the files extracted into `data/` are flushed to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DataSync {
    /// Before each shard's commit: a committed shard's files are on disk.
    #[default]
    Shard,
    /// Once, before the verified report: on disk when the job ends.
    End,
    /// Never waited for, like `tar xf`: the workers start the writeback in
    /// the background while they extract (as in every mode), but no commit
    /// and not the job's end waits for the rest; the kernel finishes it
    /// (within ~30 s on Linux). A reboot before that is caught on resume.
    None,
}

impl DataSync {
    /// Whether workers flush `data/` before committing a shard.
    pub fn per_shard(self) -> bool {
        self == DataSync::Shard
    }
    /// Whether the coordinator flushes `data/` before the verified report.
    pub fn at_end(self) -> bool {
        self == DataSync::End
    }
    /// The name used on the command line and in the report.
    pub fn as_str(self) -> &'static str {
        match self {
            DataSync::Shard => "shard",
            DataSync::End => "end",
            DataSync::None => "none",
        }
    }
    /// To the wire.
    pub fn to_proto(self) -> i32 {
        use crate::proto::DataSync as P;
        match self {
            DataSync::Shard => P::Shard as i32,
            DataSync::End => P::End as i32,
            DataSync::None => P::None as i32,
        }
    }
    /// From the wire; an unknown value is the safest mode.
    pub fn from_proto(v: i32) -> Self {
        use crate::proto::DataSync as P;
        match P::try_from(v) {
            Ok(P::End) => DataSync::End,
            Ok(P::None) => DataSync::None,
            _ => DataSync::Shard,
        }
    }
}

/// This machine's boot id (`/proc/sys/kernel/random/boot_id`): it changes at
/// every boot, so page-cache contents of an earlier boot id may be lost.
/// `SHARDPREP_BOOT_ID` overrides it (tests use it to simulate a reboot).
/// Empty when unknown, which never matches: files are then always checked.
pub fn boot_id() -> String {
    if let Ok(v) = std::env::var("SHARDPREP_BOOT_ID")
        && !v.trim().is_empty()
    {
        return v.trim().to_string();
    }
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// First record of a file list that carries sizes only (read, not written).
const LIST_HEADER_V2: &[u8] = b"shardprep-files-v2";
/// First record of a file list that carries sizes and CRC-32C checksums.
const LIST_HEADER: &[u8] = b"shardprep-files-v3";

/// Starts a file list (see [`parse_files_list`]).
pub fn files_list_header() -> Vec<u8> {
    let mut v = LIST_HEADER.to_vec();
    v.push(0);
    v
}

/// One record of a file list: the relative path under `data/`, the size
/// the file was written with and the CRC-32 of its bytes, computed while
/// writing (`None`: unknown, e.g. a write that failed or a sparse member).
pub fn files_list_record(rel: &[u8], size: Option<u64>, crc: Option<u32>) -> Vec<u8> {
    let mut v = Vec::with_capacity(rel.len() + 32);
    // Writing to a `Vec` cannot fail.
    let _ = write_files_list_record(&mut v, rel, size, crc);
    v
}

/// [`files_list_record`] written straight to `w` (no record buffer, no
/// formatted strings: this runs once per file the pass writes).
pub fn write_files_list_record(
    w: &mut impl std::io::Write,
    rel: &[u8],
    size: Option<u64>,
    crc: Option<u32>,
) -> std::io::Result<()> {
    w.write_all(rel)?;
    w.write_all(b"\0")?;
    if let Some(n) = size {
        write!(w, "{n}")?;
    }
    w.write_all(b"\0")?;
    if let (Some(c), Some(_)) = (crc, size) {
        write!(w, "{c:08x}")?;
    }
    w.write_all(b"\0")
}

/// A file written by a shard, as its file list records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedFile<'a> {
    /// Relative path under `data/`, as raw bytes.
    pub rel: &'a [u8],
    /// Size when written, if known.
    pub size: Option<u64>,
    /// CRC-32 (`crc32fast`, IEEE) of the bytes written, if known.
    pub crc: Option<u32>,
}

fn text(f: Option<&[u8]>) -> Option<&str> {
    f.and_then(|s| std::str::from_utf8(s).ok())
}

/// Parses a shard's file list: NUL-separated records, `path, size, crc`
/// after a v3 header, `path, size` after a v2 header, or bare paths
/// (earlier versions).
pub fn parse_files_list(bytes: &[u8]) -> Vec<ListedFile<'_>> {
    let mut fields = bytes.split(|b| *b == 0);
    let mut out = Vec::new();
    let first = fields.next();
    let with_crc = first == Some(LIST_HEADER);
    if with_crc || first == Some(LIST_HEADER_V2) {
        while let Some(rel) = fields.next() {
            let size = text(fields.next()).and_then(|s| s.parse().ok());
            let crc = if with_crc {
                text(fields.next()).and_then(|s| u32::from_str_radix(s, 16).ok())
            } else {
                None
            };
            if !rel.is_empty() {
                out.push(ListedFile { rel, size, crc });
            }
        }
        return out;
    }
    for rel in first.into_iter().chain(fields) {
        if !rel.is_empty() {
            out.push(ListedFile {
                rel,
                size: None,
                crc: None,
            });
        }
    }
    out
}

/// A listed path as a plain relative path, or `None` if it is anything else
/// (absolute, `..`): the worker never writes such names, so they are ignored.
pub fn listed_path(rel: &[u8]) -> Option<&Path> {
    let p = Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(rel));
    let plain = !p.is_absolute()
        && p.components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    plain.then_some(p)
}

/// Why a file is not as it was written (missing, another size, or at
/// [`CheckDepth::Checksums`] other bytes than its CRC-32), `None` when it
/// is. `size`/`crc` unknown are not compared.
pub fn damage(
    path: &Path,
    size: Option<u64>,
    crc: Option<u32>,
    depth: CheckDepth,
) -> Option<String> {
    let found = std::fs::symlink_metadata(path).map(|m| m.len());
    judge(found, size, crc, depth, || File::open(path))
}

/// A folder whose files are checked by their paths relative to it: it is
/// opened once, so each check looks up the file's own name rather than
/// walking the whole path again (the end of a job checks every file of
/// `data/`).
#[derive(Debug)]
pub struct CheckedDir {
    path: PathBuf,
    /// `None` when the folder cannot be opened: then each file is checked
    /// by its full path (and found missing or unreadable, as it is).
    fd: Option<OwnedFd>,
}

impl CheckedDir {
    pub fn open(path: &Path) -> CheckedDir {
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = rustix::fs::open(path, flags, Mode::empty()).ok();
        CheckedDir {
            path: path.to_path_buf(),
            fd,
        }
    }

    /// [`damage`] of the file at `rel` (a relative path) in this folder.
    pub fn damage(
        &self,
        rel: &Path,
        size: Option<u64>,
        crc: Option<u32>,
        depth: CheckDepth,
    ) -> Option<String> {
        let Some(fd) = &self.fd else {
            return damage(&self.path.join(rel), size, crc, depth);
        };
        let found = rustix::fs::statat(fd, rel, AtFlags::SYMLINK_NOFOLLOW)
            .map(|st| st.st_size as u64)
            .map_err(io::Error::from);
        judge(found, size, crc, depth, || {
            let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
            Ok(File::from(rustix::fs::openat(
                fd,
                rel,
                flags,
                Mode::empty(),
            )?))
        })
    }
}

/// The verdict on a file whose size was looked up as `found`; `open` opens
/// it when its bytes must be compared too.
fn judge(
    found: io::Result<u64>,
    size: Option<u64>,
    crc: Option<u32>,
    depth: CheckDepth,
    open: impl FnOnce() -> io::Result<File>,
) -> Option<String> {
    let len = match found {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Some("missing".into()),
        Err(e) => return Some(format!("unreadable ({e})")),
        Ok(len) => len,
    };
    if let Some(size) = size
        && len != size
    {
        return Some(format!("{len} bytes, written with {size}"));
    }
    let want = crc.filter(|_| depth.reads_bytes())?;
    match open().and_then(crc_of) {
        Ok(got) if got == want => None,
        Ok(got) => Some(format!(
            "changed (checksum {got:08x}, written with {want:08x})"
        )),
        Err(e) => Some(format!("unreadable ({e})")),
    }
}

/// The CRC-32 a file list records for `bytes` (what [`file_crc`] gives for
/// a file holding them).
pub fn bytes_crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// The CRC-32 of a file's bytes, read in 1 MiB chunks.
pub fn file_crc(path: &Path) -> io::Result<u32> {
    crc_of(File::open(path)?)
}

fn crc_of(mut f: File) -> io::Result<u32> {
    use std::io::Read;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(h.finalize()),
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_lists_round_trip_and_old_lists_still_parse() {
        let mut list = files_list_header();
        list.extend(files_list_record(b"a.png", Some(1024), Some(0xdead)));
        list.extend(files_list_record(b"sub/b \xff.json", None, Some(1)));
        list.extend(files_list_record(b"c.txt", Some(0), None));
        let parsed = parse_files_list(&list);
        assert_eq!(
            parsed,
            vec![
                ListedFile {
                    rel: b"a.png",
                    size: Some(1024),
                    crc: Some(0xdead)
                },
                ListedFile {
                    rel: b"sub/b \xff.json",
                    size: None,
                    crc: None
                },
                ListedFile {
                    rel: b"c.txt",
                    size: Some(0),
                    crc: None
                },
            ]
        );
        let old = b"a.png\0b.json\0";
        let parsed = parse_files_list(old);
        assert_eq!(parsed.len(), 2);
        assert_eq!(
            parsed[1],
            ListedFile {
                rel: b"b.json",
                size: None,
                crc: None
            }
        );
        let v2 = b"shardprep-files-v2\0a.png\x0010\0b.txt\0\0";
        let parsed = parse_files_list(v2);
        assert_eq!(parsed.len(), 2);
        assert_eq!((parsed[0].size, parsed[0].crc), (Some(10), None));
        assert!(parse_files_list(b"").is_empty());
    }

    #[test]
    fn damaged_files_are_found_by_presence_and_size() {
        let dir = std::env::temp_dir().join(format!("sp-dur-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.png"), vec![7u8; 10]).unwrap();
        std::fs::write(dir.join("b.txt"), b"cap").unwrap();
        let mut list = files_list_header();
        list.extend(files_list_record(b"a.png", Some(1), Some(1)));
        list.extend(files_list_record(
            b"a.png",
            Some(10),
            Some(crc32fast::hash(&[7u8; 10])),
        ));
        list.extend(files_list_record(
            b"b.txt",
            Some(3),
            Some(crc32fast::hash(b"cap")),
        ));
        list.extend(files_list_record(b"../outside", Some(1), None));
        // Each check by full path and in the opened folder: the same verdict.
        let first = |depth| {
            let files = parse_files_list(&list);
            let opened = CheckedDir::open(&dir);
            // The later record of a path wins, as on disk.
            files.iter().enumerate().find_map(|(i, f)| {
                let later = files[i + 1..].iter().any(|g| g.rel == f.rel);
                let rel = listed_path(f.rel).filter(|_| !later)?;
                let by_path = damage(&dir.join(rel), f.size, f.crc, depth);
                assert_eq!(by_path, opened.damage(rel, f.size, f.crc, depth));
                by_path.map(|why| format!("{}: {why}", rel.display()))
            })
        };
        assert_eq!(first(CheckDepth::Checksums), None);
        std::fs::write(dir.join("b.txt"), b"cat").unwrap();
        assert_eq!(first(CheckDepth::Sizes), None);
        let bad = first(CheckDepth::Checksums).unwrap();
        assert!(bad.contains("b.txt") && bad.contains("checksum"), "{bad}");
        std::fs::write(dir.join("b.txt"), b"").unwrap();
        let bad = first(CheckDepth::Sizes).unwrap();
        assert!(bad.contains("b.txt") && bad.contains("0 bytes"), "{bad}");
        std::fs::remove_file(dir.join("a.png")).unwrap();
        assert!(first(CheckDepth::Sizes).unwrap().contains("a.png"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_opened_folder_finds_links_and_a_lost_folder_as_the_path_does() {
        let dir = std::env::temp_dir().join(format!("sp-dur-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/n.png"), b"nested").unwrap();
        std::fs::write(dir.join("target"), b"abc").unwrap();
        std::os::unix::fs::symlink(dir.join("target"), dir.join("link.txt")).unwrap();
        let opened = CheckedDir::open(&dir);
        let crc = Some(crc32fast::hash(b"nested"));
        let deep = CheckDepth::Checksums;
        assert_eq!(
            opened.damage(Path::new("sub/n.png"), Some(6), crc, deep),
            None
        );
        // A file replaced by a link is not read through it.
        let len = std::fs::symlink_metadata(dir.join("link.txt"))
            .unwrap()
            .len();
        let why = opened.damage(
            Path::new("link.txt"),
            Some(len),
            Some(crc32fast::hash(b"abc")),
            deep,
        );
        assert!(why.is_some_and(|w| w.starts_with("unreadable")));
        // The folder gone after it was opened, or before: every file is missing.
        std::fs::remove_dir_all(&dir).unwrap();
        let gone = CheckedDir::open(&dir);
        for d in [&opened, &gone] {
            let why = d.damage(Path::new("sub/n.png"), Some(6), crc, CheckDepth::Sizes);
            assert_eq!(why.as_deref(), Some("missing"));
        }
    }

    #[test]
    fn modes_map_to_what_workers_and_coordinator_do() {
        for m in [DataSync::Shard, DataSync::End, DataSync::None] {
            assert_eq!(DataSync::from_proto(m.to_proto()), m);
        }
        assert!(DataSync::Shard.per_shard() && !DataSync::Shard.at_end());
        assert!(DataSync::End.at_end() && !DataSync::End.per_shard());
        assert!(!DataSync::None.at_end() && !DataSync::None.per_shard());
        assert_eq!(DataSync::from_proto(99), DataSync::Shard);
    }
}

//! Fixtures for the tar fidelity tests: hand-written 512-byte headers, GNU
//! tar runs, extraction through `tar_reader`, and tree comparison.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::BufReader;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use shardprep_worker::tar_reader::{EntryKind, EntryMeta, Limits, TarError, TarReader};

/// Two zero blocks: the end of an archive.
pub const EOA: [u8; 1024] = [0; 1024];

/// A hand-written header.
#[derive(Clone)]
pub struct Hdr {
    block: [u8; 512],
    signed: bool,
}

impl Hdr {
    /// A ustar header with mode 0644, uid/gid 0, mtime 0.
    pub fn new(name: &[u8], typeflag: u8, size: u64) -> Hdr {
        let mut block = [0u8; 512];
        block[..name.len()].copy_from_slice(name);
        block[100..108].copy_from_slice(b"0000644\0");
        block[108..116].copy_from_slice(b"0000000\0");
        block[116..124].copy_from_slice(b"0000000\0");
        block[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        block[136..148].copy_from_slice(b"00000000000\0");
        block[156] = typeflag;
        block[257..263].copy_from_slice(b"ustar\0");
        block[263..265].copy_from_slice(b"00");
        Hdr {
            block,
            signed: false,
        }
    }
    /// No ustar magic: a V7 header.
    pub fn v7(mut self) -> Hdr {
        self.block[257..265].fill(0);
        self
    }
    pub fn link(mut self, target: &[u8]) -> Hdr {
        self.block[157..157 + target.len()].copy_from_slice(target);
        self
    }
    pub fn size_field(mut self, raw: [u8; 12]) -> Hdr {
        self.block[124..136].copy_from_slice(&raw);
        self
    }
    /// Checksum summed over signed bytes (old HP-UX / V7 writers).
    pub fn signed_checksum(mut self) -> Hdr {
        self.signed = true;
        self
    }
    pub fn bytes(&self) -> [u8; 512] {
        let mut b = self.block;
        b[148..156].fill(b' ');
        let sum: i64 = if self.signed {
            b.iter().map(|&x| i64::from(x as i8)).sum()
        } else {
            b.iter().map(|&x| i64::from(x)).sum()
        };
        let field = format!("{:06o}\0 ", sum.rem_euclid(1 << 18));
        b[148..156].copy_from_slice(field.as_bytes());
        b
    }
}

/// Data padded to whole blocks.
pub fn padded(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    v.resize(data.len().div_ceil(512) * 512, 0);
    v
}

/// A regular file member.
pub fn file(name: &str, data: &[u8]) -> Vec<u8> {
    member(Hdr::new(name.as_bytes(), b'0', data.len() as u64), data)
}

/// A header followed by `data` (padded).
pub fn member(h: Hdr, data: &[u8]) -> Vec<u8> {
    let mut v = h.bytes().to_vec();
    v.extend(padded(data));
    v
}

/// A PAX header (`x` or `g`) holding `records`.
pub fn pax(typeflag: u8, records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, v) in records {
        let rest = k.len() + v.len() + 3; // ' ', '=', '\n'
        let mut len = rest + 1;
        while len.to_string().len() + rest != len {
            len += 1;
        }
        body.extend(format!("{len} {k}=").as_bytes());
        body.extend(*v);
        body.push(b'\n');
    }
    member(
        Hdr::new(b"PaxHeaders/x", typeflag, body.len() as u64),
        &body,
    )
}

/// A GNU long-name (`L`) header with `body` as its data.
pub fn long_name(body: &[u8]) -> Vec<u8> {
    member(Hdr::new(b"././@LongLink", b'L', body.len() as u64), body)
}

pub fn concat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// GNU tar's version line (the tests were written against 1.34).
pub fn gnu_tar_version() -> String {
    let out = Command::new("tar")
        .arg("--version")
        .output()
        .expect("GNU tar runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Runs `tar -xf archive -C dest`; true when it exited 0.
pub fn gnu_extract(archive: &Path, dest: &Path) -> bool {
    extract_with("tar", archive, dest)
}

/// Whether bsdtar (libarchive) is installed; when it is not and
/// `SHARDPREP_REQUIRE_BSDTAR=1` (CI) the test fails with what to install.
pub fn have_bsdtar() -> bool {
    let found = Command::new("bsdtar")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("SHARDPREP_REQUIRE_BSDTAR").as_deref() != Ok("1"),
            "bsdtar not found: install it (apt-get install libarchive-tools)"
        );
        eprintln!("bsdtar not installed: the comparison with bsdtar is skipped");
    }
    found
}

/// Runs `bsdtar -xf archive -C dest`: `None` when bsdtar is not installed,
/// else whether it exited 0.
pub fn bsdtar_extract(archive: &Path, dest: &Path) -> Option<bool> {
    have_bsdtar().then(|| extract_with("bsdtar", archive, dest))
}

fn extract_with(tool: &str, archive: &Path, dest: &Path) -> bool {
    fs::create_dir_all(dest).expect("dest");
    let out = Command::new(tool)
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(dest)
        .output()
        .unwrap_or_else(|e| panic!("{tool} does not run: {e}"));
    // bsdtar 3.6 exits 0 after skipping damage ("Damaged tar archive",
    // "Retrying..."): that is an error here, as GNU tar's exit 2 is.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ok = out.status.success() && !stderr.contains("Damaged tar archive");
    if !ok {
        eprintln!("{tool} xf {}: {}", archive.display(), stderr);
    }
    ok
}

/// Runs a shell command in `dir`, failing the test with its output.
pub fn sh(dir: &Path, script: &str) {
    let out = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What our reader yielded for one member.
#[derive(Debug, Clone)]
pub struct Seen {
    pub meta: EntryMeta,
}

/// Extracts `archive` into `dest` with `tar_reader` (files through the
/// sparse writer); returns the members seen, or the first error.
pub fn reader_extract(archive: &Path, dest: &Path, limits: Limits) -> Result<Vec<Seen>, TarError> {
    fs::create_dir_all(dest).expect("dest");
    let input = BufReader::new(File::open(archive).expect("archive"));
    let mut reader = TarReader::with_limits(input, limits);
    let mut seen = Vec::new();
    while let Some(mut entry) = reader.next_entry()? {
        let meta = entry.meta().clone();
        let path = dest.join(Path::new(std::ffi::OsStr::from_bytes(&meta.name)));
        if meta.refusal.is_none() {
            place(&mut entry, &meta, dest, &path)?;
        }
        seen.push(Seen { meta });
    }
    Ok(seen)
}

fn place<R: std::io::Read>(
    entry: &mut shardprep_worker::tar_reader::Entry<'_, R>,
    meta: &EntryMeta,
    dest: &Path,
    path: &Path,
) -> Result<(), TarError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("parent dirs");
    }
    let link = || {
        dest.join(Path::new(std::ffi::OsStr::from_bytes(
            meta.link_name.as_deref().unwrap_or_default(),
        )))
    };
    match meta.kind {
        EntryKind::Directory => fs::create_dir_all(path).expect("dir"),
        EntryKind::File | EntryKind::Other(_) => {
            let _ = fs::remove_file(path);
            let mut f = File::create(path).expect("create");
            match entry.write_to_file(&mut f, &|| true) {
                Ok(_) => {}
                Err(shardprep_worker::tar_reader::ExtractError::Tar(e)) => return Err(*e),
                Err(e) => panic!("write {}: {e}", path.display()),
            }
        }
        EntryKind::Symlink => {
            let target = Path::new(std::ffi::OsStr::from_bytes(
                meta.link_name.as_deref().unwrap_or_default(),
            ));
            std::os::unix::fs::symlink(target, path).expect("symlink");
        }
        EntryKind::HardLink => fs::hard_link(link(), path).expect("hard link"),
        EntryKind::Fifo => {
            let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
            // SAFETY: a valid NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
        }
        // Device nodes are not compared (see `tree`).
        EntryKind::CharDevice | EntryKind::BlockDevice => {}
        // `tar xf` writes nothing for these.
        EntryKind::VolumeLabel | EntryKind::MultiVolume => {}
    }
    Ok(())
}

/// One node of an extracted tree.
#[derive(Debug, PartialEq, Eq)]
pub enum Node {
    File(Vec<u8>),
    Dir,
    Symlink(PathBuf),
    Fifo,
}

/// Walks `root`: every path below it with its node (device nodes left out).
pub fn tree(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Node>) {
    for e in fs::read_dir(dir).expect("read_dir") {
        let e = e.expect("entry");
        let path = e.path();
        let rel = path.strip_prefix(root).expect("below root").to_path_buf();
        let ft = fs::symlink_metadata(&path).expect("meta").file_type();
        let node = if ft.is_symlink() {
            Node::Symlink(fs::read_link(&path).expect("link"))
        } else if ft.is_dir() {
            walk(root, &path, out);
            Node::Dir
        } else if ft.is_fifo() {
            Node::Fifo
        } else if ft.is_file() {
            Node::File(fs::read(&path).expect("read"))
        } else {
            continue;
        };
        out.insert(rel, node);
    }
}

/// Writes `bytes` as `name` in `dir`, returns the path.
pub fn write_archive(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, bytes).expect("write archive");
    p
}

/// Which extraction our reader is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reference {
    /// GNU tar read the archive.
    Gnu,
    /// GNU tar erred and bsdtar read it: bsdtar's tree (issue 18).
    Bsdtar,
    /// Both erred (or bsdtar is not installed): GNU tar's partial tree.
    GnuPartial,
}

/// Extracts with GNU tar, bsdtar when GNU tar errs, and our reader; asserts
/// our tree equals the reference's; returns the members seen and which
/// reference it was.
pub fn same_as_reference(archive_bytes: &[u8]) -> (Vec<Seen>, Reference) {
    let tmp = tempfile::tempdir().expect("tmp");
    let archive = write_archive(tmp.path(), "a.tar", archive_bytes);
    let gnu_ok = gnu_extract(&archive, &tmp.path().join("gnu"));
    let reference = if gnu_ok {
        Reference::Gnu
    } else if bsdtar_extract(&archive, &tmp.path().join("bsd")) == Some(true) {
        Reference::Bsdtar
    } else {
        Reference::GnuPartial
    };
    let seen = reader_extract(&archive, &tmp.path().join("ours"), Limits::default())
        .unwrap_or_else(|e| panic!("our reader failed where {reference:?} read the archive: {e}"));
    let want = tree(&tmp.path().join(match reference {
        Reference::Bsdtar => "bsd",
        _ => "gnu",
    }));
    let ours = tree(&tmp.path().join("ours"));
    assert_eq!(ours, want, "our extraction differs from {reference:?}'s");
    (seen, reference)
}

/// [`same_as_reference`], returning whether GNU tar exited 0.
pub fn same_as_gnu_tar(archive_bytes: &[u8]) -> (Vec<Seen>, bool) {
    let (seen, reference) = same_as_reference(archive_bytes);
    (seen, reference == Reference::Gnu)
}

/// Whether GNU tar and bsdtar (when installed) both refuse the archive:
/// only then may our reader call it damaged.
pub fn both_tars_fail(archive_bytes: &[u8]) -> bool {
    let tmp = tempfile::tempdir().expect("tmp");
    let p = write_archive(tmp.path(), "a.tar", archive_bytes);
    let gnu_fails = !gnu_extract(&p, &tmp.path().join("gnu"));
    let bsd_fails = bsdtar_extract(&p, &tmp.path().join("bsd")) != Some(true);
    gnu_fails && bsd_fails
}

/// Bytes of disk a file takes.
pub fn allocated(path: &Path) -> u64 {
    fs::metadata(path).expect("meta").blocks() * 512
}

//! A streaming tar reader that follows GNU tar where the `tar` crate 0.4 does
//! not (issue 18). The `tar` crate's [`tar::Header`] still parses names,
//! modes and times; this module owns the iteration:
//!
//! - PAX `path`/`linkpath`/`size` and GNU `L`/`K` long names (the last header
//!   of a kind before a member wins; a long name is cut at its first NUL;
//!   global `g` records are defaults for later members, as in GNU tar);
//! - GNU sparse files (old `S`, PAX 0.0, 0.1, 1.0) yield their real name,
//!   real size and a [`SparseMap`]; [`Entry::write_to_file`] seeks over holes;
//! - header-only types (links, devices, FIFOs, directories) ignore their size
//!   field; a regular type whose name ends in `/` is a directory;
//! - checksums over signed or unsigned bytes; the first zero block, or EOF at
//!   a header boundary, ends the archive;
//! - damage is a typed [`TarError::Corrupt`] with the member and offset, apart
//!   from failures of the input ([`TarError::Io`], retryable).
//!
//! Memory is bounded: only extension headers (up to [`Limits::max_extension`])
//! and sparse maps (up to [`Limits::max_sparse_segments`] runs) are buffered.
//! The reader does no buffering of its own: wrap a raw file or socket in a
//! `BufReader`. [`TarReader::seeking`] seeks over the data it is not asked
//! for instead of reading it (index mode).

mod entry;
mod error;
mod header;
mod pax;
mod sparse;

use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;

pub use entry::Entry;
pub use error::{Corruption, ExtractError, TarError};
pub use header::EntryKind;
pub use sparse::{Segment, SparseFormat, SparseMap};

use shardprep_core::issue::IssueKind;

use header::{BLOCK, TYPEFLAG};
use pax::Pax;

/// Default cap on the expanded size of a sparse member (1 TiB).
pub use shardprep_core::size::DEFAULT_MAX_SPARSE_SIZE;

/// Bounds on what the reader accepts or buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest PAX or GNU long-name header body kept in memory.
    pub max_extension: u64,
    /// Sparse members expanding past this are refused (`sparse_too_large`).
    pub max_sparse_size: u64,
    /// Sparse maps with more runs are refused (`sparse_map_too_large`).
    pub max_sparse_segments: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_extension: 1 << 20,
            max_sparse_size: DEFAULT_MAX_SPARSE_SIZE,
            max_sparse_segments: 1 << 20,
        }
    }
}

/// Why a member is not to be extracted, though the archive goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// A short stable reason (`sparse_too_large`, `invalid_sparse_map`, ...).
    pub reason: IssueKind,
    pub detail: String,
}

/// Everything known about one member before its data is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryMeta {
    /// The final name: PAX `path`, else GNU long name, else the header's
    /// (ustar prefix joined); for GNU sparse files `GNU.sparse.name`.
    pub name: Vec<u8>,
    pub link_name: Option<Vec<u8>>,
    pub kind: EntryKind,
    /// The raw type flag of the member's own header.
    pub typeflag: u8,
    /// The raw `name` field of the member's own header (what readers that
    /// parse ustar headers themselves, such as wids, see).
    pub header_name: [u8; 100],
    /// Size of the data as extracted (0 for header-only types; the real size
    /// of a sparse file).
    pub size: u64,
    /// Bytes of data the archive stores after the header (a 1.0 map included).
    pub stored_size: u64,
    /// Offset of the member's first header (its first PAX/GNU extension).
    pub start_offset: u64,
    /// Offset of the member's own header.
    pub header_offset: u64,
    /// Offset of the data area (after the header and any old GNU sparse
    /// extension blocks).
    pub data_offset: u64,
    pub sparse: Option<SparseMap>,
    /// Set when the member must not be extracted; its data reads as empty.
    pub refusal: Option<Refusal>,
    pub mode: Option<u32>,
    pub mtime: Option<u64>,
}

/// The first 100 bytes of a header block: its ustar `name` field.
fn header_name_field(block: &[u8; 512]) -> [u8; 100] {
    let mut name = [0u8; 100];
    name.copy_from_slice(&block[..100]);
    name
}

impl EntryMeta {
    /// The name for messages and reports.
    pub fn name_lossy(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }

    /// Offset just past the member's data and padding.
    pub fn end_offset(&self) -> u64 {
        self.data_offset + self.stored_size.div_ceil(BLOCK) * BLOCK
    }
}

/// The data area of the current member: what is left of it and for whom.
#[derive(Debug, Default)]
struct Area {
    /// The member's name (lossy UTF-8), shared with `last_member`.
    member: Arc<str>,
    stored: u64,
    left: u64,
    pad: u64,
}

/// Extension headers seen before a member.
#[derive(Default)]
struct Pending {
    pax: Option<Pax>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    start: Option<u64>,
    /// A malformed PAX header: it fails the member it would apply to, and is
    /// harmless right before the end of the archive (GNU tar never parses it).
    bad_pax: Option<TarError>,
}

/// Moves the input forward by up to `n` bytes without reading them; returns
/// how far it moved (less than `n` only at the end of the input).
type SkipFn<R> = fn(&mut R, u64) -> io::Result<u64>;

/// Streams the members of a tar archive; see the module docs.
pub struct TarReader<R> {
    inner: R,
    /// Set by [`TarReader::seeking`]: skipped data is seeked over, not read.
    skip: Option<SkipFn<R>>,
    pos: u64,
    limits: Limits,
    area: Area,
    finished: bool,
    global: Pax,
    last_member: Option<Arc<str>>,
    /// Where skipped data and padding are read to; kept, not zeroed per member.
    scratch: Vec<u8>,
}

impl<R: Read> TarReader<R> {
    pub fn new(inner: R) -> Self {
        Self::with_limits(inner, Limits::default())
    }

    pub fn with_limits(inner: R, limits: Limits) -> Self {
        TarReader {
            inner,
            skip: None,
            pos: 0,
            limits,
            area: Area::default(),
            finished: false,
            global: Pax::default(),
            last_member: None,
            scratch: Vec::new(),
        }
    }

    /// Bytes consumed from the input so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    /// The input, for positioned reads beside the stream (reading or seeking
    /// it would move the stream under the reader).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The next member, after skipping what is left of the previous one;
    /// `None` at the end of the archive.
    pub fn next_entry(&mut self) -> Result<Option<Entry<'_, R>>, TarError> {
        match self.next_meta()? {
            Some(meta) => Ok(Some(Entry::new(self, meta))),
            None => Ok(None),
        }
    }

    fn next_meta(&mut self) -> Result<Option<EntryMeta>, TarError> {
        if self.finished {
            return Ok(None);
        }
        self.skip_rest()?;
        let mut pending = Pending::default();
        loop {
            let offset = self.pos;
            let Some(block) = self.read_header()? else {
                // A PAX or long-name header right before the end is harmless.
                self.finished = true;
                return Ok(None);
            };
            pending.start.get_or_insert(offset);
            match block[TYPEFLAG] {
                b'x' | b'X' => {
                    let body = self.read_extension(&block, offset, "PAX header")?;
                    match self.parse_pax(&body, offset) {
                        Ok(pax) => pending.pax = Some(pax),
                        Err(e) => {
                            pending.bad_pax.get_or_insert(e);
                        }
                    }
                }
                b'g' => {
                    let body = self.read_extension(&block, offset, "PAX global header")?;
                    match self.parse_pax(&body, offset) {
                        Ok(global) => self.global = global.with_defaults(&self.global),
                        Err(e) => {
                            pending.bad_pax.get_or_insert(e);
                        }
                    }
                }
                b'L' => {
                    let body = self.read_extension(&block, offset, "GNU long name")?;
                    pending.long_name = Some(cut_at_nul(body));
                }
                b'K' => {
                    let body = self.read_extension(&block, offset, "GNU long link name")?;
                    pending.long_link = Some(cut_at_nul(body));
                }
                _ => {
                    if let Some(e) = pending.bad_pax.take() {
                        return Err(e);
                    }
                    let meta = self.member(&block, offset, pending)?;
                    self.last_member = Some(Arc::clone(&self.area.member));
                    return Ok(Some(meta));
                }
            }
        }
    }

    /// Reads one header block: `None` at the end of the archive (a zero
    /// block, or EOF right at a block boundary).
    fn read_header(&mut self) -> Result<Option<[u8; 512]>, TarError> {
        let mut block = [0u8; 512];
        let offset = self.pos;
        let got = self.fill(&mut block, None)?;
        if got == 0 {
            return Ok(None);
        }
        if got < block.len() {
            return Err(self.corrupt_after(offset, Corruption::TruncatedHeader { got }));
        }
        if block.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        header::verify_checksum(&block).map_err(|what| self.corrupt_after(offset, what))?;
        Ok(Some(block))
    }

    /// Reads the body of an extension header (bounded) and its padding.
    fn read_extension(
        &mut self,
        block: &[u8; 512],
        offset: u64,
        what: &'static str,
    ) -> Result<Vec<u8>, TarError> {
        let size = header::size_field(block).map_err(|w| self.corrupt_after(offset, w))?;
        if size > self.limits.max_extension {
            let cap = self.limits.max_extension;
            return Err(
                self.corrupt_after(offset, Corruption::ExtensionTooLarge { what, size, cap })
            );
        }
        self.area = Area {
            member: Arc::from(what),
            stored: size,
            left: size,
            pad: padding(size),
        };
        let mut body = vec![0u8; size as usize];
        let mut got = 0;
        while got < body.len() {
            got += self.read_area(&mut body[got..])?;
        }
        self.skip_rest()?;
        Ok(body)
    }

    fn parse_pax(&self, body: &[u8], offset: u64) -> Result<Pax, TarError> {
        pax::parse(body, self.limits.max_sparse_segments).map_err(|w| self.corrupt_after(offset, w))
    }

    /// Builds the member of `block` with its pending extensions applied, and
    /// sets up its data area.
    fn member(
        &mut self,
        block: &[u8; 512],
        header_offset: u64,
        pending: Pending,
    ) -> Result<EntryMeta, TarError> {
        let hdr = tar::Header::from_byte_slice(block);
        let typeflag = block[TYPEFLAG];
        let pax = pending.pax.unwrap_or_default().with_defaults(&self.global);
        let name = (pax.path.clone().or(pending.long_name))
            .unwrap_or_else(|| hdr.path_bytes().into_owned());
        let link_name = (pax.linkpath.clone().or(pending.long_link))
            .or_else(|| hdr.link_name_bytes().map(|l| l.into_owned()));
        let member: Arc<str> = Arc::from(String::from_utf8_lossy(&name));
        let header_size = header::size_field(block).map_err(|what| TarError::Corrupt {
            offset: header_offset,
            member: Some(member.to_string()),
            after: None,
            what,
        })?;
        let kind = EntryKind::classify(typeflag, &name);
        let stored = if kind.has_data(typeflag) {
            pax.size.unwrap_or(header_size)
        } else {
            0
        };
        let mut meta = EntryMeta {
            name,
            link_name,
            kind,
            typeflag,
            header_name: header_name_field(block),
            size: if kind == EntryKind::Directory {
                0
            } else {
                stored
            },
            stored_size: stored,
            start_offset: pending.start.unwrap_or(header_offset),
            header_offset,
            data_offset: header_offset + BLOCK,
            sparse: None,
            refusal: None,
            mode: hdr.mode().ok(),
            mtime: hdr.mtime().ok(),
        };
        meta.refusal = unknown_type_named_as_directory(&meta);
        if typeflag == b'S' {
            self.old_gnu_sparse(block, &mut meta)?;
        }
        self.area = Area {
            member,
            stored,
            left: stored,
            pad: padding(stored),
        };
        if matches!(typeflag, b'0' | 0 | b'7') && pax.sparse.present() {
            self.pax_sparse(&pax, &mut meta)?;
        }
        Ok(meta)
    }

    /// Reads from the current data area; EOF inside it is a truncation.
    fn read_area(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        let n = buf
            .len()
            .min(usize::try_from(self.area.left).unwrap_or(usize::MAX));
        if n == 0 {
            return Ok(0);
        }
        let offset = self.pos;
        let member = Some(&*self.area.member);
        let got = read_input(&mut self.inner, &mut self.pos, &mut buf[..n], member)?;
        if got == 0 {
            return Err(TarError::Corrupt {
                offset,
                member: Some(self.area.member.to_string()),
                after: None,
                what: Corruption::TruncatedData {
                    got: self.area.stored - self.area.left,
                    expected: self.area.stored,
                },
            });
        }
        self.area.left -= got as u64;
        Ok(got)
    }

    /// Skips what is left of the current data area and its padding. EOF in
    /// the padding is damage too: GNU tar reads whole blocks and fails there.
    fn skip_rest(&mut self) -> Result<(), TarError> {
        if let Some(skip) = self.skip {
            return self.seek_rest(skip);
        }
        if self.area.left == 0 && self.area.pad == 0 {
            return Ok(());
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.resize(8192, 0);
        let skipped = self.skip_into(&mut scratch);
        self.scratch = scratch;
        skipped
    }

    /// [`TarReader::skip_rest`] by reading into `scratch`.
    fn skip_into(&mut self, scratch: &mut [u8]) -> Result<(), TarError> {
        while self.area.left > 0 {
            self.read_area(scratch)?;
        }
        while self.area.pad > 0 {
            let offset = self.pos;
            let n = scratch.len().min(self.area.pad as usize);
            let got = self.read_some(&mut scratch[..n], None)?;
            if got == 0 {
                return Err(TarError::Corrupt {
                    offset,
                    member: Some(self.area.member.to_string()),
                    after: None,
                    what: Corruption::TruncatedPadding {
                        missing: self.area.pad,
                    },
                });
            }
            self.area.pad -= got as u64;
        }
        Ok(())
    }

    /// [`TarReader::skip_rest`] by seeking: the same errors at the same offsets.
    fn seek_rest(&mut self, skip: SkipFn<R>) -> Result<(), TarError> {
        let total = self.area.left + self.area.pad;
        if total == 0 {
            return Ok(());
        }
        let moved = skip(&mut self.inner, total).map_err(|source| TarError::Io {
            offset: self.pos,
            member: Some(self.area.member.to_string()),
            source,
        })?;
        self.pos += moved;
        let in_data = moved.min(self.area.left);
        self.area.left -= in_data;
        self.area.pad -= moved - in_data;
        let member = Some(self.area.member.to_string());
        let what = if self.area.left > 0 {
            Corruption::TruncatedData {
                got: self.area.stored - self.area.left,
                expected: self.area.stored,
            }
        } else if self.area.pad > 0 {
            Corruption::TruncatedPadding {
                missing: self.area.pad,
            }
        } else {
            return Ok(());
        };
        Err(TarError::Corrupt {
            offset: self.pos,
            member,
            after: None,
            what,
        })
    }

    /// Reads until `buf` is full or the input ends.
    fn fill(&mut self, buf: &mut [u8], member: Option<&str>) -> Result<usize, TarError> {
        let mut got = 0;
        while got < buf.len() {
            match self.read_some(&mut buf[got..], member)? {
                0 => break,
                n => got += n,
            }
        }
        Ok(got)
    }

    /// One read of the input; its errors are input failures.
    fn read_some(&mut self, buf: &mut [u8], member: Option<&str>) -> Result<usize, TarError> {
        read_input(&mut self.inner, &mut self.pos, buf, member)
    }

    /// A corrupt header: the member is unknown, the last good one is named.
    fn corrupt_after(&self, offset: u64, what: Corruption) -> TarError {
        TarError::Corrupt {
            offset,
            member: None,
            after: self.last_member.as_deref().map(str::to_string),
            what,
        }
    }
}

impl<R: Read + Seek> TarReader<R> {
    /// A reader that seeks over member data left unread and over padding
    /// instead of reading them; the input must start at the archive's start.
    /// Meant for inputs whose seeks are cheap and that read no more than asked
    /// (a `BufReader` drops its buffer at every seek). A member cut off by the
    /// end of the input is found as when reading: the seek stops at the end.
    pub fn seeking(inner: R, limits: Limits) -> Self {
        TarReader {
            skip: Some(seek_forward::<R>),
            ..Self::with_limits(inner, limits)
        }
    }
}

/// [`SkipFn`] for a seekable input: forward, never past its end.
fn seek_forward<R: Seek>(inner: &mut R, n: u64) -> io::Result<u64> {
    let here = inner.stream_position()?;
    let end = inner.seek(SeekFrom::End(0))?;
    let to = here.saturating_add(n).min(end).max(here);
    inner.seek(SeekFrom::Start(to))?;
    Ok(to - here)
}

/// One read of `inner`, moving `pos`; its errors are input failures.
fn read_input<R: Read>(
    inner: &mut R,
    pos: &mut u64,
    buf: &mut [u8],
    member: Option<&str>,
) -> Result<usize, TarError> {
    loop {
        match inner.read(buf) {
            Ok(n) => {
                *pos += n as u64;
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(TarError::Io {
                    offset: *pos,
                    member: member.map(str::to_string),
                    source,
                });
            }
        }
    }
}

fn padding(size: u64) -> u64 {
    size.div_ceil(BLOCK) * BLOCK - size
}

/// GNU tar cuts a long name at its first NUL (writers pad with junk after).
/// An unknown type flag under a name ending in `/` (Solaris writes its ACL
/// headers, type `A`, so before a directory): GNU tar writes the data as a
/// file, which the directory member after it replaces. Neither is what the
/// name says, so it is refused and named.
fn unknown_type_named_as_directory(meta: &EntryMeta) -> Option<Refusal> {
    let EntryKind::Other(flag) = meta.kind else {
        return None;
    };
    meta.name.ends_with(b"/").then(|| Refusal {
        reason: IssueKind::UnknownTypeDirectoryName,
        detail: format!(
            "unknown entry type {:?} under a directory name; its {} bytes are not extracted",
            flag as char, meta.stored_size
        ),
    })
}

fn cut_at_nul(mut body: Vec<u8>) -> Vec<u8> {
    if let Some(i) = body.iter().position(|&b| b == 0) {
        body.truncate(i);
    }
    body
}

mod sparse_read;

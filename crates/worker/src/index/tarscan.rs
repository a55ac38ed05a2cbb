//! Walking a tar's headers by offset: ustar and GNU headers, GNU long names
//! (`L`, `K`), PAX extended headers (`x`: `path`, `size`), GNU sparse
//! headers. Names, sizes and offsets are what the `tar` crate (the extract
//! pass) sees; member data is never read here.

use std::io;

use tar::{EntryType, Header, PaxExtensions};

use super::window::Window;

const BLOCK: u64 = 512;
/// Largest long-name or PAX block accepted (a name is at most a few KiB).
const MAX_EXTENSION_BYTES: u64 = 1 << 20;

/// One member as the tar crate would hand it out.
#[derive(Debug, Clone)]
pub struct Member {
    /// The member's name (PAX `path`, else GNU long name, else the header's).
    pub name: Vec<u8>,
    pub entry_type: EntryType,
    /// Offset of the member's own header (after any extension headers).
    pub header_pos: u64,
    /// Offset of its data: `header_pos + 512` (plus GNU sparse blocks).
    pub data_pos: u64,
    /// Size of its data in the archive.
    pub size: u64,
}

/// A tar that cannot be read further.
#[derive(Debug)]
pub enum ScanError {
    /// The bytes are not a valid tar here.
    Corrupt {
        what: String,
        offset: u64,
        member: Option<String>,
    },
    /// The file itself could not be read.
    Io(io::Error, u64),
}

fn corrupt(what: impl Into<String>, offset: u64, member: Option<&[u8]>) -> ScanError {
    ScanError::Corrupt {
        what: what.into(),
        offset,
        member: member.map(|m| String::from_utf8_lossy(m).into_owned()),
    }
}

/// Extension headers seen before a member.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: bool,
    pax: Option<Vec<u8>>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.long_name.is_none() && !self.long_link && self.pax.is_none()
    }
}

/// Iterates over the members of a tar by reading only their headers.
pub struct Scanner {
    next: u64,
    done: bool,
}

impl Scanner {
    pub fn new() -> Self {
        Scanner {
            next: 0,
            done: false,
        }
    }

    /// The next member, `None` at the end of the archive.
    pub fn next_member(&mut self, win: &mut Window) -> Result<Option<Member>, ScanError> {
        if self.done {
            return Ok(None);
        }
        let mut pending = Pending::default();
        loop {
            let Some(header) = self.read_header(win)? else {
                self.done = true;
                if !pending.is_empty() {
                    return Err(corrupt(
                        "members found describing a future member but no future member found",
                        self.next,
                        None,
                    ));
                }
                return Ok(None);
            };
            let header_pos = self.next;
            let size = self.entry_size(&header, &pending)?;
            let data_pos = header_pos + BLOCK;
            let et = header.entry_type();
            let recognized = header.as_gnu().is_some() || header.as_ustar().is_some();
            let is_ext = recognized
                && (et.is_gnu_longname() || et.is_gnu_longlink() || et.is_pax_local_extensions());
            if is_ext {
                let bytes = self.extension_data(win, data_pos, size, &header)?;
                self.next = data_pos + padded(size, header_pos)?;
                let twice = if et.is_gnu_longname() {
                    pending.long_name.replace(bytes).is_some()
                } else if et.is_gnu_longlink() {
                    std::mem::replace(&mut pending.long_link, true)
                } else {
                    pending.pax.replace(bytes).is_some()
                };
                if twice {
                    return Err(corrupt(
                        "two extension headers of one kind describe the same member",
                        header_pos,
                        None,
                    ));
                }
                continue;
            }
            let data_pos = if et.is_gnu_sparse() {
                skip_sparse_blocks(win, &header, data_pos)?
            } else {
                data_pos
            };
            self.next = data_pos + padded(size, header_pos)?;
            let name = member_name(&header, &pending);
            return Ok(Some(Member {
                name,
                entry_type: et,
                header_pos,
                data_pos,
                size,
            }));
        }
    }

    /// Reads the header at `self.next`; `None` at the end (an all-zero block or EOF).
    fn read_header(&mut self, win: &mut Window) -> Result<Option<Header>, ScanError> {
        let pos = self.next;
        let mut block = [0u8; BLOCK as usize];
        let got = win
            .read_exact_at(pos, &mut block)
            .map_err(|e| ScanError::Io(e, pos))?;
        if got == 0 {
            return Ok(None);
        }
        if got < block.len() {
            return Err(corrupt(
                format!(
                    "the tar is truncated: a header is cut off after {got} of 512 bytes (the file has {} bytes)",
                    win.file_len()
                ),
                pos,
                None,
            ));
        }
        if block.iter().all(|b| *b == 0) {
            return Ok(None);
        }
        let header = Header::from_byte_slice(&block).clone();
        let sum = block[..148]
            .iter()
            .chain(&block[156..])
            .fold(0u32, |a, b| a + u32::from(*b))
            + 8 * 32;
        match header.cksum() {
            Ok(c) if c == sum => Ok(Some(header)),
            _ => Err(corrupt(
                "broken tar header after the last good member: archive header checksum mismatch",
                pos,
                None,
            )),
        }
    }

    fn entry_size(&self, header: &Header, pending: &Pending) -> Result<u64, ScanError> {
        let et = header.entry_type();
        let is_ext = et.is_gnu_longname()
            || et.is_gnu_longlink()
            || et.is_pax_local_extensions()
            || et.is_pax_global_extensions();
        if !is_ext
            && let Some(pax) = &pending.pax
            && let Some(n) = pax_size(pax)
        {
            return Ok(n);
        }
        header
            .entry_size()
            .map_err(|e| corrupt(format!("invalid size field: {e}"), self.next, None))
    }

    fn extension_data(
        &self,
        win: &mut Window,
        data_pos: u64,
        size: u64,
        header: &Header,
    ) -> Result<Vec<u8>, ScanError> {
        if size > MAX_EXTENSION_BYTES {
            return Err(corrupt(
                format!(
                    "a {:?} extension header of {size} bytes (more than {MAX_EXTENSION_BYTES})",
                    header.entry_type()
                ),
                self.next,
                None,
            ));
        }
        let mut bytes = vec![0u8; size as usize];
        let got = win
            .read_exact_at(data_pos, &mut bytes)
            .map_err(|e| ScanError::Io(e, data_pos))?;
        if (got as u64) < size {
            return Err(corrupt(
                format!("the tar is truncated inside an extension header ({got} of {size} bytes)"),
                data_pos + got as u64,
                None,
            ));
        }
        Ok(bytes)
    }
}

impl Default for Scanner {
    fn default() -> Self {
        Self::new()
    }
}

/// The PAX `size`, read as the tar crate does (a bad record or value is ignored).
fn pax_size(pax: &[u8]) -> Option<u64> {
    for ext in PaxExtensions::new(pax) {
        let ext = ext.ok()?;
        if ext.key_bytes() == b"size" {
            return ext.value().ok()?.parse().ok();
        }
    }
    None
}

/// `size` rounded up to whole blocks.
fn padded(size: u64, at: u64) -> Result<u64, ScanError> {
    size.checked_add(BLOCK - 1)
        .map(|n| n & !(BLOCK - 1))
        .ok_or_else(|| corrupt("size overflow", at, None))
}

/// The name the tar crate gives the member.
fn member_name(header: &Header, pending: &Pending) -> Vec<u8> {
    if let Some(long) = &pending.long_name {
        let end = if long.last() == Some(&0) {
            long.len() - 1
        } else {
            long.len()
        };
        return long[..end].to_vec();
    }
    if let Some(pax) = &pending.pax
        && let Some(path) = PaxExtensions::new(pax)
            .filter_map(Result::ok)
            .find(|e| e.key_bytes() == b"path")
    {
        return path.value_bytes().to_vec();
    }
    header.path_bytes().into_owned()
}

/// GNU sparse members may carry extra sparse-map blocks before their data.
fn skip_sparse_blocks(win: &mut Window, header: &Header, data_pos: u64) -> Result<u64, ScanError> {
    let Some(gnu) = header.as_gnu() else {
        return Err(corrupt(
            "sparse entry type listed but not GNU header",
            data_pos - BLOCK,
            None,
        ));
    };
    let mut pos = data_pos;
    let mut extended = gnu.isextended[0] == 1;
    while extended {
        let mut block = [0u8; BLOCK as usize];
        let got = win
            .read_exact_at(pos, &mut block)
            .map_err(|e| ScanError::Io(e, pos))?;
        if got < block.len() {
            return Err(corrupt(
                "the tar is truncated inside a sparse map",
                pos,
                None,
            ));
        }
        extended = block[504] == 1;
        pos += BLOCK;
    }
    Ok(pos)
}

//! One member of the archive: its metadata and a reader of its data.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

use super::{EntryMeta, ExtractError, TarError, TarReader};

/// The largest buffer [`Entry::write_to_file`] uses.
const COPY_BUF: u64 = 1 << 20;

/// A member being read. Its data reads as the expanded file (holes of a
/// sparse file as zeros; nothing for a refused member or a header-only
/// type). Dropping it unread is fine: the next [`TarReader::next_entry`]
/// skips the rest.
pub struct Entry<'a, R: Read> {
    reader: &'a mut TarReader<R>,
    meta: EntryMeta,
    /// Bytes of the expanded data handed out so far.
    logical: u64,
    /// The sparse run at or after `logical`.
    seg: usize,
}

impl<'a, R: Read> Entry<'a, R> {
    pub(super) fn new(reader: &'a mut TarReader<R>, meta: EntryMeta) -> Self {
        Entry {
            reader,
            meta,
            logical: 0,
            seg: 0,
        }
    }

    pub fn meta(&self) -> &EntryMeta {
        &self.meta
    }

    /// The archive's input, for positioned reads beside the stream (see
    /// [`TarReader::get_mut`]).
    pub fn input_mut(&mut self) -> &mut R {
        self.reader.get_mut()
    }

    /// Reads expanded data; `Ok(0)` at its end. A truncated archive is a
    /// [`TarError::Corrupt`], a failing input a [`TarError::Io`].
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        if self.meta.refusal.is_some() || self.logical >= self.meta.size || buf.is_empty() {
            return Ok(0);
        }
        let left = self.meta.size - self.logical;
        let n = clamp(buf.len(), left);
        let got = match &self.meta.sparse {
            None => self.reader.read_area(&mut buf[..n])?,
            Some(map) => {
                let segs = &map.segments;
                while self.seg < segs.len()
                    && self.logical >= segs[self.seg].offset + segs[self.seg].len
                {
                    self.seg += 1;
                }
                match segs.get(self.seg) {
                    Some(s) if self.logical >= s.offset => {
                        let n = clamp(n, s.offset + s.len - self.logical);
                        self.reader.read_area(&mut buf[..n])?
                    }
                    next => {
                        let hole_end = next.map_or(map.real_size, |s| s.offset);
                        let n = clamp(n, hole_end - self.logical);
                        buf[..n].fill(0);
                        n
                    }
                }
            }
        };
        self.logical += got as u64;
        Ok(got)
    }

    /// Writes the member's expanded data to `file` from offset 0 (truncating
    /// it first). A sparse member's holes are seeked over and the file is
    /// extended with `set_len`, so only its data takes disk space. Returns
    /// the file's size; writes nothing for a refused member. `keep_going` is
    /// asked between chunks.
    pub fn write_to_file(
        &mut self,
        file: &mut File,
        keep_going: &dyn Fn() -> bool,
    ) -> Result<u64, ExtractError> {
        if self.meta.refusal.is_some() {
            return Ok(0);
        }
        if self.logical != 0 {
            let e = io::Error::other("write_to_file called after read_data on the same entry");
            return Err(ExtractError::Write(e));
        }
        file.set_len(0).map_err(ExtractError::Write)?;
        let size = self.meta.size;
        match self.meta.sparse.take() {
            None => self.copy_stored(file, size - self.logical, keep_going)?,
            Some(map) => {
                let res = self.write_sparse(file, &map, keep_going);
                self.meta.sparse = Some(map);
                res?;
            }
        }
        self.logical = size;
        Ok(size)
    }

    fn write_sparse(
        &mut self,
        file: &mut File,
        map: &super::SparseMap,
        keep_going: &dyn Fn() -> bool,
    ) -> Result<(), ExtractError> {
        for s in map.segments.iter().filter(|s| s.len > 0) {
            file.seek(SeekFrom::Start(s.offset))
                .map_err(ExtractError::Write)?;
            self.copy_stored(file, s.len, keep_going)?;
        }
        file.set_len(map.real_size).map_err(ExtractError::Write)
    }

    /// Copies `n` stored bytes to the file's current position.
    fn copy_stored(
        &mut self,
        file: &mut File,
        mut n: u64,
        keep_going: &dyn Fn() -> bool,
    ) -> Result<(), ExtractError> {
        let mut buf = vec![0u8; clamp(COPY_BUF as usize, n)];
        while n > 0 {
            if !keep_going() {
                return Err(ExtractError::Cancelled);
            }
            let want = clamp(buf.len(), n);
            let got = self.reader.read_area(&mut buf[..want])?;
            debug_assert!(got > 0, "a validated data area holds every run");
            if got == 0 {
                break;
            }
            file.write_all(&buf[..got]).map_err(ExtractError::Write)?;
            n -= got as u64;
        }
        Ok(())
    }
}

fn clamp(len: usize, limit: u64) -> usize {
    usize::try_from(limit).map_or(len, |l| len.min(l))
}

impl<R: Read> Read for Entry<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_data(buf).map_err(TarError::into_io)
    }
}

//! Positioned reads of a tar through one small buffer: headers, JSON members
//! and image heads are read; everything else is never touched. The tar is a
//! local file or a remote object read by range requests
//! ([`shardprep_remote::RangedObject`]).

use std::fs::File;
use std::io::{self, BufRead, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

/// Bytes fetched at once around a position (a header, a JSON, an image head).
pub const WINDOW_BYTES: usize = 16 << 10;
/// Bytes fetched when a reader of one member steps outside the window (a
/// JPEG's next segment marker after a seek over EXIF): a small read.
pub const STEP_BYTES: usize = 2 << 10;

/// Where a [`Window`] reads from.
enum Source {
    Local(File),
    Remote(Box<shardprep_remote::RangedObject>),
}

impl Source {
    /// Bytes at `pos`: 0 only at the end; a remote read may be short.
    fn read_at(&mut self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        match self {
            Source::Local(f) => f.read_at(buf, pos),
            Source::Remote(r) => r.read_at(buf, pos),
        }
    }
}

/// A tar read at chosen offsets, with one buffered window and a count of
/// the bytes really read.
pub struct Window {
    file: Source,
    len: u64,
    buf: Vec<u8>,
    buf_start: u64,
    bytes_read: u64,
}

impl Window {
    /// Wraps an open file of `len` bytes.
    pub fn new(file: File, len: u64) -> Self {
        Self::with_source(Source::Local(file), len)
    }

    /// Wraps a remote object opened for range requests (its size is the
    /// first response's).
    pub fn remote(obj: shardprep_remote::RangedObject) -> Self {
        let len = obj.size();
        Self::with_source(Source::Remote(Box::new(obj)), len)
    }

    fn with_source(file: Source, len: u64) -> Self {
        Window {
            file,
            len,
            buf: Vec::with_capacity(WINDOW_BYTES),
            buf_start: 0,
            bytes_read: 0,
        }
    }

    /// Whether the tar is read by range requests (it has no local path).
    pub fn is_remote(&self) -> bool {
        matches!(self.file, Source::Remote(_))
    }

    /// The file's size.
    pub fn file_len(&self) -> u64 {
        self.len
    }

    /// Bytes read from the file so far (remote: transferred by range requests).
    pub fn bytes_read(&self) -> u64 {
        match &self.file {
            Source::Local(_) => self.bytes_read,
            Source::Remote(r) => r.bytes_fetched(),
        }
    }

    /// Range requests made so far (0 for a local file).
    pub fn requests(&self) -> u64 {
        match &self.file {
            Source::Local(_) => 0,
            Source::Remote(r) => r.requests(),
        }
    }

    /// The buffered bytes from `pos` on (refilled when `pos` is outside the
    /// window); empty at the end of the file.
    pub fn bytes_at(&mut self, pos: u64) -> io::Result<&[u8]> {
        self.bytes_at_with(pos, WINDOW_BYTES)
    }

    /// As [`Window::bytes_at`], refilling only `fetch` bytes.
    fn bytes_at_with(&mut self, pos: u64, fetch: usize) -> io::Result<&[u8]> {
        let end = self.buf_start + self.buf.len() as u64;
        if pos < self.buf_start || pos >= end {
            self.refill(pos, fetch)?;
        }
        let from = (pos - self.buf_start) as usize;
        Ok(&self.buf[from.min(self.buf.len())..])
    }

    fn refill(&mut self, pos: u64, fetch: usize) -> io::Result<()> {
        let want = (self.len.saturating_sub(pos)).min(fetch as u64) as usize;
        self.buf.clear();
        self.buf.resize(want, 0);
        self.buf_start = pos;
        let got = self.pread_full(pos, want)?;
        self.buf.truncate(got);
        Ok(())
    }

    /// Fills `self.buf[..want]` from file offset `pos`; returns the bytes read.
    fn pread_full(&mut self, pos: u64, want: usize) -> io::Result<usize> {
        let mut got = 0;
        while got < want {
            match self
                .file
                .read_at(&mut self.buf[got..want], pos + got as u64)
            {
                Ok(0) => break,
                // A remote source gives what its last range holds: enough for the window.
                Ok(n) if matches!(self.file, Source::Remote(_)) => {
                    got += n;
                    break;
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.bytes_read += got as u64;
        Ok(got)
    }

    /// Reads exactly `out.len()` bytes at `pos` (from the window when they
    /// are in it, else straight from the file). Short only at the file's end.
    pub fn read_exact_at(&mut self, pos: u64, out: &mut [u8]) -> io::Result<usize> {
        let end = self.buf_start + self.buf.len() as u64;
        let in_window = pos >= self.buf_start && pos + out.len() as u64 <= end;
        if !in_window && out.len() < WINDOW_BYTES / 2 {
            self.refill(pos, WINDOW_BYTES)?;
        }
        let end = self.buf_start + self.buf.len() as u64;
        if pos >= self.buf_start && pos + out.len() as u64 <= end {
            let from = (pos - self.buf_start) as usize;
            out.copy_from_slice(&self.buf[from..from + out.len()]);
            return Ok(out.len());
        }
        let mut got = 0;
        while got < out.len() {
            match self.file.read_at(&mut out[got..], pos + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.bytes_read += got as u64;
        Ok(got)
    }

    /// A reader over `len` bytes at `start`, seekable without reading.
    pub fn member(&mut self, start: u64, len: u64) -> MemberReader<'_> {
        MemberReader {
            win: self,
            start,
            len,
            pos: 0,
        }
    }
}

/// The window as a stream (what [`crate::tar_reader::TarReader::seeking`]
/// walks): reads go through the window from a cursor, seeks only move it.
pub struct Cursor {
    win: Window,
    pos: u64,
}

impl Cursor {
    /// A cursor at the start of the file.
    pub fn new(win: Window) -> Self {
        Cursor { win, pos: 0 }
    }

    /// The window, for positioned reads (the cursor stays where it is).
    pub fn window(&mut self) -> &mut Window {
        &mut self.win
    }
}

impl Read for Cursor {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.win.read_exact_at(self.pos, out)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Cursor {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.win.len.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "seek before the file start")
        })?;
        Ok(self.pos)
    }
}

/// One member's data as a `BufRead + Seek` (what `imagesize` walks): seeks
/// move a cursor, only the bytes asked for are read.
pub struct MemberReader<'a> {
    win: &'a mut Window,
    start: u64,
    len: u64,
    pos: u64,
}

impl BufRead for MemberReader<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos >= self.len {
            return Ok(&[]);
        }
        let left = (self.len - self.pos) as usize;
        let bytes = self.win.bytes_at_with(self.start + self.pos, STEP_BYTES)?;
        Ok(&bytes[..bytes.len().min(left)])
    }
    fn consume(&mut self, amt: usize) {
        self.pos += amt as u64;
    }
}

impl Read for MemberReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = {
            let avail = self.fill_buf()?;
            let n = avail.len().min(out.len());
            out[..n].copy_from_slice(&avail[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

impl Seek for MemberReader<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "seek before the member start")
        })?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn window_over(bytes: &[u8]) -> Window {
        let mut f = tempfile::tempfile().expect("temp file");
        f.write_all(bytes).expect("write");
        Window::new(f, bytes.len() as u64)
    }

    #[test]
    fn seeking_a_member_reads_only_what_is_asked() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut w = window_over(&data);
        let mut r = w.member(1000, 150_000);
        let mut b = [0u8; 4];
        r.read_exact(&mut b).expect("read");
        assert_eq!(b, data[1000..1004]);
        r.seek(SeekFrom::Current(100_000)).expect("seek");
        r.read_exact(&mut b).expect("read");
        assert_eq!(b, data[101_004..101_008]);
        r.seek(SeekFrom::Start(149_998)).expect("seek");
        let mut tail = Vec::new();
        r.read_to_end(&mut tail).expect("read");
        assert_eq!(tail, data[150_998..151_000], "a member ends at its length");
        assert!(
            w.bytes_read() <= 3 * WINDOW_BYTES as u64,
            "read {}",
            w.bytes_read()
        );
    }

    #[test]
    fn a_cursor_reads_from_where_it_seeked() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 241) as u8).collect();
        let mut c = Cursor::new(window_over(&data));
        let mut b = [0u8; 8];
        c.read_exact(&mut b).expect("read");
        assert_eq!(b, data[..8]);
        c.seek(SeekFrom::Current(60_000)).expect("seek");
        c.read_exact(&mut b).expect("read");
        assert_eq!(b, data[60_008..60_016]);
        assert_eq!(c.seek(SeekFrom::End(0)).expect("end"), 100_000);
        assert_eq!(c.read(&mut b).expect("eof"), 0);
        assert!(c.window().bytes_read() <= 2 * WINDOW_BYTES as u64);
    }

    #[test]
    fn exact_reads_cross_the_window_and_stop_at_the_end() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        let mut w = window_over(&data);
        let mut big = vec![0u8; 40_000];
        assert_eq!(w.read_exact_at(10, &mut big).expect("read"), 40_000);
        assert_eq!(big, data[10..40_010]);
        let mut small = [0u8; 512];
        assert_eq!(w.read_exact_at(99_800, &mut small).expect("read"), 200);
        assert_eq!(small[..200], data[99_800..]);
    }
}

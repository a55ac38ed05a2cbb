//! Pages of a SQLite file being written: the file's page allocator
//! ([`Pager`]), one b-tree page being filled ([`PageBuf`]) and payloads
//! spilled to overflow pages ([`Pager::cell_payload`]).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// The page size (SQLite's `page_size`; no reserved bytes, so the usable size too).
pub(crate) const PAGE: usize = 16384;

/// The page holding the file's byte 2^30, where SQLite's locks live:
/// never part of a b-tree (its "lock-byte page").
const LOCK_PAGE: u32 = (0x4000_0000 / PAGE) as u32 + 1;

/// B-tree page types.
pub(crate) const INTERIOR_INDEX: u8 = 2;
pub(crate) const INTERIOR_TABLE: u8 = 5;
pub(crate) const LEAF_INDEX: u8 = 10;
pub(crate) const LEAF_TABLE: u8 = 13;

/// Hands out page numbers and writes pages at their place in the file.
/// Page 1 (the header and the schema) is reserved and written last.
pub(crate) struct Pager {
    file: File,
    next: u32,
}

impl Pager {
    pub(crate) fn new(file: File) -> Self {
        Pager { file, next: 2 }
    }

    /// Pages in the file so far (page 1 included).
    pub(crate) fn pages(&self) -> u32 {
        self.next - 1
    }

    pub(crate) fn alloc(&mut self) -> u32 {
        if self.next == LOCK_PAGE {
            // Left as a hole: no b-tree may use it.
            self.next += 1;
        }
        let n = self.next;
        self.next += 1;
        n
    }

    /// Makes the pages written so far durable.
    pub(crate) fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    pub(crate) fn write(&self, pgno: u32, page: &[u8]) -> io::Result<()> {
        self.file
            .write_all_at(page, u64::from(pgno - 1) * PAGE as u64)
    }

    /// Appends `payload` as a cell keeps it: its size as a varint, the part
    /// kept on the page (`max_local`: the most a cell of this b-tree keeps,
    /// SQLite's X) and, past that, the number of the first overflow page, the
    /// rest written to overflow pages now. `rowid` goes between size and
    /// payload (table leaves).
    pub(crate) fn cell_payload(
        &mut self,
        out: &mut Vec<u8>,
        rowid: Option<i64>,
        payload: &[u8],
        max_local: usize,
    ) -> io::Result<()> {
        super::record::put_varint(out, payload.len() as u64);
        if let Some(r) = rowid {
            super::record::put_varint(out, r as u64);
        }
        let local = local_size(payload.len(), max_local);
        out.extend_from_slice(&payload[..local]);
        if local < payload.len() {
            let first = self.overflow(&payload[local..])?;
            out.extend_from_slice(&first.to_be_bytes());
        }
        Ok(())
    }

    /// Writes `rest` to a chain of overflow pages; the first one's number.
    fn overflow(&mut self, rest: &[u8]) -> io::Result<u32> {
        let chunks: Vec<&[u8]> = rest.chunks(PAGE - 4).collect();
        let pgnos: Vec<u32> = chunks.iter().map(|_| self.alloc()).collect();
        let mut page = vec![0u8; PAGE];
        for (i, chunk) in chunks.iter().enumerate() {
            let next = pgnos.get(i + 1).copied().unwrap_or(0);
            page.fill(0);
            page[..4].copy_from_slice(&next.to_be_bytes());
            page[4..4 + chunk.len()].copy_from_slice(chunk);
            self.write(pgnos[i], &page)?;
        }
        Ok(pgnos[0])
    }
}

/// SQLite's X for table leaves: the largest payload kept whole on the page.
pub(crate) const TABLE_MAX_LOCAL: usize = PAGE - 35;
/// SQLite's X for index pages (leaf and interior).
pub(crate) const INDEX_MAX_LOCAL: usize = (PAGE - 12) * 64 / 255 - 23;
/// SQLite's M: the least a spilled payload keeps on the page.
const MIN_LOCAL: usize = (PAGE - 12) * 32 / 255 - 23;

/// Bytes of a `size`-byte payload kept on the page (SQLite's rule).
fn local_size(size: usize, max_local: usize) -> usize {
    if size <= max_local {
        return size;
    }
    let k = MIN_LOCAL + (size - MIN_LOCAL) % (PAGE - 4);
    if k <= max_local { k } else { MIN_LOCAL }
}

/// A b-tree page being filled with cells in key order.
pub(crate) struct PageBuf {
    kind: u8,
    /// Where the b-tree header starts: 100 on page 1, after the file header.
    at: usize,
    cells: Vec<u8>,
    ends: Vec<usize>,
}

impl PageBuf {
    pub(crate) fn new(kind: u8) -> Self {
        Self::at(kind, 0)
    }

    pub(crate) fn at(kind: u8, at: usize) -> Self {
        PageBuf {
            kind,
            at,
            cells: Vec::with_capacity(PAGE),
            ends: Vec::new(),
        }
    }

    fn header_len(&self) -> usize {
        match self.kind {
            INTERIOR_INDEX | INTERIOR_TABLE => 12,
            _ => 8,
        }
    }

    /// Whether one more cell of `len` bytes fits.
    pub(crate) fn fits(&self, len: usize) -> bool {
        self.at + self.header_len() + 2 * (self.ends.len() + 1) + self.cells.len() + len <= PAGE
    }

    pub(crate) fn push(&mut self, cell: &[u8]) {
        self.cells.extend_from_slice(cell);
        self.ends.push(self.cells.len());
    }

    /// Pushes the cell of `body` after its child page number (interior pages).
    pub(crate) fn push_with_child(&mut self, child: Option<u32>, body: &[u8]) {
        if let Some(c) = child {
            self.cells.extend_from_slice(&c.to_be_bytes());
        }
        self.push(body);
    }

    /// Takes the last cell off the page.
    pub(crate) fn pop(&mut self) -> Option<Vec<u8>> {
        self.ends.pop()?;
        let start = self.ends.last().copied().unwrap_or(0);
        let cell = self.cells[start..].to_vec();
        self.cells.truncate(start);
        Some(cell)
    }

    /// The page's bytes (`right`: an interior page's right-most child),
    /// cells packed at the page's end; the page is left empty.
    pub(crate) fn render_into(&mut self, page: &mut [u8], right: u32) {
        let n = self.ends.len();
        let content = PAGE - self.cells.len();
        let h = self.at;
        page[h] = self.kind;
        page[h + 1..h + 3].fill(0);
        page[h + 3..h + 5].copy_from_slice(&(n as u16).to_be_bytes());
        page[h + 5..h + 7].copy_from_slice(&(content as u16).to_be_bytes());
        page[h + 7] = 0;
        if self.header_len() == 12 {
            page[h + 8..h + 12].copy_from_slice(&right.to_be_bytes());
        }
        let ptrs = h + self.header_len();
        page[ptrs + 2 * n..content].fill(0);
        // Cell i sits below cell i-1: the first cell ends the page.
        let mut end = PAGE;
        let mut start = 0;
        for (i, &cell_end) in self.ends.iter().enumerate() {
            let len = cell_end - start;
            let at = end - len;
            page[at..end].copy_from_slice(&self.cells[start..cell_end]);
            page[ptrs + 2 * i..ptrs + 2 * i + 2].copy_from_slice(&(at as u16).to_be_bytes());
            end = at;
            start = cell_end;
        }
        self.cells.clear();
        self.ends.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spilled_payload_keeps_sqlites_local_share() {
        assert_eq!(local_size(100, INDEX_MAX_LOCAL), 100);
        let big = INDEX_MAX_LOCAL + 1;
        let local = local_size(big, INDEX_MAX_LOCAL);
        assert!((MIN_LOCAL..=INDEX_MAX_LOCAL).contains(&local));
        assert_eq!((INDEX_MAX_LOCAL, MIN_LOCAL), (4086, 2031));
    }

    #[test]
    fn a_popped_cell_leaves_the_page_as_before() {
        let mut p = PageBuf::new(LEAF_INDEX);
        p.push(b"abc");
        p.push(b"de");
        assert_eq!(p.pop().as_deref(), Some(&b"de"[..]));
        let mut page = vec![0u8; PAGE];
        p.render_into(&mut page, 0);
        assert_eq!(&page[PAGE - 3..], b"abc");
        assert_eq!(u16::from_be_bytes([page[3], page[4]]), 1);
    }
}

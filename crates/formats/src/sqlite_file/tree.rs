//! B-trees written bottom-up from cells in key order, as SQLite's file
//! format lays them out: a page is written once it is full, and each level
//! hands its pages up to the level above, which is written the same way.
//! A table b-tree ([`TableTree`]) keeps every row in its leaves; an index
//! b-tree ([`IndexTree`]) keeps each entry once: the entry that does not
//! fit on a full page moves up as the divider between it and the next.

use std::io;

use super::page::{
    INDEX_MAX_LOCAL, INTERIOR_INDEX, INTERIOR_TABLE, LEAF_INDEX, LEAF_TABLE, PAGE, PageBuf, Pager,
    TABLE_MAX_LOCAL,
};

/// Renders and writes `buf` as a new page; its number.
fn write_page(
    pager: &mut Pager,
    buf: &mut PageBuf,
    right: u32,
    scratch: &mut [u8],
) -> io::Result<u32> {
    let pgno = pager.alloc();
    buf.render_into(scratch, right);
    pager.write(pgno, scratch)?;
    Ok(pgno)
}

/// A table b-tree (rowid keys), rows added in rowid order.
pub(crate) struct TableTree {
    /// `levels[0]` is the leaf being filled; above, interior pages.
    levels: Vec<PageBuf>,
    /// The largest rowid under each level's page being filled.
    last: Vec<i64>,
    cell: Vec<u8>,
    scratch: Vec<u8>,
}

impl TableTree {
    pub(crate) fn new() -> Self {
        TableTree {
            levels: vec![PageBuf::new(LEAF_TABLE)],
            last: vec![0],
            cell: Vec::new(),
            scratch: vec![0u8; PAGE],
        }
    }

    /// Adds the row `rowid` (larger than any before) with its record.
    pub(crate) fn push(&mut self, pager: &mut Pager, rowid: i64, record: &[u8]) -> io::Result<()> {
        let mut cell = std::mem::take(&mut self.cell);
        cell.clear();
        pager.cell_payload(&mut cell, Some(rowid), record, TABLE_MAX_LOCAL)?;
        if !self.levels[0].fits(cell.len()) {
            let (pgno, max) = (
                write_page(pager, &mut self.levels[0], 0, &mut self.scratch)?,
                self.last[0],
            );
            self.push_child(pager, 1, pgno, max)?;
        }
        self.levels[0].push(&cell);
        self.last[0] = rowid;
        self.cell = cell;
        Ok(())
    }

    /// Adds child `pgno` (rows up to `max`) to interior level `k`. A full
    /// page keeps its last child as its right-most pointer and is written.
    fn push_child(&mut self, pager: &mut Pager, k: usize, pgno: u32, max: i64) -> io::Result<()> {
        if k == self.levels.len() {
            self.levels.push(PageBuf::new(INTERIOR_TABLE));
            self.last.push(0);
        }
        let mut cell = pgno.to_be_bytes().to_vec();
        super::record::put_varint(&mut cell, max as u64);
        if !self.levels[k].fits(cell.len()) {
            let right = self.levels[k].pop().map_or(0, |c| child_of(&c));
            let page = write_page(pager, &mut self.levels[k], right, &mut self.scratch)?;
            let under = self.last[k];
            self.push_child(pager, k + 1, page, under)?;
        }
        self.levels[k].push(&cell);
        self.last[k] = max;
        Ok(())
    }

    /// Writes the pages left; the root's page number.
    pub(crate) fn finish(mut self, pager: &mut Pager) -> io::Result<u32> {
        let mut child = write_page(pager, &mut self.levels[0], 0, &mut self.scratch)?;
        let mut k = 1;
        while k < self.levels.len() {
            let mut level = std::mem::replace(&mut self.levels[k], PageBuf::new(INTERIOR_TABLE));
            child = write_page(pager, &mut level, child, &mut self.scratch)?;
            k += 1;
        }
        Ok(child)
    }
}

/// The child page number an interior cell starts with.
fn child_of(cell: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&cell[..4]);
    u32::from_be_bytes(b)
}

/// One level of an index b-tree being filled: its page, and a full page
/// kept back with the divider that did not fit on it until the next entry
/// comes (so that no page is ever left empty).
struct IndexLevel {
    leaf: bool,
    page: PageBuf,
    /// A full page, its right-most child (interior levels) and the divider after it.
    held: Option<(PageBuf, u32, Vec<u8>)>,
}

/// What an index level hands up: a written page and the divider after it.
type Up = Option<(u32, Vec<u8>)>;

impl IndexLevel {
    fn new(leaf: bool) -> Self {
        let kind = if leaf { LEAF_INDEX } else { INTERIOR_INDEX };
        IndexLevel {
            leaf,
            page: PageBuf::new(kind),
            held: None,
        }
    }

    /// Adds an entry (`body`: payload size, local payload, overflow page)
    /// with the child page before it (`child`, interior levels).
    fn push(
        &mut self,
        pager: &mut Pager,
        child: Option<u32>,
        body: &[u8],
        scratch: &mut [u8],
    ) -> io::Result<Up> {
        let up = match self.held.take() {
            Some((mut full, right, divider)) => {
                let pgno = write_page(pager, &mut full, right, scratch)?;
                Some((pgno, divider))
            }
            None => None,
        };
        let len = body.len() + if child.is_some() { 4 } else { 0 };
        if self.page.fits(len) {
            self.page.push_with_child(child, body);
            return Ok(up);
        }
        // `up` is None here: a page just emptied holds any one entry.
        let kind = if self.leaf {
            LEAF_INDEX
        } else {
            INTERIOR_INDEX
        };
        let full = std::mem::replace(&mut self.page, PageBuf::new(kind));
        self.held = Some((full, child.unwrap_or(0), body.to_vec()));
        Ok(up)
    }

    /// Writes the level's last page (`right`: its right-most child); what
    /// goes up before it, and its number.
    fn finish(
        mut self,
        pager: &mut Pager,
        right: u32,
        scratch: &mut [u8],
    ) -> io::Result<(Up, u32)> {
        let mut up = None;
        if let Some((mut full, full_right, divider)) = self.held.take() {
            // The divider and `right` would be alone: the full page's last
            // entry moves up instead, the divider comes down.
            let last = full.pop().unwrap_or_default();
            let (last_child, last_body) = split_child(&last, !self.leaf);
            let pgno = write_page(pager, &mut full, last_child.unwrap_or(0), scratch)?;
            up = Some((pgno, last_body));
            let child = (!self.leaf).then_some(full_right);
            self.page.push_with_child(child, &divider);
        }
        let pgno = write_page(pager, &mut self.page, right, scratch)?;
        Ok((up, pgno))
    }
}

fn split_child(cell: &[u8], interior: bool) -> (Option<u32>, Vec<u8>) {
    match interior {
        true => (Some(child_of(cell)), cell[4..].to_vec()),
        false => (None, cell.to_vec()),
    }
}

/// Appends the cell body of index entry `record` (its size, the part kept
/// on the page, the first overflow page): what [`IndexTree::push_body`] takes.
pub(crate) fn entry_body(pager: &mut Pager, out: &mut Vec<u8>, record: &[u8]) -> io::Result<()> {
    pager.cell_payload(out, None, record, INDEX_MAX_LOCAL)
}

/// An index b-tree, entries (records ending in the rowid) added in order.
pub(crate) struct IndexTree {
    levels: Vec<IndexLevel>,
    scratch: Vec<u8>,
    body: Vec<u8>,
}

impl IndexTree {
    pub(crate) fn new() -> Self {
        IndexTree {
            levels: vec![IndexLevel::new(true)],
            scratch: vec![0u8; PAGE],
            body: Vec::new(),
        }
    }

    /// Adds the entry `record` (not smaller than any before).
    pub(crate) fn push(&mut self, pager: &mut Pager, record: &[u8]) -> io::Result<()> {
        let mut body = std::mem::take(&mut self.body);
        body.clear();
        entry_body(pager, &mut body, record)?;
        let pushed = self.push_body(pager, &body);
        self.body = body;
        pushed
    }

    /// Adds an entry as [`entry_body`] made it (not smaller than any before).
    pub(crate) fn push_body(&mut self, pager: &mut Pager, body: &[u8]) -> io::Result<()> {
        match self.levels[0].push(pager, None, body, &mut self.scratch)? {
            Some((pgno, divider)) => self.push_at(pager, 1, pgno, divider),
            None => Ok(()),
        }
    }

    /// Adds child page `pgno` and the divider after it to interior level `k`.
    fn push_at(
        &mut self,
        pager: &mut Pager,
        mut k: usize,
        mut pgno: u32,
        mut divider: Vec<u8>,
    ) -> io::Result<()> {
        loop {
            if k == self.levels.len() {
                self.levels.push(IndexLevel::new(false));
            }
            match self.levels[k].push(pager, Some(pgno), &divider, &mut self.scratch)? {
                None => return Ok(()),
                Some(up) => (k, pgno, divider) = (k + 1, up.0, up.1),
            }
        }
    }

    /// Writes the pages left; the root's page number.
    pub(crate) fn finish(mut self, pager: &mut Pager) -> io::Result<u32> {
        let mut k = 0;
        let mut right = 0;
        loop {
            let level = std::mem::replace(&mut self.levels[k], IndexLevel::new(k == 0));
            let (up, pgno) = level.finish(pager, right, &mut self.scratch)?;
            if let Some((page, divider)) = up {
                self.push_at(pager, k + 1, page, divider)?;
            }
            if k + 1 == self.levels.len() {
                return Ok(pgno);
            }
            right = pgno;
            k += 1;
        }
    }
}

//! SQLite's file format written directly, for a database made once from
//! rows that come in key order (no SQL engine, no journal): b-tree pages
//! are filled bottom-up and written as they fill ([`tree`]), page 1 (the
//! file header and the schema table) last. The result is an ordinary
//! SQLite database (`PRAGMA integrity_check` passes on it); it is what
//! SQLite's own bulk load (`CREATE INDEX` after the rows) lays out, for a
//! fraction of the CPU.

pub(crate) mod page;
pub(crate) mod record;
pub(crate) mod tree;

use std::io;

use page::{LEAF_TABLE, PAGE, PageBuf, Pager, TABLE_MAX_LOCAL};
use record::Value;

/// The SQLite version the file header names as its last writer (the one
/// whose format this follows).
const SQLITE_VERSION_NUMBER: u32 = 3_050_002;

/// One row of the schema table (`sqlite_schema`).
pub(crate) struct SchemaEntry<'a> {
    /// `table` or `index`.
    pub kind: &'a str,
    pub name: &'a str,
    pub table: &'a str,
    pub root: u32,
    /// The `CREATE` statement as SQLite keeps it (`None` for a UNIQUE
    /// constraint's automatic index).
    pub sql: Option<&'a str>,
}

/// Writes page 1: the file header (`pages` pages in all) and the schema
/// table, which must fit on it.
pub(crate) fn write_first_page(pager: &Pager, schema: &[SchemaEntry<'_>]) -> io::Result<()> {
    let mut leaf = PageBuf::at(LEAF_TABLE, 100);
    let (mut cell, mut record) = (Vec::new(), Vec::new());
    for (i, e) in schema.iter().enumerate() {
        record.clear();
        let sql = e.sql.map_or(Value::Null, Value::Text);
        let values = [
            Value::Text(e.kind),
            Value::Text(e.name),
            Value::Text(e.table),
            Value::Int(i64::from(e.root)),
            sql,
        ];
        record::put_record(&mut record, &values);
        cell.clear();
        record::put_varint(&mut cell, record.len() as u64);
        record::put_varint(&mut cell, i as u64 + 1);
        cell.extend_from_slice(&record);
        if record.len() > TABLE_MAX_LOCAL || !leaf.fits(cell.len()) {
            return Err(io::Error::other("the schema does not fit on page 1"));
        }
        leaf.push(&cell);
    }
    let mut page = vec![0u8; PAGE];
    page[..100].copy_from_slice(&file_header(pager.pages()));
    leaf.render_into(&mut page, 0);
    pager.write(1, &page)
}

/// The 100-byte file header of a database of `pages` pages.
fn file_header(pages: u32) -> [u8; 100] {
    let mut h = [0u8; 100];
    h[..16].copy_from_slice(b"SQLite format 3\0");
    h[16..18].copy_from_slice(&(PAGE as u16).to_be_bytes());
    // Rollback-journal format versions, no reserved bytes, the fixed
    // payload fractions.
    h[18..24].copy_from_slice(&[1, 1, 0, 64, 32, 32]);
    h[24..28].copy_from_slice(&1u32.to_be_bytes()); // change counter
    h[28..32].copy_from_slice(&pages.to_be_bytes());
    h[40..44].copy_from_slice(&1u32.to_be_bytes()); // schema cookie
    h[44..48].copy_from_slice(&4u32.to_be_bytes()); // schema format
    h[56..60].copy_from_slice(&1u32.to_be_bytes()); // UTF-8
    h[92..96].copy_from_slice(&1u32.to_be_bytes()); // version-valid-for = change counter
    h[96..100].copy_from_slice(&SQLITE_VERSION_NUMBER.to_be_bytes());
    h
}

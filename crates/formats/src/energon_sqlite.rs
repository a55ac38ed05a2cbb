//! Energon's `index.sqlite` as `energon prepare` (7.4.1) makes it — tables
//! `samples` and `sample_parts`, the UNIQUE key's index and energon's three
//! indexes, 16 KiB pages — written directly in SQLite's file format
//! (`crate::sqlite_file`). A shard's rows are written as it is added (in
//! any order); the entries of the three indexes that start with the
//! shard's `tar_file_id` are encoded then and written in dataset order
//! (those of a shard added early wait for the shards before it); the key
//! index is sorted and written at the end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::FormatsError;
use crate::energon::{EnergonRows, EnergonShard};
use crate::energon_keys::KeySet;
use crate::sqlite_file::page::Pager;
use crate::sqlite_file::record::{Value, put_record};
use crate::sqlite_file::tree::{IndexTree, TableTree, entry_body};
use crate::sqlite_file::{SchemaEntry, write_first_page};

/// Bytes of index entries of shards added ahead of their turn that a build
/// holds before it gives up (the job's end then builds from the pieces).
const MAX_WAITING_BYTES: usize = 256 << 20;

/// `index.sqlite` being written at a private path; shards are added in
/// any order, each under its place in the dataset (energon's
/// `tar_file_id`). A key already added is left out (energon's
/// `sample_key` is unique): the first shard added keeps it.
pub struct SqliteBuild {
    path: PathBuf,
    pager: Pager,
    trees: Trees,
    /// Every key added, with its row.
    keys: KeySet,
    dups: Vec<(u64, String)>,
    /// The next shard whose index entries are written, and the encoded
    /// entries of those added ahead of it.
    next_id: u64,
    waiting: BTreeMap<u64, ShardEntries>,
    waiting_bytes: usize,
    /// Rows written so far: samples, parts.
    rows: (i64, i64),
    record: Vec<u8>,
}

/// The b-trees but the key index (written at the end).
struct Trees {
    samples: TableTree,
    parts: TableTree,
    by_tar: IndexTree,
    parts_seq: IndexTree,
    parts_full: IndexTree,
}

/// Entry bodies (`entry_body`) one after the other, and where each ends.
#[derive(Default)]
struct Bodies {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Bodies {
    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(a, &b)| &self.bytes[a..b])
    }
}

/// One shard's entries of the three indexes keyed by `tar_file_id`, in order.
#[derive(Default)]
struct ShardEntries {
    by_tar: Bodies,
    parts_seq: Bodies,
    parts_full: Bodies,
}

impl ShardEntries {
    fn bytes(&self) -> usize {
        self.by_tar.bytes.len() + self.parts_seq.bytes.len() + self.parts_full.bytes.len()
    }
}

impl SqliteBuild {
    /// Starts the build at `path`, which must not exist.
    pub fn create(path: &Path) -> Result<Self, FormatsError> {
        let file = std::fs::File::create_new(path).map_err(FormatsError::io("create", path))?;
        Ok(SqliteBuild {
            path: path.to_path_buf(),
            pager: Pager::new(file),
            trees: Trees::empty(),
            keys: KeySet::default(),
            dups: Vec::new(),
            next_id: 0,
            waiting: BTreeMap::new(),
            waiting_bytes: 0,
            rows: (0, 0),
            record: Vec::new(),
        })
    }

    /// Adds shard `id`'s rows (its samples whose key no shard added before
    /// has); its index entries are written once every shard before it is added.
    pub fn add(&mut self, id: u64, shard: &EnergonRows<'_>) -> Result<(), FormatsError> {
        if id < self.next_id || self.waiting.contains_key(&id) {
            return Err(FormatsError::Bad(format!(
                "energon's index: shard {id} added twice"
            )));
        }
        let path = self.path.clone();
        let entries = self
            .write_rows(id, shard)
            .map_err(FormatsError::io("write", &path))?;
        // Sorted now, merged with the other shards' keys at the end.
        self.keys.sort_run();
        self.waiting_bytes += entries.bytes();
        self.waiting.insert(id, entries);
        while let Some(entries) = self.waiting.remove(&self.next_id) {
            self.waiting_bytes -= entries.bytes();
            self.write_entries(&entries)
                .map_err(FormatsError::io("write", &path))?;
            self.next_id += 1;
        }
        if self.waiting_bytes > MAX_WAITING_BYTES {
            return Err(FormatsError::Bad(format!(
                "energon's index: more than {MAX_WAITING_BYTES} bytes wait for shard {}",
                self.next_id
            )));
        }
        Ok(())
    }

    /// Makes the pages written so far durable, so that the sync after
    /// [`SqliteBuild::finish`] has only the pages written since to wait for.
    pub fn write_back(&self) -> Result<(), FormatsError> {
        self.pager
            .sync_data()
            .map_err(FormatsError::io("sync", &self.path))
    }

    /// Keys left out so far as a repeat of a key added before: `(id, key)`.
    pub fn duplicates(&self) -> &[(u64, String)] {
        &self.dups
    }

    /// Writes the shard's rows; its index entries, encoded.
    fn write_rows(&mut self, id: u64, shard: &EnergonRows<'_>) -> std::io::Result<ShardEntries> {
        let tar = id as i64;
        let mut dup_index = foldhash::HashSet::default();
        let mut by_tar = Vec::with_capacity(shard.samples.len());
        self.keys.reserve(shard.samples.len());
        for &(key, index, offset, size) in &shard.samples {
            if !self.keys.insert(key, self.rows.0 + 1) {
                dup_index.insert(index);
                self.dups.push((id, key.to_string()));
                continue;
            }
            self.rows.0 += 1;
            let rowid = self.rows.0;
            let index = index as i64;
            self.record.clear();
            put_record(
                &mut self.record,
                &[
                    Value::Int(tar),
                    Value::Text(key),
                    Value::Int(index),
                    Value::Int(offset as i64),
                    Value::Int(size as i64),
                ],
            );
            self.trees
                .samples
                .push(&mut self.pager, rowid, &self.record)?;
            by_tar.push((index, rowid));
        }
        // Already in order unless the piece lists samples out of order.
        if !by_tar.is_sorted() {
            by_tar.sort_unstable();
        }
        let mut entries = ShardEntries::default();
        for (index, rowid) in by_tar {
            let entry = [Value::Int(tar), Value::Int(index), Value::Int(rowid)];
            self.encode(&mut entries.by_tar, &entry)?;
        }
        self.write_parts(tar, shard, &dup_index, &mut entries)?;
        Ok(entries)
    }

    /// Writes the parts of the samples written; their index entries, encoded.
    fn write_parts(
        &mut self,
        tar: i64,
        shard: &EnergonRows<'_>,
        dup_index: &foldhash::HashSet<u64>,
        entries: &mut ShardEntries,
    ) -> std::io::Result<()> {
        let mut seq = Vec::with_capacity(shard.parts.len());
        let mut full = Vec::with_capacity(shard.parts.len());
        for &(index, part, offset, size) in &shard.parts {
            if dup_index.contains(&index) {
                continue;
            }
            self.rows.1 += 1;
            let rowid = self.rows.1;
            let (index, offset, size) = (index as i64, offset as i64, size as i64);
            self.record.clear();
            put_record(
                &mut self.record,
                &[
                    Value::Int(tar),
                    Value::Int(index),
                    Value::Text(part),
                    Value::Int(offset),
                    Value::Int(size),
                ],
            );
            self.trees
                .parts
                .push(&mut self.pager, rowid, &self.record)?;
            seq.push((index, offset, rowid));
            full.push((index, part, offset, size, rowid));
        }
        if !seq.is_sorted() {
            seq.sort_unstable();
        }
        if !full.is_sorted() {
            if full.is_sorted_by_key(|f| f.0) {
                // Samples in order, their parts in tar order: sort each sample's few.
                full.chunk_by_mut(|a, b| a.0 == b.0)
                    .for_each(|parts| parts.sort_unstable());
            } else {
                full.sort_unstable();
            }
        }
        for (index, offset, rowid) in seq {
            let entry = [
                Value::Int(tar),
                Value::Int(index),
                Value::Int(offset),
                Value::Int(rowid),
            ];
            self.encode(&mut entries.parts_seq, &entry)?;
        }
        for (index, part, offset, size, rowid) in full {
            let entry = [
                Value::Int(tar),
                Value::Int(index),
                Value::Text(part),
                Value::Int(offset),
                Value::Int(size),
                Value::Int(rowid),
            ];
            self.encode(&mut entries.parts_full, &entry)?;
        }
        Ok(())
    }

    fn encode(&mut self, out: &mut Bodies, values: &[Value<'_>]) -> std::io::Result<()> {
        self.record.clear();
        put_record(&mut self.record, values);
        entry_body(&mut self.pager, &mut out.bytes, &self.record)?;
        out.ends.push(out.bytes.len());
        Ok(())
    }

    fn write_entries(&mut self, e: &ShardEntries) -> std::io::Result<()> {
        let (t, p) = (&mut self.trees, &mut self.pager);
        for (tree, bodies) in [
            (&mut t.by_tar, &e.by_tar),
            (&mut t.parts_seq, &e.parts_seq),
            (&mut t.parts_full, &e.parts_full),
        ] {
            for body in bodies.iter() {
                tree.push_body(p, body)?;
            }
        }
        Ok(())
    }

    /// Writes the key index, the trees' last pages and the schema; returns
    /// the keys left out. Every shard before the last one added must have
    /// been added.
    pub fn finish(mut self) -> Result<Vec<(u64, String)>, FormatsError> {
        if let Some(id) = self.waiting.keys().next() {
            return Err(FormatsError::Bad(format!(
                "energon's index: shard {id} waits for shard {}, which never came",
                self.next_id
            )));
        }
        let path = self.path.clone();
        self.write_end().map_err(FormatsError::io("write", &path))?;
        Ok(self.dups)
    }

    fn write_end(&mut self) -> std::io::Result<()> {
        let mut keys = std::mem::take(&mut self.keys);
        let mut by_key = IndexTree::new();
        for (key, rowid) in keys.sorted() {
            self.record.clear();
            put_record(&mut self.record, &[Value::Text(key), Value::Int(rowid)]);
            by_key.push(&mut self.pager, &self.record)?;
        }
        drop(keys);
        let p = &mut self.pager;
        let t = std::mem::replace(&mut self.trees, Trees::empty());
        let roots = [
            t.samples.finish(p)?,
            by_key.finish(p)?,
            t.parts.finish(p)?,
            t.by_tar.finish(p)?,
            t.parts_seq.finish(p)?,
            t.parts_full.finish(p)?,
        ];
        let schema: Vec<SchemaEntry<'_>> = SCHEMA
            .iter()
            .zip(roots)
            .map(|(&(kind, name, table, sql), root)| SchemaEntry {
                kind,
                name,
                table,
                root,
                sql,
            })
            .collect();
        write_first_page(p, &schema)
    }
}

impl Trees {
    fn empty() -> Self {
        Trees {
            samples: TableTree::new(),
            parts: TableTree::new(),
            by_tar: IndexTree::new(),
            parts_seq: IndexTree::new(),
            parts_full: IndexTree::new(),
        }
    }
}

/// Builds `index.sqlite` at `path` (which must not exist) from the shards'
/// pieces in dataset order ([`SqliteBuild`]). `next` yields
/// `(tar_file_id, piece)` one shard at a time. Returns the sample keys left
/// out as duplicates of an earlier shard's: `(tar_file_id, key)`.
pub fn build_sqlite(
    path: &Path,
    mut next: impl FnMut() -> Result<Option<(u64, EnergonShard)>, FormatsError>,
) -> Result<Vec<(u64, String)>, FormatsError> {
    let mut build = SqliteBuild::create(path)?;
    while let Some((id, shard)) = next()? {
        build.add(id, &shard.rows())?;
    }
    build.finish()
}

/// The names of the tables and indexes of energon's schema.
pub(crate) fn schema_names() -> impl Iterator<Item = &'static str> {
    SCHEMA.iter().map(|s| s.1)
}

/// The schema energon 7.4.1 creates, in its order: `(type, name, table,
/// sql)` as SQLite keeps them.
const SCHEMA: [(&str, &str, &str, Option<&str>); 6] = [
    (
        "table",
        "samples",
        "samples",
        Some(
            "CREATE TABLE samples (\n    tar_file_id INTEGER NOT NULL,\n    sample_key TEXT NOT NULL UNIQUE,\n    sample_index INTEGER NOT NULL,\n    byte_offset INTEGER,\n    byte_size INTEGER\n)",
        ),
    ),
    ("index", "sqlite_autoindex_samples_1", "samples", None),
    (
        "table",
        "sample_parts",
        "sample_parts",
        Some(
            "CREATE TABLE sample_parts (\n    tar_file_id INTEGER,\n    sample_index INTEGER,\n    part_name TEXT,\n    content_byte_offset INTEGER,\n    content_byte_size INTEGER\n)",
        ),
    ),
    (
        "index",
        "idx_samples_by_tar_and_idx",
        "samples",
        Some("CREATE INDEX idx_samples_by_tar_and_idx ON samples(tar_file_id, sample_index)"),
    ),
    (
        "index",
        "idx_sample_parts_seq",
        "sample_parts",
        Some(
            "CREATE INDEX idx_sample_parts_seq ON sample_parts(tar_file_id, sample_index, content_byte_offset)",
        ),
    ),
    (
        "index",
        "idx_sample_parts_full",
        "sample_parts",
        Some(
            "CREATE INDEX idx_sample_parts_full ON sample_parts(tar_file_id, sample_index, part_name, content_byte_offset, content_byte_size)",
        ),
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// A shard of `n` samples whose keys are `len(i)` bytes long, two parts each.
    fn shard(tag: &str, n: u64, len: impl Fn(u64) -> usize) -> EnergonShard {
        let mut s = EnergonShard {
            count: n,
            ..EnergonShard::default()
        };
        for i in 0..n {
            let mut key = format!("{:x}-{tag}-{i}-", i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            while key.len() < len(i) {
                key.push(char::from(b'a' + (key.len() % 26) as u8));
            }
            let off = i * 4096;
            s.samples.push((key, i, off, 4096));
            s.parts.push((i, "png".into(), off + 512, 3000));
            let ext = if i % 7 == 0 {
                "x".repeat(5000)
            } else {
                "json".into()
            };
            s.parts.push((i, ext, off + 3584, 100));
        }
        s
    }

    type Rows = (
        Vec<(i64, String, i64, i64, i64)>,
        Vec<(i64, i64, String, i64, i64)>,
    );

    fn rows(db: &rusqlite::Connection) -> Rows {
        let mut st = db
            .prepare("SELECT * FROM samples ORDER BY sample_key")
            .unwrap();
        let samples = st
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let mut st = db
            .prepare("SELECT * FROM sample_parts ORDER BY 1, 2, 3, 4, 5")
            .unwrap();
        let parts = st
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        (samples, parts)
    }

    /// What SQLite itself makes of the same shards (in dataset order).
    fn by_sqlite(shards: &[EnergonShard]) -> Rows {
        let db = rusqlite::Connection::open_in_memory().unwrap();
        let schema: Vec<&str> = SCHEMA.iter().filter_map(|s| s.3).collect();
        db.execute_batch(&schema.join(";")).unwrap();
        for (id, s) in shards.iter().enumerate() {
            let mut dup = std::collections::HashSet::new();
            for (k, i, o, z) in &s.samples {
                let r = db.execute(
                    "INSERT OR IGNORE INTO samples VALUES (?, ?, ?, ?, ?)",
                    rusqlite::params![id as i64, k, *i as i64, *o as i64, *z as i64],
                );
                if r.unwrap() == 0 {
                    dup.insert(*i);
                }
            }
            for (i, p, o, z) in s.parts.iter().filter(|p| !dup.contains(&p.0)) {
                db.execute(
                    "INSERT INTO sample_parts VALUES (?, ?, ?, ?, ?)",
                    rusqlite::params![id as i64, *i as i64, p, *o as i64, *z as i64],
                )
                .unwrap();
            }
        }
        rows(&db)
    }

    fn check(db: &rusqlite::Connection) {
        let ok: String = db
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
    }

    #[test]
    fn shards_added_in_order_make_the_index_sqlite_makes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        // Deep trees: keys of up to 40 KiB (overflow chains), long part names.
        let mut shards = vec![
            shard("a", 600, |i| 10 + (i as usize * 97) % 9000),
            shard("b", 3000, |_| 24),
            shard("c", 40, |i| 16_000 + i as usize * 600),
            shard("d", 0, |_| 0),
        ];
        // A key of shard 0 again in shard 2: shard 0 keeps it.
        let again = shards[0].samples[5].0.clone();
        shards[2].samples[3].0 = again.clone();
        let mut build = SqliteBuild::create(&path).unwrap();
        for (id, s) in shards.iter().enumerate() {
            build.add(id as u64, &s.rows()).unwrap();
        }
        assert_eq!(build.finish().unwrap(), vec![(2, again)]);
        let db = rusqlite::Connection::open(&path).unwrap();
        check(&db);
        assert_eq!(rows(&db), by_sqlite(&shards));
        let page: i64 = db.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
        assert_eq!(page, 16384);
        // The key index finds every key.
        let key = &shards[2].samples[7].0;
        let found: i64 = db
            .query_row(
                "SELECT sample_index FROM samples WHERE sample_key = ?",
                [key],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(found, 7);
    }

    #[test]
    fn shards_added_in_any_order_make_a_sound_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        let shards: Vec<_> = (0..5)
            .map(|i| shard(&i.to_string(), 700, |k| 20 + (k as usize * 31) % 6000))
            .collect();
        let mut build = SqliteBuild::create(&path).unwrap();
        for id in [3u64, 1, 0, 4, 2] {
            build.add(id, &shards[id as usize].rows()).unwrap();
        }
        assert!(build.finish().unwrap().is_empty());
        let db = rusqlite::Connection::open(&path).unwrap();
        check(&db);
        assert_eq!(rows(&db), by_sqlite(&shards));
    }

    /// Trees of three levels and more (`cargo test --release -- --ignored`).
    #[test]
    #[ignore = "a million samples: seconds in release"]
    fn a_large_index_is_sound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        let shards: Vec<_> = (0..10)
            .map(|i| shard(&i.to_string(), 100_000, |_| 24))
            .collect();
        let mut build = SqliteBuild::create(&path).unwrap();
        for id in [1u64, 0, 2, 3, 5, 4, 6, 7, 9, 8] {
            build.add(id, &shards[id as usize].rows()).unwrap();
        }
        build.finish().unwrap();
        let db = rusqlite::Connection::open(&path).unwrap();
        check(&db);
        let n: i64 = db
            .query_row("SELECT COUNT(*) FROM sample_parts", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2_000_000);
    }

    /// A file past 1 GiB, whose lock-byte page SQLite keeps out of every
    /// b-tree (`cargo test --release -- --ignored`).
    #[test]
    #[ignore = "a 1.2 GB file: a minute in release"]
    fn an_index_past_the_lock_byte_page_is_sound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        let mut build = SqliteBuild::create(&path).unwrap();
        let per_shard = 200_000;
        for id in 0..30u64 {
            let mut s = EnergonShard {
                count: per_shard,
                ..EnergonShard::default()
            };
            for i in 0..per_shard {
                s.samples
                    .push((format!("{id:04}-{i:08}-sample"), i, i * 4096, 4096));
                s.parts.push((i, "jpg".into(), i * 4096 + 512, 3000));
                s.parts.push((i, "json".into(), i * 4096 + 3584, 400));
            }
            build.add(id, &s.rows()).unwrap();
        }
        build.finish().unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() > 1 << 30);
        let db = rusqlite::Connection::open(&path).unwrap();
        check(&db);
        let n: i64 = db
            .query_row("SELECT COUNT(*) FROM samples", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 6_000_000);
    }

    #[test]
    fn an_empty_dataset_is_an_empty_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        assert!(build_sqlite(&path, || Ok(None)).unwrap().is_empty());
        let db = rusqlite::Connection::open(&path).unwrap();
        check(&db);
        assert_eq!(rows(&db), (Vec::new(), Vec::new()));
    }

    #[test]
    fn a_shard_missing_before_others_fails_the_build() {
        let dir = tempfile::tempdir().unwrap();
        let mut build = SqliteBuild::create(&dir.path().join("index.sqlite")).unwrap();
        build.add(1, &shard("a", 3, |_| 5).rows()).unwrap();
        assert!(build.add(1, &shard("b", 3, |_| 5).rows()).is_err());
        assert!(build.finish().is_err());
    }
}

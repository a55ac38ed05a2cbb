//! Megatron-Energon's webdataset index, as `energon prepare` (7.4.1) writes it:
//!
//! ```text
//! <root>/.nv-meta/index.sqlite   tables samples(tar_file_id, sample_key UNIQUE, sample_index,
//!                                byte_offset, byte_size) and sample_parts(tar_file_id,
//!                                sample_index, part_name, content_byte_offset, content_byte_size)
//! <root>/.nv-meta/.info.json     {"energon_version": ..., "shard_counts": {shard: samples}}
//! <root>/.nv-meta/split.yaml     split_parts: {train: [shards]}, exclude: ["shard/key", ...]
//! <root>/.nv-meta/index.uuid     a UUID derived from the index: new whenever it changes
//! <root>/<shard>.tar.idx         little-endian u64: each sample's first header offset, then
//!                                the offset where the archive's end blocks start
//! ```
//! Energon reads sample `i` of a shard as the members in
//! `[idx[i], idx[i+1])`, so every sample of the tar must be in the `.tar.idx`
//! (a gap would join two keys into one read, which energon refuses). The
//! samples the job leaves out are listed in `split.yaml`'s `exclude`
//! (`<shard>/<key>`), which energon's loader filters on, and have no row in
//! `index.sqlite`. A key in two shards (energon's `sample_key` is unique
//! over the dataset) keeps the first shard's sample; the later one is
//! excluded too.

use std::io::Write;
use std::path::{Path, PathBuf};

use rusqlite::ToSql;
use serde::{Deserialize, Serialize};

use crate::FormatsError;
use crate::group::Group;

/// The energon version whose layout this is, for `.info.json`.
pub const ENERGON_VERSION: &str = "7.4.1";

/// One shard's energon pieces (besides its `.tar.idx`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnergonShard {
    /// Samples of the tar as energon counts them (kept or not).
    pub count: u64,
    /// Kept samples: `(key, sample index, byte offset, byte size)`.
    pub samples: Vec<(String, u64, u64, u64)>,
    /// Parts of the kept samples: `(sample index, part name, data offset, size)`.
    pub parts: Vec<(u64, String, u64, u64)>,
    /// Keys of the samples left out (excluded in `split.yaml`).
    pub excluded: Vec<String>,
}

/// The `.tar.idx` bytes and the shard's rows, from its samples in tar order.
pub fn shard_pieces(groups: &[Group<'_>], end_offset: u64) -> (Vec<u8>, EnergonShard) {
    let mut idx = Vec::with_capacity((groups.len() + 1) * 8);
    let mut shard = EnergonShard {
        count: groups.len() as u64,
        ..Default::default()
    };
    for (i, g) in groups.iter().enumerate() {
        idx.extend_from_slice(&g.start_offset.to_le_bytes());
        let next = groups.get(i + 1).map_or(end_offset, |n| n.start_offset);
        let i = i as u64;
        if g.left_out.is_some() {
            shard.excluded.push(g.key.to_string());
            continue;
        }
        shard.samples.push((
            g.key.to_string(),
            i,
            g.start_offset,
            next.saturating_sub(g.start_offset),
        ));
        for p in &g.parts {
            shard
                .parts
                .push((i, p.ext.to_string(), p.data_offset, p.size));
        }
    }
    idx.extend_from_slice(&end_offset.to_le_bytes());
    (idx, shard)
}

/// The offsets of a `.tar.idx` file.
pub fn parse_tar_idx(bytes: &[u8]) -> Result<Vec<u64>, String> {
    if !bytes.len().is_multiple_of(8) {
        return Err(format!("{} bytes, not a multiple of 8", bytes.len()));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect())
}

/// Rows bound per multi-row `INSERT` (the per-statement cost of SQLite's
/// VM is paid once per batch; 5 columns × 64 stays far under its limit of
/// bound parameters).
const BATCH: usize = 64;

/// The SQL of one table's inserts: `BATCH` rows, and one row.
struct InsertSql {
    many: String,
    one: String,
}

impl InsertSql {
    fn new(table: &str, columns: &str) -> Self {
        let row = "(?, ?, ?, ?, ?)";
        InsertSql {
            many: format!(
                "INSERT INTO {table} ({columns}) VALUES {}",
                vec![row; BATCH].join(", ")
            ),
            one: format!("INSERT INTO {table} ({columns}) VALUES {row}"),
        }
    }

    /// Inserts `rows` (five values each), `BATCH` at a time.
    fn insert<R: Row>(&self, db: &rusqlite::Connection, rows: &[R]) -> rusqlite::Result<()> {
        let mut chunks = rows.chunks_exact(BATCH);
        if chunks.len() > 0 {
            let mut many = db.prepare_cached(&self.many)?;
            for chunk in &mut chunks {
                for (i, r) in chunk.iter().enumerate() {
                    r.bind(&mut many, i * 5)?;
                }
                many.raw_execute()?;
            }
        }
        let mut one = db.prepare_cached(&self.one)?;
        for r in chunks.remainder() {
            r.bind(&mut one, 0)?;
            one.raw_execute()?;
        }
        Ok(())
    }
}

/// A row of five values, bound from parameter `at + 1` on.
trait Row {
    fn bind(&self, st: &mut rusqlite::Statement<'_>, at: usize) -> rusqlite::Result<()>;
}

impl<A: ToSql, B: ToSql, C: ToSql, D: ToSql, E: ToSql> Row for (A, B, C, D, E) {
    fn bind(&self, st: &mut rusqlite::Statement<'_>, at: usize) -> rusqlite::Result<()> {
        st.raw_bind_parameter(at + 1, &self.0)?;
        st.raw_bind_parameter(at + 2, &self.1)?;
        st.raw_bind_parameter(at + 3, &self.2)?;
        st.raw_bind_parameter(at + 4, &self.3)?;
        st.raw_bind_parameter(at + 5, &self.4)
    }
}

/// `index.sqlite` being built at a private path, in one transaction: the
/// shards' rows added one shard at a time, in any order, energon's indexes
/// created by [`SqliteBuild::finish`] (or, for [`SqliteBuild::create_indexed`],
/// before the first row). A key already added is left out (energon's
/// `sample_key` is unique): the first shard added keeps it.
pub struct SqliteBuild {
    path: PathBuf,
    db: rusqlite::Connection,
    /// Energon's indexes exist already (they grow with the rows).
    indexed: bool,
    samples: InsertSql,
    parts: InsertSql,
    keys: foldhash::HashSet<String>,
    dups: Vec<(u64, String)>,
}

impl SqliteBuild {
    /// Starts the build at `path` (which must not exist); energon's indexes
    /// are created by [`SqliteBuild::finish`], after the rows (a bulk build's
    /// fastest order).
    pub fn create(path: &Path) -> Result<Self, FormatsError> {
        Self::open(path, false)
    }

    /// Starts the build at `path` (which must not exist) with energon's
    /// indexes already created: each shard's rows, added in index order,
    /// extend them, so [`SqliteBuild::finish`] has no index left to sort.
    /// For a build fed while the shards commit, whose finish the job waits for.
    pub fn create_indexed(path: &Path) -> Result<Self, FormatsError> {
        Self::open(path, true)
    }

    fn open(path: &Path, indexed: bool) -> Result<Self, FormatsError> {
        let sql = sql_error(path);
        // One connection on one thread: SQLite's own mutexes are not needed.
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
            | rusqlite::OpenFlags::SQLITE_OPEN_CREATE
            | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let db = rusqlite::Connection::open_with_flags(path, flags).map_err(sql)?;
        // Built once into a private name, synced and renamed: no journal needed.
        // 16 KiB pages: fewer page splits while the indexes grow with the rows
        // (the early build's thread: -14% CPU against 4 KiB on 100,000
        // samples; 64 KiB gave -27% but would make every random lookup of a
        // trainer read 64 KiB).
        db.execute_batch(
            "PRAGMA page_size = 16384; PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA cache_size = -65536; PRAGMA locking_mode = EXCLUSIVE;",
        )
        .map_err(sql)?;
        db.execute_batch(SCHEMA).map_err(sql)?;
        db.execute_batch("BEGIN").map_err(sql)?;
        if indexed {
            db.execute_batch(INDEXES).map_err(sql)?;
        }
        Ok(SqliteBuild {
            path: path.to_path_buf(),
            db,
            indexed,
            samples: InsertSql::new(
                "samples",
                "tar_file_id, sample_key, sample_index, byte_offset, byte_size",
            ),
            parts: InsertSql::new(
                "sample_parts",
                "tar_file_id, sample_index, part_name, content_byte_offset, content_byte_size",
            ),
            keys: foldhash::HashSet::default(),
            dups: Vec::new(),
        })
    }

    /// Adds shard `id`'s rows (its samples whose key no earlier shard added).
    pub fn add(&mut self, id: u64, shard: &EnergonShard) -> Result<(), FormatsError> {
        let sql = sql_error(&self.path);
        let tar = id as i64;
        let mut dup_index = foldhash::HashSet::default();
        let mut rows = Vec::with_capacity(shard.samples.len());
        for (key, index, offset, size) in &shard.samples {
            if !self.keys.insert(key.clone()) {
                dup_index.insert(*index);
                self.dups.push((id, key.clone()));
                continue;
            }
            rows.push((
                tar,
                key.as_str(),
                *index as i64,
                *offset as i64,
                *size as i64,
            ));
        }
        self.samples.insert(&self.db, &rows).map_err(sql)?;
        let rows: Vec<_> = shard
            .parts
            .iter()
            .filter(|(index, ..)| !dup_index.contains(index))
            .map(|(index, part, offset, size)| {
                (
                    tar,
                    *index as i64,
                    part.as_str(),
                    *offset as i64,
                    *size as i64,
                )
            })
            .collect();
        self.parts.insert(&self.db, &rows).map_err(sql)
    }

    /// Keys left out so far as a repeat of a key added before: `(id, key)`.
    pub fn duplicates(&self) -> &[(u64, String)] {
        &self.dups
    }

    /// Creates energon's indexes (unless they exist) and commits; returns
    /// the keys left out.
    pub fn finish(self) -> Result<Vec<(u64, String)>, FormatsError> {
        let sql = sql_error(&self.path);
        if !self.indexed {
            self.db.execute_batch(INDEXES).map_err(sql)?;
        }
        self.db.execute_batch("COMMIT").map_err(sql)?;
        self.db.close().map_err(|(_, e)| sql(e))?;
        Ok(self.dups)
    }
}

fn sql_error(path: &Path) -> impl Fn(rusqlite::Error) -> FormatsError + Copy + '_ {
    move |source| FormatsError::Sqlite {
        path: path.display().to_string(),
        source,
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
        build.add(id, &shard)?;
    }
    build.finish()
}

const SCHEMA: &str = "
CREATE TABLE samples (
    tar_file_id INTEGER NOT NULL,
    sample_key TEXT NOT NULL UNIQUE,
    sample_index INTEGER NOT NULL,
    byte_offset INTEGER,
    byte_size INTEGER
);
CREATE TABLE sample_parts (
    tar_file_id INTEGER,
    sample_index INTEGER,
    part_name TEXT,
    content_byte_offset INTEGER,
    content_byte_size INTEGER
);";

const INDEXES: &str = "
CREATE INDEX idx_samples_by_tar_and_idx ON samples(tar_file_id, sample_index);
CREATE INDEX idx_sample_parts_seq ON sample_parts(tar_file_id, sample_index, content_byte_offset);
CREATE INDEX idx_sample_parts_full ON sample_parts(tar_file_id, sample_index, part_name, content_byte_offset, content_byte_size);";

/// `.info.json`: the shards in dataset order with their sample counts.
pub fn info_json(shards: &[(String, u64)]) -> Vec<u8> {
    let mut counts = serde_json::Map::new();
    for (name, count) in shards {
        counts.insert(name.clone(), serde_json::Value::from(*count));
    }
    let doc = serde_json::json!({"energon_version": ENERGON_VERSION, "shard_counts": counts});
    format!("{doc:#}\n").into_bytes()
}

/// `split.yaml`: every shard in `train`, the left-out samples excluded.
/// Items are double-quoted (JSON strings are YAML) with `{`, `}`, `\`
/// escaped for the brace expansion energon applies to each entry.
pub fn split_yaml(shards: &[String], excluded: &[(String, String)]) -> Vec<u8> {
    let item = |s: &str| serde_json::Value::from(brace_escape(s)).to_string();
    let mut out = Vec::new();
    let _ = writeln!(out, "split_parts:\n  train:");
    for s in shards {
        let _ = writeln!(out, "  - {}", item(s));
    }
    if excluded.is_empty() {
        let _ = writeln!(out, "exclude: []");
    } else {
        let _ = writeln!(out, "exclude:");
        for (shard, key) in excluded {
            let _ = writeln!(out, "- {}", item(&format!("{shard}/{key}")));
        }
    }
    out
}

fn brace_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '{' | '}' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::{LeftOut, Part};

    fn g(key: &str, start: u64, left_out: Option<LeftOut>) -> Group<'static> {
        Group {
            key: key.to_string().into(),
            start_offset: start,
            parts: vec![Part {
                name: format!("{key}.jpg").into(),
                ext: "jpg".into(),
                data_offset: start + 512,
                size: 3,
            }],
            left_out,
        }
    }

    #[test]
    fn every_sample_gets_an_offset_and_left_out_ones_are_excluded() {
        let gs = [
            g("a", 0, None),
            g("b", 1024, Some(LeftOut::NoRow)),
            g("c", 2048, None),
        ];
        let (idx, shard) = shard_pieces(&gs, 3072);
        assert_eq!(parse_tar_idx(&idx).unwrap(), vec![0, 1024, 2048, 3072]);
        assert_eq!(shard.count, 3);
        assert_eq!(shard.excluded, vec!["b".to_string()]);
        assert_eq!(shard.samples[1], ("c".to_string(), 2, 2048, 1024));
        assert_eq!(shard.parts[1], (2, "jpg".to_string(), 2560, 3));
    }

    #[test]
    fn sqlite_has_energons_tables_and_keeps_the_first_of_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        let (_, s0) = shard_pieces(&[g("a", 0, None), g("b", 1024, None)], 2048);
        let (_, s1) = shard_pieces(&[g("b", 0, None)], 1024);
        let mut pieces = vec![(0, s0), (1, s1)].into_iter();
        let dups = build_sqlite(&path, || Ok(pieces.next())).unwrap();
        assert_eq!(dups, vec![(1, "b".to_string())]);
        let db = rusqlite::Connection::open(&path).unwrap();
        let n: i64 = db
            .query_row("SELECT COUNT(*) FROM samples", [], |r| r.get(0))
            .unwrap();
        let p: i64 = db
            .query_row("SELECT COUNT(*) FROM sample_parts", [], |r| r.get(0))
            .unwrap();
        assert_eq!((n, p), (2, 2));
        let idx: i64 = db
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name LIKE 'idx_%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(idx, 3);
    }

    #[test]
    fn split_yaml_quotes_and_escapes_braces() {
        let y = split_yaml(&["s{1}.tar".into()], &[("s{1}.tar".into(), "k".into())]);
        let y = String::from_utf8(y).unwrap();
        assert!(y.contains("  - \"s\\\\{1\\\\}.tar\""), "{y}");
    }
}

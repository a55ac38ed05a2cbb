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

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use crate::group::Group;

/// The energon version whose layout this is, for `.info.json`.
pub const ENERGON_VERSION: &str = "7.4.1";

/// One shard's energon pieces (besides its `.tar.idx`). In the shard's
/// JSON piece its rows are one string (`EnergonWire`): a piece is read
/// several times by the coordinator, mostly for its head, and 75,000 rows
/// as JSON arrays cost more to write, skip and parse than the rest of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "EnergonWire")]
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

/// One shard's energon rows, borrowed: from the groups (the worker) or
/// from a piece's decoded bytes (the coordinator), without a copy of each
/// key and part name. Encoded compactly in the piece (postcard: varints
/// and length-prefixed strings), with the fields of [`EnergonShard`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnergonRows<'a> {
    #[serde(borrow)]
    pub samples: Vec<(&'a str, u64, u64, u64)>,
    #[serde(borrow)]
    pub parts: Vec<(u64, &'a str, u64, u64)>,
    #[serde(borrow)]
    pub excluded: Vec<&'a str>,
}

impl<'a> EnergonRows<'a> {
    /// The rows' piece encoding (base64 of their postcard bytes).
    pub fn encode(&self) -> Result<String, String> {
        let mut out = String::new();
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// Appends [`EnergonRows::encode`]'s string to `out`.
    pub fn encode_into(&self, out: &mut String) -> Result<(), String> {
        let bytes =
            postcard::to_allocvec(self).map_err(|e| format!("energon rows unencodable: {e}"))?;
        BASE64.encode_string(bytes, out);
        Ok(())
    }

    /// The rows in `bytes`, decoded from [`EnergonRows::encode`]'s base64
    /// by [`decode_base64`].
    pub fn from_bytes(bytes: &'a [u8]) -> Result<Self, String> {
        let (rows, rest): (EnergonRows<'a>, _) = postcard::take_from_bytes(bytes)
            .map_err(|e| format!("energon rows unreadable: {e}"))?;
        if !rest.is_empty() {
            return Err(format!("energon rows: {} bytes after them", rest.len()));
        }
        Ok(rows)
    }

    /// The rows, owned, for a shard of `count` samples.
    pub fn to_shard(&self, count: u64) -> EnergonShard {
        EnergonShard {
            count,
            samples: self
                .samples
                .iter()
                .map(|&(k, i, o, n)| (k.to_string(), i, o, n))
                .collect(),
            parts: self
                .parts
                .iter()
                .map(|&(i, p, o, n)| (i, p.to_string(), o, n))
                .collect(),
            excluded: self.excluded.iter().map(|k| k.to_string()).collect(),
        }
    }
}

/// The bytes of [`EnergonRows::encode`]'s string.
pub fn decode_base64(rows: &str) -> Result<Vec<u8>, String> {
    BASE64
        .decode(rows)
        .map_err(|e| format!("energon rows are not base64: {e}"))
}

impl EnergonShard {
    /// The rows, borrowed.
    pub fn rows(&self) -> EnergonRows<'_> {
        EnergonRows {
            samples: self
                .samples
                .iter()
                .map(|(k, i, o, n)| (k.as_str(), *i, *o, *n))
                .collect(),
            parts: self
                .parts
                .iter()
                .map(|(i, p, o, n)| (*i, p.as_str(), *o, *n))
                .collect(),
            excluded: self.excluded.iter().map(String::as_str).collect(),
        }
    }
}

/// [`EnergonShard`] in a piece: `count`, and `rows` as
/// [`EnergonRows::encode`]'s string. Pieces written before that listed the
/// rows as JSON arrays; they are still read.
#[derive(Deserialize)]
struct EnergonWire {
    count: u64,
    #[serde(default)]
    rows: Option<String>,
    #[serde(default)]
    samples: Vec<(String, u64, u64, u64)>,
    #[serde(default)]
    parts: Vec<(u64, String, u64, u64)>,
    #[serde(default)]
    excluded: Vec<String>,
}

impl TryFrom<EnergonWire> for EnergonShard {
    type Error = String;

    fn try_from(w: EnergonWire) -> Result<Self, String> {
        let Some(rows) = w.rows else {
            return Ok(EnergonShard {
                count: w.count,
                samples: w.samples,
                parts: w.parts,
                excluded: w.excluded,
            });
        };
        let bytes = decode_base64(&rows)?;
        Ok(EnergonRows::from_bytes(&bytes)?.to_shard(w.count))
    }
}

/// The `.tar.idx` bytes and the shard's rows (borrowed from `groups`),
/// from its samples in tar order.
pub fn shard_pieces<'g>(groups: &'g [Group<'_>], end_offset: u64) -> (Vec<u8>, EnergonRows<'g>) {
    let mut idx = Vec::with_capacity((groups.len() + 1) * 8);
    let mut rows = EnergonRows {
        samples: Vec::with_capacity(groups.len()),
        parts: Vec::with_capacity(groups.len() * 2),
        excluded: Vec::new(),
    };
    for (i, g) in groups.iter().enumerate() {
        idx.extend_from_slice(&g.start_offset.to_le_bytes());
        let next = groups.get(i + 1).map_or(end_offset, |n| n.start_offset);
        let i = i as u64;
        if g.left_out.is_some() {
            rows.excluded.push(&g.key);
            continue;
        }
        rows.samples.push((
            &g.key,
            i,
            g.start_offset,
            next.saturating_sub(g.start_offset),
        ));
        for p in &g.parts {
            rows.parts.push((i, &p.ext, p.data_offset, p.size));
        }
    }
    idx.extend_from_slice(&end_offset.to_le_bytes());
    (idx, rows)
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

/// How many samples the `split.yaml` written by [`split_yaml`] excludes;
/// `None` when it has no `exclude` list.
pub fn split_excluded(yaml: &str) -> Option<usize> {
    let mut lines = yaml.lines().skip_while(|l| !l.starts_with("exclude:"));
    match lines.next()?.trim_end() {
        "exclude: []" => Some(0),
        "exclude:" => Some(lines.take_while(|l| l.starts_with("- ")).count()),
        _ => None,
    }
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
    use crate::energon_sqlite::build_sqlite;
    use crate::group::{LeftOut, Part};

    fn g(key: &str, start: u64, left_out: Option<LeftOut>) -> Group<'static> {
        Group {
            key: key.to_string().into(),
            start_offset: start,
            parts: smallvec::smallvec![Part {
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
        let (idx, rows) = shard_pieces(&gs, 3072);
        assert_eq!(parse_tar_idx(&idx).unwrap(), vec![0, 1024, 2048, 3072]);
        assert_eq!(rows.excluded, vec!["b"]);
        assert_eq!(rows.samples[1], ("c", 2, 2048, 1024));
        assert_eq!(rows.parts[1], (2, "jpg", 2560, 3));
    }

    #[test]
    fn sqlite_has_energons_tables_and_keeps_the_first_of_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        let (g0, g1) = ([g("a", 0, None), g("b", 1024, None)], [g("b", 0, None)]);
        let s0 = shard_pieces(&g0, 2048).1.to_shard(2);
        let s1 = shard_pieces(&g1, 1024).1.to_shard(1);
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
    fn rows_round_trip_through_the_piece_and_old_pieces_still_read() {
        let gs = [
            g("a", 0, None),
            g("b", 1024, Some(LeftOut::NoRow)),
            g("é{1}", 2048, None),
        ];
        let rows = shard_pieces(&gs, 3072).1;
        let shard = rows.to_shard(3);
        let json = format!(r#"{{"count":3,"rows":"{}"}}"#, rows.encode().unwrap());
        let back: EnergonShard = serde_json::from_str(&json).unwrap();
        assert_eq!(back, shard);
        let old =
            r#"{"count":3,"samples":[["a",0,0,1024]],"parts":[[0,"jpg",512,3]],"excluded":["b"]}"#;
        let old: EnergonShard = serde_json::from_str(old).unwrap();
        assert_eq!((old.samples.len(), old.parts.len()), (1, 1));
        assert_eq!(old.excluded, vec!["b".to_string()]);
        for bad in ["AQ==", "AAAAAA==", "not base64"] {
            let bad = format!(r#"{{"count":3,"rows":"{bad}"}}"#);
            assert!(serde_json::from_str::<EnergonShard>(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn split_yaml_quotes_and_escapes_braces() {
        let y = split_yaml(&["s{1}.tar".into()], &[("s{1}.tar".into(), "k".into())]);
        let y = String::from_utf8(y).unwrap();
        assert!(y.contains("  - \"s\\\\{1\\\\}.tar\""), "{y}");
        assert_eq!(split_excluded(&y), Some(1));
        let none = split_yaml(&["a.tar".into(), "b.tar".into()], &[]);
        assert_eq!(split_excluded(&String::from_utf8(none).unwrap()), Some(0));
        assert_eq!(split_excluded("split_parts: {}"), None);
    }
}

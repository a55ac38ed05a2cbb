//! Checks of every format written, against the tars: each entry inside its
//! tar, the counts, and the member at each offset (a tar header with a
//! valid checksum right before each part's data, with that part's size;
//! one at each energon sample offset). What `verify` and a re-run report.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use shardprep_core::depth::CheckDepth;
use shardprep_core::index_format::{IndexFormat, IndexFormats};
use shardprep_core::layout::OutputLayout;

use crate::shard::ShardPiece;
use crate::{dali, energon, paths};

/// Problems of the dataset-wide files of `formats` (energon's `.nv-meta/`
/// and its per-shard counts, DALI's list, the wids JSON), which the job's
/// end rebuilds from the committed `shards`' pieces. `index.sqlite` is
/// read back through SQLite itself (its rows; at `--deep` depth SQLite's
/// own integrity check too).
pub fn check_dataset(
    layout: &OutputLayout,
    shards: &[String],
    formats: &IndexFormats,
    depth: CheckDepth,
) -> Vec<String> {
    let mut problems = Vec::new();
    if !formats.has_other_than_webshart() {
        return problems;
    }
    let pieces: Vec<(&String, ShardPiece)> = shards
        .iter()
        .filter_map(|s| Some((s, ShardPiece::read_head(&paths::piece(layout, s)).ok()?)))
        .collect();
    if formats.contains(IndexFormat::Energon) {
        let counts: Vec<(String, u64)> = pieces
            .iter()
            .filter_map(|(s, p)| {
                Some((
                    (*s).clone(),
                    p.energon.as_ref().filter(|e| e.count > 0)?.count,
                ))
            })
            .collect();
        problems.extend(check_energon_meta(layout, &counts, depth));
    }
    if formats.contains(IndexFormat::Dali) {
        let listed = pieces
            .iter()
            .filter(|(_, p)| p.dali.as_ref().is_some_and(|d| d.samples > 0));
        let (tars, idx): (Vec<&str>, Vec<String>) = listed
            .map(|(s, p)| {
                let idx = paths::dali_idx(layout, s).map(|i| i.display().to_string());
                (p.tar_path.as_str(), idx.unwrap_or_default())
            })
            .unzip();
        let idx: Vec<&str> = idx.iter().map(String::as_str).collect();
        let list = paths::dali_list(layout);
        problems.extend(check_listing(&list, "/paths", &tars, "url"));
        problems.extend(check_listing(&list, "/index_paths", &idx, "url"));
    }
    if formats.contains(IndexFormat::Wids) {
        let readable = pieces.iter().filter(|(_, p)| {
            p.wids
                .as_ref()
                .is_some_and(|w| w.unreadable.is_none() && w.nsamples > 0)
        });
        let want: Vec<&str> = readable.map(|(_, p)| p.tar_path.as_str()).collect();
        problems.extend(check_listing(
            &paths::wids_json(layout),
            "/shardlist",
            &want,
            "url",
        ));
    }
    problems
}

/// Why the JSON list at `pointer` in the file `path` does not name exactly
/// the tars `want`, in order (items are paths, or objects with `key`).
fn check_listing(path: &Path, pointer: &str, want: &[&str], key: &str) -> Option<String> {
    let at = path.display();
    let doc: serde_json::Value = match std::fs::read(path) {
        Err(e) => return Some(format!("{at} cannot be read ({e})")),
        Ok(b) => match serde_json::from_slice(&b) {
            Ok(v) => v,
            Err(e) => return Some(format!("{at} is not JSON ({e})")),
        },
    };
    let listed: Option<Vec<&str>> = doc
        .pointer(pointer)
        .and_then(|v| v.as_array())
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.as_str().or_else(|| i.get(key)?.as_str()))
                .collect()
        });
    match listed {
        Some(l) if l == want => None,
        Some(l) => Some(format!(
            "{at} lists {} tars where the committed shards have {}",
            l.len(),
            want.len()
        )),
        None => Some(format!("{at} has no {pointer} list")),
    }
}

/// Why the committed shard `s`'s pieces of `formats` do not serve its tar:
/// a piece missing, the tar changed, an entry not at a member of its size.
pub fn check_shard(layout: &OutputLayout, s: &str, formats: &IndexFormats) -> Result<(), String> {
    if !formats.has_other_than_webshart() {
        return Ok(());
    }
    let piece = ShardPiece::read(&paths::piece(layout, s)).map_err(|e| e.to_string())?;
    check_pieces(layout, s, &piece, formats)
}

fn check_pieces(
    layout: &OutputLayout,
    s: &str,
    piece: &ShardPiece,
    formats: &IndexFormats,
) -> Result<(), String> {
    if let Some(why) = crate::shard::missing_from(layout, s, piece, formats) {
        return Err(why);
    }
    let tar =
        File::open(&piece.tar_path).map_err(|e| format!("cannot open {}: {e}", piece.tar_path))?;
    let len = tar.metadata().map_err(|e| e.to_string())?.len();
    if len != piece.filesize {
        return Err(format!(
            "{} is {len} bytes, the index says {}: run the job again",
            piece.tar_path, piece.filesize
        ));
    }
    if let (Some(e), true) = (&piece.energon, formats.contains(IndexFormat::Energon))
        && e.count > 0
    {
        check_energon(layout, s, e, &tar, len)?;
    }
    if let (Some(d), true) = (&piece.dali, formats.contains(IndexFormat::Dali))
        && d.samples > 0
    {
        let p = paths::dali_idx(layout, s).ok_or("bad shard name")?;
        let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        let samples = dali::parse(&text).map_err(|e| format!("{}: {e}", p.display()))?;
        if samples.len() as u64 != d.samples {
            return Err(format!(
                "{} lists {} samples, the shard has {}",
                p.display(),
                samples.len(),
                d.samples
            ));
        }
        for (ext, offset, size) in samples.iter().flatten() {
            check_member(&tar, len, *offset, *size)
                .map_err(|e| format!("{}: part {ext} at {offset}: {e}", p.display()))?;
        }
    }
    Ok(())
}

fn check_energon(
    layout: &OutputLayout,
    s: &str,
    e: &energon::EnergonShard,
    tar: &File,
    len: u64,
) -> Result<(), String> {
    let link = paths::energon_tar(layout, s).ok_or("bad shard name")?;
    let via_link = std::fs::metadata(&link).map_err(|err| format!("{}: {err}", link.display()))?;
    // The same file, not one of the same size (shards of a set often are).
    let same_file = |m: &std::fs::Metadata| {
        use std::os::unix::fs::MetadataExt;
        (m.dev(), m.ino()) == (via_link.dev(), via_link.ino())
    };
    if via_link.len() != len || !tar.metadata().is_ok_and(|m| same_file(&m)) {
        return Err(format!(
            "{} does not lead to the shard's tar",
            link.display()
        ));
    }
    let p = paths::energon_tar_idx(layout, s).ok_or("bad shard name")?;
    let bytes = std::fs::read(&p).map_err(|err| format!("{}: {err}", p.display()))?;
    let offsets =
        energon::parse_tar_idx(&bytes).map_err(|err| format!("{}: {err}", p.display()))?;
    if offsets.len() as u64 != e.count + 1 {
        return Err(format!(
            "{} has {} offsets for {} samples",
            p.display(),
            offsets.len(),
            e.count
        ));
    }
    if offsets.windows(2).any(|w| w[0] >= w[1]) || offsets.last().is_some_and(|&o| o > len) {
        return Err(format!(
            "{}: offsets not increasing inside the tar",
            p.display()
        ));
    }
    for (key, index, offset, _) in &e.samples {
        if offsets.get(*index as usize) != Some(offset) {
            return Err(format!(
                "{}: sample {key} is not at offset {offset}",
                p.display()
            ));
        }
        header_at(tar, *offset)
            .map_err(|err| format!("{}: sample {key} at {offset}: {err}", p.display()))?;
    }
    for (_, part, offset, size) in &e.parts {
        check_member(tar, len, *offset, *size)
            .map_err(|err| format!("energon part {part} at {offset}: {err}"))?;
    }
    Ok(())
}

fn check_energon_meta(
    layout: &OutputLayout,
    counts: &[(String, u64)],
    depth: CheckDepth,
) -> Vec<String> {
    let meta = paths::nv_meta(layout);
    let mut problems = Vec::new();
    for f in crate::dataset::ENERGON_META.iter().chain(&["dataset.yaml"]) {
        if !meta.join(f).is_file() {
            problems.push(format!("energon: {} is missing", meta.join(f).display()));
        }
    }
    if crate::dataset::needs_sample_loader(&meta) {
        problems.push(format!(
            "energon: {} names sample_loader.py, which is missing",
            meta.join("dataset.yaml").display()
        ));
    }
    let info = meta.join(".info.json");
    let found: Option<serde_json::Value> = std::fs::read(&info)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let want = serde_json::from_slice::<serde_json::Value>(&energon::info_json(counts)).ok();
    if found.as_ref().map(|v| &v["shard_counts"]) != want.as_ref().map(|v| &v["shard_counts"]) {
        problems.push(format!(
            "energon: {} does not list the committed shards' counts",
            info.display()
        ));
    }
    let samples: u64 = counts.iter().map(|(_, n)| n).sum();
    problems.extend(check_energon_sqlite(&meta, samples, depth));
    problems
}

/// Energon's tables and indexes in `index.sqlite` as SQLite itself reads
/// them (shardprep writes the file without SQLite's engine): one row per
/// sample energon loads (the tars' `samples` less those `split.yaml`
/// excludes), and at `depth` `--deep` `PRAGMA integrity_check` (every
/// page, every index entry against its row).
fn check_energon_sqlite(meta: &Path, samples: u64, depth: CheckDepth) -> Option<String> {
    let path = meta.join("index.sqlite");
    let at = path.display();
    // An unreadable split.yaml is a problem of its own (the presence and
    // seal checks name it); the rows are then not counted.
    let excluded = std::fs::read_to_string(meta.join("split.yaml"))
        .ok()
        .and_then(|yaml| energon::split_excluded(&yaml));
    let read = || -> rusqlite::Result<(Vec<String>, u64, String)> {
        let flags =
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let db = rusqlite::Connection::open_with_flags(&path, flags)?;
        let mut names = db.prepare("SELECT name FROM sqlite_schema ORDER BY name")?;
        let names = names
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        let rows: i64 = db.query_row("SELECT COUNT(*) FROM samples", [], |r| r.get(0))?;
        let check = match depth.reads_bytes() {
            true => db.query_row("PRAGMA integrity_check", [], |r| r.get(0))?,
            false => "ok".to_string(),
        };
        Ok((names, rows as u64, check))
    };
    let (names, rows, check) = match read() {
        Ok(r) => r,
        Err(e) => return Some(format!("energon: SQLite cannot read {at}: {e}")),
    };
    let missing: Vec<&str> = crate::energon_sqlite::schema_names()
        .filter(|o| !names.iter().any(|n| n == o))
        .collect();
    if !missing.is_empty() {
        return Some(format!("energon: {at} has no {}", missing.join(", ")));
    }
    if let Some(excluded) = excluded.map(|n| n as u64) {
        let want = samples.saturating_sub(excluded);
        if rows != want {
            return Some(format!(
                "energon: {at} has {rows} samples, energon loads {want} (the tars' {samples} less {excluded} excluded)"
            ));
        }
    }
    (check != "ok").then(|| format!("energon: SQLite's integrity check of {at}: {check}"))
}

/// A tar header with a valid checksum right before `offset`, for a member of `size` bytes inside the tar.
fn check_member(tar: &File, len: u64, offset: u64, size: u64) -> Result<(), String> {
    if offset < 512 || !offset.is_multiple_of(512) || offset.saturating_add(size) > len {
        return Err(format!(
            "{size} bytes at {offset} are not inside the {len}-byte tar"
        ));
    }
    let field = header_at(tar, offset - 512)?;
    match field {
        Some(n) if n != size => Err(format!(
            "the header there gives {n} bytes, the index {size}"
        )),
        _ => Ok(()),
    }
}

/// Reads the block at `offset`: a valid tar header; its size field when it parses.
fn header_at(tar: &File, offset: u64) -> Result<Option<u64>, String> {
    let mut b = [0u8; 512];
    tar.read_exact_at(&mut b, offset)
        .map_err(|e| format!("cannot read the header: {e}"))?;
    let stored = octal(&b[148..156]).ok_or("no tar header there (bad checksum field)")?;
    let sum: u64 = b
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(c)
            }
        })
        .sum();
    if sum != stored {
        return Err("no tar header there (checksum mismatch)".into());
    }
    Ok(if b[124] & 0x80 != 0 {
        None
    } else {
        octal(&b[124..136])
    })
}

fn octal(field: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(field).ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c == ' ');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

//! Dataset-wide pieces, rebuilt by the coordinator at the job's end from
//! the committed per-shard pieces (so a redone shard is always reflected):
//! energon's `index.sqlite`, `.info.json`, `split.yaml`, `index.uuid`; DALI's
//! `dali.json`; the wids JSON. Each is written to a temporary name and renamed.
//! The folders of formats the job does not ask for are removed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use shardprep_core::index_format::{IndexFormat, IndexFormats};
use shardprep_core::layout::{OutputLayout, unique_tmp};

use crate::shard::ShardPiece;
use crate::wids::WidsShard;
use crate::{FormatsError, energon, energon_sqlite, paths};

/// The report's `index_formats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormatsReport {
    /// The formats written, e.g. `webshart,energon,dali,wids`.
    pub formats: String,
    /// Shards that failed (broken, truncated): they have no entry in any format.
    pub not_indexed: Vec<String>,
    pub summary: DatasetSummary,
}

/// What the formats hold, for the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetSummary {
    /// Samples of the committed tars (as energon and DALI group members).
    pub samples: u64,
    /// Samples every per-sample format lists.
    pub kept: u64,
    /// Samples left out of every per-sample format, by reason.
    pub left_out: BTreeMap<String, u64>,
    /// Per format: `samples` listed and `shards` listed.
    pub formats: BTreeMap<String, FormatCount>,
    /// Keys energon keeps only once (the first shard's), as `<shard>/<key>`.
    pub energon_duplicate_keys: Vec<String>,
    /// Shards wids cannot read, with the reason.
    pub wids_unreadable: Vec<String>,
    /// Time spent building energon's `index.sqlite`, and its rows.
    pub sqlite_ms: u64,
    pub sqlite_rows: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormatCount {
    pub samples: u64,
    pub shards: u64,
}

/// What names the dataset in the formats.
#[derive(Debug, Clone, Copy)]
pub struct DatasetNames<'a> {
    /// The wids dataset's `name` (the job's dataset id).
    pub name: &'a str,
    /// The JSON field energon's default sample loader takes the caption from.
    pub caption_field: &'a str,
}

/// Removes the folders of the formats an earlier job wrote that `formats`
/// does not ask for (a trainer pointed at them would read stale indexes);
/// returns them.
pub fn remove_unasked(layout: &OutputLayout, formats: &IndexFormats) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for (f, dir) in [
        (IndexFormat::Energon, paths::ENERGON_DIR),
        (IndexFormat::Dali, paths::DALI_DIR),
        (IndexFormat::Wids, paths::WIDS_DIR),
    ] {
        let dir = layout.root().join(dir);
        if !formats.contains(f) && dir.exists() && std::fs::remove_dir_all(&dir).is_ok() {
            removed.push(dir);
        }
    }
    removed
}

/// The dataset-wide files of `formats` (built by [`build_dataset`]; not
/// `dataset.yaml` and `sample_loader.py`, which the user may edit).
pub fn dataset_files(layout: &OutputLayout, formats: &IndexFormats) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if formats.contains(IndexFormat::Energon) {
        let meta = paths::nv_meta(layout);
        files.extend(ENERGON_META.iter().map(|f| meta.join(f)));
    }
    if formats.contains(IndexFormat::Dali) {
        files.push(paths::dali_list(layout));
    }
    if formats.contains(IndexFormat::Wids) {
        files.push(paths::wids_json(layout));
    }
    files
}

/// The files of energon's `.nv-meta/` that every build writes.
pub const ENERGON_META: [&str; 4] = ["index.sqlite", ".info.json", "split.yaml", "index.uuid"];

/// Rebuilds the dataset-wide files of `formats` from the pieces of the
/// committed `shards` (in dataset order); energon's `index.sqlite` is the
/// one `early` waits for when it holds exactly these shards (else it is
/// discarded). `early` is called once the other formats' files are
/// written, so that they are written while the early build ends.
pub fn build_dataset(
    layout: &OutputLayout,
    shards: &[String],
    formats: &IndexFormats,
    names: DatasetNames<'_>,
    early: impl FnOnce() -> Option<EarlyEnergon>,
) -> Result<DatasetSummary, FormatsError> {
    let mut summary = DatasetSummary::default();
    if !formats.has_other_than_webshart() {
        if let Some(e) = early() {
            e.discard();
        }
        return Ok(summary);
    }
    // Energon's rows come from the early build or `build_from_pieces`.
    let read = |s: &String| ShardPiece::read_head(&paths::piece(layout, s));
    let mut dali = (Vec::new(), Vec::new());
    let mut wids = Vec::new();
    let mut energon_shards = Vec::new();
    for s in shards {
        let p = read(s)?;
        summary.samples += p.samples;
        summary.kept += p.kept;
        for (k, n) in &p.left_out {
            *summary.left_out.entry(k.clone()).or_default() += n;
        }
        if let Some(d) = p.dali.filter(|d| d.samples > 0) {
            let idx = paths::dali_idx(layout, s)
                .ok_or_else(|| FormatsError::Bad(format!("bad shard name {s:?}")))?;
            dali.0.push(p.tar_path.clone());
            dali.1.push(idx.display().to_string());
            count(&mut summary, "dali", d.samples);
        }
        if let Some(w) = &p.wids {
            match &w.unreadable {
                Some(why) => summary.wids_unreadable.push(format!("{s}: {why}")),
                None if w.nsamples > 0 => {
                    wids.push(WidsShard {
                        url: p.tar_path.clone(),
                        nsamples: w.nsamples,
                        filesize: p.filesize,
                    });
                    count(&mut summary, "wids", w.nsamples);
                }
                None => {}
            }
        }
        if p.energon.as_ref().is_some_and(|e| e.count > 0) {
            energon_shards.push((s.clone(), format!("{}\0{}\0", p.tar_path, p.filesize)));
        }
    }
    let mut files = Vec::new();
    if formats.contains(IndexFormat::Dali) {
        let doc = serde_json::json!({"paths": dali.0, "index_paths": dali.1});
        files.push((paths::dali_list(layout), pretty(&doc)));
    }
    if formats.contains(IndexFormat::Wids) {
        let doc = crate::wids::dataset_json(names.name, &wids);
        files.push((paths::wids_json(layout), doc));
    }
    if formats.contains(IndexFormat::Energon) {
        files.extend(sample_loader_files(layout, names.caption_field));
    }
    write_all_atomic(&files)?;
    if formats.contains(IndexFormat::Energon) {
        build_energon(layout, &energon_shards, &mut summary, early())?;
    } else if let Some(e) = early() {
        e.discard();
    }
    Ok(summary)
}

fn count(summary: &mut DatasetSummary, format: &str, samples: u64) {
    let c = summary.formats.entry(format.to_string()).or_default();
    c.samples += samples;
    c.shards += 1;
}

fn pretty(doc: &serde_json::Value) -> Vec<u8> {
    format!("{doc:#}\n").into_bytes()
}

/// Energon's `index.sqlite` built while the shards committed (in commit
/// order, each shard under its place in the job's list), not finished yet.
pub struct EarlyEnergon {
    pub build: energon_sqlite::SqliteBuild,
    /// Where it is being built (a private name).
    pub tmp: PathBuf,
    /// What each shard added.
    pub shards: Vec<EarlyShard>,
}

/// One shard of an [`EarlyEnergon`].
pub struct EarlyShard {
    /// Its place in the job's list of shards.
    pub id: u64,
    pub name: String,
    /// Samples as energon counts them, and the keys left out.
    pub count: u64,
    pub excluded: Vec<String>,
    /// Rows it added (samples and parts).
    pub rows: u64,
}

impl EarlyEnergon {
    /// Whether it holds exactly `shards`, each under its place in that list
    /// (energon's `tar_file_id`), and no key twice: only then is it the
    /// index a build from the pieces in dataset order would make.
    fn fits(&self, shards: &[String]) -> bool {
        let mut ids: Vec<(u64, &str)> = self
            .shards
            .iter()
            .map(|s| (s.id, s.name.as_str()))
            .collect();
        ids.sort_unstable();
        self.build.duplicates().is_empty()
            && ids.len() == shards.len()
            && ids
                .iter()
                .enumerate()
                .all(|(i, (id, name))| *id == i as u64 && shards[i] == *name)
    }

    /// Drops the build and its file.
    pub fn discard(self) {
        drop(self.build);
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// What a build of `index.sqlite` found.
#[derive(Default)]
struct Built {
    dups: Vec<(u64, String)>,
    counts: Vec<(String, u64)>,
    excluded: Vec<(String, String)>,
    rows: u64,
}

/// Finishes the early build (its shards in dataset order).
fn finish_early(mut e: EarlyEnergon) -> Result<Built, FormatsError> {
    e.shards.sort_by_key(|s| s.id);
    let mut built = Built::default();
    for s in e.shards {
        built.counts.push((s.name.clone(), s.count));
        built.rows += s.rows;
        built
            .excluded
            .extend(s.excluded.into_iter().map(|k| (s.name.clone(), k)));
    }
    built.dups = e.build.finish()?;
    Ok(built)
}

/// Builds `index.sqlite` at `tmp` from the committed pieces of `shards`.
fn build_from_pieces(
    layout: &OutputLayout,
    shards: &[String],
    tmp: &Path,
) -> Result<Built, FormatsError> {
    let mut built = Built::default();
    let mut it = shards.iter().enumerate();
    built.dups = energon_sqlite::build_sqlite(tmp, || {
        let Some((id, s)) = it.next() else {
            return Ok(None);
        };
        let p = ShardPiece::read(&paths::piece(layout, s))?;
        let e = p.energon.unwrap_or_default();
        built.counts.push((s.clone(), e.count));
        built
            .excluded
            .extend(e.excluded.iter().map(|k| (s.clone(), k.clone())));
        built.rows += (e.samples.len() + e.parts.len()) as u64;
        Ok(Some((id as u64, e)))
    })?;
    Ok(built)
}

/// `.nv-meta/`: the SQLite index (the early build when it fits, else
/// streamed from the pieces shard by shard), then `.info.json`,
/// `split.yaml` and `index.uuid`.
fn build_energon(
    layout: &OutputLayout,
    energon_shards: &[(String, String)],
    summary: &mut DatasetSummary,
    early: Option<EarlyEnergon>,
) -> Result<(), FormatsError> {
    let shards: Vec<String> = energon_shards.iter().map(|(s, _)| s.clone()).collect();
    let shards = shards.as_slice();
    let meta = paths::nv_meta(layout);
    std::fs::create_dir_all(&meta).map_err(FormatsError::io("create folder", &meta))?;
    let db = meta.join("index.sqlite");
    let started = Instant::now();
    let (tmp, built) = match early {
        Some(e) if e.fits(shards) => (e.tmp.clone(), finish_early(e)),
        other => {
            if let Some(e) = other {
                e.discard();
            }
            let tmp = unique_tmp(&db);
            let built = build_from_pieces(layout, shards, &tmp);
            (tmp, built)
        }
    };
    let built = match built {
        Ok(b) => b,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let rows = built.rows;
    // Synced while the other files of .nv-meta/ are written and synced.
    let synced = std::thread::scope(|s| {
        let synced = s.spawn(|| sync_file(&tmp));
        let others = energon_meta_files(layout, energon_shards, shards, summary, built)
            .and_then(|files| write_all_atomic(&files));
        let synced = synced
            .join()
            .unwrap_or_else(|_| Err(FormatsError::Bad("a sync thread panicked".into())));
        synced.and(others)
    });
    if let Err(e) = synced {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    shardprep_core::layout::rename_into_place(&tmp, &db)
        .map_err(FormatsError::io("publish", &db))?;
    summary.sqlite_ms = started.elapsed().as_millis() as u64;
    summary.sqlite_rows = rows;
    Ok(())
}

/// `.info.json`, `split.yaml` (the excluded samples and the keys energon
/// keeps once) and `index.uuid`; counts energon's samples in `summary`.
fn energon_meta_files(
    layout: &OutputLayout,
    energon_shards: &[(String, String)],
    shards: &[String],
    summary: &mut DatasetSummary,
    built: Built,
) -> Result<Vec<(PathBuf, Vec<u8>)>, FormatsError> {
    let Built {
        dups,
        counts,
        mut excluded,
        ..
    } = built;
    let meta = paths::nv_meta(layout);
    for (id, key) in dups {
        let shard = &shards[id as usize];
        summary
            .energon_duplicate_keys
            .push(format!("{shard}/{key}"));
        excluded.push((shard.clone(), key));
    }
    let listed: u64 = counts.iter().map(|(_, c)| c).sum::<u64>() - excluded.len() as u64;
    let c = summary.formats.entry("energon".into()).or_default();
    c.samples = listed;
    c.shards = counts.len() as u64;
    let info = energon::info_json(&counts);
    let split = energon::split_yaml(shards, &excluded);
    let uuid = index_uuid(layout, energon_shards, [&info, &split])?;
    Ok(vec![
        (meta.join(".info.json"), info),
        (meta.join("split.yaml"), split),
        (meta.join("index.uuid"), uuid.into_bytes()),
    ])
}

/// `index.uuid`: energon keys its caches on it and makes a new one whenever
/// the index changes; here it is derived from what the index holds (each
/// shard's tar, size and sample offsets, the counts and the split), so the
/// same shards give the same bytes and other shards another UUID.
fn index_uuid(
    layout: &OutputLayout,
    shards: &[(String, String)],
    meta: [&[u8]; 2],
) -> Result<String, FormatsError> {
    let mut content = meta.concat();
    for (s, tar) in shards {
        content.extend_from_slice(tar.as_bytes());
        let idx = paths::energon_tar_idx(layout, s)
            .ok_or_else(|| FormatsError::Bad(format!("bad shard name {s:?}")))?;
        let offsets = std::fs::read(&idx).map_err(FormatsError::io("read", &idx))?;
        content.extend_from_slice(&offsets);
    }
    let namespace = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, b"shardprep:energon-index");
    Ok(uuid::Uuid::new_v5(&namespace, &content).to_string())
}

/// `.nv-meta/dataset.yaml` and `sample_loader.py` for image + caption
/// samples (energon's `CaptioningSample`), unless the user has their own.
fn sample_loader_files(layout: &OutputLayout, caption_field: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let meta = paths::nv_meta(layout);
    let yaml = meta.join("dataset.yaml");
    // Not a file (a directory in the way) is not the user's own: replaced.
    if yaml.is_file() && !needs_sample_loader(&meta) {
        return Vec::new();
    }
    let field = serde_json::Value::from(caption_field).to_string();
    let loader = format!(
        "# Written by shardprep: image + caption samples for megatron-energon.\n\
         # Edit freely (shardprep keeps an existing dataset.yaml and this file).\n\
         IMAGE_PARTS = (\"jpg\", \"jpeg\", \"png\", \"JPG\", \"JPEG\", \"PNG\", \"webp\")\n\
         CAPTION_FIELD = {field}\n\n\n\
         def sample_loader(raw: dict) -> dict:\n\
         \x20   image = next(raw[p] for p in IMAGE_PARTS if p in raw)\n\
         \x20   caption = raw[\"json\"][CAPTION_FIELD]\n\
         \x20   if isinstance(caption, list):\n\
         \x20       caption = next((c for c in caption if c), \"\")\n\
         \x20   return dict(image=image, caption=caption)\n\n\n\
         def part_filter(part: str) -> bool:\n\
         \x20   return part in IMAGE_PARTS or part == \"json\"\n"
    );
    let mut files = vec![(meta.join("sample_loader.py"), loader.into_bytes())];
    if !yaml.is_file() {
        let dataset = "sample_type:\n  __module__: megatron.energon\n  __class__: CaptioningSample\n\
                       sample_loader: sample_loader.py:sample_loader\n\
                       part_filter: sample_loader.py:part_filter\n";
        files.push((yaml, dataset.as_bytes().to_vec()));
    }
    files
}

/// Whether `.nv-meta/dataset.yaml` names `sample_loader.py` and it is missing.
pub(crate) fn needs_sample_loader(meta: &Path) -> bool {
    let names_it = std::fs::read_to_string(meta.join("dataset.yaml"))
        .is_ok_and(|y| y.contains("sample_loader.py"));
    names_it && !meta.join("sample_loader.py").is_file()
}

fn sync_file(p: &Path) -> Result<(), FormatsError> {
    std::fs::File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(FormatsError::io("sync", p))
}

/// Writes each file through a temporary name, syncs them all at once
/// (their flushes overlap instead of waiting one after the other at the
/// job's end), then renames each into place: a file is whole or absent.
fn write_all_atomic(files: &[(PathBuf, Vec<u8>)]) -> Result<(), FormatsError> {
    let mut tmps = Vec::with_capacity(files.len());
    for (path, bytes) in files {
        let parent = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(FormatsError::io("create folder", parent))?;
        tmps.push((unique_tmp(path), bytes.as_slice()));
    }
    let res = crate::shard::write_all_synced(&tmps).and_then(|()| {
        tmps.iter()
            .zip(files)
            .try_for_each(|((tmp, _), (path, _))| {
                shardprep_core::layout::rename_into_place(tmp, path)
                    .map_err(FormatsError::io("publish", path))
            })
    });
    if res.is_err() {
        for (tmp, _) in &tmps {
            let _ = std::fs::remove_file(tmp);
        }
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::energon::EnergonShard;
    use crate::energon_sqlite::{SqliteBuild, build_sqlite};

    fn shard(keys: &[&str]) -> EnergonShard {
        let mut s = EnergonShard {
            count: keys.len() as u64,
            ..EnergonShard::default()
        };
        for (i, k) in keys.iter().enumerate() {
            let i = i as u64;
            s.samples.push((k.to_string(), i, i * 1024, 1024));
            s.parts.push((i, "jpg".into(), i * 1024 + 512, 3));
        }
        s
    }

    /// Adds `(id, name, keys)` in the order given, as commits land.
    fn early(dir: &Path, adds: &[(u64, &str, &[&str])]) -> EarlyEnergon {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!("early-{n}.sqlite"));
        let mut build = SqliteBuild::create(&tmp).unwrap();
        let mut shards = Vec::new();
        for (id, name, keys) in adds {
            let s = shard(keys);
            build.add(*id, &s.rows()).unwrap();
            shards.push(EarlyShard {
                id: *id,
                name: name.to_string(),
                count: s.count,
                excluded: Vec::new(),
                rows: 2 * keys.len() as u64,
            });
        }
        EarlyEnergon { build, tmp, shards }
    }

    fn rows(path: &Path) -> Vec<(i64, String, i64)> {
        let db = rusqlite::Connection::open(path).unwrap();
        let mut st = db
            .prepare(
                "SELECT tar_file_id, sample_key, sample_index FROM samples ORDER BY sample_key",
            )
            .unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn an_early_build_in_commit_order_is_the_build_in_dataset_order() {
        let dir = tempfile::tempdir().unwrap();
        let names = ["s0.tar".to_string(), "s1.tar".to_string()];
        let e = early(
            dir.path(),
            &[(1, "s1.tar", &["c", "d"]), (0, "s0.tar", &["a", "b"])],
        );
        assert!(e.fits(&names));
        let tmp = e.tmp.clone();
        let built = finish_early(e).unwrap();
        assert_eq!(
            built.counts,
            vec![("s0.tar".into(), 2), ("s1.tar".into(), 2)]
        );
        let in_order = dir.path().join("in-order.sqlite");
        let mut pieces = vec![(0, shard(&["a", "b"])), (1, shard(&["c", "d"]))].into_iter();
        build_sqlite(&in_order, || Ok(pieces.next())).unwrap();
        assert_eq!(rows(&tmp), rows(&in_order));
    }

    #[test]
    fn an_early_build_that_is_not_the_dataset_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let names = ["s0.tar".to_string(), "s1.tar".to_string()];
        // A shard missing (failed, or not sent).
        assert!(!early(dir.path(), &[(0, "s0.tar", &["a"])]).fits(&names));
        // A shard under another place (a failed shard before it shifts the ids).
        let shifted = early(dir.path(), &[(0, "s0.tar", &["a"]), (2, "s1.tar", &["b"])]);
        assert!(!shifted.fits(&names));
        // A key in two shards: which one keeps it depends on the order.
        let dup = early(
            dir.path(),
            &[(1, "s1.tar", &["a", "x"]), (0, "s0.tar", &["a", "y"])],
        );
        assert!(!dup.fits(&names));
        let tmp = dup.tmp.clone();
        dup.discard();
        assert!(!tmp.exists());
        // The same shard twice: the build gives up (the end builds from the pieces).
        let mut twice = SqliteBuild::create(&dir.path().join("twice.sqlite")).unwrap();
        twice.add(0, &shard(&["a"]).rows()).unwrap();
        assert!(twice.add(0, &shard(&["b"]).rows()).is_err());
    }
}

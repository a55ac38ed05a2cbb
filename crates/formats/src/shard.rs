//! Per-shard pieces: the worker writes them under temporary names with its
//! attempt; the coordinator publishes them in its commit, before the
//! manifest (whole or nothing, like the webshart index), and takes them
//! back when the shard is redone.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shardprep_core::index_format::{IndexFormat, IndexFormats};
use shardprep_core::layout::OutputLayout;

use crate::dali::{self, DaliCounts};
use crate::energon::{self, EnergonRows, EnergonShard};
use crate::group::groups;
use crate::input::ShardInput;
use crate::paths::{self, AttemptNames};
use crate::{FormatsError, wids};

/// What one shard contributes to the formats (committed as
/// `fragments/<stem>.formats.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPiece {
    pub shard_name: String,
    /// The tar as readers open it (absolute).
    pub tar_path: String,
    pub filesize: u64,
    /// Samples of the tar (as energon and DALI group members).
    pub samples: u64,
    /// Samples every format lists (those with a parquet row).
    pub kept: u64,
    /// Samples left out, by reason.
    pub left_out: BTreeMap<String, u64>,
    /// Written by `piece_json` alone (its rows straight from the groups).
    #[serde(default, skip_serializing)]
    pub energon: Option<EnergonShard>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dali: Option<DaliCounts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wids: Option<WidsPiece>,
}

/// The shard as wids sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WidsPiece {
    /// Samples wids finds in the tar (its `nsamples`).
    pub nsamples: u64,
    /// Why wids cannot read the tar (then it is not in the wids JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
}

impl ShardPiece {
    /// Whether the piece has what `formats` need.
    pub fn covers(&self, formats: &IndexFormats) -> bool {
        formats.iter().all(|f| match f {
            IndexFormat::Webshart => true,
            IndexFormat::Energon => self.energon.is_some(),
            IndexFormat::Dali => self.dali.is_some(),
            IndexFormat::Wids => self.wids.is_some(),
        })
    }

    pub fn read(path: &Path) -> Result<ShardPiece, FormatsError> {
        let bytes = std::fs::read(path).map_err(FormatsError::io("read", path))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| FormatsError::Bad(format!("unreadable piece {}: {e}", path.display())))
    }

    /// The piece without energon's rows (`energon` keeps its `count`; its
    /// samples, parts and excluded keys are skipped unread): all that the
    /// commit, the dataset-wide files and their checks need, for a fraction
    /// of a full read's time (a piece is mostly energon's rows).
    pub fn read_head(path: &Path) -> Result<ShardPiece, FormatsError> {
        let bytes = std::fs::read(path).map_err(FormatsError::io("read", path))?;
        let head: PieceHead = serde_json::from_slice(&bytes)
            .map_err(|e| FormatsError::Bad(format!("unreadable piece {}: {e}", path.display())))?;
        Ok(ShardPiece {
            shard_name: head.shard_name,
            tar_path: head.tar_path,
            filesize: head.filesize,
            samples: head.samples,
            kept: head.kept,
            left_out: head.left_out,
            energon: head.energon.map(|e| EnergonShard {
                count: e.count,
                ..EnergonShard::default()
            }),
            dali: head.dali,
            wids: head.wids,
        })
    }
}

/// The energon part of a piece as [`ShardPiece::with_energon_rows`] reads
/// it: the rows' string borrowed from the file's bytes.
#[derive(Deserialize)]
struct EnergonRowsHead<'a> {
    #[serde(default, borrow)]
    energon: Option<EnergonRowsWire<'a>>,
}

#[derive(Deserialize)]
struct EnergonRowsWire<'a> {
    count: u64,
    #[serde(default, borrow)]
    rows: Option<std::borrow::Cow<'a, str>>,
}

impl ShardPiece {
    /// Calls `f` with the piece's energon `count` and rows, decoded without
    /// copying each key and part name (none when the piece has no energon
    /// part); older pieces (rows as JSON arrays) are read in full.
    pub fn with_energon_rows<R>(
        path: &Path,
        f: impl FnOnce(u64, &EnergonRows<'_>) -> R,
    ) -> Result<R, FormatsError> {
        let bytes = std::fs::read(path).map_err(FormatsError::io("read", path))?;
        let bad =
            |e: String| FormatsError::Bad(format!("unreadable piece {}: {e}", path.display()));
        let head: EnergonRowsHead<'_> =
            serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        match head.energon {
            None => Ok(f(0, &EnergonRows::default())),
            Some(EnergonRowsWire {
                count,
                rows: Some(rows),
            }) => {
                let decoded = energon::decode_base64(&rows).map_err(bad)?;
                let rows = EnergonRows::from_bytes(&decoded).map_err(bad)?;
                Ok(f(count, &rows))
            }
            Some(EnergonRowsWire { rows: None, .. }) => {
                let e = ShardPiece::read(path)?.energon.unwrap_or_default();
                Ok(f(e.count, &e.rows()))
            }
        }
    }
}

/// [`ShardPiece`] as [`ShardPiece::read_head`] reads it (unknown fields,
/// here energon's rows, are skipped).
#[derive(Deserialize)]
struct PieceHead {
    shard_name: String,
    tar_path: String,
    filesize: u64,
    samples: u64,
    kept: u64,
    left_out: BTreeMap<String, u64>,
    #[serde(default)]
    energon: Option<EnergonCount>,
    #[serde(default)]
    dali: Option<DaliCounts>,
    #[serde(default)]
    wids: Option<WidsPiece>,
}

#[derive(Deserialize)]
struct EnergonCount {
    count: u64,
}

/// The piece's JSON: `piece` (serde leaves its energon part out), then
/// energon's `{"count", "rows"}` when `rows` are given, their base64
/// written straight in (it needs no escape, so 2 MB of it are not scanned
/// for one).
fn piece_json(piece: &ShardPiece, rows: Option<&EnergonRows<'_>>) -> Result<Vec<u8>, String> {
    let mut json = serde_json::to_string(piece).map_err(|e| e.to_string())?;
    if let (Some(e), Some(rows)) = (&piece.energon, rows) {
        // `{...}` -> `{..., "energon": ...}`
        if json.pop() != Some('}') {
            return Err("the piece is not a JSON object".into());
        }
        json.push_str(&format!(r#","energon":{{"count":{},"rows":""#, e.count));
        rows.encode_into(&mut json)?;
        json.push_str("\"}}");
    }
    Ok(json.into_bytes())
}

/// Builds the shard's pieces for `formats` and writes them, synced, to
/// `tmp_dir` under the attempt's names ([`AttemptNames`]). Returns the
/// piece as [`ShardPiece::read_head`] reads it (energon's `count` only).
pub fn write_attempt(
    tmp_dir: &Path,
    lease_id: u64,
    formats: &IndexFormats,
    input: &ShardInput,
) -> Result<ShardPiece, FormatsError> {
    let names = AttemptNames::new(&input.shard_name, lease_id);
    let gs = groups(input);
    let mut files = Vec::new();
    let mut piece = ShardPiece {
        shard_name: input.shard_name.clone(),
        tar_path: input.tar_path.display().to_string(),
        filesize: input.filesize,
        samples: gs.len() as u64,
        ..Default::default()
    };
    for g in &gs {
        match g.left_out {
            None => piece.kept += 1,
            Some(why) => *piece.left_out.entry(why.as_str().to_string()).or_default() += 1,
        }
    }
    let mut energon_rows = None;
    if formats.contains(IndexFormat::Energon) {
        let (idx, rows) = energon::shard_pieces(&gs, input.end_offset);
        files.push((tmp_dir.join(&names.energon_idx), idx));
        piece.energon = Some(EnergonShard {
            count: gs.len() as u64,
            ..EnergonShard::default()
        });
        energon_rows = Some(rows);
    }
    if formats.contains(IndexFormat::Dali) {
        let (text, counts) = dali::index_text(&gs);
        if let Some(text) = text {
            files.push((tmp_dir.join(&names.dali_idx), text.into_bytes()));
        }
        piece.dali = Some(counts);
    }
    if formats.contains(IndexFormat::Wids) {
        piece.wids = Some(match wids::wids_count(input) {
            Ok(nsamples) => WidsPiece {
                nsamples,
                unreadable: None,
            },
            Err(why) => WidsPiece {
                nsamples: 0,
                unreadable: Some(why),
            },
        });
    }
    let bytes = piece_json(&piece, energon_rows.as_ref()).map_err(|e| {
        FormatsError::Bad(format!(
            "cannot encode the piece of {}: {e}",
            input.shard_name
        ))
    })?;
    files.push((tmp_dir.join(&names.piece), bytes));
    write_all_synced(&files)?;
    Ok(piece)
}

/// Writes each file, then syncs them all at once, one thread each: their
/// flushes overlap (and share the journal's commits) instead of waiting
/// one after the other, which the shard's commit waits for.
pub(crate) fn write_all_synced<B: AsRef<[u8]>>(files: &[(PathBuf, B)]) -> Result<(), FormatsError> {
    let mut written = Vec::with_capacity(files.len());
    for (path, bytes) in files {
        let mut f = File::create(path).map_err(FormatsError::io("create", path))?;
        f.write_all(bytes.as_ref())
            .map_err(FormatsError::io("write", path))?;
        written.push((path, f));
    }
    std::thread::scope(|s| {
        let syncs: Vec<_> = written
            .iter()
            .map(|(path, f)| s.spawn(move || f.sync_all().map_err(FormatsError::io("sync", path))))
            .collect();
        syncs.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err(FormatsError::Bad("a sync thread panicked".into())))
        })
    })
}

/// A shard's pieces, ready to publish: every file in `tmp/` (the energon
/// tar link included), the folders made; only renames are left.
#[derive(Debug, Default)]
pub struct PreparedPieces {
    /// `tmp/` file → its place under `OUT/`, the piece itself last.
    renames: Vec<(PathBuf, PathBuf)>,
    /// Published files of an earlier commit the new one has no use for.
    stale: Vec<PathBuf>,
}

/// Prepares the attempt's pieces of `shard_name` (lease `lease_id`) for
/// [`PreparedPieces::publish`]: reads its piece, makes the folders and the
/// energon symlink to the tar (under a temporary name in `tmp/`). All the
/// file work of the commit but the renames.
pub fn prepare_shard(
    layout: &OutputLayout,
    shard_name: &str,
    lease_id: u64,
) -> Result<PreparedPieces, FormatsError> {
    let names = AttemptNames::new(shard_name, lease_id);
    let tmp = layout.tmp_dir();
    let piece_tmp = tmp.join(&names.piece);
    let piece = ShardPiece::read_head(&piece_tmp).map_err(|e| {
        FormatsError::Bad(format!(
            "the worker wrote no formats piece for shard {shard_name}: {e}"
        ))
    })?;
    let bad_name = || {
        FormatsError::Bad(format!(
            "shard name {shard_name:?} cannot name a file under OUT/"
        ))
    };
    let mut p = PreparedPieces::default();
    if let Some(e) = &piece.energon {
        let idx = paths::energon_tar_idx(layout, shard_name).ok_or_else(bad_name)?;
        let link = paths::energon_tar(layout, shard_name).ok_or_else(bad_name)?;
        if e.count > 0 {
            let link_tmp = tmp.join(&names.energon_link);
            let _ = std::fs::remove_file(&link_tmp);
            std::os::unix::fs::symlink(&piece.tar_path, &link_tmp)
                .map_err(FormatsError::io("create symlink", &link_tmp))?;
            p.add(tmp.join(&names.energon_idx), idx)?;
            p.add(link_tmp, link)?;
        } else {
            p.stale.extend([idx, link]);
        }
    }
    if let Some(d) = &piece.dali {
        let idx = paths::dali_idx(layout, shard_name).ok_or_else(bad_name)?;
        if d.samples > 0 {
            p.add(tmp.join(&names.dali_idx), idx)?;
        } else {
            p.stale.push(idx);
        }
    }
    p.add(piece_tmp, paths::piece(layout, shard_name))?;
    Ok(p)
}

impl PreparedPieces {
    fn add(&mut self, src: PathBuf, dst: PathBuf) -> Result<(), FormatsError> {
        let parent = dst.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(FormatsError::io("create folder", parent))?;
        self.renames.push((src, dst));
        Ok(())
    }

    /// Each piece's file in `tmp/` and where it is published.
    pub fn files(&self) -> impl Iterator<Item = (&Path, &Path)> {
        self.renames.iter().map(|(s, d)| (s.as_path(), d.as_path()))
    }

    /// Renames the pieces into place (the piece last). Call before the
    /// manifest's rename, under the commit's lock.
    pub fn publish(&self) -> Result<(), FormatsError> {
        for p in &self.stale {
            remove_if_there(p);
        }
        for (src, dst) in &self.renames {
            shardprep_core::layout::rename_into_place(src, dst)
                .map_err(FormatsError::io("publish", dst))?;
        }
        Ok(())
    }

    /// Makes the renames durable (their folders synced; best effort).
    pub fn sync(&self) {
        let mut dirs: Vec<&Path> = self
            .renames
            .iter()
            .filter_map(|(_, d)| d.parent())
            .collect();
        dirs.sort();
        dirs.dedup();
        for d in dirs {
            if let Ok(f) = File::open(d) {
                let _ = f.sync_all();
            }
        }
    }
}

/// Publishes the attempt's pieces of `shard_name` at once (prepare,
/// publish, sync): for tools and tests.
pub fn commit_shard(
    layout: &OutputLayout,
    shard_name: &str,
    lease_id: u64,
) -> Result<(), FormatsError> {
    let p = prepare_shard(layout, shard_name, lease_id)?;
    p.publish()?;
    p.sync();
    Ok(())
}

fn remove_if_there(p: &Path) {
    let _ = std::fs::remove_file(p);
}

/// Takes back a committed shard's pieces (its published files and its piece).
pub fn remove_shard(layout: &OutputLayout, shard_name: &str) {
    for p in [
        paths::energon_tar_idx(layout, shard_name),
        paths::energon_tar(layout, shard_name),
        paths::dali_idx(layout, shard_name),
        Some(paths::piece(layout, shard_name)),
    ]
    .into_iter()
    .flatten()
    {
        remove_if_there(&p);
    }
}

/// Removes a stale attempt's temporary files (best effort); `stem` is the
/// shard's file stem (`shard_file_stem`).
pub fn discard_attempt(layout: &OutputLayout, stem: &str, lease_id: u64) {
    let names = AttemptNames::from_stem(stem, lease_id);
    for n in [
        names.piece,
        names.energon_idx,
        names.energon_link,
        names.dali_idx,
    ] {
        remove_if_there(&layout.tmp_dir().join(n));
    }
}

/// Why a committed shard does not hold the pieces `formats` need (then it
/// is redone); `None` when it does.
pub fn missing_piece(
    layout: &OutputLayout,
    shard_name: &str,
    formats: &IndexFormats,
) -> Option<String> {
    if !formats.has_other_than_webshart() {
        return None;
    }
    match ShardPiece::read_head(&paths::piece(layout, shard_name)) {
        Ok(piece) => missing_from(layout, shard_name, &piece, formats),
        Err(e) => Some(format!("its --index-format pieces are missing ({e})")),
    }
}

/// [`missing_piece`] of a piece already read.
pub(crate) fn missing_from(
    layout: &OutputLayout,
    shard_name: &str,
    piece: &ShardPiece,
    formats: &IndexFormats,
) -> Option<String> {
    if !piece.covers(formats) {
        return Some(format!(
            "it was committed without some of the formats {formats}"
        ));
    }
    let present = |p: Option<std::path::PathBuf>| p.is_some_and(|p| p.exists());
    if let Some(e) = &piece.energon
        && e.count > 0
        && formats.contains(IndexFormat::Energon)
        && !(present(paths::energon_tar_idx(layout, shard_name))
            && present(paths::energon_tar(layout, shard_name)))
    {
        return Some("its energon .tar.idx or tar link is missing".into());
    }
    if let Some(d) = &piece.dali
        && d.samples > 0
        && formats.contains(IndexFormat::Dali)
        && !present(paths::dali_idx(layout, shard_name))
    {
        return Some("its DALI .idx is missing".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::{MemberKind, TarMember};

    #[test]
    fn a_written_piece_reads_back_whole_in_part_and_borrowed() {
        let dir = tempfile::tempdir().unwrap();
        let mut input = ShardInput::new("s/a b.tar".into(), "/data/s/a b.tar".into(), 9000);
        for (i, name) in ["k\"1.jpg", "k\"1.json", "k2.jpg", "é{3}.png"]
            .iter()
            .enumerate()
        {
            let start = 1024 * i as u64;
            let member = TarMember {
                name: name.as_bytes(),
                start_offset: start,
                header_offset: start,
                data_offset: start + 512,
                size: 10,
                kind: MemberKind::Regular,
                raw_header_name: None,
                typeflag: b'0',
            };
            input.push(member, start + 1024);
        }
        input.add_row_image("k\"1.jpg");
        input.add_row_image("é{3}.png");
        let formats: IndexFormats = "energon,dali,wids".parse().unwrap();
        let piece = write_attempt(dir.path(), 7, &formats, &input).unwrap();
        let path = dir.path().join(AttemptNames::new("s/a b.tar", 7).piece);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(r#","energon":{"count":3,"rows":""#), "{text}");
        let full = ShardPiece::read(&path).unwrap();
        let energon = full.energon.clone().unwrap();
        assert_eq!((energon.count, full.kept, full.samples), (3, 2, 3));
        assert_eq!(energon.excluded, vec!["k2".to_string()]);
        assert_eq!(energon.samples[0].0, "k\"1");
        assert_eq!(energon.parts.len(), 3);
        assert_eq!(ShardPiece::read_head(&path).unwrap(), piece);
        let borrowed =
            ShardPiece::with_energon_rows(&path, |count, rows| (count, rows.to_shard(count)))
                .unwrap();
        assert_eq!(borrowed, (3, energon));
    }
}

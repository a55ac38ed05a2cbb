//! Small thumbnails of the problem images that still decode, as data URIs.
//! Extract mode only: in index mode the images stay inside the tars.

use std::collections::HashMap;
use std::io::Cursor;

use base64::Engine;
use shardprep_core::layout::OutputLayout;

use crate::report::Report;

/// Images shown at most (the report lists the rest).
const MAX_THUMBS: usize = 24;
/// Files larger than this are not opened for a thumbnail.
const MAX_FILE_BYTES: u64 = 64 << 20;
/// Longest edge of a thumbnail, in pixels.
const EDGE: u32 = 96;

/// One problem image: where it is and its picture, if it decodes.
#[derive(Debug, Clone)]
pub struct Thumb {
    pub shard: String,
    pub member: String,
    pub kind: String,
    pub detail: String,
    /// `data:image/png;base64,...`, or why there is none.
    pub picture: Result<String, String>,
}

/// Thumbnails of the first listed image problems.
pub fn of_problems(layout: &OutputLayout, report: &Report) -> Vec<Thumb> {
    of_problems_cached(layout, report, &mut HashMap::new(), usize::MAX)
}

/// [`of_problems`], decoding each image once and at most `budget` new ones
/// per call (the others say they come with a later refresh): `cache` keeps
/// the pictures by member path across the live page's refreshes.
pub fn of_problems_cached(
    layout: &OutputLayout,
    report: &Report,
    cache: &mut HashMap<String, Result<String, String>>,
    mut budget: usize,
) -> Vec<Thumb> {
    let extracted = report.mode != "index";
    let mut picture = |member: &str| -> Result<String, String> {
        if let Some(p) = cache.get(member) {
            return p.clone();
        }
        if budget == 0 {
            return Err("thumbnail on a later refresh".into());
        }
        budget -= 1;
        let p = thumbnail(&layout.data_dir().join(member));
        cache.insert(member.to_string(), p.clone());
        p
    };
    report
        .shards
        .iter()
        .flat_map(|s| s.image_issues.iter().map(move |i| (s.name.as_str(), i)))
        .take(MAX_THUMBS)
        .map(|(shard, i)| Thumb {
            shard: shard.to_string(),
            member: i.member.clone(),
            kind: super::as_text(&i.kind),
            detail: i.detail.clone(),
            picture: if extracted {
                picture(&i.member)
            } else {
                Err("index mode: the image stays in its tar".into())
            },
        })
        .collect()
}

/// A PNG thumbnail of the image at `path` as a data URI.
fn thumbnail(path: &std::path::Path) -> Result<String, String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("not in data/: {e}"))?;
    if !meta.is_file() || meta.len() > MAX_FILE_BYTES {
        return Err("not a regular file of a size worth opening".into());
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(512 << 20);
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| format!("does not decode: {e}"))?;
    let small = img.thumbnail(EDGE, EDGE).to_rgb8();
    let mut png = Vec::new();
    small
        .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    ))
}

//! One shard's webshart index file as the coordinator reads it: parsed in
//! one streamed pass, each entry handed to a visitor as it is read (no map
//! of 25,000 names is built). The check of an index (`verify_index`) and
//! the page's numbers read it through here, in one read at a job's end.

use std::borrow::Cow;
use std::fmt;
use std::path::Path;

use serde::Deserialize;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};

/// The fields of one entry that are read (others are skipped).
#[derive(Deserialize)]
pub struct IndexEntry<'a> {
    pub offset: Option<u64>,
    pub length: Option<u64>,
    pub width: Option<u64>,
    pub height: Option<u64>,
    /// Borrowed from the file's bytes when it holds no escapes.
    #[serde(borrow)]
    pub captions: Option<Cow<'a, str>>,
}

/// What the file says besides its entries.
#[derive(Debug, Default)]
pub struct IndexHead {
    /// The tar's size the index was made for.
    pub filesize: Option<u64>,
    /// It has a `files` object at all.
    pub has_files: bool,
}

/// Reads the index at `path`, calling `visit` with each entry's name and
/// fields in file order. The error says why the file is not a readable index.
pub fn read(
    path: &Path,
    visit: &mut dyn FnMut(&str, &IndexEntry<'_>),
) -> Result<IndexHead, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    parse(&bytes, visit)
}

/// [`read`] of bytes already in memory.
pub fn parse(
    bytes: &[u8],
    visit: &mut dyn FnMut(&str, &IndexEntry<'_>),
) -> Result<IndexHead, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let head = Doc { visit }
        .deserialize(&mut de)
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(head)
}

/// A key as written (borrowed unless it holds escapes).
#[derive(Deserialize)]
struct Key<'a>(#[serde(borrow)] Cow<'a, str>);

/// The whole document: `filesize`, `files`, anything else skipped.
struct Doc<'v, 'f> {
    visit: &'v mut (dyn FnMut(&str, &IndexEntry<'_>) + 'f),
}

impl<'de> DeserializeSeed<'de> for Doc<'_, '_> {
    type Value = IndexHead;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<IndexHead, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Doc<'_, '_> {
    type Value = IndexHead;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a webshart index object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<IndexHead, A::Error> {
        let mut head = IndexHead::default();
        while let Some(Key(key)) = map.next_key()? {
            match key.as_ref() {
                "filesize" => head.filesize = map.next_value()?,
                "files" => {
                    map.next_value_seed(Files {
                        visit: &mut *self.visit,
                    })?;
                    head.has_files = true;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(head)
    }
}

/// The `files` object, entry by entry.
struct Files<'v, 'f> {
    visit: &'v mut (dyn FnMut(&str, &IndexEntry<'_>) + 'f),
}

impl<'de> DeserializeSeed<'de> for Files<'_, '_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Files<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of index entries")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(Key(name)) = map.next_key()? {
            let entry: IndexEntry<'de> = map.next_value()?;
            (self.visit)(&name, &entry);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_come_in_file_order_with_escapes_undone() {
        let text = br#"{"filesize": 4096, "path": "x.tar", "files": {
            "b.jpg": {"offset": 1536, "length": 10, "width": 640, "height": 480, "aspect": 1.3, "captions": "a \"cat\""},
            "a.json": {"offset": 512, "length": 20}}}"#;
        let mut seen = Vec::new();
        let head = parse(text, &mut |name, e| {
            seen.push((
                name.to_string(),
                e.offset,
                e.width,
                e.captions.as_deref().map(String::from),
            ))
        })
        .unwrap();
        assert_eq!(head.filesize, Some(4096));
        assert!(head.has_files);
        assert_eq!(
            seen,
            vec![
                (
                    "b.jpg".into(),
                    Some(1536),
                    Some(640),
                    Some("a \"cat\"".into())
                ),
                ("a.json".into(), Some(512), None, None),
            ]
        );
    }

    #[test]
    fn a_cut_file_is_an_error_and_no_files_is_said() {
        let mut n = 0;
        assert!(parse(br#"{"files": {"a.jpg": {"offset": 1"#, &mut |_, _| n += 1).is_err());
        let head = parse(br#"{"filesize": 1}"#, &mut |_, _| n += 1).unwrap();
        assert!(!head.has_files);
        assert_eq!(n, 0);
    }
}

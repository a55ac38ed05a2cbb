//! The webshart (0.6.0) index document of one shard, and the caption text it
//! carries for each image.
//!
//! ```json
//! {"path":"data-000000.tar","filesize":1234,"includes_image_geometry":true,
//!  "files":{"a.jpg":{"offset":1536,"length":999,"width":640,"height":480,
//!           "aspect":1.3333334,"captions":"a cat"},
//!           "a.json":{"offset":3072,"length":120}}}
//! ```
//! `offset` is the member's data offset. Files are sorted by name and
//! written compactly, so the same tar always gives the same bytes.

use std::fmt;

use serde::Serialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// One member's entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileEntry {
    pub offset: u64,
    pub length: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// `width / height` as webshart's own indexer stores it (f32).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aspect: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub captions: Option<String>,
}

impl FileEntry {
    /// An entry without image fields.
    pub fn plain(offset: u64, length: u64) -> Self {
        FileEntry {
            offset,
            length,
            width: None,
            height: None,
            aspect: None,
            captions: None,
        }
    }

    /// Sets the image geometry.
    pub fn set_dimensions(&mut self, width: u32, height: u32) {
        self.width = Some(width);
        self.height = Some(height);
        self.aspect = Some(width as f32 / height as f32);
    }
}

#[derive(Serialize)]
struct Doc<'a> {
    path: &'a str,
    filesize: u64,
    includes_image_geometry: bool,
    #[serde(serialize_with = "as_object")]
    files: &'a [(String, FileEntry)],
}

/// Entries (sorted by name, each name once) as one JSON object.
fn as_object<S: serde::Serializer>(
    files: &&[(String, FileEntry)],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(files.iter().map(|(k, v)| (k, v)))
}

/// The index document's bytes (compact JSON and a final newline).
/// `files` are sorted by name, each name once.
pub fn index_bytes(path: &str, filesize: u64, files: &[(String, FileEntry)]) -> Vec<u8> {
    let doc = Doc {
        path,
        filesize,
        includes_image_geometry: true,
        files,
    };
    // Serialising strings, integers and finite floats into a Vec cannot fail.
    let mut out = serde_json::to_vec(&doc).unwrap_or_default();
    out.push(b'\n');
    out
}

/// webshart's sample key: the name up to its last dot.
pub fn sample_key(name: &str) -> &str {
    name.rsplit_once('.').map_or(name, |(k, _)| k)
}

/// The caption text of a sample JSON, as `parse_sample` reads it: the
/// field's string, or the first non-blank string of a list; `None` when
/// missing, blank or not text (and for JSON that is not an object).
pub fn caption_of(json: &[u8], field: &str) -> Option<String> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let raw = OneField { name: field }.deserialize(&mut de).ok()??;
    let text = match serde_json::from_str::<serde_json::Value>(raw.get()).ok()? {
        serde_json::Value::String(s) => s,
        serde_json::Value::Array(items) => items.into_iter().find_map(|i| match i {
            serde_json::Value::String(s) if !s.trim().is_empty() => Some(s),
            _ => None,
        })?,
        _ => return None,
    };
    (!text.trim().is_empty()).then_some(text)
}

/// Deserialises a JSON object keeping the raw value of one key (the last one
/// when it repeats, as Python's `json.load`).
struct OneField<'n> {
    name: &'n str,
}

impl<'de> DeserializeSeed<'de> for OneField<'_> {
    type Value = Option<&'de RawValue>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for OneField<'_> {
    type Value = Option<&'de RawValue>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == self.name {
                found = Some(map.next_value::<&'de RawValue>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_follow_the_row_rules() {
        let c = |s: &str| caption_of(s.as_bytes(), "short_caption");
        assert_eq!(c(r#"{"short_caption":"a cat"}"#).as_deref(), Some("a cat"));
        assert_eq!(
            c(r#"{"short_caption":["", " ", "b", "c"]}"#).as_deref(),
            Some("b")
        );
        assert_eq!(
            c(r#"{"short_caption":"x","short_caption":"y"}"#).as_deref(),
            Some("y")
        );
        assert_eq!(c(r#"{"short_caption":"  "}"#), None);
        assert_eq!(c(r#"{"short_caption":3}"#), None);
        assert_eq!(c(r#"{"caption":"a"}"#), None);
        assert_eq!(c(r#"["short_caption"]"#), None);
        assert_eq!(c("not json"), None);
    }

    #[test]
    fn keys_are_cut_at_the_last_dot() {
        assert_eq!(sample_key("a.b.jpg"), "a.b");
        assert_eq!(sample_key("dir.x/a"), "dir");
        assert_eq!(sample_key("noext"), "noext");
    }

    #[test]
    fn the_document_is_compact_in_the_order_given() {
        let mut img = FileEntry::plain(1536, 10);
        img.set_dimensions(640, 480);
        img.captions = Some("a \"cat\"".into());
        let files = vec![
            ("a.jpg".to_string(), img),
            ("b.json".to_string(), FileEntry::plain(3072, 5)),
        ];
        let s = String::from_utf8(index_bytes("s.tar", 4096, &files)).expect("utf-8");
        assert_eq!(
            s,
            "{\"path\":\"s.tar\",\"filesize\":4096,\"includes_image_geometry\":true,\"files\":{\
             \"a.jpg\":{\"offset\":1536,\"length\":10,\"width\":640,\"height\":480,\"aspect\":1.3333334,\"captions\":\"a \\\"cat\\\"\"},\
             \"b.json\":{\"offset\":3072,\"length\":5}}}\n"
        );
    }
}

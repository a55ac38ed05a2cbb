//! Turning one sample's JSON into a table row, the way the seed's
//! `compile.py` and `extract-captions.py` do, but without crashing on bad input.
//!
//! Only the configured fields are decoded; everything else in the JSON is
//! skipped without building a tree.

use std::borrow::Cow;
use std::fmt;

use serde::Deserializer;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use shardprep_core::fields::FieldMap;
use shardprep_core::issue::IssueKind;

/// Largest width or height accepted (anything larger is treated as corrupt).
pub const MAX_DIMENSION: i64 = 1_000_000;

/// One row of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub width: i64,
    pub height: i64,
    pub caption: String,
    pub filename: String,
    /// Values of the extra columns, in the order of `FieldMap::extra`.
    pub extras: Vec<ExtraValue>,
}

/// The value of an extra column.
#[derive(Debug, Clone, PartialEq)]
pub enum ExtraValue {
    Missing,
    Text(String),
    List(Vec<String>),
}

/// Why a JSON with the width field did not become a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    /// Stable key counted in the report (e.g. `invalid_width`).
    pub reason: IssueKind,
    /// Human detail.
    pub detail: String,
    /// The JSON has the width field (it is one of the seed's samples);
    /// false when the JSON could not be read far enough to know.
    pub has_width: bool,
    /// The image the JSON names, when its filename field is a usable name:
    /// that image has a JSON (which made no row), it is not an orphan.
    pub filename: Option<String>,
}

impl Skip {
    fn new(reason: IssueKind, detail: impl Into<String>) -> Self {
        Skip {
            reason,
            detail: detail.into(),
            has_width: true,
            filename: None,
        }
    }

    /// The JSON itself is unreadable (not JSON, not an object).
    fn unreadable(reason: IssueKind, detail: impl Into<String>) -> Self {
        Skip {
            has_width: false,
            ..Skip::new(reason, detail)
        }
    }
}

/// What a sample JSON amounts to.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// A row (the JSON has the width field and everything needed).
    Row(Row),
    /// No width field: not a sample, exactly as the seed's `if "width" not in content: continue`.
    /// `filename`: the image it names, when its filename field is a usable name.
    NoWidth { filename: Option<String> },
}

/// Parses a sample JSON. `Err` means it has the width field (or could not be
/// read at all) but cannot become a row.
pub fn parse_sample(bytes: &[u8], fields: &FieldMap) -> Result<Parsed, Skip> {
    let mut wanted: Vec<&str> = vec![
        &fields.width,
        &fields.height,
        &fields.caption,
        &fields.filename,
    ];
    wanted.extend(fields.extra.iter().map(String::as_str));
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let found = WantedFields { names: &wanted }
        .deserialize(&mut de)
        .map_err(|e| {
            if e.to_string().contains("expected a JSON object") {
                Skip::unreadable(IssueKind::JsonNotObject, "the JSON is not an object")
            } else {
                Skip::unreadable(IssueKind::InvalidJson, e.to_string())
            }
        })?;
    de.end()
        .map_err(|e| Skip::unreadable(IssueKind::InvalidJson, e.to_string()))?;
    let get = |i: usize| found[i];

    let named = || {
        get(3)
            .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
            .filter(|s| check_filename(s).is_ok())
    };
    let Some(width_raw) = get(0) else {
        return Ok(Parsed::NoWidth { filename: named() });
    };
    row_of(width_raw, &found, fields)
        .map(Parsed::Row)
        .map_err(|skip| Skip {
            filename: named(),
            ..skip
        })
}

/// The row of a JSON with the width field (`found`: the wanted fields of
/// [`parse_sample`], in its order).
fn row_of(
    width_raw: &RawValue,
    found: &[Option<&RawValue>],
    fields: &FieldMap,
) -> Result<Row, Skip> {
    let get = |i: usize| found[i];
    let width = dimension(width_raw).map_err(|d| Skip::new(IssueKind::InvalidWidth, d))?;
    let height = match get(1) {
        None => {
            return Err(Skip::new(
                IssueKind::MissingHeight,
                format!("no {:?} field", fields.height),
            ));
        }
        Some(raw) => dimension(raw).map_err(|d| Skip::new(IssueKind::InvalidHeight, d))?,
    };
    let caption = match get(2) {
        None => {
            return Err(Skip::new(
                IssueKind::MissingCaption,
                format!("no {:?} field", fields.caption),
            ));
        }
        Some(raw) => caption_text(raw)?,
    };
    let filename = match get(3) {
        None => {
            return Err(Skip::new(
                IssueKind::MissingFilename,
                format!("no {:?} field", fields.filename),
            ));
        }
        Some(raw) => match serde_json::from_str::<serde_json::Value>(raw.get()) {
            Ok(serde_json::Value::String(s)) => {
                check_filename(&s)?;
                s
            }
            _ => {
                return Err(Skip::new(
                    IssueKind::FilenameNotString,
                    format!("{} is not a string", fields.filename),
                ));
            }
        },
    };
    let extras = (0..fields.extra.len())
        .map(|i| extra_value(get(4 + i)))
        .collect();
    Ok(Row {
        width,
        height,
        caption,
        filename,
        extras,
    })
}

/// The caption text of a sample JSON, read as [`parse_sample`] reads its
/// caption field (a string, or the first non-empty string of a list), for
/// JSONs that made no row; `None` when the JSON or the caption is unusable.
pub fn caption_of(bytes: &[u8], fields: &FieldMap) -> Option<String> {
    let names = [fields.caption.as_str()];
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let found = WantedFields { names: &names }.deserialize(&mut de).ok()?;
    de.end().ok()?;
    caption_text(found[0]?).ok()
}

/// The seed's `int(content['width'])`, minus its surprises: integers, integral
/// floats and decimal strings (`"1024"`, `" 1024 "`) are accepted; anything
/// else, and values outside `1..=MAX_DIMENSION`, are refused.
fn dimension(raw: &RawValue) -> Result<i64, String> {
    let v: serde_json::Value = serde_json::from_str(raw.get()).map_err(|e| e.to_string())?;
    let n = match &v {
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i
            } else if let Some(f) = n.as_f64() {
                if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e15 {
                    f as i64
                } else {
                    return Err(format!("{} is not a whole number", raw.get()));
                }
            } else {
                return Err(format!("{} is out of range", raw.get()));
            }
        }
        serde_json::Value::String(s) => {
            let t = s.trim();
            let digits = t.strip_prefix('+').unwrap_or(t);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
                return Err(format!("{s:?} is not an integer"));
            }
            t.parse::<i64>()
                .map_err(|_| format!("{s:?} is not an integer"))?
        }
        _ => return Err(format!("{} is not a number", raw.get())),
    };
    if n <= 0 {
        return Err(format!("{n} is not positive"));
    }
    if n > MAX_DIMENSION {
        return Err(format!("{n} is larger than {MAX_DIMENSION}"));
    }
    Ok(n)
}

/// A caption: a string, or the first non-empty string of a list.
fn caption_text(raw: &RawValue) -> Result<String, Skip> {
    let v: serde_json::Value = serde_json::from_str(raw.get())
        .map_err(|e| Skip::new(IssueKind::InvalidJson, e.to_string()))?;
    let text = match v {
        serde_json::Value::String(s) => s,
        serde_json::Value::Array(items) => items
            .into_iter()
            .find_map(|i| match i {
                serde_json::Value::String(s) if !s.trim().is_empty() => Some(s),
                _ => None,
            })
            .unwrap_or_default(),
        other => {
            return Err(Skip::new(
                IssueKind::CaptionNotString,
                format!("caption is {}", kind_of(&other)),
            ));
        }
    };
    if text.trim().is_empty() {
        return Err(Skip::new(IssueKind::EmptyCaption, "the caption is empty"));
    }
    Ok(text)
}

/// Refuses image names that are not a plain file name in `data/`.
fn check_filename(name: &str) -> Result<(), Skip> {
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('\\')
        || name.contains('\0')
        || name.contains("..");
    if bad {
        return Err(Skip::new(
            IssueKind::UnsafeFilename,
            format!("{name:?} is not a plain file name"),
        ));
    }
    Ok(())
}

fn extra_value(raw: Option<&RawValue>) -> ExtraValue {
    let Some(raw) = raw else {
        return ExtraValue::Missing;
    };
    match serde_json::from_str::<serde_json::Value>(raw.get()) {
        Ok(serde_json::Value::Null) | Err(_) => ExtraValue::Missing,
        Ok(serde_json::Value::String(s)) => ExtraValue::Text(s),
        Ok(serde_json::Value::Array(items)) if items.iter().all(|i| i.is_string()) => {
            ExtraValue::List(
                items
                    .into_iter()
                    .filter_map(|i| match i {
                        serde_json::Value::String(s) => Some(s),
                        _ => None,
                    })
                    .collect(),
            )
        }
        Ok(other) => ExtraValue::Text(other.to_string()),
    }
}

fn kind_of(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

pub use shardprep_core::layout::stem;

/// Deserialises a JSON object, keeping the raw values of the wanted keys only.
/// For duplicate keys the last one wins, as in Python's `json.load`.
struct WantedFields<'n> {
    names: &'n [&'n str],
}

impl<'de> DeserializeSeed<'de> for WantedFields<'_> {
    type Value = Vec<Option<&'de RawValue>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for WantedFields<'_> {
    type Value = Vec<Option<&'de RawValue>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = vec![None; self.names.len()];
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            // A field may feed two columns (e.g. the caption also as an extra).
            if self.names.iter().any(|n| *n == key.as_ref()) {
                let raw: &'de RawValue = map.next_value()?;
                for (i, n) in self.names.iter().enumerate() {
                    if *n == key.as_ref() {
                        out[i] = Some(raw);
                    }
                }
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(out)
    }
}

/// An object key, borrowed from the input unless it holds escapes (serde's
/// own `Cow<str>` always copies: one allocation per key of every JSON).
struct Key<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Parsed, Skip> {
        parse_sample(s.as_bytes(), &FieldMap::dalle3())
    }
    fn row(s: &str) -> Row {
        match parse(s) {
            Ok(Parsed::Row(r)) => r,
            other => panic!("expected a row, got {other:?}"),
        }
    }
    fn reason(s: &str) -> &'static str {
        match parse(s) {
            Err(skip) => skip.reason.as_str(),
            other => panic!("expected a skip, got {other:?}"),
        }
    }

    #[test]
    fn caption_of_reads_the_caption_without_width() {
        let f = FieldMap::dalle3();
        let c = |s: &str| caption_of(s.as_bytes(), &f);
        assert_eq!(c(r#"{"short_caption":"a cat"}"#), Some("a cat".into()));
        assert_eq!(c(r#"{"short_caption":["", "b"],"x":1}"#), Some("b".into()));
        assert_eq!(c(r#"{"short_caption":" "}"#), None);
        assert_eq!(c(r#"{"short_caption":3}"#), None);
        assert_eq!(c(r#"{"width":3}"#), None);
        assert_eq!(c("not json"), None);
    }

    #[test]
    fn escaped_keys_match_as_python_reads_them() {
        let r = row(r#"{"image_name":"a.png","width":1,"height":2,"short\u005fcaption":"a cat"}"#);
        assert_eq!(r.caption, "a cat");
    }

    #[test]
    fn seed_fields_make_a_row() {
        let r = row(
            r#"{"image_name":"a.png","width":1024,"height":768,"short_caption":"a cat","long_caption":"x","short_caption2":["a","b"]}"#,
        );
        assert_eq!((r.width, r.height), (1024, 768));
        assert_eq!(r.caption, "a cat");
        assert_eq!(r.filename, "a.png");
    }

    #[test]
    fn no_width_is_not_a_sample() {
        assert_eq!(
            parse(r#"{"image_name":"a.png","height":1}"#),
            Ok(Parsed::NoWidth {
                filename: Some("a.png".into())
            })
        );
    }

    #[test]
    fn dimensions_follow_python_int_without_its_surprises() {
        assert_eq!(
            row(r#"{"image_name":"a.png","width":"1024","height":" 768 ","short_caption":"c"}"#)
                .width,
            1024
        );
        assert_eq!(
            row(r#"{"image_name":"a.png","width":1024.0,"height":768,"short_caption":"c"}"#).width,
            1024
        );
        assert_eq!(
            reason(r#"{"image_name":"a.png","width":10.5,"height":768,"short_caption":"c"}"#),
            "invalid_width"
        );
        assert_eq!(
            reason(r#"{"image_name":"a.png","width":-3,"height":768,"short_caption":"c"}"#),
            "invalid_width"
        );
        assert_eq!(
            reason(r#"{"image_name":"a.png","width":99999999,"height":768,"short_caption":"c"}"#),
            "invalid_width"
        );
        assert_eq!(
            reason(r#"{"image_name":"a.png","width":"wide","height":768,"short_caption":"c"}"#),
            "invalid_width"
        );
        assert_eq!(
            reason(r#"{"image_name":"a.png","width":null,"height":768,"short_caption":"c"}"#),
            "invalid_width"
        );
        assert_eq!(
            reason(r#"{"image_name":"a.png","width":1,"short_caption":"c"}"#),
            "missing_height"
        );
        assert_eq!(
            reason(r#"{"image_name":"a.png","width":1,"height":true,"short_caption":"c"}"#),
            "invalid_height"
        );
    }

    #[test]
    fn captions() {
        assert_eq!(
            row(r#"{"image_name":"a.png","width":1,"height":1,"short_caption":["", "second"]}"#)
                .caption,
            "second"
        );
        assert_eq!(
            reason(r#"{"image_name":"a.png","width":1,"height":1}"#),
            "missing_caption"
        );
        assert_eq!(
            reason(r#"{"image_name":"a.png","width":1,"height":1,"short_caption":7}"#),
            "caption_not_string"
        );
        assert_eq!(
            reason(r#"{"image_name":"a.png","width":1,"height":1,"short_caption":"  "}"#),
            "empty_caption"
        );
        let r = row(r#"{"image_name":"a.png","width":1,"height":1,"short_caption":"一只猫\n"}"#);
        assert_eq!(r.caption, "一只猫\n");
    }

    #[test]
    fn bad_json_and_filenames() {
        assert_eq!(reason("{not json"), "invalid_json");
        assert_eq!(reason("[1,2]"), "json_not_object");
        assert_eq!(reason(r#"{"a":1} trailing"#), "invalid_json");
        assert_eq!(
            reason(r#"{"image_name":"../x.png","width":1,"height":1,"short_caption":"c"}"#),
            "unsafe_filename"
        );
        assert_eq!(
            reason(r#"{"image_name":"d/x.png","width":1,"height":1,"short_caption":"c"}"#),
            "unsafe_filename"
        );
        assert_eq!(
            reason(r#"{"image_name":3,"width":1,"height":1,"short_caption":"c"}"#),
            "filename_not_string"
        );
        assert_eq!(
            reason(r#"{"width":1,"height":1,"short_caption":"c"}"#),
            "missing_filename"
        );
    }

    #[test]
    fn skips_say_whether_the_json_had_width() {
        let unreadable = parse_sample(b"{not json", &FieldMap::dalle3()).unwrap_err();
        assert!(!unreadable.has_width);
        let bad_width =
            parse_sample(br#"{"width":-1,"height":1}"#, &FieldMap::dalle3()).unwrap_err();
        assert!(bad_width.has_width);
    }

    #[test]
    fn duplicate_keys_last_wins_like_python() {
        let r = row(r#"{"image_name":"a.png","width":1,"width":2,"height":1,"short_caption":"c"}"#);
        assert_eq!(r.width, 2);
    }

    #[test]
    fn extras() {
        let mut f = FieldMap::dalle3();
        f.extra = vec![
            "long_caption".into(),
            "short_caption2".into(),
            "meta".into(),
            "absent".into(),
        ];
        let Ok(Parsed::Row(r)) = parse_sample(
            br#"{"image_name":"a.png","width":1,"height":1,"short_caption":"c","long_caption":"L","short_caption2":["x","y"],"meta":{"k":1}}"#,
            &f,
        ) else {
            panic!("row expected")
        };
        assert_eq!(
            r.extras,
            vec![
                ExtraValue::Text("L".into()),
                ExtraValue::List(vec!["x".into(), "y".into()]),
                ExtraValue::Text(r#"{"k":1}"#.into()),
                ExtraValue::Missing
            ]
        );
    }

    #[test]
    fn stem_matches_python_splitext() {
        assert_eq!(stem("abc.png"), "abc");
        assert_eq!(stem("a.b.jpeg"), "a.b");
        assert_eq!(stem("noext"), "noext");
        assert_eq!(stem(".hidden"), ".hidden");
        assert_eq!(stem("x."), "x");
    }
}

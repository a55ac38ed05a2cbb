//! webdataset's `wids` dataset description (`wids-shard-index-v1`):
//!
//! ```json
//! {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": "dalle3",
//!  "shardlist": [{"url": "/data/shards/data-000000.tar", "nsamples": 1000, "filesize": 123}]}
//! ```
//! wids indexes each tar itself when it opens it (`MMIndexedTar`: the raw
//! ustar `name` field of headers with type `0` or NUL, each name once,
//! grouped by `splitname`) and maps a dataset index to a shard by the
//! `nsamples` of this file, so `nsamples` must be exactly the count wids
//! finds, or samples are lost or indexing fails. wids has no per-sample
//! index: it yields every sample it finds, also those the other formats
//! leave out. Members with PAX or GNU long names appear to wids under their
//! truncated ustar name; when two members share a header name, wids returns
//! the wrong members for the samples after them, so such a tar is left out
//! of the wids JSON (the report lists it in `wids_unreadable`).

use serde::{Deserialize, Serialize};

use crate::input::{ShardInput, trim_nul};

/// One shard's entry of the wids JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WidsShard {
    pub url: String,
    pub nsamples: u64,
    pub filesize: u64,
}

/// wids' `splitname` key (`^((?:.*/)?.*?)(\..*)$`): the name up to the
/// first dot of its last component (or of the whole name when the last
/// component has none); `None` without a dot (wids skips such names).
pub fn wids_key(name: &str) -> Option<&str> {
    let last = name.rfind('/').map_or(0, |i| i + 1);
    if let Some(dot) = name[last..].find('.') {
        return Some(&name[..last + dot]);
    }
    name.find('.').map(|dot| &name[..dot])
}

/// The number of samples wids finds in the tar; `Err` with the reason when
/// wids cannot read it (a header name that is not UTF-8).
pub fn wids_count(input: &ShardInput) -> Result<u64, String> {
    let mut seen: foldhash::HashSet<&[u8]> = foldhash::HashSet::default();
    let members = input.members();
    seen.reserve(members.len());
    let mut count = 0;
    let mut last: Option<&str> = None;
    for m in members {
        if m.typeflag != b'0' && m.typeflag != 0 {
            continue;
        }
        let raw = trim_nul(m.raw_header_name.unwrap_or(m.name));
        let name = std::str::from_utf8(raw).map_err(|_| {
            format!(
                "the header name of member {:?} is not UTF-8, which wids cannot read",
                String::from_utf8_lossy(m.name)
            )
        })?;
        if name.is_empty() || name == "././@PaxHeader" {
            continue;
        }
        if !seen.insert(raw) {
            // wids keeps each name once but reads members by position: every
            // sample after this one would get another sample's members.
            return Err(format!(
                "two members have the header name {name:?} (long names are cut to it), \
                 so wids would return the wrong members for the samples after it"
            ));
        }
        let Some(key) = wids_key(name) else { continue };
        if last != Some(key) {
            count += 1;
            last = Some(key);
        }
    }
    Ok(count)
}

/// The dataset description's bytes (pretty JSON, like `widsindex create`).
pub fn dataset_json(name: &str, shards: &[WidsShard]) -> Vec<u8> {
    let doc = serde_json::json!({
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "name": name,
        "shardlist": shards,
    });
    format!("{doc:#}\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::{MemberKind, TarMember};

    #[test]
    fn counts_as_wids_does() {
        assert_eq!(wids_key("a.b/c.jpg"), Some("a.b/c"));
        assert_eq!(wids_key("a.b/c"), Some("a"));
        assert_eq!(wids_key("c"), None);
        let m = |name: &'static str, raw: Option<&'static str>, flag: u8| TarMember {
            name: name.as_bytes(),
            start_offset: 0,
            header_offset: 0,
            data_offset: 512,
            size: 1,
            kind: MemberKind::Regular,
            raw_header_name: Some(raw.unwrap_or(name).as_bytes()),
            typeflag: flag,
        };
        let mut input = ShardInput::default();
        for member in [
            m("a.jpg", None, b'0'),
            m("a.json", None, 0),
            m("d", None, b'5'),
            // A PAX long name: wids sees the truncated ustar name.
            m("long-long-name.jpg", Some("long-lo\0\0"), b'0'),
            m("b.jpg", None, b'0'),
        ] {
            input.push(member, 1024);
        }
        assert_eq!(wids_count(&input), Ok(2));
        let mut twice = input.clone();
        twice.push(m("b.jpg", None, b'0'), 1024);
        assert!(wids_count(&twice).unwrap_err().contains("b.jpg"));
    }
}

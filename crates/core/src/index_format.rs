//! Which index formats an index-mode job writes (`--index-format`).

use std::fmt;
use std::str::FromStr;

/// One trainer family's index of the tars.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IndexFormat {
    /// webshart 0.6.0 (SimpleTuner): `OUT/index/<shard>.json`.
    Webshart,
    /// Megatron-Energon: `OUT/energon/` (`.nv-meta/` and `<shard>.tar.idx`).
    Energon,
    /// DALI `fn.readers.webdataset`: `OUT/dali/<shard>.idx`.
    Dali,
    /// webdataset's `wids`: `OUT/wids/wids.json`.
    Wids,
}

impl IndexFormat {
    pub const ALL: [IndexFormat; 4] = [
        IndexFormat::Webshart,
        IndexFormat::Energon,
        IndexFormat::Dali,
        IndexFormat::Wids,
    ];

    /// The name on the command line, in the report and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            IndexFormat::Webshart => "webshart",
            IndexFormat::Energon => "energon",
            IndexFormat::Dali => "dali",
            IndexFormat::Wids => "wids",
        }
    }
}

impl FromStr for IndexFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        IndexFormat::ALL
            .into_iter()
            .find(|f| f.as_str() == s.trim())
            .ok_or_else(|| {
                format!("unknown index format {s:?}: use any of webshart, energon, dali, wids")
            })
    }
}

/// A non-empty set of formats, in the fixed order of [`IndexFormat::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IndexFormats(Vec<IndexFormat>);

impl Default for IndexFormats {
    /// webshart alone (what index mode wrote before `--index-format`).
    fn default() -> Self {
        IndexFormats(vec![IndexFormat::Webshart])
    }
}

impl IndexFormats {
    /// The set of `formats` (duplicates dropped); `None` when empty.
    pub fn new(formats: impl IntoIterator<Item = IndexFormat>) -> Option<Self> {
        let mut v: Vec<IndexFormat> = formats.into_iter().collect();
        v.sort();
        v.dedup();
        (!v.is_empty()).then_some(IndexFormats(v))
    }

    pub fn contains(&self, f: IndexFormat) -> bool {
        self.0.contains(&f)
    }

    pub fn iter(&self) -> impl Iterator<Item = IndexFormat> + '_ {
        self.0.iter().copied()
    }

    /// Whether any format other than webshart is asked for.
    pub fn has_other_than_webshart(&self) -> bool {
        self.iter().any(|f| f != IndexFormat::Webshart)
    }

    /// The names, for the wire (unknown names are refused by [`IndexFormats::from_names`]).
    pub fn names(&self) -> Vec<String> {
        self.iter().map(|f| f.as_str().to_string()).collect()
    }

    /// Parses wire names; an empty list is the default (an older coordinator).
    pub fn from_names(names: &[String]) -> Result<Self, String> {
        if names.is_empty() {
            return Ok(Self::default());
        }
        let parsed: Result<Vec<_>, _> = names.iter().map(|n| n.parse()).collect();
        Self::new(parsed?).ok_or_else(|| "no index format given".to_string())
    }
}

impl FromStr for IndexFormats {
    type Err = String;
    /// A comma-separated list, e.g. `webshart,energon,dali,wids`.
    fn from_str(s: &str) -> Result<Self, String> {
        let parsed: Result<Vec<IndexFormat>, String> = s
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(str::parse)
            .collect();
        Self::new(parsed?).ok_or_else(|| {
            "--index-format needs at least one of webshart, energon, dali, wids".to_string()
        })
    }
}

impl fmt::Display for IndexFormats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(IndexFormat::as_str).collect();
        f.write_str(&names.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_in_any_order_and_print_in_one() {
        let f: IndexFormats = "wids, dali,webshart,wids".parse().unwrap();
        assert_eq!(f.to_string(), "webshart,dali,wids");
        assert!(f.contains(IndexFormat::Dali) && !f.contains(IndexFormat::Energon));
        assert!("".parse::<IndexFormats>().is_err());
        let err = "webshart,lmdb".parse::<IndexFormats>().unwrap_err();
        assert!(err.contains("lmdb"), "{err}");
        assert_eq!(
            IndexFormats::from_names(&[]).unwrap(),
            IndexFormats::default()
        );
        assert_eq!(IndexFormats::from_names(&f.names()).unwrap(), f);
    }
}

//! The sample keys of energon's `index.sqlite`: each kept once (energon's
//! `sample_key` is unique), all in one buffer (a dataset has millions of
//! them), and sorted for the key index at the end.

use std::hash::BuildHasher;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

/// Keys in the order they were added, each with its sample's row id.
#[derive(Default)]
pub(crate) struct KeySet {
    text: String,
    /// Key `i` is `text[ends[i - 1]..ends[i]]` (from 0 for the first).
    ends: Vec<usize>,
    rowids: Vec<i64>,
    /// Indexes of `ends`, found by their key's hash.
    table: HashTable<usize>,
    state: foldhash::fast::RandomState,
}

fn key_at<'t>(text: &'t str, ends: &[usize], i: usize) -> &'t str {
    let start = if i == 0 { 0 } else { ends[i - 1] };
    &text[start..ends[i]]
}

impl KeySet {
    /// Room for `additional` more keys.
    pub(crate) fn reserve(&mut self, additional: usize) {
        let (text, ends, state) = (&self.text, &self.ends, &self.state);
        self.table
            .reserve(additional, |&i| state.hash_one(key_at(text, ends, i)));
        self.ends.reserve(additional);
        self.rowids.reserve(additional);
    }

    /// Adds `key` for row `rowid`; false (and nothing added) when it is there.
    pub(crate) fn insert(&mut self, key: &str, rowid: i64) -> bool {
        let next = self.ends.len();
        let hash = self.state.hash_one(key);
        let (text, ends, state) = (&self.text, &self.ends, &self.state);
        match self.table.entry(
            hash,
            |&i| key_at(text, ends, i) == key,
            |&i| state.hash_one(key_at(text, ends, i)),
        ) {
            Entry::Occupied(_) => false,
            Entry::Vacant(v) => {
                v.insert(next);
                self.text.push_str(key);
                self.ends.push(self.text.len());
                self.rowids.push(rowid);
                true
            }
        }
    }

    /// `(key, row id)` of every key, sorted by key (byte order, SQLite's
    /// BINARY collation). Keys added shard by shard are sorted runs in a
    /// webdataset: the stable sort merges them instead of sorting afresh.
    pub(crate) fn sorted(&self) -> Vec<(&str, i64)> {
        let mut all: Vec<(&str, i64)> = (0..self.ends.len())
            .map(|i| (key_at(&self.text, &self.ends, i), self.rowids[i]))
            .collect();
        all.sort_by(|a, b| a.0.cmp(b.0));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_is_kept_once_and_comes_back_sorted() {
        let mut keys = KeySet::default();
        keys.reserve(2);
        assert!(keys.insert("b", 1));
        assert!(keys.insert("a/é", 2));
        assert!(!keys.insert("b", 3));
        assert!(keys.insert("", 4));
        for i in 0..1000 {
            assert!(keys.insert(&format!("k{i:04}"), 10 + i));
        }
        let sorted = keys.sorted();
        assert_eq!(sorted.len(), 1003);
        assert_eq!(&sorted[..3], &[("", 4), ("a/é", 2), ("b", 1)]);
        assert!(sorted.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(sorted[3], ("k0000", 10));
    }
}

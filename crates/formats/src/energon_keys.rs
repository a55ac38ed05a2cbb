//! The sample keys of energon's `index.sqlite`: each kept once (energon's
//! `sample_key` is unique), all in one buffer (a dataset has millions of
//! them), and sorted for the key index at the end.

use std::hash::BuildHasher;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

use crate::packed::PackedStrs;

/// Keys in the order they were added, each with its sample's row id.
#[derive(Default)]
pub(crate) struct KeySet {
    keys: PackedStrs,
    rowids: Vec<i64>,
    /// `(prefix, place in keys)`: sorted by key up to `sorted_upto`, run
    /// by run; the key's first 8 bytes as a number order most pairs
    /// without reading the keys.
    order: Vec<(u64, usize)>,
    sorted_upto: usize,
    /// Places in `keys`, found by their key's hash.
    table: HashTable<usize>,
    state: foldhash::fast::RandomState,
}

/// The first 8 bytes of `key`, big-endian, zero-padded: comparing two
/// prefixes orders their keys unless they are equal.
fn prefix(key: &str) -> u64 {
    let mut b = [0u8; 8];
    let n = key.len().min(8);
    b[..n].copy_from_slice(&key.as_bytes()[..n]);
    u64::from_be_bytes(b)
}

/// Orders two `order` entries by their keys.
fn by_key(keys: &PackedStrs, a: &(u64, usize), b: &(u64, usize)) -> std::cmp::Ordering {
    a.0.cmp(&b.0).then_with(|| keys.get(a.1).cmp(keys.get(b.1)))
}

impl KeySet {
    /// Room for `additional` more keys.
    pub(crate) fn reserve(&mut self, additional: usize) {
        let (keys, state) = (&self.keys, &self.state);
        self.table
            .reserve(additional, |&i| state.hash_one(keys.get(i)));
        self.keys.reserve(additional);
        self.rowids.reserve(additional);
        self.order.reserve(additional);
    }

    /// Adds `key` for row `rowid`; false (and nothing added) when it is there.
    pub(crate) fn insert(&mut self, key: &str, rowid: i64) -> bool {
        let hash = self.state.hash_one(key);
        let (keys, state) = (&self.keys, &self.state);
        match self.table.entry(
            hash,
            |&i| keys.get(i) == key,
            |&i| state.hash_one(keys.get(i)),
        ) {
            Entry::Occupied(_) => false,
            Entry::Vacant(v) => {
                let next = self.keys.len();
                v.insert(next);
                self.keys.push(key);
                self.rowids.push(rowid);
                self.order.push((prefix(key), next));
                true
            }
        }
    }

    /// Sorts the keys added since the last call (a shard's): a run of
    /// [`KeySet::sorted`]'s merge, sorted while the next shards are walked.
    pub(crate) fn sort_run(&mut self) {
        let keys = &self.keys;
        self.order[self.sorted_upto..].sort_unstable_by(|a, b| by_key(keys, a, b));
        self.sorted_upto = self.order.len();
    }

    /// `(key, row id)` of every key, sorted by key (byte order, SQLite's
    /// BINARY collation): the runs of [`KeySet::sort_run`] are merged (the
    /// stable sort finds them), keys added after the last run sorted.
    pub(crate) fn sorted(&mut self) -> impl Iterator<Item = (&str, i64)> {
        self.sort_run();
        let keys = &self.keys;
        self.order.sort_by(|a, b| by_key(keys, a, b));
        self.order
            .iter()
            .map(|&(_, i)| (self.keys.get(i), self.rowids[i]))
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
        keys.sort_run();
        for i in (0..1000).rev() {
            assert!(keys.insert(&format!("k{i:04}"), 10 + i));
        }
        keys.sort_run();
        // Keys alike in their first 8 bytes are ordered by the rest.
        for (i, k) in ["same-prefix/b", "same-prefix/a", "same-pre"]
            .iter()
            .enumerate()
        {
            assert!(keys.insert(k, 2000 + i as i64));
        }
        keys.sort_run();
        assert!(keys.insert("c", 5));
        let sorted: Vec<_> = keys.sorted().collect();
        assert_eq!(sorted.len(), 1007);
        assert_eq!(&sorted[..4], &[("", 4), ("a/é", 2), ("b", 1), ("c", 5)]);
        assert!(sorted.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(sorted[4], ("k0000", 10));
        let tail: Vec<_> = sorted[1004..].iter().map(|k| k.0).collect();
        assert_eq!(tail, ["same-pre", "same-prefix/a", "same-prefix/b"]);
    }
}

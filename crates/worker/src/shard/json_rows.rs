//! Which JSON's row is live. The seed builds its table from the JSON files
//! `data/` holds after `tar xf`: a later member at a JSON's path replaces
//! the file, so the earlier JSON makes no row. Within a shard this is
//! settled here and by [`crate::fragment::FragmentWriter::withdraw_before`];
//! across shards, by the merge (see [`shardprep_core::table::JSON_KEY_COLUMN`]).
//!
//! Nothing is kept per row: only the paths that repeat (rare) are counted.

use foldhash::HashMap;

/// A JSON member: which of the members at its path it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct JsonId {
    /// The hash of its path under `data/` (the member's key).
    pub key: u64,
    /// How many JSON members at this path came before it.
    pub generation: u32,
}

/// The latest generation of each JSON path that repeats in the shard.
#[derive(Default)]
pub(super) struct JsonRows {
    repeated: HashMap<u64, u32>,
}

impl JsonRows {
    /// A JSON member at `key`; `repeated`: a member at that path came before.
    pub(super) fn member(&mut self, key: u64, repeated: bool) -> JsonId {
        let generation = match repeated {
            true => {
                let g = self.repeated.entry(key).or_insert(0);
                *g += 1;
                *g
            }
            false => 0,
        };
        JsonId { key, generation }
    }

    /// Whether the row of `json` still counts: no later member replaced
    /// its JSON (a row may wait for its image's verdict meanwhile).
    pub(super) fn live(&self, json: JsonId) -> bool {
        self.repeated.is_empty()
            || self.repeated.get(&json.key).copied().unwrap_or(0) == json.generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_member_replaces_the_earlier() {
        let mut j = JsonRows::default();
        let a = j.member(7, false);
        let other = j.member(8, false);
        assert!(j.live(a));
        let b = j.member(7, true);
        assert!(!j.live(a) && j.live(b) && j.live(other));
        let c = j.member(7, true);
        assert!(!j.live(b) && j.live(c));
    }
}

//! Which JSON's row is live. The seed builds its table from the JSON files
//! `data/` holds after `tar xf`: a later member at a JSON's path replaces
//! the file, so the earlier JSON makes no row. Within a shard this is
//! settled here; across shards, by the merge (see
//! [`shardprep_core::table::JSON_KEY_COLUMN`]).

use foldhash::{HashMap, HashSet};
use shardprep_core::layout::fnv1a64;

/// A JSON member: which of the members at its path it is, and its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct JsonId {
    /// The hash of its path under `data/` (the member's key).
    pub key: u64,
    /// How many JSON members at this path came before it.
    pub generation: u32,
}

/// The latest JSON member at each top-level path, and the row it made.
#[derive(Default)]
pub(super) struct JsonRows {
    latest: HashMap<u64, Latest>,
    withdrawn: bool,
}

struct Latest {
    generation: u32,
    /// Its row's number in the fragment, and the image it names.
    row: Option<(u64, Box<str>)>,
}

/// A row taken back: the JSON it came from and the image it named.
pub(super) struct Withdrawn {
    pub number: u64,
    pub image: Box<str>,
}

impl JsonRows {
    /// A top-level JSON member at `key`: its id, and the row of the member
    /// it replaces (to be withdrawn), if that one made a row.
    pub(super) fn member(&mut self, key: u64) -> (JsonId, Option<Withdrawn>) {
        let mut replaced = None;
        let generation = match self.latest.get_mut(&key) {
            Some(l) => {
                replaced = l
                    .row
                    .take()
                    .map(|(number, image)| Withdrawn { number, image });
                l.generation += 1;
                l.generation
            }
            None => {
                self.latest.insert(
                    key,
                    Latest {
                        generation: 0,
                        row: None,
                    },
                );
                0
            }
        };
        self.withdrawn |= replaced.is_some();
        (JsonId { key, generation }, replaced)
    }

    /// Whether the row of `json` still counts: no later member replaced
    /// its JSON (a row may wait for its image's verdict meanwhile).
    pub(super) fn live(&self, json: JsonId) -> bool {
        self.latest
            .get(&json.key)
            .is_some_and(|l| l.generation == json.generation)
    }

    /// `json`'s row was written as row `number`, naming `image`.
    pub(super) fn written(&mut self, json: JsonId, number: u64, image: &str) {
        if let Some(l) = self.latest.get_mut(&json.key) {
            l.row = Some((number, image.into()));
        }
    }

    /// The images the live rows name, when a row was withdrawn (`None`:
    /// every row written is live).
    pub(super) fn live_images(&self) -> Option<HashSet<u64>> {
        self.withdrawn.then(|| {
            self.latest
                .values()
                .filter_map(|l| l.row.as_ref().map(|(_, image)| fnv1a64(image.as_bytes())))
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_member_withdraws_the_row_of_the_earlier() {
        let mut j = JsonRows::default();
        let (a, none) = j.member(7);
        assert!(none.is_none());
        j.written(a, 0, "a.png");
        let (b, replaced) = j.member(7);
        assert_eq!(
            replaced.map(|w| (w.number, w.image)),
            Some((0, "a.png".into()))
        );
        assert!(!j.live(a) && j.live(b));
        assert_eq!(j.live_images(), Some(HashSet::default()));
        j.written(b, 1, "b.png");
        assert_eq!(j.live_images().map(|s| s.len()), Some(1));
    }

    #[test]
    fn a_row_waiting_for_its_image_is_not_written_once_replaced() {
        let mut j = JsonRows::default();
        let (a, _) = j.member(7);
        let (_, replaced) = j.member(7);
        assert!(replaced.is_none(), "a's row was not written yet");
        assert!(!j.live(a));
        assert_eq!(j.live_images(), None);
    }
}

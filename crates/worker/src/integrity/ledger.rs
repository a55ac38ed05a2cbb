//! Pairs each image with the JSON that names it, whichever comes first in
//! the tar, and releases rows in JSON order once their image is judged.
//!
//! Memory: facts of images not yet named by a JSON (~200 bytes each; the
//! images of a shard that no JSON names stay until its end), and rows
//! waiting for their image, at most [`MAX_WAITING`] (beyond that the oldest
//! is released unjudged; its image, when it comes, is still judged and
//! counted on its own).

use std::collections::{BTreeMap, HashMap, VecDeque};

use shardprep_core::manifest::{MemberIssue, list_issue};

use super::check::{Claims, ImageFacts, IntegrityConfig, Verdict, judge};

/// Rows held back waiting for their image, at most.
pub const MAX_WAITING: usize = 4096;

/// Something the ledger has settled.
#[derive(Debug)]
pub enum Resolved<R> {
    /// A JSON's row, in JSON order. `verdict: None`: its image was not seen
    /// (yet, when released early) and nothing about it is known.
    Row {
        row: R,
        image: String,
        verdict: Option<Verdict>,
    },
    /// An image no JSON named (at the end of the shard, or `lone_image`).
    LoneImage { image: String, verdict: Verdict },
}

struct Waiting<R> {
    image: String,
    claims: Claims,
    row: R,
    verdict: Option<Verdict>,
    /// Listed in `waiting_for`. The newest row is not: an image that
    /// follows its JSON finds it at the back of the queue, without hashing.
    indexed: bool,
}

/// Pairs images with JSONs within one shard.
pub struct Ledger<R> {
    cfg: IntegrityConfig,
    /// Images seen that no JSON has named yet → their slot in `facts`.
    unclaimed: HashMap<String, usize>,
    /// Facts by slot, apart from the map so that its growth moves no facts;
    /// a claimed slot is listed in `free` and overwritten by a later image.
    facts: Vec<ImageFacts>,
    free: Vec<usize>,
    queue: VecDeque<Waiting<R>>,
    /// Sequence number of `queue[0]`.
    head_seq: u64,
    /// Image name → sequence numbers of the waiting rows naming it (all
    /// but an unjudged row at the back of the queue).
    waiting_for: HashMap<String, Vec<u64>>,
    ready: VecDeque<Resolved<R>>,
}

impl<R> Ledger<R> {
    pub fn new(cfg: IntegrityConfig) -> Self {
        Ledger {
            cfg,
            unclaimed: HashMap::new(),
            facts: Vec::new(),
            free: Vec::new(),
            queue: VecDeque::new(),
            head_seq: 0,
            waiting_for: HashMap::new(),
            ready: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &IntegrityConfig {
        &self.cfg
    }

    /// An image member a JSON may name (top level of `data/`), by file name.
    pub fn image(&mut self, name: &str, facts: ImageFacts) {
        let mut named = false;
        if let Some(w) = self.queue.back_mut()
            && !w.indexed
            && w.verdict.is_none()
            && w.image == name
        {
            w.verdict = Some(judge(&self.cfg, &facts, Some(&w.claims)));
            named = true;
        }
        let seqs = if self.waiting_for.is_empty() {
            None
        } else {
            self.waiting_for.remove(name)
        };
        for seq in seqs.iter().flatten() {
            let w = &mut self.queue[(seq - self.head_seq) as usize];
            w.verdict = Some(judge(&self.cfg, &facts, Some(&w.claims)));
            named = true;
        }
        if named {
            self.release();
        } else {
            let slot = match self.free.pop() {
                Some(slot) => {
                    self.facts[slot] = facts;
                    slot
                }
                None => {
                    self.facts.push(facts);
                    self.facts.len() - 1
                }
            };
            // A later duplicate replaces the earlier copy, as on disk.
            if let Some(earlier) = self.unclaimed.insert(name.to_string(), slot) {
                self.free.push(earlier);
            }
        }
    }

    /// An image no JSON can name (e.g. in a subdirectory): judged alone.
    pub fn lone_image(&mut self, name: &str, facts: &ImageFacts) {
        let verdict = judge(&self.cfg, facts, None);
        self.ready.push_back(Resolved::LoneImage {
            image: name.to_string(),
            verdict,
        });
    }

    /// A JSON's row naming image `image` (its filename field).
    pub fn json(&mut self, image: &str, claims: Claims, row: R) {
        // The image seen before its JSON (the name it was kept under is reused).
        let seen = if self.unclaimed.is_empty() {
            None
        } else {
            self.unclaimed.remove_entry(image)
        };
        let (image, verdict) = match seen {
            Some((name, slot)) => {
                self.free.push(slot);
                let verdict = judge(&self.cfg, &self.facts[slot], Some(&claims));
                (name, Some(verdict))
            }
            None => (image.to_string(), None),
        };
        if verdict.is_some() && self.queue.is_empty() {
            // Nothing waits ahead of it: settled at once.
            self.head_seq += 1;
            self.ready.push_back(Resolved::Row {
                row,
                image,
                verdict,
            });
            return;
        }
        // The row waiting at the back is no longer the newest: listed now.
        let back_seq = (self.head_seq + self.queue.len() as u64).wrapping_sub(1);
        if let Some(w) = self.queue.back_mut()
            && !w.indexed
            && w.verdict.is_none()
        {
            w.indexed = true;
            let names = self.waiting_for.entry(w.image.clone()).or_default();
            names.push(back_seq);
        }
        self.queue.push_back(Waiting {
            image,
            claims,
            row,
            verdict,
            indexed: false,
        });
        self.release();
        while self.queue.len() > MAX_WAITING {
            self.release_head();
        }
    }

    /// The next settled item, in order.
    pub fn pop_ready(&mut self) -> Option<Resolved<R>> {
        self.ready.pop_front()
    }

    /// Rows waiting for their image.
    pub fn waiting(&self) -> usize {
        self.queue.len()
    }

    /// The end of the shard: every waiting row is released (unjudged where
    /// its image never came) and every unnamed image is judged alone, in
    /// name order.
    pub fn finish(&mut self) {
        while !self.queue.is_empty() {
            self.release_head();
        }
        let mut lone: Vec<(String, usize)> = self.unclaimed.drain().collect();
        lone.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (image, slot) in lone {
            let verdict = judge(&self.cfg, &self.facts[slot], None);
            self.ready.push_back(Resolved::LoneImage { image, verdict });
        }
        self.facts.clear();
        self.free.clear();
    }

    /// Moves judged rows at the head of the queue to `ready`.
    fn release(&mut self) {
        while self.queue.front().is_some_and(|w| w.verdict.is_some()) {
            self.release_head();
        }
    }

    fn release_head(&mut self) {
        let Some(w) = self.queue.pop_front() else {
            return;
        };
        let seq = self.head_seq;
        self.head_seq += 1;
        if w.verdict.is_none()
            && w.indexed
            && let Some(seqs) = self.waiting_for.get_mut(&w.image)
        {
            seqs.retain(|s| *s != seq);
            if seqs.is_empty() {
                self.waiting_for.remove(&w.image);
            }
        }
        self.ready.push_back(Resolved::Row {
            row: w.row,
            image: w.image,
            verdict: w.verdict,
        });
    }
}

/// Problems counted by reason, with the first few listed by member.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntegrityTally {
    /// Reason key → images with that problem.
    pub by_reason: BTreeMap<String, u64>,
    /// Rows left out (`--on-bad-image skip`).
    pub rows_skipped: u64,
    /// Images judged.
    pub images_checked: u64,
    /// Listed problems, at most [`shardprep_core::manifest::ISSUE_LIST_CAP`].
    pub listed: Vec<MemberIssue>,
    pub not_listed: u64,
}

impl IntegrityTally {
    /// Counts one verdict on image `member`.
    pub fn record(&mut self, member: &str, verdict: &Verdict) {
        self.images_checked += 1;
        for p in &verdict.problems {
            *self
                .by_reason
                .entry(p.reason.as_str().to_string())
                .or_default() += 1;
            let (list, n) = (&mut self.listed, &mut self.not_listed);
            list_issue(list, n, member, p.reason.kind(), p.detail.clone());
        }
    }
}

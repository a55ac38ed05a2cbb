//! The job's state machine: which shard is pending, leased (to whom, until
//! when), done or failed. Pure logic with the clock passed in, so every rule
//! is unit-tested without a network.
//!
//! Rules:
//! - a worker asks for work when free and gets the next pending shard;
//! - a lease lives until `deadline`; heartbeats push it `lease_timeout` ahead;
//! - an expired lease is an attempt lost: the shard goes back to the queue;
//! - a failed attempt is retried until `max_attempts`, unless not retryable;
//! - only the holder of the current lease can complete or fail a shard.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

pub use shardprep_core::manifest::ShardProgress as Progress;
use shardprep_core::manifest::{ShardIdentity, ShardManifest};
use shardprep_core::proto::FailureKind;

/// State of one shard.
#[derive(Debug, Clone)]
pub enum ShardState {
    Pending,
    Leased {
        lease_id: u64,
        worker: String,
        deadline: Instant,
        progress: Progress,
        /// When the progress last moved (a hung worker that still heartbeats is caught by this).
        moved_at: Instant,
    },
    Done(Box<ShardManifest>),
    Failed,
}

/// One shard of the job.
#[derive(Debug, Clone)]
pub struct ShardEntry {
    pub name: String,
    pub identity: ShardIdentity,
    pub state: ShardState,
    /// Attempts started (abandoned ones not counted).
    pub attempts: u32,
    pub last_error: Option<String>,
    /// Done before this coordinator started (recovered from `OUT/.shardprep/`).
    pub recovered: bool,
    /// Workers that lost an attempt of this shard (failed, silent, stuck):
    /// the shard goes to someone else when someone else is there.
    pub lost_by: Vec<String>,
}

impl ShardEntry {
    /// `pending`, `leased`, `done` or `failed`.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            ShardState::Pending => "pending",
            ShardState::Leased { .. } => "leased",
            ShardState::Done(_) => "done",
            ShardState::Failed => "failed",
        }
    }
}

/// What a worker learns about the workers it shares the job with.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    pub hostname: String,
    pub last_seen: Instant,
    pub current: Option<usize>,
    pub shards_done: u32,
    /// Told that the job is done.
    pub told_done: bool,
    pub peak_rss_bytes: u64,
}

/// A shard handed to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub lease_id: u64,
    pub index: usize,
    pub name: String,
    pub attempt: u32,
    pub identity: ShardIdentity,
}

/// Answer to a lease request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseAnswer {
    Shard(Grant),
    Wait,
    Done,
}

/// What became of a current lease's failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailOutcome {
    pub name: String,
    /// Attempts counted so far.
    pub attempts: u32,
    /// The shard will not be tried again.
    pub failed_for_good: bool,
}

/// The scheduler.
#[derive(Debug)]
pub struct Scheduler {
    shards: Vec<ShardEntry>,
    queue: VecDeque<usize>,
    next_lease: u64,
    lease_timeout: Duration,
    /// A lease whose progress has not moved for this long is taken back.
    stall_timeout: Duration,
    max_attempts: u32,
    workers: HashMap<String, WorkerInfo>,
    /// Set once the job has finished merging: lease answers become `Done`.
    finished: bool,
    /// Current leases → shard index (so no RPC scans every shard).
    leased: HashMap<u64, usize>,
    done: usize,
    failed: usize,
    tallies: Tallies,
    /// Set by [`Scheduler::redo_in_order`]: one lease at a time, in shard order.
    one_at_a_time: bool,
}

/// Running counts of the scheduler's events, for `/metrics`; they never go down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tallies {
    /// Leases of a shard that an earlier attempt had already held.
    pub retries: u64,
    /// Leases taken back because their worker went silent or stopped moving.
    pub lease_expiries: u64,
    /// Work of attempts that ended without a commit (failed, expired,
    /// abandoned), as last reported: added to the live work, the job's
    /// counters never go down when an attempt is lost.
    pub lost_work: Progress,
}

impl Scheduler {
    /// A scheduler over `shards`; those with a manifest are already done.
    /// `first_lease` should differ between coordinator runs (random), so
    /// that leases of an earlier run are never mistaken for current ones.
    pub fn new(
        shards: Vec<(String, ShardIdentity, Option<ShardManifest>)>,
        lease_timeout: Duration,
        max_attempts: u32,
        first_lease: u64,
    ) -> Self {
        let mut queue = VecDeque::new();
        let shards: Vec<ShardEntry> = shards
            .into_iter()
            .enumerate()
            .map(|(i, (name, identity, done))| {
                let recovered = done.is_some();
                let state = match done {
                    Some(m) => ShardState::Done(Box::new(m)),
                    None => {
                        queue.push_back(i);
                        ShardState::Pending
                    }
                };
                ShardEntry {
                    name,
                    identity,
                    state,
                    attempts: 0,
                    last_error: None,
                    recovered,
                    lost_by: Vec::new(),
                }
            })
            .collect();
        let done = shards
            .iter()
            .filter(|s| matches!(s.state, ShardState::Done(_)))
            .count();
        Scheduler {
            shards,
            queue,
            next_lease: first_lease.max(1),
            lease_timeout,
            stall_timeout: Duration::from_secs(300),
            max_attempts: max_attempts.max(1),
            workers: HashMap::new(),
            finished: false,
            leased: HashMap::new(),
            done,
            failed: 0,
            tallies: Tallies::default(),
            one_at_a_time: false,
        }
    }

    /// Sets how long a lease may go without progress before it is taken back.
    pub fn with_stall_timeout(mut self, stall_timeout: Duration) -> Self {
        self.stall_timeout = stall_timeout;
        self
    }

    /// Every shard, in shard order.
    pub fn shards(&self) -> &[ShardEntry] {
        &self.shards
    }

    /// Every worker heard from, by id.
    pub fn workers(&self) -> &HashMap<String, WorkerInfo> {
        &self.workers
    }

    /// Retries, lease expiries and the work of lost attempts so far.
    pub fn tallies(&self) -> Tallies {
        self.tallies
    }

    /// The largest peak RSS any worker reported.
    pub fn worker_peak_rss(&self) -> u64 {
        self.workers
            .values()
            .map(|w| w.peak_rss_bytes)
            .max()
            .unwrap_or(0)
    }

    /// Notes a worker's peak RSS as it reports a result.
    pub fn note_peak_rss(&mut self, worker: &str, peak_rss_bytes: u64, now: Instant) {
        let w = self.touch(worker, None, now);
        w.peak_rss_bytes = w.peak_rss_bytes.max(peak_rss_bytes);
    }

    /// Ends the job: from now on every lease request is answered `Done`.
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// Notes that `worker` registered; true when it was not known before.
    pub fn register(&mut self, worker: &str, hostname: &str, now: Instant) -> bool {
        let new = !self.workers.contains_key(worker);
        self.touch(worker, Some(hostname), now);
        new
    }

    /// Notes that `worker` was heard from.
    fn touch(&mut self, worker: &str, hostname: Option<&str>, now: Instant) -> &mut WorkerInfo {
        let w = self
            .workers
            .entry(worker.to_string())
            .or_insert_with(|| WorkerInfo {
                hostname: String::new(),
                last_seen: now,
                current: None,
                shards_done: 0,
                told_done: false,
                peak_rss_bytes: 0,
            });
        w.last_seen = now;
        if let Some(h) = hostname {
            w.hostname = h.to_string();
        }
        w
    }

    /// Hands the next pending shard to `worker`.
    pub fn lease(&mut self, worker: &str, now: Instant) -> LeaseAnswer {
        self.expire(now);
        self.touch(worker, None, now);
        if self.finished {
            self.touch(worker, None, now).told_done = true;
            return LeaseAnswer::Done;
        }
        // A worker asking for work holds no lease any more: give its old one back.
        self.release_held_by(worker);
        if self.one_at_a_time && !self.leased.is_empty() {
            return LeaseAnswer::Wait;
        }
        let Some(index) = self.next_for(worker, now) else {
            return LeaseAnswer::Wait;
        };
        let lease_id = self.next_lease;
        self.next_lease += 1;
        let deadline = now + self.lease_timeout;
        let shard = &mut self.shards[index];
        if shard.attempts > 0 {
            self.tallies.retries += 1;
        }
        shard.attempts += 1;
        shard.state = ShardState::Leased {
            lease_id,
            worker: worker.to_string(),
            deadline,
            progress: Progress::default(),
            moved_at: now,
        };
        let grant = Grant {
            lease_id,
            index,
            name: shard.name.clone(),
            attempt: shard.attempts,
            identity: shard.identity,
        };
        self.leased.insert(lease_id, index);
        self.touch(worker, None, now).current = Some(index);
        LeaseAnswer::Shard(grant)
    }

    /// The next pending shard for `worker`: the first one it has not lost
    /// before; else the first one no other idle live worker could take
    /// (one that has not lost it either). Idle workers long-poll, so such a
    /// worker takes the shard at once; a busy one might never come back for
    /// it (a hang), so only idle ones are waited for.
    fn next_for(&mut self, worker: &str, now: Instant) -> Option<usize> {
        let pos = self
            .queue
            .iter()
            .position(|&i| !self.shards[i].lost_by.iter().any(|w| w == worker))
            .or_else(|| {
                self.queue
                    .iter()
                    .position(|&i| !self.another_could_take(worker, i, now))
            })?;
        self.queue.remove(pos)
    }

    /// Whether a live idle worker other than `worker` that has not lost
    /// shard `i` exists.
    fn another_could_take(&self, worker: &str, i: usize, now: Instant) -> bool {
        let lost_by = &self.shards[i].lost_by;
        self.workers.iter().any(|(id, w)| {
            id != worker
                && !w.told_done
                && w.current.is_none()
                && now.saturating_duration_since(w.last_seen) < self.lease_timeout
                && !lost_by.iter().any(|l| l == id)
        })
    }

    fn release_held_by(&mut self, worker: &str) {
        let held: Vec<usize> = self
            .leased
            .values()
            .copied()
            .filter(|&i| matches!(&self.shards[i].state, ShardState::Leased { worker: w, .. } if w == worker))
            .collect();
        for i in held {
            self.attempt_lost(
                i,
                "the worker asked for new work without finishing this shard".into(),
                true,
            );
        }
    }

    /// Forgets the current lease of shard `i`, if it has one.
    fn unlease(&mut self, i: usize) {
        if let ShardState::Leased { lease_id, .. } = &self.shards[i].state {
            self.leased.remove(lease_id);
        }
    }

    /// Forgets the current lease of shard `i`, whose attempt ends without a
    /// commit: its work so far goes into the lost work.
    fn drop_lease(&mut self, i: usize) {
        if let ShardState::Leased { progress, .. } = &self.shards[i].state {
            let lost = &mut self.tallies.lost_work;
            lost.members += progress.members;
            lost.bytes_read += progress.bytes_read;
            lost.json_files += progress.json_files;
            lost.rows += progress.rows;
        }
        self.unlease(i);
    }

    /// The shard index of a current lease.
    pub fn current_lease(&self, lease_id: u64) -> Option<usize> {
        self.leased.get(&lease_id).copied()
    }

    /// Extends a lease and records the worker's peak RSS; false if the
    /// lease is not current (expired, reassigned, unknown).
    pub fn heartbeat(
        &mut self,
        worker: &str,
        lease_id: u64,
        progress: Progress,
        peak_rss_bytes: u64,
        now: Instant,
    ) -> bool {
        self.expire(now);
        let w = self.touch(worker, None, now);
        w.peak_rss_bytes = w.peak_rss_bytes.max(peak_rss_bytes);
        let timeout = self.lease_timeout;
        let Some(i) = self.current_lease(lease_id) else {
            return false;
        };
        if let ShardState::Leased {
            deadline,
            progress: p,
            moved_at,
            ..
        } = &mut self.shards[i].state
        {
            *deadline = now + timeout;
            if *p != progress {
                *moved_at = now;
            }
            *p = progress;
        }
        true
    }

    /// Marks the shard of a current lease done. Returns its index, or `None`
    /// for a stale lease (then nothing changes).
    pub fn complete(
        &mut self,
        worker: &str,
        lease_id: u64,
        manifest: ShardManifest,
        now: Instant,
    ) -> Option<usize> {
        let i = self.current_lease(lease_id)?;
        self.unlease(i);
        self.done += 1;
        self.shards[i].state = ShardState::Done(Box::new(manifest));
        self.shards[i].last_error = None;
        let w = self.touch(worker, None, now);
        w.current = None;
        w.shards_done += 1;
        Some(i)
    }

    /// Records a failed (or abandoned) attempt of a current lease; `None`
    /// for a stale lease (then nothing changes but the worker's last sighting).
    pub fn fail(
        &mut self,
        worker: &str,
        lease_id: u64,
        error: String,
        kind: FailureKind,
        now: Instant,
    ) -> Option<FailOutcome> {
        self.touch(worker, None, now).current = None;
        let i = self.current_lease(lease_id)?;
        if kind.counts_as_attempt() {
            self.attempt_lost(i, error, kind.retryable());
        } else {
            // Shutting down is not the shard's fault nor the worker's.
            self.drop_lease(i);
            let shard = &mut self.shards[i];
            shard.attempts = shard.attempts.saturating_sub(1);
            shard.last_error = Some(error);
            shard.state = ShardState::Pending;
            self.queue.push_front(i);
        }
        let shard = &self.shards[i];
        Some(FailOutcome {
            name: shard.name.clone(),
            attempts: shard.attempts,
            failed_for_good: matches!(shard.state, ShardState::Failed),
        })
    }

    fn attempt_lost(&mut self, i: usize, error: String, retryable: bool) {
        self.drop_lease(i);
        let max = self.max_attempts;
        let shard = &mut self.shards[i];
        if let ShardState::Leased { worker, .. } = &shard.state
            && !shard.lost_by.contains(worker)
        {
            shard.lost_by.push(worker.clone());
        }
        shard.last_error = Some(error);
        if retryable && shard.attempts < max {
            shard.state = ShardState::Pending;
            self.queue.push_back(i);
        } else {
            shard.state = ShardState::Failed;
            self.failed += 1;
        }
    }

    /// Takes back every lease whose deadline has passed. Returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let stall = self.stall_timeout;
        let expired: Vec<(usize, String, bool)> = self
            .leased
            .values()
            .map(|&i| (i, &self.shards[i]))
            .filter_map(|(i, s)| match &s.state {
                ShardState::Leased {
                    deadline,
                    worker,
                    moved_at,
                    ..
                } => {
                    let stalled = now.saturating_duration_since(*moved_at) >= stall;
                    (*deadline <= now || stalled).then(|| (i, worker.clone(), stalled))
                }
                _ => None,
            })
            .collect();
        let mut expired = expired;
        expired.sort_by_key(|e| e.0);
        for (i, worker, stalled) in &expired {
            let error = if *stalled {
                format!(
                    "worker {worker} made no progress for {:.1}s (hung?)",
                    stall.as_secs_f64()
                )
            } else {
                format!(
                    "lease expired: worker {worker} was silent for {:.1}s",
                    self.lease_timeout.as_secs_f64()
                )
            };
            tracing::warn!(shard = %self.shards[*i].name, worker = %worker, "{error}; the shard goes back to the queue");
            if let Some(w) = self.workers.get_mut(worker) {
                w.current = None;
            }
            self.attempt_lost(*i, error, true);
        }
        self.tallies.lease_expiries += expired.len() as u64;
        expired.len()
    }

    /// Takes back the commits of the done shards `indices` (the job's end
    /// found their output not as written) and queues them again, leased one
    /// at a time in shard order from now on: where several of them wrote one
    /// path, the last in shard order writes it last, as its list says.
    pub fn redo_in_order(&mut self, indices: &[usize]) {
        let mut indices = indices.to_vec();
        indices.sort_unstable();
        indices.dedup();
        for i in indices {
            let Some(shard) = self.shards.get_mut(i) else {
                continue;
            };
            if matches!(shard.state, ShardState::Done(_)) {
                shard.state = ShardState::Pending;
                shard.recovered = false;
                self.done -= 1;
                self.queue.push_back(i);
            }
        }
        self.queue.make_contiguous().sort_unstable();
        self.one_at_a_time = true;
    }

    /// True when every shard is done or failed.
    pub fn settled(&self) -> bool {
        self.done + self.failed == self.shards.len()
    }

    /// Counts of (done, failed, leased).
    pub fn tally(&self) -> (usize, usize, usize) {
        (self.done, self.failed, self.leased.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardprep_core::manifest::ShardCounts;

    fn ident() -> ShardIdentity {
        ShardIdentity {
            size: 1,
            mtime_ns: 1,
            ..Default::default()
        }
    }
    fn manifest(name: &str) -> ShardManifest {
        ShardManifest {
            shard_name: name.into(),
            identity: ident(),
            lease_id: 0,
            attempt: 1,
            worker_id: "w".into(),
            fragment: "f".into(),
            counts: ShardCounts::default(),
            issues: vec![],
            issues_not_listed: 0,
            data_synced: true,
            boot_id: String::new(),
            image_checks: Default::default(),
            image_issues: Vec::new(),
            image_issues_not_listed: 0,
            elapsed_ms: 0,
        }
    }
    fn sched(n: usize, max: u32) -> Scheduler {
        let shards = (0..n)
            .map(|i| (format!("s{i}.tar"), ident(), None))
            .collect();
        Scheduler::new(shards, Duration::from_secs(10), max, 100)
    }
    fn grant(a: LeaseAnswer) -> Grant {
        match a {
            LeaseAnswer::Shard(g) => g,
            other => panic!("expected a shard, got {other:?}"),
        }
    }

    #[test]
    fn shards_redone_at_the_end_go_one_at_a_time_in_shard_order() {
        let t = Instant::now();
        let mut s = sched(3, 3);
        for w in ["a", "b", "c"] {
            let g = grant(s.lease(w, t));
            s.complete(w, g.lease_id, manifest(&g.name), t);
        }
        assert!(s.settled());
        s.redo_in_order(&[2, 0]);
        assert!(!s.settled());
        let g = grant(s.lease("a", t));
        assert_eq!(g.name, "s0.tar");
        // The second waits for the first, although a worker is free.
        assert_eq!(s.lease("b", t), LeaseAnswer::Wait);
        s.complete("a", g.lease_id, manifest("s0.tar"), t);
        let g = grant(s.lease("b", t));
        assert_eq!((g.name.as_str(), g.attempt), ("s2.tar", 2));
        s.complete("b", g.lease_id, manifest("s2.tar"), t);
        assert!(s.settled());
        assert_eq!(s.tally(), (3, 0, 0));
    }

    #[test]
    fn hands_out_shards_in_order_then_waits() {
        let t = Instant::now();
        let mut s = sched(2, 3);
        assert_eq!(grant(s.lease("a", t)).name, "s0.tar");
        assert_eq!(grant(s.lease("b", t)).name, "s1.tar");
        assert_eq!(s.lease("c", t), LeaseAnswer::Wait);
    }

    #[test]
    fn expired_lease_goes_back_and_late_completion_is_refused() {
        let t = Instant::now();
        let mut s = sched(1, 3);
        let g1 = grant(s.lease("a", t));
        // Heartbeat keeps it alive past the original deadline.
        assert!(s.heartbeat(
            "a",
            g1.lease_id,
            Progress::default(),
            0,
            t + Duration::from_secs(8)
        ));
        assert_eq!(s.lease("b", t + Duration::from_secs(15)), LeaseAnswer::Wait);
        // Silent worker: lease expires; b gets attempt 2.
        let g2 = grant(s.lease("b", t + Duration::from_secs(19)));
        assert_eq!(g2.attempt, 2);
        assert_ne!(g1.lease_id, g2.lease_id);
        assert!(!s.heartbeat(
            "a",
            g1.lease_id,
            Progress::default(),
            0,
            t + Duration::from_secs(19)
        ));
        assert_eq!(
            s.complete(
                "a",
                g1.lease_id,
                manifest("s0.tar"),
                t + Duration::from_secs(20)
            ),
            None
        );
        assert_eq!(
            s.complete(
                "b",
                g2.lease_id,
                manifest("s0.tar"),
                t + Duration::from_secs(20)
            ),
            Some(0)
        );
        assert!(s.settled());
        // A second completion of the same shard is refused too.
        assert_eq!(
            s.complete(
                "b",
                g2.lease_id,
                manifest("s0.tar"),
                t + Duration::from_secs(21)
            ),
            None
        );
    }

    #[test]
    fn retries_until_max_attempts_then_fails() {
        let t = Instant::now();
        let mut s = sched(1, 3);
        for attempt in 1..=3 {
            let g = grant(s.lease("a", t));
            assert_eq!(g.attempt, attempt);
            assert!(
                s.fail(
                    "a",
                    g.lease_id,
                    format!("boom {attempt}"),
                    FailureKind::Retryable,
                    t
                )
                .is_some()
            );
        }
        assert!(s.settled());
        assert_eq!(s.tally(), (0, 1, 0));
        assert_eq!(s.shards()[0].last_error.as_deref(), Some("boom 3"));
    }

    #[test]
    fn non_retryable_fails_at_once_and_abandon_does_not_count() {
        let t = Instant::now();
        let mut s = sched(2, 3);
        let g = grant(s.lease("a", t));
        assert!(
            s.fail(
                "a",
                g.lease_id,
                "shutting down".into(),
                FailureKind::Abandoned,
                t
            )
            .is_some()
        );
        assert_eq!(s.shards()[0].attempts, 0);
        assert!(s.shards()[0].lost_by.is_empty());
        // Given back at the front of the queue, to anyone, as attempt 1 again.
        let g = grant(s.lease("b", t));
        assert_eq!((g.name.as_str(), g.attempt), ("s0.tar", 1));
        let g = grant(s.lease("a", t));
        assert_eq!(g.name, "s1.tar");
        assert!(
            s.fail("a", g.lease_id, "corrupt".into(), FailureKind::Permanent, t)
                .is_some()
        );
        assert!(matches!(s.shards()[1].state, ShardState::Failed));
    }

    #[test]
    fn recovered_shards_are_not_leased_and_finished_answers_done() {
        let t = Instant::now();
        let shards = vec![
            ("a.tar".to_string(), ident(), Some(manifest("a.tar"))),
            ("b.tar".to_string(), ident(), None),
        ];
        let mut s = Scheduler::new(shards, Duration::from_secs(5), 3, 1);
        assert_eq!(grant(s.lease("w", t)).name, "b.tar");
        s.finish();
        assert_eq!(s.lease("w", t), LeaseAnswer::Done);
        assert!(s.workers()["w"].told_done);
    }

    #[test]
    fn a_lost_shard_goes_to_another_idle_worker_first() {
        let t = Instant::now();
        let mut s = sched(2, 3);
        let g0 = grant(s.lease("a", t));
        let g1 = grant(s.lease("b", t));
        s.complete("b", g1.lease_id, manifest("s1.tar"), t);
        assert!(
            s.fail("a", g0.lease_id, "stuck".into(), FailureKind::Retryable, t)
                .is_some()
        );
        // `a` lost s0; `b` is alive and idle: `a` waits, `b` takes s0.
        assert_eq!(s.lease("a", t), LeaseAnswer::Wait);
        let again = grant(s.lease("b", t));
        assert_eq!((again.name.as_str(), again.attempt), ("s0.tar", 2));
        // Alone, a worker does retake a shard it lost.
        let mut s = sched(1, 3);
        let g = grant(s.lease("a", t));
        assert!(
            s.fail("a", g.lease_id, "boom".into(), FailureKind::Retryable, t)
                .is_some()
        );
        assert_eq!(grant(s.lease("a", t)).attempt, 2);
    }

    #[test]
    fn workers_that_all_lost_a_shard_do_not_wait_for_a_busy_one() {
        // `c` hangs on s1 (heartbeating); `a` and `b` both lost s0. Waiting
        // for `c` could take until the stall timeout: one of them retakes s0.
        let t = Instant::now();
        let mut s = sched(2, 4);
        let g0 = grant(s.lease("a", t));
        let _g1 = grant(s.lease("c", t));
        assert!(
            s.fail("a", g0.lease_id, "lost".into(), FailureKind::Retryable, t)
                .is_some()
        );
        // `a` sees `b` (registered, idle, has not lost s0): it waits.
        s.touch("b", None, t);
        assert_eq!(s.lease("a", t), LeaseAnswer::Wait);
        let g = grant(s.lease("b", t));
        assert!(
            s.fail("b", g.lease_id, "lost".into(), FailureKind::Retryable, t)
                .is_some()
        );
        // Now both lost it and `c` is busy: the next to ask takes it.
        let again = grant(s.lease("a", t));
        assert_eq!((again.name.as_str(), again.attempt), ("s0.tar", 3));
    }

    #[test]
    fn a_hung_worker_that_still_heartbeats_loses_its_lease() {
        let t = Instant::now();
        let mut s = sched(1, 3).with_stall_timeout(Duration::from_secs(20));
        let g = grant(s.lease("a", t));
        let p = Progress {
            members: 1,
            ..Progress::default()
        };
        assert!(s.heartbeat("a", g.lease_id, p, 0, t + Duration::from_secs(5)));
        // Heartbeats keep coming, progress does not move.
        assert!(s.heartbeat("a", g.lease_id, p, 0, t + Duration::from_secs(14)));
        assert!(s.heartbeat("a", g.lease_id, p, 0, t + Duration::from_secs(23)));
        assert!(!s.heartbeat("a", g.lease_id, p, 0, t + Duration::from_secs(26)));
        assert_eq!(grant(s.lease("b", t + Duration::from_secs(26))).attempt, 2);
    }

    #[test]
    fn tallies_count_retries_expiries_and_the_work_of_lost_attempts() {
        let t = Instant::now();
        let mut s = sched(1, 3);
        let p = Progress {
            members: 3,
            bytes_read: 300,
            json_files: 1,
            rows: 1,
        };
        let g = grant(s.lease("a", t));
        assert!(s.heartbeat("a", g.lease_id, p, 0, t));
        // Silent past its lease: expired, its work counted as lost.
        assert_eq!(s.expire(t + Duration::from_secs(11)), 1);
        let g2 = grant(s.lease("b", t + Duration::from_secs(11)));
        assert_eq!((g2.name.as_str(), g2.attempt), ("s0.tar", 2));
        // Shutting down: not an attempt, but its work is lost too.
        assert!(s.heartbeat("b", g2.lease_id, p, 0, t + Duration::from_secs(12)));
        s.fail(
            "b",
            g2.lease_id,
            "bye".into(),
            FailureKind::Abandoned,
            t + Duration::from_secs(12),
        );
        let again = grant(s.lease("c", t + Duration::from_secs(12)));
        assert_eq!(again.attempt, 2);
        let tallies = s.tallies();
        assert_eq!((tallies.retries, tallies.lease_expiries), (2, 1));
        assert_eq!(tallies.lost_work.bytes_read, 600);
        assert_eq!(tallies.lost_work.members, 6);
    }
}

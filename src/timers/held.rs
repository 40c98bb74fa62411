//! The claims one replica's timers hold: queued (claimed, waiting for a
//! firing slot) or firing. Bounded: the claim loop asks the store for no
//! more than `room()`, so a burst of due deadlines waits in the store (the
//! Redis due set, the memory engine's index), not here. The room opens in
//! steps of at least `min_room`, not one firing's worth at a time: a round
//! that may claim only a few deadlines would spread them one per bucket and
//! fire them one per commit, where one round of `min_room` (a full batch
//! per bucket at the default 16 buckets) keeps the firings batched.
//!
//! Each session is held at most once. A claim of a session already held
//! (its claim's lease ran out while it waited, and it came back: a slow
//! store, a Redis stall) takes the place of the queued one, so the firing
//! releases the newest claim; a claim that arrives while the session is
//! firing waits beside it and is queued when that firing ends (its firing
//! then finds nothing due and releases it). So one replica never fires one
//! session twice at once, nor queues it twice.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::engine::SessionKey;
use crate::store::Claim;

/// What the timers hold, for tests and the metrics to come.
#[derive(Debug, Default)]
pub struct TimerStats {
    /// Sessions held now (queued or firing).
    pub held: AtomicUsize,
    /// The most ever held at once.
    pub max_held: AtomicUsize,
    /// Claims of a session already held here, merged into its entry.
    pub merged: AtomicU64,
}

enum Entry {
    Queued(Claim),
    /// Taken by a firing; `again` is a newer claim that came meanwhile.
    Firing {
        batch: u32,
        again: Option<Claim>,
    },
}

#[derive(Default)]
struct State {
    by_key: HashMap<SessionKey, Entry>,
    /// Queued sessions by batch, oldest first.
    queued: HashMap<u32, VecDeque<SessionKey>>,
    /// Batches with queued sessions, in turn (a batch taken with some left
    /// goes to the back, so one busy batch does not starve the others).
    turns: VecDeque<u32>,
}

impl State {
    fn enqueue(&mut self, key: SessionKey, batch: u32) {
        let queue = self.queued.entry(batch).or_default();
        if queue.is_empty() {
            self.turns.push_back(batch);
        }
        queue.push_back(key);
    }
}

pub(super) struct Held {
    state: Mutex<State>,
    capacity: usize,
    /// The least room worth a claim round (see the module doc).
    min_room: usize,
    /// Notified when sessions are queued; the firing slots wait on it.
    pub(super) work: Notify,
    /// Notified when a firing ends and the room reaches `min_room` again:
    /// the claim loop, which stopped claiming, may claim again.
    pub(super) room: Notify,
    stats: Arc<TimerStats>,
}

impl Held {
    pub(super) fn new(capacity: usize, min_room: usize, stats: Arc<TimerStats>) -> Self {
        Self {
            state: Mutex::new(State::default()),
            capacity,
            min_room: min_room.clamp(1, capacity.max(1)),
            work: Notify::new(),
            room: Notify::new(),
            stats,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many more sessions may be claimed now: 0 while the room is
    /// under `min_room`.
    pub(super) fn room(&self) -> usize {
        let room = self.free(self.lock().by_key.len());
        if room >= self.min_room { room } else { 0 }
    }

    fn free(&self, held: usize) -> usize {
        self.capacity.saturating_sub(held)
    }

    /// Holds `claim` (of `batch`): queued, or merged into the session's entry.
    pub(super) fn push(&self, batch: u32, claim: Claim) {
        let mut state = self.lock();
        match state.by_key.get_mut(&claim.key) {
            None => {
                let key = claim.key.clone();
                state.by_key.insert(key.clone(), Entry::Queued(claim));
                state.enqueue(key, batch);
                let held = state.by_key.len();
                self.stats.held.store(held, Ordering::Relaxed);
                self.stats.max_held.fetch_max(held, Ordering::Relaxed);
            }
            Some(Entry::Queued(queued)) => {
                *queued = claim;
                self.stats.merged.fetch_add(1, Ordering::Relaxed);
            }
            Some(Entry::Firing { again, .. }) => {
                *again = Some(claim);
                self.stats.merged.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Up to `max` queued sessions of the batch whose turn it is, oldest
    /// first, now firing; empty when nothing is queued.
    pub(super) fn take(&self, max: usize) -> Vec<Claim> {
        let mut state = self.lock();
        let Some(batch) = state.turns.pop_front() else {
            return Vec::new();
        };
        let mut keys = state.queued.remove(&batch).unwrap_or_default();
        let rest = keys.split_off(max.min(keys.len()));
        if !rest.is_empty() {
            state.queued.insert(batch, rest);
            state.turns.push_back(batch);
        }
        let mut taken = Vec::with_capacity(keys.len());
        for key in keys {
            let firing = Entry::Firing { batch, again: None };
            if let Some(Entry::Queued(claim)) = state.by_key.insert(key, firing) {
                taken.push(claim);
            }
        }
        taken
    }

    /// The firing of `claims` ended: they are no longer held, but for a
    /// newer claim that came meanwhile, which is queued.
    pub(super) fn done(&self, claims: &[Claim]) {
        let mut state = self.lock();
        let was_short = self.free(state.by_key.len()) < self.min_room;
        let mut requeued = false;
        for claim in claims {
            match state.by_key.remove(&claim.key) {
                Some(Entry::Firing {
                    batch,
                    again: Some(newer),
                }) => {
                    let key = newer.key.clone();
                    state.by_key.insert(key.clone(), Entry::Queued(newer));
                    state.enqueue(key, batch);
                    requeued = true;
                }
                Some(Entry::Firing { again: None, .. }) | None => {}
                Some(queued @ Entry::Queued(_)) => {
                    // Not this firing's: leave it.
                    state.by_key.insert(claim.key.clone(), queued);
                }
            }
        }
        let held = state.by_key.len();
        drop(state);
        self.stats.held.store(held, Ordering::Relaxed);
        if requeued {
            self.work.notify_waiters();
        }
        if was_short && self.free(held) >= self.min_room {
            self.room.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(id: &str, lease: i64) -> Claim {
        Claim {
            key: SessionKey {
                tenant: crate::engine::Tenant::default_tenant(),
                id: crate::engine::SessionId::parse("id", id).unwrap(),
            },
            lease,
        }
    }

    fn ids(claims: &[Claim]) -> Vec<String> {
        claims.iter().map(|c| c.key.id.to_string()).collect()
    }

    #[test]
    fn a_firing_takes_one_batch_oldest_first_at_most_the_limit_and_batches_take_turns() {
        let held = Held::new(100, 1, Arc::default());
        for i in 0..5 {
            held.push(1, claim(&format!("a{i}"), 0));
        }
        held.push(2, claim("b0", 0));
        assert_eq!(ids(&held.take(3)), ["a0", "a1", "a2"]);
        assert_eq!(ids(&held.take(3)), ["b0"], "batch 2's turn");
        assert_eq!(ids(&held.take(3)), ["a3", "a4"]);
        assert!(held.take(3).is_empty(), "nothing queued");
        assert_eq!(held.room(), 94, "all six are firing");
    }

    #[test]
    fn room_is_the_capacity_less_what_is_held() {
        let stats = Arc::new(TimerStats::default());
        let held = Held::new(3, 1, stats.clone());
        assert_eq!(held.room(), 3);
        held.push(0, claim("a", 0));
        held.push(0, claim("b", 0));
        let firing = held.take(1);
        assert_eq!(held.room(), 1, "queued and firing both count");
        held.done(&firing);
        assert_eq!(held.room(), 2);
        assert_eq!(stats.max_held.load(Ordering::Relaxed), 2);
        assert_eq!(stats.held.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_room_opens_only_once_it_reaches_the_minimum() {
        let held = Held::new(4, 2, Arc::default());
        for k in ["a", "b", "c"] {
            held.push(0, claim(k, 0));
        }
        assert_eq!(held.room(), 0, "one free is under the minimum");
        let a = held.take(1);
        held.done(&a);
        assert_eq!(held.room(), 2);
        // The claim loop is told once the room is worth a round again.
        let told = held.room.notified();
        tokio::pin!(told);
        assert!(
            futures_util::FutureExt::now_or_never(told.as_mut()).is_some(),
            "notified when the room reached the minimum"
        );
    }

    #[test]
    fn a_session_claimed_again_while_queued_is_queued_once_with_the_newer_claim() {
        let stats = Arc::new(TimerStats::default());
        let held = Held::new(10, 1, stats.clone());
        held.push(0, claim("k", 1));
        held.push(0, claim("k", 2));
        assert_eq!(held.room(), 9);
        let taken = held.take(10);
        assert_eq!(taken, [claim("k", 2)], "once, with the newer lease");
        assert_eq!(stats.merged.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_session_claimed_again_while_firing_is_queued_when_that_firing_ends() {
        let held = Held::new(10, 1, Arc::default());
        held.push(0, claim("k", 1));
        let first = held.take(10);
        held.push(0, claim("k", 2));
        assert!(held.take(10).is_empty(), "not fired twice at once");
        assert_eq!(held.room(), 9);
        held.done(&first);
        assert_eq!(held.take(10), [claim("k", 2)]);
        assert_eq!(held.room(), 9);
        held.done(&[claim("k", 2)]);
        assert_eq!(held.room(), 10);
    }
}

//! Group commit, per bucket: a change that arrives while a commit of its
//! bucket is in flight waits in the bucket's queue, and the next commit takes
//! what is queued together (one WATCH/MULTI for up to `MAX_BATCH` changes,
//! one per session; the rest go in the ones after). Alone, a change
//! commits at once; under load, the busier the bucket, the more changes share
//! each round trip. SwitchCycle at 64 in flight over 16 buckets (`tests/bench.sh`)
//! makes about two changes per commit: half the round trips, syscalls and
//! wake-ups, on Redis and here, for each change.
//!
//! This is only the queue; `super::group_commit` runs the commits.

use std::collections::VecDeque;
use std::sync::Mutex;

/// At most this many changes share one commit.
pub const MAX_BATCH: usize = 16;

/// What `enter` made of a change: the lead of its bucket's commit, or queued.
#[derive(Debug, PartialEq)]
pub enum Role {
    /// Nothing of the bucket is in flight: commit now; call `next` when done.
    Lead,
    /// Queued: a commit in flight will hand it on.
    Queued,
}

struct Bucket<J> {
    busy: bool,
    queue: VecDeque<J>,
}

/// The queues of every bucket.
pub struct Groups<J> {
    buckets: Vec<Mutex<Bucket<J>>>,
}

impl<J> Groups<J> {
    pub fn new(buckets: u32) -> Self {
        Self {
            buckets: (0..buckets.max(1))
                .map(|_| {
                    Mutex::new(Bucket {
                        busy: false,
                        queue: VecDeque::new(),
                    })
                })
                .collect(),
        }
    }

    fn bucket(&self, b: u32) -> std::sync::MutexGuard<'_, Bucket<J>> {
        let m = &self.buckets[b as usize % self.buckets.len()];
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Leads a commit of bucket `b`, or queues `job()` behind the one in flight.
    pub fn enter(&self, b: u32, job: impl FnOnce() -> J) -> Role {
        let mut bucket = self.bucket(b);
        if bucket.busy {
            bucket.queue.push_back(job());
            Role::Queued
        } else {
            bucket.busy = true;
            Role::Lead
        }
    }

    /// A commit of bucket `b` ended: the next batch, oldest first, at most
    /// `MAX_BATCH` and no two of the same `key` (the bucket stays busy: the
    /// caller commits it and calls `next` again), or none (the bucket is free).
    pub fn next<K: PartialEq + ?Sized>(&self, b: u32, key: impl Fn(&J) -> &K) -> Option<Vec<J>> {
        let mut bucket = self.bucket(b);
        let mut batch: Vec<J> = Vec::new();
        let mut i = 0;
        while i < bucket.queue.len() && batch.len() < MAX_BATCH {
            if batch.iter().any(|j| key(j) == key(&bucket.queue[i])) {
                i += 1;
            } else if let Some(job) = bucket.queue.remove(i) {
                batch.push(job);
            }
        }
        bucket.busy = !batch.is_empty();
        bucket.busy.then_some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id<'a>(j: &'a (u32, &'static str)) -> &'a str {
        j.1
    }

    #[test]
    fn the_first_change_of_a_bucket_leads_and_later_ones_queue_until_it_ends() {
        let g = Groups::new(2);
        assert_eq!(g.enter(0, || (1, "a")), Role::Lead);
        assert_eq!(g.enter(0, || (2, "b")), Role::Queued);
        assert_eq!(g.enter(0, || (3, "c")), Role::Queued);
        // Another bucket is free.
        assert_eq!(g.enter(1, || (4, "d")), Role::Lead);
        assert_eq!(g.next(0, id), Some(vec![(2, "b"), (3, "c")]));
        // Still busy with that batch: a new change queues.
        assert_eq!(g.enter(0, || (5, "e")), Role::Queued);
        assert_eq!(g.next(0, id), Some(vec![(5, "e")]));
        assert_eq!(g.next(0, id), None);
        // Free again: the next change leads.
        assert_eq!(g.enter(0, || (6, "f")), Role::Lead);
    }

    #[test]
    fn a_batch_holds_each_session_once_and_at_most_the_limit_oldest_first() {
        let g = Groups::new(1);
        assert_eq!(g.enter(0, || (0, "lead")), Role::Lead);
        let names: Vec<&'static str> = (0..MAX_BATCH + 3)
            .map(|i| &*format!("s{i}").leak())
            .collect();
        g.enter(0, || (100, "s0"));
        for (i, n) in names.iter().enumerate() {
            g.enter(0, || (i as u32, *n));
        }
        let first = g.next(0, id).unwrap();
        assert_eq!(first.len(), MAX_BATCH);
        assert_eq!(first[0], (100, "s0"));
        // The second "s0" waits for the next batch; the rest go in order.
        assert_eq!(first[1], (1, "s1"));
        assert_eq!(
            first[MAX_BATCH - 1],
            (MAX_BATCH as u32 - 1, names[MAX_BATCH - 1])
        );
        let second = g.next(0, id).unwrap();
        let rest = (MAX_BATCH..MAX_BATCH + 3).map(|i| (i as u32, names[i]));
        assert_eq!(
            second,
            [(0, "s0")].into_iter().chain(rest).collect::<Vec<_>>()
        );
        assert_eq!(g.next(0, id), None);
    }
}

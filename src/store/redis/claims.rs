//! Deadlines, the Redis side: each bucket has a ZSET of due times and an
//! in-flight ZSET. One Lua script per bucket (`claim.lua`) reads `TIME`,
//! moves due members to in-flight with a lease, and gives lease-expired
//! members back, so a claimer that crashed loses nothing. Firing is an
//! ordinary commit (`update_many`) that re-checks the clock, so a duplicate
//! claim is a no-op; the commit that processes a timeout drops its claim in
//! the same MULTI.
//!
//! A claim is named by its lease's end (its in-flight score, the same for
//! every member of one bucket's round), and a release (`release.lua`) drops
//! the member only while its score is still that lease. Between a claim and
//! its release the session's deadline may move and come due again, and
//! another replica claim it (a new score): an unconditional `ZREM` would
//! drop that claim too, and should its firing then fail, no one would hold
//! the deadline any more — the session would never flag.
//!
//! The commit's own `ZREM inflight` needs no such check: it runs in the
//! MULTI of a commit that processed a timeout, under `WATCH` of the state.
//! Any claim in flight then was taken for the deadline of the state that
//! commit read (nothing else changed the state until its EXEC), which it
//! processed, or for an older state's, already replaced by a later commit
//! (that wrote the newer deadline into the due set). The same MULTI writes
//! the new state's deadline (`ZADD deadlines`), so dropping every claim of
//! the session there loses no deadline.
//!
//! A round claims at most what the timers have room for
//! (`claim_due_at_most`: 512 per replica), shared out between the buckets
//! (`bucket_limits`), and never more than 512 from one bucket; what it
//! leaves stays due for the next round, so a burst waits here, in Redis.
//!
//! Every replica claims every bucket. A commit that sets a deadline earlier
//! than the earliest one known here publishes a wake-up on the bucket's
//! channel, so every replica's timers re-arm at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::RedisStore;
use super::keys::{claim_keys, parse_member};
use super::pool::exchange;
use crate::engine::Micros;
use crate::prometheus::names;
use crate::store::{Claim, StoreError};

/// How long a claimed deadline stays with its claimer before others may take it.
const CLAIM_LEASE: Duration = Duration::from_secs(5);
/// Most deadlines claimed per bucket per round.
const CLAIM_LIMIT: usize = 512;

/// Which bucket gets the first share of a round's remainder: turns round by
/// round, so that when a round may claim fewer deadlines than there are
/// buckets every bucket still gets its turn.
static TURN: AtomicU32 = AtomicU32::new(0);

/// How many deadlines each of `buckets` may claim in a round that may claim
/// `max` in all: an even share, capped at `CLAIM_LIMIT`, the remainder one
/// each to the buckets from `turn` on. They add up to at most `max`.
fn bucket_limits(buckets: u32, max: usize, turn: u32) -> Vec<usize> {
    let n = buckets.max(1) as usize;
    let total = max.min(CLAIM_LIMIT.saturating_mul(n));
    let (share, extra) = (total / n, total % n);
    let first = turn as usize % n;
    (0..n)
        .map(|b| share + usize::from((b + n - first) % n < extra))
        .collect()
}

/// The claim script, loaded into Redis on first use.
pub(super) fn script() -> redis::Script {
    redis::Script::new(include_str!("claim.lua"))
}

/// The release script (drops a claim only if it is still the releaser's).
pub(super) fn release_script() -> redis::Script {
    redis::Script::new(include_str!("release.lua"))
}

impl RedisStore {
    /// Takes at most `max` due deadlines from the buckets (see
    /// `bucket_limits`); returns them, each with the lease its round set, and
    /// the earliest head left. Every bucket is asked, a bucket whose share is
    /// 0 too, for its head.
    pub(super) async fn claim_round(
        &self,
        max: usize,
    ) -> Result<(Vec<Claim>, Option<Micros>), StoreError> {
        let mut conn = self.conn().await?;
        let lease = CLAIM_LEASE.as_micros() as i64;
        let limits = bucket_limits(
            self.settings.buckets,
            max,
            TURN.fetch_add(1, Ordering::Relaxed),
        );
        // Every bucket's claim in one round trip (EVALSHA; loaded on first use).
        let mut pipe = redis::pipe();
        for (b, limit) in (0..self.settings.buckets).zip(limits) {
            let [deadlines, inflight] = claim_keys(b);
            pipe.cmd("EVALSHA")
                .arg(self.claim.get_hash())
                .arg(2)
                .arg(deadlines)
                .arg(inflight)
                .arg(lease)
                .arg(limit);
        }
        let replies: Vec<(Vec<String>, Option<f64>, Micros, u64)> =
            match exchange(&mut conn, async |c| pipe.query_async(c).await).await {
                Err(StoreError::Unavailable(e)) if e.to_ascii_lowercase().contains("noscript") => {
                    let script = &self.claim;
                    exchange(&mut conn, async |c| {
                        script.prepare_invoke().load_async(c).await
                    })
                    .await?;
                    exchange(&mut conn, async |c| pipe.query_async(c).await).await?
                }
                other => other?,
            };
        let mut due = Vec::new();
        let mut head: Option<Micros> = None;
        for (members, next, lease, expired) in replies {
            metrics::counter!(names::TIMER_RECLAIMS).increment(expired);
            due.extend(
                members
                    .iter()
                    .filter_map(|m| parse_member(m))
                    .map(|key| Claim { key, lease }),
            );
            if let Some(n) = next {
                head = Some(head.map_or(n as Micros, |h| h.min(n as Micros)));
            }
        }
        Ok((due, head))
    }

    /// Drops `claim` if its session is still in flight under that claim's
    /// lease; a newer claim of the session (another replica's, or this
    /// one's after the lease ran out) stays.
    pub(super) async fn release_claim(&self, claim: &Claim) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let k = self.keys(&claim.key);
        let script = &self.release;
        exchange(&mut conn, async |c| {
            script
                .key(&k.inflight)
                .arg(&k.member)
                .arg(claim.lease)
                .invoke_async::<i64>(c)
                .await
        })
        .await
        .map(|_| ())
    }

    /// The earliest deadline the timers of this replica will wake for. Every
    /// replica claims every bucket, so a commit needs to wake them only when
    /// its deadline is earlier than this (no per-bucket read on the hot path).
    pub(super) fn known_head(&self) -> Option<Micros> {
        *self.next_head.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a wake-up's deadline (or, with `None`, forgets what is known so
    /// the timers re-read every bucket) and wakes the timers.
    pub fn on_wake(&self, payload: Option<&[u8]>) {
        let announced = payload
            .and_then(|p| std::str::from_utf8(p).ok())
            .and_then(|s| s.parse::<Micros>().ok());
        {
            let mut head = self.next_head.lock().unwrap_or_else(|p| p.into_inner());
            *head = match (announced, *head) {
                (Some(a), Some(h)) => Some(a.min(h)),
                (Some(a), None) => Some(a),
                (None, _) => None,
            };
        }
        self.wake.notify_one();
    }

    /// A wake-up handler for the Pub/Sub task (it does not keep the store alive).
    pub fn wake_handler(self: &Arc<Self>) -> impl Fn(Option<&[u8]>) + Send + Sync + 'static {
        let me = Arc::downgrade(self);
        move |payload| {
            if let Some(store) = me.upgrade() {
                store.on_wake(payload);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_shares_its_bound_between_the_buckets_and_never_exceeds_it() {
        assert_eq!(bucket_limits(4, 10, 0), [3, 3, 2, 2]);
        assert_eq!(bucket_limits(4, 10, 3), [3, 2, 2, 3], "the remainder turns");
        assert_eq!(bucket_limits(16, 3, 15), {
            let mut l = vec![0; 16];
            l[15] = 1;
            l[0] = 1;
            l[1] = 1;
            l
        });
        assert_eq!(bucket_limits(2, usize::MAX, 0), [CLAIM_LIMIT, CLAIM_LIMIT]);
        assert_eq!(bucket_limits(3, 0, 1), [0, 0, 0]);
        for buckets in [1, 2, 7, 16] {
            for max in [0, 1, 5, 16, 100, 512, 5_000, 100_000] {
                for turn in [0, 1, 5, u32::MAX] {
                    let l = bucket_limits(buckets, max, turn);
                    assert_eq!(l.len(), buckets as usize);
                    let sum: usize = l.iter().sum();
                    assert_eq!(sum, max.min(CLAIM_LIMIT * buckets as usize));
                    assert!(l.iter().all(|&n| n <= CLAIM_LIMIT));
                }
            }
        }
    }
}

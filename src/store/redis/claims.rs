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
//! Every replica claims every bucket. A commit that sets a deadline earlier
//! than the earliest one known here publishes a wake-up on the bucket's
//! channel, so every replica's timers re-arm at once.

use std::sync::Arc;
use std::time::Duration;

use super::RedisStore;
use super::keys::{claim_keys, parse_member};
use super::pool::exchange;
use crate::engine::Micros;
use crate::store::{Claim, StoreError};

/// How long a claimed deadline stays with its claimer before others may take it.
const CLAIM_LEASE: Duration = Duration::from_secs(5);
/// Deadlines claimed per bucket per round.
const CLAIM_LIMIT: usize = 512;

/// The claim script, loaded into Redis on first use.
pub(super) fn script() -> redis::Script {
    redis::Script::new(include_str!("claim.lua"))
}

/// The release script (drops a claim only if it is still the releaser's).
pub(super) fn release_script() -> redis::Script {
    redis::Script::new(include_str!("release.lua"))
}

impl RedisStore {
    /// Takes due deadlines from every bucket; returns them, each with the
    /// lease its round set, and the earliest head left.
    pub(super) async fn claim_round(&self) -> Result<(Vec<Claim>, Option<Micros>), StoreError> {
        let mut conn = self.conn().await?;
        let lease = CLAIM_LEASE.as_micros() as i64;
        // Every bucket's claim in one round trip (EVALSHA; loaded on first use).
        let mut pipe = redis::pipe();
        for b in 0..self.settings.buckets {
            let [deadlines, inflight] = claim_keys(b);
            pipe.cmd("EVALSHA")
                .arg(self.claim.get_hash())
                .arg(2)
                .arg(deadlines)
                .arg(inflight)
                .arg(lease)
                .arg(CLAIM_LIMIT);
        }
        let replies: Vec<(Vec<String>, Option<f64>, Micros)> =
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
        for (members, next, lease) in replies {
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

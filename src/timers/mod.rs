//! Server-side flagging: sleep until the earliest deadline the store knows
//! (or until a commit announces an earlier one), claim what is due, and fire
//! each through the store's ordinary versioned commit. The engine re-checks
//! that the clock really ran out, so a duplicate or stale claim is a no-op
//! and each deadline causes exactly one transition.
//!
//! Under a burst (10,000 deadlines in a second) claimed deadlines queue
//! here and a bounded number of firings run at a time, instead of all
//! waiting on the store's connection pool and timing out there. A firing
//! takes every queued deadline of its batch (the Redis engine's bucket), up
//! to `BATCH`, into one commit: the busier the burst, the fewer round trips
//! per flag. A firing that fails for a passing reason (pool timeout, write
//! conflict, a Redis blip) is retried at once, one session at a time, with
//! a short backoff while this replica still holds the claim, instead of
//! waiting for the claim's lease to run out. Each claim is kept with the
//! lease the store gave it, so that a release drops only that claim, never
//! a newer one another replica took on the same session meanwhile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::engine::{Command, Request, RuleError, SessionKey};
use crate::store::{Claim, SessionStore, StoreError};

/// The longest the loop sleeps without looking: a safety net under the
/// wake-ups (e.g. a deadline set by another replica whose wake-up was lost).
const POLL: Duration = Duration::from_millis(500);
/// The shortest pause between claim rounds: when deadlines are dense (10,000
/// in a second) a round every millisecond keeps flags on time without every
/// replica hammering the store with back-to-back claims.
const MIN_ROUND: Duration = Duration::from_millis(1);
/// Firings in flight at once per replica: enough to keep the store busy,
/// few enough to leave the connection pool to the calls.
const FIRING_CONCURRENCY: usize = 32;
/// Most deadlines fired in one commit.
const BATCH: usize = 16;
/// How long a failed firing is retried here; well inside the Redis claim
/// lease (5 s), after which any replica may take the deadline again.
const RETRY_WINDOW: Duration = Duration::from_secs(2);

/// Runs until `shutdown` is cancelled.
pub async fn run(store: Arc<dyn SessionStore>, shutdown: CancellationToken) {
    let wake = store.deadline_wake();
    let firing = Arc::new(tokio::sync::Semaphore::new(FIRING_CONCURRENCY));
    let queued = Arc::new(Queued::default());
    let mut failing = false;
    loop {
        let claimed = store.claim_due().await;
        match &claimed {
            Ok(due) => {
                // One waiting firing per deadline; each takes whatever of its
                // batch is still queued when its turn comes (maybe nothing).
                for claim in due.iter().cloned() {
                    let batch = store.batch_of(&claim.key);
                    queued.push(batch, claim);
                    let (store, firing, queued) = (store.clone(), firing.clone(), queued.clone());
                    tokio::spawn(async move {
                        // The semaphore is never closed; Err cannot happen.
                        let _permit = firing.acquire_owned().await;
                        let claims = queued.take(batch, BATCH);
                        if !claims.is_empty() {
                            fire_many(store.as_ref(), &claims).await
                        }
                    });
                }
                failing = false;
            }
            // Logged once per outage; the deadlines wait in the store meanwhile.
            Err(e) if !failing => {
                warn!(error = %e, "claiming due deadlines failed; retrying every {POLL:?}");
                failing = true;
            }
            Err(_) => {}
        }
        let sleep = match (claimed, store.next_deadline().await) {
            (Ok(_), Ok(Some(at))) => {
                Duration::from_micros((at - store.now()).max(0) as u64).clamp(MIN_ROUND, POLL)
            }
            _ => POLL,
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

/// Claimed deadlines not yet taken by a firing, by batch.
#[derive(Default)]
struct Queued {
    by_batch: Mutex<HashMap<u32, Vec<Claim>>>,
}

impl Queued {
    fn push(&self, batch: u32, claim: Claim) {
        self.by_batch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(batch)
            .or_default()
            .push(claim);
    }

    /// Up to `max` of the batch's deadlines, oldest first.
    fn take(&self, batch: u32, max: usize) -> Vec<Claim> {
        let mut by_batch = self.by_batch.lock().unwrap_or_else(|p| p.into_inner());
        let Some(keys) = by_batch.get_mut(&batch) else {
            return Vec::new();
        };
        let taken: Vec<Claim> = keys.drain(..max.min(keys.len())).collect();
        if keys.is_empty() {
            by_batch.remove(&batch);
        }
        taken
    }
}

/// Applies the timeout to several sessions in one go (see `fire` for the
/// outcomes); those that fail for a passing reason are retried each on its
/// own, side by side, so that all of them retry within their claim's lease.
pub async fn fire_many(store: &dyn SessionStore, claims: &[Claim]) {
    let keys: Vec<SessionKey> = claims.iter().map(|c| c.key.clone()).collect();
    let results = store
        .update_many(&keys, crate::store::apply(Request::new(Command::Timeout)))
        .await;
    let mut retries = Vec::new();
    for (claim, result) in claims.iter().zip(results) {
        let key = &claim.key;
        match result {
            Ok(applied) => {
                debug!(session = %key, version = applied.session.version, "deadline fired")
            }
            Err(StoreError::Rule(RuleError::NotDue)) | Err(StoreError::NotFound) => {
                release(store, claim).await
            }
            Err(
                StoreError::Unavailable(_) | StoreError::OutcomeUnknown(_) | StoreError::Conflict,
            ) => retries.push(fire(store, claim)),
            Err(e) => warn!(session = %key, error = %e, "firing a deadline failed"),
        }
    }
    futures_util::future::join_all(retries).await;
}

/// Drops this replica's claim on a deadline that needed no firing (and
/// only that claim: see `SessionStore::release`).
async fn release(store: &dyn SessionStore, claim: &Claim) {
    if let Err(e) = store.release(claim).await {
        debug!(session = %claim.key, error = %e, "releasing a claim failed; its lease will expire");
    }
}

/// Applies the timeout to one session; "not due" and "gone" are normal
/// outcomes. A passing failure is retried (see `retry_after`).
pub async fn fire(store: &dyn SessionStore, claim: &Claim) {
    let key = &claim.key;
    let timeout = crate::store::apply(Request::new(Command::Timeout));
    let started = Instant::now();
    for attempt in 0u32.. {
        match store.update(key, timeout.clone()).await {
            // The firing commit released the claim itself.
            Ok(applied) => {
                debug!(session = %key, version = applied.session.version, "deadline fired");
                return;
            }
            Err(StoreError::Rule(RuleError::NotDue)) | Err(StoreError::NotFound) => break,
            Err(
                e @ (StoreError::Unavailable(_)
                | StoreError::OutcomeUnknown(_)
                | StoreError::Conflict),
            ) => {
                match retry_after(attempt, started.elapsed()) {
                    Some(pause) => tokio::time::sleep(pause).await,
                    None => {
                        // Keep the claim: its lease runs out and the deadline is retried.
                        warn!(session = %key, error = %e, "firing a deadline failed; its claim will be retried when its lease ends");
                        return;
                    }
                }
            }
            Err(e) => {
                warn!(session = %key, error = %e, "firing a deadline failed");
                return;
            }
        }
    }
    release(store, claim).await
}

/// The pause before retry `attempt + 1` of a firing that has been failing
/// for `elapsed`: 5 ms doubling to 200 ms, or `None` once `RETRY_WINDOW` is
/// spent. No jitter: the commit itself is jittered on conflicts, and pool
/// timeouts already spread the retries.
///
/// Not backon's `ExponentialBuilder`: it multiplies in `f32` seconds (5 ms
/// doubled thrice is 39.999999 ms, not 40), and its `with_total_delay` adds
/// up only its own pauses, while the window here is wall-clock time since the
/// first try, the time the tries took (a pool timeout, say) included.
fn retry_after(attempt: u32, elapsed: Duration) -> Option<Duration> {
    let pause = Duration::from_millis(5u64.saturating_mul(1 << attempt.min(6)))
        .min(Duration::from_millis(200));
    (elapsed + pause <= RETRY_WINDOW).then_some(pause)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_firing_takes_only_its_own_batch_oldest_first_and_at_most_the_limit() {
        let key = |id: &str| Claim {
            key: SessionKey {
                tenant: crate::engine::Tenant::default_tenant(),
                id: crate::engine::SessionId::parse("id", id).unwrap(),
            },
            lease: 0,
        };
        let q = Queued::default();
        for i in 0..5 {
            q.push(1, key(&format!("a{i}")));
        }
        q.push(2, key("b0"));
        let ids = |claims: Vec<Claim>| {
            claims
                .into_iter()
                .map(|c| c.key.id.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(q.take(1, 3)), ["a0", "a1", "a2"]);
        assert_eq!(ids(q.take(1, 3)), ["a3", "a4"]);
        assert!(q.take(1, 3).is_empty(), "another firing took them all");
        assert_eq!(ids(q.take(2, 3)), ["b0"]);
        assert!(q.by_batch.lock().unwrap().is_empty());
    }

    #[test]
    fn retries_back_off_from_5ms_to_200ms() {
        let at = |attempt| retry_after(attempt, Duration::ZERO).map(|d| d.as_millis());
        assert_eq!(
            [at(0), at(1), at(2), at(5), at(6), at(30)],
            [Some(5), Some(10), Some(20), Some(160), Some(200), Some(200)]
        );
    }

    #[test]
    fn retries_stop_before_the_window_ends() {
        assert_eq!(
            retry_after(9, Duration::from_millis(1_800)),
            Some(Duration::from_millis(200))
        );
        assert_eq!(retry_after(9, Duration::from_millis(1_801)), None);
        assert_eq!(retry_after(0, RETRY_WINDOW), None);
        // However many attempts, the retries add up to at most the window.
        let (mut elapsed, mut attempt) = (Duration::ZERO, 0);
        while let Some(pause) = retry_after(attempt, elapsed) {
            elapsed += pause;
            attempt += 1;
        }
        assert!(
            elapsed <= RETRY_WINDOW && elapsed > RETRY_WINDOW - Duration::from_millis(200),
            "{elapsed:?}"
        );
    }
}

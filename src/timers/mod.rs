//! Server-side flagging: sleep until the earliest deadline the store knows
//! (or until a commit announces an earlier one), claim what is due, and fire
//! each through the store's ordinary versioned commit. The engine re-checks
//! that the clock really ran out, so a duplicate or stale claim is a no-op
//! and each deadline causes exactly one transition.
//!
//! Under a burst (10,000 deadlines in a second) firings queue here, a bounded
//! number at a time, instead of all waiting on the store's connection pool
//! and timing out there; a firing that fails for a passing reason (pool
//! timeout, write conflict, a Redis blip) is retried at once with a short
//! backoff while this replica still holds the claim, instead of waiting for
//! the claim's lease to run out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::engine::{self, Command, Request, RuleError, SessionKey};
use crate::store::{SessionStore, StoreError};

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
/// How long a failed firing is retried here; well inside the Redis claim
/// lease (5 s), after which any replica may take the deadline again.
const RETRY_WINDOW: Duration = Duration::from_secs(2);

/// Runs until `shutdown` is cancelled.
pub async fn run(store: Arc<dyn SessionStore>, shutdown: CancellationToken) {
    let wake = store.deadline_wake();
    let firing = Arc::new(tokio::sync::Semaphore::new(FIRING_CONCURRENCY));
    let mut failing = false;
    loop {
        let claimed = store.claim_due().await;
        match &claimed {
            Ok(due) => {
                for key in due.iter().cloned() {
                    let (store, firing) = (store.clone(), firing.clone());
                    tokio::spawn(async move {
                        // The semaphore is never closed; Err cannot happen.
                        let _permit = firing.acquire_owned().await;
                        fire(store.as_ref(), &key).await
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
            (Ok(_), Ok(Some(at))) => Duration::from_micros((at - store.now()).max(0) as u64).clamp(MIN_ROUND, POLL),
            _ => POLL,
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

/// Applies the timeout to one session; "not due" and "gone" are normal
/// outcomes. A passing failure is retried (see `retry_after`).
pub async fn fire(store: &dyn SessionStore, key: &SessionKey) {
    let timeout = Request::new(Command::Timeout);
    let started = Instant::now();
    for attempt in 0u32.. {
        match store.update(key, &|s, now| engine::apply(s, &timeout, now)).await {
            // The firing commit released the claim itself.
            Ok(applied) => {
                debug!(session = %key, version = applied.session.version, "deadline fired");
                return;
            }
            Err(StoreError::Rule(RuleError::NotDue)) | Err(StoreError::NotFound) => break,
            Err(e @ (StoreError::Unavailable(_) | StoreError::Conflict)) => match retry_after(attempt, started.elapsed()) {
                Some(pause) => tokio::time::sleep(pause).await,
                None => {
                    // Keep the claim: its lease runs out and the deadline is retried.
                    warn!(session = %key, error = %e, "firing a deadline failed; its claim will be retried when its lease ends");
                    return;
                }
            },
            Err(e) => {
                warn!(session = %key, error = %e, "firing a deadline failed");
                return;
            }
        }
    }
    if let Err(e) = store.release(key).await {
        debug!(session = %key, error = %e, "releasing a claim failed; its lease will expire");
    }
}

/// The pause before retry `attempt + 1` of a firing that has been failing
/// for `elapsed`: 5 ms doubling to 200 ms, or `None` once `RETRY_WINDOW` is
/// spent. No jitter: the commit itself is jittered on conflicts, and pool
/// timeouts already spread the retries.
fn retry_after(attempt: u32, elapsed: Duration) -> Option<Duration> {
    let pause = Duration::from_millis(5u64.saturating_mul(1 << attempt.min(6))).min(Duration::from_millis(200));
    (elapsed + pause <= RETRY_WINDOW).then_some(pause)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_from_5ms_to_200ms() {
        let at = |attempt| retry_after(attempt, Duration::ZERO).map(|d| d.as_millis());
        assert_eq!([at(0), at(1), at(2), at(5), at(6), at(30)], [Some(5), Some(10), Some(20), Some(160), Some(200), Some(200)]);
    }

    #[test]
    fn retries_stop_before_the_window_ends() {
        assert_eq!(retry_after(9, Duration::from_millis(1_800)), Some(Duration::from_millis(200)));
        assert_eq!(retry_after(9, Duration::from_millis(1_801)), None);
        assert_eq!(retry_after(0, RETRY_WINDOW), None);
        // However many attempts, the retries add up to at most the window.
        let (mut elapsed, mut attempt) = (Duration::ZERO, 0);
        while let Some(pause) = retry_after(attempt, elapsed) {
            elapsed += pause;
            attempt += 1;
        }
        assert!(elapsed <= RETRY_WINDOW && elapsed > RETRY_WINDOW - Duration::from_millis(200), "{elapsed:?}");
    }
}

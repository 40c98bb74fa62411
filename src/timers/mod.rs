//! Server-side flagging: sleep until the earliest deadline the store knows
//! (or until a commit announces an earlier one), claim what is due, and fire
//! each through the store's ordinary versioned commit. The engine re-checks
//! that the clock really ran out, so a duplicate or stale claim is a no-op
//! and each deadline causes exactly one transition.

use std::sync::Arc;
use std::time::Duration;

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

/// Runs until `shutdown` is cancelled.
pub async fn run(store: Arc<dyn SessionStore>, shutdown: CancellationToken) {
    let wake = store.deadline_wake();
    let mut failing = false;
    loop {
        let claimed = store.claim_due().await;
        match &claimed {
            Ok(due) => {
                for key in due.iter().cloned() {
                    let store = store.clone();
                    tokio::spawn(async move { fire(store.as_ref(), &key).await });
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

/// Applies the timeout to one session; "not due" and "gone" are normal outcomes.
pub async fn fire(store: &dyn SessionStore, key: &SessionKey) {
    let timeout = Request::new(Command::Timeout);
    match store.update(key, &|s, now| engine::apply(s, &timeout, now)).await {
        // The firing commit released the claim itself.
        Ok(applied) => {
            debug!(session = %key, version = applied.session.version, "deadline fired");
            return;
        }
        Err(StoreError::Rule(RuleError::NotDue)) | Err(StoreError::NotFound) => {}
        Err(e) => {
            // Keep the claim: its lease runs out and the deadline is retried.
            warn!(session = %key, error = %e, "firing a deadline failed");
            return;
        }
    }
    if let Err(e) = store.release(key).await {
        debug!(session = %key, error = %e, "releasing a claim failed; its lease will expire");
    }
}

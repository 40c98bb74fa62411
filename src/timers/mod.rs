//! Server-side flagging: sleep until the earliest deadline the store knows
//! (or until a commit announces an earlier one), claim what is due, and fire
//! each through the store's ordinary versioned commit. The engine re-checks
//! that the clock really ran out, so a duplicate or stale claim is a no-op
//! and each deadline causes exactly one transition.
//!
//! Under a burst (10,000 deadlines in a second) a bounded number of claims
//! is held here ([`held`]: at most `FIRING_CONCURRENCY × BATCH`, queued or
//! firing) and the rest waits in the store: a claim round asks for no more
//! than there is room for, and claims nothing while the room is under half
//! the bound (until firings free that much, so that rounds stay batched). `FIRING_CONCURRENCY` firing slots, long-lived
//! tasks, take the queued deadlines: a firing takes every queued deadline
//! of its batch (the Redis engine's bucket), up to `BATCH`, into one commit,
//! so the busier the burst, the fewer round trips per flag; batches take
//! turns. No task is spawned per deadline. A session is held at most once:
//! a claim of one already held (its lease ran out while it waited) is
//! merged into it, never queued twice (see [`held`]). A firing that fails
//! for a passing reason (pool timeout, write conflict, a Redis blip) is
//! retried at once, one session at a time, with a short backoff while this
//! replica still holds the claim, instead of waiting for the claim's lease
//! to run out. Each claim is kept with the lease the store gave it, so that
//! a release drops only that claim, never a newer one another replica took
//! on the same session meanwhile.
//!
//! Traces: a claim round is a `timers.claim` span (how many it claimed), a
//! firing a `timers.fire` span (its sessions), its commit a child of it.
//! A round that nothing known is due for (the `POLL` safety net, or one
//! that only reads the heads) is a `debug` span, so an idle replica does
//! not send a trace every half second at the default `info` filter.

mod held;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, warn};

use self::held::Held;
pub use self::held::TimerStats;
use crate::engine::{self, Applied, Command, EventKind, Micros, Request, RuleError, SessionKey};
use crate::prometheus::names;
use crate::store::{Change, Claim, SessionStore, StoreError};
use crate::telemetry::TRACE_TARGET;

/// The longest the loop sleeps without looking: a safety net under the
/// wake-ups (e.g. a deadline set by another replica whose wake-up was lost).
const POLL: Duration = Duration::from_millis(500);
/// The shortest pause between claim rounds: when deadlines are dense (10,000
/// in a second) a round every millisecond keeps flags on time without every
/// replica hammering the store with back-to-back claims.
const MIN_ROUND: Duration = Duration::from_millis(1);
/// Firings in flight at once per replica (each a task for the replica's
/// life): enough to keep the store busy, few enough to leave the connection
/// pool to the calls.
pub const FIRING_CONCURRENCY: usize = 32;
/// Most deadlines fired in one commit.
pub const BATCH: usize = 16;
/// Most claims held at once per replica, queued or firing: what the firing
/// slots take in one go, so a claimed deadline waits at most about one
/// firing round here, well inside the Redis claim lease (5 s).
pub const MAX_HELD: usize = FIRING_CONCURRENCY * BATCH;
/// The least room a claim round waits for (see [`held`]): half the bound,
/// a full batch for each of the default 16 buckets.
const MIN_CLAIM: usize = MAX_HELD / 2;
/// How long a failed firing is retried here; well inside the Redis claim
/// lease (5 s), after which any replica may take the deadline again.
const RETRY_WINDOW: Duration = Duration::from_secs(2);

/// Runs until `shutdown` is cancelled.
pub async fn run(store: Arc<dyn SessionStore>, shutdown: CancellationToken) {
    run_with_stats(store, shutdown, Arc::default()).await
}

/// `run`, keeping its figures in `stats`.
pub async fn run_with_stats(
    store: Arc<dyn SessionStore>,
    shutdown: CancellationToken,
    stats: Arc<TimerStats>,
) {
    let wake = store.deadline_wake();
    let held = Arc::new(Held::new(MAX_HELD, MIN_CLAIM, stats));
    // The slots end with this task (the JoinSet aborts them when dropped):
    // a firing cut short leaves its claim to its lease.
    let mut slots = tokio::task::JoinSet::new();
    for _ in 0..FIRING_CONCURRENCY {
        slots.spawn(fire_queued(store.clone(), held.clone()));
    }
    let mut failing = false;
    loop {
        let room = held.room();
        let claimed = match room {
            0 => Ok(()),
            room => {
                let span = claim_span(store.as_ref(), room).await;
                let claimed = store.claim_due_at_most(room).instrument(span.clone()).await;
                span.record("claimed", claimed.as_ref().map_or(0, Vec::len) as i64);
                claimed.map(|due| {
                    if !due.is_empty() {
                        metrics::counter!(names::TIMER_CLAIMS).increment(due.len() as u64);
                        for claim in due {
                            held.push(store.batch_of(&claim.key), claim);
                        }
                        held.work.notify_waiters();
                    }
                })
            }
        };
        match &claimed {
            Ok(()) => failing = false,
            // Logged once per outage; the deadlines wait in the store meanwhile.
            Err(e) if !failing => {
                warn!(error = %e, "claiming due deadlines failed; retrying every {POLL:?}");
                failing = true;
            }
            Err(_) => {}
        }
        let sleep = match (claimed, store.next_deadline().await) {
            // No room worth a round: the next waits for firings to end.
            (Ok(()), _) if held.room() == 0 => POLL,
            (Ok(()), Ok(Some(at))) => {
                Duration::from_micros((at - store.now()).max(0) as u64).clamp(MIN_ROUND, POLL)
            }
            _ => POLL,
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = wake.notified() => {}
            _ = held.room.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

/// The span of a claim round that may take `room` deadlines: `info` when
/// a deadline known here is due, else `debug` (see the module's doc). With
/// traces off (no `info` span enabled, so no `debug` one either), none,
/// and the store is not asked.
async fn claim_span(store: &dyn SessionStore, room: usize) -> tracing::Span {
    if !tracing::span_enabled!(target: TRACE_TARGET, tracing::Level::INFO) {
        return tracing::Span::none();
    }
    let due = matches!(store.next_deadline().await, Ok(Some(at)) if at <= store.now());
    if due {
        tracing::info_span!(target: TRACE_TARGET, "timers.claim", room = room as i64, claimed = tracing::field::Empty)
    } else {
        tracing::debug_span!(target: TRACE_TARGET, "timers.claim", room = room as i64, claimed = tracing::field::Empty)
    }
}

/// One firing slot: fires what is queued, batch by batch, and waits when
/// nothing is.
async fn fire_queued(store: Arc<dyn SessionStore>, held: Arc<Held>) {
    loop {
        // Registered before looking, so a push between the look and the
        // wait still wakes this slot.
        let queued = held.work.notified();
        tokio::pin!(queued);
        queued.as_mut().enable();
        let claims = held.take(BATCH);
        if claims.is_empty() {
            queued.await;
            continue;
        }
        fire_many(store.as_ref(), &claims).await;
        held.done(&claims);
    }
}

/// Applies the timeout to several sessions in one go (see `fire` for the
/// outcomes); those that fail for a passing reason are retried each on its
/// own, side by side, so that all of them retry within their claim's lease.
pub async fn fire_many(store: &dyn SessionStore, claims: &[Claim]) {
    let span = tracing::info_span!(
        target: TRACE_TARGET,
        "timers.fire",
        sessions = claims.len() as i64,
        session_id = tracing::field::Empty,
        tenant = tracing::field::Empty,
    );
    if !span.is_disabled() {
        // One session (the usual firing): its id; a batch: the ids, comma-separated.
        match claims {
            [one] => {
                span.record("session_id", one.key.id.as_str());
                span.record("tenant", one.key.tenant.as_str());
            }
            many => {
                let ids: Vec<&str> = many.iter().map(|c| c.key.id.as_str()).collect();
                span.record("session_id", ids.join(",").as_str());
            }
        }
    }
    fire_many_now(store, claims).instrument(span).await
}

async fn fire_many_now(store: &dyn SessionStore, claims: &[Claim]) {
    let keys: Vec<SessionKey> = claims.iter().map(|c| c.key.clone()).collect();
    let deadlines = Deadlines::default();
    let results = store.update_many(&keys, deadlines.timeout()).await;
    let mut retries = Vec::new();
    for (claim, result) in claims.iter().zip(results) {
        let key = &claim.key;
        match result {
            Ok(applied) => {
                deadlines.record_lateness(&applied);
                debug!(session = %key, version = applied.session.version, "deadline fired")
            }
            Err(StoreError::Rule(RuleError::NotDue)) | Err(StoreError::NotFound) => {
                metrics::counter!(names::TIMER_EMPTY_FIRINGS).increment(1);
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
    let deadlines = Deadlines::default();
    let timeout = deadlines.timeout();
    let started = Instant::now();
    for attempt in 0u32.. {
        match store.update(key, timeout.clone()).await {
            // The firing commit released the claim itself.
            Ok(applied) => {
                deadlines.record_lateness(&applied);
                debug!(session = %key, version = applied.session.version, "deadline fired");
                return;
            }
            Err(StoreError::Rule(RuleError::NotDue)) | Err(StoreError::NotFound) => {
                metrics::counter!(names::TIMER_EMPTY_FIRINGS).increment(1);
                break;
            }
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

/// The deadline each session of a firing had when the firing's change read
/// it, by epoch (one per session's life): the change is pure and may run
/// again, and the last reading is the one that committed.
#[derive(Clone, Default)]
struct Deadlines(Arc<Mutex<HashMap<String, Micros>>>);

impl Deadlines {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Micros>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The timeout, noting each session's deadline as it reads it.
    fn timeout(&self) -> Change {
        let noted = self.clone();
        let request = Request::new(Command::Timeout);
        Arc::new(move |s, now| {
            if let Some(at) = engine::deadline(s) {
                noted.lock().insert(s.epoch.clone(), at);
            }
            engine::apply(s, &request, now)
        })
    }

    /// `synckairos_timer_flag_lateness_seconds`: from the deadline to the
    /// commit of its timeout.
    fn record_lateness(&self, applied: &Applied) {
        let Some(fired) = applied.events.iter().find(|e| {
            matches!(
                e.kind,
                EventKind::Expired | EventKind::TimedOut | EventKind::ParticipantExpired
            )
        }) else {
            return;
        };
        if let Some(deadline) = self.lock().get(&applied.session.epoch) {
            let late = (fired.at - deadline).max(0);
            metrics::histogram!(names::TIMER_FLAG_LATENESS_SECONDS).record(late as f64 / 1e6);
        }
    }
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

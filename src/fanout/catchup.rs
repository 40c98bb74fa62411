//! Reads of a session that its local streams share, so that their cost
//! grows with the sessions a replica follows, not with its streams.
//!
//! - **Catch-up after a Pub/Sub reconnect.** Messages may have been lost, so
//!   every stream must learn what it missed from the session's log. The hub
//!   sends each channel one [`CatchUp`] round inside [`super::HubMsg::Resync`];
//!   the streams of that session that handle it share one read: a stream
//!   whose last version sent is at or after a read already made (or in
//!   flight) in the round takes that read's answer, so N streams that are level
//!   (the usual case) cost one read. At most [`MAX_CONCURRENT_CATCH_UPS`]
//!   catch-up reads run at once per replica, whatever the number of sessions:
//!   a reconnect with thousands of sessions queues them instead of taking
//!   every pooled connection at once.
//! - **Is the session still there?** A session that expires by TTL publishes
//!   nothing, and an id may be deleted and created again (a new epoch) while
//!   a stream missed the DELETED. At its heartbeat a stream asks its
//!   session's [`Liveness`], which reads the session's epoch again only when
//!   no stream of the session asked within half the asking stream's heartbeat
//!   period: a session costs about two reads per heartbeat period at most,
//!   however many streams follow it.
//!
//! What is read is behind [`SessionLog`], which the caller supplies (the app
//! over its store): the fan-out knows the engine's types, never the store's.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{OnceCell, Semaphore};
use tokio::time::Instant;

use crate::engine::{Event, Session, SessionKey};

/// Catch-up reads a replica runs at once after a reconnect (one per session);
/// the others wait for a permit. Small against the Redis pool (64 by
/// default) so that calls keep being served while streams catch up.
pub const MAX_CONCURRENT_CATCH_UPS: usize = 8;

/// Tries of one catch-up read before its streams end with the failure (a
/// pooled connection that died silently with the Pub/Sub one fails the first).
const CATCH_UP_TRIES: usize = 3;
/// The pause between two tries.
const CATCH_UP_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// What a stream that has sent every version up to some `after` missed.
#[derive(Debug)]
pub enum Missed {
    /// Every event after `after`, in order (empty: nothing was missed), of
    /// the session of this `epoch` (a stream of another epoch must not take them).
    Events {
        epoch: String,
        events: Vec<Arc<Event>>,
    },
    /// The log no longer reaches back to `after + 1`: the session now.
    Snapshot(Arc<Session>),
    /// The session no longer exists.
    Gone,
}

/// A failed read; the detail is for logs only.
pub type ReadError = String;

/// The reads the shared structures make, on whatever holds the sessions.
#[async_trait]
pub trait SessionLog: Send + Sync {
    /// What a stream that has sent every version up to `after` missed.
    async fn missed(&self, key: &SessionKey, after: u64) -> Result<Missed, ReadError>;
    /// The session's epoch now; `None` when it no longer exists.
    async fn epoch(&self, key: &SessionKey) -> Result<Option<String>, ReadError>;
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

type Shared<T> = Arc<OnceCell<Arc<Result<T, ReadError>>>>;

/// One session's catch-up round after one reconnect.
pub struct CatchUp {
    /// The reads made (or in flight) in this round, by their `after`.
    reads: Mutex<Vec<(u64, Shared<Missed>)>>,
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for CatchUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatchUp")
            .field("reads", &lock(&self.reads).len())
            .finish_non_exhaustive()
    }
}

impl CatchUp {
    pub(super) fn new(permits: Arc<Semaphore>) -> Arc<Self> {
        Arc::new(Self {
            reads: Mutex::new(Vec::new()),
            permits,
        })
    }

    /// What a stream that has sent every version up to `after` missed: the
    /// answer of a read of this round made after a version at or before
    /// `after` (the caller skips what it already sent), or of a new one.
    pub async fn missed(
        &self,
        log: &dyn SessionLog,
        key: &SessionKey,
        after: u64,
    ) -> Arc<Result<Missed, ReadError>> {
        let cell = {
            let mut reads = lock(&self.reads);
            match reads
                .iter()
                .filter(|(a, _)| *a <= after)
                .max_by_key(|(a, _)| *a)
            {
                Some((_, cell)) => cell.clone(),
                None => {
                    let cell: Shared<Missed> = Arc::default();
                    reads.push((after, cell.clone()));
                    cell
                }
            }
        };
        // A stream that stops waiting hands the read over to another waiter.
        cell.get_or_init(|| async {
            // Never closed: the hub owns the semaphore for its whole life.
            let _permit = self.permits.acquire().await;
            let mut tries = 0;
            loop {
                tries += 1;
                match log.missed(key, after).await {
                    Err(e) if tries < CATCH_UP_TRIES => {
                        tracing::debug!(session = %key, error = %e, "catch-up read failed; trying again");
                        tokio::time::sleep(CATCH_UP_RETRY_PAUSE).await;
                    }
                    read => return Arc::new(read),
                }
            }
        })
        .await
        .clone()
    }
}

/// One session's shared existence check (see the module doc).
#[derive(Default)]
pub struct Liveness {
    /// The latest check: when it started, and its answer once it has one.
    last: Mutex<Option<(Instant, Shared<Option<String>>)>>,
}

impl Liveness {
    /// The session's epoch (`None`: gone), from a check started less than
    /// `fresh` ago by any stream of the session, or from a new one.
    pub async fn epoch(
        &self,
        log: &dyn SessionLog,
        key: &SessionKey,
        fresh: Duration,
    ) -> Arc<Result<Option<String>, ReadError>> {
        let cell = {
            let mut last = lock(&self.last);
            let now = Instant::now();
            match &*last {
                Some((started, cell)) if now.duration_since(*started) < fresh => cell.clone(),
                _ => {
                    let cell: Shared<Option<String>> = Arc::default();
                    *last = Some((now, cell.clone()));
                    cell
                }
            }
        };
        cell.get_or_init(|| async { Arc::new(log.epoch(key).await) })
            .await
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{SessionId, Tenant};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn key() -> SessionKey {
        SessionKey {
            tenant: Tenant::default_tenant(),
            id: SessionId::parse("id", "s1").unwrap(),
        }
    }

    /// Counts reads; each takes a while, so that callers overlap.
    #[derive(Default)]
    struct Counting {
        missed: AtomicUsize,
        epochs: AtomicUsize,
        in_flight: AtomicUsize,
        most_in_flight: AtomicUsize,
    }

    #[async_trait]
    impl SessionLog for Counting {
        async fn missed(&self, _key: &SessionKey, _after: u64) -> Result<Missed, ReadError> {
            self.missed.fetch_add(1, Ordering::SeqCst);
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            Ok(Missed::Events {
                epoch: "e".into(),
                events: Vec::new(),
            })
        }
        async fn epoch(&self, _key: &SessionKey) -> Result<Option<String>, ReadError> {
            self.epochs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(Some("e".into()))
        }
    }

    #[tokio::test]
    async fn level_streams_share_one_catch_up_read_and_one_behind_makes_its_own() {
        let log = Counting::default();
        let round = CatchUp::new(Arc::new(Semaphore::new(1)));
        let k = key();
        let level = (0..10).map(|_| round.missed(&log, &k, 5));
        futures_util::future::join_all(level).await;
        assert_eq!(log.missed.load(Ordering::SeqCst), 1);
        // Ahead of the read made: served by it.
        round.missed(&log, &k, 7).await;
        assert_eq!(log.missed.load(Ordering::SeqCst), 1);
        // Behind it: that read cannot serve it.
        round.missed(&log, &k, 3).await;
        assert_eq!(log.missed.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn catch_up_reads_of_many_sessions_run_within_the_bound() {
        let log = Counting::default();
        let permits = Arc::new(Semaphore::new(2));
        let rounds: Vec<_> = (0..6).map(|_| CatchUp::new(permits.clone())).collect();
        let k = key();
        futures_util::future::join_all(rounds.iter().map(|r| r.missed(&log, &k, 1))).await;
        assert_eq!(log.missed.load(Ordering::SeqCst), 6, "one read per round");
        assert_eq!(
            log.most_in_flight.load(Ordering::SeqCst),
            2,
            "at most the bound at once"
        );
    }

    #[tokio::test]
    async fn a_liveness_check_is_reused_while_fresh() {
        let log = Counting::default();
        let live = Liveness::default();
        let k = key();
        let fresh = Duration::from_millis(200);
        let many = (0..10).map(|_| live.epoch(&log, &k, fresh));
        for answer in futures_util::future::join_all(many).await {
            assert_eq!(*answer, Ok(Some("e".to_owned())));
        }
        assert_eq!(log.epochs.load(Ordering::SeqCst), 1);
        tokio::time::sleep(fresh).await;
        live.epoch(&log, &k, fresh).await;
        assert_eq!(log.epochs.load(Ordering::SeqCst), 2);
    }
}

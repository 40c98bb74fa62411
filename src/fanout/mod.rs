//! The per-replica hub: one broadcast channel per session that has local
//! `Subscribe` streams. A channel is made when the first local stream on a
//! session opens and dropped when the last one closes; with a [`Remote`]
//! (the Redis Pub/Sub connection, [`redis`]) the hub also joins and leaves
//! the session's Pub/Sub channel at those moments, and a stream only starts
//! once the join is confirmed, so nothing published after it is missed.
//!
//! The hub also counts the replica's open streams: each [`Subscription`]
//! holds one of `max_streams` slots, taken before anything else is done and
//! given back when it is dropped, which is how every stream ends (client gone,
//! session deleted, error, shutdown, a failed open). Beyond the limit
//! [`Hub::subscribe`] fails at once with [`SubscribeError::Full`].
//!
//! Delivery never blocks: a stream that falls more than `capacity` messages
//! behind is told it lagged and resynchronises with a fresh snapshot, so it
//! never slows the others. After a Pub/Sub reconnect every channel gets
//! [`HubMsg::Resync`]: messages may have been lost, fill the gap from the log
//! — through one [`CatchUp`] round per session, whose read its streams share
//! ([`catchup`]: one read per session, at most
//! [`MAX_CONCURRENT_CATCH_UPS`] at once). Each channel also has a
//! [`Liveness`], the existence check its streams share at their heartbeats.
//!
//! `WatchSessions` streams are not channels: each is one registration under
//! its tenant ([`watch`]), offered every event of that tenant and filtering
//! by its own id set; with a [`Remote`], the tenant's events are joined
//! while the tenant has a local watch. A watch holds one stream slot, as a
//! `Subscribe` does.

pub mod catchup;
pub mod redis;
pub mod watch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, oneshot};

use crate::engine::{Event, SessionKey, Tenant};
use crate::prometheus::names;

pub use catchup::{CatchUp, Liveness, MAX_CONCURRENT_CATCH_UPS, Missed, ReadError, SessionLog};
pub use watch::{Rounds, Watch, WatchMsg};

/// Messages a stream may fall behind before it is skipped to a fresh snapshot.
pub const DEFAULT_STREAM_BUFFER: usize = 256;

/// How long a new stream waits for its Pub/Sub channel to be joined.
const JOIN_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
pub enum HubMsg {
    /// A committed version.
    Event(Arc<Event>),
    /// Messages may have been lost (Pub/Sub reconnected): check the log,
    /// through this session's round of shared catch-up reads.
    Resync(Arc<CatchUp>),
}

/// The cross-replica side of the hub: joins and leaves a session's channel.
pub trait Remote: Send + Sync + 'static {
    /// Joins `key`'s channel; the receiver resolves once the join is in effect.
    fn join(&self, key: &SessionKey) -> oneshot::Receiver<Result<(), String>>;
    /// Leaves `key`'s channel (its last local stream closed).
    fn leave(&self, key: &SessionKey);
    /// Joins the events of every session of `tenant` (its first local
    /// watch opened); the receiver resolves once the join is in effect.
    /// Without a cross-replica side there is nothing to join.
    fn join_tenant(&self, _tenant: &Tenant) -> oneshot::Receiver<Result<(), String>> {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(Ok(()));
        rx
    }
    /// Leaves `tenant`'s events (its last local watch closed).
    fn leave_tenant(&self, _tenant: &Tenant) {}
}

/// Waits, at most [`JOIN_TIMEOUT`], for a join to be in effect.
async fn await_join(join: oneshot::Receiver<Result<(), String>>) -> Result<(), SubscribeError> {
    let fail = |e: &str| SubscribeError::Join(e.into());
    match tokio::time::timeout(JOIN_TIMEOUT, join).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(fail(&e)),
        Ok(Err(_)) => Err(fail("the Pub/Sub connection is gone")),
        Err(_) => Err(fail("timed out joining the channel")),
    }
}

/// Why a stream could not join its session's channel.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// Every one of the replica's `limit` stream slots is taken.
    #[error("this replica already has its maximum of {limit} open Subscribe streams")]
    Full { limit: usize },
    #[error("cannot follow the session's channel: {0}")]
    Join(String),
}

/// One session's local channel.
struct Channel {
    tx: broadcast::Sender<HubMsg>,
    liveness: Arc<Liveness>,
}

pub struct Hub {
    channels: Mutex<HashMap<SessionKey, Channel>>,
    capacity: usize,
    remote: OnceLock<Arc<dyn Remote>>,
    /// One permit per open stream. A semaphore (never awaited, only
    /// `try_acquire`d) because its permit is an owned guard that gives the slot
    /// back on drop, and a stream's subscription is dropped however it ends.
    slots: Arc<Semaphore>,
    max_streams: usize,
    /// Bounds the catch-up reads in flight (`MAX_CONCURRENT_CATCH_UPS`).
    catch_ups: Arc<Semaphore>,
    /// The local watches of each tenant ([`watch`]).
    watches: Mutex<HashMap<Tenant, Vec<watch::WatchEntry>>>,
    next_watch: std::sync::atomic::AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Hub {
    /// A hub whose streams may each fall `capacity` messages behind, with at
    /// most `max_streams` of them open at once.
    pub fn new(capacity: usize, max_streams: usize) -> Arc<Self> {
        let max_streams = max_streams.clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(Self {
            channels: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            remote: OnceLock::new(),
            slots: Arc::new(Semaphore::new(max_streams)),
            max_streams,
            catch_ups: Arc::new(Semaphore::new(MAX_CONCURRENT_CATCH_UPS)),
            watches: Mutex::new(HashMap::new()),
            next_watch: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Attaches the cross-replica side (once, at start-up).
    pub fn set_remote(&self, remote: Arc<dyn Remote>) {
        let _ = self.remote.set(remote);
    }

    /// Takes a stream slot and joins `key`'s channel; the returned
    /// subscription leaves it and gives the slot back on drop. A full hub
    /// refuses at once, before any channel is made or joined.
    pub async fn subscribe(
        self: &Arc<Self>,
        key: &SessionKey,
    ) -> Result<Subscription, SubscribeError> {
        let slot = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| SubscribeError::Full {
                limit: self.max_streams,
            })?;
        let (rx, liveness) = {
            let mut channels = lock(&self.channels);
            match channels.get(key) {
                Some(c) => (c.tx.subscribe(), c.liveness.clone()),
                None => {
                    let (tx, rx) = broadcast::channel(self.capacity);
                    let liveness = Arc::new(Liveness::default());
                    channels.insert(
                        key.clone(),
                        Channel {
                            tx,
                            liveness: liveness.clone(),
                        },
                    );
                    (rx, liveness)
                }
            }
        };
        // From here on, drop(sub) undoes the local join (and the remote one if last).
        metrics::gauge!(names::STREAMS_OPEN).increment(1.0);
        let sub = Subscription {
            rx: Some(rx),
            liveness,
            key: key.clone(),
            hub: self.clone(),
            _slot: slot,
        };
        if let Some(remote) = self.remote.get() {
            await_join(remote.join(key)).await?;
        }
        Ok(sub)
    }

    /// Hands events committed on this replica to every local stream and
    /// watch that follows `key` (the memory engine's publish).
    pub fn deliver(&self, key: &SessionKey, events: &[Arc<Event>]) {
        self.deliver_streams(key, events);
        self.deliver_watches(key, events);
    }

    /// Hands committed events to the local `Subscribe` streams on `key` (if any).
    pub fn deliver_streams(&self, key: &SessionKey, events: &[Arc<Event>]) {
        let channels = lock(&self.channels);
        if let Some(c) = channels.get(key) {
            for e in events {
                // Err only means no receiver is left; the last one is leaving.
                let _ = c.tx.send(HubMsg::Event(e.clone()));
            }
        }
    }

    /// Tells every local stream that messages may have been lost; the
    /// streams of one session get one catch-up round to share.
    pub fn resync_all(&self) {
        let mut rounds = HashMap::new();
        for (key, c) in lock(&self.channels).iter() {
            let round = CatchUp::new(self.catch_ups.clone());
            let _ = c.tx.send(HubMsg::Resync(round.clone()));
            rounds.insert(key.clone(), round);
        }
        // The watches share those rounds (a read per session, not per stream).
        let watches = lock(&self.watches);
        if !watches.is_empty() {
            let rounds = Arc::new(Rounds::new(rounds, self.catch_ups.clone()));
            for w in watches.values().flatten() {
                w.resync(&rounds);
            }
        }
    }

    /// Sessions with at least one local stream.
    pub fn active_sessions(&self) -> usize {
        lock(&self.channels).len()
    }

    /// Streams open on this replica (slots taken).
    pub fn open_streams(&self) -> usize {
        self.max_streams - self.slots.available_permits()
    }
}

/// One stream's membership in a session's channel.
pub struct Subscription {
    rx: Option<broadcast::Receiver<HubMsg>>,
    liveness: Arc<Liveness>,
    key: SessionKey,
    hub: Arc<Hub>,
    /// This stream's slot, given back when the subscription is dropped.
    _slot: OwnedSemaphorePermit,
}

impl Subscription {
    /// The next message; `None` once the channel is closed.
    pub async fn recv(&mut self) -> Result<HubMsg, broadcast::error::RecvError> {
        match self.rx.as_mut() {
            Some(rx) => rx.recv().await,
            None => Err(broadcast::error::RecvError::Closed),
        }
    }

    /// The existence check this stream shares with the session's others.
    pub fn liveness(&self) -> &Liveness {
        &self.liveness
    }

    /// The bound on catch-up reads, for a stream's own gap fills.
    pub fn catch_up_permits(&self) -> &Semaphore {
        &self.hub.catch_ups
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        metrics::gauge!(names::STREAMS_OPEN).decrement(1.0);
        let mut channels = lock(&self.hub.channels);
        drop(self.rx.take());
        if channels
            .get(&self.key)
            .is_some_and(|c| c.tx.receiver_count() == 0)
        {
            channels.remove(&self.key);
            if let Some(remote) = self.hub.remote.get() {
                remote.leave(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{SessionId, Tenant};

    fn key(id: &str) -> SessionKey {
        SessionKey {
            tenant: Tenant::default_tenant(),
            id: SessionId::parse("id", id).unwrap(),
        }
    }

    struct Recorder(Mutex<Vec<String>>);

    impl Remote for Recorder {
        fn join(&self, key: &SessionKey) -> oneshot::Receiver<Result<(), String>> {
            lock(&self.0).push(format!("join {key}"));
            let (tx, rx) = oneshot::channel();
            let _ = tx.send(Ok(()));
            rx
        }
        fn leave(&self, key: &SessionKey) {
            lock(&self.0).push(format!("leave {key}"));
        }
    }

    #[tokio::test]
    async fn channel_lives_from_first_subscriber_to_last_and_the_remote_follows() {
        let hub = Hub::new(4, 16);
        let recorder = Arc::new(Recorder(Mutex::new(Vec::new())));
        hub.set_remote(recorder.clone());
        let a = hub.subscribe(&key("s1")).await.unwrap();
        let b = hub.subscribe(&key("s1")).await.unwrap();
        assert_eq!(hub.active_sessions(), 1);
        drop(a);
        assert_eq!(hub.active_sessions(), 1);
        drop(b);
        assert_eq!(hub.active_sessions(), 0);
        let log = lock(&recorder.0).clone();
        assert_eq!(
            log,
            vec!["join default/s1", "join default/s1", "leave default/s1"]
        );
    }

    struct Refuser;

    impl Remote for Refuser {
        fn join(&self, _key: &SessionKey) -> oneshot::Receiver<Result<(), String>> {
            let (tx, rx) = oneshot::channel();
            let _ = tx.send(Err("refused".into()));
            rx
        }
        fn leave(&self, _key: &SessionKey) {}
    }

    #[tokio::test]
    async fn a_full_hub_refuses_before_joining_and_every_drop_gives_the_slot_back() {
        let hub = Hub::new(4, 2);
        let recorder = Arc::new(Recorder(Mutex::new(Vec::new())));
        hub.set_remote(recorder.clone());
        let a = hub.subscribe(&key("s1")).await.unwrap();
        let _b = hub.subscribe(&key("s2")).await.unwrap();
        assert_eq!(hub.open_streams(), 2);
        let full = hub
            .subscribe(&key("s3"))
            .await
            .err()
            .expect("the hub is full");
        assert!(matches!(full, SubscribeError::Full { limit: 2 }), "{full}");
        // Refused before any channel was made or joined.
        assert_eq!(hub.active_sessions(), 2);
        assert!(!lock(&recorder.0).iter().any(|l| l.contains("s3")));
        drop(a);
        assert_eq!(hub.open_streams(), 1);
        let _c = hub.subscribe(&key("s3")).await.unwrap();
        assert_eq!(hub.open_streams(), 2);
    }

    #[tokio::test]
    async fn a_resync_gives_the_streams_of_one_session_one_round_to_share() {
        let hub = Hub::new(4, 16);
        let mut a = hub.subscribe(&key("s1")).await.unwrap();
        let mut b = hub.subscribe(&key("s1")).await.unwrap();
        let mut c = hub.subscribe(&key("s2")).await.unwrap();
        hub.resync_all();
        let round = |m| match m {
            Ok(HubMsg::Resync(round)) => round,
            other => panic!("expected a resync, got {other:?}"),
        };
        let (ra, rb, rc) = (
            round(a.recv().await),
            round(b.recv().await),
            round(c.recv().await),
        );
        assert!(Arc::ptr_eq(&ra, &rb), "one round for the session's streams");
        assert!(
            !Arc::ptr_eq(&ra, &rc),
            "a round of its own for another session"
        );
    }

    #[tokio::test]
    async fn a_failed_join_gives_its_slot_back() {
        let hub = Hub::new(4, 1);
        hub.set_remote(Arc::new(Refuser));
        for _ in 0..3 {
            let e = hub.subscribe(&key("s1")).await.err().expect("join refused");
            assert!(matches!(e, SubscribeError::Join(_)), "{e}");
            assert_eq!(hub.open_streams(), 0);
        }
    }
}

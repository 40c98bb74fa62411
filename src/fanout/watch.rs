//! Watches: one registration per `WatchSessions` stream, not one per session.
//!
//! The hub keeps, per tenant, the list of its local watches. Every committed
//! batch of a session of that tenant is offered to each of them; a watch of
//! listed sessions takes only its own ids (its filter, a set fixed at open),
//! a watch of all sessions takes everything. With a [`super::Remote`] the hub
//! joins the tenant's events when the tenant's first local watch opens and
//! leaves them when its last closes (the Redis side: one pattern
//! subscription per tenant, [`super::redis`]), so a replica with no watch
//! pays nothing.
//!
//! Delivery never blocks the hub (nor the Pub/Sub task that calls it): each
//! watch has a bounded inbox of `capacity` batches' events; an event that
//! finds it full is not queued, its session is marked *lagged* instead, and
//! the watch's producer sends that session's fresh snapshot before anything
//! else it still has queued (later queued events of it are then at or below
//! the snapshot's version and dropped). The lagged set holds at most
//! [`MAX_LAGGED`] sessions (a list watch holds at most that many anyway);
//! beyond it, in an all-sessions watch, the event is dropped and counted
//! (`synckairos_fanout_watch_dropped_total`), and the session's next event
//! is a version jump the producer fills from the log.
//!
//! After a Pub/Sub reconnect every watch is told to catch up ([`Rounds`]):
//! each session it follows is read once through the same [`CatchUp`] round
//! the session's `Subscribe` streams on this replica got, if any (their read
//! is shared), or a round of its own, all within the hub's bound on catch-up
//! reads.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};

use super::{CatchUp, Hub};
use crate::engine::{Event, SessionId, SessionKey, Tenant};
use crate::prometheus::names;

/// Sessions a watch may have marked lagged at once (and sessions a list
/// watch may name).
pub const MAX_LAGGED: usize = 10_000;

/// A watch's inbox holds this many times the hub's per-stream buffer: one
/// watch stands for many streams.
pub const WATCH_BUFFER_FACTOR: usize = 16;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The catch-up rounds of one reconnect, for watches: the round of a session
/// that has local `Subscribe` streams (shared with them), or a new one.
pub struct Rounds {
    shared: HashMap<SessionKey, Arc<CatchUp>>,
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for Rounds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rounds")
            .field("shared", &self.shared.len())
            .finish_non_exhaustive()
    }
}

impl Rounds {
    pub(super) fn new(shared: HashMap<SessionKey, Arc<CatchUp>>, permits: Arc<Semaphore>) -> Self {
        Self { shared, permits }
    }

    /// `key`'s round of this reconnect.
    pub fn round(&self, key: &SessionKey) -> Arc<CatchUp> {
        match self.shared.get(key) {
            Some(round) => round.clone(),
            None => CatchUp::new(self.permits.clone()),
        }
    }
}

/// What the hub could not queue for a watch, kept apart from its inbox so
/// that a full inbox loses none of it.
#[derive(Default)]
struct Pending {
    lagged: HashSet<SessionId>,
    resync: Option<Arc<Rounds>>,
}

/// The part of a watch the hub holds.
pub(super) struct WatchEntry {
    id: u64,
    /// `None`: every session of the tenant.
    filter: Option<Arc<HashSet<SessionId>>>,
    inbox: mpsc::Sender<Arc<Event>>,
    pending: Arc<(Mutex<Pending>, Notify)>,
}

impl WatchEntry {
    /// Offers one session's events; never waits.
    pub(super) fn offer(&self, id: &SessionId, events: &[Arc<Event>]) {
        if self.filter.as_ref().is_some_and(|f| !f.contains(id)) {
            return;
        }
        for e in events {
            if self.inbox.try_send(e.clone()).is_err() {
                // Full (or the watch is closing): the rest of the batch is
                // covered by the snapshot too.
                let mut p = lock(&self.pending.0);
                if p.lagged.len() < MAX_LAGGED || p.lagged.contains(id) {
                    p.lagged.insert(id.clone());
                } else {
                    metrics::counter!(names::FANOUT_WATCH_DROPPED).increment(1);
                }
                drop(p);
                self.pending.1.notify_one();
                return;
            }
        }
    }

    pub(super) fn resync(&self, rounds: &Arc<Rounds>) {
        lock(&self.pending.0).resync = Some(rounds.clone());
        self.pending.1.notify_one();
    }
}

/// What a watch receives, most urgent first.
#[derive(Debug)]
pub enum WatchMsg {
    /// Messages may have been lost (Pub/Sub reconnected): catch every
    /// followed session up from the log through these rounds.
    Resync(Arc<Rounds>),
    /// These sessions had events that did not fit the inbox: send their
    /// fresh snapshots.
    Lagged(Vec<SessionId>),
    /// A committed version of a session of the watch's tenant (and filter).
    Event(Arc<Event>),
}

/// One `WatchSessions` stream's registration; dropping it unregisters, and
/// gives the stream slot back.
pub struct Watch {
    rx: mpsc::Receiver<Arc<Event>>,
    pending: Arc<(Mutex<Pending>, Notify)>,
    tenant: Tenant,
    id: u64,
    hub: Arc<Hub>,
    _slot: OwnedSemaphorePermit,
}

impl Watch {
    /// The next message; `None` once the hub is gone.
    pub async fn recv(&mut self) -> Option<WatchMsg> {
        loop {
            {
                let mut p = lock(&self.pending.0);
                if let Some(rounds) = p.resync.take() {
                    return Some(WatchMsg::Resync(rounds));
                }
                if !p.lagged.is_empty() {
                    return Some(WatchMsg::Lagged(p.lagged.drain().collect()));
                }
            }
            // A notification sent since the check above is kept as a permit.
            tokio::select! {
                biased;
                _ = self.pending.1.notified() => continue,
                e = self.rx.recv() => return e.map(WatchMsg::Event),
            }
        }
    }

    /// The tenant watched.
    pub fn tenant(&self) -> &Tenant {
        &self.tenant
    }

    /// The bound on catch-up reads, for the watch's own reads.
    pub fn catch_up_permits(&self) -> &Semaphore {
        &self.hub.catch_ups
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        metrics::gauge!(names::STREAMS_OPEN).decrement(1.0);
        let mut watches = lock(&self.hub.watches);
        if let Some(list) = watches.get_mut(&self.tenant) {
            list.retain(|w| w.id != self.id);
            if list.is_empty() {
                watches.remove(&self.tenant);
                if let Some(remote) = self.hub.remote.get() {
                    remote.leave_tenant(&self.tenant);
                }
            }
        }
    }
}

impl Hub {
    /// Takes a stream slot and registers a watch of `tenant` (of the ids in
    /// `filter`, or of every session); with a remote, returns once the
    /// tenant's events are joined, so nothing committed after is missed.
    pub async fn watch(
        self: &Arc<Self>,
        tenant: &Tenant,
        filter: Option<Arc<HashSet<SessionId>>>,
    ) -> Result<Watch, super::SubscribeError> {
        let slot =
            self.slots
                .clone()
                .try_acquire_owned()
                .map_err(|_| super::SubscribeError::Full {
                    limit: self.max_streams,
                })?;
        let (tx, rx) = mpsc::channel(self.capacity.saturating_mul(WATCH_BUFFER_FACTOR));
        let pending: Arc<(Mutex<Pending>, Notify)> = Arc::default();
        let id = self
            .next_watch
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        lock(&self.watches)
            .entry(tenant.clone())
            .or_default()
            .push(WatchEntry {
                id,
                filter,
                inbox: tx,
                pending: pending.clone(),
            });
        metrics::gauge!(names::STREAMS_OPEN).increment(1.0);
        // From here on, drop(watch) undoes the registration.
        let watch = Watch {
            rx,
            pending,
            tenant: tenant.clone(),
            id,
            hub: self.clone(),
            _slot: slot,
        };
        if let Some(remote) = self.remote.get() {
            super::await_join(remote.join_tenant(tenant)).await?;
        }
        Ok(watch)
    }

    /// Hands a session's committed events to the tenant's local watches.
    pub fn deliver_watches(&self, key: &SessionKey, events: &[Arc<Event>]) {
        let watches = lock(&self.watches);
        if let Some(list) = watches.get(&key.tenant) {
            for w in list {
                w.offer(&key.id, events);
            }
        }
    }

    /// Tenants with at least one local watch.
    pub fn watched_tenants(&self) -> usize {
        lock(&self.watches).len()
    }
}

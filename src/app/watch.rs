//! WatchSessions: one stream for many sessions of one tenant, a spawned
//! producer feeding a bounded mpsc as `Subscribe` (subscribe.rs) does, over
//! one hub registration ([`crate::fanout::watch`]) instead of one channel per
//! session.
//!
//! Order of work on open: validate (the caller did, at the edge), take a
//! stream slot and register with the hub (on Redis: the tenant's events are
//! joined before the stream starts), and only then read each listed session
//! (16 reads at once), so no version committed after its read is missed:
//! whatever committed before is in the read, whatever after comes through
//! the hub. A listed session gets, as `Subscribe` would: a replay of the log
//! after `from_version` when its epoch matches (or none was given) and the
//! log reaches back; else a SNAPSHOT. A listed session that does not exist
//! yet is watched all the same (its CREATED comes when it is made). An
//! all-sessions watch reads nothing at open: it starts with what is
//! committed after it opened, each session's first event sent as it comes.
//!
//! Per session the producer keeps the epoch followed and the latest version
//! passed (sent, or left out by the event-type filter), and treats each
//! event as a `Subscribe` stream does: at or below that version, dropped (no
//! duplicates); the next one, sent; a jump, filled from the log (or a fresh
//! SNAPSHOT when the log no longer reaches back). Where a `Subscribe` stream
//! would end, a watch goes on with the session's next life instead: an event
//! of another epoch (the id deleted and created again) is a CREATED that
//! starts it, or else the session is read and sent as a SNAPSHOT; a session
//! found gone by a read (deleted while the Pub/Sub connection was down) is
//! sent as a DELETED of its epoch at the next version, without `session`,
//! exactly once. A session that expires by its TTL publishes nothing, and a
//! watch does not poll for it (a `Subscribe` stream checks at each
//! heartbeat; a watch of 10,000 sessions would read 10,000 sessions a
//! period): its last progress stays as it was.
//!
//! A slow consumer: the hub never waits for a watch; what does not fit its
//! inbox marks the session lagged, and the producer sends those sessions'
//! fresh SNAPSHOTs before anything still queued. After a Pub/Sub reconnect
//! every session followed is caught up from the log through the reconnect's
//! shared rounds. A read that keeps failing (after the catch-up's retries)
//! ends the stream with UNAVAILABLE: reconnect with each session's progress.
//!
//! Bounds: a list watch follows its list (at most [`MAX_WATCHED`]); an
//! all-sessions watch remembers at most [`MAX_TRACKED`] sessions, and beyond
//! that forgets the eighth that were idle longest. A forgotten session is
//! then as one never seen: its next event is sent as it comes, and gap
//! detection starts again from it (versions missed meanwhile are not filled,
//! and a HEARTBEAT's progress no longer lists it).
//!
//! At shutdown the stream ends with UNAVAILABLE "server shutting down;
//! reconnect", at its own moment of the spread, as `Subscribe` streams do.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::AppError;
use super::subscribe::{
    DEFAULT_HEARTBEAT_MS, MAX_HEARTBEAT_MS, MIN_HEARTBEAT_MS, OPENED, STREAM_CHANNEL_CAPACITY,
    StoreLog, end_offset, heartbeat_ticker, shutdown_then,
};
use crate::engine::{Event, EventKind, Micros, Session, SessionId, SessionKey, Tenant};
use crate::fanout::{Hub, Missed, Rounds, SubscribeError, Watch, WatchMsg};
use crate::prometheus::names;
use crate::store::{Replay, SessionStore, StoreError};

/// Sessions one watch may list.
pub const MAX_WATCHED: usize = crate::fanout::watch::MAX_LAGGED;

/// Sessions an all-sessions watch remembers (epoch and version) at once.
pub const MAX_TRACKED: usize = MAX_WATCHED;

/// Listed sessions read at once when a watch opens.
const INITIAL_READS: usize = 16;

/// A listed session and where to resume it.
#[derive(Clone, Debug)]
pub struct WatchTarget {
    pub id: SessionId,
    pub from_version: Option<u64>,
    /// Empty: the client did not say.
    pub epoch: String,
}

#[derive(Clone, Debug)]
pub enum WatchScope {
    /// These sessions (distinct ids, at most [`MAX_WATCHED`]).
    Sessions(Vec<WatchTarget>),
    /// Every session of the tenant, from now on.
    All,
}

#[derive(Clone, Debug)]
pub struct WatchOptions {
    pub scope: WatchScope,
    /// Only events of these kinds (empty: every kind); DELETED always.
    pub kinds: Vec<EventKind>,
    pub heartbeat_ms: Option<u32>,
    /// HEARTBEATs carry every followed session's progress.
    pub progress: bool,
}

/// A session's latest version passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    pub id: SessionId,
    pub epoch: String,
    pub version: u64,
}

/// What a watch carries, before it meets the wire.
#[derive(Clone, Debug)]
pub enum WatchItem {
    /// The whole session, computed at `at`.
    Snapshot { session: Box<Session>, at: Micros },
    /// A committed version.
    Event(Arc<Event>),
    /// The session was found gone without its DELETED reaching the watch.
    Gone {
        id: SessionId,
        epoch: String,
        version: u64,
        at: Micros,
    },
    /// Keep-alive; with `progress` asked, every followed session's progress.
    Heartbeat {
        progress: Option<Vec<Progress>>,
        at: Micros,
    },
}

type Tx = mpsc::Sender<Result<WatchItem, AppError>>;

/// How long a client refused a stream slot is told to wait (RetryInfo).
const STREAM_SLOT_RETRY: Duration = Duration::from_secs(1);

pub(super) async fn open(
    store: Arc<dyn SessionStore>,
    hub: &Arc<Hub>,
    tenant: Tenant,
    opts: WatchOptions,
    shutdown: CancellationToken,
    end_spread: Duration,
) -> Result<mpsc::Receiver<Result<WatchItem, AppError>>, AppError> {
    let (filter, targets) = match opts.scope {
        WatchScope::Sessions(targets) => {
            let ids: HashSet<SessionId> = targets.iter().map(|t| t.id.clone()).collect();
            (Some(Arc::new(ids)), Some(targets))
        }
        WatchScope::All => (None, None),
    };
    let watch = hub.watch(&tenant, filter).await.map_err(|e| match e {
        SubscribeError::Full { limit } => AppError::ResourceExhausted {
            message: format!(
                "too many open Subscribe and WatchSessions streams on this server \
                 (limit {limit}); retry later with backoff"
            ),
            retry_after: STREAM_SLOT_RETRY,
        },
        SubscribeError::Join(_) => {
            tracing::warn!(%tenant, error = %e, "watch: joining the tenant's events failed");
            AppError::Unavailable("cannot watch sessions right now; retry shortly".into())
        }
    })?;
    let heartbeat = Duration::from_millis(
        opts.heartbeat_ms
            .unwrap_or(DEFAULT_HEARTBEAT_MS)
            .clamp(MIN_HEARTBEAT_MS, MAX_HEARTBEAT_MS) as u64,
    );
    let (tx, rx) = mpsc::channel(STREAM_CHANNEL_CAPACITY);
    let producer = Producer {
        store,
        tenant,
        watch,
        tx,
        listed: targets.is_some(),
        sessions: HashMap::new(),
        kinds: opts.kinds,
        progress: opts.progress,
        heartbeat,
        shutdown,
        end_after: end_offset(OPENED.fetch_add(1, Ordering::Relaxed), end_spread),
        touches: 0,
        delivery: metrics::histogram!(names::FANOUT_DELIVERY_SECONDS),
    };
    tokio::spawn(producer.run(targets.unwrap_or_default()));
    Ok(rx)
}

/// What a listed session is at open.
enum Initial {
    Missing,
    Snapshot(Box<Session>),
    /// Every event after `from` (the session is of `epoch`).
    Replay {
        epoch: String,
        from: u64,
        events: Vec<Arc<Event>>,
    },
}

async fn initial(
    store: &dyn SessionStore,
    key: &SessionKey,
    t: &WatchTarget,
) -> Result<Initial, StoreError> {
    let session = match store.get(key).await {
        Ok(s) => s,
        Err(StoreError::NotFound) => return Ok(Initial::Missing),
        Err(e) => return Err(e),
    };
    if let Some(v) = t.from_version
        && (t.epoch.is_empty() || t.epoch == session.epoch)
        && v <= session.version
    {
        match store.events_after(key, v).await {
            Ok(Replay::Events(events)) => {
                return Ok(Initial::Replay {
                    epoch: session.epoch,
                    from: v,
                    events,
                });
            }
            Ok(Replay::Truncated) => {}
            Err(StoreError::NotFound) => return Ok(Initial::Missing),
            Err(e) => return Err(e),
        }
    }
    Ok(Initial::Snapshot(Box::new(session)))
}

/// What the watch knows of one session.
#[derive(Debug, Default)]
struct Tracked {
    /// The epoch followed; `None`: nothing of the session seen yet.
    epoch: Option<String>,
    /// The latest version passed (sent, or left out by the filter).
    last: u64,
    /// The epoch's DELETED was sent (or its session found gone).
    ended: bool,
    /// When last touched, for forgetting the idlest (all-sessions watches).
    touched: u64,
}

struct Producer {
    store: Arc<dyn SessionStore>,
    tenant: Tenant,
    watch: Watch,
    tx: Tx,
    /// A watch of listed sessions (else of every session of the tenant).
    listed: bool,
    sessions: HashMap<SessionId, Tracked>,
    kinds: Vec<EventKind>,
    progress: bool,
    heartbeat: Duration,
    shutdown: CancellationToken,
    end_after: Duration,
    touches: u64,
    delivery: metrics::Histogram,
}

enum Flow {
    Continue,
    Stop,
}

/// Where an event comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The hub: a commit just published.
    Hub,
    /// The log, read back at open (a replay).
    Replay,
    /// The log, read back to fill a gap.
    Gap,
}

impl Producer {
    fn key(&self, id: &SessionId) -> SessionKey {
        SessionKey {
            tenant: self.tenant.clone(),
            id: id.clone(),
        }
    }

    async fn run(mut self, targets: Vec<WatchTarget>) {
        if let Flow::Stop = self.start(targets).await {
            return;
        }
        let mut ticker = heartbeat_ticker(self.heartbeat);
        let ending = shutdown_then(self.shutdown.clone(), self.end_after);
        tokio::pin!(ending);
        loop {
            let flow = tokio::select! {
                _ = &mut ending => {
                    let _ = self.tx.send(Err(AppError::Unavailable("server shutting down; reconnect".into()))).await;
                    Flow::Stop
                }
                _ = self.tx.closed() => Flow::Stop,
                _ = ticker.tick() => self.heartbeat().await,
                msg = self.watch.recv() => match msg {
                    Some(WatchMsg::Event(e)) => self.on_event(e, Source::Hub).await,
                    Some(WatchMsg::Lagged(ids)) => self.lagged(ids).await,
                    Some(WatchMsg::Resync(rounds)) => self.catch_up(&rounds).await,
                    None => Flow::Stop,
                },
            };
            if let Flow::Stop = flow {
                return;
            }
        }
    }

    /// The listed sessions' replays or snapshots.
    async fn start(&mut self, targets: Vec<WatchTarget>) -> Flow {
        for t in &targets {
            self.sessions.insert(t.id.clone(), Tracked::default());
        }
        let store = self.store.clone();
        let tenant = self.tenant.clone();
        let mut reads = futures_util::stream::iter(targets.into_iter().map(|t| {
            let store = store.clone();
            let key = SessionKey {
                tenant: tenant.clone(),
                id: t.id.clone(),
            };
            async move {
                let read = initial(store.as_ref(), &key, &t).await;
                (t.id, read)
            }
        }))
        .buffered(INITIAL_READS);
        while let Some((id, read)) = reads.next().await {
            let flow = match read {
                Ok(Initial::Missing) => Flow::Continue,
                Ok(Initial::Snapshot(session)) => self.snapshot_of(*session, false).await,
                Ok(Initial::Replay {
                    epoch,
                    from,
                    events,
                }) => {
                    if let Some(st) = self.sessions.get_mut(&id) {
                        st.epoch = Some(epoch);
                        st.last = from;
                    }
                    self.replay(&id, events, Source::Replay).await
                }
                Err(e) => self.fail(e).await,
            };
            if let Flow::Stop = flow {
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    /// Events read back from the log (a replay, a gap fill), each treated as
    /// if it came through the hub.
    async fn replay(&mut self, id: &SessionId, events: Vec<Arc<Event>>, source: Source) -> Flow {
        for e in events {
            if e.session.id != *id {
                continue;
            }
            if let Flow::Stop = Box::pin(self.on_event(e, source)).await {
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    /// The session's state, made for an all-sessions watch (forgetting the
    /// idlest when full); `None`: not followed.
    fn tracked(&mut self, id: &SessionId) -> Option<&mut Tracked> {
        self.touches += 1;
        let touched = self.touches;
        if !self.listed && !self.sessions.contains_key(id) {
            if self.sessions.len() >= MAX_TRACKED {
                self.forget_idlest();
            }
            self.sessions.insert(id.clone(), Tracked::default());
        }
        let st = self.sessions.get_mut(id)?;
        st.touched = touched;
        Some(st)
    }

    /// Forgets the eighth of the sessions idle longest (so that forgetting
    /// is rare: once per `MAX_TRACKED / 8` new sessions).
    fn forget_idlest(&mut self) {
        let mut touches: Vec<u64> = self.sessions.values().map(|t| t.touched).collect();
        let n = (touches.len() / 8).max(1);
        let (_, cut, _) = touches.select_nth_unstable(n - 1);
        let cut = *cut;
        self.sessions.retain(|_, t| t.touched > cut);
    }

    /// One event of the tenant, from the hub or from the log.
    async fn on_event(&mut self, e: Arc<Event>, source: Source) -> Flow {
        let listed = self.listed;
        let Some(st) = self.tracked(&e.session.id) else {
            return Flow::Continue;
        };
        if st.epoch.as_deref() != Some(e.session.epoch.as_str()) {
            // Never seen, or of another life of the id.
            let first_sight = st.epoch.is_none() && !listed;
            if e.kind == EventKind::Created || first_sight {
                *st = Tracked {
                    epoch: Some(e.session.epoch.clone()),
                    last: e.version.saturating_sub(1),
                    ended: false,
                    touched: st.touched,
                };
            } else {
                // Its start was missed: the session as it is now.
                let id = e.session.id.clone();
                return self.fresh_snapshot(&id).await;
            }
        }
        let Some(st) = self.sessions.get(&e.session.id) else {
            return Flow::Continue;
        };
        if st.ended || e.version <= st.last {
            return Flow::Continue;
        }
        if e.version == st.last + 1 || e.kind == EventKind::Deleted {
            match source {
                Source::Hub => {
                    let late = (self.store.now() - e.at).max(0);
                    self.delivery.record(late as f64 / 1e6);
                }
                Source::Gap => metrics::counter!(names::FANOUT_GAPS_FILLED).increment(1),
                Source::Replay => {}
            }
            return self.send_event(e).await;
        }
        let id = e.session.id.clone();
        self.fill_gap(&id).await
    }

    /// Sends `e` unless the filter leaves it out; either way it is passed.
    async fn send_event(&mut self, e: Arc<Event>) -> Flow {
        if let Some(st) = self.sessions.get_mut(&e.session.id) {
            st.last = e.version;
            st.ended = e.kind == EventKind::Deleted;
        }
        let wanted =
            self.kinds.is_empty() || e.kind == EventKind::Deleted || self.kinds.contains(&e.kind);
        if !wanted {
            return Flow::Continue;
        }
        self.send(WatchItem::Event(e)).await
    }

    /// Whatever the log has after the last version passed, or a fresh
    /// snapshot when it no longer reaches back.
    async fn fill_gap(&mut self, id: &SessionId) -> Flow {
        let Some(after) = self.sessions.get(id).map(|t| t.last) else {
            return Flow::Continue;
        };
        let key = self.key(id);
        let read = {
            let _permit = self.watch.catch_up_permits().acquire().await;
            self.store.events_after(&key, after).await
        };
        match read {
            Ok(Replay::Events(events)) => self.replay(id, events, Source::Gap).await,
            Ok(Replay::Truncated) => self.fresh_snapshot(id).await,
            // Deleted meanwhile: its DELETED is queued behind.
            Err(StoreError::NotFound) => Flow::Continue,
            Err(e) => self.fail(e).await,
        }
    }

    /// Sessions whose events did not fit the inbox: their fresh snapshots.
    async fn lagged(&mut self, ids: Vec<SessionId>) -> Flow {
        for id in ids {
            if let Flow::Stop = self.fresh_snapshot(&id).await {
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    /// Reads the session and sends it as a SNAPSHOT if it is news; a
    /// session found gone is sent as a DELETED once.
    async fn fresh_snapshot(&mut self, id: &SessionId) -> Flow {
        let key = self.key(id);
        let read = {
            let _permit = self.watch.catch_up_permits().acquire().await;
            self.store.get(&key).await
        };
        match read {
            Ok(session) => self.snapshot_of(session, true).await,
            Err(StoreError::NotFound) => self.gone(id).await,
            Err(e) => self.fail(e).await,
        }
    }

    /// Sends `session` unless it is of the epoch followed and not newer
    /// (`skipped`: in place of versions missed, counted as such).
    async fn snapshot_of(&mut self, session: Session, skipped: bool) -> Flow {
        let Some(st) = self.tracked(&session.id) else {
            return Flow::Continue;
        };
        if st.epoch.as_deref() == Some(session.epoch.as_str()) && session.version <= st.last {
            return Flow::Continue;
        }
        st.epoch = Some(session.epoch.clone());
        st.last = session.version;
        st.ended = false;
        if skipped {
            metrics::counter!(names::FANOUT_LAGGED_SNAPSHOTS).increment(1);
        }
        let at = self.store.now();
        self.send(WatchItem::Snapshot {
            session: Box::new(session),
            at,
        })
        .await
    }

    /// The session followed no longer exists: a DELETED of its epoch at the
    /// next version, once (nothing for a session never seen).
    async fn gone(&mut self, id: &SessionId) -> Flow {
        let Some(st) = self.sessions.get_mut(id) else {
            return Flow::Continue;
        };
        let Some(epoch) = st.epoch.clone() else {
            return Flow::Continue;
        };
        if st.ended {
            return Flow::Continue;
        }
        st.ended = true;
        st.last += 1;
        let item = WatchItem::Gone {
            id: id.clone(),
            epoch,
            version: st.last,
            at: self.store.now(),
        };
        self.send(item).await
    }

    /// After a Pub/Sub reconnect: each followed session caught up from the
    /// log, through the reconnect's shared rounds.
    async fn catch_up(&mut self, rounds: &Rounds) -> Flow {
        let ids: Vec<SessionId> = self.sessions.keys().cloned().collect();
        let store = self.store.clone();
        for id in ids {
            let Some(st) = self.sessions.get(&id) else {
                continue;
            };
            // Never seen or ended: whatever life the id has now, from its start.
            let (followed, after) = match (&st.epoch, st.ended) {
                (Some(epoch), false) => (Some(epoch.clone()), st.last),
                _ => (None, 0),
            };
            if followed.is_none() && !self.listed {
                continue;
            }
            let key = self.key(&id);
            let read = rounds
                .round(&key)
                .missed(&StoreLog(store.as_ref()), &key, after)
                .await;
            let flow = match &*read {
                Ok(Missed::Events { epoch, events }) => {
                    if followed.as_ref().is_some_and(|f| f != epoch) {
                        self.fresh_snapshot(&id).await
                    } else {
                        self.replay(&id, events.clone(), Source::Gap).await
                    }
                }
                Ok(Missed::Snapshot(session)) => self.snapshot_of((**session).clone(), true).await,
                Ok(Missed::Gone) => self.gone(&id).await,
                Err(e) => self.fail(StoreError::Unavailable(e.clone())).await,
            };
            if let Flow::Stop = flow {
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    async fn heartbeat(&mut self) -> Flow {
        let progress = self.progress.then(|| {
            let mut all: Vec<Progress> = self
                .sessions
                .iter()
                .filter_map(|(id, t)| {
                    t.epoch.as_ref().map(|epoch| Progress {
                        id: id.clone(),
                        epoch: epoch.clone(),
                        version: t.last,
                    })
                })
                .collect();
            all.sort_by(|a, b| a.id.cmp(&b.id));
            all
        });
        let at = self.store.now();
        self.send(WatchItem::Heartbeat { progress, at }).await
    }

    async fn send(&mut self, item: WatchItem) -> Flow {
        match self.tx.send(Ok(item)).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Stop,
        }
    }

    async fn fail(&mut self, e: StoreError) -> Flow {
        tracing::warn!(tenant = %self.tenant, error = %e, "watch: a read failed; ending the stream");
        let _ = self.tx.send(Err(e.into())).await;
        Flow::Stop
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgetting_drops_the_idlest_eighth_and_keeps_the_rest() {
        let (tx, _rx) = mpsc::channel(1);
        let hub = Hub::new(4, 4);
        let watch =
            futures_util::FutureExt::now_or_never(hub.watch(&Tenant::default_tenant(), None))
                .expect("no remote: ready at once")
                .unwrap();
        let mut p = Producer {
            store: Arc::new(crate::store::memory::MemoryStore::new(
                hub.clone(),
                crate::store::clock::Clock::new(),
            )),
            tenant: Tenant::default_tenant(),
            watch,
            tx,
            listed: false,
            sessions: HashMap::new(),
            kinds: Vec::new(),
            progress: false,
            heartbeat: Duration::from_secs(1),
            shutdown: CancellationToken::new(),
            end_after: Duration::ZERO,
            touches: 0,
            delivery: metrics::histogram!(names::FANOUT_DELIVERY_SECONDS),
        };
        let id = |i: usize| SessionId::parse("id", &format!("s{i}")).unwrap();
        for i in 0..MAX_TRACKED {
            p.tracked(&id(i));
        }
        // Touch the oldest one again: it is no longer idle.
        p.tracked(&id(0));
        assert_eq!(p.sessions.len(), MAX_TRACKED);
        p.tracked(&id(MAX_TRACKED));
        let kept = MAX_TRACKED - MAX_TRACKED / 8 + 1;
        assert_eq!(p.sessions.len(), kept);
        assert!(p.sessions.contains_key(&id(0)), "touched lately: kept");
        assert!(!p.sessions.contains_key(&id(1)), "the idlest: forgotten");
        assert!(p.sessions.contains_key(&id(MAX_TRACKED)));
    }
}

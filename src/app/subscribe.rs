//! Subscribe (SPEC §7): a spawned producer per stream feeding a bounded mpsc.
//!
//! Order of work on open: read the session, and answer NOT_FOUND there if it
//! does not exist, so a flood of random ids never reaches the hub (on the
//! Redis engine, the replica's one Pub/Sub connection would subscribe and
//! unsubscribe for each); then join the session's hub channel, and only then
//! read the session again (or the log for a replay), so no version committed
//! before the join is missed. The first read only decides whether to join:
//! a version committed between it and the join is in the second. Events at
//! or below the last version sent are dropped, so none is duplicated. A version jump (a lost message) is filled from the event
//! log, or covered by a fresh snapshot when the log no longer reaches back.
//! A stream that falls behind the hub's buffer gets a fresh snapshot: a slow
//! consumer never slows the others.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::AppError;
use crate::engine::{Event, EventKind, Micros, Session, SessionKey};
use crate::fanout::{Hub, HubMsg, SubscribeError, Subscription};
use crate::store::{Replay, SessionStore, StoreError};

/// Items buffered between the producer and the transport. Small on purpose:
/// the hub's broadcast buffer is the real per-stream buffer, and lag there is
/// what triggers the skip to a snapshot.
pub const STREAM_CHANNEL_CAPACITY: usize = 16;

pub const DEFAULT_HEARTBEAT_MS: u32 = 15_000;
pub const MIN_HEARTBEAT_MS: u32 = 1_000;
pub const MAX_HEARTBEAT_MS: u32 = 60_000;

#[derive(Clone, Debug, Default)]
pub struct SubscribeOptions {
    pub from_version: Option<u64>,
    /// Empty: the client did not say.
    pub epoch: String,
    pub strict: bool,
    pub heartbeat_ms: Option<u32>,
}

/// What a stream carries, before it meets the wire.
#[derive(Clone, Debug)]
pub enum StreamItem {
    /// The whole session, computed at `at` (boxed: a stream's queue holds
    /// many small events for each rare snapshot).
    Snapshot { session: Box<Session>, at: Micros },
    /// A committed version.
    Event(Arc<Event>),
    /// Keep-alive: the latest version sent and the server time.
    Heartbeat {
        session: Arc<SessionHeader>,
        version: u64,
        at: Micros,
    },
}

/// What a heartbeat names.
#[derive(Clone, Debug)]
pub struct SessionHeader {
    pub key: SessionKey,
    pub epoch: String,
}

type Tx = mpsc::Sender<Result<StreamItem, AppError>>;

/// How long a client refused a stream slot is told to wait (RetryInfo).
const STREAM_SLOT_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

pub(super) async fn open(
    store: Arc<dyn SessionStore>,
    hub: &Arc<Hub>,
    key: SessionKey,
    opts: SubscribeOptions,
    shutdown: CancellationToken,
) -> Result<mpsc::Receiver<Result<StreamItem, AppError>>, AppError> {
    // Refused before the join: a missing session costs one read, no channel
    // and no stream slot.
    store.get(&key).await?;
    // The stream's slot is taken here and lives in `sub`: it is given back
    // when `sub` is dropped, on every early return below or when the
    // producer ends, however the stream ends.
    let sub = hub.subscribe(&key).await.map_err(|e| match e {
        SubscribeError::Full { limit } => AppError::ResourceExhausted {
            message: format!(
                "too many open Subscribe streams on this server (limit {limit}); \
                 retry later with backoff"
            ),
            retry_after: STREAM_SLOT_RETRY,
        },
        SubscribeError::Join(_) => {
            tracing::warn!(session = %key, error = %e, "subscribe: joining the channel failed");
            AppError::Unavailable("cannot follow this session right now; retry shortly".into())
        }
    })?;
    // Read again now that the channel is joined: whatever committed before
    // the join is in this read, whatever commits after it comes through the
    // channel (deleted meanwhile: NOT_FOUND, and the join is undone).
    let session = store.get(&key).await?;
    let epoch = session.epoch.clone();
    let mut first = Vec::new();
    let last_sent = match opts.from_version {
        Some(v) if opts.epoch.is_empty() || opts.epoch == session.epoch => {
            match replay(store.as_ref(), &key, v, &session).await? {
                Some(events) => {
                    let last = events.last().map_or(v, |e| e.version);
                    first.extend(events.into_iter().map(StreamItem::Event));
                    last
                }
                None if opts.strict => {
                    return Err(AppError::OutOfRange(format!(
                        "from_version {v}: the retained event log does not reach back that far"
                    )));
                }
                None => snapshot(&mut first, store.as_ref(), session),
            }
        }
        Some(_) if opts.strict => {
            return Err(AppError::OutOfRange(format!(
                "epoch {:?} is not the session's current epoch",
                opts.epoch
            )));
        }
        _ => snapshot(&mut first, store.as_ref(), session),
    };
    let header = Arc::new(SessionHeader {
        key: key.clone(),
        epoch,
    });
    let heartbeat = Duration::from_millis(
        opts.heartbeat_ms
            .unwrap_or(DEFAULT_HEARTBEAT_MS)
            .clamp(MIN_HEARTBEAT_MS, MAX_HEARTBEAT_MS) as u64,
    );
    let (tx, rx) = mpsc::channel(STREAM_CHANNEL_CAPACITY);
    let producer = Producer {
        store,
        key,
        sub,
        tx,
        last_sent,
        header,
        heartbeat,
        shutdown,
    };
    tokio::spawn(producer.run(first));
    Ok(rx)
}

fn snapshot(first: &mut Vec<StreamItem>, store: &dyn SessionStore, session: Session) -> u64 {
    let version = session.version;
    first.push(StreamItem::Snapshot {
        session: Box::new(session),
        at: store.now(),
    });
    version
}

/// The events after `v`, or `None` when they cannot all be replayed.
async fn replay(
    store: &dyn SessionStore,
    key: &SessionKey,
    v: u64,
    session: &Session,
) -> Result<Option<Vec<Arc<Event>>>, AppError> {
    if v > session.version {
        return Ok(None);
    }
    match store.events_after(key, v).await? {
        Replay::Events(events) => Ok(Some(events)),
        Replay::Truncated => Ok(None),
    }
}

struct Producer {
    store: Arc<dyn SessionStore>,
    key: SessionKey,
    sub: Subscription,
    tx: Tx,
    last_sent: u64,
    header: Arc<SessionHeader>,
    heartbeat: Duration,
    shutdown: CancellationToken,
}

/// What a gap fill does when the session is gone.
enum OnGone {
    /// Its DELETED event is still on its way through the hub.
    Wait,
    /// Its DELETED event may have been lost: end the stream with NOT_FOUND.
    End,
}

/// Whether the stream goes on after an item.
enum Flow {
    Continue,
    Stop,
}

impl Producer {
    async fn run(mut self, first: Vec<StreamItem>) {
        for item in first {
            if let Flow::Stop = self.send(item).await {
                return;
            }
        }
        let mut ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + self.heartbeat, self.heartbeat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let flow = tokio::select! {
                _ = self.shutdown.cancelled() => {
                    let _ = self.tx.send(Err(AppError::Unavailable("server shutting down; reconnect with from_version".into()))).await;
                    Flow::Stop
                }
                _ = self.tx.closed() => Flow::Stop,
                _ = ticker.tick() => {
                    let at = self.store.now();
                    self.send(StreamItem::Heartbeat { session: self.header.clone(), version: self.last_sent, at }).await
                }
                received = self.sub.recv() => match received {
                    Ok(HubMsg::Event(event)) => self.on_event(event).await,
                    Ok(HubMsg::Resync) => self.fill_gap(OnGone::End).await,
                    Err(RecvError::Lagged(_)) => self.resync().await,
                    Err(RecvError::Closed) => Flow::Stop,
                },
            };
            if let Flow::Stop = flow {
                return;
            }
        }
    }

    async fn send(&mut self, item: StreamItem) -> Flow {
        let version = match &item {
            StreamItem::Snapshot { session, .. } => Some(session.version),
            StreamItem::Event(e) => Some(e.version),
            StreamItem::Heartbeat { .. } => None,
        };
        let deleted = matches!(&item, StreamItem::Event(e) if e.kind == EventKind::Deleted);
        if self.tx.send(Ok(item)).await.is_err() {
            return Flow::Stop;
        }
        if let Some(v) = version {
            self.last_sent = v;
        }
        if deleted { Flow::Stop } else { Flow::Continue }
    }

    async fn on_event(&mut self, event: Arc<Event>) -> Flow {
        if event.version <= self.last_sent {
            return Flow::Continue;
        }
        if event.version == self.last_sent + 1 || event.kind == EventKind::Deleted {
            return self.send(StreamItem::Event(event)).await;
        }
        // Deleted meanwhile: its DELETED event is queued behind this one.
        self.fill_gap(OnGone::Wait).await
    }

    /// Sends whatever the log has after the last version sent, or starts
    /// over from a snapshot when the log no longer reaches back.
    async fn fill_gap(&mut self, on_gone: OnGone) -> Flow {
        match self.store.events_after(&self.key, self.last_sent).await {
            Ok(Replay::Events(events)) => {
                for e in events {
                    if let Flow::Stop = self.send(StreamItem::Event(e)).await {
                        return Flow::Stop;
                    }
                }
                Flow::Continue
            }
            Ok(Replay::Truncated) => self.resync().await,
            Err(StoreError::NotFound) => match on_gone {
                OnGone::Wait => Flow::Continue,
                // Its DELETED event was lost with the Pub/Sub connection.
                OnGone::End => self.fail(StoreError::NotFound).await,
            },
            Err(e) => self.fail(e).await,
        }
    }

    /// Skips to a fresh snapshot.
    async fn resync(&mut self) -> Flow {
        match self.store.get(&self.key).await {
            Ok(session) => {
                let at = self.store.now();
                self.send(StreamItem::Snapshot {
                    session: Box::new(session),
                    at,
                })
                .await
            }
            // Deleted meanwhile: its DELETED event is already queued behind.
            Err(StoreError::NotFound) => Flow::Continue,
            Err(e) => self.fail(e).await,
        }
    }

    async fn fail(&mut self, e: StoreError) -> Flow {
        let _ = self.tx.send(Err(e.into())).await;
        Flow::Stop
    }
}

//! Subscribe (SPEC §7): a spawned producer per stream feeding a bounded mpsc.
//!
//! Order of work on open: read the session, and answer NOT_FOUND there if it
//! does not exist, so a flood of random ids never reaches the hub (on the
//! Redis engine, the replica's one Pub/Sub connection would subscribe and
//! unsubscribe for each); then join the session's hub channel, and only then
//! read the session again (or the log for a replay), so no version committed
//! before the join is missed. The first read only decides whether to join:
//! a version committed between it and the join is in the second. Events at
//! or below the last version sent are dropped, so none is duplicated. A
//! version jump (a lost message) is filled from the event log, or covered by
//! a fresh snapshot when the log no longer reaches back. After a Pub/Sub
//! reconnect the streams of a session catch up from one shared read
//! ([`crate::fanout::catchup`]). A stream that falls behind the hub's buffer
//! gets a fresh snapshot: a slow consumer never slows the others.
//!
//! A stream carries one epoch, the one it started on: an event, a catch-up
//! or a snapshot of another epoch (the id was deleted and created again)
//! ends it instead of being sent. So does a session found gone without its
//! DELETED having reached the stream — expired by TTL (which publishes
//! nothing: each heartbeat first checks, shared with the session's other
//! streams, that the session still exists with the stream's epoch), or
//! deleted while the Pub/Sub connection was down. Such a stream ends with
//! NOT_FOUND "session ID no longer exists", after whatever of its own epoch
//! the hub still holds for it (a DELETED among that ends it with OK).
//!
//! At shutdown (the token passed to `open` is cancelled) every stream ends
//! with UNAVAILABLE "server shutting down; reconnect with from_version",
//! but not all at the same instant: each waits its own fraction of the
//! spread first ([`end_offset`]), delivering events meanwhile, so that the
//! clients of a draining replica reconnect to the others over that spread
//! instead of in one stampede.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::AppError;
use crate::engine::{Event, EventKind, Micros, Session, SessionKey};
use crate::fanout::{
    CatchUp, Hub, HubMsg, Missed, ReadError, SessionLog, SubscribeError, Subscription,
};
use crate::prometheus::names;
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

/// Streams opened so far in this process: each stream's place in the spread.
/// A stream's heartbeat ticker: its first tick one `period` from now, and a
/// late tick delays the next ones rather than bunching them.
pub(super) fn heartbeat_ticker(period: Duration) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker
}

/// Resolves `end_after` past the shutdown: when a stream ends at shutdown.
pub(super) async fn shutdown_then(shutdown: CancellationToken, end_after: Duration) {
    shutdown.cancelled().await;
    tokio::time::sleep(end_after).await;
}

pub(super) static OPENED: AtomicU64 = AtomicU64::new(0);

/// How long after the shutdown signal the `n`-th stream opened ends: the
/// fractional part of `n` times the golden ratio, times `spread`. That
/// sequence covers [0, 1) evenly for any number of consecutive streams
/// (no two of a few are close, hundreds fill it uniformly), so the ends are
/// spread over the whole of `spread` however many streams there are, and
/// deterministic (no randomness to test around).
pub fn end_offset(n: u64, spread: Duration) -> Duration {
    // 2^64 / φ: adding it wraps around 2^64 like adding 1/φ wraps around 1.
    const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
    let fraction = n.wrapping_mul(GOLDEN) as f64 / 2f64.powi(64);
    spread.mul_f64(fraction)
}

pub(super) async fn open(
    store: Arc<dyn SessionStore>,
    hub: &Arc<Hub>,
    key: SessionKey,
    opts: SubscribeOptions,
    shutdown: CancellationToken,
    end_spread: Duration,
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
        end_after: end_offset(OPENED.fetch_add(1, Ordering::Relaxed), end_spread),
        delivery: metrics::histogram!(names::FANOUT_DELIVERY_SECONDS),
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
    /// The session and the epoch the stream started on: nothing of another
    /// epoch is ever sent.
    header: Arc<SessionHeader>,
    heartbeat: Duration,
    shutdown: CancellationToken,
    /// How long after `shutdown` this stream ends ([`end_offset`]).
    end_after: Duration,
    /// `synckairos_fanout_delivery_seconds`, looked up once per stream
    /// rather than once per event.
    delivery: metrics::Histogram,
}

/// How long a stream whose session is found gone waits for a DELETED that
/// may still be on its way through Pub/Sub (it then ends with OK, as after
/// any deletion) before it ends with NOT_FOUND.
const GONE_GRACE: Duration = Duration::from_millis(100);

/// Whether the stream goes on after an item.
enum Flow {
    Continue,
    Stop,
}

/// The shared reads of the fan-out ([`crate::fanout::catchup`]), over the store.
pub(super) struct StoreLog<'a>(pub(super) &'a dyn SessionStore);

#[async_trait::async_trait]
impl SessionLog for StoreLog<'_> {
    async fn missed(&self, key: &SessionKey, after: u64) -> Result<Missed, ReadError> {
        match self.0.events_after(key, after).await {
            Ok(Replay::Events(events)) => match events.last() {
                Some(e) => Ok(Missed::Events {
                    epoch: e.session.epoch.clone(),
                    events,
                }),
                // Nothing missed, but an id created again may be at a lower version.
                None => match self.epoch(key).await? {
                    Some(epoch) => Ok(Missed::Events { epoch, events }),
                    None => Ok(Missed::Gone),
                },
            },
            Ok(Replay::Truncated) => match self.0.get(key).await {
                Ok(session) => Ok(Missed::Snapshot(Arc::new(session))),
                Err(StoreError::NotFound) => Ok(Missed::Gone),
                Err(e) => Err(e.to_string()),
            },
            Err(StoreError::NotFound) => Ok(Missed::Gone),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn epoch(&self, key: &SessionKey) -> Result<Option<String>, ReadError> {
        match self.0.get(key).await {
            Ok(session) => Ok(Some(session.epoch)),
            Err(StoreError::NotFound) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl Producer {
    async fn run(mut self, first: Vec<StreamItem>) {
        for item in first {
            if let Flow::Stop = self.send(item).await {
                return;
            }
        }
        let mut ticker = heartbeat_ticker(self.heartbeat);
        let ending = shutdown_then(self.shutdown.clone(), self.end_after);
        tokio::pin!(ending);
        loop {
            let flow = tokio::select! {
                _ = &mut ending => {
                    let _ = self.tx.send(Err(AppError::Unavailable("server shutting down; reconnect with from_version".into()))).await;
                    Flow::Stop
                }
                _ = self.tx.closed() => Flow::Stop,
                _ = ticker.tick() => self.heartbeat().await,
                received = self.sub.recv() => match received {
                    Ok(HubMsg::Event(event)) => self.on_event(event).await,
                    Ok(HubMsg::Resync(round)) => self.catch_up(&round).await,
                    Err(RecvError::Lagged(_)) => self.resync().await,
                    Err(RecvError::Closed) => Flow::Stop,
                },
            };
            if let Flow::Stop = flow {
                return;
            }
        }
    }

    fn of_my_epoch(&self, epoch: &str) -> bool {
        epoch == self.header.epoch
    }

    /// A heartbeat, once the session is known to be still there, of the
    /// stream's epoch: a session that expired (TTL) publishes nothing, so
    /// this is how its streams end. The check is shared with the session's
    /// other streams (a read at most every half heartbeat per session); a
    /// failed read is no news (the heartbeat goes out).
    async fn heartbeat(&mut self) -> Flow {
        let log = StoreLog(self.store.as_ref());
        let checked = self
            .sub
            .liveness()
            .epoch(&log, &self.key, self.heartbeat / 2)
            .await;
        match &*checked {
            Ok(Some(epoch)) if self.of_my_epoch(epoch) => {}
            Ok(_) => return self.gone().await,
            Err(e) => {
                tracing::debug!(session = %self.key, error = %e, "subscribe: the heartbeat's check failed")
            }
        }
        let at = self.store.now();
        self.send(StreamItem::Heartbeat {
            session: self.header.clone(),
            version: self.last_sent,
            at,
        })
        .await
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
        // The id was deleted and created again: the stream's session is gone.
        if !self.of_my_epoch(&event.session.epoch) {
            return self.gone().await;
        }
        if event.version <= self.last_sent {
            return Flow::Continue;
        }
        if event.version == self.last_sent + 1 || event.kind == EventKind::Deleted {
            let late = (self.store.now() - event.at).max(0);
            self.delivery.record(late as f64 / 1e6);
            return self.send(StreamItem::Event(event)).await;
        }
        // Deleted meanwhile: its DELETED event is queued behind this one.
        self.fill_gap().await
    }

    /// After a Pub/Sub reconnect: whatever the log has after the last
    /// version sent, from the read this round shares among the session's
    /// streams (or a snapshot, when the log no longer reaches back).
    async fn catch_up(&mut self, round: &CatchUp) -> Flow {
        let read = round
            .missed(&StoreLog(self.store.as_ref()), &self.key, self.last_sent)
            .await;
        match &*read {
            Ok(Missed::Events { epoch, events }) => {
                if !self.of_my_epoch(epoch) {
                    return self.gone().await;
                }
                for e in events {
                    if e.version > self.last_sent {
                        metrics::counter!(names::FANOUT_GAPS_FILLED).increment(1);
                        if let Flow::Stop = self.send(StreamItem::Event(e.clone())).await {
                            return Flow::Stop;
                        }
                    }
                }
                Flow::Continue
            }
            Ok(Missed::Snapshot(session)) => self.snapshot_of(session).await,
            // Its DELETED event was lost with the Pub/Sub connection.
            Ok(Missed::Gone) => self.gone().await,
            Err(e) => self.fail(StoreError::Unavailable(e.clone())).await,
        }
    }

    /// Sends whatever the log has after the last version sent, or starts
    /// over from a snapshot when the log no longer reaches back. One
    /// stream's own read (a version jump), within the catch-up bound.
    async fn fill_gap(&mut self) -> Flow {
        let read = {
            let _permit = self.sub.catch_up_permits().acquire().await;
            self.store.events_after(&self.key, self.last_sent).await
        };
        match read {
            Ok(Replay::Events(events)) => {
                for e in events {
                    if !self.of_my_epoch(&e.session.epoch) {
                        return self.gone().await;
                    }
                    metrics::counter!(names::FANOUT_GAPS_FILLED).increment(1);
                    if let Flow::Stop = self.send(StreamItem::Event(e)).await {
                        return Flow::Stop;
                    }
                }
                Flow::Continue
            }
            Ok(Replay::Truncated) => self.resync().await,
            // Deleted meanwhile: its DELETED event is queued behind (and if
            // it was lost, the next heartbeat's check ends the stream).
            Err(StoreError::NotFound) => Flow::Continue,
            Err(e) => self.fail(e).await,
        }
    }

    /// Skips to a fresh snapshot.
    async fn resync(&mut self) -> Flow {
        match self.store.get(&self.key).await {
            Ok(session) => self.snapshot_of(&session).await,
            // Deleted meanwhile; its DELETED may be among what was skipped.
            Err(StoreError::NotFound) => self.gone().await,
            Err(e) => self.fail(e).await,
        }
    }

    /// Sends `session` as a snapshot when it is of the stream's epoch and
    /// newer than what was sent; of another epoch, the stream's session is gone.
    async fn snapshot_of(&mut self, session: &Session) -> Flow {
        if !self.of_my_epoch(&session.epoch) {
            return self.gone().await;
        }
        if session.version <= self.last_sent {
            return Flow::Continue;
        }
        let at = self.store.now();
        metrics::counter!(names::FANOUT_LAGGED_SNAPSHOTS).increment(1);
        self.send(StreamItem::Snapshot {
            session: Box::new(session.clone()),
            at,
        })
        .await
    }

    /// The stream's session no longer exists (expired, or deleted without
    /// its DELETED reaching this stream, or replaced by a session of the
    /// same id and another epoch). What the hub already holds for the
    /// stream, or brings within [`GONE_GRACE`], goes out first, in order and
    /// of the stream's epoch only: a DELETED among it ends the stream with
    /// OK as any deletion does. Otherwise the stream ends with NOT_FOUND.
    async fn gone(&mut self) -> Flow {
        let grace = tokio::time::sleep(GONE_GRACE);
        tokio::pin!(grace);
        loop {
            let received = tokio::select! {
                _ = &mut grace => break,
                received = self.sub.recv() => received,
            };
            match received {
                Ok(HubMsg::Event(e)) if self.of_my_epoch(&e.session.epoch) => {
                    let next = e.version == self.last_sent + 1;
                    if (next || e.kind == EventKind::Deleted)
                        && let Flow::Stop = self.send(StreamItem::Event(e)).await
                    {
                        return Flow::Stop;
                    }
                }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return Flow::Stop,
                // Another epoch's event, or a reconnect: nothing more of ours.
                Ok(_) => break,
            }
        }
        let _ = self
            .tx
            .send(Err(AppError::NotFound(format!(
                "session {} no longer exists (epoch {})",
                self.key.id, self.header.epoch
            ))))
            .await;
        Flow::Stop
    }

    async fn fail(&mut self, e: StoreError) -> Flow {
        let _ = self.tx.send(Err(e.into())).await;
        Flow::Stop
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ends_cover_the_spread_evenly_for_any_count() {
        let spread = Duration::from_secs(1);
        for start in [0u64, 7, 1_000_003] {
            for count in [2usize, 3, 8, 100] {
                let mut ends: Vec<Duration> = (0..count as u64)
                    .map(|i| end_offset(start + i, spread))
                    .collect();
                assert!(ends.iter().all(|d| *d < spread));
                ends.sort();
                let gaps: Vec<Duration> = ends.windows(2).map(|w| w[1] - w[0]).collect();
                let smallest = gaps.iter().min().copied().unwrap_or_default();
                let range = ends[count - 1] - ends[0];
                // Consecutive ordinals never bunch: the smallest gap is at
                // least a quarter of an even share, and they reach across
                // most of the spread.
                assert!(
                    smallest >= spread / (4 * count as u32),
                    "{count} from {start}: {ends:?}"
                );
                assert!(
                    range >= spread.mul_f64(0.3),
                    "{count} from {start}: {ends:?}"
                );
            }
        }
        assert_eq!(end_offset(5, Duration::ZERO), Duration::ZERO);
    }
}

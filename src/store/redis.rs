//! The Redis engine: sessions shared by any number of replicas (SPEC §8).
//!
//! Keys are cluster-ready: every key of one session carries the hash tag of
//! its bucket `b = crc32("<tenant>/<session>") % B`, so each MULTI touches one
//! slot. A commit is `WATCH state` + `GET state` + `TIME` in one pipeline,
//! the pure engine at Redis's `TIME`, then
//! `MULTI SET(ttl) XADD(log) [XADD(audit)] ZADD|ZREM(deadline) PUBLISH
//! [PUBLISH wake] EXEC`. A nil EXEC means another replica committed first:
//! reload and retry (bounded, jittered), since the engine call is pure.
//! The same commit takes several sessions of one bucket at once (all keys
//! watched, read and written in the one slot): the timers fire a burst of
//! deadlines that way, and calls that arrive while their bucket has a
//! commit in flight here share the next one (`super::group`).
//! Between the two round trips only CPU is spent, so a commit that reads
//! back exactly what this replica wrote last reuses it instead of decoding
//! it (`super::recent`), and an event embeds the state's JSON already made.
//!
//! Why a pool and not one multiplexed connection: WATCH belongs to the
//! server-side connection, so a WATCH…EXEC must own its connection for the
//! whole span (STACK.md shows lost updates otherwise). Each bb8 connection is
//! checked out by one task at a time and never cloned out of the guard. A
//! read that fails at once (a pooled connection that Redis or a proxy closed
//! while it sat idle) runs once more on a fresh connection: reads write
//! nothing. Writes are never repeated after an I/O error, since EXEC may
//! have committed.
//!
//! Deadlines: each bucket has a ZSET of due times and an in-flight ZSET.
//! One Lua script per bucket reads `TIME`, moves due members to in-flight
//! with a lease, and gives lease-expired members back, so a claimer that
//! crashed loses nothing. Firing is an ordinary commit (`update_many`) that
//! re-checks the clock, so a duplicate claim is a no-op.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bb8_redis::RedisConnectionManager;
use futures_util::future::BoxFuture;
use rand::Rng;
use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, Pipeline, Value};
use tokio::sync::Notify;
use tracing::warn;

use super::clock::Clock;
use super::group::{Entry, Groups};
use super::recent::{Recent, Written};
use super::{
    AUDIT_FIELD_EVENT, AUDIT_FIELD_TENANT, BuildFn, Change, EVENT_LOG_LEN, Replay, SessionStore,
    StoreError,
};
use crate::engine::{self, Applied, Event, EventKind, Micros, Session, SessionKey};

/// How long write conflicts are retried inside the server before `ABORTED`.
/// Writers of one session on one replica queue locally first (see
/// `LocalWriters`), so only replicas contend, and a retry rarely loses twice.
const RETRY_BUDGET: Duration = Duration::from_secs(3);
/// One Redis exchange may take this long before the call fails with
/// UNAVAILABLE (redis-rs's own response timeout comes first: a frozen Redis
/// fails a commit after about 500 ms here).
const IO_TIMEOUT: Duration = Duration::from_millis(1_000);
/// How long a claimed deadline stays with its claimer before others may take it.
const CLAIM_LEASE: Duration = Duration::from_secs(5);
/// Deadlines claimed per bucket per round.
const CLAIM_LIMIT: usize = 512;
/// A commit that failed with UNAVAILABLE after this long waited out a
/// timeout: the calls queued behind it fail with it rather than wait again.
const SLOW_FAILURE: Duration = Duration::from_millis(100);

#[derive(Clone, Debug)]
pub struct RedisSettings {
    pub url: String,
    pub buckets: u32,
    pub session_ttl: Duration,
    pub idle_ttl: Duration,
    pub pool_size: u32,
    /// How long a call waits for a pooled connection (fail fast when Redis is down).
    pub pool_timeout: Duration,
    /// Append every event to the bucket's audit stream (the audit writer drains it).
    pub audit: bool,
}

/// A pooled connection that remembers an I/O failure, so the pool drops it
/// instead of handing a dead socket to the next caller.
pub struct Conn {
    inner: MultiplexedConnection,
    broken: bool,
}

/// bb8-redis's manager, plus broken-connection tracking.
pub struct Manager(RedisConnectionManager);

impl bb8::ManageConnection for Manager {
    type Connection = Conn;
    type Error = redis::RedisError;

    async fn connect(&self) -> Result<Conn, redis::RedisError> {
        Ok(Conn {
            inner: self.0.connect().await?,
            broken: false,
        })
    }

    async fn is_valid(&self, conn: &mut Conn) -> Result<(), redis::RedisError> {
        self.0.is_valid(&mut conn.inner).await
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.broken
    }
}

/// The replica's view of Redis's clock: the process clock plus an offset
/// measured in the background (half the round trip, NTP style).
pub struct SyncedClock {
    local: Clock,
    offset: AtomicI64,
}

impl SyncedClock {
    pub fn now(&self) -> Micros {
        self.local.now() + self.offset.load(Ordering::Relaxed)
    }
}

/// The keys of one session.
struct Keys {
    state: String,
    log: String,
    deadlines: String,
    inflight: String,
    audit: String,
    channel: String,
    wake: String,
    member: String,
    tenant: String,
}

/// Writers of one session inside this replica take turns: without this, N
/// local callers on one hot session would fight each other's WATCH as well as
/// the other replicas', and most of their round trips would be wasted.
#[derive(Default)]
struct LocalWriters {
    queues: Mutex<std::collections::HashMap<SessionKey, Arc<tokio::sync::Mutex<()>>>>,
}

/// A turn at writing one session; the queue is forgotten when nobody waits.
struct WriterTurn<'a> {
    writers: &'a LocalWriters,
    key: SessionKey,
    queue: Arc<tokio::sync::Mutex<()>>,
    turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl LocalWriters {
    async fn turn(&self, key: &SessionKey) -> WriterTurn<'_> {
        let queue = {
            let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
            queues.entry(key.clone()).or_default().clone()
        };
        let turn = queue.clone().lock_owned().await;
        WriterTurn {
            writers: self,
            key: key.clone(),
            queue,
            turn: Some(turn),
        }
    }
}

impl Drop for WriterTurn<'_> {
    fn drop(&mut self) {
        let mut queues = self
            .writers
            .queues
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        drop(self.turn.take());
        // Only the map and this turn hold it: nobody is waiting.
        if Arc::strong_count(&self.queue) == 2 {
            queues.remove(&self.key);
        }
    }
}

/// A change waiting for its bucket's next group commit.
struct Job {
    key: SessionKey,
    change: Change,
    done: tokio::sync::oneshot::Sender<Result<Applied, StoreError>>,
}

pub struct RedisStore {
    /// Itself, for the tasks that commit queued changes.
    me: Weak<RedisStore>,
    pool: bb8::Pool<Manager>,
    writers: LocalWriters,
    groups: Groups<Job>,
    recent: Recent<Keys>,
    settings: RedisSettings,
    clock: Arc<SyncedClock>,
    wake: Arc<Notify>,
    /// Earliest deadline known from the last claim round or a wake-up.
    next_head: Arc<Mutex<Option<Micros>>>,
    claim: redis::Script,
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn decode<T: serde::de::DeserializeOwned>(raw: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(raw)
        .map_err(|e| StoreError::Unavailable(format!("undecodable stored value: {e}")))
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    // Serialising plain data with string keys cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

/// `encode(e)`, reusing `state` (already encoded for the state key) when
/// the event carries that same session rather than encoding it again.
fn encode_event(e: &Event, session: &Session, state: &[u8]) -> Vec<u8> {
    if e.session != *session {
        return encode(e);
    }
    let mut out = Vec::with_capacity(state.len() + 128);
    // The same fields, in the same order, as `#[derive(Serialize)] Event`
    // writes them (the tests compare the two for every kind of event).
    out.extend_from_slice(b"{\"version\":");
    out.extend_from_slice(e.version.to_string().as_bytes());
    out.extend_from_slice(b",\"kind\":");
    out.extend_from_slice(&encode(&e.kind));
    out.extend_from_slice(b",\"participant\":");
    out.extend_from_slice(&encode(&e.participant));
    out.extend_from_slice(b",\"at\":");
    out.extend_from_slice(e.at.to_string().as_bytes());
    out.extend_from_slice(b",\"session\":");
    out.extend_from_slice(state);
    out.push(b'}');
    out
}

/// The session a read returned: the one this replica last wrote when the
/// bytes are exactly those, else decoded.
fn read_session(raw: Option<Vec<u8>>, last: Option<&Written>) -> Result<Session, StoreError> {
    let raw = raw.ok_or(StoreError::NotFound)?;
    match last.and_then(|w| w.matches(&raw)) {
        Some(session) => Ok(session),
        None => decode(&raw),
    }
}

/// Runs `f` on a connection within the I/O timeout; marks it broken on failure.
async fn exchange<T>(
    conn: &mut Conn,
    f: impl AsyncFnOnce(&mut MultiplexedConnection) -> redis::RedisResult<T>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(IO_TIMEOUT, f(&mut conn.inner)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            if e.is_io_error()
                || e.is_connection_dropped()
                || e.is_unrecoverable_error()
                || e.is_timeout()
            {
                conn.broken = true;
            }
            Err(io(e))
        }
        Err(_) => {
            conn.broken = true;
            Err(io("redis did not answer in time"))
        }
    }
}

impl RedisStore {
    pub async fn connect(settings: RedisSettings, local: Clock) -> Result<Arc<Self>, StoreError> {
        let manager = RedisConnectionManager::new(settings.url.as_str()).map_err(io)?;
        let pool = bb8::Pool::builder()
            .max_size(settings.pool_size)
            .connection_timeout(settings.pool_timeout)
            // Broken connections are flagged on use; a PING per checkout would
            // add a round trip to every call.
            .test_on_check_out(false)
            .build_unchecked(Manager(manager));
        let store = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            pool,
            writers: LocalWriters::default(),
            groups: Groups::new(settings.buckets),
            recent: Recent::default(),
            settings,
            clock: Arc::new(SyncedClock {
                local,
                offset: AtomicI64::new(0),
            }),
            wake: Arc::new(Notify::new()),
            next_head: Arc::new(Mutex::new(None)),
            claim: redis::Script::new(CLAIM_SCRIPT),
        });
        // A first offset measurement; failure is fine (Redis may come later).
        let _ = store.measure_offset().await;
        Ok(store)
    }

    pub fn clock(&self) -> Arc<SyncedClock> {
        self.clock.clone()
    }

    pub fn buckets(&self) -> u32 {
        self.settings.buckets
    }

    pub fn bucket_of(&self, key: &SessionKey) -> u32 {
        bucket(key, self.settings.buckets)
    }

    /// `sk:{b}:audit` of every one of `buckets` buckets.
    pub fn audit_streams(buckets: u32) -> Vec<String> {
        (0..buckets).map(|b| format!("sk:{{{b}}}:audit")).collect()
    }

    /// `sk:{b}:ev:<tenant>:<session>`.
    pub fn channel_of(&self, key: &SessionKey) -> String {
        format!(
            "sk:{{{}}}:ev:{}:{}",
            self.bucket_of(key),
            key.tenant,
            key.id
        )
    }

    pub fn wake_channels(&self) -> Vec<String> {
        (0..self.settings.buckets)
            .map(|b| format!("sk:{{{b}}}:wake"))
            .collect()
    }

    /// Records a wake-up's deadline (or, with `None`, forgets what is known so
    /// the timers re-read every bucket) and wakes the timers.
    pub fn on_wake(&self, payload: Option<&[u8]>) {
        let announced = payload
            .and_then(|p| std::str::from_utf8(p).ok())
            .and_then(|s| s.parse::<Micros>().ok());
        {
            let mut head = self.next_head.lock().unwrap_or_else(|p| p.into_inner());
            *head = match (announced, *head) {
                (Some(a), Some(h)) => Some(a.min(h)),
                (Some(a), None) => Some(a),
                (None, _) => None,
            };
        }
        self.wake.notify_one();
    }

    /// A wake-up handler for the Pub/Sub task (it does not keep the store alive).
    pub fn wake_handler(self: &Arc<Self>) -> impl Fn(Option<&[u8]>) + Send + Sync + 'static {
        let me = Arc::downgrade(self);
        move |payload| {
            if let Some(store) = me.upgrade() {
                store.on_wake(payload);
            }
        }
    }

    fn keys(&self, key: &SessionKey) -> Keys {
        let b = self.bucket_of(key);
        let (t, id) = (&key.tenant, &key.id);
        Keys {
            state: format!("sk:{{{b}}}:s:{t}:{id}"),
            log: format!("sk:{{{b}}}:log:{t}:{id}"),
            deadlines: format!("sk:{{{b}}}:deadlines"),
            inflight: format!("sk:{{{b}}}:inflight"),
            audit: format!("sk:{{{b}}}:audit"),
            channel: format!("sk:{{{b}}}:ev:{t}:{id}"),
            wake: format!("sk:{{{b}}}:wake"),
            member: format!("{t}/{id}"),
            tenant: t.to_string(),
        }
    }

    async fn conn(&self) -> Result<Pooled<'_>, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| io(format!("no redis connection: {e}")))
    }

    /// Runs `read` (it writes nothing) on a pooled connection, and once more
    /// on a fresh one when it fails at once (see `failed_at_once`).
    async fn read<T>(
        &self,
        read: impl for<'c> Fn(&'c mut Conn) -> BoxFuture<'c, Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn().await?;
        let started = std::time::Instant::now();
        let out = read(&mut conn).await;
        if !failed_at_once(&out, started) {
            return out;
        }
        // Back to the pool first (which drops it): the pool may have room for one only.
        drop(conn);
        let mut conn = self.conn().await?;
        read(&mut conn).await
    }

    /// Measures the offset of Redis `TIME` from the process clock.
    pub async fn measure_offset(&self) -> Result<Micros, StoreError> {
        let mut conn = self.conn().await?;
        let t0 = self.clock.local.now();
        let (secs, micros): (i64, i64) =
            exchange(&mut conn, async |c| redis::cmd("TIME").query_async(c).await).await?;
        let t1 = self.clock.local.now();
        let offset = secs * 1_000_000 + micros - (t0 + t1) / 2;
        self.clock.offset.store(offset, Ordering::Relaxed);
        Ok(offset)
    }

    /// How long a session's keys live: until it has been idle (or ended) for the configured TTL.
    fn ttl_ms(&self, s: &Session, now: Micros) -> u64 {
        let ms = |d: Duration| d.as_millis() as i64;
        let ttl = if s.status.is_terminal() {
            ms(self.settings.session_ttl)
        } else {
            let horizon = engine::deadline(s).map_or(now, |d| d.max(now));
            (horizon - now) / 1_000 + ms(self.settings.idle_ttl)
        };
        ttl.max(1) as u64
    }

    /// Queues the writes of one commit into `tx` (already `atomic()`);
    /// returns the state's stored bytes.
    fn write_commit(
        &self,
        tx: &mut Pipeline,
        k: &Keys,
        session: &Session,
        events: &[Event],
        head: Option<Micros>,
        now: Micros,
    ) -> Vec<u8> {
        let ttl = self.ttl_ms(session, now).to_string();
        let state = encode(session);
        tx.add_command(command(&[
            b"SET",
            k.state.as_bytes(),
            &state,
            b"PX",
            ttl.as_bytes(),
        ]))
        .ignore();
        let mut batch = Vec::with_capacity(events.len());
        for e in events {
            let bytes = encode_event(e, session, &state);
            let id = format!("{}-0", e.version);
            // `~` trims whole stream nodes (cheap); `events_after` serves only
            // the last EVENT_LOG_LEN, so both engines replay the same window.
            let log = [
                b"XADD",
                k.log.as_bytes(),
                b"MAXLEN",
                b"~",
                EVENT_LOG_LEN_ARG,
                id.as_bytes(),
                b"e",
                &bytes,
            ];
            tx.add_command(command(&log)).ignore();
            if self.settings.audit {
                let audit = [
                    b"XADD",
                    k.audit.as_bytes(),
                    b"*",
                    AUDIT_FIELD_TENANT.as_bytes(),
                    k.tenant.as_bytes(),
                    AUDIT_FIELD_EVENT.as_bytes(),
                    &bytes,
                ];
                tx.add_command(command(&audit)).ignore();
            }
            batch.push(bytes);
        }
        tx.add_command(command(&[b"PEXPIRE", k.log.as_bytes(), ttl.as_bytes()]))
            .ignore();
        // A commit that processed a timeout settles the timers' claim in the same MULTI.
        if events.iter().any(|e| {
            matches!(
                e.kind,
                EventKind::Expired | EventKind::ParticipantExpired | EventKind::TimedOut
            )
        }) {
            tx.add_command(command(&[
                b"ZREM",
                k.inflight.as_bytes(),
                k.member.as_bytes(),
            ]))
            .ignore();
        }
        match engine::deadline(session) {
            Some(d) => {
                let d_arg = d.to_string();
                tx.add_command(command(&[
                    b"ZADD",
                    k.deadlines.as_bytes(),
                    d_arg.as_bytes(),
                    k.member.as_bytes(),
                ]))
                .ignore();
                if head.is_none_or(|h| d < h) {
                    tx.add_command(command(&[b"PUBLISH", k.wake.as_bytes(), d_arg.as_bytes()]))
                        .ignore();
                }
            }
            None => {
                tx.add_command(command(&[
                    b"ZREM",
                    k.deadlines.as_bytes(),
                    k.member.as_bytes(),
                ]))
                .ignore();
            }
        }
        tx.add_command(command(&[
            b"PUBLISH",
            k.channel.as_bytes(),
            &join_batch(&batch),
        ]))
        .ignore();
        state
    }

    /// Reads the states under WATCH with Redis's TIME, in one round trip.
    async fn watch_read(
        &self,
        conn: &mut Conn,
        sessions: &[Recalled],
    ) -> Result<(Vec<Option<Vec<u8>>>, Micros), StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("WATCH");
        for (k, _) in sessions {
            pipe.arg(&k.state);
        }
        if let [(k, _)] = sessions {
            // The common case, one session: a plain GET.
            pipe.ignore().cmd("GET").arg(&k.state).cmd("TIME");
            let (raw, (secs, micros)): (Option<Vec<u8>>, (i64, i64)) =
                exchange(conn, async |c| pipe.query_async(c).await).await?;
            return Ok((vec![raw], secs * 1_000_000 + micros));
        }
        pipe.ignore().cmd("MGET");
        for (k, _) in sessions {
            pipe.arg(&k.state);
        }
        pipe.cmd("TIME");
        let (raws, (secs, micros)): (Vec<Option<Vec<u8>>>, (i64, i64)) =
            exchange(conn, async |c| pipe.query_async(c).await).await?;
        if raws.len() != sessions.len() {
            return Err(io(format!(
                "MGET answered {} values for {} keys",
                raws.len(),
                sessions.len()
            )));
        }
        Ok((raws, secs * 1_000_000 + micros))
    }

    /// The earliest deadline the timers of this replica will wake for. Every
    /// replica claims every bucket, so a commit needs to wake them only when
    /// its deadline is earlier than this (no per-bucket read on the hot path).
    fn known_head(&self) -> Option<Micros> {
        *self.next_head.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends the WATCH; the connection is reusable again only if that worked.
    async fn unwatch(&self, conn: &mut Conn) {
        if exchange(conn, async |c| {
            redis::cmd("UNWATCH").query_async::<()>(c).await
        })
        .await
        .is_ok()
        {
            conn.broken = false;
        }
    }

    /// Waits a jittered, growing while after a lost WATCH race; false once
    /// the retry budget is spent.
    async fn backoff(attempt: u32, started: std::time::Instant) -> bool {
        if started.elapsed() >= RETRY_BUDGET {
            return false;
        }
        let cap = 100u64.saturating_mul(1 << attempt.min(7));
        let micros = rand::rng().random_range(0..=cap);
        tokio::time::sleep(Duration::from_micros(micros)).await;
        true
    }

    /// `commit` of sessions of one bucket, each on its writer turn.
    async fn versioned<T>(
        &self,
        keys: &[SessionKey],
        plan: impl Planner<T>,
    ) -> Result<Vec<Result<T, StoreError>>, StoreError> {
        // Turns are taken in key order, so two batches never wait on each other.
        let mut order: Vec<&SessionKey> = keys.iter().collect();
        order.sort();
        let mut turns = Vec::with_capacity(keys.len());
        for key in order {
            turns.push(self.writers.turn(key).await);
        }
        self.commit(keys, plan, Retry::Yes).await
    }

    /// One versioned write of sessions that share a bucket (usually one),
    /// whose callers hold their writer turns: `WATCH`, `MGET` and `TIME` in
    /// one round trip, then `plan` (pure: it may run again) decides for each
    /// (by its index in `keys`), from its state and Redis's now, what to
    /// queue into the one MULTI; `EXEC` commits all of it or, when another
    /// writer got there first, nothing, and the whole thing runs again
    /// (jittered backoff, within `RETRY_BUDGET`) or, with `Retry::No`, ends
    /// in `Conflict`. One result per key; `Err` when the round trips
    /// themselves fail.
    async fn commit<T>(
        &self,
        keys: &[SessionKey],
        plan: impl Planner<T>,
        retry: Retry,
    ) -> Result<Vec<Result<T, StoreError>>, StoreError> {
        let mut conn = self.conn().await?;
        // Only these turns write the sessions here, so `last` is this replica's latest write.
        let sessions: Vec<Recalled> = keys
            .iter()
            .map(|key| self.recent.get(key, || self.keys(key)))
            .collect();
        let started = std::time::Instant::now();
        for attempt in 0.. {
            // From WATCH until EXEC or UNWATCH answers, the connection carries
            // this call's WATCH: if the call is dropped midway (a cancelled
            // RPC), the pool must close it rather than lend it, WATCH and all,
            // to the next commit.
            conn.broken = true;
            let reading = std::time::Instant::now();
            let mut read = self.watch_read(&mut conn, &sessions).await;
            if attempt == 0 && failed_at_once(&read, reading) {
                drop(conn);
                conn = self.conn().await?;
                conn.broken = true;
                read = self.watch_read(&mut conn, &sessions).await;
            }
            let (raws, now) = read?;
            let head = self.known_head();
            let mut tx = Pipeline::with_capacity(8 * keys.len());
            tx.atomic();
            let (mut outs, mut stored) = (
                Vec::with_capacity(keys.len()),
                Vec::with_capacity(keys.len()),
            );
            for (i, ((k, last), raw)) in sessions.iter().zip(raws).enumerate() {
                let (out, state) = match plan(i, k, raw, last.as_deref(), now, head, &mut tx) {
                    Ok(Plan::Done(out)) => (Ok(out), None),
                    Ok(Plan::Write(out, state)) => (Ok(out), Some(state)),
                    Err(e) => (Err(e), None),
                };
                outs.push(out);
                stored.push(state);
            }
            if stored.iter().all(Option::is_none) {
                self.unwatch(&mut conn).await;
                return Ok(outs);
            }
            let done: Option<Value> =
                exchange(&mut conn, async |c| tx.query_async(c).await).await?;
            conn.broken = false; // EXEC, committed or not, ended the WATCH
            if done.is_some() {
                for (key, state) in keys.iter().zip(stored) {
                    match state {
                        Some(Some(w)) => self.recent.remember(key, w),
                        Some(None) => self.recent.forget(key),
                        None => {}
                    }
                }
                return Ok(outs);
            }
            if retry == Retry::No || !Self::backoff(attempt, started).await {
                break;
            }
        }
        Err(StoreError::Conflict)
    }

    /// `versioned` of one session.
    async fn versioned_one<T>(
        &self,
        key: &SessionKey,
        plan: impl Planner<T>,
    ) -> Result<T, StoreError> {
        one(self.versioned(std::slice::from_ref(key), plan).await)
    }

    /// The plan of `update`: the change of session `i` (`f(i)`) at Redis's
    /// now, its commit queued into `tx`.
    fn plan_update<'a>(
        &'a self,
        f: impl Fn(usize) -> &'a Change + Send + 'a,
    ) -> impl Planner<Applied> + 'a {
        move |i, k, raw, last, now, head, tx| {
            let session = read_session(raw, last)?;
            let applied = f(i)(&session, now)?;
            if applied.events.is_empty() {
                return Ok(Plan::Done(applied));
            }
            let bytes = self.write_commit(tx, k, &applied.session, &applied.events, head, now);
            let written = Written {
                bytes,
                session: applied.session.clone(),
            };
            Ok(Plan::Write(applied, Some(written)))
        }
    }

    /// Takes due deadlines from every bucket; returns them and the earliest head left.
    async fn claim_round(&self) -> Result<(Vec<SessionKey>, Option<Micros>), StoreError> {
        let mut conn = self.conn().await?;
        let lease = CLAIM_LEASE.as_micros() as i64;
        // Every bucket's claim in one round trip (EVALSHA; loaded on first use).
        let mut pipe = redis::pipe();
        for b in 0..self.settings.buckets {
            pipe.cmd("EVALSHA")
                .arg(self.claim.get_hash())
                .arg(2)
                .arg(format!("sk:{{{b}}}:deadlines"))
                .arg(format!("sk:{{{b}}}:inflight"))
                .arg(lease)
                .arg(CLAIM_LIMIT);
        }
        let replies: Vec<(Vec<String>, Option<f64>)> =
            match exchange(&mut conn, async |c| pipe.query_async(c).await).await {
                Err(StoreError::Unavailable(e)) if e.to_ascii_lowercase().contains("noscript") => {
                    let script = &self.claim;
                    exchange(&mut conn, async |c| {
                        script.prepare_invoke().load_async(c).await
                    })
                    .await?;
                    exchange(&mut conn, async |c| pipe.query_async(c).await).await?
                }
                other => other?,
            };
        let mut due = Vec::new();
        let mut head: Option<Micros> = None;
        for (members, next) in replies {
            due.extend(members.iter().filter_map(|m| parse_member(m)));
            if let Some(n) = next {
                head = Some(head.map_or(n as Micros, |h| h.min(n as Micros)));
            }
        }
        Ok((due, head))
    }
}

/// A commit of a bucket in flight here: when it ends, or its caller gives
/// up on it, the changes queued meanwhile go on as the next group commit,
/// or, when it `failed` slowly (Redis unreachable or not answering), fail
/// with it at once instead of waiting out the same timeout again.
struct Lead<'a> {
    store: &'a RedisStore,
    bucket: u32,
    failed: Option<String>,
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        match self.failed.take() {
            None => self.store.commit_next(self.bucket),
            Some(why) => {
                while let Some(jobs) = self.store.groups.next(self.bucket, |j: &Job| &j.key) {
                    for job in jobs {
                        let _ = job.done.send(Err(StoreError::Unavailable(why.clone())));
                    }
                }
            }
        }
    }
}

/// Whether a read (it writes nothing) failed with UNAVAILABLE at once, as on
/// a connection that Redis or a proxy closed while it sat idle in the pool:
/// then it runs once more on a fresh connection. A slow failure (a timeout)
/// is not repeated: Redis is unreachable, and the call fails fast.
fn failed_at_once<T>(read: &Result<T, StoreError>, started: std::time::Instant) -> bool {
    matches!(read, Err(StoreError::Unavailable(_))) && started.elapsed() < SLOW_FAILURE
}

/// Why a commit failed, when it failed with UNAVAILABLE after `SLOW_FAILURE`.
fn slow_failure<T>(outcome: &Result<T, StoreError>, started: std::time::Instant) -> Option<String> {
    match outcome {
        Err(StoreError::Unavailable(why)) if started.elapsed() >= SLOW_FAILURE => Some(why.clone()),
        _ => None,
    }
}

impl RedisStore {
    /// Starts the next group commit of bucket `b`, if changes are queued, in
    /// a task of its own: its callers wait for it, and it must not end with
    /// the call that happened to lead the one before.
    fn commit_next(&self, b: u32) {
        let Some(jobs) = self.groups.next(b, |j: &Job| &j.key) else {
            return;
        };
        match (self.me.upgrade(), tokio::runtime::Handle::try_current()) {
            (Some(store), Ok(runtime)) => {
                runtime.spawn(async move {
                    let mut lead = Lead {
                        store: &store,
                        bucket: b,
                        failed: None,
                    };
                    lead.failed = store.commit_group(jobs).await;
                });
            }
            // Shutting down: the callers get an error from their dropped jobs.
            _ => {
                drop(jobs);
                while self.groups.next(b, |j: &Job| &j.key).is_some() {}
            }
        }
    }

    /// One group commit of queued changes of one bucket (their callers hold
    /// their writer turns). A lost race does not rerun the group: each change
    /// runs again on its own, side by side, so that one hot session does not
    /// hold back the others. Returns why it failed, if it failed slowly.
    async fn commit_group(&self, jobs: Vec<Job>) -> Option<String> {
        // Callers that gave up need nothing committed.
        let jobs: Vec<Job> = jobs.into_iter().filter(|j| !j.done.is_closed()).collect();
        if jobs.is_empty() {
            return None;
        }
        let keys: Vec<SessionKey> = jobs.iter().map(|j| j.key.clone()).collect();
        let retry = if jobs.len() > 1 {
            Retry::No
        } else {
            Retry::Yes
        };
        let started = std::time::Instant::now();
        let outcome = self
            .commit(&keys, self.plan_update(|i| &jobs[i].change), retry)
            .await;
        let failed = slow_failure(&outcome, started);
        match outcome {
            Ok(outs) => {
                for (job, out) in jobs.into_iter().zip(outs) {
                    let _ = job.done.send(out);
                }
            }
            Err(StoreError::Conflict) if retry == Retry::No => {
                futures_util::future::join_all(jobs.into_iter().map(|job| async move {
                    let out = self
                        .commit(
                            std::slice::from_ref(&job.key),
                            self.plan_update(|_| &job.change),
                            Retry::Yes,
                        )
                        .await;
                    let _ = job.done.send(one(out));
                }))
                .await;
            }
            Err(e) => {
                for job in jobs {
                    let _ = job.done.send(Err(batch_failure(&e)));
                }
            }
        }
        failed
    }
}

/// What `commit` asks for each session: from its index in the commit, its
/// key names, the state read, this replica's last write of it, Redis's now
/// and the known deadline head, queue its writes into the MULTI (pure: it
/// may run again).
trait Planner<T>:
    Fn(
        usize,
        &Keys,
        Option<Vec<u8>>,
        Option<&Written>,
        Micros,
        Option<Micros>,
        &mut Pipeline,
    ) -> Result<Plan<T>, StoreError>
    + Send
{
}

impl<T, F> Planner<T> for F where
    F: Fn(
            usize,
            &Keys,
            Option<Vec<u8>>,
            Option<&Written>,
            Micros,
            Option<Micros>,
            &mut Pipeline,
        ) -> Result<Plan<T>, StoreError>
        + Send
{
}

/// Whether `commit` runs again after losing a race.
#[derive(Clone, Copy, PartialEq)]
enum Retry {
    Yes,
    No,
}

/// What one attempt of a versioned write does with one session.
// One of these lives per session per attempt; boxing `Write` would cost an
// allocation on every commit to save a few hundred bytes of stack.
#[allow(clippy::large_enum_variant)]
enum Plan<T> {
    /// Nothing to write; answer `T`.
    Done(T),
    /// Writes were queued into the MULTI; answer `T` once it commits. The
    /// state it stores (`None`: the session is gone).
    Write(T, Option<Written>),
}

/// A connection checked out of the pool.
type Pooled<'a> = bb8::PooledConnection<'a, Manager>;

/// A session's key names and this replica's last write of it.
type Recalled = (Arc<Keys>, Option<Arc<Written>>);

/// The result of a commit of one session.
fn one<T>(outs: Result<Vec<Result<T, StoreError>>, StoreError>) -> Result<T, StoreError> {
    outs?
        .pop()
        .unwrap_or_else(|| Err(io("a commit of one session gave no result")))
}

/// One batch's failure, for each of its sessions.
fn batch_failure(e: &StoreError) -> StoreError {
    match e {
        StoreError::Conflict => StoreError::Conflict,
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// A command built at its final size: growing the buffers of the commit's
/// commands argument by argument (the state and events are kilobytes) cost
/// more CPU than anything else in building the MULTI.
fn command(args: &[&[u8]]) -> redis::Cmd {
    let mut cmd = redis::Cmd::with_capacity(args.len(), args.iter().map(|a| a.len()).sum());
    for a in args {
        cmd.arg(*a);
    }
    cmd
}

/// `EVENT_LOG_LEN` as a command argument.
const EVENT_LOG_LEN_ARG: &[u8] = b"256";
const _: () = assert!(
    EVENT_LOG_LEN == 256,
    "EVENT_LOG_LEN_ARG must spell EVENT_LOG_LEN"
);

/// Joins encoded events into one JSON array without re-encoding them.
fn join_batch(batch: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(batch.iter().map(|b| b.len() + 1).sum::<usize>() + 2);
    out.push(b'[');
    for (i, b) in batch.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b);
    }
    out.push(b']');
    out
}

/// `crc32("<tenant>/<session>") % buckets` (SPEC §8), without building the string.
fn bucket(key: &SessionKey, buckets: u32) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(key.tenant.as_str().as_bytes());
    crc.update(b"/");
    crc.update(key.id.as_str().as_bytes());
    crc.finalize() % buckets
}

/// `<tenant>/<session>` back to a key ('/' is in neither alphabet).
fn parse_member(m: &str) -> Option<SessionKey> {
    let (t, id) = m.split_once('/')?;
    Some(SessionKey {
        tenant: engine::Tenant::parse("tenant", t).ok()?,
        id: engine::SessionId::parse("session_id", id).ok()?,
    })
}

/// KEYS: deadlines, inflight. ARGV: lease (µs), limit.
/// Returns { due members, earliest remaining deadline or false }.
const CLAIM_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local lease = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
-- Moves members from one ZSET to another at one score, in two calls
-- (not two per member: under a burst this script is much of Redis's load).
local function move(from, to, members, score, flag)
  if #members == 0 then return end
  redis.call('ZREM', from, unpack(members))
  local args = {}
  for i, m in ipairs(members) do
    args[2 * i - 1] = score
    args[2 * i] = m
  end
  if flag then
    redis.call('ZADD', to, flag, unpack(args))
  else
    redis.call('ZADD', to, unpack(args))
  end
end
-- Lease-expired claims go back (a re-armed deadline keeps its own score).
move(KEYS[2], KEYS[1], redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, limit), now, 'NX')
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)
move(KEYS[1], KEYS[2], due, now + lease, nil)
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local lease_head = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local next = head[2]
if lease_head[2] and (not next or tonumber(lease_head[2]) < tonumber(next)) then next = lease_head[2] end
return { due, next or false }
"#;

#[async_trait]
impl SessionStore for RedisStore {
    fn now(&self) -> Micros {
        self.clock.now()
    }

    async fn create(&self, key: &SessionKey, build: BuildFn<'_>) -> Result<Arc<Event>, StoreError> {
        self.versioned_one(key, |_, k, raw, last, now, head, tx| {
            if raw.is_some() {
                return Err(StoreError::AlreadyExists(Box::new(read_session(
                    raw, last,
                )?)));
            }
            let (session, event) = build(now)?;
            // A log left by an earlier session of the same id must not hold back version 1.
            tx.cmd("DEL").arg(&k.log).ignore();
            let bytes = self.write_commit(tx, k, &session, std::slice::from_ref(&event), head, now);
            Ok(Plan::Write(
                Arc::new(event),
                Some(Written { bytes, session }),
            ))
        })
        .await
    }

    async fn get(&self, key: &SessionKey) -> Result<Session, StoreError> {
        let state = self.keys(key).state;
        let raw: Option<Vec<u8>> = self
            .read(|c| {
                let state = state.clone();
                Box::pin(exchange(c, async move |c| c.get(&state).await))
            })
            .await?;
        decode(&raw.ok_or(StoreError::NotFound)?)
    }

    /// Commits at once when nothing of the session's bucket is in flight
    /// here, else joins the bucket's next group commit (`super::group`).
    async fn update(&self, key: &SessionKey, f: Change) -> Result<Applied, StoreError> {
        let _turn = self.writers.turn(key).await;
        let b = self.bucket_of(key);
        let mut answer = None;
        let entry = self.groups.enter(b, || {
            let (done, rx) = tokio::sync::oneshot::channel();
            answer = Some(rx);
            Job {
                key: key.clone(),
                change: f.clone(),
                done,
            }
        });
        match entry {
            Entry::Lead => {
                let mut lead = Lead {
                    store: self,
                    bucket: b,
                    failed: None,
                };
                let started = std::time::Instant::now();
                let outs = self
                    .commit(
                        std::slice::from_ref(key),
                        self.plan_update(|_| &f),
                        Retry::Yes,
                    )
                    .await;
                lead.failed = slow_failure(&outs, started);
                one(outs)
            }
            Entry::Queued => match answer {
                Some(answer) => answer
                    .await
                    .unwrap_or_else(|_| Err(io("the group commit ended without an answer"))),
                None => Err(io("a queued change has no answer")),
            },
        }
    }

    /// One commit per bucket for the sessions that share it.
    async fn update_many(
        &self,
        keys: &[SessionKey],
        f: Change,
    ) -> Vec<Result<Applied, StoreError>> {
        let (mut by_bucket, mut repeats): (Vec<(u32, Vec<usize>)>, Vec<usize>) =
            (Vec::new(), Vec::new());
        for (i, key) in keys.iter().enumerate() {
            let b = self.bucket_of(key);
            match by_bucket.iter_mut().find(|(bucket, _)| *bucket == b) {
                // A key twice in one commit would wait for its own turn.
                Some((_, at)) if at.iter().any(|&j| keys[j] == *key) => repeats.push(i),
                Some((_, at)) => at.push(i),
                None => by_bucket.push((b, vec![i])),
            }
        }
        let mut out: Vec<Option<Result<Applied, StoreError>>> = keys.iter().map(|_| None).collect();
        for (_, at) in by_bucket {
            let batch: Vec<SessionKey> = at.iter().map(|&i| keys[i].clone()).collect();
            match self.versioned(&batch, self.plan_update(|_| &f)).await {
                Ok(results) => at.iter().zip(results).for_each(|(&i, r)| out[i] = Some(r)),
                Err(e) => at
                    .iter()
                    .for_each(|&i| out[i] = Some(Err(batch_failure(&e)))),
            }
        }
        for i in repeats {
            out[i] = Some(self.update(&keys[i], f.clone()).await);
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(io("a session of the batch gave no result"))))
            .collect()
    }

    fn batch_of(&self, key: &SessionKey) -> u32 {
        self.bucket_of(key)
    }

    async fn delete(&self, key: &SessionKey) -> Result<Arc<Event>, StoreError> {
        self.versioned_one(key, |_, k, raw, last, now, _, tx| {
            let session = read_session(raw, last)?;
            let event = engine::deleted_event(&session, now);
            let bytes = encode(&event);
            tx.cmd("DEL").arg(&k.state).arg(&k.log).ignore();
            tx.cmd("ZREM").arg(&k.deadlines).arg(&k.member).ignore();
            tx.cmd("ZREM").arg(&k.inflight).arg(&k.member).ignore();
            if self.settings.audit {
                tx.cmd("XADD")
                    .arg(&k.audit)
                    .arg("*")
                    .arg(AUDIT_FIELD_TENANT)
                    .arg(&k.tenant)
                    .arg(AUDIT_FIELD_EVENT)
                    .arg(&bytes)
                    .ignore();
            }
            tx.cmd("PUBLISH")
                .arg(&k.channel)
                .arg(join_batch(&[bytes]))
                .ignore();
            Ok(Plan::Write(Arc::new(event), None))
        })
        .await
    }

    async fn events_after(&self, key: &SessionKey, after: u64) -> Result<Replay, StoreError> {
        let k = self.keys(key);
        let mut pipe = redis::pipe();
        pipe.cmd("GET")
            .arg(&k.state)
            .cmd("XRANGE")
            .arg(&k.log)
            .arg(format!("({after}-0"))
            .arg("+");
        let (raw, entries): (Option<Vec<u8>>, Vec<(String, Vec<(String, Vec<u8>)>)>) = self
            .read(|c| {
                let pipe = pipe.clone();
                Box::pin(exchange(c, async move |c| pipe.query_async(c).await))
            })
            .await?;
        let session: Session = decode(&raw.ok_or(StoreError::NotFound)?)?;
        if after >= session.version {
            return Ok(Replay::Events(Vec::new()));
        }
        if session.version - after > EVENT_LOG_LEN as u64 {
            return Ok(Replay::Truncated);
        }
        let mut events = Vec::with_capacity(entries.len());
        for (_, fields) in entries {
            if let Some((_, bytes)) = fields.iter().find(|(f, _)| f == "e") {
                let e: Event = decode(bytes)?;
                if e.version <= session.version {
                    events.push(Arc::new(e));
                }
            }
        }
        match events.first() {
            Some(first) if first.version == after + 1 => Ok(Replay::Events(events)),
            _ => Ok(Replay::Truncated),
        }
    }

    async fn claim_due(&self) -> Result<Vec<SessionKey>, StoreError> {
        let (due, head) = self.claim_round().await?;
        *self.next_head.lock().unwrap_or_else(|p| p.into_inner()) = head;
        Ok(due)
    }

    async fn release(&self, key: &SessionKey) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let k = self.keys(key);
        exchange(&mut conn, async |c| {
            c.zrem::<_, _, ()>(&k.inflight, &k.member).await
        })
        .await
    }

    async fn next_deadline(&self) -> Result<Option<Micros>, StoreError> {
        Ok(*self.next_head.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn deadline_wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // A connection closed while idle must not turn health NOT_SERVING.
        let _: String = self
            .read(|c| {
                Box::pin(exchange(c, async |c| {
                    redis::cmd("PING").query_async(c).await
                }))
            })
            .await?;
        Ok(())
    }

    async fn maintain(&self) {
        if let Err(e) = self.measure_offset().await {
            warn!(error = %e, "measuring the offset to Redis TIME failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Mode, NewParticipant, NewSession, ParticipantId, SessionId};

    #[test]
    fn an_event_encoded_around_its_stored_state_is_byte_for_byte_the_derived_encoding() {
        let p = |id: &str| NewParticipant::named(ParticipantId::parse("p", id).unwrap());
        let mut new = NewSession::new(
            SessionId::parse("id", "s-1").unwrap(),
            Mode::PerParticipant,
            vec![p("a"), p("b")],
        );
        new.initial_time_ms = 60_000;
        new.metadata
            .insert("note".into(), "quote \" backslash \\ unicode é".into());
        let (session, _) = engine::create(new, 1_700_000_000_000_000).unwrap();
        let state = encode(&session);
        for kind in EventKind::ALL {
            for participant in [None, Some(ParticipantId::parse("p", "b").unwrap())] {
                let e = Event {
                    version: 7,
                    kind,
                    participant,
                    at: -3,
                    session: session.clone(),
                };
                assert_eq!(encode_event(&e, &session, &state), encode(&e), "{kind:?}");
                let _: Event = decode(&encode_event(&e, &session, &state)).unwrap();
            }
        }
        // An event that carries another state is encoded whole.
        let mut earlier = session.clone();
        earlier.version -= 1;
        let e = Event {
            version: 6,
            kind: EventKind::Switched,
            participant: None,
            at: 1,
            session: earlier,
        };
        assert_eq!(encode_event(&e, &session, &state), encode(&e));
    }

    #[test]
    fn a_session_s_bucket_is_the_crc32_of_tenant_slash_id() {
        let key = SessionKey {
            tenant: engine::Tenant::default_tenant(),
            id: SessionId::parse("id", "game-42").unwrap(),
        };
        // crc32("default/game-42"), as SPEC §8 spells the bucket.
        let crc = crc32fast::hash(b"default/game-42");
        for buckets in [1, 16, 1024, 65_521] {
            assert_eq!(bucket(&key, buckets), crc % buckets);
        }
        assert_ne!(
            bucket(&key, 1024),
            0,
            "a bucket other than 0, so a wrong hash shows"
        );
    }
}

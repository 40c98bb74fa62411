//! The Redis engine: sessions shared by any number of replicas (SPEC §8).
//! This file holds the store itself and the `SessionStore` calls: `create`,
//! `delete`, `update_many` and `events_after` are written out here, the
//! others are a few lines over the rooms below:
//!
//! - `pool`: the connection pool, broken-connection tracking, the I/O
//!   timeout, and the one retry of a read that failed at once.
//! - `keys`: the key layout and the bucket of a session.
//! - `list` (with `list_sweep.lua`): ListSessions over each tenant's
//!   listing index per bucket, written by the create and delete commits,
//!   and the create-time sweep that keeps it bounded.
//! - `writers`: local writers of one session take turns.
//! - `commit`: the versioned commit (`WATCH`, then `GET` for one session or
//!   `MGET` for several, and `TIME`; the pure plan; `MULTI … EXEC`) and its
//!   retries.
//! - `outcome` (with `readback.lua`): a commit whose EXEC answer was lost
//!   reads back whether it landed before it answers.
//! - `group_queue` and `group_commit`: calls that arrive while their bucket
//!   has a commit in flight here share the next ones (up to 16 a commit).
//! - `recent`: what this replica last wrote, so a commit that reads it back
//!   skips the decode.
//! - `claims` (with `claim.lua` and `release.lua`): the timers' claims of
//!   due deadlines, their release (only of the claim the releaser took), and
//!   the wake-ups this replica receives.
//! - `synced_clock`: the replica's view of Redis `TIME`.
//!
//! Keys are cluster-ready: every key of one session carries the hash tag of
//! its bucket `b = crc32("<tenant>/<session>") % B`, so each MULTI touches one
//! slot. A commit is `WATCH state` + `GET state` + `TIME` in one pipeline,
//! the pure engine at Redis's `TIME`, then `MULTI [DEL log] SET(ttl)
//! XADD(log) [XADD(audit)] PEXPIRE(log) [ZREM(inflight)]
//! ZADD(deadline) [PUBLISH wake] | ZREM(deadline), PUBLISH [ZADD(list)]
//! EXEC` (`DEL log` and `ZADD list`, the tenant's listing index, on create;
//! `ZREM inflight` when a timeout fired; the wake-up when the new deadline
//! is earlier than any known here). A nil EXEC means another
//! replica committed first: read again and retry (bounded, jittered), since
//! the engine call is pure. The bytes written and read back are
//! [`crate::wire`]'s.

mod claims;
mod client;
mod commit;
mod group_commit;
mod group_queue;
mod keys;
mod list;
mod outcome;
mod pool;
mod recent;
mod synced_clock;
mod writers;

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use redis::AsyncCommands;
use tokio::sync::Notify;
use tracing::warn;

use self::commit::{Plan, SessionRead, batch_failure, read_session};
use self::group_commit::Job;
use self::group_queue::Groups;
use self::keys::SessionKeys;
use self::pool::{Manager, exchange, io};
use self::recent::{Recent, Written};
use self::writers::LocalWriters;
use super::clock::Clock;
use super::{
    BuildFn, Change, Claim, EVENT_LOG_LEN, ListPosition, Listed, Replay, SessionStore, StoreError,
};
use crate::dependency_tls::CaFile;
use crate::engine::{self, Applied, Event, Micros, Session, SessionKey, Tenant};
use crate::wire;

pub use self::client::client;
pub use self::synced_clock::SyncedClock;

#[derive(Clone, Debug)]
pub struct RedisSettings {
    pub url: String,
    /// `SYNCKAIROS_REDIS_CA`: the CA a `rediss://` server's certificate is checked against.
    pub ca: Option<CaFile>,
    pub buckets: u32,
    pub session_ttl: Duration,
    pub idle_ttl: Duration,
    pub pool_size: u32,
    /// How long a call waits for a pooled connection (fail fast when Redis is down).
    pub pool_timeout: Duration,
    /// Append every event to the bucket's audit stream (the audit writer drains it).
    pub audit: bool,
}

pub struct RedisStore {
    /// Itself, for the tasks that commit queued changes.
    me: Weak<RedisStore>,
    pool: bb8::Pool<Manager>,
    writers: LocalWriters,
    groups: Groups<Job>,
    recent: Recent<SessionKeys>,
    settings: RedisSettings,
    clock: Arc<SyncedClock>,
    wake: Arc<Notify>,
    /// Earliest deadline known from the last claim round or a wake-up.
    next_head: Arc<Mutex<Option<Micros>>>,
    claim: redis::Script,
    /// Reads back the states of a commit whose answer was lost (`outcome`).
    readback: redis::Script,
    /// Whether the bucket count was compared with the one in Redis yet.
    layout_checked: std::sync::atomic::AtomicBool,
    /// Why this replica's bucket count is not the other replicas'.
    layout_error: Mutex<Option<String>>,
    release: redis::Script,
    /// One step of a listing index's sweep (`list`).
    list_sweep: redis::Script,
}

/// A stored state or event back from its bytes.
/// Refused unless it is one the rules can run on (`wire::Stored`).
fn decode<T: wire::Stored>(raw: &[u8]) -> Result<T, StoreError> {
    wire::decode(raw).map_err(|e| io(format!("undecodable stored value: {e}")))
}

impl RedisStore {
    pub async fn connect(settings: RedisSettings, local: Clock) -> Result<Arc<Self>, StoreError> {
        let client = client(&settings.url, settings.ca.as_ref()).map_err(io)?;
        let pool = bb8::Pool::builder()
            .max_size(settings.pool_size)
            .connection_timeout(settings.pool_timeout)
            // Broken connections are flagged on use; a PING per checkout would
            // add a round trip to every call.
            .test_on_check_out(false)
            .build_unchecked(Manager::new(client));
        let store = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            pool,
            writers: LocalWriters::default(),
            groups: Groups::new(settings.buckets),
            recent: Recent::default(),
            settings,
            clock: Arc::new(SyncedClock::new(local)),
            wake: Arc::new(Notify::new()),
            next_head: Arc::new(Mutex::new(None)),
            claim: claims::script(),
            readback: outcome::readback_script(),
            layout_checked: Default::default(),
            layout_error: Mutex::new(None),
            release: claims::release_script(),
            list_sweep: list::sweep_script(),
        });
        // A first offset measurement; failure is fine (Redis may come later).
        let _ = store.measure_offset().await;
        // Replicas that disagree on the bucket count would read and write
        // different keys for one session: refuse to start. Unreachable Redis
        // is checked later, by `maintain`.
        if let Err(e @ StoreError::Unavailable(_)) = store.check_layout().await {
            if store.layout_mismatch().is_some() {
                return Err(e);
            }
        }
        Ok(store)
    }

    /// Records this replica's bucket count in `sk:layout:buckets` if it is
    /// the first, or compares it with the one recorded there. A mismatch is
    /// kept: `ping` then fails (health NOT_SERVING) until the replica is
    /// restarted with the count the others use.
    async fn check_layout(&self) -> Result<(), StoreError> {
        if self
            .layout_checked
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return match self.layout_mismatch() {
                Some(why) => Err(StoreError::Unavailable(why)),
                None => Ok(()),
            };
        }
        let mine = self.settings.buckets;
        let theirs: u32 = self
            .read(|c| {
                Box::pin(exchange(c, async move |c| {
                    redis::cmd("SET")
                        .arg(keys::LAYOUT_KEY)
                        .arg(mine)
                        .arg("NX")
                        .arg("GET")
                        .query_async::<Option<u32>>(c)
                        .await
                }))
            })
            .await?
            .unwrap_or(mine);
        self.layout_checked
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if theirs == mine {
            return Ok(());
        }
        let why = format!(
            "SYNCKAIROS_REDIS_BUCKETS is {mine} here but {theirs} in {} (set by the first replica): \
             every replica must use the same",
            keys::LAYOUT_KEY
        );
        *self.layout_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
        tracing::error!("{why}");
        Err(StoreError::Unavailable(why))
    }

    fn layout_mismatch(&self) -> Option<String> {
        self.layout_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn clock(&self) -> Arc<SyncedClock> {
        self.clock.clone()
    }

    pub fn buckets(&self) -> u32 {
        self.settings.buckets
    }

    pub fn bucket_of(&self, key: &SessionKey) -> u32 {
        keys::bucket(key, self.settings.buckets)
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    fn now(&self) -> Micros {
        self.clock.now()
    }

    async fn create(&self, key: &SessionKey, build: BuildFn<'_>) -> Result<Arc<Event>, StoreError> {
        let list = keys::list_key(self.bucket_of(key), &key.tenant);
        let created = self
            .commit_one(key, |read: SessionRead<'_>, tx| {
                let k = read.keys;
                if read.stored.is_some() {
                    let existing = read_session(read.stored, read.last_write)?;
                    return Err(StoreError::AlreadyExists(Box::new(existing)));
                }
                let (session, event) = build(read.now)?;
                // A log left by an earlier session of the same id must not hold back version 1.
                tx.cmd("DEL").arg(&k.log).ignore();
                let events = std::slice::from_ref(&event);
                let bytes =
                    self.write_commit(tx, k, &session, events, read.deadline_head, read.now);
                // Listed from this commit on (ListSessions, `list`).
                tx.cmd("ZADD")
                    .arg(&list)
                    .arg(0)
                    .arg(keys::list_member(&ListPosition::of(&session)))
                    .ignore();
                Ok(Plan::Write(
                    Arc::new(event),
                    Some(Written { bytes, session }),
                ))
            })
            .await?;
        self.sweep_list(key).await;
        Ok(created)
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
    /// here, else joins the bucket's next group commit (`group_commit`).
    async fn update(&self, key: &SessionKey, f: Change) -> Result<Applied, StoreError> {
        let _turn = self.writers.turn(key).await;
        self.commit_or_join(key, f).await
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
            match self.commit_in_turn(&batch, self.plan_update(|_| &f)).await {
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
        let list = keys::list_key(self.bucket_of(key), &key.tenant);
        self.commit_one(key, |read: SessionRead<'_>, tx| {
            let k = read.keys;
            let session = read_session(read.stored, read.last_write)?;
            let event = engine::deleted_event(&session, read.now);
            let bytes = wire::encode(&event);
            tx.cmd("DEL").arg(&k.state).arg(&k.log).ignore();
            tx.cmd("ZREM").arg(&k.deadlines).arg(&k.member).ignore();
            tx.cmd("ZREM").arg(&k.inflight).arg(&k.member).ignore();
            tx.cmd("ZREM")
                .arg(&list)
                .arg(keys::list_member(&ListPosition::of(&session)))
                .ignore();
            if self.settings.audit {
                tx.cmd("XADD")
                    .arg(&k.audit)
                    .arg("*")
                    .arg(wire::AUDIT_FIELD_TENANT)
                    .arg(&k.tenant)
                    .arg(wire::AUDIT_FIELD_EVENT)
                    .arg(&bytes)
                    .ignore();
            }
            tx.cmd("PUBLISH")
                .arg(&k.channel)
                .arg(wire::join_batch(&[bytes]))
                .ignore();
            Ok(Plan::Write(Arc::new(event), None))
        })
        .await
    }

    async fn list(
        &self,
        tenant: &Tenant,
        after: Option<&ListPosition>,
        limit: usize,
    ) -> Result<Listed, StoreError> {
        self.list_page(tenant, after, limit).await
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
        type LogEntries = Vec<(String, Vec<(String, Vec<u8>)>)>;
        let (raw, entries): (Option<Vec<u8>>, LogEntries) = self
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
            if let Some((_, bytes)) = fields.iter().find(|(f, _)| f == wire::LOG_FIELD_EVENT) {
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

    async fn claim_due_at_most(&self, max: usize) -> Result<Vec<Claim>, StoreError> {
        let (due, head) = self.claim_round(max).await?;
        *self.next_head.lock().unwrap_or_else(|p| p.into_inner()) = head;
        Ok(due)
    }

    async fn release(&self, claim: &Claim) -> Result<(), StoreError> {
        self.release_claim(claim).await
    }

    async fn next_deadline(&self) -> Result<Option<Micros>, StoreError> {
        Ok(self.known_head())
    }

    fn deadline_wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if let Some(why) = self.layout_mismatch() {
            return Err(StoreError::Unavailable(why));
        }
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
        self.record_pool();
        let _ = self.check_layout().await;
        if let Err(e) = self.measure_offset().await {
            warn!(error = %e, "measuring the offset to Redis TIME failed");
        }
    }
}

//! The in-process engine: sessions in sharded maps, one process, nothing to
//! install. A commit (state + event log + deadline index + local publish)
//! happens under the session's shard lock, so it is atomic and every
//! subscriber sees versions in order.
//!
//! Sessions expire by the Redis engine's rule (SPEC §8): one that has not
//! ended is kept until `max(its deadline, its last change) + idle_ttl`, an
//! ended one `session_ttl` after its last change. An expired session is
//! gone at once for every call (each read checks), and its memory and its
//! deadline are freed by `maintain`'s sweep (about once a second), which
//! takes the expired ones from each shard's expiry index. The engine holds
//! at most `max_sessions` (expired ones count until swept): one more
//! `create` fails with `StoreError::Full`.
//!
//! ListSessions reads `lists`: each tenant's sessions ordered by
//! `(created_at, id)`, an entry added by `create` and removed wherever a
//! session is forgotten (delete, expiry seen by a read, the sweep), so it
//! holds exactly the sessions held. A listing takes the index's lock only to
//! copy out the positions of one call, then reads each session as `get`
//! does (an expired one is forgotten then, not listed).
//!
//! Why std `Mutex` and not tokio's: the critical section is a pure engine call
//! and a few map writes — microseconds, never an `.await` (mini-redis, db.rs).
//!
//! Traces: each `create`, `update` and `delete` is a `store.commit` span
//! (lock wait included), as a Redis commit is (see `commit_span`), and is
//! timed in `synckairos_store_commit_seconds`.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use super::audit_outbox::AuditOutbox;
use super::clock::Clock;
use super::{
    AuditRecord, BuildFn, Change, Claim, EVENT_LOG_LEN, ListPosition, Listed, Replay, SessionStore,
    StoreError,
};
use crate::engine::{self, Applied, Event, Micros, Session, SessionKey, Tenant};
use crate::fanout::Hub;

/// Shards spread lock contention across sessions; 64 is plenty for 2–64 cores.
const SHARDS: usize = 64;

/// A session as this engine holds it: its state, its retained log, and
/// when it expires.
struct Stored {
    session: Session,
    log: VecDeque<Arc<Event>>,
    expires_at: Micros,
}

/// One shard: its sessions, and when each expires (earliest first).
#[derive(Default)]
struct Shard {
    sessions: HashMap<SessionKey, Stored>,
    expiry: BTreeSet<(Micros, SessionKey)>,
}

/// How long sessions are kept, and how many.
#[derive(Clone, Copy, Debug)]
pub struct MemorySettings {
    /// `SYNCKAIROS_SESSION_TTL`: an ended session is kept this long after it ended.
    pub session_ttl: Duration,
    /// `SYNCKAIROS_IDLE_TTL`: one that has not ended, this long after its
    /// last change or its deadline, whichever is later.
    pub idle_ttl: Duration,
    /// `SYNCKAIROS_MEMORY_MAX_SESSIONS`: the most sessions held at once.
    pub max_sessions: usize,
}

impl Default for MemorySettings {
    /// The service's defaults (`Config::default`).
    fn default() -> Self {
        Self {
            session_ttl: Duration::from_secs(3600),
            idle_ttl: Duration::from_secs(7 * 86_400),
            max_sessions: DEFAULT_MAX_SESSIONS,
        }
    }
}

/// The default bound on sessions held: each keeps up to `EVENT_LOG_LEN`
/// events, each a snapshot of the session (about 1 KB for two players), so
/// 100,000 two-player sessions of 256 moves each are about 25 GB; a few
/// dozen moves each, a few GB.
pub const DEFAULT_MAX_SESSIONS: usize = 100_000;

#[derive(Default)]
struct Deadlines {
    by_time: BTreeSet<(Micros, SessionKey)>,
    by_key: HashMap<SessionKey, Micros>,
}

impl Deadlines {
    /// Records `key`'s deadline (or its absence); true if it became the earliest.
    fn set(&mut self, key: &SessionKey, deadline: Option<Micros>) -> bool {
        if let Some(old) = self.by_key.remove(key) {
            self.by_time.remove(&(old, key.clone()));
        }
        let Some(d) = deadline else { return false };
        let earliest = self.by_time.first().is_none_or(|(head, _)| d < *head);
        self.by_key.insert(key.clone(), d);
        self.by_time.insert((d, key.clone()));
        earliest
    }
}

pub struct MemoryStore {
    clock: Clock,
    settings: MemorySettings,
    shards: Vec<Mutex<Shard>>,
    /// Sessions held (expired ones until swept).
    held: AtomicUsize,
    hasher: RandomState,
    deadlines: Mutex<Deadlines>,
    /// Each tenant's sessions in listing order (ListSessions); a tenant with
    /// none has no entry. Locked after a shard, never before.
    lists: Mutex<HashMap<Tenant, BTreeSet<ListPosition>>>,
    wake: Arc<Notify>,
    hub: Arc<Hub>,
    /// Where committed events go for the audit trail (when it is on).
    audit: Option<Arc<AuditOutbox>>,
}

/// The span of one commit here (for traces only: disabled, and free, when
/// traces are off), named as `store/redis/commit.rs` names a Redis commit's.
/// Entered for the whole call: the calls have no `.await`, so it is never
/// held across one (a `!Send` guard would not compile there).
fn commit_span() -> Commit {
    Commit {
        _span: tracing::info_span!(
            target: crate::telemetry::TRACE_TARGET,
            "store.commit",
            engine = "memory",
            group_size = 1i64,
            attempts = 1i64,
        )
        .entered(),
        started: std::time::Instant::now(),
    }
}

/// One commit under way: its span, and its time for
/// `synckairos_store_commit_seconds` (recorded when it ends, however it ends).
struct Commit {
    _span: tracing::span::EnteredSpan,
    started: std::time::Instant,
}

impl Drop for Commit {
    fn drop(&mut self) {
        use crate::prometheus::names;
        metrics::histogram!(names::STORE_COMMIT_SECONDS)
            .record(self.started.elapsed().as_secs_f64());
        metrics::histogram!(names::STORE_GROUP_COMMIT_SIZE).record(1.0);
    }
}

/// Recovers the data from a poisoned lock: a panic elsewhere must not take
/// every later request down with it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MemoryStore {
    pub fn new(hub: Arc<Hub>, clock: Clock) -> Self {
        Self {
            clock,
            settings: MemorySettings::default(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            held: AtomicUsize::new(0),
            hasher: RandomState::new(),
            deadlines: Mutex::new(Deadlines::default()),
            lists: Mutex::default(),
            wake: Arc::new(Notify::new()),
            hub,
            audit: None,
        }
    }

    /// Keeps sessions as `settings` say.
    pub fn with_settings(mut self, settings: MemorySettings) -> Self {
        self.settings = settings;
        self
    }

    /// Sessions held now (expired ones not yet swept included).
    pub fn held_sessions(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Frees every session expired by now: its state, log and deadline.
    /// Returns how many.
    pub fn sweep(&self) -> usize {
        let now = self.now();
        let mut swept = 0;
        for shard in &self.shards {
            let mut shard = lock(shard);
            while let Some((at, _)) = shard.expiry.first() {
                if *at > now {
                    break;
                }
                if let Some((_, key)) = shard.expiry.pop_first() {
                    self.forget(&mut shard, &key);
                    swept += 1;
                }
            }
        }
        swept
    }

    /// When `session`, changed at `now`, expires: the Redis engine's rule
    /// (`redis/commit.rs`, `ttl_ms`).
    fn expires_at(&self, session: &Session, now: Micros) -> Micros {
        let micros = |d: Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        if session.status.is_terminal() {
            now.saturating_add(micros(self.settings.session_ttl))
        } else {
            let horizon = engine::flag_at(session).map_or(now, |d| d.max(now));
            horizon.saturating_add(micros(self.settings.idle_ttl))
        }
    }

    /// Removes `key` from `shard` (its expiry entry too), the deadline
    /// index and its tenant's listing, with the shard locked.
    fn forget(&self, shard: &mut Shard, key: &SessionKey) -> Option<Stored> {
        let entry = shard.sessions.remove(key)?;
        shard.expiry.remove(&(entry.expires_at, key.clone()));
        lock(&self.deadlines).set(key, None);
        let mut lists = lock(&self.lists);
        if let Some(list) = lists.get_mut(&key.tenant) {
            list.remove(&ListPosition::of(&entry.session));
            if list.is_empty() {
                lists.remove(&key.tenant);
            }
        }
        drop(lists);
        self.held.fetch_sub(1, Ordering::Relaxed);
        Some(entry)
    }

    /// The session of `key` unless it has expired (an expired one is
    /// forgotten on the spot).
    fn live<'a>(&self, shard: &'a mut Shard, key: &SessionKey) -> Option<&'a mut Stored> {
        let expired = shard
            .sessions
            .get(key)
            .is_some_and(|e| e.expires_at <= self.now());
        if expired {
            self.forget(shard, key);
            return None;
        }
        shard.sessions.get_mut(key)
    }

    /// Feeds every committed event to `audit` (the audit writer's channel).
    /// Bounded, and a commit never waits on it: when it is full the event is
    /// left out of the audit, counted and logged (see `audit_outbox`).
    pub fn with_audit(mut self, audit: Arc<AuditOutbox>) -> Self {
        self.audit = Some(audit);
        self
    }

    fn send_audit(&self, key: &SessionKey, events: &[Arc<Event>]) {
        if let Some(audit) = &self.audit {
            for e in events {
                audit.send(AuditRecord {
                    tenant: key.tenant.clone(),
                    event: e.clone(),
                });
            }
        }
    }

    fn shard(&self, key: &SessionKey) -> MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        lock(&self.shards[i])
    }

    /// Appends to the log, indexes the deadline and publishes — all while the
    /// caller holds the shard lock. Sets when the session expires; the
    /// caller moves its expiry entry (`reindex`).
    fn commit(&self, key: &SessionKey, entry: &mut Stored, events: Vec<Event>) -> Vec<Arc<Event>> {
        entry.expires_at = self.expires_at(&entry.session, self.now());
        let events: Vec<Arc<Event>> = events.into_iter().map(Arc::new).collect();
        for e in &events {
            if entry.log.len() == EVENT_LOG_LEN {
                entry.log.pop_front();
            }
            entry.log.push_back(e.clone());
        }
        if lock(&self.deadlines).set(key, engine::deadline(&entry.session)) {
            self.wake.notify_one();
        }
        self.hub.deliver(key, &events);
        self.send_audit(key, &events);
        events
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    fn now(&self) -> Micros {
        self.clock.now()
    }

    async fn create(&self, key: &SessionKey, build: BuildFn<'_>) -> Result<Arc<Event>, StoreError> {
        let _span = commit_span();
        let mut shard = self.shard(key);
        if let Some(existing) = self.live(&mut shard, key) {
            return Err(StoreError::AlreadyExists(Box::new(
                existing.session.clone(),
            )));
        }
        let (session, event) = build(self.now())?;
        let limit = self.settings.max_sessions;
        if self.held.fetch_add(1, Ordering::Relaxed) >= limit {
            self.held.fetch_sub(1, Ordering::Relaxed);
            return Err(StoreError::Full { limit });
        }
        let mut entry = Stored {
            session,
            log: VecDeque::new(),
            expires_at: 0,
        };
        let mut events = self.commit(key, &mut entry, vec![event]);
        shard.expiry.insert((entry.expires_at, key.clone()));
        lock(&self.lists)
            .entry(key.tenant.clone())
            .or_default()
            .insert(ListPosition::of(&entry.session));
        shard.sessions.insert(key.clone(), entry);
        Ok(events.remove(0))
    }

    async fn get(&self, key: &SessionKey) -> Result<Session, StoreError> {
        self.live(&mut self.shard(key), key)
            .map(|e| e.session.clone())
            .ok_or(StoreError::NotFound)
    }

    async fn update(&self, key: &SessionKey, f: Change) -> Result<Applied, StoreError> {
        let _span = commit_span();
        let mut shard = self.shard(key);
        let entry = self.live(&mut shard, key).ok_or(StoreError::NotFound)?;
        let applied = f(&entry.session, self.now())?;
        if !applied.events.is_empty() {
            let was = entry.expires_at;
            entry.session = applied.session.clone();
            self.commit(key, entry, applied.events.clone());
            let now = entry.expires_at;
            if now != was {
                shard.expiry.remove(&(was, key.clone()));
                shard.expiry.insert((now, key.clone()));
            }
        }
        Ok(applied)
    }

    async fn delete(&self, key: &SessionKey) -> Result<Arc<Event>, StoreError> {
        let _span = commit_span();
        let mut shard = self.shard(key);
        self.live(&mut shard, key).ok_or(StoreError::NotFound)?;
        let entry = self.forget(&mut shard, key).ok_or(StoreError::NotFound)?;
        let event = Arc::new(engine::deleted_event(&entry.session, self.now()));
        self.hub.deliver(key, std::slice::from_ref(&event));
        self.send_audit(key, std::slice::from_ref(&event));
        Ok(event)
    }

    async fn list(
        &self,
        tenant: &Tenant,
        after: Option<&ListPosition>,
        limit: usize,
    ) -> Result<Listed, StoreError> {
        // One more than asked for tells whether there is more.
        let mut positions: Vec<ListPosition> = {
            let lists = lock(&self.lists);
            let Some(list) = lists.get(tenant) else {
                return Ok(Listed::default());
            };
            let upper = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.clone()));
            list.range((Bound::Unbounded, upper))
                .rev()
                .take(limit.saturating_add(1))
                .cloned()
                .collect()
        };
        let more = positions.len() > limit;
        positions.truncate(limit);
        let mut sessions = Vec::with_capacity(positions.len());
        for pos in &positions {
            let key = SessionKey {
                tenant: tenant.clone(),
                id: pos.id.clone(),
            };
            // Deleted since the copy, or expired (forgotten here): not listed.
            if let Some(e) = self.live(&mut self.shard(&key), &key)
                && e.session.created_at == pos.created_at
            {
                sessions.push(e.session.clone());
            }
        }
        Ok(Listed {
            sessions,
            examined: positions.len(),
            last: positions.pop(),
            more,
        })
    }

    async fn events_after(&self, key: &SessionKey, after: u64) -> Result<Replay, StoreError> {
        let mut shard = self.shard(key);
        let entry = self.live(&mut shard, key).ok_or(StoreError::NotFound)?;
        if after >= entry.session.version {
            return Ok(Replay::Events(Vec::new()));
        }
        match entry.log.front() {
            Some(first) if first.version <= after + 1 => Ok(Replay::Events(
                entry
                    .log
                    .iter()
                    .filter(|e| e.version > after)
                    .cloned()
                    .collect(),
            )),
            _ => Ok(Replay::Truncated),
        }
    }

    /// Claims carry lease 0: a claim lives only in this process's timers.
    async fn claim_due_at_most(&self, max: usize) -> Result<Vec<Claim>, StoreError> {
        let now = self.now();
        let mut deadlines = lock(&self.deadlines);
        let mut due = Vec::new();
        while let Some((d, _)) = deadlines.by_time.first() {
            if due.len() >= max {
                break;
            }
            if *d > now {
                break;
            }
            if let Some((_, key)) = deadlines.by_time.pop_first() {
                deadlines.by_key.remove(&key);
                due.push(Claim { key, lease: 0 });
            }
        }
        Ok(due)
    }

    async fn release(&self, _claim: &Claim) -> Result<(), StoreError> {
        // claim_due already took the key out of the index.
        Ok(())
    }

    async fn next_deadline(&self) -> Result<Option<Micros>, StoreError> {
        Ok(lock(&self.deadlines).by_time.first().map(|(d, _)| *d))
    }

    fn deadline_wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Frees the expired sessions.
    async fn maintain(&self) {
        self.sweep();
    }
}

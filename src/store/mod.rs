//! Where sessions live: the `SessionStore` trait and its engines. A store
//! owns "now" (its clock), commits versioned changes atomically (state + event
//! log + deadline index + publish), replays its event log, and hands due
//! deadlines to the timers. Knows the engine; never tonic or diesel.
//!
//! Engines: [`memory`] (one process, nothing to install) and [`redis`] (any
//! number of replicas sharing one Redis). Same behaviour, same tests.

pub mod audit_outbox;
pub mod clock;
pub mod memory;
pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;

use crate::engine::{
    self, Applied, Event, Micros, Request, RuleError, Session, SessionId, SessionKey, Tenant,
};

/// One committed version on its way to the audit trail.
#[derive(Clone, Debug)]
pub struct AuditRecord {
    pub tenant: Tenant,
    pub event: Arc<Event>,
}

/// How many events a session's log retains for `Subscribe{from_version}` replay.
pub const EVENT_LOG_LEN: usize = 256;

/// Builds a new session at the store's `now`.
pub type BuildFn<'a> = &'a (dyn Fn(Micros) -> Result<(Session, Event), RuleError> + Send + Sync);

/// A pure change of an existing session at the store's `now`; may be
/// retried, and may run in another task than the caller's (a group commit).
pub type Change = Arc<dyn Fn(&Session, Micros) -> Result<Applied, RuleError> + Send + Sync>;

/// The usual change: the engine applying `request`.
pub fn apply(request: Request) -> Change {
    Arc::new(move |s, now| engine::apply(s, &request, now))
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("session not found")]
    NotFound,
    /// The id is taken; carries the existing session (for create idempotency).
    #[error("session already exists")]
    AlreadyExists(Box<Session>),
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// Write conflicts kept winning past the retry budget.
    #[error("too many concurrent writes")]
    Conflict,
    /// The store holds as many sessions as it may (the memory engine's
    /// `SYNCKAIROS_MEMORY_MAX_SESSIONS`); a create may succeed once some end
    /// and expire, or are deleted.
    #[error("the store holds its most sessions ({limit})")]
    Full { limit: usize },
    /// The backing store cannot be reached; the detail is for logs only.
    /// A write that fails so applied nothing.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A write went out but its answer was lost, and reading back could not
    /// tell whether it applied (the Redis engine); the detail is for logs only.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
}

/// A due deadline the timers took (`claim_due`), to fire and, when the
/// firing commits nothing, to hand back with `release`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub key: SessionKey,
    /// Which claim of the session this is. The Redis engine: the end of its
    /// lease (its score in the in-flight ZSET, Redis `TIME` in µs; the same
    /// for every claim of one bucket's round), so that a release drops this
    /// claim and never a newer one of the same session. The memory engine: 0
    /// (its claims never outlive the process that took them).
    pub lease: Micros,
}

/// What the event log can say about the versions after `v`.
#[derive(Debug)]
pub enum Replay {
    /// Every event after `v`, in order (empty: `v` is the latest).
    Events(Vec<Arc<Event>>),
    /// The log no longer reaches back to `v + 1`.
    Truncated,
}

/// A place in a tenant's listing (ListSessions): sessions are ordered by
/// `created_at`, then `id`, and listed from the greatest down (newest first).
/// One session incarnation has one place: a session recreated under the same
/// id after it was deleted or expired has a later `created_at`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ListPosition {
    pub created_at: Micros,
    pub id: SessionId,
}

impl ListPosition {
    pub fn of(s: &Session) -> Self {
        Self {
            created_at: s.created_at,
            id: s.id.clone(),
        }
    }
}

/// What one `SessionStore::list` call examined of a tenant's listing index.
#[derive(Debug, Default)]
pub struct Listed {
    /// The live sessions among the examined entries, in listing order, as
    /// `get` would return them (read from their states, not from the index).
    pub sessions: Vec<Session>,
    /// How many index entries were examined, live or not.
    pub examined: usize,
    /// The last entry examined (live or not): the next call resumes after it.
    pub last: Option<ListPosition>,
    /// Whether the index may hold entries after `last`.
    pub more: bool,
}

#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// The store's authoritative clock, in microseconds since the Unix epoch.
    fn now(&self) -> Micros;

    /// Creates a session; `AlreadyExists` with the current one if the id is taken.
    async fn create(&self, key: &SessionKey, build: BuildFn<'_>) -> Result<Arc<Event>, StoreError>;

    async fn get(&self, key: &SessionKey) -> Result<Session, StoreError>;

    /// Loads, applies `f` at the store's now, and commits its events atomically
    /// (nothing is written when `f` returns no events).
    async fn update(&self, key: &SessionKey, f: Change) -> Result<Applied, StoreError>;

    /// `update` of several sessions with one `f`; one result per key, in
    /// order (a key given twice is applied twice, one after the other). Sessions with the same `batch_of` may share one commit
    /// (the Redis engine: one WATCH/MULTI per bucket); this default applies
    /// them one by one.
    async fn update_many(
        &self,
        keys: &[SessionKey],
        f: Change,
    ) -> Vec<Result<Applied, StoreError>> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.update(key, f.clone()).await);
        }
        out
    }

    /// Which sessions `update_many` can commit together (equal values).
    fn batch_of(&self, _key: &SessionKey) -> u32 {
        0
    }

    /// Removes the session and publishes its DELETED event.
    async fn delete(&self, key: &SessionKey) -> Result<Arc<Event>, StoreError>;

    /// Examines at most `limit` entries of `tenant`'s listing index, in
    /// listing order (newest first), after `after` (from the newest when
    /// `None`), and returns the sessions among them that still exist: an
    /// entry of a session deleted or gone by its TTL is skipped (and dropped
    /// from the index), never listed. Never scans the keyspace: the Redis
    /// engine keeps one index per tenant and bucket, written in the commits
    /// that create and delete sessions (`redis/list.rs`).
    async fn list(
        &self,
        tenant: &Tenant,
        after: Option<&ListPosition>,
        limit: usize,
    ) -> Result<Listed, StoreError>;

    /// The retained events after version `after`.
    async fn events_after(&self, key: &SessionKey, after: u64) -> Result<Replay, StoreError>;

    /// Takes at most `max` of the sessions whose deadline is at or before
    /// now out of the deadline index, for the timers to fire (the rest stay
    /// due for a later round). The Redis engine moves them to the bucket's
    /// in-flight ZSET under a lease (another replica may take them once it
    /// ends; at most 512 per bucket a round, `max` shared out between the
    /// buckets); the memory engine just removes them (the next commit of the
    /// session indexes its deadline again).
    async fn claim_due_at_most(&self, max: usize) -> Result<Vec<Claim>, StoreError>;

    /// `claim_due_at_most` with no bound but the engine's own.
    async fn claim_due(&self) -> Result<Vec<Claim>, StoreError> {
        self.claim_due_at_most(usize::MAX).await
    }

    /// Drops `claim` after a firing that needed no commit ("not due", "gone";
    /// a firing that commits a timeout drops its claim in that commit). The
    /// Redis engine drops the session's in-flight entry only while it is
    /// still this claim's (same lease): if the session's deadline moved, came
    /// due and was claimed again meanwhile, that newer claim stays. The
    /// memory engine has nothing to drop.
    async fn release(&self, claim: &Claim) -> Result<(), StoreError>;

    /// The earliest deadline this store knows of.
    async fn next_deadline(&self) -> Result<Option<Micros>, StoreError>;

    /// Notified when a commit sets a deadline earlier than the known head.
    fn deadline_wake(&self) -> Arc<tokio::sync::Notify>;

    /// Whether the store can serve right now (for health).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Periodic upkeep (about once a second), e.g. re-measuring the clock offset.
    async fn maintain(&self) {}
}

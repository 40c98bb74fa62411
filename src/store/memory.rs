//! The in-process engine: sessions in sharded maps, one process, nothing to
//! install. A commit (state + event log + deadline index + local publish)
//! happens under the session's shard lock, so it is atomic and every
//! subscriber sees versions in order.
//!
//! Why std `Mutex` and not tokio's: the critical section is a pure engine call
//! and a few map writes — microseconds, never an `.await` (mini-redis, db.rs).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::sync::{Notify, mpsc};

use super::clock::Clock;
use super::{AuditRecord, BuildFn, Change, Claim, EVENT_LOG_LEN, Replay, SessionStore, StoreError};
use crate::engine::{self, Applied, Event, Micros, Session, SessionKey};
use crate::fanout::Hub;

/// Shards spread lock contention across sessions; 64 is plenty for 2–64 cores.
const SHARDS: usize = 64;

/// A session as this engine holds it: its state and its retained log.
struct Stored {
    session: Session,
    log: VecDeque<Arc<Event>>,
}

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
    shards: Vec<Mutex<HashMap<SessionKey, Stored>>>,
    hasher: RandomState,
    deadlines: Mutex<Deadlines>,
    wake: Arc<Notify>,
    hub: Arc<Hub>,
    /// Where committed events go for the audit trail (when it is on).
    audit: Option<mpsc::UnboundedSender<AuditRecord>>,
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
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            deadlines: Mutex::new(Deadlines::default()),
            wake: Arc::new(Notify::new()),
            hub,
            audit: None,
        }
    }

    /// Feeds every committed event to `audit` (the audit writer's channel).
    /// Unbounded on purpose: a commit never waits on the audit, and the
    /// writer keeps up far beyond the engine's commit rate.
    pub fn with_audit(mut self, audit: mpsc::UnboundedSender<AuditRecord>) -> Self {
        self.audit = Some(audit);
        self
    }

    fn send_audit(&self, key: &SessionKey, events: &[Arc<Event>]) {
        if let Some(audit) = &self.audit {
            for e in events {
                let _ = audit.send(AuditRecord {
                    tenant: key.tenant.clone(),
                    event: e.clone(),
                });
            }
        }
    }

    fn shard(&self, key: &SessionKey) -> MutexGuard<'_, HashMap<SessionKey, Stored>> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        lock(&self.shards[i])
    }

    /// Appends to the log, indexes the deadline and publishes — all while the
    /// caller holds the shard lock.
    fn commit(&self, key: &SessionKey, entry: &mut Stored, events: Vec<Event>) -> Vec<Arc<Event>> {
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
        let mut shard = self.shard(key);
        if let Some(existing) = shard.get(key) {
            return Err(StoreError::AlreadyExists(Box::new(
                existing.session.clone(),
            )));
        }
        let (session, event) = build(self.now())?;
        let mut entry = Stored {
            session,
            log: VecDeque::new(),
        };
        let mut events = self.commit(key, &mut entry, vec![event]);
        shard.insert(key.clone(), entry);
        Ok(events.remove(0))
    }

    async fn get(&self, key: &SessionKey) -> Result<Session, StoreError> {
        self.shard(key)
            .get(key)
            .map(|e| e.session.clone())
            .ok_or(StoreError::NotFound)
    }

    async fn update(&self, key: &SessionKey, f: Change) -> Result<Applied, StoreError> {
        let mut shard = self.shard(key);
        let entry = shard.get_mut(key).ok_or(StoreError::NotFound)?;
        let applied = f(&entry.session, self.now())?;
        if !applied.events.is_empty() {
            entry.session = applied.session.clone();
            self.commit(key, entry, applied.events.clone());
        }
        Ok(applied)
    }

    async fn delete(&self, key: &SessionKey) -> Result<Arc<Event>, StoreError> {
        let mut shard = self.shard(key);
        let entry = shard.remove(key).ok_or(StoreError::NotFound)?;
        lock(&self.deadlines).set(key, None);
        let event = Arc::new(engine::deleted_event(&entry.session, self.now()));
        self.hub.deliver(key, std::slice::from_ref(&event));
        self.send_audit(key, std::slice::from_ref(&event));
        Ok(event)
    }

    async fn events_after(&self, key: &SessionKey, after: u64) -> Result<Replay, StoreError> {
        let shard = self.shard(key);
        let entry = shard.get(key).ok_or(StoreError::NotFound)?;
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
}

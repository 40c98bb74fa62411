//! The timers under overload (issue 12): a burst of due deadlines far
//! beyond the firing slots is claimed no faster than it can be fired, with a
//! bounded number of tasks, and a deadline whose claim outlives its lease is
//! never fired twice at once by one replica. Store-level: the timers run
//! here on a store of the suite's engine (memory, or a private Redis with
//! `SYNCKAIROS_TEST_ENGINE=redis`), with no server and no other timers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::helpers::{create_started_in, store_key};
use async_trait::async_trait;
use synckairos::config::EngineKind;
use synckairos::engine::{Applied, Event, EventKind, Micros, Session, SessionKey, Status};
use synckairos::fanout::Hub;
use synckairos::store::clock::Clock;
use synckairos::store::memory::MemoryStore;
use synckairos::store::redis::{RedisSettings, RedisStore};
use synckairos::store::{BuildFn, Change, Claim, Replay, SessionStore, StoreError};
use tokio_util::sync::CancellationToken;

use crate::helpers::{shared_isolation, test_engine};
use crate::redis_server::RedisServer;

use synckairos::timers::{MAX_HELD, TimerStats};

/// A store of the suite's engine; the Redis server lives as long as it.
async fn engine_store(buckets: u32) -> (Arc<dyn SessionStore>, Option<RedisServer>) {
    match test_engine() {
        EngineKind::Memory => (
            Arc::new(MemoryStore::new(Hub::new(16, 16), Clock::new())),
            None,
        ),
        EngineKind::Redis => {
            let redis = RedisServer::start();
            let settings = RedisSettings {
                url: redis.url(),
                ca: None,
                buckets,
                session_ttl: Duration::from_secs(3600),
                idle_ttl: Duration::from_secs(3600),
                pool_size: 16,
                pool_timeout: Duration::from_millis(500),
                audit: false,
            };
            let store = RedisStore::connect(settings, Clock::new()).await.unwrap();
            (store, Some(redis))
        }
    }
}

fn key(name: &str) -> SessionKey {
    store_key(name)
}

/// Creates and starts `n` two-player sessions, white with `budget_ms`,
/// 16 at a time; returns their keys.
async fn started(store: &Arc<dyn SessionStore>, n: usize, budget_ms: i64) -> Vec<SessionKey> {
    let keys: Vec<SessionKey> = (0..n).map(|i| key(&format!("burst-{i}"))).collect();
    for chunk in keys.chunks(16) {
        let jobs = chunk.iter().map(|k| {
            let store = store.clone();
            let k = k.clone();
            async move { create_started_in(&*store, &k, ["white", "black"], budget_ms).await }
        });
        futures_util::future::join_all(jobs).await;
    }
    keys
}

/// Claims held in Redis (every bucket's in-flight ZSET), or 0 on the memory engine.
async fn in_flight(redis: Option<&mut redis::aio::MultiplexedConnection>, buckets: u32) -> usize {
    let Some(con) = redis else { return 0 };
    let mut pipe = redis::pipe();
    for b in 0..buckets {
        pipe.cmd("ZCARD").arg(format!("sk:{{{b}}}:inflight"));
    }
    let sizes: Vec<usize> = pipe.query_async(con).await.unwrap();
    sizes.iter().sum()
}

/// Asserts that every session flagged exactly once: version 3, EXPIRED,
/// and one EXPIRED event after its start.
async fn assert_each_flagged_once(store: &Arc<dyn SessionStore>, keys: &[SessionKey]) {
    for chunk in keys.chunks(32) {
        let reads = chunk.iter().map(|k| async move {
            let s = store.get(k).await.unwrap();
            let after = match store.events_after(k, 2).await.unwrap() {
                Replay::Events(events) => events,
                Replay::Truncated => panic!("{k}: log truncated"),
            };
            (k, s, after)
        });
        for (k, s, after) in futures_util::future::join_all(reads).await {
            assert_eq!((s.status, s.version), (Status::Expired, 3), "{k}");
            let kinds: Vec<EventKind> = after.iter().map(|e| e.kind).collect();
            assert_eq!(kinds, [EventKind::Expired], "{k}: flagged exactly once");
        }
    }
}

/// Waits until every session of `keys` has version 3 (or `limit` passes).
async fn wait_all_fired(store: &Arc<dyn SessionStore>, keys: &[SessionKey], limit: Duration) {
    let t0 = Instant::now();
    let mut pending: Vec<SessionKey> = keys.to_vec();
    while !pending.is_empty() {
        assert!(
            t0.elapsed() < limit,
            "{} of {} sessions not flagged within {limit:?}",
            pending.len(),
            keys.len()
        );
        let mut still = Vec::new();
        for chunk in pending.chunks(32) {
            // A read may time out on a busy pool: it is read again.
            let reads = chunk
                .iter()
                .map(|k| async move { (k, store.get(k).await.map_or(0, |s| s.version)) });
            for (k, v) in futures_util::future::join_all(reads).await {
                if v < 3 {
                    still.push(k.clone());
                }
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Issue 12: 5,000 deadlines due at the same instant (ten times what one
/// replica's firing slots take at once). The timers used to claim up to 512
/// per bucket a round and spawn a task for each, however busy the firing
/// slots were; now a round claims only what there is room to fire, so the
/// claims held (in Redis' in-flight ZSETs) and the tasks stay bounded, and
/// every session still flags exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_due_deadlines_is_claimed_no_faster_than_it_fires() {
    const SESSIONS: usize = 5_000;
    const BUCKETS: u32 = 16;
    let _iso = shared_isolation();
    let (store, redis) = engine_store(BUCKETS).await;
    let mut con = match &redis {
        Some(r) => Some(
            redis::Client::open(r.url())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap(),
        ),
        None => None,
    };
    // No timers yet: every deadline passes unfired.
    let keys = started(&store, SESSIONS, 50).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(in_flight(con.as_mut(), BUCKETS).await, 0);

    let metrics = tokio::runtime::Handle::current().metrics();
    let tasks_before = metrics.num_alive_tasks();
    let shutdown = CancellationToken::new();
    let stats = Arc::new(TimerStats::default());
    let timers = tokio::spawn(synckairos::timers::run_with_stats(
        store.clone(),
        shutdown.clone(),
        stats.clone(),
    ));
    let t0 = Instant::now();
    let (mut max_tasks, mut max_in_flight) = (0usize, 0usize);
    let done = Arc::new(AtomicBool::new(false));
    let waiter = {
        let (store, keys, done) = (store.clone(), keys.clone(), done.clone());
        tokio::spawn(async move {
            wait_all_fired(&store, &keys, Duration::from_secs(60)).await;
            done.store(true, Ordering::SeqCst);
        })
    };
    while !done.load(Ordering::SeqCst) && !waiter.is_finished() {
        max_tasks = max_tasks.max(metrics.num_alive_tasks().saturating_sub(tasks_before));
        max_in_flight = max_in_flight.max(in_flight(con.as_mut(), BUCKETS).await);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    waiter.await.unwrap();
    let took = t0.elapsed();
    println!(
        "{SESSIONS} due deadlines fired in {:.2} s; at most {} claims held, {max_in_flight} in Redis' in-flight ZSETs, {max_tasks} tasks more than before",
        took.as_secs_f64(),
        stats.max_held.load(Ordering::SeqCst)
    );
    let max_held = stats.max_held.load(Ordering::SeqCst);
    assert!(
        (1..=MAX_HELD).contains(&max_held),
        "the timers held {max_held} claims at once (bound {MAX_HELD})"
    );
    assert!(
        max_in_flight <= MAX_HELD,
        "{max_in_flight} claims in flight at once (bound {MAX_HELD})"
    );
    // The firing slots (32), the claim loop, and what the store runs beside
    // them (the Redis engine's group commits and pooled connections).
    assert!(
        max_tasks <= 100,
        "{max_tasks} tasks alive at once beyond those before the burst"
    );
    assert_each_flagged_once(&store, &keys).await;
    assert_eq!(
        in_flight(con.as_mut(), BUCKETS).await,
        0,
        "every claim settled"
    );
    shutdown.cancel();
    timers.await.unwrap();
}

/// A store that stalls its first `stalls` batch firings for `stall` (a
/// store under a pause), and records how many firings of each session ran
/// at once. Everything else goes straight to the real store.
struct StallingStore {
    inner: Arc<dyn SessionStore>,
    stalls: AtomicUsize,
    stall: Duration,
    firing: Mutex<HashMap<SessionKey, usize>>,
    /// The most firings of one session seen running at the same time.
    most_at_once: AtomicUsize,
}

impl StallingStore {
    fn enter(&self, keys: &[SessionKey]) {
        let mut firing = self.firing.lock().unwrap();
        for k in keys {
            let n = firing.entry(k.clone()).or_default();
            *n += 1;
            self.most_at_once.fetch_max(*n, Ordering::SeqCst);
        }
    }

    fn leave(&self, keys: &[SessionKey]) {
        let mut firing = self.firing.lock().unwrap();
        for k in keys {
            if let Some(n) = firing.get_mut(k) {
                *n -= 1;
            }
        }
    }
}

#[async_trait]
impl SessionStore for StallingStore {
    fn now(&self) -> Micros {
        self.inner.now()
    }
    async fn create(&self, key: &SessionKey, build: BuildFn<'_>) -> Result<Arc<Event>, StoreError> {
        self.inner.create(key, build).await
    }
    async fn get(&self, key: &SessionKey) -> Result<Session, StoreError> {
        self.inner.get(key).await
    }
    async fn update(&self, key: &SessionKey, f: Change) -> Result<Applied, StoreError> {
        let keys = std::slice::from_ref(key);
        self.enter(keys);
        let r = self.inner.update(key, f).await;
        self.leave(keys);
        r
    }
    async fn update_many(
        &self,
        keys: &[SessionKey],
        f: Change,
    ) -> Vec<Result<Applied, StoreError>> {
        self.enter(keys);
        let stalled = self
            .stalls
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if stalled {
            tokio::time::sleep(self.stall).await;
        }
        let r = self.inner.update_many(keys, f).await;
        self.leave(keys);
        r
    }
    fn batch_of(&self, key: &SessionKey) -> u32 {
        self.inner.batch_of(key)
    }
    async fn delete(&self, key: &SessionKey) -> Result<Arc<Event>, StoreError> {
        self.inner.delete(key).await
    }
    async fn list(
        &self,
        tenant: &synckairos::engine::Tenant,
        after: Option<&synckairos::store::ListPosition>,
        limit: usize,
    ) -> Result<synckairos::store::Listed, StoreError> {
        self.inner.list(tenant, after, limit).await
    }
    async fn events_after(&self, key: &SessionKey, after: u64) -> Result<Replay, StoreError> {
        self.inner.events_after(key, after).await
    }
    async fn claim_due_at_most(&self, max: usize) -> Result<Vec<Claim>, StoreError> {
        self.inner.claim_due_at_most(max).await
    }
    async fn release(&self, claim: &Claim) -> Result<(), StoreError> {
        self.inner.release(claim).await
    }
    async fn next_deadline(&self) -> Result<Option<Micros>, StoreError> {
        self.inner.next_deadline().await
    }
    fn deadline_wake(&self) -> Arc<tokio::sync::Notify> {
        self.inner.deadline_wake()
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

/// Issue 12: a deadline queued here longer than the Redis claim lease (5 s)
/// is claimed again once the lease runs out (by this replica too). It must
/// not be queued twice: one replica never fires one session twice at once,
/// and each session flags exactly once. Redis engine only (the memory
/// engine's claims have no lease); the first firings stall 6 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_outlives_its_lease_is_not_queued_twice() {
    if test_engine() != EngineKind::Redis {
        return;
    }
    const SESSIONS: usize = 40;
    let _iso = shared_isolation();
    let (real, redis) = engine_store(1).await;
    let redis = redis.expect("the redis engine");
    let keys = started(&real, SESSIONS, 50).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let store = Arc::new(StallingStore {
        inner: real.clone(),
        // Every firing of the first claim round (40 deadlines, 16 a firing).
        stalls: AtomicUsize::new(SESSIONS.div_ceil(16)),
        stall: Duration::from_secs(6),
        firing: Mutex::new(HashMap::new()),
        most_at_once: AtomicUsize::new(0),
    });
    let shutdown = CancellationToken::new();
    let stats = Arc::new(TimerStats::default());
    let timers = tokio::spawn(synckairos::timers::run_with_stats(
        store.clone() as Arc<dyn SessionStore>,
        shutdown.clone(),
        stats.clone(),
    ));
    wait_all_fired(&real, &keys, Duration::from_secs(20)).await;
    // The re-claims, once the stalled firings end, find nothing due.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        store.most_at_once.load(Ordering::SeqCst),
        1,
        "a session was fired twice at once: its lease-expired claim was queued again"
    );
    let merged = stats.merged.load(Ordering::SeqCst);
    assert!(
        merged >= SESSIONS as u64,
        "every stalled claim ran out and was claimed again here ({merged} merged)"
    );
    assert_eq!(stats.max_held.load(Ordering::SeqCst), SESSIONS);
    assert_each_flagged_once(&real, &keys).await;
    let mut con = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    assert_eq!(in_flight(Some(&mut con), 1).await, 0, "every claim settled");
    shutdown.cancel();
    timers.await.unwrap();
}

//! The memory engine's audit channel is bounded (issue 12): with Postgres
//! unreachable it fills, and then commits go on, unhindered, while their
//! events are left out of the audit and counted; once Postgres is back the
//! writer stores what the channel held and every later event. Every event
//! is either in Postgres or counted as dropped. Store-level: a memory store,
//! its outbox and the audit writer on a private database.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use synckairos::audit::source::MemorySource;
use synckairos::audit::writer::AuditLag;
use synckairos::engine;
use synckairos::fanout::Hub;
use synckairos::store::SessionStore;
use synckairos::store::audit_outbox::outbox;
use synckairos::store::clock::Clock;
use synckairos::store::memory::MemoryStore;
use tokio_util::sync::CancellationToken;

use crate::helpers::{store_key, two_player_session};
use crate::pg::TestDb;

const CAPACITY: usize = 100;

async fn create(store: &MemoryStore, name: &str) -> Duration {
    let k = store_key(name);
    let new = two_player_session(&k, ["a", "b"], 60_000);
    let t0 = Instant::now();
    store
        .create(&k, &|now| engine::create(new.clone(), now))
        .await
        .expect("a commit never fails because of the audit");
    t0.elapsed()
}

fn rows(db: &TestDb) -> u64 {
    db.sql("SELECT count(*) FROM session_events")
        .parse()
        .unwrap()
}

async fn wait_rows(db: &TestDb, lag: &AuditLag, n: u64, what: &str) {
    let t0 = Instant::now();
    db.wait_for_table("session_events", Duration::from_secs(30))
        .await;
    while rows(db) != n {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{what}: {} rows in Postgres, expected {n} (writer inserted {})",
            rows(db),
            lag.inserted.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_audit_channel_drops_counted_events_never_commits_and_the_writer_resumes() {
    const DOWN: usize = 2_000;
    let db = TestDb::create();
    let (feed, rx) = outbox(CAPACITY);
    let store = MemoryStore::new(Hub::new(16, 16), Clock::new()).with_audit(feed.clone());
    let lag = Arc::new(AuditLag::default());
    let shutdown = CancellationToken::new();
    let writer = tokio::spawn(synckairos::audit::writer::run(
        synckairos::audit::db::pool(db.url().parse().unwrap(), 4),
        Box::new(MemorySource::new(rx)),
        lag.clone(),
        || 0,
        shutdown.clone(),
    ));
    for i in 0..5 {
        create(&store, &format!("up-{i}")).await;
    }
    wait_rows(&db, &lag, 5, "Postgres up").await;

    db.refuse_connections();
    let mut slowest = Duration::ZERO;
    let t0 = Instant::now();
    for i in 0..DOWN {
        slowest = slowest.max(create(&store, &format!("down-{i}")).await);
    }
    let took = t0.elapsed();
    let dropped = feed.dropped();
    println!(
        "Postgres down: {DOWN} commits in {:.0} ms (slowest {:.2} ms), {dropped} events left out of the audit, {} waiting (capacity {CAPACITY}), {} in the writer's held batch",
        took.as_secs_f64() * 1e3,
        slowest.as_secs_f64() * 1e3,
        feed.queued(),
        DOWN as u64 - dropped - feed.queued() as u64
    );
    assert!(
        slowest < Duration::from_millis(100),
        "a commit waited {slowest:?} on the audit"
    );
    assert!(
        feed.queued() <= CAPACITY,
        "{} events waiting, beyond the capacity {CAPACITY}",
        feed.queued()
    );
    // The writer holds the one batch it took when Postgres failed it (what it
    // drained at that moment); the channel holds CAPACITY more; the rest is
    // counted, and below every event is accounted for exactly.
    assert!(
        dropped > 0 && dropped + (CAPACITY as u64) < DOWN as u64,
        "{dropped} of {DOWN} events counted as dropped with a channel of {CAPACITY}"
    );
    assert_eq!(lag.inserted.load(Ordering::Relaxed), 5, "Postgres was down");

    db.allow_connections();
    let stored = 5 + DOWN as u64 - dropped;
    wait_rows(&db, &lag, stored, "Postgres back").await;
    // The writer goes on as usual, and the channel takes events again.
    for i in 0..5 {
        create(&store, &format!("after-{i}")).await;
    }
    wait_rows(&db, &lag, stored + 5, "after the outage").await;
    assert_eq!(feed.dropped(), dropped, "nothing dropped once it drained");
    let after = db.sql("SELECT count(*) FROM session_events WHERE session_id LIKE 'after-%'");
    assert_eq!(after, "5");
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
}

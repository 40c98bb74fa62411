//! Sessions do not live forever (issue 12, SPEC §8 TTL), on either engine:
//! one that has not ended is gone `SYNCKAIROS_IDLE_TTL` after its last change
//! or its deadline, whichever is later; an ended one `SYNCKAIROS_SESSION_TTL`
//! after it ended. The memory engine also frees what it held (its sweep), and
//! holds at most `SYNCKAIROS_MEMORY_MAX_SESSIONS`.

use std::sync::Arc;
use std::time::Duration;

use synckairos::engine::{
    self, Command, Mode, NewParticipant, NewSession, ParticipantId, Request, SessionId, SessionKey,
    Tenant,
};
use synckairos::fanout::Hub;
use synckairos::grpc::pb;
use synckairos::store::clock::Clock;
use synckairos::store::memory::{MemorySettings, MemoryStore};
use synckairos::store::{self, SessionStore, StoreError};
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::*;

/// The TTLs of these tests: short enough to wait for.
const TTL: Duration = Duration::from_millis(1_000);

/// Issue 12: the memory engine kept every session forever. Left alone, a
/// session is gone after its TTL for every call; a change keeps it; one
/// that ended is gone `SYNCKAIROS_SESSION_TTL` after it ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_left_alone_is_gone_after_its_ttl() {
    let mut app = spawn_app_with(|c| {
        c.idle_ttl = TTL;
        c.session_ttl = TTL;
    })
    .await;
    let c = &mut app.client;
    let idle = create_chess(c).await.session_id;
    let kept = create_chess(c).await.session_id;
    // Ends (EXPIRED) 300 ms after its start, then is kept TTL more.
    let mut req = chess(&unique_id("ended"), HOUR_MS);
    req.participants[0].initial_time_ms = Some(300);
    let ended = create(c, req).await.session_id;
    start(c, &ended).await;

    tokio::time::sleep(TTL * 7 / 10).await;
    // A change: kept until its deadline (an hour away) and TTL more.
    start(c, &kept).await;
    assert_eq!(get(c, &idle).await.version, 1, "not yet");
    assert_eq!(status_of(&get(c, &ended).await), pb::Status::Expired);

    tokio::time::sleep(TTL * 5 / 10).await;
    assert_status(
        c.get_session(pb::GetSessionRequest {
            session_id: idle.clone(),
        })
        .await,
        Code::NotFound,
        "session not found",
    );
    assert_code(c.subscribe(subscribe_req(&idle)).await, Code::NotFound);
    assert_code(c.switch_cycle(switch_req(&idle)).await, Code::NotFound);
    assert_eq!(status_of(&get(c, &kept).await), pb::Status::Running);
    // Ended at about 0.3 s; kept until about 1.3 s.
    tokio::time::sleep(TTL * 4 / 10).await;
    assert_code(
        c.get_session(pb::GetSessionRequest {
            session_id: ended.clone(),
        })
        .await,
        Code::NotFound,
    );
    assert_eq!(get(c, &kept).await.version, 2);
    // The id is free again.
    assert_eq!(create(c, chess(&idle, HOUR_MS)).await.version, 1);
}

fn key(name: &str) -> SessionKey {
    SessionKey {
        tenant: Tenant::default_tenant(),
        id: SessionId::parse("id", name).unwrap(),
    }
}

fn two_players(k: &SessionKey, budget_ms: i64) -> NewSession {
    let players = ["a", "b"]
        .map(|p| NewParticipant::named(ParticipantId::parse("p", p).unwrap()))
        .to_vec();
    NewSession {
        initial_time_ms: budget_ms,
        ..NewSession::new(k.id.clone(), Mode::PerParticipant, players)
    }
}

fn memory_store(ttl: Duration, max_sessions: usize) -> MemoryStore {
    MemoryStore::new(Hub::new(16, 16), Clock::new()).with_settings(MemorySettings {
        session_ttl: ttl,
        idle_ttl: ttl,
        max_sessions,
    })
}

/// The memory engine frees what expired: its sweep (`maintain`, about once
/// a second) drops the states, logs and deadlines of the sessions whose
/// TTL ran out, untouched or not, and keeps the others.
#[tokio::test]
async fn the_memory_engines_sweep_frees_expired_sessions_and_their_deadlines() {
    let store = memory_store(Duration::from_millis(200), 10_000);
    let mut doomed = Vec::new();
    for i in 0..1_000 {
        let k = key(&format!("swept-{i}"));
        let new = two_players(&k, 50);
        store
            .create(&k, &|now| engine::create(new.clone(), now))
            .await
            .unwrap();
        if i % 100 == 0 {
            // A deadline 50 ms on; no timers run here, so it never fires.
            store
                .update(
                    &k,
                    store::apply(Request::new(Command::Start { first: None })),
                )
                .await
                .unwrap();
        }
        doomed.push(k);
    }
    assert_eq!(store.held_sessions(), 1_000);
    assert!(store.next_deadline().await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(150)).await;
    let survivor = key("survivor");
    let new = two_players(&survivor, 60_000);
    store
        .create(&survivor, &|now| engine::create(new.clone(), now))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;

    // Nobody read them: only the sweep can free them.
    store.maintain().await;
    assert_eq!(
        store.held_sessions(),
        1,
        "the expired sessions are freed, the survivor kept"
    );
    assert_eq!(
        store.next_deadline().await.unwrap(),
        None,
        "their deadlines are gone too"
    );
    assert!(store.claim_due().await.unwrap().is_empty());
    for k in &doomed {
        assert!(
            matches!(store.get(k).await, Err(StoreError::NotFound)),
            "{k}"
        );
    }
    assert_eq!(store.get(&survivor).await.unwrap().version, 1);
}

/// The memory engine holds at most `SYNCKAIROS_MEMORY_MAX_SESSIONS`: one more
/// CreateSession is `RESOURCE_EXHAUSTED` with a `RetryInfo`, and succeeds
/// once a session is deleted or has expired. Memory engine only (the Redis
/// engine's bound is Redis' own `maxmemory`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_engine_holds_at_most_its_maximum_of_sessions() {
    if test_engine() != synckairos::config::EngineKind::Memory {
        return;
    }
    let mut app = spawn_app_with(|c| {
        c.memory_max_sessions = 3;
        c.idle_ttl = TTL;
    })
    .await;
    let c = &mut app.client;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(create_chess(c).await.session_id);
    }
    let refused = assert_status(
        c.create_session(chess(&unique_id("one-more"), HOUR_MS))
            .await,
        Code::ResourceExhausted,
        "limit 3",
    );
    let retry = refused.get_details_retry_info().expect("a RetryInfo");
    assert_eq!(retry.retry_delay, Some(Duration::from_secs(1)));
    // An idempotent retry of an existing id is still ALREADY_EXISTS.
    assert_code(
        c.create_session(chess(&ids[0], HOUR_MS)).await,
        Code::AlreadyExists,
    );
    c.delete_session(pb::DeleteSessionRequest {
        session_id: ids.remove(0),
    })
    .await
    .unwrap();
    ids.push(create_chess(c).await.session_id);
    assert_code(
        c.create_session(chess(&unique_id("one-more"), HOUR_MS))
            .await,
        Code::ResourceExhausted,
    );
    // Once they expire (and the sweep, once a second, frees them) there is room.
    tokio::time::sleep(TTL + Duration::from_millis(1_200)).await;
    for _ in 0..3 {
        create_chess(c).await;
    }
}

/// The bound is exact under concurrent creates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_never_exceed_the_memory_engines_maximum() {
    let store = Arc::new(memory_store(Duration::from_secs(3600), 100));
    let creates = (0..400).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            let k = key(&format!("race-{i}"));
            let new = two_players(&k, 60_000);
            store
                .create(&k, &|now| engine::create(new.clone(), now))
                .await
        })
    });
    let mut made = 0;
    for r in futures_util::future::join_all(creates).await {
        match r.unwrap() {
            Ok(_) => made += 1,
            Err(StoreError::Full { limit: 100 }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((made, store.held_sessions()), (100, 100));
}

//! The remembered request ids (issue 12): idempotency needs the last 64 in
//! the stored state, read by the commit, and nowhere else. No event carries
//! them: not the log entry, the audit stream entry or its Postgres row, the
//! Pub/Sub message, nor the stream to clients. A retried `request_id` is
//! still answered as applied, on both engines and from another replica, and
//! a state with the ids inline (as the release before wrote it) keeps them.
//!
//!   CARGO_TARGET_DIR=... cargo test --test api request_ids -- --nocapture

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use synckairos::engine::{self, Command, Request, RequestId, SessionId, SessionKey, Tenant};
use synckairos::grpc::pb;
use synckairos::store::clock::Clock;
use synckairos::store::redis::RedisStore;
use synckairos::store::{self, SessionStore};

use crate::helpers::*;
use crate::pg::TestDb;
use crate::redis_server::RedisServer;

/// The engine remembers this many request ids (`engine::REMEMBERED_REQUESTS`).
const REMEMBERED: usize = engine::REMEMBERED_REQUESTS;

fn with_rid(command: Command, rid: &str) -> Request {
    Request {
        request_id: Some(RequestId::parse("request_id", rid).unwrap()),
        ..Request::new(command)
    }
}

fn switch() -> Command {
    Command::Switch {
        from: None,
        next: None,
        lag_ms: None,
    }
}

/// Whether `bytes` contains `needle`.
fn mentions(bytes: &[u8], needle: &str) -> bool {
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// A two-player session started on `store` (version 2).
async fn started(store: &RedisStore, key: &SessionKey) {
    create_started_in(store, key, ["white", "black"], 3_600_000).await;
}

async fn connection(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Every value of every entry of the stream `key`.
async fn stream_values(con: &mut redis::aio::MultiplexedConnection, key: &str) -> Vec<Vec<u8>> {
    type Entries = Vec<(String, Vec<(String, Vec<u8>)>)>;
    let entries: Entries = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(con)
        .await
        .unwrap();
    entries
        .into_iter()
        .flat_map(|(_, fields)| fields.into_iter().map(|(_, v)| v))
        .collect()
}

/// On a private Redis, two replicas (stores) with the audit stream on: a
/// switch with a request id stores the id in the state only; its log entry,
/// audit entry and Pub/Sub message do not carry it; the other replica
/// answers a retry of it as applied. Also measures one event's bytes with
/// 64 remembered ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_stay_in_the_redis_state_and_out_of_every_event() {
    let _iso = shared_isolation();
    let redis = RedisServer::start();
    let settings = synckairos::store::redis::RedisSettings {
        audit: true,
        ..crate::replicas::store_settings(&redis.url(), 1, 2)
    };
    let a = RedisStore::connect(settings.clone(), Clock::new())
        .await
        .unwrap();
    let b = RedisStore::connect(settings, Clock::new()).await.unwrap();
    let key = SessionKey {
        tenant: Tenant::default_tenant(),
        id: SessionId::parse("id", "rid-game").unwrap(),
    };
    started(&a, &key).await;

    let client = redis::Client::open(redis.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(a.channel_of(&key)).await.unwrap();
    let mut messages = pubsub.into_on_message();

    // 64 switches, each with its own id (a UUID, as clients send them).
    let rids: Vec<String> = (0..REMEMBERED)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    for (i, rid) in rids.iter().enumerate() {
        let replica = if i % 2 == 0 { &a } else { &b };
        let applied = replica
            .update(&key, store::apply(with_rid(switch(), rid)))
            .await
            .unwrap();
        assert_eq!(applied.session.version, 3 + i as u64);
    }
    let last = rids.last().unwrap();

    let mut con = connection(&redis).await;
    let state: Vec<u8> = redis::cmd("GET")
        .arg("sk:{0}:s:default:rid-game")
        .query_async(&mut con)
        .await
        .unwrap();
    let log = stream_values(&mut con, "sk:{0}:log:default:rid-game").await;
    let audit = stream_values(&mut con, "sk:{0}:audit").await;
    let mut published = Vec::new();
    while published.len() < REMEMBERED {
        let msg = tokio::time::timeout(PROMPT, messages.next())
            .await
            .expect("a Pub/Sub message")
            .expect("the subscription is open");
        published.push(msg.get_payload_bytes().to_vec());
    }
    let last_event = log.last().unwrap();
    println!(
        "one SWITCHED event of a 2-player session with {REMEMBERED} remembered ids: \
         {} bytes (state: {} bytes)",
        last_event.len(),
        state.len()
    );

    for rid in &rids {
        assert!(mentions(&state, rid), "the state remembers {rid}");
    }
    assert_eq!(log.len(), 2 + REMEMBERED, "every version in the log");
    assert!(audit.len() >= 2 + REMEMBERED, "every version audited");
    for (what, entries) in [("log", &log), ("audit", &audit), ("Pub/Sub", &published)] {
        for (i, bytes) in entries.iter().enumerate() {
            for rid in &rids {
                assert!(
                    !mentions(bytes, rid),
                    "{what} entry {i} carries the request id {rid} ({} bytes)",
                    bytes.len()
                );
            }
        }
    }

    // A retry on either replica is recognised: nothing applies again.
    for replica in [&b, &a] {
        let again = replica
            .update(&key, store::apply(with_rid(switch(), last)))
            .await
            .unwrap();
        assert!(again.events.is_empty(), "a retry applied again");
        assert_eq!(again.session.version, 2 + REMEMBERED as u64);
    }
    // The oldest of the 64 is still remembered too.
    let again = b
        .update(&key, store::apply(with_rid(switch(), &rids[0])))
        .await
        .unwrap();
    assert!(again.events.is_empty(), "the oldest id was forgotten");
}

/// A state as the release before wrote it, the ids inline in the session's
/// JSON (here in the middle of it): the commit still reads them, so a
/// retry of one is answered as applied after a rolling deploy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_with_its_ids_inline_keeps_them() {
    let _iso = shared_isolation();
    let redis = RedisServer::start();
    let store = RedisStore::connect(
        crate::replicas::store_settings(&redis.url(), 1, 2),
        Clock::new(),
    )
    .await
    .unwrap();
    let key = SessionKey {
        tenant: Tenant::default_tenant(),
        id: SessionId::parse("id", "old-state").unwrap(),
    };
    started(&store, &key).await;
    let state_key = "sk:{0}:s:default:old-state";
    let mut con = connection(&redis).await;
    let raw: Vec<u8> = redis::cmd("GET")
        .arg(state_key)
        .query_async(&mut con)
        .await
        .unwrap();
    let mut old: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    old["recent_requests"] = serde_json::json!(["old-1", "old-2"]);
    let old = serde_json::to_vec(&old).unwrap();
    assert!(!old.ends_with(b"]}"), "the ids are not the last field here");
    let _: () = redis::cmd("SET")
        .arg(state_key)
        .arg(&old)
        .arg("KEEPTTL")
        .query_async(&mut con)
        .await
        .unwrap();

    let again = store
        .update(&key, store::apply(with_rid(switch(), "old-2")))
        .await
        .unwrap();
    assert!(
        again.events.is_empty(),
        "old-2 was applied before the deploy"
    );
    assert_eq!(again.session.version, 2);
    let applied = store
        .update(&key, store::apply(with_rid(switch(), "new-1")))
        .await
        .unwrap();
    assert_eq!(applied.session.version, 3);
    let remembered: Vec<&str> = applied
        .session
        .recent_requests
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(remembered, ["old-1", "old-2", "new-1"]);
}

/// Through the API, on the suite's engine with the audit on: a retried
/// request_id is answered as applied (the session switched once), and no
/// audit row's snapshot in Postgres carries the id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_id_applies_once_and_no_audit_row_carries_it() {
    let db = TestDb::create();
    let url = db.url();
    let mut app =
        spawn_app_with(|c| c.database_url = Some(synckairos::config::Secret::new(url))).await;
    let s = create_started(&mut app.client).await;
    let rid = uuid::Uuid::new_v4().to_string();
    let req = pb::SwitchCycleRequest {
        request_id: rid.clone(),
        ..switch_req(&s.session_id)
    };
    let first = app
        .client
        .switch_cycle(req.clone())
        .await
        .unwrap()
        .into_inner();
    let again = app.client.switch_cycle(req).await.unwrap().into_inner();
    assert_eq!(first.version, 3);
    assert_eq!(again.version, 3, "the retry switched again");
    assert_eq!(get(&mut app.client, &s.session_id).await.version, 3);

    let deadline = Instant::now() + Duration::from_secs(10);
    let count = |filter: &str| {
        db.sql(&format!(
            "SELECT count(*) FROM session_events WHERE session_id = '{}'{filter}",
            s.session_id
        ))
    };
    while db.sql("SELECT to_regclass('public.session_events') IS NOT NULL") != "t"
        || count("") != "3"
    {
        assert!(Instant::now() < deadline, "the audit never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        count(&format!(" AND snapshot::text LIKE '%{rid}%'")),
        "0",
        "an audit row's snapshot carries the request id"
    );
}

/// Issue 15, item 6: a CreateSession without a session_id, retried with its
/// request_id (its answer was lost), finds the session the first call made
/// instead of making a second one; without a request_id each call makes its
/// own. The name is a UUID either way.
#[tokio::test]
async fn an_unnamed_create_retried_with_its_request_id_makes_one_session() {
    let mut app = spawn_app().await;
    let unnamed = |rid: &str| pb::CreateSessionRequest {
        session_id: String::new(),
        request_id: rid.into(),
        ..chess("ignored", 60_000)
    };
    let rid = unique_id("create-rid");
    let first = create(&mut app.client, unnamed(&rid)).await;
    let again = create(&mut app.client, unnamed(&rid)).await;
    assert_eq!(first.session_id, again.session_id);
    assert_eq!((first.version, again.version), (1, 1));
    assert_eq!(first.epoch, again.epoch, "the same session, not a new one");
    assert!(
        uuid::Uuid::parse_str(&first.session_id).is_ok(),
        "{}",
        first.session_id
    );
    // Another request id, or none: another session.
    let other = create(&mut app.client, unnamed(&unique_id("create-rid"))).await;
    let plain_a = create(&mut app.client, unnamed("")).await;
    let plain_b = create(&mut app.client, unnamed("")).await;
    let ids = [&first, &other, &plain_a, &plain_b].map(|s| s.session_id.clone());
    let distinct: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), 4, "{ids:?}");
}

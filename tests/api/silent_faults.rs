//! Silent faults under Subscribe (issue 12): a Pub/Sub connection that a
//! proxy stops forwarding without closing it, a reconnect with many streams
//! on few sessions (one log read per session, not one per stream), a session
//! that expires by TTL, and a session id reused under a new epoch.
//!
//! The Pub/Sub tests run on the redis engine whatever `SYNCKAIROS_TEST_ENGINE`
//! says (the memory engine has no Pub/Sub); the epoch test runs on the
//! suite's engine, and the TTL test on redis, and on memory once that engine
//! expires sessions.

use std::time::{Duration, Instant};

use synckairos::config::{Config, EngineKind};
use synckairos::grpc::pb;
use synckairos::grpc::pb::EventType;
use synckairos::store::clock::Clock;
use tonic::Code;
use tonic::transport::Endpoint;

use crate::helpers::*;
use crate::redis_server::{RedisServer, command_calls};
use crate::replicas::{Replica, redis_config};
use crate::tcp_proxy::TcpProxy;

/// One in-process redis-engine replica (replicas.rs; the test holds the one
/// isolation guard) with `tweak` applied to its config.
async fn start_replica(redis_url: &str, tweak: impl FnOnce(&mut Config)) -> Replica {
    let mut config = redis_config(redis_url);
    tweak(&mut config);
    Replica::launch(config, Clock::with_offset(0)).await
}

/// The next message that is not a HEARTBEAT, or what ended the stream; fails
/// the test when `limit` passes first (heartbeats do not count as news).
async fn next_news(
    stream: &mut EventStream,
    limit: Duration,
    what: &str,
) -> Result<Option<pb::SessionEvent>, tonic::Status> {
    let deadline = Instant::now() + limit;
    let mut heartbeats = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.message()).await {
            Err(_) => panic!("{what}: nothing but {heartbeats} heartbeat(s) within {limit:?}"),
            Ok(Ok(Some(e))) if event_type(&e) == EventType::Heartbeat => heartbeats += 1,
            Ok(other) => return other,
        }
    }
}

async fn delete(client: &mut Client, id: &str) {
    client
        .delete_session(pb::DeleteSessionRequest {
            session_id: id.into(),
        })
        .await
        .expect("DeleteSession");
}

/// How long a replica may take to notice a Pub/Sub connection that went
/// silent and to catch its streams up: the ping period (2 s) and timeout
/// (1 s), a reconnect and a log read, with room for a loaded machine.
const NOTICED_WITHIN: Duration = Duration::from_secs(8);

/// A proxy between a replica and Redis stops forwarding without closing
/// anything. The replica's Pub/Sub connection must notice (its PING goes
/// unanswered), reconnect and catch its streams up: a switch committed
/// through another replica (not behind the proxy) reaches the stream within
/// a bounded time, and every later version follows in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pub_sub_connection_gone_silent_is_noticed_and_its_streams_resume() {
    let _iso = shared_isolation();
    let redis = RedisServer::start();
    let proxy = TcpProxy::start(redis.port).await;
    let mut behind = start_replica(&proxy.url(), |_| {}).await;
    let mut direct = start_replica(&redis.url(), |_| {}).await;

    let s = create_started(&mut direct.client).await;
    let id = s.session_id.clone();
    let mut stream = subscribe(&mut behind.client, subscribe_req(&id)).await;
    assert_eq!(next_event(&mut stream).await.version, 2);
    switch(&mut direct.client, &id).await;
    assert_eq!(
        next_change(&mut stream).await.version,
        3,
        "through the proxy"
    );

    proxy.black_hole();
    let silent = Instant::now();
    switch(&mut direct.client, &id).await;
    let e = next_news(&mut stream, NOTICED_WITHIN, "after the proxy went silent")
        .await
        .expect("the stream goes on")
        .expect("the stream goes on");
    let took = silent.elapsed();
    println!("a silent Pub/Sub connection: the stream had v4 {took:?} after the proxy went silent");
    assert_eq!((event_type(&e), e.version), (EventType::Switched, 4));
    for v in 5..10 {
        switch(&mut direct.client, &id).await;
        let e = next_change(&mut stream).await;
        assert_eq!((event_type(&e), e.version), (EventType::Switched, v));
    }
    drop(behind);
}

/// Behind a proxy gone silent, the session is deleted and its id created
/// again (a new epoch) and switched, all through another replica. When the
/// replica catches up, the log it reads is the new session's: its versions
/// must not be spliced onto the old stream, which ends with NOT_FOUND.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_never_splices_a_new_epoch_onto_an_old_stream() {
    let _iso = shared_isolation();
    let redis = RedisServer::start();
    let proxy = TcpProxy::start(redis.port).await;
    let mut behind = start_replica(&proxy.url(), |_| {}).await;
    let mut direct = start_replica(&redis.url(), |_| {}).await;

    let old = create_started(&mut direct.client).await;
    let id = old.session_id.clone();
    let mut stream = subscribe(&mut behind.client, subscribe_req(&id)).await;
    assert_eq!(next_event(&mut stream).await.version, 2);

    proxy.black_hole();
    delete(&mut direct.client, &id).await;
    let new = create(&mut direct.client, chess(&id, HOUR_MS)).await;
    assert_ne!(new.epoch, old.epoch);
    start(&mut direct.client, &id).await;
    for _ in 0..3 {
        switch(&mut direct.client, &id).await;
    }
    match next_news(&mut stream, NOTICED_WITHIN, "the old stream").await {
        Err(status) => {
            assert_eq!(status.code(), Code::NotFound, "{status:?}");
            assert!(status.message().contains("no longer exists"), "{status:?}");
        }
        Ok(Some(e)) if e.epoch == old.epoch && event_type(&e) == EventType::Deleted => {}
        other => panic!(
            "the old stream (epoch {}) must end, got {other:?} (new epoch {})",
            old.epoch, new.epoch
        ),
    }
    drop(behind);
}

/// Many streams on a few sessions of one replica, and its Pub/Sub
/// connection is killed: each session's log is read once to catch its
/// streams up (INFO commandstats counts XRANGE, the log read), not once per
/// stream, and every stream still gets every version in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pub_sub_reconnect_reads_each_sessions_log_once_not_once_per_stream() {
    const SESSIONS: usize = 4;
    const STREAMS_PER_SESSION: usize = 30;
    let _iso = shared_isolation();
    let redis = RedisServer::start();
    let url = redis.url();
    let mut replica = start_replica(&url, |_| {}).await;
    let mut ids = Vec::new();
    for _ in 0..SESSIONS {
        ids.push(create_started(&mut replica.client).await.session_id);
    }
    let mut streams = Vec::new();
    for client_no in 0..2 {
        let mut client = replica.new_client().await;
        for (i, id) in ids.iter().enumerate() {
            for _ in 0..STREAMS_PER_SESSION / 2 {
                let mut s = subscribe(&mut client, subscribe_req(id)).await;
                assert_eq!(next_event(&mut s).await.version, 2);
                streams.push((i, client_no, s));
            }
        }
    }
    let reads_before = command_calls(&url, "xrange").await;

    let mut admin = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(killed, 1, "the replica's one Pub/Sub connection");
    // Committed while the replica may not have joined again: only the
    // catch-up can bring these.
    for id in &ids {
        switch(&mut replica.client, id).await;
    }
    // Every stream gets v3 (from the catch-up or from Pub/Sub), then v4.
    for (i, _, s) in &mut streams {
        let e = next_news(s, NOTICED_WITHIN, "after the reconnect")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (event_type(&e), e.version),
            (EventType::Switched, 3),
            "session {i}"
        );
    }
    for id in &ids {
        switch(&mut replica.client, id).await;
    }
    for (i, _, s) in &mut streams {
        let e = next_change(s).await;
        assert_eq!(
            (event_type(&e), e.version),
            (EventType::Switched, 4),
            "session {i}"
        );
    }
    let reads = command_calls(&url, "xrange").await - reads_before;
    println!(
        "a Pub/Sub reconnect with {} streams on {SESSIONS} sessions: {reads} log read(s)",
        streams.len()
    );
    assert!(
        reads <= SESSIONS as u64,
        "{reads} log reads for {SESSIONS} sessions ({} streams): one per session at most",
        streams.len()
    );
}

/// An idle session expires by TTL: its streams must end (NOT_FOUND, "no
/// longer exists") within about a heartbeat, not heartbeat forever. Returns
/// without asserting when `engine` does not expire sessions (the memory
/// engine before it had a TTL), saying so.
async fn a_stream_on_a_session_that_expires_ends(mut client: Client, engine: &str) {
    const TTL: Duration = Duration::from_secs(2);
    let s = create_chess(&mut client).await;
    let created = Instant::now();
    let mut stream = subscribe(
        &mut client,
        pb::SubscribeRequest {
            heartbeat_ms: Some(1_000),
            ..subscribe_req(&s.session_id)
        },
    )
    .await;
    assert_eq!(
        event_type(&next_event(&mut stream).await),
        EventType::Snapshot
    );
    let what = format!("{engine}: a stream on a session with a {TTL:?} TTL");
    let reader = tokio::spawn(async move {
        let ended = next_news(&mut stream, TTL + Duration::from_secs(4), &what).await;
        (ended, created.elapsed())
    });
    tokio::time::sleep(TTL + Duration::from_millis(300)).await;
    let gone = client
        .get_session(pb::GetSessionRequest {
            session_id: s.session_id.clone(),
        })
        .await;
    if gone.is_ok() {
        reader.abort();
        println!("{engine}: skipped, this engine does not expire an idle session after {TTL:?}");
        return;
    }
    let (ended, took) = reader.await.expect("the stream's reader");
    assert_code(gone, Code::NotFound);
    let status = ended.expect_err("the stream ends with NOT_FOUND");
    println!(
        "{engine}: the stream ended {took:?} after its session was created (TTL {TTL:?}, heartbeat 1s): {status:?}"
    );
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().contains("no longer exists"), "{status:?}");
    assert!(
        took >= TTL,
        "ended {took:?} after the create, before the TTL"
    );
    assert!(
        took < TTL + Duration::from_millis(2_500),
        "ended {took:?} after the create: more than about a heartbeat after the TTL"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_on_a_session_that_expires_by_ttl_ends_redis() {
    let _iso = shared_isolation();
    let redis = RedisServer::start();
    let replica = start_replica(&redis.url(), |c| {
        c.idle_ttl = Duration::from_secs(2);
        c.session_ttl = Duration::from_secs(2);
    })
    .await;
    a_stream_on_a_session_that_expires_ends(replica.client.clone(), "redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_on_a_session_that_expires_by_ttl_ends_memory() {
    let app = spawn_app_with(|c| {
        c.engine = EngineKind::Memory;
        c.redis_url = None;
        c.idle_ttl = Duration::from_secs(2);
        c.session_ttl = Duration::from_secs(2);
    })
    .await;
    a_stream_on_a_session_that_expires_ends(app.client.clone(), "memory").await;
}

/// A stream that fell behind past a deletion and a new session of the same
/// id (another epoch) must end, never carry the new epoch's snapshot or
/// versions (it resynchronises from a read that finds the new session).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_never_carries_a_version_of_another_epoch() {
    let mut app = spawn_app_with(|c| c.stream_buffer = 4).await;
    let id = unique_id("epoch");
    let old = create(&mut app.client, chess(&id, HOUR_MS)).await;
    start(&mut app.client, &id).await;
    // Small HTTP/2 windows: not reading pushes back on the server at once.
    let endpoint = Endpoint::from_shared(app.url())
        .unwrap()
        .initial_stream_window_size(4 * 1024)
        .initial_connection_window_size(64 * 1024);
    let mut slow_client = connect(endpoint).await;
    let mut slow = subscribe(&mut slow_client, subscribe_req(&id)).await;
    assert_eq!(next_event(&mut slow).await.epoch, old.epoch);

    const SWITCHES: u64 = 300;
    let mut writer = app.new_client().await;
    for _ in 0..SWITCHES {
        switch(&mut writer, &id).await;
    }
    delete(&mut writer, &id).await;
    let new = create(&mut writer, chess(&id, HOUR_MS)).await;
    assert_ne!(new.epoch, old.epoch);
    start(&mut writer, &id).await;
    for _ in 0..SWITCHES + 50 {
        switch(&mut writer, &id).await;
    }

    let mut seen = 0;
    let end = loop {
        match next_news(&mut slow, PROMPT, "the old stream").await {
            Ok(Some(e)) => {
                seen += 1;
                let epoch = e
                    .session
                    .as_ref()
                    .map_or(e.epoch.as_str(), |s| s.epoch.as_str());
                assert!(
                    e.epoch == old.epoch && epoch == old.epoch,
                    "message {seen} of the old stream (epoch {}) is {:?} v{} of epoch {}",
                    old.epoch,
                    event_type(&e),
                    e.version,
                    e.epoch
                );
            }
            other => break other,
        }
    };
    println!("the old stream: {seen} message(s) of its epoch, then {end:?}");
    match end {
        Ok(None) => {}
        Err(status) => assert_eq!(status.code(), Code::NotFound, "{status:?}"),
        Ok(Some(_)) => unreachable!(),
    }
}

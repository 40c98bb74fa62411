//! WatchSessions (issue 15 item 1): one stream over many sessions of the
//! caller's tenant — listed (resumable per session) or all of them — with
//! an event-type filter, `omit_session`, progress heartbeats, slow
//! consumers, tenant isolation and input validation; on both engines, and
//! across three replicas of the redis engine through a Redis restart.

use std::collections::HashMap;
use std::time::Duration;

use synckairos::grpc::pb;
use synckairos::grpc::pb::EventType;
use tonic::Code;
use tonic::transport::Endpoint;

use crate::auth::{ADMIN, KeysFile, OTHER_ADMIN, authed, key_block, keys_toml, spawn_with_keys};
use crate::helpers::*;
use crate::redis_server::RedisServer;
use crate::replicas::{Replica, redis_config};
use synckairos::store::clock::Clock;

type WatchStream = tonic::Streaming<pb::WatchSessionsResponse>;

fn watched(id: &str) -> pb::WatchedSession {
    pb::WatchedSession {
        session_id: id.into(),
        ..Default::default()
    }
}

fn watch_req(ids: &[&str]) -> pb::WatchSessionsRequest {
    pb::WatchSessionsRequest {
        sessions: ids.iter().map(|id| watched(id)).collect(),
        ..Default::default()
    }
}

fn watch_all() -> pb::WatchSessionsRequest {
    pb::WatchSessionsRequest {
        all_sessions: true,
        ..Default::default()
    }
}

async fn watch(client: &mut Client, req: pb::WatchSessionsRequest) -> WatchStream {
    client
        .watch_sessions(req)
        .await
        .expect("WatchSessions")
        .into_inner()
}

/// The next message (heartbeats included), within `limit`.
async fn next_msg_within(s: &mut WatchStream, limit: Duration) -> pb::WatchSessionsResponse {
    match tokio::time::timeout(limit, s.message()).await {
        Ok(Ok(Some(m))) => m,
        Ok(other) => panic!("the watch ended: {other:?}"),
        Err(_) => panic!("no watch message within {limit:?}"),
    }
}

fn ev(m: &pb::WatchSessionsResponse) -> &pb::SessionEvent {
    m.event.as_ref().expect("every message carries an event")
}

/// The next event that is not a heartbeat, within `PROMPT`.
async fn next_watch_event(s: &mut WatchStream) -> pb::SessionEvent {
    let end = tokio::time::Instant::now() + PROMPT;
    loop {
        let left = end.saturating_duration_since(tokio::time::Instant::now());
        let m = next_msg_within(s, left).await;
        if ev(&m).r#type != EventType::Heartbeat as i32 {
            return ev(&m).clone();
        }
    }
}

/// Nothing but heartbeats for `window`.
async fn assert_watch_quiet(s: &mut WatchStream, window: Duration) {
    let end = tokio::time::Instant::now() + window;
    loop {
        match tokio::time::timeout_at(end, s.message()).await {
            Err(_) => return,
            Ok(Ok(Some(m))) if ev(&m).r#type == EventType::Heartbeat as i32 => {}
            Ok(other) => panic!("expected quiet, got {other:?}"),
        }
    }
}

fn kind(e: &pb::SessionEvent) -> EventType {
    EventType::try_from(e.r#type).unwrap_or(EventType::Unspecified)
}

#[tokio::test]
async fn a_watch_of_listed_sessions_sends_their_snapshots_then_every_change_in_order() {
    let mut app = spawn_app().await;
    let a = create_chess(&mut app.client).await;
    let b = create_started(&mut app.client).await;
    let later = unique_id("later");
    let mut w = watch(
        &mut app.client,
        watch_req(&[&a.session_id, &b.session_id, &later]),
    )
    .await;
    // One snapshot per existing session (in any order); none for the missing one.
    let mut snaps = HashMap::new();
    for _ in 0..2 {
        let e = next_watch_event(&mut w).await;
        assert_eq!(kind(&e), EventType::Snapshot);
        assert!(e.session.is_some(), "a snapshot carries the session");
        snaps.insert(e.session_id.clone(), (e.version, e.epoch.clone()));
    }
    assert_eq!(snaps[&a.session_id], (1, a.epoch.clone()));
    assert_eq!(snaps[&b.session_id], (2, b.epoch.clone()));

    start(&mut app.client, &a.session_id).await;
    switch(&mut app.client, &b.session_id).await;
    switch(&mut app.client, &a.session_id).await;
    // A session listed before it existed: its CREATED comes when it is made.
    create(&mut app.client, chess(&later, HOUR_MS)).await;
    let unwatched = create_started(&mut app.client).await;
    switch(&mut app.client, &unwatched.session_id).await;
    let mut got = Vec::new();
    for _ in 0..4 {
        let e = next_watch_event(&mut w).await;
        got.push((e.session_id.clone(), e.version, kind(&e)));
    }
    assert_eq!(
        got,
        vec![
            (a.session_id.clone(), 2, EventType::Started),
            (b.session_id.clone(), 3, EventType::Switched),
            (a.session_id.clone(), 3, EventType::Switched),
            (later.clone(), 1, EventType::Created),
        ]
    );
    // A session not listed never shows up.
    assert_watch_quiet(&mut w, Duration::from_millis(300)).await;

    // DELETED is sent; the id's next life is followed from its CREATED.
    app.client
        .delete_session(pb::DeleteSessionRequest {
            session_id: later.clone(),
        })
        .await
        .unwrap();
    let e = next_watch_event(&mut w).await;
    assert_eq!((kind(&e), e.version), (EventType::Deleted, 2));
    let again = create(&mut app.client, chess(&later, HOUR_MS)).await;
    let e = next_watch_event(&mut w).await;
    assert_eq!(
        (kind(&e), e.version, e.epoch.as_str()),
        (EventType::Created, 1, again.epoch.as_str())
    );
}

#[tokio::test]
async fn a_watch_resumes_each_session_from_its_version_and_epoch() {
    let mut app = spawn_app().await;
    let s = create_started(&mut app.client).await;
    for _ in 0..3 {
        switch(&mut app.client, &s.session_id).await;
    }
    let other = create_started(&mut app.client).await;
    // s: resume after version 3 of its epoch -> 4, 5; other: a wrong epoch -> SNAPSHOT.
    let req = pb::WatchSessionsRequest {
        sessions: vec![
            pb::WatchedSession {
                session_id: s.session_id.clone(),
                from_version: Some(3),
                epoch: s.epoch.clone(),
            },
            pb::WatchedSession {
                session_id: other.session_id.clone(),
                from_version: Some(1),
                epoch: "not-its-epoch".into(),
            },
        ],
        ..Default::default()
    };
    let mut w = watch(&mut app.client, req).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let e = next_watch_event(&mut w).await;
        got.push((e.session_id.clone(), e.version, kind(&e)));
    }
    got.sort();
    let mut want = vec![
        (s.session_id.clone(), 4, EventType::Switched),
        (s.session_id.clone(), 5, EventType::Switched),
        (other.session_id.clone(), 2, EventType::Snapshot),
    ];
    want.sort();
    assert_eq!(got, want);
    // Resumed at the latest version: nothing to replay, and no snapshot.
    let mut level = watch(
        &mut app.client,
        pb::WatchSessionsRequest {
            sessions: vec![pb::WatchedSession {
                session_id: s.session_id.clone(),
                from_version: Some(5),
                epoch: String::new(),
            }],
            ..Default::default()
        },
    )
    .await;
    switch(&mut app.client, &s.session_id).await;
    let e = next_watch_event(&mut level).await;
    assert_eq!((kind(&e), e.version), (EventType::Switched, 6));
}

#[tokio::test]
async fn an_all_sessions_watch_sees_sessions_made_after_it_opened_and_no_replay() {
    let mut app = spawn_app().await;
    let before = create_started(&mut app.client).await;
    let mut w = watch(&mut app.client, watch_all()).await;
    // No snapshot, no replay: quiet until something is committed.
    assert_watch_quiet(&mut w, Duration::from_millis(300)).await;
    let s = create_chess(&mut app.client).await;
    start(&mut app.client, &s.session_id).await;
    switch(&mut app.client, &before.session_id).await;
    let got: Vec<_> = [
        next_watch_event(&mut w).await,
        next_watch_event(&mut w).await,
        next_watch_event(&mut w).await,
    ]
    .iter()
    .map(|e| (e.session_id.clone(), e.version, kind(e)))
    .collect();
    assert_eq!(
        got,
        vec![
            (s.session_id.clone(), 1, EventType::Created),
            (s.session_id.clone(), 2, EventType::Started),
            (before.session_id.clone(), 3, EventType::Switched),
        ]
    );
}

#[tokio::test]
async fn the_event_filter_passes_only_the_types_asked_and_deleted() {
    let mut app = spawn_app().await;
    let id = unique_id("flag");
    create(&mut app.client, chess(&id, 1_000)).await;
    start(&mut app.client, &id).await;
    let req = pb::WatchSessionsRequest {
        sessions: vec![watched(&id)],
        event_types: vec![
            EventType::Expired as i32,
            EventType::TimedOut as i32,
            EventType::ParticipantExpired as i32,
        ],
        ..Default::default()
    };
    let mut w = watch(&mut app.client, req).await;
    let snap = next_watch_event(&mut w).await;
    assert_eq!((kind(&snap), snap.version), (EventType::Snapshot, 2));
    switch(&mut app.client, &id).await;
    // The switch (3) is left out; black's clock runs out (4): EXPIRED.
    let e = next_watch_event(&mut w).await;
    assert_eq!((kind(&e), e.version), (EventType::Expired, 4), "{e:?}");
    app.client
        .delete_session(pb::DeleteSessionRequest {
            session_id: id.clone(),
        })
        .await
        .unwrap();
    let e = next_watch_event(&mut w).await;
    assert_eq!((kind(&e), e.version), (EventType::Deleted, 5));
}

#[tokio::test]
async fn omit_session_sends_events_without_the_session_but_snapshots_with_it() {
    let mut app = spawn_app().await;
    let s = create_started(&mut app.client).await;
    let req = pb::WatchSessionsRequest {
        omit_session: true,
        ..watch_req(&[&s.session_id])
    };
    let mut w = watch(&mut app.client, req).await;
    let snap = next_watch_event(&mut w).await;
    assert_eq!(kind(&snap), EventType::Snapshot);
    assert!(snap.session.is_some());
    switch(&mut app.client, &s.session_id).await;
    let e = next_watch_event(&mut w).await;
    assert_eq!((kind(&e), e.version), (EventType::Switched, 3));
    assert_eq!(e.participant_id, "white");
    assert!(e.session.is_none(), "omit_session: {e:?}");
    assert!(e.server_time.is_some());
}

#[tokio::test]
async fn heartbeats_carry_the_latest_version_of_each_session_when_asked() {
    let mut app = spawn_app().await;
    let a = create_started(&mut app.client).await;
    let b = create_chess(&mut app.client).await;
    let missing = unique_id("missing");
    let req = pb::WatchSessionsRequest {
        heartbeat_ms: Some(1_000),
        progress: true,
        event_types: vec![EventType::Expired as i32],
        ..watch_req(&[&a.session_id, &b.session_id, &missing])
    };
    let mut w = watch(&mut app.client, req).await;
    next_watch_event(&mut w).await;
    next_watch_event(&mut w).await;
    // Filtered out, yet passed: progress says 4.
    switch(&mut app.client, &a.session_id).await;
    switch(&mut app.client, &a.session_id).await;
    let beat = loop {
        let m = next_msg_within(&mut w, Duration::from_secs(3)).await;
        assert_eq!(kind(ev(&m)), EventType::Heartbeat, "only heartbeats: {m:?}");
        if m.progress
            .iter()
            .any(|p| p.session_id == a.session_id && p.version == 4)
        {
            break m;
        }
    };
    assert!(ev(&beat).server_time.is_some());
    let mut progress: Vec<_> = beat
        .progress
        .iter()
        .map(|p| (p.session_id.clone(), p.epoch.clone(), p.version))
        .collect();
    progress.sort();
    let mut want = vec![
        (a.session_id.clone(), a.epoch.clone(), 4),
        (b.session_id.clone(), b.epoch.clone(), 1),
    ];
    want.sort();
    assert_eq!(progress, want, "the missing session has no progress");
    // Without `progress`, heartbeats list nothing.
    let mut plain = watch(
        &mut app.client,
        pb::WatchSessionsRequest {
            heartbeat_ms: Some(1_000),
            ..watch_req(&[&a.session_id])
        },
    )
    .await;
    next_watch_event(&mut plain).await;
    let m = next_msg_within(&mut plain, Duration::from_secs(3)).await;
    assert_eq!(kind(ev(&m)), EventType::Heartbeat);
    assert!(m.progress.is_empty());
}

#[tokio::test]
async fn a_slow_watch_gets_snapshots_and_never_stalls_another_watch_or_a_subscribe() {
    // The watch inbox is 16 × stream_buffer: 64 events here.
    let mut app = spawn_app_with(|c| c.stream_buffer = 4).await;
    let id = unique_id("slow");
    create(&mut app.client, chess(&id, HOUR_MS)).await;
    start(&mut app.client, &id).await;
    let endpoint = Endpoint::from_shared(app.url())
        .unwrap()
        .initial_stream_window_size(4 * 1024)
        .initial_connection_window_size(64 * 1024);
    let mut slow_client = connect(endpoint).await;
    let mut slow = watch(&mut slow_client, watch_req(&[&id])).await;
    let mut fast_client = app.new_client().await;
    let mut fast = watch(&mut fast_client, watch_req(&[&id])).await;
    let mut sub_client = app.new_client().await;
    let mut sub = subscribe(&mut sub_client, subscribe_req(&id)).await;

    const SWITCHES: u64 = 400;
    let last = 2 + SWITCHES;
    let fast_reader = tokio::spawn(async move {
        let mut versions = vec![next_watch_event(&mut fast).await.version];
        while *versions.last().unwrap() < last {
            versions.push(next_watch_event(&mut fast).await.version);
        }
        versions
    });
    let sub_reader = tokio::spawn(async move {
        let mut versions = vec![next_change(&mut sub).await.version];
        while *versions.last().unwrap() < last {
            versions.push(next_change(&mut sub).await.version);
        }
        versions
    });
    for _ in 0..SWITCHES {
        switch(&mut app.client, &id).await;
    }
    let fast_versions = within(Duration::from_secs(10), "the other watch", fast_reader)
        .await
        .unwrap();
    let sub_versions = within(Duration::from_secs(10), "the Subscribe", sub_reader)
        .await
        .unwrap();
    let every: Vec<u64> = (2..=last).collect();
    assert_eq!(
        fast_versions, every,
        "the other watch: every version in order"
    );
    assert_eq!(sub_versions, every, "the Subscribe: every version in order");

    // Now read the slow one: increasing versions, a jump only by a SNAPSHOT.
    let (mut prev, mut snapshots) = (0, 0);
    while prev < last {
        let e = next_watch_event(&mut slow).await;
        assert!(
            e.version > prev,
            "duplicate or out of order: {} after {prev}",
            e.version
        );
        if kind(&e) == EventType::Snapshot {
            snapshots += 1;
        } else {
            assert_eq!(e.version, prev + 1, "a gap without a snapshot");
        }
        prev = e.version;
    }
    println!("slow watch: {snapshots} snapshot(s) for {SWITCHES} switches");
    assert!(
        snapshots >= 2,
        "the slow watch should have skipped to a snapshot"
    );
    switch(&mut app.client, &id).await;
    assert_eq!(next_watch_event(&mut slow).await.version, last + 1);
}

#[tokio::test]
async fn another_tenants_events_never_reach_a_watch() {
    // A tenant whose name starts with acme's.
    const EU_ADMIN: &str = "sk-test-acme-eu-admin-0123456789";
    let file =
        KeysFile::new(&(keys_toml() + &key_block("acme-eu-admin", "acme.eu", "admin", EU_ADMIN)));
    let mut app = spawn_with_keys(&file).await;
    let id = unique_id("shared-id");
    let client = app.client.clone();
    let create_as = |cred: &'static str, id: String| {
        let mut c = client.clone();
        async move {
            c.create_session(authed(chess(&id, HOUR_MS), Some(cred)))
                .await
                .unwrap()
                .into_inner()
        }
    };
    let mut all = app
        .client
        .watch_sessions(authed(watch_all(), Some(ADMIN)))
        .await
        .unwrap()
        .into_inner();
    let mut listed = app
        .client
        .watch_sessions(authed(watch_req(&[&id]), Some(ADMIN)))
        .await
        .unwrap()
        .into_inner();
    // The other tenant makes a session of the same id, and another.
    let theirs = create_as(OTHER_ADMIN, id.clone()).await;
    create_as(OTHER_ADMIN, unique_id("theirs")).await;
    create_as(EU_ADMIN, id.clone()).await;
    create_as(EU_ADMIN, unique_id("eu")).await;
    assert_watch_quiet(&mut all, Duration::from_millis(300)).await;
    assert_watch_quiet(&mut listed, Duration::from_millis(10)).await;
    let ours = create_as(ADMIN, id.clone()).await;
    assert_ne!(ours.epoch, theirs.epoch);
    for w in [&mut all, &mut listed] {
        let e = next_watch_event(w).await;
        assert_eq!(
            (kind(&e), e.session_id.as_str(), e.epoch.as_str()),
            (EventType::Created, id.as_str(), ours.epoch.as_str())
        );
    }
    assert_watch_quiet(&mut all, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn bad_watch_requests_are_refused_naming_the_field() {
    let mut app = spawn_app().await;
    let mut call = async |req: pb::WatchSessionsRequest, needle: &str| {
        let got = app.client.watch_sessions(req).await;
        assert_status(got.map(|_| ()), Code::InvalidArgument, needle);
    };
    let many: Vec<String> = (0..10_001).map(|i| format!("s{i}")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    call(
        watch_req(&refs),
        "sessions: at most 10000 sessions, got 10001",
    )
    .await;
    call(
        watch_req(&["a", "b", "a"]),
        "sessions[2].session_id: the same session as sessions[0]",
    )
    .await;
    call(
        watch_req(&["a", "b", "c", "not an id"]),
        "sessions[3].session_id",
    )
    .await;
    let mut bad_epoch = watch_req(&["a", "b"]);
    bad_epoch.sessions[1].epoch = "e\u{7}".into();
    call(bad_epoch, "sessions[1].epoch").await;
    let unknown = pb::WatchSessionsRequest {
        event_types: vec![EventType::Expired as i32, 99],
        ..watch_req(&["a"])
    };
    call(unknown, "event_types[1]: unknown value 99").await;
    let unspecified = pb::WatchSessionsRequest {
        event_types: vec![0],
        ..watch_req(&["a"])
    };
    call(unspecified, "event_types[0]").await;
    let both = pb::WatchSessionsRequest {
        all_sessions: true,
        ..watch_req(&["a"])
    };
    call(both, "sessions: must be empty with all_sessions").await;
    call(pb::WatchSessionsRequest::default(), "sessions:").await;
    // Exactly 10,000 distinct ids is fine, and one watch of them opens at once.
    let ok: Vec<&str> = refs[..10_000].to_vec();
    let mut w = watch(&mut app.client, watch_req(&ok)).await;
    assert_watch_quiet(&mut w, Duration::from_millis(100)).await;
}

/// Three replicas on one Redis: switches made on A reach a watch on C in
/// order, and after Redis restarts (empty) the watch reports the sessions
/// gone and follows their next life — no reconnect by the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_on_a_reaches_a_watch_on_c_in_order_through_a_redis_restart() {
    let _iso = shared_isolation();
    let mut redis = RedisServer::start();
    let url = redis.url();
    let mut a = Replica::launch(redis_config(&url), Clock::new()).await;
    let mut b = Replica::launch(redis_config(&url), Clock::new()).await;
    let mut c = Replica::launch(redis_config(&url), Clock::new()).await;
    let s = create_started(&mut a.client).await;
    let id = s.session_id.clone();
    let mut w = watch(
        &mut c.client,
        pb::WatchSessionsRequest {
            heartbeat_ms: Some(1_000),
            ..watch_req(&[&id])
        },
    )
    .await;
    let mut all = watch(&mut c.client, watch_all()).await;
    assert_eq!(next_watch_event(&mut w).await.version, 2);
    for i in 0..20 {
        let r = if i % 2 == 0 {
            &mut a.client
        } else {
            &mut b.client
        };
        switch(r, &id).await;
    }
    for v in 3..=22 {
        let e = next_watch_event(&mut w).await;
        assert_eq!((kind(&e), e.version), (EventType::Switched, v));
        let e = next_watch_event(&mut all).await;
        assert_eq!((e.session_id.as_str(), e.version), (id.as_str(), v));
    }

    redis.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::block_in_place(|| redis.restart());
    // Redis lost the session: the listed watch says so once (DELETED of its
    // epoch, at the next version), once C's Pub/Sub is back.
    let e = within(
        Duration::from_secs(10),
        "the gone session",
        next_watch_event(&mut w),
    )
    .await;
    assert_eq!(
        (kind(&e), e.version, e.epoch.as_str()),
        (EventType::Deleted, 23, s.epoch.as_str())
    );
    // The id's next life, made on A, reaches both watches on C in order.
    let again = loop {
        match a.client.create_session(chess(&id, HOUR_MS)).await {
            Ok(r) => break r.into_inner(),
            Err(st) if st.code() == Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(st) => panic!("create after the restart: {st:?}"),
        }
    };
    start(&mut a.client, &id).await;
    switch(&mut a.client, &id).await;
    let e = next_watch_event(&mut all).await;
    assert_eq!((kind(&e), e.version), (EventType::Deleted, 23));
    for w in [&mut w, &mut all] {
        let got: Vec<_> = [
            next_watch_event(w).await,
            next_watch_event(w).await,
            next_watch_event(w).await,
        ]
        .iter()
        .map(|e| (e.version, kind(e), e.epoch.clone()))
        .collect();
        assert_eq!(
            got,
            vec![
                (1, EventType::Created, again.epoch.clone()),
                (2, EventType::Started, again.epoch.clone()),
                (3, EventType::Switched, again.epoch.clone()),
            ]
        );
    }
}

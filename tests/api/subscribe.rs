//! Subscribe (SPEC §7): snapshot first, every version in order, replay,
//! heartbeats, DELETED, slow consumers and shutdown.

use std::time::{Duration, Instant};

use synckairos::grpc::pb;
use synckairos::grpc::pb::EventType;
use tonic::Code;
use tonic::transport::Endpoint;

use crate::helpers::*;
use crate::redis_server::RedisServer;

#[tokio::test]
async fn subscribe_sends_a_snapshot_first_then_changes() {
    let mut app = spawn_app().await;
    let s = create_chess(&mut app.client).await;
    let mut stream = subscribe(&mut app.client, subscribe_req(&s.session_id)).await;
    let snap = next_event(&mut stream).await;
    assert_eq!(event_type(&snap), EventType::Snapshot);
    assert_eq!(
        (snap.session_id.as_str(), snap.version, snap.epoch.as_str()),
        (s.session_id.as_str(), 1, s.epoch.as_str())
    );
    let session = snap
        .session
        .as_ref()
        .expect("a snapshot carries the session");
    assert_eq!(
        (session.version, status_of(session)),
        (1, pb::Status::Pending)
    );
    assert!(snap.server_time.is_some());

    let started = start(&mut app.client, &s.session_id).await;
    let e = next_event(&mut stream).await;
    assert_eq!(
        (event_type(&e), e.version, e.participant_id.as_str()),
        (EventType::Started, 2, "white")
    );
    let session = e.session.as_ref().unwrap();
    assert_eq!(status_of(session), pb::Status::Running);
    assert_eq!(session.deadline_at, started.deadline_at);
    assert_eq!(e.epoch, s.epoch);

    // A stream opened later starts from a snapshot of the current version.
    let mut late = subscribe(&mut app.client, subscribe_req(&s.session_id)).await;
    let snap = next_event(&mut late).await;
    assert_eq!((event_type(&snap), snap.version), (EventType::Snapshot, 2));
    assert_eq!(
        status_of(snap.session.as_ref().unwrap()),
        pb::Status::Running
    );
}

#[tokio::test]
async fn subscribe_to_a_missing_session_is_not_found() {
    let mut app = spawn_app().await;
    assert_status(
        app.client
            .subscribe(subscribe_req(&unique_id("missing")))
            .await,
        Code::NotFound,
        "not found",
    );
    assert_status(
        app.client.subscribe(subscribe_req("not an id")).await,
        Code::InvalidArgument,
        "session_id",
    );
}

/// Reads `stream` until a change at `last_version` (or beyond) arrives; returns the changes.
async fn collect_until(stream: &mut EventStream, last_version: u64) -> Vec<pb::SessionEvent> {
    let mut out = Vec::new();
    loop {
        let e = next_change(stream).await;
        let v = e.version;
        out.push(e);
        if v >= last_version {
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_delivers_every_version_in_order_across_many_mutations() {
    let mut app = spawn_app().await;
    let s = create_chess(&mut app.client).await;
    let id = s.session_id.clone();
    let mut early = subscribe(&mut app.client, subscribe_req(&id)).await;
    assert_eq!(next_event(&mut early).await.version, 1);
    let mut other_client = app.new_client().await;
    let mut other = subscribe(&mut other_client, subscribe_req(&id)).await;
    assert_eq!(next_event(&mut other).await.version, 1);

    // The streams are read after the writes: the default per-stream buffer (256) holds them all.
    let mut expected: Vec<(u64, EventType)> = Vec::new();
    let c = &mut app.client;
    expected.push((start(c, &id).await.version, EventType::Started));
    let mut mid_stream = None;
    for i in 0..60 {
        let mover = if i % 2 == 0 { "white" } else { "black" };
        let req = pb::SwitchCycleRequest {
            from_participant_id: Some(mover.into()),
            ..switch_req(&id)
        };
        expected.push((
            c.switch_cycle(req).await.unwrap().into_inner().version,
            EventType::Switched,
        ));
        if i == 29 {
            mid_stream = Some(subscribe(c, subscribe_req(&id)).await);
        }
    }
    let adj = pb::AdjustTimeRequest {
        session_id: id.clone(),
        participant_id: "black".into(),
        delta_ms: 10_000,
        ..Default::default()
    };
    expected.push((
        c.adjust_time(adj).await.unwrap().into_inner().version,
        EventType::TimeAdjusted,
    ));
    let pause = pb::PauseSessionRequest {
        session_id: id.clone(),
        ..Default::default()
    };
    expected.push((
        c.pause_session(pause).await.unwrap().into_inner().version,
        EventType::Paused,
    ));
    let resume = pb::ResumeSessionRequest {
        session_id: id.clone(),
        ..Default::default()
    };
    expected.push((
        c.resume_session(resume).await.unwrap().into_inner().version,
        EventType::Resumed,
    ));
    for _ in 0..20 {
        expected.push((switch(c, &id).await.version, EventType::Switched));
    }
    let done = pb::CompleteSessionRequest {
        session_id: id.clone(),
        ..Default::default()
    };
    expected.push((
        c.complete_session(done).await.unwrap().into_inner().version,
        EventType::Completed,
    ));
    let last = expected.last().unwrap().0;
    assert_eq!(
        last,
        1 + expected.len() as u64,
        "every mutation added exactly one version"
    );

    for (name, stream) in [("early", &mut early), ("other connection", &mut other)] {
        let got: Vec<(u64, EventType)> = collect_until(stream, last)
            .await
            .iter()
            .map(|e| (e.version, event_type(e)))
            .collect();
        assert_eq!(got, expected, "{name} stream");
    }
    let mut mid = mid_stream.unwrap();
    let got = collect_until(&mut mid, last).await;
    assert_eq!(event_type(&got[0]), EventType::Snapshot);
    let versions: Vec<u64> = got.iter().map(|e| e.version).collect();
    let from = versions[0];
    assert_eq!(
        versions,
        (from..=last).collect::<Vec<_>>(),
        "a stream opened mid-way: snapshot, then no gaps or duplicates"
    );
    // The last event's snapshot matches GetSession.
    let final_session = get(&mut app.client, &id).await;
    assert_eq!(
        got.last().unwrap().session.as_ref().unwrap().version,
        final_session.version
    );
}

#[tokio::test]
async fn subscribe_from_version_replays_the_events_after_it() {
    let mut app = spawn_app().await;
    let s = create_started(&mut app.client).await;
    let id = s.session_id.clone();
    for _ in 0..3 {
        switch(&mut app.client, &id).await; // v3, v4, v5
    }
    let from = |v: u64, epoch: &str| pb::SubscribeRequest {
        session_id: id.clone(),
        from_version: Some(v),
        epoch: epoch.into(),
        ..Default::default()
    };

    let mut replay = subscribe(&mut app.client, from(2, &s.epoch)).await;
    for v in 3..=5 {
        let e = next_event(&mut replay).await;
        assert_eq!(
            (e.version, event_type(&e)),
            (v, EventType::Switched),
            "replayed, no snapshot"
        );
        assert_eq!(e.epoch, s.epoch);
    }
    // An empty epoch means "not said": still a replay.
    let mut no_epoch = subscribe(&mut app.client, from(3, "")).await;
    assert_eq!(next_event(&mut no_epoch).await.version, 4);
    assert_eq!(next_event(&mut no_epoch).await.version, 5);
    // Up to date: nothing until the next change.
    let mut current = subscribe(&mut app.client, from(5, &s.epoch)).await;
    assert_quiet(&mut current, Duration::from_millis(100)).await;
    // From 0: the whole retained history, CREATED first.
    let mut all = subscribe(&mut app.client, from(0, &s.epoch)).await;
    let e = next_event(&mut all).await;
    assert_eq!((e.version, event_type(&e)), (1, EventType::Created));
    let e = next_event(&mut all).await;
    assert_eq!((e.version, event_type(&e)), (2, EventType::Started));
    let e = next_event(&mut all).await;
    assert_eq!((e.version, event_type(&e)), (3, EventType::Switched));

    switch(&mut app.client, &id).await; // v6
    for stream in [&mut replay, &mut no_epoch, &mut current] {
        let e = next_event(stream).await;
        assert_eq!((e.version, event_type(&e)), (6, EventType::Switched));
    }
    let rest: Vec<u64> = collect_until(&mut all, 6)
        .await
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(rest, vec![4, 5, 6]);
}

#[tokio::test]
async fn subscribe_from_version_with_another_epoch_gets_a_snapshot_or_out_of_range() {
    let mut app = spawn_app().await;
    let s = create_started(&mut app.client).await;
    let id = s.session_id.clone();
    switch(&mut app.client, &id).await; // v3
    let req = |strict: bool| pb::SubscribeRequest {
        session_id: id.clone(),
        from_version: Some(2),
        epoch: "an-epoch-from-a-previous-life".into(),
        strict,
        ..Default::default()
    };
    let mut stream = subscribe(&mut app.client, req(false)).await;
    let e = next_event(&mut stream).await;
    assert_eq!(
        (event_type(&e), e.version, e.epoch.as_str()),
        (EventType::Snapshot, 3, s.epoch.as_str())
    );
    assert_status(
        app.client.subscribe(req(true)).await,
        Code::OutOfRange,
        "epoch",
    );

    // A version from the future cannot be replayed either.
    let future = |strict| pb::SubscribeRequest {
        session_id: id.clone(),
        from_version: Some(99),
        epoch: s.epoch.clone(),
        strict,
        ..Default::default()
    };
    let mut stream = subscribe(&mut app.client, future(false)).await;
    assert_eq!(
        event_type(&next_event(&mut stream).await),
        EventType::Snapshot
    );
    assert_code(app.client.subscribe(future(true)).await, Code::OutOfRange);

    // strict with the right epoch and a version in the log: a replay, no error.
    let ok = pb::SubscribeRequest {
        strict: true,
        epoch: s.epoch.clone(),
        ..future(true)
    };
    let ok = pb::SubscribeRequest {
        from_version: Some(1),
        ..ok
    };
    let mut stream = subscribe(&mut app.client, ok).await;
    assert_eq!(
        event_type(&next_event(&mut stream).await),
        EventType::Started
    );

    // A recreated session has a new epoch: the old epoch's versions are not replayed.
    app.client
        .delete_session(pb::DeleteSessionRequest {
            session_id: id.clone(),
        })
        .await
        .unwrap();
    let recreated = create_started_with_id(&mut app.client, &id).await;
    assert_ne!(recreated.epoch, s.epoch);
    let old = pb::SubscribeRequest {
        session_id: id.clone(),
        from_version: Some(1),
        epoch: s.epoch.clone(),
        ..Default::default()
    };
    let mut stream = subscribe(&mut app.client, old.clone()).await;
    let e = next_event(&mut stream).await;
    assert_eq!(
        (event_type(&e), e.epoch.as_str()),
        (EventType::Snapshot, recreated.epoch.as_str())
    );
    assert_code(
        app.client
            .subscribe(pb::SubscribeRequest {
                strict: true,
                ..old
            })
            .await,
        Code::OutOfRange,
    );
}

async fn create_started_with_id(client: &mut Client, id: &str) -> pb::Session {
    create(client, chess(id, HOUR_MS)).await;
    start(client, id).await
}

#[tokio::test]
async fn subscribe_from_a_version_older_than_the_log_gets_a_snapshot_or_out_of_range() {
    let mut app = spawn_app().await;
    let s = create_started(&mut app.client).await;
    let id = s.session_id.clone();
    for _ in 0..300 {
        switch(&mut app.client, &id).await;
    }
    // v302 now; the log keeps the last 256 events (47..=302).
    let req = |v: u64, strict: bool| pb::SubscribeRequest {
        session_id: id.clone(),
        from_version: Some(v),
        epoch: s.epoch.clone(),
        strict,
        ..Default::default()
    };
    let mut stream = subscribe(&mut app.client, req(2, false)).await;
    let e = next_event(&mut stream).await;
    assert_eq!((event_type(&e), e.version), (EventType::Snapshot, 302));
    assert_status(
        app.client.subscribe(req(2, true)).await,
        Code::OutOfRange,
        "from_version 2",
    );
    // The oldest replayable point still replays.
    let mut stream = subscribe(&mut app.client, req(46, true)).await;
    let e = next_event(&mut stream).await;
    assert_eq!((event_type(&e), e.version), (EventType::Switched, 47));
    assert_code(app.client.subscribe(req(45, true)).await, Code::OutOfRange);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_opened_while_writes_race_has_no_gap_or_duplicate() {
    let mut app = spawn_app().await;
    let s = create_started(&mut app.client).await;
    let id = s.session_id.clone();
    const SWITCHES: u64 = 200;
    let last = 2 + SWITCHES;
    let mut writer_client = app.new_client().await;
    let writer_id = id.clone();
    let writer = tokio::spawn(async move {
        for _ in 0..SWITCHES {
            switch(&mut writer_client, &writer_id).await;
            tokio::task::yield_now().await;
        }
    });
    let mut readers = Vec::new();
    for i in 0..12u32 {
        let mut client = app.client.clone();
        let epoch = s.epoch.clone();
        let id = id.clone();
        readers.push(tokio::spawn(async move {
            // Half replay from a recent version, half start from a snapshot.
            let current = get(&mut client, &id).await.version;
            let req = if i % 2 == 0 {
                pb::SubscribeRequest {
                    session_id: id,
                    from_version: Some(current.saturating_sub(3)),
                    epoch,
                    ..Default::default()
                }
            } else {
                subscribe_req(&id)
            };
            let mut stream = subscribe(&mut client, req).await;
            let events = collect_until(&mut stream, last).await;
            let versions: Vec<u64> = events.iter().map(|e| e.version).collect();
            let first = versions[0];
            assert_eq!(
                versions,
                (first..=last).collect::<Vec<_>>(),
                "reader {i}: gap or duplicate"
            );
            if i % 2 == 1 {
                assert_eq!(event_type(&events[0]), EventType::Snapshot);
            }
            assert!(
                events[1..]
                    .iter()
                    .all(|e| event_type(e) != EventType::Snapshot),
                "reader {i}: a snapshot mid-stream"
            );
        }));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    writer.await.unwrap();
    for r in readers {
        within(Duration::from_secs(20), "reader", r).await.unwrap();
    }
}

#[tokio::test]
async fn heartbeats_carry_server_time_and_the_latest_version() {
    let mut app = spawn_app().await;
    let s = create_started(&mut app.client).await;
    let id = s.session_id.clone();
    let opened = Instant::now();
    let mut hb = subscribe(
        &mut app.client,
        pb::SubscribeRequest {
            heartbeat_ms: Some(1_000),
            ..subscribe_req(&id)
        },
    )
    .await;
    let mut clamped = subscribe(
        &mut app.client,
        pb::SubscribeRequest {
            heartbeat_ms: Some(10),
            ..subscribe_req(&id)
        },
    )
    .await;
    let mut default = subscribe(&mut app.client, subscribe_req(&id)).await;
    for stream in [&mut hb, &mut clamped, &mut default] {
        assert_eq!(event_type(&next_event(stream).await), EventType::Snapshot);
    }
    switch(&mut app.client, &id).await; // v3
    for stream in [&mut hb, &mut clamped, &mut default] {
        assert_eq!(next_event(stream).await.version, 3);
    }

    for (name, stream) in [
        ("heartbeat_ms=1000", &mut hb),
        ("heartbeat_ms=10 (clamped to 1000)", &mut clamped),
    ] {
        let e = next_within(stream, Duration::from_millis(1_500))
            .await
            .unwrap()
            .expect("stream open");
        let waited = opened.elapsed();
        assert_eq!(event_type(&e), EventType::Heartbeat, "{name}: {e:?}");
        assert!(
            waited >= Duration::from_millis(900),
            "{name}: heartbeat after {waited:?}, sooner than 1 s"
        );
        assert!(
            waited <= Duration::from_millis(1_700),
            "{name}: heartbeat after {waited:?}"
        );
        assert_eq!(e.version, 3, "{name}: the latest version sent");
        assert_eq!(
            (e.session_id.as_str(), e.epoch.as_str()),
            (id.as_str(), s.epoch.as_str())
        );
        assert!(
            e.session.is_none(),
            "{name}: a heartbeat carries no session"
        );
        let skew = micros_of(&e.server_time) - wall_micros();
        assert!(skew.abs() < 100_000, "{name}: server_time off by {skew} µs");
    }
    // The default period is 15 s: nothing yet on the third stream.
    assert_quiet(&mut default, Duration::from_millis(50)).await;
    // The next one comes a period later and still names the latest version.
    switch(&mut app.client, &id).await; // v4
    assert_eq!(next_event(&mut hb).await.version, 4);
    let e = next_within(&mut hb, Duration::from_millis(1_500))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((event_type(&e), e.version), (EventType::Heartbeat, 4));
}

/// A client that resumes with `from_version` but without its epoch (allowed:
/// "empty means not said") is up to date, so nothing is replayed; its
/// heartbeats must still name the session's epoch.
#[tokio::test]
async fn heartbeats_name_the_epoch_when_resuming_without_one() {
    let mut app = spawn_app().await;
    let s = create_started(&mut app.client).await;
    let req = pb::SubscribeRequest {
        session_id: s.session_id.clone(),
        from_version: Some(2),
        heartbeat_ms: Some(1_000),
        ..Default::default()
    };
    let mut stream = subscribe(&mut app.client, req).await;
    let e = next_within(&mut stream, Duration::from_millis(1_500))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((event_type(&e), e.version), (EventType::Heartbeat, 2));
    assert_eq!(e.epoch, s.epoch, "the heartbeat names the session's epoch");
}

#[tokio::test]
async fn deleted_ends_the_stream_with_ok() {
    let mut app = spawn_app().await;
    let s = create_started(&mut app.client).await;
    let id = s.session_id.clone();
    let mut a = subscribe(&mut app.client, subscribe_req(&id)).await;
    let mut other = app.new_client().await;
    let mut b = subscribe(&mut other, subscribe_req(&id)).await;
    for stream in [&mut a, &mut b] {
        assert_eq!(next_event(stream).await.version, 2);
    }
    switch(&mut app.client, &id).await;
    app.client
        .delete_session(pb::DeleteSessionRequest {
            session_id: id.clone(),
        })
        .await
        .unwrap();
    for stream in [&mut a, &mut b] {
        assert_eq!(next_event(stream).await.version, 3);
        let e = next_event(stream).await;
        assert_eq!(
            (event_type(&e), e.version, e.epoch.as_str()),
            (EventType::Deleted, 4, s.epoch.as_str())
        );
        assert!(e.server_time.is_some());
        match next_within(stream, PROMPT).await {
            Ok(None) => {}
            other => panic!("after DELETED the stream ends with OK, got {other:?}"),
        }
    }
    assert_code(
        app.client.subscribe(subscribe_req(&id)).await,
        Code::NotFound,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_skips_to_a_snapshot_and_never_slows_the_others() {
    let mut app = spawn_app_with(|c| c.stream_buffer = 4).await;
    let id = unique_id("slow");
    create(&mut app.client, chess(&id, HOUR_MS)).await;
    start(&mut app.client, &id).await;

    // The slow stream has its own connection with small HTTP/2 windows, so
    // not reading it pushes back on the server quickly.
    let endpoint = Endpoint::from_shared(app.url())
        .unwrap()
        .initial_stream_window_size(4 * 1024)
        .initial_connection_window_size(64 * 1024);
    let mut slow_client = connect(endpoint).await;
    let mut slow = subscribe(&mut slow_client, subscribe_req(&id)).await;

    // The fast stream and the writer each have their own connection too, and
    // the fast stream is read concurrently with the writes.
    const SWITCHES: u64 = 400;
    let last = 2 + SWITCHES;
    let mut fast_client = app.new_client().await;
    let mut fast = subscribe(&mut fast_client, subscribe_req(&id)).await;
    assert_eq!(next_event(&mut fast).await.version, 2);
    let fast_reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        while seen.last().is_none_or(|&(v, _, _)| v < last) {
            let e = next_change(&mut fast).await;
            seen.push((e.version, event_type(&e), Instant::now()));
        }
        seen
    });
    let mut writer = app.new_client().await;
    let began = Instant::now();
    for i in 0..SWITCHES {
        assert_eq!(switch(&mut writer, &id).await.version, 3 + i);
    }
    let writes_done = Instant::now();
    let seen = within(Duration::from_secs(10), "fast stream", fast_reader)
        .await
        .unwrap();
    let got: Vec<(u64, EventType)> = seen.iter().map(|&(v, t, _)| (v, t)).collect();
    let want: Vec<(u64, EventType)> = (3..=last).map(|v| (v, EventType::Switched)).collect();
    assert_eq!(
        got, want,
        "the fast stream gets every version in order, no snapshot"
    );
    let tail = seen
        .last()
        .unwrap()
        .2
        .saturating_duration_since(writes_done);
    println!(
        "slow consumer: {SWITCHES} switches in {:?}; the fast stream had the last one {tail:?} after the last reply",
        writes_done - began
    );
    assert!(
        tail < Duration::from_secs(1),
        "the fast stream trailed the writes by {tail:?}"
    );

    // Now read the slow stream: in order, never a gap — a jump only via a fresh SNAPSHOT.
    let mut prev = 0;
    let mut resyncs = 0;
    let mut received = 0;
    while prev < last {
        let e = next_change(&mut slow).await;
        received += 1;
        let kind = event_type(&e);
        if prev == 0 {
            assert_eq!((kind, e.version), (EventType::Snapshot, 2), "first message");
        } else if kind == EventType::Snapshot {
            assert!(e.version > prev, "snapshot v{} after v{prev}", e.version);
            resyncs += 1;
        } else {
            assert_eq!(
                e.version,
                prev + 1,
                "gap or duplicate without a snapshot ({kind:?})"
            );
        }
        prev = e.version;
    }
    println!(
        "slow consumer: received {received} messages for {SWITCHES} versions, {resyncs} resync snapshot(s)"
    );
    assert!(
        resyncs >= 1,
        "the slow stream should have skipped to a fresh SNAPSHOT"
    );
    assert!(
        received < SWITCHES as usize,
        "the slow stream skipped versions"
    );
    // Caught up, it is live again.
    switch(&mut app.client, &id).await;
    assert_eq!(next_change(&mut slow).await.version, last + 1);
}

#[tokio::test]
async fn server_shutdown_ends_open_streams_with_unavailable() {
    let grace = Duration::from_secs(10);
    let mut app = spawn_app_with(|c| c.shutdown_grace = grace).await;
    let running = create_started(&mut app.client).await;
    let pending = create_chess(&mut app.client).await;
    let mut a = subscribe(&mut app.client, subscribe_req(&running.session_id)).await;
    let mut other = app.new_client().await;
    let mut b = subscribe(&mut other, subscribe_req(&pending.session_id)).await;
    for stream in [&mut a, &mut b] {
        assert_eq!(event_type(&next_event(stream).await), EventType::Snapshot);
    }
    let stopping = Instant::now();
    app.trigger_stop();
    for stream in [&mut a, &mut b] {
        match next_within(stream, PROMPT).await {
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(
                    status.message().contains("from_version"),
                    "tells the client how to reconnect: {status:?}"
                );
            }
            other => panic!("expected UNAVAILABLE on shutdown, got {other:?}"),
        }
    }
    app.wait_stopped(grace + Duration::from_secs(2))
        .await
        .expect("clean stop");
    let took = stopping.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "shutdown took {took:?}: streams should not hold it for the grace period"
    );
    assert!(
        app.client
            .get_server_time(pb::GetServerTimeRequest {})
            .await
            .is_err(),
        "server is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_a_stream_nobody_reads_still_stops_within_the_grace_period() {
    let grace = Duration::from_secs(1);
    let mut app = spawn_app_with(|c| {
        c.shutdown_grace = grace;
        c.stream_buffer = 4;
    })
    .await;
    let s = create_started(&mut app.client).await;
    // A stream that is never read, on a connection with a tiny window, so its
    // producer is stuck behind a full buffer when the stop comes.
    let endpoint = Endpoint::from_shared(app.url())
        .unwrap()
        .initial_stream_window_size(1024);
    let mut stuck_client = connect(endpoint).await;
    let _stuck = subscribe(&mut stuck_client, subscribe_req(&s.session_id)).await;
    for _ in 0..200 {
        switch(&mut app.client, &s.session_id).await;
    }
    let stopping = Instant::now();
    app.trigger_stop();
    app.wait_stopped(grace + Duration::from_secs(3))
        .await
        .expect("stops");
    let took = stopping.elapsed();
    println!("shutdown with a stuck stream took {took:?} (grace {grace:?})");
    assert!(took < grace + Duration::from_millis(900), "took {took:?}");
}

/// How many SUBSCRIBE commands the Redis at `url` has run.
async fn subscribe_calls(url: &str) -> u64 {
    crate::redis_server::command_calls(url, "subscribe").await
}

/// Issue 12: a flood of `Subscribe` to ids that do not exist is answered
/// NOT_FOUND without the replica's one Pub/Sub connection joining (and
/// leaving) a channel for each, while a real stream keeps every event, in
/// order. Always the redis engine: the memory engine has no Pub/Sub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribes_to_missing_sessions_never_join_pub_sub() {
    use std::sync::{Arc, Mutex};
    use synckairos::config::{Config, EngineKind, Secret};

    let redis = RedisServer::start();
    let url = redis.url();
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        engine: EngineKind::Redis,
        redis_url: Some(Secret::new(&url)),
        database_url: None,
        shutdown_grace: Duration::from_secs(5),
        ..Config::default()
    };
    let mut app = launch(
        config,
        Some(Arc::new(Mutex::new(redis))),
        shared_isolation(),
    )
    .await;
    let s = create_started(&mut app.client).await;
    let mut stream = subscribe(&mut app.client, subscribe_req(&s.session_id)).await;
    assert_eq!(
        (event_type(&next_event(&mut stream).await), s.version),
        (EventType::Snapshot, 2)
    );
    let before = subscribe_calls(&url).await;

    const MISSING: usize = 200;
    let flood = {
        let client = app.new_client().await;
        // 32 in flight at a time: a burst of 200 reads at once can wait past
        // the pool's 250 ms on a loaded test machine and be answered
        // UNAVAILABLE, which is right for that overload but not this test.
        use futures_util::StreamExt as _;
        tokio::spawn(
            futures_util::stream::iter((0..MISSING).map(move |_| {
                let mut client = client.clone();
                async move { client.subscribe(subscribe_req(&unique_id("missing"))).await }
            }))
            .buffer_unordered(32)
            .collect::<Vec<_>>(),
        )
    };
    for v in 3..13 {
        switch(&mut app.client, &s.session_id).await;
        let e = next_change(&mut stream).await;
        assert_eq!(
            (event_type(&e), e.version),
            (EventType::Switched, v),
            "the real stream during the flood"
        );
    }
    let answers = within(Duration::from_secs(20), "the flood", flood)
        .await
        .unwrap();
    assert_eq!(answers.len(), MISSING);
    for answer in answers {
        assert_status(answer, Code::NotFound, "not found");
    }
    assert_eq!(
        subscribe_calls(&url).await - before,
        0,
        "SUBSCRIBE commands for sessions that do not exist"
    );
    switch(&mut app.client, &s.session_id).await;
    assert_eq!(next_change(&mut stream).await.version, 13);
}

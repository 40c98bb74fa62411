//! Issue 15's rules over gRPC, on either engine: UndoSwitch, lag
//! compensation (the reply, the stream's event and the audit keep it), the
//! abort timeouts fired by the server (and exactly once with a replica
//! killed, on the redis engine), AdjustTime leaving `cycle_started_at`, and
//! the new fields' bad input.

use std::time::Duration;

use synckairos::grpc::pb;
use synckairos::grpc::pb::EventType;
use tonic::Code;

use crate::child::ChildReplica;
use crate::helpers::*;
use crate::redis_server::RedisServer;

fn undo_req(id: &str) -> pb::UndoSwitchRequest {
    pb::UndoSwitchRequest {
        session_id: id.into(),
        ..Default::default()
    }
}

/// The next change on `stream`, within 3 s: the server's cancellation.
async fn next_cancelled(stream: &mut EventStream) -> pb::SessionEvent {
    within(Duration::from_secs(3), "CANCELLED", next_change(stream)).await
}

fn chess_with(
    id: &str,
    tweak: impl FnOnce(&mut pb::CreateSessionRequest),
) -> pb::CreateSessionRequest {
    let mut r = chess(id, 60_000);
    tweak(&mut r);
    r
}

#[tokio::test]
async fn an_undo_gives_the_turn_back_and_is_streamed() {
    let app = spawn_app().await;
    let mut c = app.new_client().await;
    let s = create_started(&mut c).await;
    let id = s.session_id.clone();
    let mut stream = subscribe(&mut c, subscribe_req(&id)).await;
    assert_eq!(next_event(&mut stream).await.version, 2);
    let switched = switch(&mut c, &id).await;
    assert_eq!(switched.active_participant_id, "black");
    let white_at_switch = find(&switched, "white").remaining_ms;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let u = c.undo_switch(undo_req(&id)).await.unwrap().into_inner();
    assert_eq!((u.active_participant_id.as_str(), u.version), ("white", 4));
    let white = find(&u, "white");
    assert!(
        (white_at_switch - 120..=white_at_switch).contains(&white.remaining_ms),
        "white's clock as at its switch, run from the undo: {} vs {white_at_switch}",
        white.remaining_ms
    );
    assert_eq!(white.cycle_count, 0);
    assert_eq!(
        find(&u, "black").remaining_ms,
        HOUR_MS,
        "black's 150 ms back"
    );
    assert_eq!(micros_of(&u.cycle_started_at), micros_of(&u.updated_at));
    assert_eq!(
        event_type(&next_change(&mut stream).await),
        EventType::Switched
    );
    let e = next_change(&mut stream).await;
    assert_eq!(
        (event_type(&e), e.participant_id.as_str()),
        (EventType::Undone, "white")
    );
    assert_status(
        c.undo_switch(undo_req(&id)).await,
        Code::FailedPrecondition,
        "no switch to undo",
    );
    let wrong = pb::UndoSwitchRequest {
        expected_version: Some(1),
        ..undo_req(&id)
    };
    assert_code(c.undo_switch(wrong).await, Code::Aborted);
}

#[tokio::test]
async fn lag_is_compensated_and_the_event_says_how_much() {
    let app = spawn_app().await;
    let mut c = app.new_client().await;
    let id = unique_id("lag");
    let created = create(&mut c, chess_with(&id, |r| r.lag_compensation = true)).await;
    assert!(created.lag_compensation);
    // 1+0: the quota starts at 3 × 390 ms.
    assert_eq!(find(&created, "white").lag_quota_ms, 1_170);
    start(&mut c, &id).await;
    let mut stream = subscribe(&mut c, subscribe_req(&id)).await;
    next_event(&mut stream).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = c
        .switch_cycle(pb::SwitchCycleRequest {
            lag_ms: Some(5_000),
            ..switch_req(&id)
        })
        .await
        .unwrap()
        .into_inner();
    let white = find(&s, "white");
    // Compensated min(5 s, 1.17 s), and never more than the turn took: nothing charged.
    assert_eq!(white.remaining_ms, 60_000);
    assert_eq!(white.lag_quota_ms, 1_170 + 390 - 1_170);
    let e = next_change(&mut stream).await;
    assert_eq!(
        (event_type(&e), e.lag_ms, e.lag_compensation_ms),
        (EventType::Switched, 5_000, 1_170)
    );
    for bad in [-1, 60_001] {
        let r = pb::SwitchCycleRequest {
            lag_ms: Some(bad),
            ..switch_req(&id)
        };
        assert_status(c.switch_cycle(r).await, Code::InvalidArgument, "lag_ms");
    }
}

#[tokio::test]
async fn bad_abort_timeouts_and_lag_settings_name_their_field() {
    let app = spawn_app().await;
    let mut c = app.new_client().await;
    for (field, tweak) in [
        (
            "start_timeout_ms",
            (|r: &mut pb::CreateSessionRequest| r.start_timeout_ms = 249) as fn(&mut _),
        ),
        ("start_timeout_ms", |r| r.start_timeout_ms = -5),
        ("first_move_timeout_ms", |r| r.first_move_timeout_ms = 1),
        ("first_move_timeout_ms", |r| {
            r.first_move_timeout_ms = i64::MAX
        }),
        ("lag_compensation", |r| {
            r.mode = pb::Mode::Global as i32;
            r.initial_time_ms = 0;
            r.global_time_ms = 60_000;
            r.lag_compensation = true;
        }),
    ] {
        let r = chess_with(&unique_id("bad"), tweak);
        let st = assert_code(c.create_session(r).await, Code::InvalidArgument);
        assert!(st.message().starts_with(field), "{field}: {}", st.message());
    }
}

#[tokio::test]
async fn a_session_nobody_starts_is_cancelled_by_the_server() {
    let app = spawn_app().await;
    let mut c = app.new_client().await;
    let id = unique_id("nostart");
    let s = create(&mut c, chess_with(&id, |r| r.start_timeout_ms = 400)).await;
    assert_eq!(s.start_timeout_ms, 400);
    assert_eq!(micros_of(&s.abort_at), micros_of(&s.created_at) + 400_000);
    let mut stream = subscribe(&mut c, subscribe_req(&id)).await;
    next_event(&mut stream).await;
    let e = next_cancelled(&mut stream).await;
    assert_eq!(
        (event_type(&e), e.version, e.cancel_reason),
        (
            EventType::Cancelled,
            2,
            pb::CancelReason::StartTimeout as i32
        )
    );
    let s = e.session.unwrap();
    assert_eq!(
        (status_of(&s), s.cancel_reason),
        (pb::Status::Cancelled, pb::CancelReason::StartTimeout as i32)
    );
    assert_eq!(micros_of(&s.ended_at), micros_of(&s.created_at) + 400_000);
    assert_quiet(&mut stream, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_first_move_that_never_comes_cancels_the_session_uncharged() {
    let app = spawn_app().await;
    let mut c = app.new_client().await;
    let id = unique_id("nomove");
    create(&mut c, chess_with(&id, |r| r.first_move_timeout_ms = 400)).await;
    let started = start(&mut c, &id).await;
    assert_eq!(
        micros_of(&started.abort_at),
        micros_of(&started.cycle_started_at) + 400_000,
        "the first move is due by abort_at"
    );
    assert_eq!(
        micros_of(&started.deadline_at),
        micros_of(&started.cycle_started_at) + 60_000_000,
        "deadline_at stays the clock's own"
    );
    let mut stream = subscribe(&mut c, subscribe_req(&id)).await;
    next_event(&mut stream).await;
    let e = next_cancelled(&mut stream).await;
    assert_eq!(
        (event_type(&e), e.participant_id.as_str(), e.cancel_reason),
        (
            EventType::Cancelled,
            "white",
            pb::CancelReason::FirstMoveTimeout as i32
        )
    );
    let s = get(&mut c, &id).await;
    assert_eq!(status_of(&s), pb::Status::Cancelled);
    assert_eq!(find(&s, "white").remaining_ms, 60_000, "not charged");
    assert_quiet(&mut stream, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn adjust_time_does_not_move_cycle_started_at() {
    let app = spawn_app().await;
    let mut c = app.new_client().await;
    let s = create_started(&mut c).await;
    let id = s.session_id.clone();
    let switched = switch(&mut c, &id).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let adjusted = c
        .adjust_time(pb::AdjustTimeRequest {
            session_id: id.clone(),
            participant_id: "black".into(),
            delta_ms: 5_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        micros_of(&adjusted.cycle_started_at),
        micros_of(&switched.cycle_started_at),
        "the turn began at the switch"
    );
    assert!(micros_of(&adjusted.updated_at) > micros_of(&switched.updated_at));
}

/// The abort timeouts go through the deadline machinery of every flag: set
/// through a replica that dies before they are due, they fire once, from a
/// survivor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_timeouts_set_through_a_killed_replica_fire_exactly_once() {
    if test_engine() != synckairos::config::EngineKind::Redis {
        return;
    }
    let _iso = shared_isolation();
    let redis = RedisServer::start();
    let url = redis.url();
    let (mut doomed, mut via_doomed) = ChildReplica::spawn(&url, None).await;
    let a = crate::replicas::Replica::start(&url).await;
    let b = crate::replicas::Replica::start(&url).await;
    let no_start = unique_id("abort-start");
    let no_move = unique_id("abort-move");
    create(
        &mut via_doomed,
        chess_with(&no_start, |r| r.start_timeout_ms = 800),
    )
    .await;
    create(
        &mut via_doomed,
        chess_with(&no_move, |r| r.first_move_timeout_ms = 800),
    )
    .await;
    start(&mut via_doomed, &no_move).await;
    let mut streams = Vec::new();
    for id in [&no_start, &no_move] {
        for r in [&a, &b] {
            let mut client = r.client.clone();
            let mut stream = subscribe(&mut client, subscribe_req(id)).await;
            next_event(&mut stream).await;
            streams.push((id.clone(), stream));
        }
    }
    doomed.kill();
    for (id, mut stream) in streams {
        let e = within(
            Duration::from_secs(5),
            "CANCELLED",
            next_change(&mut stream),
        )
        .await;
        let want = if id == no_start {
            pb::CancelReason::StartTimeout
        } else {
            pb::CancelReason::FirstMoveTimeout
        };
        assert_eq!(
            (event_type(&e), e.cancel_reason),
            (EventType::Cancelled, want as i32),
            "{id}"
        );
        assert_quiet(&mut stream, Duration::from_millis(600)).await;
    }
    let mut c = a.client.clone();
    for id in [&no_start, &no_move] {
        let s = get(&mut c, id).await;
        assert_eq!(
            (status_of(&s), s.version),
            (pb::Status::Cancelled, if id == &no_start { 2 } else { 3 })
        );
    }
}

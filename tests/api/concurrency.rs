//! Many callers on one session: no lost update, no double switch.

use std::sync::Arc;

use synckairos::grpc::pb;
use synckairos::grpc::pb::EventType;
use tokio::sync::Barrier;
use tonic::Code;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_unconditioned_switches_are_all_applied_exactly_once() {
    // A buffer big enough that the watching stream never has to skip.
    let mut app = spawn_app_with(|c| c.stream_buffer = 1_024).await;
    let s = create_started(&mut app.client).await;
    let id = s.session_id.clone();
    let mut stream = subscribe(&mut app.client, subscribe_req(&id)).await;
    assert_eq!(next_event(&mut stream).await.version, 2);

    const TASKS: usize = 16;
    const EACH: usize = 25;
    let barrier = Arc::new(Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        // Half share the test's connection, half have their own.
        let mut client = if t % 2 == 0 {
            app.client.clone()
        } else {
            app.new_client().await
        };
        let id = id.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut versions = Vec::with_capacity(EACH);
            for _ in 0..EACH {
                versions.push(switch(&mut client, &id).await.version);
            }
            versions
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        versions.extend(t.await.unwrap());
    }
    let total = (TASKS * EACH) as u64;
    versions.sort_unstable();
    assert_eq!(
        versions,
        (3..=2 + total).collect::<Vec<_>>(),
        "each reply has its own version"
    );

    let s = get(&mut app.client, &id).await;
    assert_eq!(
        s.version,
        2 + total,
        "create=1, start=2, then one version per switch"
    );
    assert_eq!(s.cycle_count, total);
    let per_participant: u64 = s.participants.iter().map(|p| p.cycle_count).sum();
    assert_eq!(per_participant, total);
    assert_eq!(
        find(&s, "white").cycle_count,
        total / 2,
        "strict alternation"
    );
    assert_eq!(
        s.active_participant_id, "white",
        "an even number of switches"
    );

    // The stream saw every one of them, in order.
    let mut expected = 3;
    while expected <= 2 + total {
        let e = next_change(&mut stream).await;
        assert_eq!((e.version, event_type(&e)), (expected, EventType::Switched));
        expected += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_switches_from_the_active_participant_apply_once() {
    let mut app = spawn_app().await;
    let s = create_started(&mut app.client).await;
    let id = s.session_id.clone();
    const RACERS: usize = 6;
    let mut clients = Vec::new();
    for _ in 0..RACERS {
        clients.push(app.new_client().await);
    }
    for round in 0..10u64 {
        let current = get(&mut app.client, &id).await;
        let mover = current.active_participant_id.clone();
        let mut ok = Vec::new();
        let mut refused = 0;
        for reply in race_conditional_switches(&clients, &id, &mover).await {
            match reply {
                Ok(s) => ok.push(s),
                Err(status) => {
                    assert_eq!(
                        status.code(),
                        Code::FailedPrecondition,
                        "round {round}: {status:?}"
                    );
                    assert!(
                        status.message().contains("not the active participant"),
                        "{status:?}"
                    );
                    refused += 1;
                }
            }
        }
        assert_eq!(ok.len(), 1, "round {round}: exactly one racer wins");
        assert_eq!(refused, RACERS - 1);
        assert_eq!(ok[0].version, 3 + round);
        assert_ne!(ok[0].active_participant_id, mover);
    }
    assert_eq!(get(&mut app.client, &id).await.version, 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writes_with_the_same_expected_version_apply_once() {
    let mut app = spawn_app().await;
    let s = create_started(&mut app.client).await;
    let id = s.session_id.clone();
    const RACERS: usize = 6;
    let barrier = Arc::new(Barrier::new(RACERS));
    let mut racers = Vec::new();
    for i in 0..RACERS {
        let mut client = app.new_client().await;
        let id = id.clone();
        let barrier = barrier.clone();
        racers.push(tokio::spawn(async move {
            barrier.wait().await;
            // Mixed commands, all guarded by version 2.
            if i % 2 == 0 {
                client
                    .switch_cycle(pb::SwitchCycleRequest {
                        expected_version: Some(2),
                        ..switch_req(&id)
                    })
                    .await
            } else {
                client
                    .adjust_time(pb::AdjustTimeRequest {
                        session_id: id,
                        participant_id: "black".into(),
                        delta_ms: 1_000,
                        expected_version: Some(2),
                        ..Default::default()
                    })
                    .await
            }
        }));
    }
    let mut wins = 0;
    for r in racers {
        match r.await.unwrap() {
            Ok(s) => {
                assert_eq!(s.get_ref().version, 3);
                wins += 1;
            }
            Err(status) => assert_eq!(status.code(), Code::Aborted, "{status:?}"),
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(get(&mut app.client, &id).await.version, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sessions_in_parallel_do_not_interfere() {
    let mut app = spawn_app().await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut client = app.client.clone();
        tasks.push(tokio::spawn(async move {
            let s = create_started(&mut client).await;
            for _ in 0..30 {
                switch(&mut client, &s.session_id).await;
            }
            get(&mut client, &s.session_id).await
        }));
    }
    for t in tasks {
        let s = t.await.unwrap();
        assert_eq!((s.version, s.cycle_count), (32, 30));
    }
    let _ = &mut app;
}

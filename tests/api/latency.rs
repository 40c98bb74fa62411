//! Latency of the hot path (SwitchCycle) and of the event it produces, as a
//! client sees them over real TCP.

use std::time::{Duration, Instant};

use crate::helpers::*;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Switches on `writer`, and after each one waits for its event on `stream`;
/// returns the median reply time and the median time until the event arrived.
async fn measure(
    writer: &mut Client,
    stream: &mut EventStream,
    id: &str,
    rounds: usize,
) -> (Duration, Duration) {
    let mut replies = Vec::new();
    let mut events = Vec::new();
    for _ in 0..rounds {
        let sent = Instant::now();
        let v = switch(writer, id).await.version;
        replies.push(sent.elapsed());
        let e = next_change(stream).await;
        assert_eq!(e.version, v);
        events.push(sent.elapsed());
    }
    (median(replies), median(events))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_and_its_event_take_milliseconds_on_separate_connections() {
    let mut app = spawn_app_alone().await;
    let s = create_started(&mut app.client).await;
    let mut reader = app.new_client().await;
    let mut stream = subscribe(&mut reader, subscribe_req(&s.session_id)).await;
    next_event(&mut stream).await;
    let (reply, event) = measure(&mut app.client, &mut stream, &s.session_id, 30).await;
    println!(
        "separate connections: SwitchCycle reply median {reply:?}, its event median {event:?}"
    );
    assert!(reply < Duration::from_millis(10), "reply median {reply:?}");
    assert!(event < Duration::from_millis(10), "event median {event:?}");
}

/// The usual client: one channel for its Subscribe stream and its own moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_and_its_event_take_milliseconds_on_one_shared_connection() {
    let mut app = spawn_app_alone().await;
    let s = create_started(&mut app.client).await;
    let mut stream = subscribe(&mut app.client, subscribe_req(&s.session_id)).await;
    next_event(&mut stream).await;
    let mut writer = app.client.clone();
    let (reply, event) = measure(&mut writer, &mut stream, &s.session_id, 30).await;
    println!(
        "one shared connection: SwitchCycle reply median {reply:?}, its event median {event:?}"
    );
    assert!(reply < Duration::from_millis(10), "reply median {reply:?}");
    assert!(
        event < Duration::from_millis(10),
        "event median {event:?} (seen: ~44 ms; ~1 ms with TCP_NODELAY)"
    );
}

/// The hot path for a session whose reply is a few KiB: ten players, or
/// metadata near its 4 KiB limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_takes_milliseconds_when_the_session_is_a_few_kib() {
    let mut app = spawn_app_alone().await;
    let mut ten = chess(&unique_id("ten"), HOUR_MS);
    ten.participants = (0..10)
        .map(|i| participant(&format!("player-{i}")))
        .collect();
    let mut padded = chess(&unique_id("padded"), HOUR_MS);
    padded.metadata = std::collections::HashMap::from([("notes".to_string(), "x".repeat(2_000))]);
    for (what, req) in [("10 participants", ten), ("2 KiB of metadata", padded)] {
        let id = req.session_id.clone();
        create(&mut app.client, req).await;
        start(&mut app.client, &id).await;
        let mut took = Vec::new();
        for _ in 0..20 {
            let sent = Instant::now();
            switch(&mut app.client, &id).await;
            took.push(sent.elapsed());
        }
        let m = median(took);
        println!("{what}: SwitchCycle median {m:?}");
        assert!(
            m < Duration::from_millis(10),
            "{what}: SwitchCycle median {m:?} (seen: ~44 ms; ~1 ms with TCP_NODELAY)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_takes_milliseconds_for_a_small_session() {
    let mut app = spawn_app_alone().await;
    let s = create_started(&mut app.client).await;
    let mut took = Vec::new();
    for _ in 0..30 {
        let sent = Instant::now();
        switch(&mut app.client, &s.session_id).await;
        took.push(sent.elapsed());
    }
    let m = median(took);
    println!("2 participants: SwitchCycle median {m:?}");
    assert!(m < Duration::from_millis(10), "SwitchCycle median {m:?}");
}

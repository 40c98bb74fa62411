//! Issue 12, a hostile client against a real server (both engines): per-caller
//! rate limits, the cap on sessions nobody starts, and a panicking handler.
//! The rest of the hostile client lives beside the limit it meets:
//! hostile_input.rs (control characters everywhere a string goes, malformed
//! page tokens, the fastest repeating session left alone), limits.rs
//! (thousands of streams on one connection, clients that never read,
//! oversized messages, keepalive, connection age), subscribe.rs (a flood of
//! Subscribe to missing ids while a real stream keeps its events).

use std::time::{Duration, Instant};

use synckairos::config::Rate;
use synckairos::grpc::pb::{self, EventType};
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::*;

/// The delay a RESOURCE_EXHAUSTED status says to wait, from its RetryInfo.
fn retry_delay(status: &tonic::Status) -> Duration {
    status
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .unwrap_or_else(|| panic!("no RetryInfo in {status:?}"))
}

#[tokio::test]
async fn creates_beyond_a_callers_rate_are_refused_with_when_to_retry() {
    let mut app = spawn_app_with(|c| c.create_rate = Rate::new(1, 3)).await;
    for _ in 0..3 {
        create_chess(&mut app.client).await;
    }
    let refused = app
        .client
        .create_session(chess(&unique_id("over"), 60_000))
        .await
        .map(|_| ());
    let status = assert_status(
        refused,
        Code::ResourceExhausted,
        "at most 1 creates a second",
    );
    let delay = retry_delay(&status);
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(1),
        "retry after {delay:?}"
    );
    // The limit is on creates: the same caller's other calls go on.
    let id = create_chess_after(&mut app.client, delay).await;
    start(&mut app.client, &id).await;
    switch(&mut app.client, &id).await;
    get(&mut app.client, &id).await;
}

/// Waits `delay` (the RetryInfo), then creates a session: the retry is let in.
async fn create_chess_after(client: &mut Client, delay: Duration) -> String {
    tokio::time::sleep(delay).await;
    create_chess(client).await.session_id
}

#[tokio::test]
async fn mutations_beyond_a_callers_rate_are_refused_and_reads_are_not() {
    let mut app = spawn_app_with(|c| c.mutation_rate = Rate::new(1, 4)).await;
    let id = create_chess(&mut app.client).await.session_id;
    start(&mut app.client, &id).await;
    for _ in 0..3 {
        switch(&mut app.client, &id).await;
    }
    let before = get(&mut app.client, &id).await.version;
    let refused = app.client.switch_cycle(switch_req(&id)).await.map(|_| ());
    let status = assert_status(
        refused,
        Code::ResourceExhausted,
        "at most 1 mutations a second",
    );
    assert!(retry_delay(&status) <= Duration::from_secs(1));
    // Refused before it is looked at: nothing was applied.
    assert_eq!(get(&mut app.client, &id).await.version, before);
    // Also a refused delete; reads and the server time are not limited.
    let del = app
        .client
        .delete_session(pb::DeleteSessionRequest {
            session_id: id.clone(),
        })
        .await
        .map(|_| ());
    assert_code(del, Code::ResourceExhausted);
    for _ in 0..20 {
        get(&mut app.client, &id).await;
        app.client
            .get_server_time(pb::GetServerTimeRequest {})
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_session_nobody_starts_expires_when_its_wait_ends() {
    let mut app = spawn_app_with(|c| c.unstarted_ttl = Duration::from_millis(1_500)).await;
    let s = create_chess(&mut app.client).await;
    let mut stream = subscribe(&mut app.client, subscribe_req(&s.session_id)).await;
    assert_eq!(
        event_type(&next_event(&mut stream).await),
        EventType::Snapshot
    );
    // Calls meanwhile do not extend the wait.
    tokio::time::sleep(Duration::from_millis(700)).await;
    app.client
        .adjust_time(pb::AdjustTimeRequest {
            session_id: s.session_id.clone(),
            participant_id: "white".into(),
            delta_ms: 1_000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        event_type(&next_change(&mut stream).await),
        EventType::TimeAdjusted
    );
    let created = Instant::now() - Duration::from_millis(700);
    let e = within(
        Duration::from_secs(5),
        "the EXPIRED event",
        next_change(&mut stream),
    )
    .await;
    assert_eq!(event_type(&e), EventType::Expired);
    let waited = created.elapsed();
    assert!(
        waited >= Duration::from_millis(1_400) && waited < Duration::from_millis(2_500),
        "expired {waited:?} after creation, for a wait of 1.5 s"
    );
    let after = get(&mut app.client, &s.session_id).await;
    assert_eq!(status_of(&after), pb::Status::Expired);
    let late = app.client.start_session(pb::StartSessionRequest {
        session_id: s.session_id.clone(),
        ..Default::default()
    });
    assert_code(late.await.map(|_| ()), Code::FailedPrecondition);
}

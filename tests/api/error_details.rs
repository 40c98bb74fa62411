//! Rich error details (issue 12, item 4): every `INVALID_ARGUMENT` carries a
//! `google.rpc.BadRequest` whose one field violation names the request field
//! the way the message does (`participants[1].participant_id`) and says why,
//! so a generated client in any language reads the field without parsing the
//! message. The message itself is unchanged (`<field>: <reason>`).
//!
//!   CARGO_TARGET_DIR=$HOME/.cache/synckairos-target cargo test --test api error_details

use std::fmt::Debug;

use synckairos::config::Secret;
use synckairos::grpc::pb;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::helpers::*;
use crate::pg::TestDb;

/// Asserts `INVALID_ARGUMENT` with exactly `message` (`<field>: <reason>`) and
/// exactly one field violation: `field`, described by the reason.
#[track_caller]
fn assert_bad_field<T: Debug>(result: Result<T, Status>, field: &str, message: &str) {
    let status = match result {
        Ok(v) => panic!("expected INVALID_ARGUMENT on {field}, got Ok({v:?})"),
        Err(s) => s,
    };
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "code; message: {:?}",
        status.message()
    );
    assert_eq!(status.message(), message, "the message is unchanged");
    let bad = status.get_details_bad_request().unwrap_or_else(|| {
        panic!(
            "INVALID_ARGUMENT {:?} carries no google.rpc.BadRequest (details: {:?})",
            status.message(),
            status.details()
        )
    });
    let fields: Vec<(&str, &str)> = bad
        .field_violations
        .iter()
        .map(|v| (v.field.as_str(), v.description.as_str()))
        .collect();
    let reason = message
        .strip_prefix(&format!("{field}: "))
        .expect("the message starts with the field");
    assert_eq!(
        fields,
        vec![(field, reason)],
        "field violations of {message:?}"
    );
}

const ID_CHARS: &str = "may only contain A-Z a-z 0-9 . _ : -, found";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_session_id_is_named_in_the_details() {
    let mut app = spawn_app().await;
    let c = &mut app.client;
    assert_bad_field(
        c.get_session(pb::GetSessionRequest {
            session_id: "no spaces".into(),
        })
        .await,
        "session_id",
        &format!("session_id: {ID_CHARS} ' '"),
    );
    // Empty but required.
    assert_bad_field(
        c.get_session(pb::GetSessionRequest {
            session_id: String::new(),
        })
        .await,
        "session_id",
        "session_id: must not be empty",
    );
    assert_bad_field(
        c.get_session(pb::GetSessionRequest {
            session_id: "x".repeat(129),
        })
        .await,
        "session_id",
        "session_id: must be at most 128 characters, got 129",
    );
    // A stream refuses it the same way.
    assert_bad_field(
        c.subscribe(subscribe_req("a/b")).await,
        "session_id",
        &format!("session_id: {ID_CHARS} '/'"),
    );
    // A bad request_id on a mutation, before the session is looked up.
    assert_bad_field(
        c.start_session(pb::StartSessionRequest {
            session_id: unique_id("missing"),
            request_id: "r#1".into(),
            ..Default::default()
        })
        .await,
        "request_id",
        &format!("request_id: {ID_CHARS} '#'"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_nested_field_is_named_by_its_path() {
    let mut app = spawn_app().await;
    let c = &mut app.client;
    let mut req = chess(&unique_id("nested"), HOUR_MS);
    req.participants[1].participant_id = "bl@ck".into();
    assert_bad_field(
        c.create_session(req).await,
        "participants[1].participant_id",
        &format!("participants[1].participant_id: {ID_CHARS} '@'"),
    );
    // Found by the engine rather than the parser: same shape.
    let mut req = chess(&unique_id("nested"), HOUR_MS);
    req.participants[1].participant_id = "white".into();
    assert_bad_field(
        c.create_session(req).await,
        "participants[1].participant_id",
        "participants[1].participant_id: duplicate id \"white\"",
    );
    // Too many participants: refused by the parser before any is parsed.
    let mut req = chess(&unique_id("nested"), HOUR_MS);
    req.participants = (0..1001).map(|i| participant(&format!("p{i}"))).collect();
    assert_bad_field(
        c.create_session(req).await,
        "participants",
        "participants: must hold 1 to 1000 participants, got 1001",
    );
    // None at all: empty but required.
    let mut req = chess(&unique_id("nested"), HOUR_MS);
    req.participants.clear();
    assert_bad_field(
        c.create_session(req).await,
        "participants",
        "participants: must hold 1 to 1000 participants, got 0",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_enum_is_named_in_the_details() {
    let mut app = spawn_app().await;
    let c = &mut app.client;
    let mut req = chess(&unique_id("enum"), HOUR_MS);
    req.mode = 99;
    assert_bad_field(
        c.create_session(req).await,
        "mode",
        "mode: unknown value 99",
    );
    // Empty (UNSPECIFIED) but required.
    let mut req = chess(&unique_id("enum"), HOUR_MS);
    req.mode = 0;
    assert_bad_field(c.create_session(req).await, "mode", "mode: is required");
    let mut req = chess(&unique_id("enum"), HOUR_MS);
    req.timeout_action = 42;
    assert_bad_field(
        c.create_session(req).await,
        "timeout_action",
        "timeout_action: unknown value 42",
    );
    let mut req = chess(&unique_id("enum"), HOUR_MS);
    req.time_control = Some(pb::TimeControl {
        delay_ms: 2000,
        delay_kind: 7,
        ..Default::default()
    });
    assert_bad_field(
        c.create_session(req).await,
        "time_control.delay_kind",
        "time_control.delay_kind: unknown value 7",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_duration_is_named_in_the_details() {
    let mut app = spawn_app().await;
    let c = &mut app.client;
    assert_bad_field(
        c.create_session(chess(&unique_id("duration"), -5)).await,
        "initial_time_ms",
        "initial_time_ms: must be between 1 and 2592000000 ms (30 days), got -5",
    );
    let mut req = chess(&unique_id("duration"), HOUR_MS);
    req.time_control = Some(pb::TimeControl {
        increment_ms: -1,
        ..Default::default()
    });
    assert_bad_field(
        c.create_session(req).await,
        "time_control.increment_ms",
        "time_control.increment_ms: must be between 0 and 2592000000 ms, got -1",
    );
    // Refused by the engine on a stored session (through the store's error).
    let s = create_chess(c).await;
    assert_bad_field(
        c.adjust_time(pb::AdjustTimeRequest {
            session_id: s.session_id.clone(),
            participant_id: "white".into(),
            delta_ms: 0,
            ..Default::default()
        })
        .await,
        "delta_ms",
        "delta_ms: must be non-zero and at most 2592000000 ms either way, got 0",
    );
    // Neither target set.
    assert_bad_field(
        c.adjust_time(pb::AdjustTimeRequest {
            session_id: s.session_id.clone(),
            delta_ms: 1000,
            ..Default::default()
        })
        .await,
        "participant_id",
        "participant_id: set exactly one of participant_id and group_id",
    );
}

/// "aéb" once panicked in the token decoder (it sliced a string by bytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_page_token_is_named_in_the_details() {
    let db = TestDb::create();
    let mut app = spawn_app_with(|c| c.database_url = Some(Secret::new(db.url()))).await;
    let c = &mut app.client;
    let id = unique_id("token");
    let long = "A".repeat(10_000);
    for token in ["aéb", "%%%", long.as_str(), "6869", "é"] {
        assert_bad_field(
            c.list_session_events(pb::ListSessionEventsRequest {
                session_id: id.clone(),
                page_size: 10,
                page_token: token.into(),
                after_version: None,
            })
            .await,
            "page_token",
            "page_token: not a token this server issued",
        );
    }
    assert_bad_field(
        c.list_session_events(pb::ListSessionEventsRequest {
            session_id: id.clone(),
            page_size: 1001,
            page_token: String::new(),
            after_version: None,
        })
        .await,
        "page_size",
        "page_size: must be at most 1000, got 1001",
    );
}

/// What an operator sees: grpcurl (Go, no proto files) prints the violation,
/// because reflection also serves google.rpc's error_details.proto.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_shows_the_bad_request() {
    use crate::grpcurl::{grpcurl, text};
    let app = spawn_app().await;
    let body = format!(
        r#"{{"sessionId":"{}","mode":"MODE_PER_PARTICIPANT","initialTimeMs":"60000","participants":[{{"participantId":"white"}},{{"participantId":"bl@ck"}}]}}"#,
        unique_id("grpcurl")
    );
    let out = grpcurl(
        app.addr,
        &[
            "-format-error",
            "-d",
            &body,
            "synckairos.v1.SyncService/CreateSession",
        ],
    )
    .await;
    assert!(!out.status.success(), "{}", text(&out.stdout));
    let shown = text(&out.stderr);
    let json: serde_json::Value = serde_json::from_str(&shown)
        .unwrap_or_else(|e| panic!("grpcurl -format-error printed no JSON ({e}):\n{shown}"));
    let reason = format!("{ID_CHARS} '@'");
    assert_eq!(json["code"], 3, "{shown}");
    assert_eq!(
        json["message"],
        format!("participants[1].participant_id: {reason}"),
        "{shown}"
    );
    assert_eq!(
        json["details"],
        serde_json::json!([{
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{
                "field": "participants[1].participant_id",
                "description": reason,
            }],
        }]),
        "{shown}"
    );
}

//! Issue 12, hostile input, against a real server (both engines): a control
//! character in any string field a client sends is INVALID_ARGUMENT naming
//! the field (U+2028 is not one and is kept); a duration that repeats below
//! its 250 ms floor is refused; the fastest repeating session the rules allow,
//! left alone, commits one round and stops; and (memory engine with
//! `DATABASE_URL`) a request refused for a U+0000 does not stop the audit.
//!
//!   CARGO_TARGET_DIR=$HOME/.cache/synckairos-target cargo test --test api hostile_input

use std::collections::HashMap;
use std::time::{Duration, Instant};

use synckairos::config::{Config, EngineKind, Secret};
use synckairos::grpc::pb;
use synckairos::grpc::pb::EventType;
use tonic::Code;

use crate::helpers::*;
use crate::pg::TestDb;

/// The floor of every duration that repeats (engine::MIN_REPEATING_MS).
const FLOOR_MS: i64 = 250;

/// The control characters every field is tried with, and their U+ names.
const CONTROLS: [(char, &str); 4] = [
    ('\u{0}', "U+0000"),
    ('\u{1b}', "U+001B"),
    ('\u{7f}', "U+007F"),
    ('\u{85}', "U+0085"),
];

fn per_cycle(id: &str, cycle_ms: i64, seats: &[&str]) -> pb::CreateSessionRequest {
    pb::CreateSessionRequest {
        session_id: id.into(),
        mode: pb::Mode::PerCycle as i32,
        cycle_time_ms: cycle_ms,
        timeout_action: pb::TimeoutAction::Skip as i32,
        participants: seats.iter().map(|s| participant(s)).collect(),
        ..Default::default()
    }
}

fn with_metadata(id: &str, k: &str, v: &str) -> pb::CreateSessionRequest {
    let mut req = chess(id, 60_000);
    req.metadata = [
        ("title".to_owned(), "ok".to_owned()),
        (k.to_owned(), v.to_owned()),
    ]
    .into();
    req
}

#[tokio::test]
async fn a_control_character_in_metadata_is_refused_naming_the_entry() {
    let mut app = spawn_app().await;
    for (c, name) in CONTROLS {
        let id = unique_id("meta-value");
        let r = app
            .client
            .create_session(with_metadata(&id, "note", &format!("ab{c}")))
            .await;
        assert_status(
            r,
            Code::InvalidArgument,
            &format!("metadata[\"note\"]: must not contain control characters ({name} at byte 2)"),
        );
        let r = app
            .client
            .create_session(with_metadata(&id, &format!("k{c}"), "v"))
            .await;
        let s = assert_status(r, Code::InvalidArgument, "the key must not contain control");
        assert!(
            s.message().starts_with("metadata[\"k") && s.message().contains(name),
            "{s:?}"
        );
        // Nothing was made.
        assert_code(
            app.client
                .get_session(pb::GetSessionRequest { session_id: id })
                .await,
            Code::NotFound,
        );
    }
}

#[tokio::test]
async fn a_line_separator_is_not_a_control_character_and_round_trips() {
    let mut app = spawn_app().await;
    let id = unique_id("meta-2028");
    let text = "line\u{2028}separator, zero\u{200b}width, é, 🎲";
    let made = create(&mut app.client, with_metadata(&id, "note\u{2028}", text)).await;
    assert_eq!(
        made.metadata.get("note\u{2028}").map(String::as_str),
        Some(text)
    );
    assert_eq!(
        get(&mut app.client, &id)
            .await
            .metadata
            .get("note\u{2028}")
            .map(String::as_str),
        Some(text)
    );
    // An epoch with one is merely not the session's: a SNAPSHOT, not an error.
    let mut stream = subscribe(
        &mut app.client,
        pb::SubscribeRequest {
            from_version: Some(1),
            epoch: "old\u{2028}epoch".into(),
            ..subscribe_req(&id)
        },
    )
    .await;
    assert_eq!(
        event_type(&next_event(&mut stream).await),
        EventType::Snapshot
    );
}

/// Every other string field: ids (already `[A-Za-z0-9._:-]`), the Subscribe
/// epoch and the page token. Each refusal is INVALID_ARGUMENT and its
/// message begins with the field.
#[tokio::test]
async fn a_control_character_in_any_other_string_field_is_refused_naming_it() {
    let mut app = spawn_app().await;
    let id = unique_id("hostile-fields");
    create(&mut app.client, chess(&id, 60_000)).await;
    for (c, name) in CONTROLS {
        let bad = format!("x{c}y");
        let mut cases: Vec<(&str, Result<(), tonic::Status>)> = Vec::new();
        let c1 = &mut app.client;
        let r = c1
            .create_session(pb::CreateSessionRequest {
                session_id: bad.clone(),
                ..chess("unused", 60_000)
            })
            .await;
        cases.push(("session_id", r.map(|_| ())));
        let mut req = chess(&unique_id("p"), 60_000);
        req.participants[1].participant_id = bad.clone();
        cases.push((
            "participants[1].participant_id",
            c1.create_session(req).await.map(|_| ()),
        ));
        let mut req = chess(&unique_id("g"), 60_000);
        req.participants[0].group_id = Some(bad.clone());
        cases.push((
            "participants[0].group_id",
            c1.create_session(req).await.map(|_| ()),
        ));
        let mut req = chess(&unique_id("gg"), 60_000);
        req.mode = pb::Mode::PerGroup as i32;
        req.groups = vec![pb::GroupSpec {
            group_id: bad.clone(),
            initial_time_ms: 60_000,
        }];
        cases.push((
            "groups[0].group_id",
            c1.create_session(req).await.map(|_| ()),
        ));
        let mut req = chess(&unique_id("r"), 60_000);
        req.request_id = bad.clone();
        cases.push(("request_id", c1.create_session(req).await.map(|_| ())));
        let r = c1
            .get_session(pb::GetSessionRequest {
                session_id: bad.clone(),
            })
            .await;
        cases.push(("session_id", r.map(|_| ())));
        let r = c1
            .start_session(pb::StartSessionRequest {
                session_id: id.clone(),
                first_participant_id: Some(bad.clone()),
                ..Default::default()
            })
            .await;
        cases.push(("first_participant_id", r.map(|_| ())));
        let r = c1
            .switch_cycle(pb::SwitchCycleRequest {
                from_participant_id: Some(bad.clone()),
                ..switch_req(&id)
            })
            .await;
        cases.push(("from_participant_id", r.map(|_| ())));
        let r = c1
            .switch_cycle(pb::SwitchCycleRequest {
                next_participant_id: Some(bad.clone()),
                ..switch_req(&id)
            })
            .await;
        cases.push(("next_participant_id", r.map(|_| ())));
        let r = c1
            .pause_session(pb::PauseSessionRequest {
                session_id: id.clone(),
                request_id: bad.clone(),
                ..Default::default()
            })
            .await;
        cases.push(("request_id", r.map(|_| ())));
        let r = c1
            .adjust_time(pb::AdjustTimeRequest {
                session_id: id.clone(),
                participant_id: bad.clone(),
                delta_ms: 1_000,
                ..Default::default()
            })
            .await;
        cases.push(("participant_id", r.map(|_| ())));
        let r = c1
            .adjust_time(pb::AdjustTimeRequest {
                session_id: id.clone(),
                group_id: bad.clone(),
                delta_ms: 1_000,
                ..Default::default()
            })
            .await;
        cases.push(("group_id", r.map(|_| ())));
        let r = c1
            .delete_session(pb::DeleteSessionRequest {
                session_id: bad.clone(),
            })
            .await;
        cases.push(("session_id", r.map(|_| ())));
        let r = c1
            .subscribe(pb::SubscribeRequest {
                epoch: bad.clone(),
                from_version: Some(1),
                ..subscribe_req(&id)
            })
            .await;
        cases.push(("epoch", r.map(|_| ())));
        let r = c1
            .list_session_events(pb::ListSessionEventsRequest {
                session_id: id.clone(),
                page_token: bad.clone(),
                ..Default::default()
            })
            .await;
        cases.push(("page_token", r.map(|_| ())));

        for (field, r) in cases {
            let s = match r {
                Ok(()) => panic!("{name} in {field}: accepted"),
                Err(s) => s,
            };
            assert_eq!(s.code(), Code::InvalidArgument, "{name} in {field}: {s:?}");
            assert!(
                s.message().starts_with(&format!("{field}: ")),
                "{name} in {field}: the message must name the field: {:?}",
                s.message()
            );
        }
        let s = assert_code(
            app.client
                .subscribe(pb::SubscribeRequest {
                    epoch: bad.clone(),
                    ..subscribe_req(&id)
                })
                .await
                .map(|_| ()),
            Code::InvalidArgument,
        );
        assert_eq!(
            s.message(),
            format!("epoch: must not contain control characters ({name} at byte 1)")
        );
    }
    // Nothing above touched the session.
    assert_eq!(get(&mut app.client, &id).await.version, 1);
}

#[tokio::test]
async fn a_repeating_duration_below_its_floor_is_refused_naming_the_floor() {
    let mut app = spawn_app().await;
    for ms in [1, FLOOR_MS - 1] {
        let r = app
            .client
            .create_session(per_cycle(&unique_id("fast"), ms, &["a", "b"]))
            .await;
        let s = assert_status(
            r,
            Code::InvalidArgument,
            "cycle_time_ms: must be at least 250 ms",
        );
        assert!(s.message().contains(&format!("got {ms}")), "{s:?}");
    }
    let mut byo = chess(&unique_id("byo"), 60_000);
    byo.time_control = Some(pb::TimeControl {
        byoyomi_periods: 5,
        byoyomi_period_ms: 1,
        ..Default::default()
    });
    assert_status(
        app.client.create_session(byo).await,
        Code::InvalidArgument,
        "time_control.byoyomi_period_ms: must be at least 250 ms",
    );
    let mut canadian = chess(&unique_id("can"), 60_000);
    canadian.time_control = Some(pb::TimeControl {
        canadian_stones: 10,
        canadian_block_ms: 100,
        ..Default::default()
    });
    assert_status(
        app.client.create_session(canadian).await,
        Code::InvalidArgument,
        "time_control.canadian_block_ms: must be at least 250 ms",
    );
    let mut skip = chess(&unique_id("skip"), 60_000);
    skip.timeout_action = pb::TimeoutAction::Skip as i32;
    skip.participants[1].initial_time_ms = Some(1);
    assert_status(
        app.client.create_session(skip).await,
        Code::InvalidArgument,
        "participants[1].initial_time_ms: must be at least 250 ms with TIMEOUT_ACTION_SKIP",
    );
    // At the floor: accepted.
    create(
        &mut app.client,
        per_cycle(&unique_id("floor"), FLOOR_MS, &["a", "b"]),
    )
    .await;
}

/// The fastest repeating session the rules allow (per-cycle, SKIP, a cycle
/// at the floor), started and left alone for a few seconds: one TIMED_OUT
/// per seat but the last, then EXPIRED after one round, then nothing.
#[tokio::test]
async fn the_fastest_repeating_session_left_alone_commits_one_round_then_stops() {
    let mut app = spawn_app().await;
    let id = unique_id("left-alone");
    let seats = ["s1", "s2", "s3", "s4"];
    let (mut stream, started) =
        start_watched(&mut app.client, per_cycle(&id, FLOOR_MS, &seats)).await;
    let mut changes = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        match tokio::time::timeout(Duration::from_millis(200), stream.message()).await {
            Err(_) => {}
            Ok(Ok(Some(e))) if event_type(&e) == EventType::Heartbeat => {}
            Ok(Ok(Some(e))) => changes.push(e),
            Ok(other) => panic!("the stream ended: {other:?}"),
        }
    }
    let got: Vec<_> = changes
        .iter()
        .map(|e| (event_type(e), e.participant_id.as_str(), e.version))
        .collect();
    assert_eq!(
        got,
        vec![
            (EventType::TimedOut, "s1", 3),
            (EventType::TimedOut, "s2", 4),
            (EventType::TimedOut, "s3", 5),
            (EventType::Expired, "s4", 6),
        ],
        "one round of automatic commits, then the session ends"
    );
    // Never faster than the floor: each timeout is processed at its
    // deadline (where the next cycle starts, or the session ends).
    let mut at = micros_of(&started.session.as_ref().unwrap().cycle_started_at);
    for e in &changes {
        let s = e.session.as_ref().unwrap();
        let when = match event_type(e) {
            EventType::Expired => micros_of(&s.ended_at),
            _ => micros_of(&s.cycle_started_at),
        };
        assert_eq!(when - at, FLOOR_MS * 1_000, "{e:?}");
        at = when;
    }
    let s = get(&mut app.client, &id).await;
    assert_eq!((status_of(&s), s.version), (pb::Status::Expired, 6));
    assert!(s.deadline_at.is_none());
    assert!(find(&s, "s4").expired);
}

/// Memory engine with `DATABASE_URL`: a CreateSession with U+0000 in its
/// metadata is refused at the edge, so it never reaches Postgres's `jsonb`
/// (which refuses it) and the session created after it is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_created_after_a_refused_nul_reaches_postgres() {
    let db = TestDb::create();
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        engine: EngineKind::Memory,
        database_url: Some(Secret::new(db.url())),
        shutdown_grace: Duration::from_secs(1),
        ..Config::default()
    };
    let mut app = launch(config, None, shared_isolation()).await;
    let nul = unique_id("nul");
    // The stall needs a row to write: the refused request must be the only
    // thing in its way, so the healthy session comes right after it.
    let refused = app
        .client
        .create_session(with_metadata(&nul, "note", "a\u{0}b"))
        .await;
    let healthy = unique_id("after-nul");
    create(&mut app.client, with_metadata(&healthy, "note", "fine")).await;
    start(&mut app.client, &healthy).await;

    // Only the healthy session's two versions: nothing of the refused one.
    let want: HashMap<&str, &str> = [(healthy.as_str(), "2")].into();
    let t0 = Instant::now();
    loop {
        let rows = tokio::task::block_in_place(|| {
            if db.sql("SELECT to_regclass('public.session_events') IS NOT NULL") != "t" {
                return String::new(); // the migrations have not run yet
            }
            db.sql(
                "SELECT string_agg(session_id || '=' || n, ',') FROM \
                 (SELECT session_id, count(*) AS n FROM session_events GROUP BY session_id) t",
            )
        });
        let got: HashMap<&str, &str> = rows
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        if got == want {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "the session created after the refused U+0000 did not reach Postgres within 15 s: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let kept = tokio::task::block_in_place(|| {
        db.sql(&format!(
            "SELECT snapshot->'metadata'->>'note' FROM session_events WHERE session_id = '{healthy}' AND version = 2"
        ))
    });
    assert_eq!(kept, "fine");
    assert_status(refused, Code::InvalidArgument, "metadata[\"note\"]");
}

/// Everything the tracing spans of one test write, captured.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// A span records `session_id` only once it is valid: a raw id (here with a
/// terminal escape) never reaches the logs or traces, while a valid one does.
/// The server runs on this test's one thread, so its spans go to `captured`.
#[tokio::test(flavor = "current_thread")]
async fn a_session_id_reaches_the_spans_only_once_it_is_valid() {
    use tracing_subscriber::fmt::format::FmtSpan;
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_span_events(FmtSpan::NEW | FmtSpan::CLOSE)
        .with_ansi(false)
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    let mut app = spawn_app().await;
    let evil = "\u{1b}[31mevil-id";
    let refused = app
        .client
        .get_session(pb::GetSessionRequest {
            session_id: evil.into(),
        })
        .await;
    assert_eq!(refused.unwrap_err().code(), Code::InvalidArgument);
    let missing = app
        .client
        .get_session(pb::GetSessionRequest {
            session_id: "valid-but-missing".into(),
        })
        .await;
    assert_eq!(missing.unwrap_err().code(), Code::NotFound);
    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(
        logs.contains("valid-but-missing"),
        "a valid id is recorded in its span: {logs}"
    );
    assert!(
        !logs.contains("evil-id"),
        "a raw, invalid id reached the spans: {logs}"
    );
}

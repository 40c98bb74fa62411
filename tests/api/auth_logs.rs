//! No secret reaches a log, and the caller is in the log lines (issue 13):
//! the real binary with inline keys (so the config itself holds the
//! signer's secret and the keys' hashes) and `RUST_LOG=debug` (every line,
//! the access log included), called with good and bad keys and tokens; its
//! whole output is then searched.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use synckairos::grpc::pb;
use tonic::transport::Endpoint;

use crate::auth::{ADMIN, READ, SIGNER_SECRET, authed, keys_toml, token};
use crate::helpers::*;

#[tokio::test]
async fn no_secret_reaches_a_log_and_the_caller_does() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = std::env::temp_dir().join(unique_id("sk-log"));
    let out = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_synckairos"))
        .env("SYNCKAIROS_LISTEN", format!("127.0.0.1:{port}"))
        .env("SYNCKAIROS_ENGINE", "memory")
        .env_remove("REDIS_URL")
        .env_remove("DATABASE_URL")
        .env_remove("SYNCKAIROS_API_KEYS_FILE")
        .env("SYNCKAIROS_API_KEYS", keys_toml())
        .env("RUST_LOG", "debug")
        .env("SYNCKAIROS_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("spawn synckairos");
    let t0 = Instant::now();
    let mut client = loop {
        if let Ok(ch) = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
        {
            break pb::sync_service_client::SyncServiceClient::new(ch);
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "no server");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let id = unique_id("logs");
    client
        .create_session(authed(chess(&id, HOUR_MS), Some(ADMIN)))
        .await
        .unwrap();
    let play = token(&id, "play", Some("white"));
    let bad_key = format!("{ADMIN}x");
    for credential in [READ, play.as_str(), bad_key.as_str(), "sk-wrong"] {
        let _ = client
            .get_session(authed(
                pb::GetSessionRequest {
                    session_id: id.clone(),
                },
                Some(credential),
            ))
            .await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    let signer = base64::engine::general_purpose::STANDARD.encode(SIGNER_SECRET);
    for secret in [ADMIN, READ, &play, &bad_key, &signer, "sk-wrong"] {
        assert!(
            !text.contains(secret),
            "a secret {secret:.12}… is in the log:\n{text}"
        );
    }
    // The access log names the caller by key id and tenant.
    let access: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(r#""target":"synckairos::access""#))
        .collect();
    assert!(
        access
            .iter()
            .any(|l| l.contains("key:acme-read") && l.contains("acme")),
        "{access:#?}"
    );
    assert!(
        access.iter().any(|l| l.contains("token:acme-2026-12")),
        "{access:#?}"
    );
    assert!(
        access.iter().any(|l| l.contains("unauthenticated")),
        "{access:#?}"
    );
}

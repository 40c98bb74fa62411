//! Other languages authenticate too (issue 13): Python's grpcio with a key
//! and a PyJWT-minted player token (tests/python/auth_client.py), and
//! grpcurl with `-H 'authorization: Bearer …'`, with a key and a token.
//! tests/run.sh installs grpcio, grpcio-tools and PyJWT from PyPI.

use std::process::Command;

use base64::Engine as _;

use crate::auth::{
    ADMIN, KID, KeysFile, SIGNER_SECRET, keys_toml, mutate_start, spawn_with_keys, token,
};
use crate::grpcurl::grpcurl;
use crate::helpers::*;

#[tokio::test]
async fn python_grpcio_authenticates_with_a_key_and_a_player_token() {
    let file = KeysFile::new(&keys_toml());
    let app = spawn_with_keys(&file).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/auth_client.py");
    let signer = base64::engine::general_purpose::STANDARD.encode(SIGNER_SECRET);
    let addr = app.addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args([script, &addr, ADMIN, KID, &signer])
            .output()
    })
    .await
    .unwrap()
    .expect("run python3");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.trim_end().ends_with("OK"),
        "python client failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for line in [
        "no credential: UNAUTHENTICATED",
        "play token (white): switched",
        "play token (white) on black's turn: refused",
        "expired token: UNAUTHENTICATED (expired)",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
}

#[tokio::test]
async fn grpcurl_authenticates_with_a_key_and_a_player_token() {
    let file = KeysFile::new(&keys_toml());
    let mut app = spawn_with_keys(&file).await;
    let id = unique_id("curl");
    let key = format!("authorization: Bearer {ADMIN}");
    let create = format!(
        r#"{{"session_id":"{id}","mode":"MODE_PER_PARTICIPANT","initial_time_ms":60000,"participants":[{{"participant_id":"white"}},{{"participant_id":"black"}}]}}"#
    );
    // Without a credential, reflection itself is refused.
    let out = grpcurl(app.addr, &["list"]).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unauthenticated"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = grpcurl(
        app.addr,
        &[
            "-H",
            &key,
            "-d",
            &create,
            "synckairos.v1.SyncService/CreateSession",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    mutate_start(&mut app.client, &id, ADMIN).await;
    // The player's token ends white's turn.
    let white = format!(
        "authorization: Bearer {}",
        token(&id, "play", Some("white"))
    );
    let out = switch_with(&app, &white, &id).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(r#""activeParticipantId": "black""#),
        "{stdout}"
    );
    // A watch token may not switch.
    let watch = format!("authorization: Bearer {}", token(&id, "watch", None));
    let out = switch_with(&app, &watch, &id).await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PermissionDenied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// grpcurl's SwitchCycle on `id` with the metadata line `header`.
async fn switch_with(app: &TestApp, header: &str, id: &str) -> std::process::Output {
    let body = format!(r#"{{"session_id":"{id}"}}"#);
    grpcurl(
        app.addr,
        &[
            "-H",
            header,
            "-d",
            &body,
            "synckairos.v1.SyncService/SwitchCycle",
        ],
    )
    .await
}

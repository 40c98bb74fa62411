//! `GET /health` and `GET /ready` over HTTP/1.1 on the gRPC port (issue 14),
//! plaintext and TLS, next to gRPC on the same port; `/ready` and gRPC
//! health follow the store and the Pub/Sub connection of a private Redis.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use synckairos::auth::KeySource;
use synckairos::config::{Config, EngineKind, Secret};
use synckairos::grpc::pb;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::*;
use crate::redis_server::RedisServer;

/// One HTTP/1.1 request over `io`; the status code and the body.
async fn request_over<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    method: &str,
    path: &str,
) -> (u16, String) {
    let req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    io.write_all(req.as_bytes())
        .await
        .expect("send the request");
    let mut raw = Vec::new();
    // The server closes the connection after its answer (Connection: close);
    // a TLS peer may skip close_notify, which is an error here, not a failure.
    let _ = io.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if path == "/health" || path == "/ready" {
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{head}"
        );
    }
    // A chunked body (hyper chunks bodies of unknown length): take the chunk.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body.split("\r\n").nth(1).unwrap_or("").to_owned()
    } else {
        body.to_owned()
    };
    (status, body)
}

/// `GET path` on a fresh plaintext connection to `addr`, bounded by [`PROMPT`].
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    within(PROMPT, "an HTTP/1.1 answer", async {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        request_over(tcp, "GET", path).await
    })
    .await
}

/// The checks `/ready` names as failing (empty: 200 and ready).
pub async fn not_ready(addr: SocketAddr) -> Vec<String> {
    let (status, body) = http_get(addr, "/ready").await;
    let json: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    match status {
        200 => {
            assert_eq!(json, serde_json::json!({"status": "ready"}));
            Vec::new()
        }
        503 => {
            assert_eq!(json["status"], "not ready", "{json}");
            let names: Vec<String> = json["not_ready"]
                .as_array()
                .unwrap_or_else(|| panic!("{json}"))
                .iter()
                .map(|v| v.as_str().unwrap_or_default().to_owned())
                .collect();
            assert!(!names.is_empty(), "{json}");
            names
        }
        other => panic!("/ready answered {other}: {body}"),
    }
}

/// The gRPC health of "" and of `synckairos.v1.SyncService`, which agree.
pub async fn grpc_health(addr: SocketAddr) -> ServingStatus {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(PROMPT)
        .timeout(PROMPT)
        .connect()
        .await
        .expect("connect for health");
    let mut health = HealthClient::new(channel);
    let mut answers = Vec::new();
    for service in ["", "synckairos.v1.SyncService"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner();
        answers.push(r.status);
    }
    assert_eq!(
        answers[0], answers[1],
        "the server and the service disagree"
    );
    ServingStatus::try_from(answers[0]).unwrap_or(ServingStatus::Unknown)
}

/// Polls `/ready` (every 50 ms, at most 20 s) until `pred` holds of its
/// failing checks; returns them.
async fn ready_until(
    addr: SocketAddr,
    what: &str,
    pred: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let t0 = Instant::now();
    loop {
        let failing = not_ready(addr).await;
        if pred(&failing) {
            return failing;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{what}: /ready still names {failing:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls gRPC health until it says `want` (at most [`PROMPT`]).
async fn health_becomes(addr: SocketAddr, want: ServingStatus) {
    let t0 = Instant::now();
    loop {
        let got = grpc_health(addr).await;
        if got == want {
            return;
        }
        assert!(
            t0.elapsed() < PROMPT,
            "gRPC health {got:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn health_and_ready_answer_http1_on_the_grpc_port_and_grpc_goes_on() {
    let mut app = spawn_app().await;
    assert_eq!(
        http_get(app.addr, "/health").await,
        (200, r#"{"status":"alive"}"#.to_owned())
    );
    assert_eq!(
        http_get(app.addr, "/ready").await,
        (200, r#"{"status":"ready"}"#.to_owned())
    );
    // Another path over HTTP/1.1 is not a probe: no probe answer.
    let (_, body) = http_get(app.addr, "/metrics").await;
    assert!(!body.contains("status"), "{body}");
    // gRPC on the same port, on the connection made before and a new one.
    let s = create_started(&mut app.client).await;
    assert_eq!(switch(&mut app.client, &s.session_id).await.version, 3);
    let mut fresh = app.new_client().await;
    assert_eq!(get(&mut fresh, &s.session_id).await.version, 3);
    assert_eq!(grpc_health(app.addr).await, ServingStatus::Serving);
}

#[tokio::test]
async fn probes_need_no_credential_when_calls_do() {
    let mut app = spawn_app_with(|c| {
        c.api_keys = Some(KeySource::Inline(crate::auth::keys_toml()));
    })
    .await;
    assert_code(
        app.client
            .get_server_time(pb::GetServerTimeRequest {})
            .await,
        tonic::Code::Unauthenticated,
    );
    assert_eq!(http_get(app.addr, "/ready").await.0, 200);
    assert_eq!(http_get(app.addr, "/health").await.0, 200);
}

// ---------- TLS ----------

struct TlsFilesDir(std::path::PathBuf);

impl Drop for TlsFilesDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed certificate for `localhost` and 127.0.0.1, written to a
/// private directory as `cert.pem` and `key.pem`; its PEM.
fn self_signed() -> (TlsFilesDir, String) {
    let key =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let dir = std::env::temp_dir().join(unique_id("sk-probe-tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = key.cert.pem();
    std::fs::write(dir.join("cert.pem"), &cert).unwrap();
    std::fs::write(dir.join("key.pem"), key.signing_key.serialize_pem()).unwrap();
    (TlsFilesDir(dir), cert)
}

/// A TLS connection to `addr` trusting `cert_pem`, offering `alpn`; the
/// stream and the protocol agreed on.
async fn tls_connect(
    addr: SocketAddr,
    cert_pem: &str,
    alpn: &[&[u8]],
) -> (tokio_rustls::client::TlsStream<TcpStream>, Option<Vec<u8>>) {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto::ring};
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap())
        .unwrap();
    let mut config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = within(
        PROMPT,
        "TLS handshake",
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .expect("TLS handshake");
    let agreed = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    (tls, agreed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_over_tls_and_grpc_clients_still_get_h2() {
    let (dir, cert) = self_signed();
    let grpc_tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&cert))
        .domain_name("localhost");
    let mut app = spawn_app_with_client(
        |c| {
            c.tls_cert = Some(dir.0.join("cert.pem"));
            c.tls_key = Some(dir.0.join("key.pem"));
        },
        |addr| {
            Endpoint::from_shared(format!("https://{addr}"))
                .unwrap()
                .tls_config(grpc_tls)
                .unwrap()
        },
    )
    .await;
    let addr = app.addr;
    // HTTP/1.1 over TLS, as curl or a load balancer's HTTPS check sends it.
    let (tls, agreed) = tls_connect(addr, &cert, &[b"http/1.1"]).await;
    assert_eq!(agreed.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(
        within(
            PROMPT,
            "/ready over TLS",
            request_over(tls, "GET", "/ready")
        )
        .await,
        (200, r#"{"status":"ready"}"#.to_owned())
    );
    // No ALPN at all: HTTP/1.1 too.
    let (tls, agreed) = tls_connect(addr, &cert, &[]).await;
    assert_eq!(agreed, None);
    assert_eq!(
        within(
            PROMPT,
            "/health over TLS",
            request_over(tls, "GET", "/health")
        )
        .await
        .0,
        200
    );
    // A client offering both (as gRPC clients may) gets h2.
    let (_, agreed) = tls_connect(addr, &cert, &[b"http/1.1", b"h2"]).await;
    assert_eq!(agreed.as_deref(), Some(&b"h2"[..]));
    // And the gRPC client over TLS is served as before.
    let s = create_started(&mut app.client).await;
    assert_eq!(get(&mut app.client, &s.session_id).await.version, 2);
}

// ---------- readiness follows Redis ----------

/// Runs `redis-cli -p <port> <args>`; its output.
fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli on PATH");
    assert!(out.status.success(), "redis-cli {args:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_names_pubsub_while_its_connection_is_down_and_store_while_redis_is() {
    let redis = Arc::new(Mutex::new(RedisServer::start()));
    let port = redis.lock().unwrap().port;
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        engine: EngineKind::Redis,
        redis_url: Some(Secret::new(redis.lock().unwrap().url())),
        database_url: None,
        prestop_delay: Duration::ZERO,
        ..Config::default()
    };
    let app = launch(config, Some(redis.clone()), shared_isolation()).await;
    let addr = app.addr;
    ready_until(addr, "ready at start", |f| f.is_empty()).await;
    assert_eq!(grpc_health(addr).await, ServingStatus::Serving);

    // The Pub/Sub connection is cut, and cannot come back: SUBSCRIBE is
    // refused (the store's commands, PING among them, are not).
    assert_eq!(
        redis_cli(port, &["ACL", "SETUSER", "default", "-subscribe"]),
        "OK"
    );
    let killed = redis_cli(port, &["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert_eq!(killed, "1", "one Pub/Sub connection");
    let failing = ready_until(addr, "pubsub down", |f| !f.is_empty()).await;
    assert_eq!(failing, ["pubsub"]);
    health_becomes(addr, ServingStatus::NotServing).await;
    assert_eq!(http_get(addr, "/health").await.0, 200, "alive all the same");

    assert_eq!(
        redis_cli(port, &["ACL", "SETUSER", "default", "+subscribe"]),
        "OK"
    );
    ready_until(addr, "pubsub back", |f| f.is_empty()).await;
    health_becomes(addr, ServingStatus::Serving).await;

    // Redis itself goes away: the store fails its ping (Pub/Sub with it).
    redis.lock().unwrap().stop();
    let failing = ready_until(addr, "redis down", |f| f.iter().any(|c| c == "store")).await;
    assert!(
        failing.iter().all(|c| c == "store" || c == "pubsub"),
        "{failing:?}"
    );
    health_becomes(addr, ServingStatus::NotServing).await;

    redis.lock().unwrap().restart();
    ready_until(addr, "redis back", |f| f.is_empty()).await;
    health_becomes(addr, ServingStatus::Serving).await;
}

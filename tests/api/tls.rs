//! gRPC over TLS (`SYNCKAIROS_TLS_CERT`, `SYNCKAIROS_TLS_KEY`,
//! `SYNCKAIROS_TLS_CLIENT_CA`): real servers, real handshakes, certificates
//! made here with rcgen (a CA per test, a server certificate for
//! `localhost` and 127.0.0.1, client certificates with a common name).
//! Every wait is bounded: a TLS mistake shows as a failure, never a hang.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use synckairos::config::Config;
use synckairos::grpc::client_cert::client_common_name;
use synckairos::grpc::pb;
use synckairos::grpc::pb::sync_service_client::SyncServiceClient;
use synckairos::startup::Application;
use synckairos::tls::{self, HandshakeLimits, ReloadableTls, TlsFiles};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server};

use crate::grpcurl::{grpcurl_path, text};
use crate::helpers::*;

// ---------- certificates ----------

/// A certificate and its private key, PEM.
struct Pem {
    cert: String,
    key: String,
}

/// A test CA.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn sign(&self, mut params: CertificateParams, cn: &str) -> Pem {
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    fn server(&self) -> Pem {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params, "localhost")
    }

    /// A client certificate whose subject common name is `cn`.
    fn client(&self, cn: &str) -> Pem {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, cn)
    }
}

/// A private directory of PEM files, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(unique_id("synckairos-tls"));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `server` as `cert.pem` + `key.pem` (and `ca` as `client-ca.pem`).
    fn serve(&self, server: &Pem, client_ca: Option<&Ca>) -> TlsFiles {
        TlsFiles {
            cert: self.write("cert.pem", &server.cert),
            key: self.write("key.pem", &server.key),
            client_ca: client_ca.map(|ca| self.write("client-ca.pem", &ca.pem())),
        }
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn with_files(config: &mut Config, files: &TlsFiles) {
    config.tls_cert = Some(files.cert.clone());
    config.tls_key = Some(files.key.clone());
    config.tls_client_ca = files.client_ca.clone();
}

// ---------- clients ----------

/// An endpoint to `addr` over TLS, trusting `ca` only, showing `identity`.
fn tls_endpoint(addr: SocketAddr, ca: &Ca, identity: Option<&Pem>) -> Endpoint {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.pem()))
        .domain_name("localhost");
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(&id.cert, &id.key));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(PROMPT)
        .timeout(PROMPT)
}

/// One GetServerTime on a fresh connection made by `endpoint`; the error
/// (of the connection or of the call) as text. Bounded by [`PROMPT`].
async fn server_time(endpoint: Endpoint) -> Result<(), String> {
    let call = async {
        let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
        SyncServiceClient::new(channel)
            .get_server_time(pb::GetServerTimeRequest {})
            .await
            .map(drop)
            .map_err(|s| format!("{s:?}"))
    };
    tokio::time::timeout(PROMPT * 2, call)
        .await
        .unwrap_or_else(|_| Err("no answer in time".into()))
}

/// Reads from a raw connection until the server closes it; how long that took.
async fn closed_within(mut tcp: TcpStream, limit: Duration) -> Duration {
    let t0 = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the server left the connection open past {limit:?}"
    );
    t0.elapsed()
}

// ---------- the listener ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trusting_the_test_ca_creates_and_reads_a_session() {
    let (ca, dir) = (Ca::new("test CA"), Dir::new());
    let files = dir.serve(&ca.server(), None);
    let mut app = spawn_app_with_client(
        |c| with_files(c, &files),
        |addr| tls_endpoint(addr, &ca, None),
    )
    .await;
    let created = create_chess(&mut app.client).await;
    let read = get(&mut app.client, &created.session_id).await;
    assert_eq!(read.session_id, created.session_id);
    assert_eq!(read.version, 1);
    // A client that trusts another CA does not get in.
    let other = Ca::new("another CA");
    let refused = server_time(tls_endpoint(app.addr, &other, None)).await;
    assert!(refused.is_err(), "a client trusting another CA got in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_to_the_tls_port_fails_and_the_port_goes_on_serving_tls() {
    let (ca, dir) = (Ca::new("test CA"), Dir::new());
    let files = dir.serve(&ca.server(), None);
    let app = spawn_app_with_client(
        |c| with_files(c, &files),
        |addr| tls_endpoint(addr, &ca, None),
    )
    .await;
    let plaintext = Endpoint::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect_timeout(PROMPT)
        .timeout(PROMPT);
    let failed = server_time(plaintext).await;
    let error = failed.expect_err("a plaintext call to the TLS port succeeded");
    assert!(!error.contains("no answer in time"), "{error}");
    assert_eq!(server_time(tls_endpoint(app.addr, &ca, None)).await, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_client_ca_only_a_certificate_it_signed_gets_in() {
    let (server_ca, client_ca, dir) = (Ca::new("server CA"), Ca::new("client CA"), Dir::new());
    let files = dir.serve(&server_ca.server(), Some(&client_ca));
    let acme = client_ca.client("acme-backend");
    let app = spawn_app_with_client(
        |c| with_files(c, &files),
        |addr| tls_endpoint(addr, &server_ca, Some(&acme)),
    )
    .await;
    let mut client = app.client.clone();
    let created = create_chess(&mut client).await;
    assert_eq!(get(&mut client, &created.session_id).await.version, 1);

    let anonymous = server_time(tls_endpoint(app.addr, &server_ca, None)).await;
    assert!(anonymous.is_err(), "a client without a certificate got in");
    let stranger = Ca::new("stranger CA").client("acme-backend");
    let forged = server_time(tls_endpoint(app.addr, &server_ca, Some(&stranger))).await;
    assert!(forged.is_err(), "a certificate of another CA got in");
    let other = client_ca.client("other-backend");
    assert_eq!(
        server_time(tls_endpoint(app.addr, &server_ca, Some(&other))).await,
        Ok(())
    );
}

/// The common name reaches the handler: a real tonic server (the health
/// service) on `tls::accept`, whose interceptor reads `client_common_name`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_carries_the_common_name_of_its_client_certificate() {
    let (ca, dir) = (Ca::new("test CA"), Dir::new());
    let files = dir.serve(&ca.server(), Some(&ca));
    let tls = Arc::new(ReloadableTls::load(files).unwrap());
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let (_, health) = tonic_health::server::health_reporter();
    let record = seen.clone();
    let service = tonic::service::interceptor::InterceptedService::new(
        health,
        move |req: tonic::Request<()>| {
            record.lock().unwrap().push(client_common_name(&req));
            Ok(req)
        },
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let incoming = tls::accept(
        TcpIncoming::from(listener),
        tls,
        HandshakeLimits::default(),
        stop.clone(),
    );
    let stopped = stop.clone();
    let server = tokio::spawn(
        Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async move { stopped.cancelled().await }),
    );
    let acme = ca.client("acme-backend");
    let channel = tls_endpoint(addr, &ca, Some(&acme))
        .connect()
        .await
        .unwrap();
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![Some("acme-backend".to_string())]
    );
    stop.cancel();
    let _ = tokio::time::timeout(PROMPT, server).await;
}

// ---------- reload ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_serves_new_certificates_and_keeps_the_old_ones_when_the_files_are_bad() {
    let (old_ca, new_ca, dir) = (Ca::new("old CA"), Ca::new("new CA"), Dir::new());
    let files = dir.serve(&old_ca.server(), None);
    let app = spawn_app_with_client(
        |c| with_files(c, &files),
        |addr| tls_endpoint(addr, &old_ca, None),
    )
    .await;
    let trusting_old = || tls_endpoint(app.addr, &old_ca, None);
    let trusting_new = || tls_endpoint(app.addr, &new_ca, None);
    assert_eq!(server_time(trusting_old()).await, Ok(()));

    // A half-written certificate, then a key that is not the certificate's.
    dir.write("cert.pem", "-----BEGIN CERTIFICATE-----\nMIIB");
    app.reloaders.reload();
    assert_eq!(server_time(trusting_old()).await, Ok(()), "garbage cert");
    let new = new_ca.server();
    dir.write("cert.pem", &new.cert);
    dir.write("key.pem", &old_ca.server().key);
    app.reloaders.reload();
    assert_eq!(server_time(trusting_old()).await, Ok(()), "mismatched key");
    assert!(server_time(trusting_new()).await.is_err());

    dir.write("key.pem", &new.key);
    app.reloaders.reload();
    assert_eq!(server_time(trusting_new()).await, Ok(()));
    assert!(
        server_time(trusting_old()).await.is_err(),
        "still serving the old certificate"
    );
    // The connection made before the reload keeps its session.
    let mut before = app.client.clone();
    before
        .get_server_time(pb::GetServerTimeRequest {})
        .await
        .unwrap();
}

#[test]
fn a_file_that_cannot_be_used_names_its_variable() {
    let (ca, dir) = (Ca::new("test CA"), Dir::new());
    let server = ca.server();
    let good = dir.serve(&server, Some(&ca));
    let cases = [
        (
            TlsFiles {
                cert: dir.path("missing.pem"),
                ..good.clone()
            },
            "SYNCKAIROS_TLS_CERT",
        ),
        (
            TlsFiles {
                cert: dir.write("garbage-cert.pem", "not PEM at all"),
                ..good.clone()
            },
            "SYNCKAIROS_TLS_CERT",
        ),
        (
            TlsFiles {
                key: dir.write("cert-as-key.pem", &server.cert),
                ..good.clone()
            },
            "SYNCKAIROS_TLS_KEY",
        ),
        (
            TlsFiles {
                key: dir.write("other-key.pem", &ca.server().key),
                ..good.clone()
            },
            "SYNCKAIROS_TLS_KEY",
        ),
        (
            TlsFiles {
                client_ca: Some(dir.write("key-as-ca.pem", &server.key)),
                ..good.clone()
            },
            "SYNCKAIROS_TLS_CLIENT_CA",
        ),
    ];
    for (files, var) in cases {
        let e = ReloadableTls::load(files.clone()).expect_err(var);
        assert_eq!(e.var, var, "{files:?}: {e}");
        assert!(e.to_string().starts_with(var), "{e}");
    }
    let tls = ReloadableTls::load(good).unwrap();
    let before = tls.current();
    std::fs::write(dir.path("key.pem"), "garbage").unwrap();
    assert_eq!(tls.reload().unwrap_err().var, "SYNCKAIROS_TLS_KEY");
    assert!(
        Arc::ptr_eq(&before, &tls.current()),
        "a failed reload swapped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_unusable_tls_files_does_not_start() {
    let dir = Dir::new();
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls_cert: Some(dir.path("missing-cert.pem")),
        tls_key: Some(dir.path("missing-key.pem")),
        ..Config::default()
    };
    let e = Application::build(config).await.err().expect("it started");
    assert!(e.to_string().starts_with("SYNCKAIROS_TLS_CERT: "), "{e:#}");
}

// ---------- hostile clients ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_garbage_and_plaintext_connections_do_not_stop_others() {
    let (ca, dir) = (Ca::new("test CA"), Dir::new());
    let files = dir.serve(&ca.server(), None);
    let app = spawn_app_with_client(
        |c| with_files(c, &files),
        |addr| tls_endpoint(addr, &ca, None),
    )
    .await;
    // Connections that never finish a handshake, opened first.
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(app.addr).await.unwrap());
    }
    let mut garbage = TcpStream::connect(app.addr).await.unwrap();
    garbage
        .write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0xde, 0xad, 0xbe, 0xef])
        .await
        .unwrap();
    let mut http2 = TcpStream::connect(app.addr).await.unwrap();
    http2
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    // Its connect timeout (5 s) is below the handshake timeout (10 s): a
    // client queued behind the stalled handshakes would fail here.
    assert_eq!(server_time(tls_endpoint(app.addr, &ca, None)).await, Ok(()));
    closed_within(garbage, PROMPT).await;
    closed_within(http2, PROMPT).await;
    drop(silent);
    assert_eq!(server_time(tls_endpoint(app.addr, &ca, None)).await, Ok(()));
}

/// `tls::accept` with a short timeout and one handshake at a time: a silent
/// client is cut at the timeout, and holds the only slot until then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_is_cut_at_the_timeout_and_holds_a_slot_until_then() {
    let (ca, dir) = (Ca::new("test CA"), Dir::new());
    let tls = Arc::new(ReloadableTls::load(dir.serve(&ca.server(), None)).unwrap());
    let limits = HandshakeLimits {
        timeout: Duration::from_millis(600),
        max_in_progress: 1,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let incoming = tls::accept(TcpIncoming::from(listener), tls, limits, stop.clone());
    let (_, health) = tonic_health::server::health_reporter();
    let stopped = stop.clone();
    tokio::spawn(
        Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(incoming, async move { stopped.cancelled().await }),
    );
    let check = || async {
        let channel = tls_endpoint(addr, &ca, None).connect().await.unwrap();
        tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .unwrap();
    };
    check().await;

    let t0 = Instant::now();
    let silent = TcpStream::connect(addr).await.unwrap();
    let cut = tokio::spawn(closed_within(silent, PROMPT));
    check().await;
    let waited = t0.elapsed();
    let cut = cut.await.unwrap();
    assert!(
        cut >= Duration::from_millis(500),
        "cut after {cut:?}, before the timeout"
    );
    assert!(
        waited >= Duration::from_millis(500),
        "a second handshake ran beside the first ({waited:?}): no bound"
    );
    stop.cancel();
}

// ---------- grpcurl ----------

/// grpcurl over TLS, as docs/tls.md shows it.
async fn grpcurl_tls(args: Vec<String>) -> std::process::Output {
    let bin = grpcurl_path();
    tokio::task::spawn_blocking(move || Command::new(&bin).args(&args).output())
        .await
        .unwrap()
        .expect("run grpcurl")
}

fn args(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_with_cacert_lists_and_calls_and_with_cert_passes_mtls() {
    let (ca, dir) = (Ca::new("test CA"), Dir::new());
    let files = dir.serve(&ca.server(), None);
    let ca_pem = dir.write("ca.pem", &ca.pem());
    let ca_pem = ca_pem.to_str().unwrap();
    let app = spawn_app_with_client(
        |c| with_files(c, &files),
        |addr| tls_endpoint(addr, &ca, None),
    )
    .await;
    let addr = app.addr.to_string();
    let out = grpcurl_tls(args(&["-max-time", "10", "-cacert", ca_pem, &addr, "list"])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout)
            .lines()
            .any(|l| l.trim() == "synckairos.v1.SyncService"),
        "{}",
        text(&out.stdout)
    );
    let time = args(&[
        "-max-time",
        "10",
        "-cacert",
        ca_pem,
        "-d",
        "{}",
        &addr,
        "synckairos.v1.SyncService/GetServerTime",
    ]);
    let out = grpcurl_tls(time.clone()).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("serverTime"),
        "{}",
        text(&out.stdout)
    );
    // -plaintext to the TLS port fails.
    // (grpc-go retries a dropped connection until its connect timeout.)
    let out = grpcurl_tls(args(&[
        "-connect-timeout",
        "2",
        "-plaintext",
        &addr,
        "list",
    ]))
    .await;
    assert!(!out.status.success(), "{}", text(&out.stdout));
    drop(app);

    // mTLS: -cert/-key.
    let client_ca = Ca::new("client CA");
    let files = dir.serve(&ca.server(), Some(&client_ca));
    let acme = client_ca.client("acme-backend");
    let (cert, key) = (
        dir.write("acme.pem", &acme.cert),
        dir.write("acme.key", &acme.key),
    );
    let app = spawn_app_with_client(
        |c| with_files(c, &files),
        |addr| tls_endpoint(addr, &ca, Some(&acme)),
    )
    .await;
    let addr = app.addr.to_string();
    let mtls = args(&[
        "-max-time",
        "10",
        "-cacert",
        ca_pem,
        "-cert",
        cert.to_str().unwrap(),
        "-key",
        key.to_str().unwrap(),
        "-d",
        "{}",
        &addr,
        "synckairos.v1.SyncService/GetServerTime",
    ]);
    let out = grpcurl_tls(mtls).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let without_cert = args(&[
        "-connect-timeout",
        "2",
        "-cacert",
        ca_pem,
        "-d",
        "{}",
        &addr,
        "synckairos.v1.SyncService/GetServerTime",
    ]);
    let out = grpcurl_tls(without_cert).await;
    assert!(!out.status.success(), "{}", text(&out.stdout));
}

// ---------- SIGHUP, on the real binary ----------

/// The `synckairos` binary on the memory engine with TLS from `files`.
struct Binary(Child);

impl Binary {
    fn spawn(addr: SocketAddr, files: &TlsFiles) -> Self {
        let stderr = if std::env::var_os("TEST_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        };
        let child = Command::new(env!("CARGO_BIN_EXE_synckairos"))
            .env("SYNCKAIROS_LISTEN", addr.to_string())
            .env("SYNCKAIROS_ENGINE", "memory")
            .env("SYNCKAIROS_TLS_CERT", &files.cert)
            .env("SYNCKAIROS_TLS_KEY", &files.key)
            .env_remove("SYNCKAIROS_TLS_CLIENT_CA")
            .env_remove("REDIS_URL")
            .env_remove("DATABASE_URL")
            .env_remove("SYNCKAIROS_METRICS_LISTEN")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn the synckairos binary");
        Self(child)
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// Polls until `endpoint_of()` gets an answer, for at most 20 s.
async fn answers_within(endpoint_of: impl Fn() -> Endpoint, what: &str) {
    let t0 = Instant::now();
    loop {
        if server_time(endpoint_of()).await.is_ok() {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificates_of_the_binary() {
    let _shared = shared_isolation();
    let (old_ca, new_ca, dir) = (Ca::new("old CA"), Ca::new("new CA"), Dir::new());
    let files = dir.serve(&old_ca.server(), None);
    let addr = free_addr();
    let mut binary = Binary::spawn(addr, &files);
    answers_within(
        || tls_endpoint(addr, &old_ca, None),
        "the binary did not answer over TLS",
    )
    .await;
    dir.serve(&new_ca.server(), None);
    assert!(
        server_time(tls_endpoint(addr, &new_ca, None))
            .await
            .is_err()
    );
    let hup = Command::new("kill")
        .args(["-HUP", &binary.0.id().to_string()])
        .status()
        .expect("run kill");
    assert!(hup.success());
    answers_within(
        || tls_endpoint(addr, &new_ca, None),
        "no new certificate after SIGHUP",
    )
    .await;
    assert!(
        binary.0.try_wait().unwrap().is_none(),
        "SIGHUP ended the binary"
    );
    assert!(
        server_time(tls_endpoint(addr, &old_ca, None))
            .await
            .is_err()
    );
}

/// Mutual TLS with keys: a client certificate whose CN is a `[[key]]`'s id
/// acts as that key (its tenant and role), with no bearer; a CN that names
/// no key is UNAUTHENTICATED; a bearer, when sent, wins over the certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_maps_to_its_keys_tenant_and_role() {
    use crate::auth::{OTHER_ADMIN, authed, keys_toml};
    let (server_ca, client_ca, dir) = (Ca::new("server CA"), Ca::new("client CA"), Dir::new());
    let files = dir.serve(&server_ca.server(), Some(&client_ca));
    let keys = dir.write("keys.toml", &keys_toml());
    let read = client_ca.client("acme-read");
    let app = spawn_app_with_client(
        |c| {
            with_files(c, &files);
            c.api_keys = Some(synckairos::auth::KeySource::File(keys));
        },
        |addr| tls_endpoint(addr, &server_ca, Some(&read)),
    )
    .await;
    let connect = |identity: &Pem| {
        let endpoint = tls_endpoint(app.addr, &server_ca, Some(identity));
        async move { SyncServiceClient::new(endpoint.connect().await.unwrap()) }
    };
    let mut admin = connect(&client_ca.client("acme-admin")).await;
    let id = unique_id("mtls");
    admin.create_session(chess(&id, HOUR_MS)).await.unwrap();
    // acme-read: reads its tenant's session, may not write.
    let mut reader = app.client.clone();
    assert_eq!(get(&mut reader, &id).await.version, 1);
    let status = reader
        .create_session(chess(&unique_id("no"), HOUR_MS))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    // other-admin's certificate: another tenant, where the session does not exist.
    let mut other = connect(&client_ca.client("other-admin")).await;
    let status = other
        .get_session(pb::GetSessionRequest {
            session_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    // A CN that names no key.
    let mut nobody = connect(&client_ca.client("nobody")).await;
    let status = nobody
        .get_server_time(pb::GetServerTimeRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    // A bearer wins over the certificate: other's key on the reader's connection.
    let status = reader
        .get_session(authed(
            pb::GetSessionRequest {
                session_id: id.clone(),
            },
            Some(OTHER_ADMIN),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
}

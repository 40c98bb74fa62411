//! `synckairos healthcheck` (src/healthcheck.rs), the real binary as the
//! Dockerfile's HEALTHCHECK runs it: exit 0 only when the server answers
//! SERVING, 1 otherwise, with one line on stderr saying why, within its
//! timeout; plaintext and TLS (the certificate of SYNCKAIROS_TLS_CERT pinned).

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use synckairos::config::{EngineKind, Secret};

use crate::helpers::*;
use crate::redis_server::RedisServer;

/// What one run of `synckairos healthcheck` did.
#[derive(Debug)]
struct Probe {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Runs `synckairos healthcheck ARGS` with only `env` set (plus PATH), so
/// nothing of the test's own environment leaks in.
async fn healthcheck(args: &[&str], env: &[(&str, &str)]) -> Probe {
    let mut command = Command::new(env!("CARGO_BIN_EXE_synckairos"));
    command.arg("healthcheck").args(args).env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    for (k, v) in env {
        command.env(k, v);
    }
    tokio::task::spawn_blocking(move || {
        let t0 = Instant::now();
        let out = command.output().expect("run synckairos healthcheck");
        Probe {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            took: t0.elapsed(),
        }
    })
    .await
    .unwrap()
}

fn addr_arg(addr: SocketAddr) -> String {
    addr.to_string()
}

/// The probe failed (exit 1) with one stderr line containing `why`.
fn assert_unhealthy(p: &Probe, why: &str) {
    assert_eq!(p.code, Some(1), "{p:?}");
    let lines: Vec<&str> = p.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {p:?}");
    assert!(lines[0].contains(why), "stderr should say {why:?}: {p:?}");
}

fn assert_healthy(p: &Probe) {
    assert_eq!(p.code, Some(0), "{p:?}");
    assert!(p.stdout.contains("SERVING"), "{p:?}");
}

#[tokio::test]
async fn a_serving_server_is_healthy_and_no_other_configuration_is_read() {
    let app = spawn_app().await;
    let port = app.addr.port().to_string();
    assert_healthy(&healthcheck(&["--addr", &addr_arg(app.addr)], &[]).await);
    // With no --addr, the address is where SYNCKAIROS_LISTEN (then PORT)
    // would listen, seen from the host; variables the server would refuse
    // (a bad REDIS_URL, an unknown engine, a missing keys file) are not read.
    let broken_config = [
        ("REDIS_URL", "not a url"),
        ("SYNCKAIROS_ENGINE", "nope"),
        ("SYNCKAIROS_API_KEYS_FILE", "/nonexistent/keys.toml"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1"),
    ];
    let listen = format!("0.0.0.0:{port}");
    let mut env = broken_config.to_vec();
    env.push(("SYNCKAIROS_LISTEN", &listen));
    assert_healthy(&healthcheck(&[], &env).await);
    let mut env = broken_config.to_vec();
    env.push(("PORT", &port));
    assert_healthy(&healthcheck(&[], &env).await);
    // The service of the API too; an unknown one is not healthy.
    assert_healthy(
        &healthcheck(
            &[
                "--addr",
                &addr_arg(app.addr),
                "--service",
                "synckairos.v1.SyncService",
            ],
            &[],
        )
        .await,
    );
    assert_unhealthy(
        &healthcheck(&["--addr", &addr_arg(app.addr), "--service", "nope"], &[]).await,
        "NotFound",
    );
}

#[tokio::test]
async fn nothing_listening_is_unhealthy_at_once() {
    let _alone = exclusive_isolation();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = healthcheck(&["--timeout", "2s"], &[("PORT", &port.to_string())]).await;
    assert_unhealthy(&p, "cannot connect");
    assert!(p.took < Duration::from_secs(3), "{p:?}");
}

#[tokio::test]
async fn a_port_that_never_answers_is_unhealthy_within_the_timeout() {
    let _alone = exclusive_isolation();
    // Bound, never accepted: the kernel completes the TCP handshake, then
    // nothing answers the HTTP/2 preface.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let p = healthcheck(&["--addr", &addr_arg(addr), "--timeout", "1s"], &[]).await;
    assert_unhealthy(&p, "no answer within 1s");
    assert!(p.took >= Duration::from_millis(900), "{p:?}");
    assert!(p.took < Duration::from_secs(2), "{p:?}");
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_store_is_down_is_unhealthy() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let app = spawn_app_with(|c| {
        c.engine = EngineKind::Redis;
        c.redis_url = Some(Secret::new(url));
    })
    .await;
    let addr = addr_arg(app.addr);
    assert_healthy(&healthcheck(&["--addr", &addr], &[]).await);
    tokio::task::block_in_place(|| redis.stop());
    // Health turns NOT_SERVING within about 1.5 s of the store's death.
    let t0 = Instant::now();
    let p = loop {
        let p = healthcheck(&["--addr", &addr], &[]).await;
        if p.code != Some(0) || t0.elapsed() > Duration::from_secs(15) {
            break p;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_unhealthy(&p, "NOT_SERVING");
    drop(app);
}

// ---------- TLS ----------

/// A CA, a server certificate for `localhost` it signed, PEM files of both
/// in a private directory (removed on drop).
struct Certs {
    dir: PathBuf,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Certs {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(unique_id("synckairos-healthcheck"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
            .distinguished_name
            .push(DnType::CommonName, "test ca");
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join("ca.pem"), issuer.pem()).unwrap();
        Self { dir, issuer }
    }

    /// Writes `<name>.pem` and `<name>-key.pem`: a certificate this CA
    /// signed, for `names` (server) or with common name `name` (client).
    fn issue(&self, name: &str, server: bool) -> (PathBuf, PathBuf) {
        let names = if server {
            vec!["synckairos.example.com".to_string()]
        } else {
            Vec::new()
        };
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn s(p: &std::path::Path) -> String {
    p.display().to_string()
}

#[tokio::test]
async fn over_tls_the_servers_own_certificate_is_trusted_and_no_other() {
    let certs = Certs::new();
    // A certificate for a public name, not for 127.0.0.1: the probe pins it.
    let (cert, key) = certs.issue("server", true);
    let (other, _) = certs.issue("other", true);
    let app = spawn_app_with_client(
        |c| {
            c.tls_cert = Some(cert.clone());
            c.tls_key = Some(key.clone());
        },
        |addr| {
            let ca = std::fs::read_to_string(certs.ca()).unwrap();
            tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
                .unwrap()
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
                        .domain_name("synckairos.example.com"),
                )
                .unwrap()
        },
    )
    .await;
    let addr = addr_arg(app.addr);
    assert_healthy(&healthcheck(&["--addr", &addr], &[("SYNCKAIROS_TLS_CERT", &s(&cert))]).await);
    // Another certificate (of the same CA) in the file: not the server's.
    assert_unhealthy(
        &healthcheck(&["--addr", &addr], &[("SYNCKAIROS_TLS_CERT", &s(&other))]).await,
        "a certificate other than the first one of SYNCKAIROS_TLS_CERT",
    );
    // Plaintext against a TLS-only port.
    assert_unhealthy(
        &healthcheck(&["--addr", &addr, "--timeout", "2s"], &[]).await,
        "",
    );
    // A file that does not exist is named.
    assert_unhealthy(
        &healthcheck(
            &["--addr", &addr],
            &[("SYNCKAIROS_TLS_CERT", "/nonexistent/cert.pem")],
        )
        .await,
        "SYNCKAIROS_TLS_CERT: /nonexistent/cert.pem: cannot read",
    );
}

#[tokio::test]
async fn with_a_client_ca_the_probe_shows_a_client_certificate() {
    let certs = Certs::new();
    let (cert, key) = certs.issue("server", true);
    let (client, client_key) = certs.issue("probe", false);
    let (ca, server_cert, server_key) = (certs.ca(), cert.clone(), key.clone());
    let app = spawn_app_with_client(
        |c| {
            c.tls_cert = Some(server_cert);
            c.tls_key = Some(server_key);
            c.tls_client_ca = Some(ca);
        },
        |addr| {
            let ca = std::fs::read_to_string(certs.ca()).unwrap();
            let id = tonic::transport::Identity::from_pem(
                std::fs::read_to_string(&client).unwrap(),
                std::fs::read_to_string(&client_key).unwrap(),
            );
            tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
                .unwrap()
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
                        .domain_name("synckairos.example.com")
                        .identity(id),
                )
                .unwrap()
        },
    )
    .await;
    let addr = addr_arg(app.addr);
    let (cert_s, ca_s) = (s(&cert), s(&certs.ca()));
    let server_env = [
        ("SYNCKAIROS_TLS_CERT", cert_s.as_str()),
        ("SYNCKAIROS_TLS_CLIENT_CA", ca_s.as_str()),
    ];
    assert_unhealthy(
        &healthcheck(&["--addr", &addr], &server_env).await,
        "give --client-cert and --client-key",
    );
    assert_healthy(
        &healthcheck(
            &[
                "--addr",
                &addr,
                "--client-cert",
                &s(&client),
                "--client-key",
                &s(&client_key),
            ],
            &server_env,
        )
        .await,
    );
    // The same through the environment (what a Dockerfile would set).
    let (client_s, client_key_s) = (s(&client), s(&client_key));
    let mut env = server_env.to_vec();
    env.push(("SYNCKAIROS_HEALTHCHECK_CLIENT_CERT", &client_s));
    env.push(("SYNCKAIROS_HEALTHCHECK_CLIENT_KEY", &client_key_s));
    assert_healthy(&healthcheck(&["--addr", &addr], &env).await);
}

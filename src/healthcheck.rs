//! `synckairos healthcheck`: a gRPC health client in the server's own binary,
//! so a container image needs nothing else for its `HEALTHCHECK` (Dockerfile).
//!
//! It calls `grpc.health.v1.Health/Check` on the local server and answers
//! with an exit code: 0 when the server says `SERVING`, 1 for anything else
//! (`NOT_SERVING`, an error, nobody listening, no answer within the timeout),
//! with one line on stderr saying why. It reads only the few variables that
//! say where and how the server listens (`SYNCKAIROS_LISTEN`, `PORT`,
//! `SYNCKAIROS_TLS_CERT`, `SYNCKAIROS_TLS_CLIENT_CA`): never the rest of the
//! configuration (a probe must not fail because, say, `REDIS_URL` is unset in
//! the probe's environment) and never the telemetry.
//!
//! The address, unless `--addr` says otherwise, is the one the server would
//! listen on: the port of `SYNCKAIROS_LISTEN`, else `PORT` (Railway, Heroku,
//! Cloud Run), else 50051; on 127.0.0.1 (`[::1]` for `[::]`) when the server
//! listens on every address, else on the address it names.
//!
//! TLS: when `SYNCKAIROS_TLS_CERT` is set the server speaks TLS only, so the
//! probe does too, and trusts exactly the certificate that file holds first
//! (the leaf the server presents): a pin, not a chain-and-name check. The
//! server's certificate names its public host, never 127.0.0.1, so webpki's
//! name check would fail on loopback; skipping verification would accept any
//! process on the port. The pin needs neither: the server must present the
//! very certificate of the file, and prove it holds its key (the handshake's
//! signature is checked as usual). Right after the file is replaced and
//! before the server re-reads it (SIGHUP), the two differ and the probe says
//! so. With `SYNCKAIROS_TLS_CLIENT_CA` the server asks every client for a
//! certificate: give the probe one with `--client-cert` and `--client-key`
//! (or `SYNCKAIROS_HEALTHCHECK_CLIENT_CERT` / `_KEY`).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The port the server listens on when neither variable says otherwise.
const DEFAULT_PORT: u16 = 50051;

/// What the command line asked for.
#[derive(Clone, Debug)]
pub struct Options {
    /// `host:port` to probe; `None`: where the server would listen.
    pub addr: Option<String>,
    /// The whole probe (connect, handshake, call) must finish within this.
    pub timeout: Duration,
    /// The health service name to check; `""` is the server as a whole.
    pub service: String,
    /// A client certificate (PEM chain) for a server with a client CA.
    pub client_cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub client_key: Option<PathBuf>,
}

/// Probes the server: `Ok(line)` when it is `SERVING`, `Err(line)` with the
/// reason otherwise. `env` reads the environment (a map in tests).
pub async fn run(opts: &Options, env: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    let target = match &opts.addr {
        Some(a) => a.clone(),
        None => default_addr(env)?.to_string(),
    };
    let tls = match env("SYNCKAIROS_TLS_CERT") {
        None => None,
        Some(cert) => Some(tls_config(
            Path::new(&cert),
            env("SYNCKAIROS_TLS_CLIENT_CA").is_some(),
            opts,
        )?),
    };
    let probe = async {
        let addr = resolve(&target).await?;
        let channel = connect(addr, tls).await?;
        check(channel, &opts.service).await
    };
    match tokio::time::timeout(opts.timeout, probe).await {
        Ok(Ok(ServingStatus::Serving)) => Ok(format!("{target}: SERVING")),
        Ok(Ok(status)) => Err(format!(
            "{target}: the server answers {}",
            status.as_str_name()
        )),
        Ok(Err(why)) => Err(format!("{target}: {why}")),
        Err(_) => Err(format!(
            "{target}: no answer within {}",
            humantime::format_duration(opts.timeout)
        )),
    }
}

/// Where the server listens, seen from the same host (module docs).
pub fn default_addr(env: impl Fn(&str) -> Option<String>) -> Result<SocketAddr, String> {
    if let Some(listen) = env("SYNCKAIROS_LISTEN") {
        let addr: SocketAddr = listen.trim().parse().map_err(|_| {
            format!("SYNCKAIROS_LISTEN: {listen:?} is not a socket address like 0.0.0.0:50051")
        })?;
        let ip = match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        return Ok(SocketAddr::new(ip, addr.port()));
    }
    let port = match env("PORT") {
        Some(p) => p
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("PORT: {p:?} is not a port number (1-65535)"))?,
        None => DEFAULT_PORT,
    };
    Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
}

async fn resolve(target: &str) -> Result<SocketAddr, String> {
    tokio::net::lookup_host(target)
        .await
        .map_err(|e| format!("cannot resolve the address: {e}"))?
        .next()
        .ok_or_else(|| "the address resolves to nothing".to_string())
}

async fn connect(
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Channel, String> {
    // The scheme is http even over TLS: the connector below does the TLS,
    // and tonic refuses an https URI without its own TLS config.
    let endpoint =
        Endpoint::from_shared(format!("http://{addr}")).map_err(|e| format!("bad address: {e}"))?;
    let connected = match tls {
        None => endpoint.connect().await,
        Some(config) => {
            endpoint
                .connect_with_connector(PinnedTls { addr, config })
                .await
        }
    };
    connected.map_err(|e| format!("cannot connect: {}", chain(&e)))
}

async fn check(channel: Channel, service: &str) -> Result<ServingStatus, String> {
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map_err(|s| {
            let mut why = format!("Health/Check failed: {:?}: {}", s.code(), s.message());
            if let Some(source) = std::error::Error::source(&s) {
                why.push_str(&format!(" ({})", chain(source)));
            }
            why
        })?;
    Ok(ServingStatus::try_from(reply.into_inner().status).unwrap_or(ServingStatus::Unknown))
}

/// An error and its sources on one line (tonic's own says only "transport error").
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

// ---------- TLS ----------

/// A client config that trusts the first certificate of `cert` (module
/// docs), with ALPN `h2` as the server requires, and a client certificate
/// when the options give one (required when the server has a client CA).
fn tls_config(
    cert: &Path,
    server_wants_client_cert: bool,
    opts: &Options,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let pem = std::fs::read(cert)
        .map_err(|e| format!("SYNCKAIROS_TLS_CERT: {}: cannot read: {e}", cert.display()))?;
    let leaf = CertificateDer::pem_slice_iter(&pem)
        .next()
        .ok_or_else(|| {
            format!(
                "SYNCKAIROS_TLS_CERT: {}: no CERTIFICATE block in the file",
                cert.display()
            )
        })?
        .map_err(|e| format!("SYNCKAIROS_TLS_CERT: {}: bad PEM: {e}", cert.display()))?;
    let provider = crate::dependency_tls::provider();
    // Exactly that certificate (module docs: why a pin); the handshake's
    // signatures are checked with its key as usual.
    let pin = crate::dependency_tls::SignaturesOnly::pinned(
        provider.clone(),
        leaf,
        "the server presents a certificate other than the first one of \
         SYNCKAIROS_TLS_CERT (replaced and not yet re-read? send the server SIGHUP)",
    );
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(pin));
    let mut config = match (&opts.client_cert, &opts.client_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("--client-cert: {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("--client-key: {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("--client-key does not go with --client-cert: {e}"))?
        }
        (None, None) if server_wants_client_cert => {
            return Err(
                "SYNCKAIROS_TLS_CLIENT_CA is set, so the server asks every client for a \
                        certificate: give --client-cert and --client-key (or \
                        SYNCKAIROS_HEALTHCHECK_CLIENT_CERT and SYNCKAIROS_HEALTHCHECK_CLIENT_KEY)"
                    .to_string(),
            );
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("give both --client-cert and --client-key, or neither".to_string()),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// tonic's connector for the TLS case: TCP to `addr`, then the handshake.
#[derive(Clone)]
struct PinnedTls {
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
}

type TlsIo = TokioIo<TlsStream<TcpStream>>;

impl tower_service::Service<Uri> for PinnedTls {
    type Response = TlsIo;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<TlsIo, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let (addr, config) = (self.addr, self.config.clone());
        Box::pin(async move {
            let tcp = TcpStream::connect(addr).await?;
            // The name is not checked (the pin is); it only fills the SNI.
            let name = ServerName::IpAddress(addr.ip().into());
            let tls = TlsConnector::from(config).connect(name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn the_default_address_is_where_the_server_would_listen_seen_from_the_host() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "127.0.0.1:50051"),
            (&[("PORT", "8080")], "127.0.0.1:8080"),
            (&[("SYNCKAIROS_LISTEN", "0.0.0.0:6000")], "127.0.0.1:6000"),
            (&[("SYNCKAIROS_LISTEN", "[::]:6000")], "[::1]:6000"),
            (&[("SYNCKAIROS_LISTEN", "10.1.2.3:6000")], "10.1.2.3:6000"),
            // SYNCKAIROS_LISTEN wins over PORT, as in the server.
            (
                &[("SYNCKAIROS_LISTEN", "0.0.0.0:6000"), ("PORT", "8080")],
                "127.0.0.1:6000",
            ),
        ];
        for (env, want) in cases {
            assert_eq!(
                default_addr(env_of(env)).unwrap().to_string(),
                *want,
                "{env:?}"
            );
        }
    }

    #[test]
    fn a_bad_listen_or_port_is_named() {
        for (env, var) in [
            (vec![("SYNCKAIROS_LISTEN", "nope")], "SYNCKAIROS_LISTEN"),
            (vec![("PORT", "http")], "PORT"),
            (vec![("PORT", "0")], "PORT"),
            (vec![("PORT", "70000")], "PORT"),
        ] {
            let e = default_addr(env_of(&env)).unwrap_err();
            assert!(e.starts_with(var), "{e}");
        }
    }
}

//! TLS on the gRPC listener: the PEM files named by `SYNCKAIROS_TLS_CERT`,
//! `SYNCKAIROS_TLS_KEY` and `SYNCKAIROS_TLS_CLIENT_CA` made into a rustls
//! `ServerConfig` (ALPN `h2`, and `http/1.1` for the probes; with a client
//! CA, every client must present a certificate that CA signed), held so that [`ReloadableTls::reload`] can
//! swap it while the server runs (SIGHUP, startup.rs), and [`accept`], which
//! turns the stream of accepted TCP connections into a stream of TLS ones for
//! tonic's `serve_with_incoming_shutdown`.
//!
//! Knows rustls and tokio, never the service: who a client certificate names
//! is read per call in `grpc::client_cert`.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig, crypto::ring};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

const CERT_VAR: &str = "SYNCKAIROS_TLS_CERT";
const KEY_VAR: &str = "SYNCKAIROS_TLS_KEY";
const CLIENT_CA_VAR: &str = "SYNCKAIROS_TLS_CLIENT_CA";

/// The PEM files a TLS configuration is read from (and read again on reload).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key of the leaf certificate (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA certificates client certificates must chain to; `None`: no
    /// client certificate is asked for.
    pub client_ca: Option<PathBuf>,
}

/// One line: `VARIABLE: path: what is wrong with the file`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {}: {reason}", path.display())]
pub struct TlsError {
    pub var: &'static str,
    pub path: PathBuf,
    pub reason: String,
}

fn tls_err(var: &'static str, path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError {
        var,
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Reads `files` into a server config: ring's cipher suites, TLS 1.2 and
/// 1.3, ALPN `h2` then `http/1.1` (gRPC is HTTP/2, and a client offering
/// `h2` gets it: rustls picks the server's first protocol the client offers,
/// and grpc-go clients refuse a server that does not agree on `h2`;
/// `http/1.1` is for the `/health` and `/ready` probes, grpc/probes.rs), and
/// with a client CA a verifier that *requires* a client certificate
/// chaining to it.
pub fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(ring::default_provider());
    let chain = read_certs(CERT_VAR, &files.cert)?;
    let key = read_key(&files.key)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(CERT_VAR, &files.cert, e.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for ca in read_certs(CLIENT_CA_VAR, path)? {
                roots.add(ca).map_err(|e| {
                    tls_err(
                        CLIENT_CA_VAR,
                        path,
                        format!("not a usable CA certificate: {e}"),
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| tls_err(CLIENT_CA_VAR, path, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        tls_err(
            KEY_VAR,
            &files.key,
            format!("does not go with the certificate of {CERT_VAR}: {e}"),
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn read(var: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| tls_err(var, path, format!("cannot read: {e}")))
}

/// Every `CERTIFICATE` block of the PEM file; at least one.
fn read_certs(var: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(var, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(var, path, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(tls_err(var, path, "no CERTIFICATE block in the file"));
    }
    Ok(certs)
}

/// The first private key block of the PEM file.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(KEY_VAR, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        tls_err(
            KEY_VAR,
            path,
            format!("no usable PRIVATE KEY block in the file: {e}"),
        )
    })
}

/// The server config in use and the files it came from. Each handshake
/// takes the config current when its connection was accepted, so a reload
/// changes new connections only; open ones keep their session.
#[derive(Debug)]
pub struct ReloadableTls {
    files: TlsFiles,
    /// A std lock: held for a pointer copy or swap, never across an await.
    current: RwLock<Arc<ServerConfig>>,
}

impl ReloadableTls {
    /// Reads the files once; an error here stops start-up.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let config = server_config(&files)?;
        Ok(Self {
            files,
            current: RwLock::new(Arc::new(config)),
        })
    }

    /// The config new connections are handshaked with.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Reads the files again and, when they make a config, serves new
    /// connections with it. When they do not (a file half-written, a key
    /// that does not match), the config in use stays and one error line is
    /// logged; the error is returned as well, already logged. A few small
    /// blocking file reads: fine on a runtime thread, once per SIGHUP.
    pub fn reload(&self) -> Result<(), TlsError> {
        match server_config(&self.files) {
            Ok(config) => {
                *self
                    .current
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(config);
                info!(cert = %self.files.cert.display(), "TLS certificates reloaded");
                Ok(())
            }
            Err(e) => {
                error!(error = %e, "TLS reload failed; still serving the certificates loaded before");
                Err(e)
            }
        }
    }
}

/// How TLS handshakes are bounded, so that slow or hostile clients cannot
/// hold the listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// A connection whose handshake has not finished this long after it was
    /// accepted is closed.
    pub timeout: Duration,
    /// Handshakes in progress at once (0 is taken as 1). When all are taken the listener stops
    /// accepting: new connections wait in the kernel's listen backlog (not in
    /// this process' memory) until a handshake ends, at the latest `timeout`
    /// later. Each costs a task and rustls' buffers (tens of KB), so the
    /// default 512 bounds them to some 20 MB; a hostile client needs 512
    /// connections that stall, renewed every 10 s, to delay others.
    pub max_in_progress: usize,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            max_in_progress: 512,
        }
    }
}

/// The TLS connections of `tcp`, for `serve_with_incoming_shutdown`.
///
/// One task accepts; each handshake runs in a task of its own (so a client
/// that stalls delays nobody), with `limits`. A failed or timed-out
/// handshake is logged at debug and the connection dropped: plaintext,
/// garbage and silence never reach tonic. The accept task ends, closing the
/// listener, when `shutdown` is cancelled or the returned stream is dropped
/// (tonic drops it when its shutdown signal fires).
pub fn accept<S>(
    tcp: S,
    tls: Arc<ReloadableTls>,
    limits: HandshakeLimits,
    shutdown: CancellationToken,
) -> impl Stream<Item = io::Result<TlsStream<TcpStream>>> + Send + 'static
where
    S: Stream<Item = io::Result<TcpStream>> + Send + Unpin + 'static,
{
    let slots = limits.max_in_progress.max(1);
    // Small: tonic takes each connection as soon as it is handed over.
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(accept_loop(tcp, tls, limits, slots, tx, shutdown));
    ReceiverStream::new(rx)
}

async fn accept_loop<S>(
    mut tcp: S,
    tls: Arc<ReloadableTls>,
    limits: HandshakeLimits,
    slots: usize,
    tx: mpsc::Sender<io::Result<TlsStream<TcpStream>>>,
    shutdown: CancellationToken,
) where
    S: Stream<Item = io::Result<TcpStream>> + Unpin,
{
    let slots = Arc::new(Semaphore::new(slots));
    loop {
        // A slot first, so that at the bound connections wait in the backlog.
        let slot = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tx.closed() => return,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tx.closed() => return,
            next = tcp.next() => match next {
                None => return,
                Some(Ok(stream)) => stream,
                Some(Err(e)) => {
                    debug!(error = %e, "TLS listener: accept failed");
                    continue;
                }
            },
        };
        let acceptor = TlsAcceptor::from(tls.current());
        let (tx, shutdown) = (tx.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let peer = stream.peer_addr().ok();
            let handshake = tokio::time::timeout(limits.timeout, acceptor.accept(stream));
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return,
                outcome = handshake => outcome,
            };
            match outcome {
                Ok(Ok(stream)) => {
                    // Fails only when the server has stopped taking connections.
                    let _ = tx.send(Ok(stream)).await;
                }
                Ok(Err(e)) => debug!(?peer, error = %e, "TLS handshake failed; connection dropped"),
                Err(_) => debug!(
                    ?peer,
                    timeout_ms = limits.timeout.as_millis() as u64,
                    "TLS handshake not finished in time; connection dropped"
                ),
            }
        });
    }
}

//! TLS to the service's own dependencies, Redis and PostgreSQL
//! (docs/dependencies-tls.md): the one rustls crypto provider (ring), the
//! private CA files (`SYNCKAIROS_REDIS_CA`, `SYNCKAIROS_DATABASE_CA`,
//! `sslrootcert=`), and the server certificate checks of libpq's `sslmode`s.
//! Knows rustls only; `store::redis::client` and `audit::connect` build
//! their clients from it. The gRPC listener's own TLS is not here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// A failed TLS set-up, as one start-up line: `VARIABLE: what is wrong`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {reason}")]
pub struct SetupError {
    pub var: &'static str,
    pub reason: String,
}

impl SetupError {
    pub fn new(var: &'static str, reason: impl Into<String>) -> Self {
        Self {
            var,
            reason: reason.into(),
        }
    }
}

/// The process's crypto provider: ring. Installed as rustls' process
/// default as well, because the redis crate builds its `ClientConfig` with
/// `ClientConfig::builder()`, which would panic if two providers were ever
/// compiled in and none was installed.
pub fn provider() -> Arc<CryptoProvider> {
    if let Some(installed) = CryptoProvider::get_default() {
        return installed.clone();
    }
    // Losing a race to another installer is fine: its provider is then the default.
    let _ = rustls::crypto::ring::default_provider().install_default();
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// A PEM file of one or more CA certificates, read and checked once, at
/// start-up: a file that cannot be read, holds no certificate or a
/// certificate rustls cannot use as a trust anchor is refused then, not at
/// the first connection.
#[derive(Clone)]
pub struct CaFile {
    path: PathBuf,
    pem: Vec<u8>,
    certs: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for CaFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CaFile({:?}, {} certificates)",
            self.path,
            self.certs.len()
        )
    }
}

impl CaFile {
    /// Reads `path`; the error says what is wrong with it (not which variable named it).
    pub fn read(path: impl AsRef<Path>) -> Result<Self, String> {
        let path = path.as_ref();
        let pem = std::fs::read(path).map_err(|e| format!("cannot read {path:?}: {e}"))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{path:?} is not a PEM file of certificates: {e}"))?;
        if certs.is_empty() {
            return Err(format!("{path:?} holds no PEM certificate"));
        }
        let (_, unusable) = RootCertStore::empty().add_parsable_certificates(certs.clone());
        if unusable > 0 {
            return Err(format!(
                "{path:?}: {unusable} of its {} certificates cannot be parsed",
                certs.len()
            ));
        }
        Ok(Self {
            path: path.to_owned(),
            pem,
            certs,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's bytes, as read at start-up.
    pub fn pem(&self) -> &[u8] {
        &self.pem
    }

    /// The file's certificates as the only trust anchors.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(self.certs.clone());
        roots
    }
}

/// Mozilla's root CAs (webpki-roots): what `rediss://` trusts without a CA
/// file, and `sslrootcert=system`. Built in, so a slim container image
/// without a CA bundle still verifies public certificates.
pub fn public_roots() -> RootCertStore {
    RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

/// How much of the server's certificate a connection checks.
#[derive(Clone, Debug)]
pub enum Check {
    /// Nothing: the connection is encrypted, but anyone in the path could
    /// be the server (libpq's `prefer`/`require` without a root certificate).
    Nothing,
    /// The chain up to one of these roots, whatever name the certificate
    /// is for (libpq's `verify-ca`, and `require` with a root certificate).
    Chain(Arc<RootCertStore>),
    /// The chain, and that the certificate is for the host connected to
    /// (libpq's `verify-full`).
    ChainAndName(Arc<RootCertStore>),
}

/// A client configuration whose server certificate check is `check`.
pub fn client_config(check: Check) -> Result<rustls::ClientConfig, String> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let verifier = |roots: Arc<RootCertStore>| {
        WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| e.to_string())
    };
    let config = match check {
        Check::ChainAndName(roots) => builder
            .with_webpki_verifier(verifier(roots)?)
            .with_no_client_auth(),
        Check::Chain(roots) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly {
                webpki: verifier(roots)?,
            }))
            .with_no_client_auth(),
        Check::Nothing => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SignaturesOnly::any(provider)))
            .with_no_client_auth(),
    };
    Ok(config)
}

/// `verify-ca`: webpki's check with a name mismatch forgiven. webpki checks
/// the chain first and the name last, so a name error means the chain is good.
#[derive(Debug)]
struct ChainOnly {
    webpki: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// `require` without a root certificate: any certificate is accepted; or,
/// pinned, exactly one (`synckairos healthcheck` trusts the first
/// certificate of `SYNCKAIROS_TLS_CERT` so). The handshake's signatures are
/// checked either way (the server holds the key of the certificate it sent),
/// which keeps the session keys honest; unpinned, it says nothing about who
/// the server is.
#[derive(Debug)]
pub struct SignaturesOnly {
    provider: Arc<CryptoProvider>,
    /// The one certificate accepted, and what a handshake that presents
    /// another fails with.
    pin: Option<(CertificateDer<'static>, &'static str)>,
}

impl SignaturesOnly {
    pub fn any(provider: Arc<CryptoProvider>) -> Self {
        Self {
            provider,
            pin: None,
        }
    }

    pub fn pinned(
        provider: Arc<CryptoProvider>,
        leaf: CertificateDer<'static>,
        mismatch: &'static str,
    ) -> Self {
        Self {
            provider,
            pin: Some((leaf, mismatch)),
        }
    }
}

impl ServerCertVerifier for SignaturesOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.pin {
            Some((leaf, mismatch)) if end_entity.as_ref() != leaf.as_ref() => {
                Err(rustls::Error::General((*mismatch).to_string()))
            }
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

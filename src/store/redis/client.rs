//! The one way the service opens Redis: a `redis::Client` built from
//! `REDIS_URL` and `SYNCKAIROS_REDIS_CA`. The store's pool, the fan-out's
//! Pub/Sub connection and the audit writer's stream reader all take their
//! client from [`client`], so `rediss://` means the same to each of them
//! (docs/dependencies-tls.md).
//!
//! `redis://` is plaintext. `rediss://` is TLS (rustls), the server's
//! certificate checked for the URL's host against Mozilla's roots, or
//! against the CA file alone when one is given. redis-rs' `#insecure`
//! fragment (no check at all) is refused: its crate feature is not built
//! in, so it would only fail at every connection; a private CA file is the
//! way to reach a test server.

use redis::{ConnectionAddr, IntoConnectionInfo, TlsCertificates};

use crate::dependency_tls::{self as tls, CaFile, SetupError};

/// A client for `url` (nothing is connected yet). The error names the
/// variable at fault: a URL that does not parse, `#insecure`, or a CA file
/// with a plaintext URL (it would be ignored).
pub fn client(url: &str, ca: Option<&CaFile>) -> Result<redis::Client, SetupError> {
    let bad_url = |e: redis::RedisError| SetupError::new("REDIS_URL", e.to_string());
    let info = url.into_connection_info().map_err(bad_url)?;
    if let ConnectionAddr::TcpTls { insecure: true, .. } = info.addr() {
        return Err(SetupError::new(
            "REDIS_URL",
            "#insecure (no certificate check) is not supported; \
             give the server's CA in SYNCKAIROS_REDIS_CA instead",
        ));
    }
    // redis-rs builds its rustls config with the process default provider.
    tls::provider();
    match ca {
        None => redis::Client::open(info).map_err(bad_url),
        // redis-rs refuses a CA with a plaintext URL ("requires ... rediss://").
        Some(ca) => redis::Client::build_with_tls(
            info,
            TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.pem().to_vec()),
            },
        )
        .map_err(|e| SetupError::new("SYNCKAIROS_REDIS_CA", e.to_string())),
    }
}

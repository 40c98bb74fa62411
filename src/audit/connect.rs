//! The one way the service opens PostgreSQL: [`PgTarget`], `DATABASE_URL`
//! read once at start-up, its `sslmode` and `sslrootcert` the way libpq
//! reads them, over rustls (docs/dependencies-tls.md). The audit pool (its
//! migrations included: they run on a pooled connection) connects through
//! [`PgTarget::connect`] and nothing else.
//!
//! tokio-postgres alone knows `sslmode=disable|prefer|require` and refuses
//! the rest of the URL at every connection; so the two parameters are taken
//! out here and the rest is handed to it. What each mode checks:
//!
//! | `sslmode`          | TLS                          | server certificate            |
//! |--------------------|------------------------------|-------------------------------|
//! | `disable`          | never                        | –                             |
//! | `prefer` (default) | if the server offers it      | chain, if a root cert is given |
//! | `require`          | always                       | chain, if a root cert is given |
//! | `verify-ca`        | always                       | chain                         |
//! | `verify-full`      | always                       | chain and host name           |
//!
//! The root certificate is `sslrootcert=<file>`, or `SYNCKAIROS_DATABASE_CA`;
//! `sslrootcert=system` is Mozilla's roots and, as in libpq 16, implies
//! `verify-full` (a weaker mode with it is refused). libpq's `allow`
//! (plaintext first) and its default `~/.postgresql/root.crt` are not
//! supported. Unlike libpq, `prefer` does not retry in plaintext after a
//! failed handshake: a server that offers TLS must complete it.

use std::error::Error as _;
use std::str::FromStr;
use std::sync::Arc;

use diesel::ConnectionError;
use diesel_async::AsyncPgConnection;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::dependency_tls::{self as tls, CaFile, Check, SetupError};

/// libpq's `sslmode`s that this service supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(raw: &str) -> Result<Self, String> {
        Ok(match raw {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            "allow" => {
                return Err("sslmode=allow (plaintext first) is not supported; \
                     use prefer, or disable"
                    .into());
            }
            other => {
                return Err(format!(
                    "sslmode={other:?} is not one of disable, prefer, require, verify-ca, verify-full"
                ));
            }
        })
    }
}

/// Where the trust anchors come from.
enum Roots {
    None,
    File(CaFile),
    System,
}

/// A parsed `DATABASE_URL` and the TLS it asks for.
#[derive(Clone)]
pub struct PgTarget {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    mode: SslMode,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The config holds the password: only the mode is shown.
        write!(f, "PgTarget(sslmode={:?})", self.mode)
    }
}

impl FromStr for PgTarget {
    type Err = SetupError;

    /// A URL on its own, without `SYNCKAIROS_DATABASE_CA`.
    fn from_str(url: &str) -> Result<Self, SetupError> {
        Self::parse(url, None)
    }
}

impl PgTarget {
    /// `url` (a `postgres://` URL) with `ca` (`SYNCKAIROS_DATABASE_CA`). The
    /// error names the variable at fault.
    pub fn parse(url: &str, ca: Option<&CaFile>) -> Result<Self, SetupError> {
        let bad = |reason: String| SetupError::new("DATABASE_URL", reason);
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let (mut mode, mut rootcert, mut rest) = (None, None, Vec::new());
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_encoding::percent_decode_str(value)
                .decode_utf8()
                .map_err(|_| bad(format!("{key}: not UTF-8 once decoded")))?
                .into_owned();
            match key {
                "sslmode" => mode = Some(SslMode::parse(&value).map_err(bad)?),
                "sslrootcert" => rootcert = Some(value),
                _ => rest.push(pair),
            }
        }
        let roots = match (rootcert.as_deref(), ca) {
            (Some(_), Some(_)) => {
                return Err(SetupError::new(
                    "SYNCKAIROS_DATABASE_CA",
                    "is set and DATABASE_URL has sslrootcert= too; keep one",
                ));
            }
            (Some("system"), None) => Roots::System,
            (Some(path), None) => {
                Roots::File(CaFile::read(path).map_err(|e| bad(format!("sslrootcert: {e}")))?)
            }
            (None, Some(ca)) => Roots::File(ca.clone()),
            (None, None) => Roots::None,
        };
        let mode = match (&roots, mode) {
            (Roots::System, None) => SslMode::VerifyFull,
            (Roots::System, Some(m)) if m != SslMode::VerifyFull => {
                return Err(bad(
                    "sslrootcert=system needs sslmode=verify-full (as in libpq): \
                     anyone can get a public certificate for a name of their own"
                        .into(),
                ));
            }
            (_, m) => m.unwrap_or(SslMode::Prefer),
        };
        let store = match roots {
            Roots::None => None,
            Roots::File(ca) => Some(Arc::new(ca.roots())),
            Roots::System => Some(Arc::new(tls::public_roots())),
        };
        let check = match (mode, store) {
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                return Err(bad(format!(
                    "sslmode={} needs a root certificate: sslrootcert=<file> (or =system), \
                     or SYNCKAIROS_DATABASE_CA",
                    if mode == SslMode::VerifyCa {
                        "verify-ca"
                    } else {
                        "verify-full"
                    }
                )));
            }
            (SslMode::VerifyFull, Some(roots)) => Check::ChainAndName(roots),
            (_, Some(roots)) => Check::Chain(roots),
            (_, None) => Check::Nothing,
        };
        let rest = if rest.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        let mut config = tokio_postgres::Config::from_str(&rest).map_err(|e| bad(describe(&e)))?;
        config.ssl_mode(match mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
        let tls = MakeRustlsConnect::new(tls::client_config(check).map_err(bad)?);
        Ok(Self { config, tls, mode })
    }

    pub fn ssl_mode(&self) -> SslMode {
        self.mode
    }

    /// One new connection. A TLS failure says why (`invalid peer
    /// certificate: UnknownIssuer`, `... NotValidForName`, `server does not
    /// support TLS`), for the writer's log.
    pub async fn connect(&self) -> diesel::ConnectionResult<AsyncPgConnection> {
        let (client, connection) = self
            .config
            .connect(self.tls.clone())
            .await
            .map_err(|e| ConnectionError::BadConnection(describe(&e)))?;
        AsyncPgConnection::try_from_client_and_connection(client, connection).await
    }
}

/// An error and its causes on one line: tokio-postgres' own message is
/// only the kind ("error performing TLS handshake").
fn describe(e: &tokio_postgres::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

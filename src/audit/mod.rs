//! The audit trail in PostgreSQL (SPEC §8): every committed version of every
//! session with its server timestamp and full snapshot. Commits append their
//! events to the bucket audit streams (Redis engine, same MULTI) or to a
//! channel (memory engine); the [`writer`] moves them into Postgres in
//! batches; [`Audit::history`] answers ListSessionEvents. Never tonic.

pub mod connect;
pub mod db;
mod schema;
pub mod source;
pub mod writer;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use db::{DbError, PgPool};

use crate::engine::{Event, SessionKey};

/// ListSessionEvents' default and largest page.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1_000;
/// By default a page also ends once its snapshots reach this much JSON (a
/// page holds at least one event; `SYNCKAIROS_MAX_PAGE_BYTES` sets it): 1,000
/// snapshots of a 1,000-participant session would be about 150 MB, and gRPC
/// clients refuse replies over 4 MiB by default. The reply's protobuf is
/// smaller than the snapshots' JSON.
pub const DEFAULT_PAGE_BYTES: usize = 2 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("page_token: {0}")]
    BadPageToken(String),
    #[error("page_size: must be at most {MAX_PAGE_SIZE}, got {0}")]
    BadPageSize(u32),
    #[error("no audit history for this session")]
    NotFound,
    #[error(transparent)]
    Db(#[from] DbError),
}

/// One page of a session's history.
pub struct Page {
    pub events: Vec<Event>,
    /// Empty when there is nothing more.
    pub next_page_token: String,
}

/// Read access to the audit trail.
#[derive(Clone)]
pub struct Audit {
    pool: PgPool,
}

/// Page tokens are opaque to clients: base64 (URL-safe alphabet, no padding)
/// of `<epoch>:<last version>:<binding>`, where the binding is the first 16
/// hex digits of SHA-256(`<tenant>/<session>`): a token is checked against
/// the session it is presented for, so one issued for another session (or
/// another tenant's session of the same id) is refused rather than read as a
/// position in this one. Anything that does not decode to that shape, is
/// longer than 512 bytes, or is not exactly the token `encode_token` makes
/// of what it decodes to (`01` for `1`, say), is refused.
pub(crate) fn encode_token(key: &SessionKey, epoch: &str, version: u64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{epoch}:{version}:{}", binding(key)))
}

fn binding(key: &SessionKey) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(key.tenant.as_str());
    h.update("/");
    h.update(key.id.as_str());
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(crate) fn decode_token(key: &SessionKey, token: &str) -> Result<(String, u64), AuditError> {
    let bad = || AuditError::BadPageToken("not a token this server issued".into());
    if token.len() > 512 {
        return Err(bad());
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (rest, bound) = text.rsplit_once(':').ok_or_else(bad)?;
    let (epoch, version) = rest.rsplit_once(':').ok_or_else(bad)?;
    let version: u64 = version.parse().map_err(|_| bad())?;
    if bound != binding(key) {
        return Err(AuditError::BadPageToken(
            "issued for another session".into(),
        ));
    }
    // Only the one token this server issues for a position: `u64::parse`
    // also takes `01` and `+1`, which would make several tokens of one
    // position (found by the page_token fuzz target, fuzz/regressions/).
    if encode_token(key, epoch, version) != token {
        return Err(bad());
    }
    Ok((epoch.to_owned(), version))
}

impl Audit {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The history of the session's latest epoch, in version order, after
    /// `after_version` (or after the page token's position), in a page that
    /// ends once its snapshots reach `max_bytes` of JSON (one event at least).
    pub async fn history(
        &self,
        key: &SessionKey,
        page_size: u32,
        page_token: &str,
        after_version: Option<u64>,
        max_bytes: usize,
    ) -> Result<Page, AuditError> {
        if page_size > MAX_PAGE_SIZE {
            return Err(AuditError::BadPageSize(page_size));
        }
        let size = if page_size == 0 {
            DEFAULT_PAGE_SIZE
        } else {
            page_size
        } as usize;
        let (epoch, after) = if page_token.is_empty() {
            let epoch = db::latest_epoch(&self.pool, key.tenant.as_str(), key.id.as_str())
                .await?
                .ok_or(AuditError::NotFound)?;
            (epoch, after_version.unwrap_or(0))
        } else {
            let (epoch, last) = decode_token(key, page_token)?;
            (epoch, last.max(after_version.unwrap_or(0)))
        };
        let (rows, more) = db::events_page(
            &self.pool,
            key.tenant.as_str(),
            key.id.as_str(),
            &epoch,
            after,
            size,
            max_bytes,
        )
        .await?;
        let next_page_token = match (more, rows.last()) {
            (true, Some(last)) => encode_token(key, &last.epoch, last.event.version),
            _ => String::new(),
        };
        Ok(Page {
            events: rows.into_iter().map(|r| r.event).collect(),
            next_page_token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tenant: &str, id: &str) -> SessionKey {
        SessionKey {
            tenant: crate::engine::Tenant::parse("t", tenant).unwrap(),
            id: crate::engine::SessionId::parse("s", id).unwrap(),
        }
    }

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        let k = key("acme", "g1");
        let t = encode_token(&k, "0123abcd", 4711);
        assert_eq!(decode_token(&k, &t).unwrap(), ("0123abcd".to_owned(), 4711));
        assert!(decode_token(&k, "zz").is_err());
        assert!(decode_token(&k, "abc").is_err());
        // A token cut short.
        let whole = encode_token(&k, "e", 1);
        assert!(decode_token(&k, &whole[..whole.len() - 1]).is_err());
        assert!(
            decode_token(&k, "aéb").is_err(),
            "non-ASCII is refused, not a panic"
        );
        // The page_token fuzz target's find: `<epoch>:01` decoded as version 1.
        let b = binding(&k);
        assert!(decode_token(&k, &URL_SAFE_NO_PAD.encode(format!("e:01:{b}"))).is_err());
        assert!(decode_token(&k, &URL_SAFE_NO_PAD.encode(format!("e:+1:{b}"))).is_err());
    }

    #[test]
    fn a_page_token_is_refused_for_another_session_or_tenant() {
        let t = encode_token(&key("acme", "g1"), "e", 3);
        for other in [key("acme", "g2"), key("other", "g1")] {
            let e = decode_token(&other, &t).unwrap_err().to_string();
            assert!(e.contains("another session"), "{e}");
        }
    }
}

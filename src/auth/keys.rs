//! The keys file: API keys (`[[key]]`), player-token signers (`[[signer]]`)
//! and per-tenant limits (`[[tenant]]`), parsed and checked whole, so that a
//! file with one bad entry is refused as a whole (and, on a reload, the old
//! keys stay). Error messages name the entry and field (`key[2].sha256`),
//! never a secret or a hash.
//!
//! ```toml
//! [[key]]
//! id = "acme-backend"        # shown in logs; a client certificate's CN
//! tenant = "acme"            # [A-Za-z0-9._-]{1,64}
//! role = "admin"             # admin | play | read
//! sha256 = "<64 hex chars>"  # SHA-256 of the secret the client sends
//!
//! [[signer]]
//! kid = "acme-2026-12"       # the player token's JWT header `kid`
//! tenant = "acme"
//! hs256 = "<base64 secret, at least 32 bytes>"
//!
//! [[tenant]]
//! name = "acme"
//! creates_per_second = 50    # and creates_burst (default twice the rate)
//! mutations_per_second = 500 # and mutations_burst
//! max_streams = 1000         # Subscribe streams open at once, all replicas' own
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::Role;
use crate::config::Rate;
use crate::engine::Tenant;

/// The smallest HS256 secret accepted: 256 bits, the hash's own size (RFC 7518 §3.2).
pub const MIN_SIGNER_SECRET_BYTES: usize = 32;
/// Entries of each kind a file may hold (a bound on what a reload may allocate).
pub const MAX_ENTRIES: usize = 10_000;

/// One API key; the secret itself is never held, only its hash.
#[derive(Debug)]
pub struct ApiKey {
    pub id: Arc<str>,
    pub tenant: Tenant,
    pub role: Role,
    /// What the rate limits key its calls by: `tenant:<tenant>` (a tenant's
    /// keys share its limits).
    pub rate_key: Arc<str>,
}

/// A player-token signer.
pub struct Signer {
    pub kid: Arc<str>,
    pub tenant: Tenant,
    pub(super) key: jsonwebtoken::DecodingKey,
}

/// A tenant's own limits; `None` fields keep the server's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TenantLimits {
    pub creates: Option<Rate>,
    pub mutations: Option<Rate>,
    pub max_streams: Option<u32>,
}

/// A parsed, checked keys file.
#[derive(Default)]
pub struct Keys {
    by_hash: HashMap<[u8; 32], Arc<ApiKey>>,
    by_id: HashMap<Arc<str>, Arc<ApiKey>>,
    signers: HashMap<Arc<str>, Signer>,
    tenants: HashMap<String, TenantLimits>,
    /// Distinct for each parse in the process: what a verified token is
    /// remembered against (auth/source.rs).
    generation: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeysError(String);

fn bad(at: String, why: impl std::fmt::Display) -> KeysError {
    KeysError(format!("{at}: {why}"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    key: Vec<KeyEntry>,
    #[serde(default)]
    signer: Vec<SignerEntry>,
    #[serde(default)]
    tenant: Vec<TenantEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    id: String,
    tenant: String,
    role: String,
    sha256: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignerEntry {
    kid: String,
    tenant: String,
    hs256: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantEntry {
    name: String,
    creates_per_second: Option<u32>,
    creates_burst: Option<u32>,
    mutations_per_second: Option<u32>,
    mutations_burst: Option<u32>,
    max_streams: Option<u32>,
}

/// The SHA-256 of a secret, as the lookup key.
pub fn hash(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// Lower-case hex, as the file writes hashes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// `[A-Za-z0-9._-]{1,64}`: a tenant is part of Redis keys and channels
/// (`sk:{b}:s:<tenant>:<session>`), so never a `:` or `/`.
pub fn parse_tenant(at: &str, s: &str) -> Result<Tenant, KeysError> {
    let ok = (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok {
        return Err(bad(at.to_owned(), "must match [A-Za-z0-9._-]{1,64}"));
    }
    Tenant::parse(at, s).map_err(|e| bad(at.to_owned(), e))
}

/// Key ids and kids: printable, no spaces, 1..=128 bytes (they reach logs).
fn parse_name(at: String, s: &str) -> Result<Arc<str>, KeysError> {
    let ok = (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:@".contains(&b));
    if !ok {
        return Err(bad(at, "must match [A-Za-z0-9.:@_-]{1,128}"));
    }
    Ok(s.into())
}

fn rate(at: &str, per_second: Option<u32>, burst: Option<u32>) -> Result<Option<Rate>, KeysError> {
    match (per_second, burst) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(bad(format!("{at}_burst"), "needs a rate beside it")),
        (Some(r), b) => Rate::new(r, b.unwrap_or(r.saturating_mul(2)))
            .map(Some)
            .ok_or_else(|| {
                bad(
                    format!("{at}_per_second"),
                    "rate and burst must be at least 1",
                )
            }),
    }
}

impl Keys {
    pub fn parse(text: &str) -> Result<Self, KeysError> {
        let file: File = toml::from_str(text).map_err(|e| {
            // toml's message quotes the offending line, which may hold a
            // secret: keep only the first line (what and where).
            let msg = e.to_string();
            KeysError(format!(
                "not a keys file: {}",
                msg.lines().next().unwrap_or("")
            ))
        })?;
        for (what, n) in [
            ("key", file.key.len()),
            ("signer", file.signer.len()),
            ("tenant", file.tenant.len()),
        ] {
            if n > MAX_ENTRIES {
                return Err(KeysError(format!(
                    "at most {MAX_ENTRIES} [[{what}]] entries, got {n}"
                )));
            }
        }
        static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let mut keys = Keys {
            generation: GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            ..Keys::default()
        };
        for (i, k) in file.key.into_iter().enumerate() {
            let at = |f: &str| format!("key[{i}].{f}");
            let tenant = parse_tenant(&at("tenant"), &k.tenant)?;
            let key = Arc::new(ApiKey {
                id: parse_name(at("id"), &k.id)?,
                rate_key: format!("tenant:{tenant}").into(),
                tenant,
                role: Role::parse(&k.role)
                    .ok_or_else(|| bad(at("role"), "must be admin, play or read"))?,
            });
            let digest =
                unhex(&k.sha256).ok_or_else(|| bad(at("sha256"), "must be 64 hex characters"))?;
            if keys.by_id.insert(key.id.clone(), key.clone()).is_some() {
                return Err(bad(at("id"), "another key has this id"));
            }
            if keys.by_hash.insert(digest, key).is_some() {
                return Err(bad(at("sha256"), "another key has this hash"));
            }
        }
        for (i, s) in file.signer.into_iter().enumerate() {
            let at = |f: &str| format!("signer[{i}].{f}");
            let secret =
                decode_secret(&s.hs256).ok_or_else(|| bad(at("hs256"), "must be base64"))?;
            if secret.len() < MIN_SIGNER_SECRET_BYTES {
                return Err(bad(
                    at("hs256"),
                    format!("must decode to at least {MIN_SIGNER_SECRET_BYTES} bytes"),
                ));
            }
            let signer = Signer {
                kid: parse_name(at("kid"), &s.kid)?,
                tenant: parse_tenant(&at("tenant"), &s.tenant)?,
                key: jsonwebtoken::DecodingKey::from_secret(&secret),
            };
            if keys.signers.insert(signer.kid.clone(), signer).is_some() {
                return Err(bad(at("kid"), "another signer has this kid"));
            }
        }
        for (i, t) in file.tenant.into_iter().enumerate() {
            let at = |f: &str| format!("tenant[{i}].{f}");
            let limits = TenantLimits {
                creates: rate(&at("creates"), t.creates_per_second, t.creates_burst)?,
                mutations: rate(&at("mutations"), t.mutations_per_second, t.mutations_burst)?,
                max_streams: t.max_streams,
            };
            let name = parse_tenant(&at("name"), &t.name)?;
            if keys
                .tenants
                .insert(name.as_str().to_owned(), limits)
                .is_some()
            {
                return Err(bad(at("name"), "another [[tenant]] has this name"));
            }
        }
        Ok(keys)
    }

    /// The key whose secret hashes to `digest`.
    pub fn by_hash(&self, digest: &[u8; 32]) -> Option<&Arc<ApiKey>> {
        self.by_hash.get(digest)
    }

    /// The key named `id` (a client certificate's common name).
    pub fn by_id(&self, id: &str) -> Option<&Arc<ApiKey>> {
        self.by_id.get(id)
    }

    pub fn signer(&self, kid: &str) -> Option<&Signer> {
        self.signers.get(kid)
    }

    pub fn tenant_limits(&self, tenant: &str) -> TenantLimits {
        self.tenants.get(tenant).copied().unwrap_or_default()
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn len(&self) -> (usize, usize) {
        (self.by_hash.len(), self.signers.len())
    }
}

/// Standard or URL-safe base64, padded or not.
fn decode_secret(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let s = s.trim();
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(s).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn key(id: &str, tenant: &str, role: &str, sha: &str) -> String {
        format!(
            "[[key]]\nid = \"{id}\"\ntenant = \"{tenant}\"\nrole = \"{role}\"\nsha256 = \"{sha}\"\n"
        )
    }

    #[test]
    fn a_key_is_found_by_the_hash_of_its_secret_and_by_its_id() {
        let keys = Keys::parse(&key("acme-backend", "acme", "play", HASH)).unwrap();
        let k = keys.by_hash(&hash(b"test")).unwrap();
        assert_eq!(
            (&*k.id, k.tenant.as_str(), k.role),
            ("acme-backend", "acme", Role::Play)
        );
        assert!(keys.by_id("acme-backend").is_some());
        assert!(keys.by_hash(&hash(b"tesT")).is_none());
        assert_eq!(hex(&hash(b"test")), HASH);
    }

    #[test]
    fn bad_entries_are_named_and_never_quote_a_secret() {
        for (text, want) in [
            (key("a", "ac me", "admin", HASH), "key[0].tenant"),
            (key("a", "acme", "root", HASH), "key[0].role"),
            (key("a", "acme", "admin", "abc"), "key[0].sha256"),
            (key("a b", "acme", "admin", HASH), "key[0].id"),
            (
                key("a", "acme", "admin", HASH)
                    + &key("a", "acme", "read", &HASH.replace('9', "8")),
                "key[1].id",
            ),
            (
                key("a", "acme", "admin", HASH) + &key("b", "acme", "read", HASH),
                "key[1].sha256",
            ),
            (
                "[[signer]]\nkid = \"k\"\ntenant = \"acme\"\nhs256 = \"c2hvcnQ=\"\n".into(),
                "signer[0].hs256",
            ),
            (
                "[[tenant]]\nname = \"acme\"\nmutations_burst = 5\n".into(),
                "tenant[0].mutations_burst",
            ),
            (
                "[[key]]\nid = \"a\"\nsecret = \"hunter2\"\n".into(),
                "not a keys file",
            ),
        ] {
            let e = Keys::parse(&text)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(want), "{text:?} -> {e:?}, want {want}");
            assert!(!e.contains("hunter2") && !e.contains(HASH), "{e}");
        }
    }

    #[test]
    fn signers_and_tenant_limits_parse() {
        let secret = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let text = format!(
            "[[signer]]\nkid = \"acme-2026-12\"\ntenant = \"acme\"\nhs256 = \"{secret}\"\n\
             [[tenant]]\nname = \"acme\"\nmutations_per_second = 5\nmax_streams = 3\n"
        );
        let keys = Keys::parse(&text).unwrap();
        assert_eq!(keys.signer("acme-2026-12").unwrap().tenant.as_str(), "acme");
        let t = keys.tenant_limits("acme");
        assert_eq!(t.mutations, Rate::new(5, 10));
        assert_eq!((t.creates, t.max_streams), (None, Some(3)));
        let other = keys.tenant_limits("other");
        assert_eq!(other, TenantLimits::default());
    }
}

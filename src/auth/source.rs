//! Where the keys come from and how they change without a restart: the file
//! of `SYNCKAIROS_API_KEYS_FILE` (or the inline TOML of
//! `SYNCKAIROS_API_KEYS`), parsed at start-up (a bad file stops start-up),
//! then re-read on `SIGHUP` and whenever its contents change (looked at every
//! `WATCH_EVERY`, so a removed key stops working within a second). A file
//! that fails to parse, or cannot be read, keeps the keys in use and logs one
//! error line per bad version. Calls read the keys through an `ArcSwap`: no
//! lock on the call path, and a reload never waits for calls.
//!
//! Verified player tokens are remembered (a player's client sends the same
//! token on every call): a token seen before costs a hash lookup instead of
//! a base64 + JSON + HMAC decoding. An entry holds only what verifying the
//! same bytes gave; its `exp` is checked on every use against the caller's
//! clock; the cache is emptied whenever the keys change (a removed signer's
//! tokens stop at once) and when it reaches `MAX_CACHED_TOKENS` entries.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::keys::{self, Keys};
use super::{AuthError, PlayerToken, Principal, token};

/// How often the keys file is looked at for changes.
pub const WATCH_EVERY: Duration = Duration::from_millis(250);
/// The largest keys file read (a bound on what a reload may allocate).
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Verified tokens remembered at most (each up to `token::MAX_TOKEN_BYTES`
/// and its rights: ~64k × ~0.5 KB = ~32 MB at the very worst).
pub const MAX_CACHED_TOKENS: usize = 65_536;

#[derive(Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `SYNCKAIROS_API_KEYS_FILE`: re-read on SIGHUP and on change.
    File(PathBuf),
    /// `SYNCKAIROS_API_KEYS`: fixed for the process's life.
    Inline(String),
}

/// The inline TOML holds signer secrets: never printed.
impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::File(p) => f.debug_tuple("File").field(p).finish(),
            KeySource::Inline(_) => f.write_str("Inline(\"<redacted>\")"),
        }
    }
}

pub struct Authenticator {
    /// `None`: open mode.
    source: Option<KeySource>,
    keys: ArcSwap<Keys>,
    /// The file contents last looked at, parsed or refused (so one bad
    /// version is logged once, and an unchanged file is not parsed again).
    last_seen: Mutex<Option<Vec<u8>>>,
    /// Verified tokens, by their text (see the module doc).
    tokens: Mutex<HashMap<Box<str>, Cached>>,
}

/// A verified token and the keys' generation it was verified with (an entry
/// of other keys, put in by a call that raced a reload, is never used).
type Cached = (Arc<PlayerToken>, u64);

impl Authenticator {
    /// Open mode: every caller is tenant `default`, role `admin`.
    pub fn open() -> Arc<Self> {
        Arc::new(Self {
            source: None,
            keys: ArcSwap::from_pointee(Keys::default()),
            last_seen: Mutex::new(None),
            tokens: Mutex::default(),
        })
    }

    /// The keys of `source`, or why they cannot be used (start-up stops).
    pub fn load(source: KeySource) -> Result<Arc<Self>, String> {
        let text = match &source {
            KeySource::Inline(text) => text.clone().into_bytes(),
            KeySource::File(path) => read(path)?,
        };
        let keys = parse(&text)?;
        Ok(Arc::new(Self {
            source: Some(source),
            keys: ArcSwap::from_pointee(keys),
            last_seen: Mutex::new(Some(text)),
            tokens: Mutex::default(),
        }))
    }

    pub fn is_open(&self) -> bool {
        self.source.is_none()
    }

    /// The keys in use now.
    pub fn keys(&self) -> Arc<Keys> {
        self.keys.load_full()
    }

    /// `tenant`'s own limits in the keys in use (none in open mode).
    pub fn tenant_limits(&self, tenant: &str) -> super::TenantLimits {
        self.keys.load().tenant_limits(tenant)
    }

    /// Who sent `credential` (the bearer), or else the client certificate
    /// named `cert_cn`, at `now_secs` (Unix seconds).
    pub fn authenticate(
        &self,
        credential: Option<&str>,
        cert_cn: Option<&str>,
        now_secs: u64,
    ) -> Result<Principal, AuthError> {
        if self.is_open() {
            return Ok(Principal::Open);
        }
        let keys = self.keys.load();
        match (credential, cert_cn) {
            (Some(c), _) if token::looks_like_jwt(c) => {
                self.verify_token(&keys, c, now_secs).map(Principal::Token)
            }
            (Some(c), _) => keys
                .by_hash(&keys::hash(c.as_bytes()))
                .map(|k| Principal::Key(k.clone()))
                .ok_or_else(|| AuthError::Unauthenticated("unknown credential".into())),
            (None, Some(cn)) => keys
                .by_id(cn)
                .map(|k| Principal::Key(k.clone()))
                .ok_or_else(|| {
                    AuthError::Unauthenticated("the client certificate names no key".into())
                }),
            (None, None) => Err(AuthError::Unauthenticated(
                "no credential: send the metadata authorization: Bearer <API key or player token>"
                    .into(),
            )),
        }
    }

    /// A token's rights, from the cache when these bytes verified before.
    fn verify_token(
        &self,
        keys: &Keys,
        text: &str,
        now_secs: u64,
    ) -> Result<Arc<PlayerToken>, AuthError> {
        let cached = self.lock_tokens().get(text).cloned();
        if let Some((t, generation)) = cached {
            if generation == keys.generation() && t.expires > now_secs {
                return Ok(t);
            }
            self.lock_tokens().remove(text);
        }
        let t = Arc::new(token::verify(keys, text, now_secs)?);
        let mut tokens = self.lock_tokens();
        if tokens.len() >= MAX_CACHED_TOKENS {
            tokens.clear();
        }
        tokens.insert(text.into(), (t.clone(), keys.generation()));
        Ok(t)
    }

    fn lock_tokens(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Cached>> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Re-reads the file now (SIGHUP); `true` when new keys are in use.
    pub fn reload(&self) -> bool {
        let Some(KeySource::File(path)) = &self.source else {
            return false;
        };
        let text = match read(path) {
            Ok(t) => t,
            Err(e) => {
                let mut last = self.lock_last_seen();
                // Logged once per outage, not every look.
                if last.is_some() {
                    error!("SYNCKAIROS_API_KEYS_FILE: {e}; keeping the keys in use");
                    *last = None;
                }
                return false;
            }
        };
        let mut last = self.lock_last_seen();
        if last.as_deref() == Some(&text[..]) {
            return false;
        }
        let changed = match parse(&text) {
            Ok(keys) => {
                let (k, s) = keys.len();
                self.keys.store(Arc::new(keys));
                // Tokens verified by the old signers are verified again.
                self.lock_tokens().clear();
                info!(keys = k, signers = s, "SYNCKAIROS_API_KEYS_FILE: reloaded");
                true
            }
            Err(e) => {
                error!("SYNCKAIROS_API_KEYS_FILE: {e}; keeping the keys in use");
                false
            }
        };
        *last = Some(text);
        changed
    }

    fn lock_last_seen(&self) -> std::sync::MutexGuard<'_, Option<Vec<u8>>> {
        self.last_seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Re-reads the file whenever it changes, until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        if !matches!(self.source, Some(KeySource::File(_))) {
            return;
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(WATCH_EVERY) => {}
            }
            let me = self.clone();
            // File I/O off the runtime's threads.
            if tokio::task::spawn_blocking(move || me.reload())
                .await
                .is_err()
            {
                warn!("SYNCKAIROS_API_KEYS_FILE: a reload failed to run");
            }
        }
    }
}

fn read(path: &PathBuf) -> Result<Vec<u8>, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{} is larger than {MAX_FILE_BYTES} bytes",
            path.display()
        ));
    }
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn parse(text: &[u8]) -> Result<Keys, String> {
    let text = std::str::from_utf8(text).map_err(|_| "not UTF-8".to_owned())?;
    Keys::parse(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_block(id: &str, secret: &str) -> String {
        format!(
            "[[key]]\nid = \"{id}\"\ntenant = \"acme\"\nrole = \"admin\"\nsha256 = \"{}\"\n",
            keys::hex(&keys::hash(secret.as_bytes()))
        )
    }

    #[test]
    fn open_mode_lets_everyone_in_as_default_admin() {
        let a = Authenticator::open();
        let p = a.authenticate(None, None, 0).unwrap();
        assert!(matches!(p, Principal::Open));
        assert_eq!(p.tenant().as_str(), "default");
    }

    #[test]
    fn a_file_reloads_on_change_and_a_broken_one_keeps_the_old_keys() {
        let dir = std::env::temp_dir().join(format!("sk-keys-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys.toml");
        std::fs::write(&path, key_block("one", "secret-one")).unwrap();
        let a = Authenticator::load(KeySource::File(path.clone())).unwrap();
        let who = |c: &str| a.authenticate(Some(c), None, 0).map(|p| p.label());
        assert_eq!(who("secret-one").unwrap(), "key:one");
        assert!(who("secret-two").is_err());
        assert!(!a.reload(), "unchanged");
        std::fs::write(
            &path,
            key_block("one", "secret-one") + &key_block("two", "secret-two"),
        )
        .unwrap();
        assert!(a.reload());
        assert_eq!(who("secret-two").unwrap(), "key:two");
        std::fs::write(&path, "[[key]]\nid = ").unwrap();
        assert!(!a.reload());
        assert_eq!(who("secret-two").unwrap(), "key:two", "kept");
        std::fs::remove_file(&path).unwrap();
        assert!(!a.reload());
        assert_eq!(who("secret-one").unwrap(), "key:one", "kept");
        std::fs::write(&path, key_block("two", "secret-two")).unwrap();
        assert!(a.reload());
        assert_eq!(
            who("secret-one"),
            Err(AuthError::Unauthenticated("unknown credential".into()))
        );
        assert!(a.authenticate(None, Some("two"), 0).is_ok());
        assert!(a.authenticate(None, Some("one"), 0).is_err());
        assert!(a.authenticate(None, None, 0).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_remembered_token_still_expires_and_goes_with_its_signer() {
        use base64::Engine as _;
        let secret = [9u8; 32];
        let signer = format!(
            "[[signer]]\nkid = \"k1\"\ntenant = \"acme\"\nhs256 = \"{}\"\n",
            base64::engine::general_purpose::STANDARD.encode(secret)
        );
        let dir = std::env::temp_dir().join(format!("sk-keys-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys.toml");
        std::fs::write(&path, &signer).unwrap();
        let a = Authenticator::load(KeySource::File(path.clone())).unwrap();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some("k1".into());
        let claims = serde_json::json!({"sid": "g1", "scope": "watch", "exp": 1_000});
        let t = jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&secret),
        )
        .unwrap();
        for _ in 0..2 {
            assert!(a.authenticate(Some(&t), None, 999).is_ok());
        }
        assert_eq!(a.lock_tokens().len(), 1, "remembered");
        let expired = a.authenticate(Some(&t), None, 1_000).unwrap_err();
        assert!(expired.to_string().contains("expired"), "{expired}");
        assert!(a.authenticate(Some(&t), None, 999).is_ok());
        // Another signer of the same kid: the remembered token is verified
        // again, against the new secret, and refused.
        std::fs::write(&path, signer.replace("CQkJ", "CgoK")).unwrap();
        assert!(a.reload());
        let e = a.authenticate(Some(&t), None, 999).unwrap_err();
        assert!(e.to_string().contains("bad signature"), "{e}");
        // A stale entry (a call that raced the reload) is never used.
        let stale = Arc::new(token::verify(&Keys::parse(&signer).unwrap(), &t, 999).unwrap());
        a.lock_tokens().insert(t.clone().into(), (stale, 0));
        assert!(a.authenticate(Some(&t), None, 999).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_bad_file_at_start_up_is_refused() {
        assert!(Authenticator::load(KeySource::Inline("[[key]]".into())).is_err());
        assert!(
            Authenticator::load(KeySource::File("/nonexistent/keys.toml".into()))
                .err()
                .unwrap()
                .contains("cannot read")
        );
    }
}

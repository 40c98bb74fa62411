//! Player tokens: HS256 JWTs a game server mints for one player of one
//! session (jsonwebtoken). The header's `kid` picks the `[[signer]]`, whose
//! tenant the token acts in. Claims: `sid` (the session), `scope` (`watch`
//! or `play`), `sub` (the participant; required for `play`), `exp`
//! (required, in seconds; no leeway: expired means expired, and more than
//! 24 hours ahead is refused, so a leaked token is not good for long). No
//! other algorithm is accepted, so a token cannot pick `none` or switch to
//! an asymmetric one.

use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;

use super::keys::Keys;
use super::{AuthError, PlayerToken, Scope};
use crate::engine::{ParticipantId, SessionId};

/// How far ahead a token's `exp` may be.
pub const MAX_TOKEN_LIFETIME_SECS: u64 = 24 * 60 * 60;
/// Longest token looked at; longer ones are refused before any decoding.
pub const MAX_TOKEN_BYTES: usize = 4096;

#[derive(Deserialize)]
struct Claims {
    sid: String,
    scope: String,
    #[serde(default)]
    sub: Option<String>,
    exp: u64,
}

fn unauthenticated(why: &str) -> AuthError {
    AuthError::Unauthenticated(format!("player token: {why}"))
}

/// Whether `credential` has a JWT's shape (three dot-separated parts), as an
/// API key secret never has.
pub fn looks_like_jwt(credential: &str) -> bool {
    credential.bytes().filter(|&b| b == b'.').count() == 2
}

/// The token's rights, if `keys` has its signer and it is valid at `now_secs`.
pub fn verify(keys: &Keys, token: &str, now_secs: u64) -> Result<PlayerToken, AuthError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(unauthenticated("too long"));
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| unauthenticated("malformed"))?;
    if header.alg != Algorithm::HS256 {
        return Err(unauthenticated("must be signed with HS256"));
    }
    let kid = header
        .kid
        .ok_or_else(|| unauthenticated("its header has no kid"))?;
    let signer = keys
        .signer(&kid)
        .ok_or_else(|| unauthenticated("signed by an unknown kid"))?;
    let mut validation = Validation::new(Algorithm::HS256);
    // `exp` is checked below against the caller's clock (the server's), not
    // jsonwebtoken's reading of the system clock.
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["exp"]);
    let claims = jsonwebtoken::decode::<Claims>(token, &signer.key, &validation)
        .map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => unauthenticated("expired"),
            ErrorKind::InvalidSignature => unauthenticated("bad signature"),
            ErrorKind::MissingRequiredClaim(c) => {
                unauthenticated(&format!("the {c} claim is required"))
            }
            _ => unauthenticated("malformed claims (sid, scope, sub, exp)"),
        })?
        .claims;
    if claims.exp <= now_secs {
        return Err(unauthenticated("expired"));
    }
    if claims.exp > now_secs + MAX_TOKEN_LIFETIME_SECS {
        return Err(unauthenticated("exp is more than 24 hours ahead"));
    }
    let session = SessionId::parse("sid", &claims.sid)
        .map_err(|_| unauthenticated("sid is not a session id"))?;
    let scope = match claims.scope.as_str() {
        "watch" => Scope::Watch,
        "play" => Scope::Play,
        _ => return Err(unauthenticated("scope must be watch or play")),
    };
    let participant = match (&claims.sub, scope) {
        (Some(sub), _) => Some(
            ParticipantId::parse("sub", sub)
                .map_err(|_| unauthenticated("sub is not a participant id"))?,
        ),
        (None, Scope::Play) => return Err(unauthenticated("a play token needs sub")),
        (None, Scope::Watch) => None,
    };
    let rate_key = format!(
        "token:{}/{}/{}",
        signer.tenant,
        session,
        participant.as_ref().map_or("-", |p| p.as_str())
    );
    Ok(PlayerToken {
        kid: Arc::clone(&signer.kid),
        tenant: signer.tenant.clone(),
        session,
        scope,
        participant,
        expires: claims.exp,
        rate_key: rate_key.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;
    const SECRET: [u8; 32] = [42; 32];

    fn keys() -> Keys {
        let b64 = base64::engine::general_purpose::STANDARD.encode(SECRET);
        Keys::parse(&format!(
            "[[signer]]\nkid = \"acme-1\"\ntenant = \"acme\"\nhs256 = \"{b64}\"\n"
        ))
        .unwrap()
    }

    fn mint(kid: Option<&str>, claims: serde_json::Value, secret: &[u8]) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    fn err(token: &str) -> String {
        match verify(&keys(), token, NOW) {
            Err(AuthError::Unauthenticated(m)) => m,
            other => panic!("expected UNAUTHENTICATED, got {other:?}"),
        }
    }

    #[test]
    fn a_play_token_names_its_tenant_session_and_participant() {
        let t = mint(
            Some("acme-1"),
            json!({"sid": "g1", "scope": "play", "sub": "white", "exp": NOW + 60}),
            &SECRET,
        );
        assert!(looks_like_jwt(&t));
        let p = verify(&keys(), &t, NOW).unwrap();
        assert_eq!(
            (
                p.tenant.as_str(),
                p.session.as_str(),
                p.scope,
                p.participant.as_ref().map(|p| p.as_str())
            ),
            ("acme", "g1", Scope::Play, Some("white"))
        );
    }

    #[test]
    fn every_bad_token_is_unauthenticated_with_its_reason() {
        let claims = json!({"sid": "g1", "scope": "watch", "exp": NOW + 60});
        assert!(err(&mint(Some("other"), claims.clone(), &SECRET)).contains("unknown kid"));
        assert!(err(&mint(None, claims.clone(), &SECRET)).contains("no kid"));
        assert!(err(&mint(Some("acme-1"), claims.clone(), &[1; 32])).contains("bad signature"));
        let expired = json!({"sid": "g1", "scope": "watch", "exp": NOW});
        assert!(err(&mint(Some("acme-1"), expired, &SECRET)).contains("expired"));
        let far = json!({"sid": "g1", "scope": "watch", "exp": NOW + MAX_TOKEN_LIFETIME_SECS + 1});
        assert!(err(&mint(Some("acme-1"), far, &SECRET)).contains("24 hours"));
        let no_exp = json!({"sid": "g1", "scope": "watch"});
        assert!(err(&mint(Some("acme-1"), no_exp, &SECRET)).contains("exp"));
        let no_sub = json!({"sid": "g1", "scope": "play", "exp": NOW + 60});
        assert!(err(&mint(Some("acme-1"), no_sub, &SECRET)).contains("needs sub"));
        let bad_scope = json!({"sid": "g1", "scope": "admin", "exp": NOW + 60});
        assert!(err(&mint(Some("acme-1"), bad_scope, &SECRET)).contains("scope"));
        let bad_sid = json!({"sid": "a b", "scope": "watch", "exp": NOW + 60});
        assert!(err(&mint(Some("acme-1"), bad_sid, &SECRET)).contains("sid"));
        assert!(err("a.b.c").contains("malformed"));
        assert!(err(&"a.b.".repeat(2000)).contains("too long"));
        // alg: none, or another algorithm than HS256.
        let mut h = Header::new(Algorithm::HS384);
        h.kid = Some("acme-1".into());
        let t = jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(&SECRET)).unwrap();
        assert!(err(&t).contains("HS256"));
        let none = format!(
            "{}.{}.",
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(r#"{"alg":"none","kid":"acme-1"}"#),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        assert!(verify(&keys(), &none, NOW).is_err());
    }
}

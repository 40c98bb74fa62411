//! `synckairos keys new --tenant T --role R --id ID`: a fresh API key secret
//! (256 bits from the OS, `sk_` + URL-safe base64) and the `[[key]]` block
//! holding only its SHA-256, to paste into the keys file. `synckairos keys
//! signer --tenant T --kid KID`: a fresh HS256 secret for player tokens and
//! its `[[signer]]` block. Both blocks are checked by the keys file's own
//! parser before they are printed, so what is printed loads.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

use super::keys::{self, Keys};

/// What `keys new` prints: the secret, then the block.
pub struct Minted {
    pub secret: String,
    pub block: String,
}

fn random_32() -> Result<[u8; 32], String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness from the OS: {e}"))?;
    Ok(bytes)
}

fn checked(block: String) -> Result<String, String> {
    Keys::parse(&block).map_err(|e| e.to_string())?;
    Ok(block)
}

fn quoted(s: &str) -> String {
    // TOML basic strings: a value with a quote or backslash is refused by
    // the parser check anyway; escaping keeps the block well-formed.
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

pub fn new_key(tenant: &str, role: &str, id: &str) -> Result<Minted, String> {
    let secret = format!("sk_{}", URL_SAFE_NO_PAD.encode(random_32()?));
    let block = checked(format!(
        "[[key]]\nid = {}\ntenant = {}\nrole = {}\nsha256 = \"{}\"\n",
        quoted(id),
        quoted(tenant),
        quoted(role),
        keys::hex(&keys::hash(secret.as_bytes()))
    ))?;
    Ok(Minted { secret, block })
}

pub fn new_signer(tenant: &str, kid: &str) -> Result<Minted, String> {
    let secret = STANDARD.encode(random_32()?);
    let block = checked(format!(
        "[[signer]]\nkid = {}\ntenant = {}\nhs256 = \"{secret}\"\n",
        quoted(kid),
        quoted(tenant)
    ))?;
    Ok(Minted { secret, block })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_loads_and_is_found_by_its_secret() {
        let m = new_key("acme", "play", "acme-backend").unwrap();
        let keys = Keys::parse(&m.block).unwrap();
        let k = keys.by_hash(&keys::hash(m.secret.as_bytes())).unwrap();
        assert_eq!((&*k.id, k.tenant.as_str()), ("acme-backend", "acme"));
        assert!(
            !m.block.contains(&m.secret),
            "only the hash is printed in the block"
        );
        assert_ne!(new_key("acme", "play", "x").unwrap().secret, m.secret);
        assert!(m.secret.len() >= 40);
    }

    #[test]
    fn bad_input_is_refused_naming_the_field() {
        assert!(
            new_key("ac me", "play", "a")
                .err()
                .unwrap()
                .contains("tenant")
        );
        assert!(new_key("acme", "root", "a").err().unwrap().contains("role"));
        assert!(
            new_key("acme", "read", "a\"b")
                .err()
                .unwrap()
                .contains("id")
        );
        let s = new_signer("acme", "acme-2026-12").unwrap();
        assert!(
            Keys::parse(&s.block)
                .unwrap()
                .signer("acme-2026-12")
                .is_some()
        );
    }
}

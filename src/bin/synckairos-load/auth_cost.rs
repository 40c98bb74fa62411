//! `auth-cost`: what authenticating one call costs, in this process, with no
//! network and nothing else running: `Authenticator::authenticate` (what the
//! gRPC auth layer calls once per call) in open mode, with an API key, with a
//! player token seen before (the cache) and with tokens never seen (a full
//! HS256 verification each). Median of 7 rounds of 100,000 calls each.

use std::time::Instant;

use base64::Engine as _;
use synckairos::auth::keys::{hash, hex};
use synckairos::auth::{Authenticator, KeySource};

const ROUNDS: usize = 7;
const CALLS: usize = 100_000;

fn per_call(mut call: impl FnMut(usize) -> bool) -> f64 {
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|r| {
            let start = Instant::now();
            for i in 0..CALLS {
                assert!(call(r * CALLS + i), "a call was refused");
            }
            start.elapsed().as_nanos() as f64 / CALLS as f64
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[ROUNDS / 2]
}

pub fn run() -> anyhow::Result<()> {
    let key = "sk-bench-0123456789abcdef";
    let secret = [7u8; 32];
    let toml = format!(
        "[[key]]\nid = \"bench\"\ntenant = \"bench\"\nrole = \"admin\"\nsha256 = \"{}\"\n\n\
         [[signer]]\nkid = \"bench-kid\"\ntenant = \"bench\"\nhs256 = \"{}\"\n",
        hex(&hash(key.as_bytes())),
        base64::engine::general_purpose::STANDARD.encode(secret)
    );
    let keyed = Authenticator::load(KeySource::Inline(toml)).map_err(anyhow::Error::msg)?;
    let open = Authenticator::open();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("bench-kid".into());
    let encoding = jsonwebtoken::EncodingKey::from_secret(&secret);
    let mint = |i: usize| -> anyhow::Result<String> {
        let claims = serde_json::json!({
            "sid": format!("load-0123456789abcdef0123456789abcdef-{i}"),
            "scope": "play", "sub": "a", "exp": now + 3600
        });
        Ok(jsonwebtoken::encode(&header, &claims, &encoding)?)
    };
    let one = mint(0)?;
    // More distinct tokens than the cache holds, so none is found there.
    let fresh: Vec<String> = (0..ROUNDS * CALLS / 10)
        .map(|i| mint(i + 1))
        .collect::<Result<_, _>>()?;
    let rows = [
        (
            "open mode",
            per_call(|_| open.authenticate(None, None, now).is_ok()),
        ),
        (
            "API key (SHA-256 + lookup)",
            per_call(|_| keyed.authenticate(Some(key), None, now).is_ok()),
        ),
        (
            "play token, seen before",
            per_call(|_| keyed.authenticate(Some(&one), None, now).is_ok()),
        ),
        (
            "play token, never seen (HS256 verify)",
            per_call(|i| {
                keyed
                    .authenticate(Some(&fresh[i % fresh.len()]), None, now)
                    .is_ok()
            }),
        ),
    ];
    for (what, ns) in rows {
        println!("authenticate, {what}: {ns:.0} ns/call (median of {ROUNDS} x {CALLS})");
    }
    Ok(())
}

//! `switch`: SwitchCycle across N running sessions from `--concurrency`
//! workers, each on its own share of the sessions; one report line. With
//! `--token`, each session's two players get a play token each (minted here,
//! an hour long) and every switch carries the mover's, as a player's own
//! client would: the mover is tracked per session from each reply.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use base64::Engine as _;
use synckairos::grpc::pb;
use tonic::metadata::{Ascii, MetadataValue};

use crate::Common;
use crate::shared::{bearer_value, clients, create_running, drive, run_id};

/// Each session's two play tokens' `authorization` values (for "a", "b").
type Tokens = Vec<[MetadataValue<Ascii>; 2]>;

fn mint_tokens(spec: &str, ids: &[String]) -> anyhow::Result<Tokens> {
    let (kid, secret) = spec
        .split_once(':')
        .ok_or_else(|| anyhow::anyhow!("--token: expected KID:BASE64SECRET"))?;
    let secret = base64::engine::general_purpose::STANDARD.decode(secret)?;
    let key = jsonwebtoken::EncodingKey::from_secret(&secret);
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(kid.to_owned());
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 3600;
    let token = |id: &str, sub: &str| -> anyhow::Result<MetadataValue<Ascii>> {
        let claims = serde_json::json!({"sid": id, "scope": "play", "sub": sub, "exp": exp});
        bearer_value(&jsonwebtoken::encode(&header, &claims, &key)?)
    };
    ids.iter()
        .map(|id| Ok([token(id, "a")?, token(id, "b")?]))
        .collect()
}

pub async fn run(common: Common, sessions: usize) -> anyhow::Result<()> {
    let clients = clients(&common).await?;
    let run = run_id();
    let ids: Vec<String> = (0..sessions).map(|i| format!("{run}-{i}")).collect();
    let tokens = match &common.token {
        Some(spec) => Some(Arc::new(mint_tokens(spec, &ids)?)),
        None => None,
    };
    create_running(&clients, &ids, 24 * 3600 * 1000).await?;
    // Whether "b" is to move, per session ("a" starts).
    let b_moves: Arc<Vec<AtomicBool>> =
        Arc::new(ids.iter().map(|_| AtomicBool::new(false)).collect());
    let ids = Arc::new(ids);
    let concurrency = common.concurrency;
    let stats = drive(concurrency, common.seconds, move |w, n| {
        let mut c = clients[w % clients.len()].clone();
        // Worker w takes sessions w, w+C, w+2C...: no two workers race on one session.
        let per = (ids.len() / concurrency).max(1);
        let i = (w + (n as usize % per) * concurrency) % ids.len();
        let mut req = tonic::Request::new(pb::SwitchCycleRequest {
            session_id: ids[i].clone(),
            ..Default::default()
        });
        if let Some(tokens) = &tokens {
            let mover = usize::from(b_moves[i].load(Ordering::Relaxed));
            req.metadata_mut()
                .insert("authorization", tokens[i][mover].clone());
        }
        let b_moves = b_moves.clone();
        async move {
            match c.switch_cycle(req).await {
                Ok(r) => {
                    b_moves[i].store(r.get_ref().active_participant_id == "b", Ordering::Relaxed);
                    true
                }
                Err(_) => false,
            }
        }
    })
    .await;
    let how = match (&common.api_key, &common.token) {
        (_, Some(_)) => ", play tokens",
        (Some(_), None) => ", API key",
        (None, None) => "",
    };
    stats.report(
        &format!(
            "SwitchCycle x{} over {} sessions{how}",
            common.concurrency, sessions
        ),
        common.seconds,
    );
    Ok(())
}

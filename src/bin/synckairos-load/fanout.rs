//! `fanout`: switches sent to one replica at `--rate`, and the time until each
//! event arrives on the Subscribe streams held by another replica.
//! `measure` is that measurement on sessions already running, so that
//! `subscribe_flood` can take it twice, without and with a flood beside it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use synckairos::grpc::pb;
use tokio::sync::Mutex;

use crate::Common;
use crate::shared::{self, Stats, create_running, run_id};

pub async fn run(
    common: Common,
    subscribe_target: String,
    sessions: usize,
    streams: usize,
    rate: u64,
) -> anyhow::Result<()> {
    let clients = shared::clients(&common).await?;
    let sub_clients = shared::clients(&Common {
        target: subscribe_target,
        ..common.clone()
    })
    .await?;
    let run = run_id();
    let ids: Vec<String> = (0..sessions).map(|i| format!("{run}-{i}")).collect();
    create_running(&clients, &ids, 24 * 3600 * 1000).await?;
    let m = measure(&clients, &sub_clients, &ids, streams, rate, common.seconds).await?;
    println!(
        "switches sent: {} ({} failed or raced); deliveries measured to {streams} streams:",
        m.sent, m.stats.errors
    );
    m.stats.report(
        "switch -> event on another replica's stream",
        common.seconds,
    );
    Ok(())
}

/// What one measurement saw.
pub struct Measured {
    /// Switches sent.
    pub sent: usize,
    /// Switch -> event latencies on every stream; `errors` counts switches
    /// that failed or lost a race.
    pub stats: Stats,
}

/// Opens `streams` Subscribe streams (spread over `ids`) on `sub_clients`,
/// sends switches at `rate` a second through `clients` for `seconds`, and
/// times each `SWITCHED` event's arrival on every stream.
pub async fn measure(
    clients: &[crate::shared::Client],
    sub_clients: &[crate::shared::Client],
    ids: &[String],
    streams: usize,
    rate: u64,
    seconds: f64,
) -> anyhow::Result<Measured> {
    let sessions = ids.len();
    // version -> when its switch was sent, per session.
    let sent: Arc<Vec<Mutex<HashMap<u64, Instant>>>> =
        Arc::new((0..sessions).map(|_| Mutex::new(HashMap::new())).collect());
    let latencies = Arc::new(Mutex::new(Stats::default()));
    let measuring = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for s in 0..streams {
        let i = s % sessions;
        let mut c = sub_clients[s % sub_clients.len()].clone();
        let (sent, latencies, measuring) = (sent.clone(), latencies.clone(), measuring.clone());
        let mut stream = c
            .subscribe(pb::SubscribeRequest {
                session_id: ids[i].clone(),
                heartbeat_ms: Some(60_000),
                ..Default::default()
            })
            .await?
            .into_inner();
        readers.push(tokio::spawn(async move {
            while let Ok(Some(ev)) = stream.message().await {
                if ev.r#type != pb::EventType::Switched as i32 || !measuring.load(Ordering::Relaxed)
                {
                    continue;
                }
                let at = sent[i].lock().await.get(&ev.version).copied();
                if let Some(at) = at {
                    latencies
                        .lock()
                        .await
                        .record(at.elapsed().as_micros() as u64);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    measuring.store(true, Ordering::Relaxed);
    let (n, errors) = switch_at_rate(clients, ids, &sent, rate, seconds, |n| n % sessions).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    measuring.store(false, Ordering::Relaxed);
    for r in readers {
        r.abort();
    }
    let mut stats = std::mem::take(&mut *latencies.lock().await);
    stats.errors = errors;
    Ok(Measured { sent: n, stats })
}

/// Switches `rate` sessions a second for `seconds`, the `n`th one
/// `ids[pick(n)]`, each noting in `sent` when the version it makes was sent
/// (`expected_version` guards it); returns how many were sent and failed.
pub(crate) async fn switch_at_rate(
    clients: &[shared::Client],
    ids: &[String],
    sent: &Arc<Vec<Mutex<HashMap<u64, Instant>>>>,
    rate: u64,
    seconds: f64,
    pick: impl Fn(usize) -> usize,
) -> (usize, u64) {
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let mut n = 0usize;
    let mut errors = 0u64;
    let mut in_flight = Vec::new();
    while Instant::now() < until {
        ticker.tick().await;
        let i = pick(n);
        n += 1;
        let mut c = clients[n % clients.len()].clone();
        let (id, sent) = (ids[i].clone(), sent.clone());
        in_flight.push(tokio::spawn(async move {
            // The switch makes version current + 1 (expected_version guards it).
            let current = c
                .get_session(pb::GetSessionRequest {
                    session_id: id.clone(),
                })
                .await
                .ok()?
                .into_inner()
                .version;
            sent[i].lock().await.insert(current + 1, Instant::now());
            c.switch_cycle(pb::SwitchCycleRequest {
                session_id: id,
                expected_version: Some(current),
                ..Default::default()
            })
            .await
            .ok()
            .map(|_| ())
        }));
        if in_flight.len() > 256 {
            errors += settle(&mut in_flight).await;
        }
    }
    errors += settle(&mut in_flight).await;
    (n, errors)
}

/// Waits for the switches in flight; returns how many failed.
async fn settle(in_flight: &mut Vec<tokio::task::JoinHandle<Option<()>>>) -> u64 {
    let mut failed = 0;
    for t in in_flight.drain(..) {
        if !matches!(t.await, Ok(Some(()))) {
            failed += 1;
        }
    }
    failed
}

//! `fanout`: switches sent to one replica at `--rate`, and the time until each
//! event arrives on the Subscribe streams held by another replica.

use std::sync::Arc;
use std::sync::atomic::Ordering;
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
    let sub_common = Common {
        target: subscribe_target,
        ..common.clone()
    };
    let sub_clients = shared::clients(&sub_common).await?;
    let run = run_id();
    let ids: Vec<String> = (0..sessions).map(|i| format!("{run}-{i}")).collect();
    create_running(&clients, &ids, 24 * 3600 * 1000).await?;
    // version -> when its switch was sent, per session.
    let sent: Arc<Vec<Mutex<std::collections::HashMap<u64, Instant>>>> = Arc::new(
        (0..sessions)
            .map(|_| Mutex::new(Default::default()))
            .collect(),
    );
    let latencies = Arc::new(Mutex::new(Stats::default()));
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for s in 0..streams {
        let i = s % sessions;
        let mut c = sub_clients[s % sub_clients.len()].clone();
        let id = ids[i].clone();
        let (sent, latencies, measuring) = (sent.clone(), latencies.clone(), measuring.clone());
        let mut stream = c
            .subscribe(pb::SubscribeRequest {
                session_id: id,
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
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut ticker = tokio::time::interval(interval);
    let until = Instant::now() + Duration::from_secs_f64(common.seconds);
    let mut n = 0usize;
    let mut errors = 0u64;
    let mut in_flight = Vec::new();
    while Instant::now() < until {
        ticker.tick().await;
        let i = n % sessions;
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
            let t = Instant::now();
            sent[i].lock().await.insert(current + 1, t);
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
            for t in in_flight.drain(..) {
                if !matches!(t.await, Ok(Some(()))) {
                    errors += 1;
                }
            }
        }
    }
    for t in in_flight.drain(..) {
        if !matches!(t.await, Ok(Some(()))) {
            errors += 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    measuring.store(false, Ordering::Relaxed);
    for r in readers {
        r.abort();
    }
    let mut stats = std::mem::take(&mut *latencies.lock().await);
    stats.errors = errors;
    println!(
        "switches sent: {n} ({errors} failed or raced); deliveries measured to {streams} streams:"
    );
    stats.report(
        "switch -> event on another replica's stream",
        common.seconds,
    );
    Ok(())
}

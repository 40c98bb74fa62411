//! `subscribe-flood`: the `fanout` measurement (switches on one replica, the
//! events timed on real streams held by another) taken twice in one run,
//! first alone and then while `--flood-rate` Subscribe calls a second to ids
//! that do not exist hit the streams' replica. Issue 12's figure: the real
//! streams' switch -> event p99 under a flood of 2,000 a second stays under
//! 5 ms. It also reports what the flood got back: every call should be
//! NOT_FOUND, at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use synckairos::grpc::pb;
use tokio::sync::Mutex;
use tonic::Code;

use crate::Common;
use crate::fanout::{Measured, measure};
use crate::shared::{self, Stats, create_running, run_id};

/// Flood calls are sent in slices this often (a tokio timer cannot tick every
/// 500 µs reliably): 2,000 a second is 20 calls every 10 ms.
const SLICE: Duration = Duration::from_millis(10);

pub async fn run(
    common: Common,
    subscribe_target: String,
    sessions: usize,
    rate: u64,
    flood_rate: u64,
) -> anyhow::Result<()> {
    let clients = shared::clients(&common).await?;
    let sub_common = Common {
        target: subscribe_target,
        ..common.clone()
    };
    let sub_clients = shared::clients(&sub_common).await?;
    // The flood has connections of its own, as a hostile client would.
    let flood_clients = shared::clients(&sub_common).await?;
    let run = run_id();
    let ids: Vec<String> = (0..sessions).map(|i| format!("{run}-{i}")).collect();
    create_running(&clients, &ids, 24 * 3600 * 1000).await?;
    let seconds = common.seconds;

    let quiet = measure(&clients, &sub_clients, &ids, sessions, rate, seconds).await?;
    let flood = Arc::new(Mutex::new(Flood::default()));
    let stop = tokio_util::sync::CancellationToken::new();
    let flooding = tokio::spawn(send_flood(
        flood_clients,
        flood_rate,
        flood.clone(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let loud = measure(&clients, &sub_clients, &ids, sessions, rate, seconds).await?;
    stop.cancel();
    let sent = flooding.await?;

    print_measured("without a flood", quiet, seconds);
    print_measured(
        &format!("under a flood of {flood_rate} Subscribe/s to missing ids"),
        loud,
        seconds,
    );
    let flood = std::mem::take(&mut *flood.lock().await);
    println!(
        "flood: {sent} Subscribe calls sent ({:.0}/s), {} NOT_FOUND, {} other answers ({:?})",
        sent as f64 / (seconds + 1.5),
        flood.not_found.len(),
        flood.other,
        flood.other_codes,
    );
    flood
        .not_found
        .report("flood Subscribe -> NOT_FOUND", seconds + 1.5);
    Ok(())
}

fn print_measured(label: &str, m: Measured, seconds: f64) {
    println!(
        "{label}: {} switches sent ({} failed or raced)",
        m.sent, m.stats.errors
    );
    m.stats
        .report(&format!("  switch -> event, {label}"), seconds);
}

#[derive(Default)]
struct Flood {
    not_found: Stats,
    other: u64,
    other_codes: Vec<Code>,
}

/// Sends `rate` Subscribe calls a second to fresh missing ids until `stop`;
/// returns how many were sent.
async fn send_flood(
    clients: Vec<crate::shared::Client>,
    rate: u64,
    flood: Arc<Mutex<Flood>>,
    stop: tokio_util::sync::CancellationToken,
) -> u64 {
    let per_slice = (rate as f64 * SLICE.as_secs_f64()).round().max(1.0) as u64;
    let mut ticker = tokio::time::interval(SLICE);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0u64;
    let mut calls = tokio::task::JoinSet::new();
    while !stop.is_cancelled() {
        ticker.tick().await;
        for _ in 0..per_slice {
            let mut c = clients[sent as usize % clients.len()].clone();
            let flood = flood.clone();
            sent += 1;
            calls.spawn(async move {
                let t = Instant::now();
                let answer = c
                    .subscribe(pb::SubscribeRequest {
                        session_id: format!("missing-{}", uuid::Uuid::new_v4().simple()),
                        ..Default::default()
                    })
                    .await;
                let took = t.elapsed().as_micros() as u64;
                let mut f = flood.lock().await;
                match answer {
                    Err(s) if s.code() == Code::NotFound => f.not_found.record(took),
                    Err(s) => {
                        f.other += 1;
                        if !f.other_codes.contains(&s.code()) {
                            f.other_codes.push(s.code());
                        }
                    }
                    Ok(_) => {
                        f.other += 1;
                        if !f.other_codes.contains(&Code::Ok) {
                            f.other_codes.push(Code::Ok);
                        }
                    }
                }
            });
        }
        while calls.try_join_next().is_some() {}
    }
    while calls.join_next().await.is_some() {}
    sent
}

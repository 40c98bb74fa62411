//! `flags`: many sessions whose deadlines fall within one `--spread-ms`
//! window; once they have passed, how late was each flag committed, and were
//! any missed or committed twice?

use std::sync::Arc;
use std::time::{Duration, Instant};

use synckairos::grpc::pb;

use crate::Common;
use crate::shared::{Stats, chess, clients, for_each_id, run_id};

pub async fn run(common: Common, sessions: usize, spread_ms: u64) -> anyhow::Result<()> {
    let clients = clients(&common).await?;
    let run = run_id();
    let ids: Vec<String> = (0..sessions).map(|i| format!("{run}-{i}")).collect();
    // Create everything first, then start them all so the deadlines land in the window.
    let started = Instant::now();
    let ids = Arc::new(ids);
    for_each_id(
        &clients,
        ids.clone(),
        common.concurrency,
        |mut c, _, id| async move { c.create_session(chess(id, 3_600_000)).await.map(|_| ()) },
    )
    .await?;
    let created = started.elapsed();
    println!(
        "created {sessions} sessions in {:.1} s",
        created.as_secs_f64()
    );
    // Arming takes two calls per session: leave it 2.5 creations' time (at
    // least 3 s), so on a slow machine no deadline passes before it is armed.
    let lead_ms = (created.as_millis() as u64 * 5 / 2).max(3_000);
    // Start each with a budget so that its deadline is at T + lead + (i % spread).
    let t_zero = std::time::SystemTime::now() + Duration::from_millis(lead_ms);
    let count = ids.len() as u64;
    for_each_id(
        &clients,
        ids.clone(),
        common.concurrency,
        move |mut c, i, id| async move {
            c.start_session(pb::StartSessionRequest {
                session_id: id.clone(),
                ..Default::default()
            })
            .await?;
            let target = t_zero + Duration::from_millis((i as u64 * spread_ms) / count);
            let left = target
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            let delta = left.as_millis() as i64 - 3_600_000;
            c.adjust_time(pb::AdjustTimeRequest {
                session_id: id,
                participant_id: "a".into(),
                delta_ms: delta,
                ..Default::default()
            })
            .await
            .map(|_| ())
        },
    )
    .await?;
    let setup = t_zero.duration_since(std::time::SystemTime::now());
    println!("started and armed in time: {}", setup.is_ok());
    tokio::time::sleep(setup.unwrap_or_default() + Duration::from_millis(spread_ms + 1_500)).await;
    let mut lateness = Stats::default();
    let (mut misses, mut duplicates) = (0u64, 0u64);
    let mut c = clients[0].clone();
    for id in ids.iter() {
        let s = c
            .get_session(pb::GetSessionRequest {
                session_id: id.clone(),
            })
            .await?
            .into_inner();
        if s.status != pb::Status::Expired as i32 {
            misses += 1;
            continue;
        }
        // create 1, start 2, adjust 3, expired 4: anything more is a duplicate transition.
        if s.version != 4 {
            duplicates += 1;
        }
        let (Some(ended), Some(fired)) = (s.ended_at, s.updated_at) else {
            continue;
        };
        let us = |t: prost_types::Timestamp| t.seconds * 1_000_000 + t.nanos as i64 / 1_000;
        lateness.record((us(fired) - us(ended)).max(0) as u64);
    }
    println!("{sessions} sessions: {misses} misses, {duplicates} duplicates");
    lateness.report("flag lateness (commit time - deadline)", 1.0);
    Ok(())
}

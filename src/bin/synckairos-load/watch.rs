//! `watch`: one WatchSessions over `--sessions` running sessions on the
//! watch replica, switches sent to another at `--rate`, and the time until
//! each SWITCHED arrives on the watch (p50/p99). Then the memory figure: the
//! RSS growth of the watch replica (`--watch-pid`) with that one watch open,
//! beside the RSS growth of a third replica (`--subscribe-target`,
//! `--subscribe-pid`) with one Subscribe stream per session on the same
//! sessions. Both replicas are fresh, read through /proc (same machine).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use synckairos::grpc::pb;
use tokio::sync::Mutex;

use crate::Common;
use crate::shared::{self, Stats, create_running, run_id};

fn rss_kb(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for pid {pid}"))
}

pub struct Targets {
    pub watch_target: String,
    pub watch_pid: u32,
    pub subscribe_target: String,
    pub subscribe_pid: u32,
}

pub async fn run(common: Common, t: Targets, sessions: usize, rate: u64) -> anyhow::Result<()> {
    let clients = shared::clients(&common).await?;
    let watch_clients = shared::clients(&Common {
        target: t.watch_target.clone(),
        connections: 1,
        ..common.clone()
    })
    .await?;
    // A connection carries at most SYNCKAIROS_MAX_STREAMS_PER_CONNECTION
    // (256) streams: 200 a connection.
    let sub_clients = shared::clients(&Common {
        target: t.subscribe_target.clone(),
        connections: sessions / 200 + 1,
        ..common.clone()
    })
    .await?;
    let run = run_id();
    let ids: Vec<String> = (0..sessions).map(|i| format!("{run}-{i}")).collect();
    create_running(&clients, &ids, 24 * 3600 * 1000).await?;
    let index: Arc<HashMap<String, usize>> = Arc::new(
        ids.iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i))
            .collect(),
    );

    // ---- one WatchSessions over every session ----
    let w0 = rss_kb(t.watch_pid)?;
    let opened = Instant::now();
    let mut c = watch_clients[0].clone();
    let mut stream = c
        .watch_sessions(pb::WatchSessionsRequest {
            sessions: ids
                .iter()
                .map(|id| pb::WatchedSession {
                    session_id: id.clone(),
                    ..Default::default()
                })
                .collect(),
            heartbeat_ms: Some(60_000),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut snapshots = 0;
    while snapshots < sessions {
        match stream.message().await? {
            Some(m)
                if m.event
                    .as_ref()
                    .is_some_and(|e| e.r#type == pb::EventType::Snapshot as i32) =>
            {
                snapshots += 1
            }
            Some(_) => {}
            None => anyhow::bail!("the watch ended during its snapshots"),
        }
    }
    println!(
        "one WatchSessions over {sessions} sessions: {snapshots} snapshots in {:.0} ms",
        opened.elapsed().as_secs_f64() * 1e3
    );
    let sent: Arc<Vec<Mutex<HashMap<u64, Instant>>>> =
        Arc::new((0..sessions).map(|_| Mutex::new(HashMap::new())).collect());
    let latencies = Arc::new(Mutex::new(Stats::default()));
    let measuring = Arc::new(AtomicBool::new(false));
    let reader = {
        let (sent, latencies, measuring, index) = (
            sent.clone(),
            latencies.clone(),
            measuring.clone(),
            index.clone(),
        );
        tokio::spawn(async move {
            while let Ok(Some(m)) = stream.message().await {
                let Some(ev) = m.event else { continue };
                if ev.r#type != pb::EventType::Switched as i32 || !measuring.load(Ordering::Relaxed)
                {
                    continue;
                }
                let Some(&i) = index.get(&ev.session_id) else {
                    continue;
                };
                let at = sent[i].lock().await.get(&ev.version).copied();
                if let Some(at) = at {
                    latencies
                        .lock()
                        .await
                        .record(at.elapsed().as_micros() as u64);
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    measuring.store(true, Ordering::Relaxed);
    // Spread over the sessions: each switch on a session of its own.
    let (n, errors) =
        crate::fanout::switch_at_rate(&clients, &ids, &sent, rate, common.seconds, |n| {
            (n * 7919) % sessions
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    measuring.store(false, Ordering::Relaxed);
    let w1 = rss_kb(t.watch_pid)?;
    let mut stats = std::mem::take(&mut *latencies.lock().await);
    stats.errors = errors;
    println!("switches sent: {n} ({errors} failed or raced)");
    stats.report(
        &format!("switch on A -> event on one WatchSessions over {sessions} sessions on B"),
        common.seconds,
    );
    reader.abort();

    // ---- one Subscribe per session, on a third replica ----
    let s0 = rss_kb(t.subscribe_pid)?;
    let opened = Instant::now();
    let mut readers = Vec::new();
    for (k, id) in ids.iter().enumerate() {
        let mut c = sub_clients[k % sub_clients.len()].clone();
        let mut s = c
            .subscribe(pb::SubscribeRequest {
                session_id: id.clone(),
                heartbeat_ms: Some(60_000),
                ..Default::default()
            })
            .await?
            .into_inner();
        s.message().await?;
        readers.push(tokio::spawn(async move {
            while let Ok(Some(_)) = s.message().await {}
        }));
    }
    println!(
        "{sessions} Subscribe streams opened in {:.0} ms",
        opened.elapsed().as_secs_f64() * 1e3
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s1 = rss_kb(t.subscribe_pid)?;
    let (watch_kb, sub_kb) = (w1.saturating_sub(w0), s1.saturating_sub(s0));
    println!(
        "server RSS growth: one WatchSessions over {sessions} sessions {watch_kb} kB (B: {w0} -> {w1} kB, after the latency run); \
         {sessions} Subscribe streams {sub_kb} kB (C: {s0} -> {s1} kB); ratio {:.1}x",
        sub_kb as f64 / (watch_kb.max(1)) as f64
    );
    for r in readers {
        r.abort();
    }
    Ok(())
}

//! `synckairos-load`: the load generator (ghz cannot be installed here).
//! Drives a running SyncKairos over gRPC and prints throughput and latency
//! percentiles; `breakdown` also times Redis and the store directly, in one run.
//!
//! ```text
//! synckairos-load switch    --target 127.0.0.1:50051 --sessions 1000 --concurrency 64 --seconds 10
//! synckairos-load time      --target 127.0.0.1:50051 --concurrency 64 --seconds 10
//! synckairos-load fanout    --target A --subscribe-target B --sessions 100 --streams 1000 --seconds 10
//! synckairos-load flags     --target A,B,C --sessions 10000 --spread-ms 1000
//! synckairos-load breakdown --target 127.0.0.1:50051 --redis redis://127.0.0.1:6379 --seconds 5
//! synckairos-load audit-ingest --redis redis://127.0.0.1:6379 --database postgres://... --rate 20000 --seconds 10
//! ```
//!
//! `audit-ingest` appends synthetic committed events straight to the bucket
//! audit streams at `--rate` (as the commits of many replicas would), while a
//! replica started with REDIS_URL and DATABASE_URL drains them; then it reads
//! the ingest rate and the lag (`inserted_at - occurred_at`) from Postgres.

/// The server's allocator, so that `breakdown` times the store as it runs in service.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use synckairos::grpc::pb::{self, sync_service_client::SyncServiceClient};
use tokio::sync::Mutex;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(about = "Load generator for SyncKairos")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// Server address(es), comma-separated; calls are spread over them.
    #[arg(long, default_value = "127.0.0.1:50051")]
    target: String,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// How long to measure (after a 1 s warm-up).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// gRPC connections per target (calls are spread over them).
    #[arg(long, default_value_t = 4)]
    connections: usize,
}

#[derive(Subcommand)]
enum Mode {
    /// SwitchCycle across N running sessions.
    Switch {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1000)]
        sessions: usize,
    },
    /// GetServerTime: the transport floor.
    Time {
        #[command(flatten)]
        common: Common,
    },
    /// Switch on one replica, time the event's arrival on streams held by another.
    Fanout {
        #[command(flatten)]
        common: Common,
        /// Where the Subscribe streams are opened.
        #[arg(long)]
        subscribe_target: String,
        #[arg(long, default_value_t = 100)]
        sessions: usize,
        /// Streams in all, spread evenly over the sessions.
        #[arg(long, default_value_t = 1000)]
        streams: usize,
        /// Switches per second (all sessions together).
        #[arg(long, default_value_t = 200)]
        rate: u64,
    },
    /// Many sessions whose deadlines fall within one window: how late do the flags fire?
    Flags {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 10_000)]
        sessions: usize,
        /// Deadlines are spread over this window, starting 3 s after creation ends.
        #[arg(long, default_value_t = 1000)]
        spread_ms: u64,
    },
    /// Sustained audit ingest: events appended to the audit streams at a rate, drained by a running replica.
    AuditIngest {
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis: String,
        /// The database the replica writes its audit to.
        #[arg(long)]
        database: String,
        #[arg(long, default_value_t = 20_000)]
        rate: u64,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[arg(long, default_value_t = 16)]
        buckets: u32,
    },
    /// Where the time of one switch goes, one call in flight: Redis PING, the
    /// store's commit called directly, GetServerTime and SwitchCycle over gRPC.
    Breakdown {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis: String,
        /// Run only these rows, comma-separated (a, a2, a', b, c, d, e, b', c', d'); all by default.
        #[arg(long, default_value = "")]
        only: String,
    },
}

fn targets(common: &Common) -> Vec<String> {
    common
        .target
        .split(',')
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect()
}

async fn clients(common: &Common) -> anyhow::Result<Vec<SyncServiceClient<Channel>>> {
    let mut out = Vec::new();
    for t in targets(common) {
        for _ in 0..common.connections.max(1) {
            let ch = tonic::transport::Endpoint::from_shared(format!("http://{t}"))?
                .tcp_nodelay(true)
                .connect()
                .await?;
            out.push(SyncServiceClient::new(ch));
        }
    }
    Ok(out)
}

/// Latencies in microseconds plus an error count.
#[derive(Default)]
struct Stats {
    micros: Vec<u64>,
    errors: u64,
}

impl Stats {
    fn merge(&mut self, other: Stats) {
        self.micros.extend(other.micros);
        self.errors += other.errors;
    }

    fn pct(sorted: &[u64], p: f64) -> f64 {
        if sorted.is_empty() {
            return 0.0;
        }
        let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted[i] as f64 / 1000.0
    }

    /// Prints the figures; returns the median in milliseconds.
    fn report(mut self, label: &str, seconds: f64) -> f64 {
        self.micros.sort_unstable();
        let n = self.micros.len();
        let s = &self.micros;
        println!(
            "{label}: {n} ok, {} errors, {:.0}/s, p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
            self.errors,
            n as f64 / seconds,
            Self::pct(s, 0.50),
            Self::pct(s, 0.90),
            Self::pct(s, 0.99),
            Self::pct(s, 0.999),
            Self::pct(s, 1.0),
        );
        Self::pct(s, 0.50)
    }
}

fn chess(id: String, initial_ms: i64) -> pb::CreateSessionRequest {
    pb::CreateSessionRequest {
        session_id: id,
        mode: pb::Mode::PerParticipant as i32,
        initial_time_ms: initial_ms,
        participants: ["a", "b"]
            .iter()
            .map(|p| pb::ParticipantSpec {
                participant_id: p.to_string(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn run_id() -> String {
    format!("load-{}", uuid::Uuid::new_v4().simple())
}

/// Calls `each(client, index, id)` once for every id, from `workers` tasks
/// sharing one cursor; the first error stops the run.
async fn for_each_id<F, Fut>(
    clients: &[SyncServiceClient<Channel>],
    ids: Arc<Vec<String>>,
    workers: usize,
    each: F,
) -> anyhow::Result<()>
where
    F: Fn(SyncServiceClient<Channel>, usize, String) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let each = Arc::new(each);
    let mut tasks = Vec::new();
    for w in 0..workers.max(1) {
        let c = clients[w % clients.len()].clone();
        let (next, ids, each) = (next.clone(), ids.clone(), each.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(id) = ids.get(i) else {
                    return Ok::<_, tonic::Status>(());
                };
                each(c.clone(), i, id.clone()).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

async fn create_running(
    clients: &[SyncServiceClient<Channel>],
    ids: &[String],
    initial_ms: i64,
) -> anyhow::Result<()> {
    for_each_id(
        clients,
        Arc::new(ids.to_vec()),
        32,
        move |mut c, _, id| async move {
            c.create_session(chess(id.clone(), initial_ms)).await?;
            c.start_session(pb::StartSessionRequest {
                session_id: id,
                ..Default::default()
            })
            .await?;
            Ok(())
        },
    )
    .await
}

/// Runs `call` from `concurrency` workers for a second's warm-up + `seconds`; returns the measured part.
async fn drive<F, Fut>(concurrency: usize, seconds: f64, call: F) -> Stats
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    drive_for(concurrency, Duration::from_secs(1), seconds, call).await
}

async fn drive_for<F, Fut>(concurrency: usize, warm: Duration, seconds: f64, call: F) -> Stats
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let start = Instant::now();
    let end = warm + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut stats = Stats::default();
            let mut n = 0u64;
            loop {
                let t = Instant::now();
                if t - start >= end {
                    return stats;
                }
                let ok = call(w, n).await;
                n += 1;
                if t - start >= warm {
                    if ok {
                        stats.micros.push(t.elapsed().as_micros() as u64);
                    } else {
                        stats.errors += 1;
                    }
                }
            }
        }));
    }
    let mut all = Stats::default();
    for t in tasks {
        if let Ok(s) = t.await {
            all.merge(s);
        }
    }
    all
}

async fn switch_mode(common: Common, sessions: usize) -> anyhow::Result<()> {
    let clients = clients(&common).await?;
    let run = run_id();
    let ids: Vec<String> = (0..sessions).map(|i| format!("{run}-{i}")).collect();
    create_running(&clients, &ids, 24 * 3600 * 1000).await?;
    let ids = Arc::new(ids);
    let concurrency = common.concurrency;
    let stats = drive(concurrency, common.seconds, move |w, n| {
        let mut c = clients[w % clients.len()].clone();
        // Worker w takes sessions w, w+C, w+2C...: no two workers race on one session.
        let per = (ids.len() / concurrency).max(1);
        let id = ids[(w + (n as usize % per) * concurrency) % ids.len()].clone();
        async move {
            c.switch_cycle(pb::SwitchCycleRequest {
                session_id: id,
                ..Default::default()
            })
            .await
            .is_ok()
        }
    })
    .await;
    stats.report(
        &format!(
            "SwitchCycle x{} over {} sessions",
            common.concurrency, sessions
        ),
        common.seconds,
    );
    Ok(())
}

async fn time_mode(common: Common) -> anyhow::Result<()> {
    let clients = clients(&common).await?;
    let stats = drive(common.concurrency, common.seconds, move |w, _| {
        let mut c = clients[w % clients.len()].clone();
        async move { c.get_server_time(pb::GetServerTimeRequest {}).await.is_ok() }
    })
    .await;
    stats.report(
        &format!("GetServerTime x{}", common.concurrency),
        common.seconds,
    );
    Ok(())
}

async fn fanout_mode(
    common: Common,
    subscribe_target: String,
    sessions: usize,
    streams: usize,
    rate: u64,
) -> anyhow::Result<()> {
    let clients = clients(&common).await?;
    let sub_common = Common {
        target: subscribe_target,
        ..common.clone()
    };
    let sub_clients = self::clients(&sub_common).await?;
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
                        .micros
                        .push(at.elapsed().as_micros() as u64);
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

async fn flags_mode(common: Common, sessions: usize, spread_ms: u64) -> anyhow::Result<()> {
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
        lateness.micros.push((us(fired) - us(ended)).max(0) as u64);
    }
    println!("{sessions} sessions: {misses} misses, {duplicates} duplicates");
    lateness.report("flag lateness (commit time - deadline)", 1.0);
    Ok(())
}

/// A two-player sudden-death session for direct store calls.
fn two_players(
    id: synckairos::engine::SessionId,
    initial_ms: i64,
) -> anyhow::Result<synckairos::engine::NewSession> {
    use synckairos::engine::{Mode, NewParticipant, NewSession, ParticipantId};
    let participants = vec![
        NewParticipant::named(ParticipantId::parse("p", "a")?),
        NewParticipant::named(ParticipantId::parse("p", "b")?),
    ];
    Ok(NewSession {
        epoch: "bench".into(),
        initial_time_ms: initial_ms,
        ..NewSession::new(id, Mode::PerParticipant, participants)
    })
}

async fn breakdown_mode(common: Common, redis_url: String, only: String) -> anyhow::Result<()> {
    use synckairos::engine::{self, Command, Request, SessionKey, Tenant};
    use synckairos::store::SessionStore;
    use synckairos::store::redis::{RedisSettings, RedisStore};

    let store_url = redis_url.clone();
    let settings = RedisSettings {
        url: redis_url,
        buckets: 16,
        session_ttl: Duration::from_secs(3600),
        idle_ttl: Duration::from_secs(3600),
        pool_size: 4,
        pool_timeout: Duration::from_millis(250),
        audit: false,
    };
    let store = RedisStore::connect(settings, synckairos::store::clock::Clock::new()).await?;
    let run = run_id();
    let key = SessionKey {
        tenant: Tenant::default_tenant(),
        id: engine::SessionId::parse("id", &format!("{run}-direct"))?,
    };
    let new = two_players(key.id.clone(), 24 * 3600 * 1000)?;
    store
        .create(&key, &|now| engine::create(new.clone(), now))
        .await?;
    let start = Request::new(Command::Start { first: None });
    store.update(&key, synckairos::store::apply(start)).await?;
    // Learn the deadline heads as a replica's timers do, so commits wake
    // other replicas only for an earlier deadline, as they would in service.
    store.claim_due().await?;

    let secs = common.seconds;
    let on = |x: &str| only.is_empty() || only.split(',').any(|o| o == x);
    // Redis's own time per commit, from INFO commandstats around one second of (b) alone.
    let mut info = redis::Client::open(store_url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let switch = {
        let (st, k) = (store.clone(), key.clone());
        move |_: usize, _: u64| {
            let (st, k) = (st.clone(), k.clone());
            async move {
                let req = Request::new(Command::Switch {
                    from: None,
                    next: None,
                });
                st.update(&k, synckairos::store::apply(req)).await.is_ok()
            }
        }
    };
    let before = commit_usec(&mut info).await?;
    drive_for(1, Duration::ZERO, 1.0, switch.clone()).await;
    let after = commit_usec(&mut info).await?;
    let redis_us =
        after.0.saturating_sub(before.0) as f64 / after.1.saturating_sub(before.1).max(1) as f64;

    let one_conn = Common {
        connections: 1,
        ..common.clone()
    };
    let remote = clients(&one_conn).await?;
    let grpc_id = format!("{run}-grpc");
    create_running(&remote, std::slice::from_ref(&grpc_id), 24 * 3600 * 1000).await?;
    let bare = redis::Client::open(store_url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let bare_key = format!("{run}-bare");

    let mut rows: Vec<(&'static str, &'static str, Call)> = Vec::new();
    let st = store.clone();
    rows.push((
        "a",
        "(a) Redis PING through the pool",
        Arc::new(move |_, _| {
            let st = st.clone();
            Box::pin(async move { st.ping().await.is_ok() })
        }),
    ));
    // Two PINGs one after the other: the floor of any commit that needs two
    // round trips (WATCH+GET+TIME, then MULTI..EXEC).
    let st = store.clone();
    rows.push((
        "a2",
        "(a2) two PINGs in a row through the pool",
        Arc::new(move |_, _| {
            let st = st.clone();
            Box::pin(async move { st.ping().await.is_ok() && st.ping().await.is_ok() })
        }),
    ));
    // The commit's two pipelines on a bare connection: no engine, no JSON, no pool.
    rows.push((
        "a'",
        "(a') the commit's Redis command mix, bare client",
        Arc::new(move |_, _| {
            let (mut c, k) = (bare.clone(), bare_key.clone());
            Box::pin(async move {
                let value = vec![b'x'; 600];
                let read: redis::RedisResult<(Option<Vec<u8>>, RedisTime)> = redis::pipe()
                    .cmd("WATCH")
                    .arg(&k)
                    .ignore()
                    .cmd("GET")
                    .arg(&k)
                    .cmd("TIME")
                    .query_async(&mut c)
                    .await;
                let write: redis::RedisResult<Option<redis::Value>> = redis::pipe()
                    .atomic()
                    .cmd("SET")
                    .arg(&k)
                    .arg(&value)
                    .arg("PX")
                    .arg(60_000)
                    .ignore()
                    .cmd("XADD")
                    .arg(format!("{k}:log"))
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(256)
                    .arg("*")
                    .arg("e")
                    .arg(&value)
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(format!("{k}:log"))
                    .arg(60_000)
                    .ignore()
                    .cmd("ZADD")
                    .arg(format!("{k}:z"))
                    .arg(1)
                    .arg(&k)
                    .ignore()
                    .cmd("PUBLISH")
                    .arg(format!("{k}:ch"))
                    .arg(&value)
                    .ignore()
                    .query_async(&mut c)
                    .await;
                read.is_ok() && write.is_ok()
            })
        }),
    ));
    rows.push((
        "b",
        "(b) store commit (switch) direct",
        Arc::new(move |w, n| Box::pin(switch(w, n))),
    ));
    rows.push(("c", "(c) GetServerTime over gRPC", time_call(&remote[0])));
    rows.push((
        "d",
        "(d) SwitchCycle over gRPC",
        switch_call(&remote[0], grpc_id.clone()),
    ));
    let c0 = remote[0].clone();
    rows.push((
        "e",
        "(e) GetSession over gRPC (one Redis GET)",
        Arc::new(move |_, _| {
            let (mut c, id) = (c0.clone(), grpc_id.clone());
            Box::pin(async move {
                c.get_session(pb::GetSessionRequest { session_id: id })
                    .await
                    .is_ok()
            })
        }),
    ));
    // The same service in this process (its own Redis pool, timers and
    // Pub/Sub, on this runtime): (d) minus (d') is what running client,
    // server and Redis as three processes on this machine's cores costs.
    if on("b'") || on("c'") || on("d'") {
        let config = synckairos::config::Config {
            listen: "127.0.0.1:0".parse()?,
            engine: synckairos::config::EngineKind::Redis,
            redis_url: Some(synckairos::config::Secret::new(store_url.clone())),
            ..synckairos::config::Config::default()
        };
        let server = synckairos::startup::Application::build(config).await?;
        let (addr, app) = (server.local_addr().to_string(), server.app().clone());
        tokio::spawn(server.run_until_stopped(std::future::pending()));
        let local = clients(&Common {
            target: addr,
            connections: 1,
            ..common.clone()
        })
        .await?;
        let local_id = format!("{run}-local");
        create_running(&local, std::slice::from_ref(&local_id), 24 * 3600 * 1000).await?;
        let sid = engine::SessionId::parse("id", &local_id)?;
        rows.push((
            "b'",
            "(b') App::switch in this process (app layer + store, no gRPC)",
            Arc::new(move |_, _| {
                let (app, sid) = (app.clone(), sid.clone());
                Box::pin(async move {
                    app.switch(sid, None, None, Default::default())
                        .await
                        .is_ok()
                })
            }),
        ));
        rows.push((
            "c'",
            "(c') GetServerTime over gRPC, server in this process",
            time_call(&local[0]),
        ));
        rows.push((
            "d'",
            "(d') SwitchCycle over gRPC, server in this process",
            switch_call(&local[0], local_id),
        ));
    }
    rows.retain(|(tag, _, _)| on(tag));

    // Interleaved: every row runs for a short slice in each round, so a noisy
    // second on this shared machine weighs on every row alike.
    let rounds = (secs / 0.5).ceil().max(1.0) as usize;
    let slice = secs / rounds as f64;
    let mut stats: Vec<Stats> = rows.iter().map(|_| Stats::default()).collect();
    for (_, _, call) in &rows {
        let call = call.clone();
        drive_for(1, Duration::ZERO, 0.3, move |w, n| call(w, n)).await; // warm-up
    }
    for _ in 0..rounds {
        for (i, (_, _, call)) in rows.iter().enumerate() {
            let call = call.clone();
            stats[i].merge(drive_for(1, Duration::ZERO, slice, move |w, n| call(w, n)).await);
        }
    }
    let mut p50 = std::collections::HashMap::new();
    for ((tag, label, _), st) in rows.iter().zip(stats) {
        p50.insert(*tag, st.report(label, secs));
    }
    println!(
        "Redis's own time per commit (WATCH GET TIME MULTI EXEC, from INFO commandstats): {redis_us:.1} us"
    );
    let get = |k: &str| p50.get(k).copied();
    if let (Some(a), Some(b)) = (get("a"), get("b")) {
        println!(
            "target (b) <= 2.5 x (a): (b)/(a) = {:.2} ({})",
            b / a,
            if b <= 2.5 * a { "met" } else { "missed" }
        );
    }
    if let (Some(a), Some(a2), Some(x)) = (get("a"), get("a2"), get("a'")) {
        println!(
            "floor of a two-round-trip commit: (a2)/(a) = {:.2}, ((a2) + Redis's own time)/(a) = {:.2}, bare mix (a')/(a) = {:.2}",
            a2 / a,
            (a2 + redis_us / 1000.0) / a,
            x / a
        );
    }
    for (c, d) in [("c", "d"), ("c'", "d'")] {
        if let (Some(b), Some(cv), Some(dv)) = (get("b"), get(c), get(d)) {
            let bound = cv + 1.25 * b;
            let verdict = if dv <= bound { "met" } else { "missed" };
            println!("target ({d}) <= ({c}) + 1.25 x (b): {dv:.3} vs {bound:.3} ms ({verdict})");
        }
    }
    Ok(())
}

/// Redis `TIME`: seconds and microseconds.
type RedisTime = (i64, i64);

/// One timed call of a `breakdown` row.
type Call = Arc<
    dyn Fn(usize, u64) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>
        + Send
        + Sync,
>;

fn time_call(client: &SyncServiceClient<Channel>) -> Call {
    let client = client.clone();
    Arc::new(move |_, _| {
        let mut c = client.clone();
        Box::pin(async move { c.get_server_time(pb::GetServerTimeRequest {}).await.is_ok() })
    })
}

fn switch_call(client: &SyncServiceClient<Channel>, id: String) -> Call {
    let client = client.clone();
    Arc::new(move |_, _| {
        let (mut c, id) = (client.clone(), id.clone());
        Box::pin(async move {
            c.switch_cycle(pb::SwitchCycleRequest {
                session_id: id,
                ..Default::default()
            })
            .await
            .is_ok()
        })
    })
}

/// Total microseconds and calls Redis has spent in the commit's commands
/// (EXEC's time includes the commands it ran).
async fn commit_usec(c: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<(u64, u64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(c)
        .await?;
    let (mut usec, mut execs) = (0u64, 0u64);
    for line in info.lines() {
        let Some((name, rest)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        if !["watch", "get", "time", "multi", "exec"].contains(&name) {
            continue;
        }
        let field = |f: &str| {
            rest.split(',')
                .find_map(|kv| kv.strip_prefix(f))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        usec += field("usec=");
        if name == "exec" {
            execs = field("calls=");
        }
    }
    Ok((usec, execs))
}

async fn audit_ingest_mode(
    redis_url: String,
    database: String,
    rate: u64,
    seconds: f64,
    buckets: u32,
) -> anyhow::Result<()> {
    use diesel::QueryableByName;
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    use synckairos::engine::{self, Event, EventKind};

    // One small real session, cloned into every synthetic event.
    let new = two_players(engine::SessionId::parse("id", "ingest")?, 60_000)?;
    let (template, _) = engine::create(new, 0)?;
    let client = redis::Client::open(redis_url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let run = run_id();
    let sessions = 1_000u64;
    let tick = Duration::from_millis(10);
    let started = Instant::now();
    let mut ticker = tokio::time::interval(tick);
    let mut sent = 0u64;
    while started.elapsed().as_secs_f64() < seconds {
        ticker.tick().await;
        let target = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        if target <= sent {
            continue;
        }
        let mut pipe = redis::pipe();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_micros() as i64;
        while sent < target {
            let s = sent % sessions;
            let version = sent / sessions + 1;
            let mut session = template.clone();
            session.id = engine::SessionId::parse("id", &format!("{run}-{s}"))?;
            session.version = version;
            let event = Event {
                version,
                kind: EventKind::Switched,
                participant: None,
                at: now,
                session,
            };
            let key = format!("default/{}", event.session.id);
            let b = crc32fast::hash(key.as_bytes()) % buckets;
            pipe.cmd("XADD")
                .arg(format!("sk:{{{b}}}:audit"))
                .arg("*")
                .arg("tenant")
                .arg("default")
                .arg("e")
                .arg(serde_json::to_vec(&event)?)
                .ignore();
            sent += 1;
        }
        pipe.query_async::<()>(&mut conn).await?;
    }
    let produce_secs = started.elapsed().as_secs_f64();
    println!(
        "appended {sent} events in {produce_secs:.1} s ({:.0}/s)",
        sent as f64 / produce_secs
    );

    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
        #[diesel(sql_type = diesel::sql_types::Double)]
        span_s: f64,
        #[diesel(sql_type = diesel::sql_types::Double)]
        p50_ms: f64,
        #[diesel(sql_type = diesel::sql_types::Double)]
        p99_ms: f64,
        #[diesel(sql_type = diesel::sql_types::Double)]
        max_ms: f64,
    }
    let mut pg = AsyncPgConnection::establish(&database).await?;
    let like = format!("{run}-%");
    let query = diesel::sql_query(
        "SELECT count(*) AS n,
                coalesce(extract(epoch FROM max(inserted_at) - min(occurred_at))::float8, 0) AS span_s,
                coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM inserted_at - occurred_at)) * 1000, 0) AS p50_ms,
                coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM inserted_at - occurred_at)) * 1000, 0) AS p99_ms,
                coalesce(extract(epoch FROM max(inserted_at - occurred_at))::float8 * 1000, 0) AS max_ms
         FROM session_events WHERE session_id LIKE $1",
    )
    .bind::<diesel::sql_types::Text, _>(&like);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let row: Row = query.clone().get_result(&mut pg).await?;
        if row.n as u64 >= sent || Instant::now() > deadline {
            println!(
                "Postgres: {} of {sent} events stored; ingest {:.0} events/s over {:.1} s; lag p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                row.n,
                row.n as f64 / row.span_s.max(1e-9),
                row.span_s,
                row.p50_ms,
                row.p99_ms,
                row.max_ms
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().mode {
        Mode::Switch { common, sessions } => switch_mode(common, sessions).await,
        Mode::Time { common } => time_mode(common).await,
        Mode::Fanout {
            common,
            subscribe_target,
            sessions,
            streams,
            rate,
        } => fanout_mode(common, subscribe_target, sessions, streams, rate).await,
        Mode::Flags {
            common,
            sessions,
            spread_ms,
        } => flags_mode(common, sessions, spread_ms).await,
        Mode::Breakdown {
            common,
            redis,
            only,
        } => breakdown_mode(common, redis, only).await,
        Mode::AuditIngest {
            redis,
            database,
            rate,
            seconds,
            buckets,
        } => audit_ingest_mode(redis, database, rate, seconds, buckets).await,
    }
}

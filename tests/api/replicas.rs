//! Multi-replica tests against a real Redis (SPEC §5, §5b, §7, §8).
//!
//! Every test here runs the redis engine whatever `SYNCKAIROS_TEST_ENGINE`
//! says: one private `redis-server` per test and at least three replicas
//! sharing it — in-process `Application`s, or the real binary as a child
//! process where a replica must die abruptly (SIGKILL).
//!
//! Each test holds exactly ONE isolation guard (the guard is a writer-preferring
//! RwLock: taking a second shared guard while a timing test waits for the
//! exclusive one would deadlock), so replicas here do not go through
//! `helpers::launch`, which takes a guard per server.
//!
//!   CARGO_TARGET_DIR=$HOME/.cache/synckairos-target cargo test --test api replicas -- --nocapture

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use synckairos::config::{Config, EngineKind, Secret};
use synckairos::grpc::pb;
use synckairos::grpc::pb::EventType;
use synckairos::startup::Application;
use synckairos::store::clock::Clock;
use tokio::sync::{Barrier, oneshot};
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::child::ChildReplica;
use crate::helpers::*;
use crate::redis_server::RedisServer;

/// The service's default bucket count (the tests do not change it).
const BUCKETS: u32 = 16;

// ---------- replicas ----------

pub(crate) fn redis_config(url: &str) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        engine: EngineKind::Redis,
        redis_url: Some(Secret::new(url)),
        database_url: None,
        redis_buckets: BUCKETS,
        // Large enough that no stream in these tests ever has to skip to a snapshot.
        stream_buffer: 1_024,
        shutdown_grace: Duration::from_secs(1),
        ..Config::default()
    }
}

/// One in-process replica on 127.0.0.1:0. Dropping it stops it.
pub(crate) struct Replica {
    pub(crate) addr: SocketAddr,
    pub(crate) client: Client,
    stop: Option<oneshot::Sender<()>>,
    _server: JoinHandle<anyhow::Result<()>>,
}

impl Replica {
    pub(crate) async fn start(redis_url: &str) -> Self {
        Self::start_skewed(redis_url, 0).await
    }

    /// A replica whose host clock is off by `offset_micros`.
    async fn start_skewed(redis_url: &str, offset_micros: i64) -> Self {
        Self::launch(redis_config(redis_url), Clock::with_offset(offset_micros)).await
    }

    /// A replica on `config`, reading time from `clock`.
    pub(crate) async fn launch(config: Config, clock: Clock) -> Self {
        let app = Application::build_with_clock(config, clock)
            .await
            .expect("build replica");
        let addr = app.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        let client = connect(Endpoint::from_shared(format!("http://{addr}")).unwrap()).await;
        Replica {
            addr,
            client,
            stop: Some(stop),
            _server: server,
        }
    }

    /// A client on its own HTTP/2 connection.
    pub(crate) async fn new_client(&self) -> Client {
        connect(Endpoint::from_shared(format!("http://{}", self.addr)).unwrap()).await
    }

    async fn health_client(&self) -> HealthClient<Channel> {
        health_client(self.addr).await
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn three_replicas(url: &str) -> (Replica, Replica, Replica) {
    (
        Replica::start(url).await,
        Replica::start(url).await,
        Replica::start(url).await,
    )
}

async fn health_client(addr: SocketAddr) -> HealthClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("health channel");
    HealthClient::new(channel)
}

/// The serving status of the server as a whole ("") and of the service.
async fn health_of(h: &mut HealthClient<Channel>) -> (ServingStatus, ServingStatus) {
    let mut out = [ServingStatus::Unknown; 2];
    for (slot, service) in out.iter_mut().zip(["", "synckairos.v1.SyncService"]) {
        let r = tokio::time::timeout(
            Duration::from_secs(2),
            h.check(HealthCheckRequest {
                service: service.into(),
            }),
        )
        .await
        .expect("health check answered")
        .expect("health check")
        .into_inner();
        *slot = ServingStatus::try_from(r.status).unwrap_or(ServingStatus::Unknown);
    }
    (out[0], out[1])
}

/// Polls until both health statuses are `want`; returns how long that took.
async fn wait_health(
    h: &mut HealthClient<Channel>,
    want: ServingStatus,
    limit: Duration,
    what: &str,
) -> Duration {
    let t0 = Instant::now();
    loop {
        if health_of(h).await == (want, want) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < limit,
            "{what}: health not {want:?} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---------- small helpers ----------

/// Runs `f` and returns its result with how long it took.
async fn timed<T>(f: impl std::future::Future<Output = T>) -> (T, Duration) {
    let t0 = Instant::now();
    let r = f.await;
    (r, t0.elapsed())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

/// A chess clock where white has `white_ms` and black an hour.
fn chess_white(id: &str, white_ms: i64) -> pb::CreateSessionRequest {
    let mut req = chess(id, HOUR_MS);
    req.participants[0].initial_time_ms = Some(white_ms);
    req
}

fn bucket_of(session_id: &str) -> u32 {
    crc32fast::hash(format!("default/{session_id}").as_bytes()) % BUCKETS
}

async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection")
}

async fn redis_time(con: &mut redis::aio::MultiplexedConnection) -> i64 {
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(con).await.expect("TIME");
    secs * 1_000_000 + micros
}

/// Members left in every bucket's deadline and in-flight ZSETs.
async fn deadline_members(con: &mut redis::aio::MultiplexedConnection) -> (usize, usize) {
    let (mut due, mut inflight) = (0, 0);
    for b in 0..BUCKETS {
        let d: usize = redis::cmd("ZCARD")
            .arg(format!("sk:{{{b}}}:deadlines"))
            .query_async(con)
            .await
            .unwrap();
        let i: usize = redis::cmd("ZCARD")
            .arg(format!("sk:{{{b}}}:inflight"))
            .query_async(con)
            .await
            .unwrap();
        due += d;
        inflight += i;
    }
    (due, inflight)
}

/// Subscribes, retrying while the replica answers UNAVAILABLE (e.g. its
/// Pub/Sub connection is still reconnecting) for at most `limit`.
async fn subscribe_retrying(
    client: &mut Client,
    req: pb::SubscribeRequest,
    limit: Duration,
) -> (EventStream, u32) {
    let t0 = Instant::now();
    let mut refused = 0;
    loop {
        match client.subscribe(req.clone()).await {
            Ok(s) => return (s.into_inner(), refused),
            Err(s) if s.code() == Code::Unavailable && t0.elapsed() < limit => {
                refused += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => panic!("Subscribe: {s:?}"),
        }
    }
}

async fn server_time(client: &mut Client) -> i64 {
    micros_of(
        &client
            .get_server_time(pb::GetServerTimeRequest {})
            .await
            .expect("GetServerTime")
            .into_inner()
            .server_time,
    )
}

// ---------- 1. shared state ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_shared_by_every_replica() {
    let _iso = shared_isolation();
    let redis = RedisServer::start();
    let (mut a, mut b, mut c) = three_replicas(&redis.url()).await;

    let created = create_chess(&mut a.client).await;
    let id = created.session_id.clone();
    for (name, r) in [("B", &mut b), ("C", &mut c)] {
        let s = get(&mut r.client, &id).await;
        assert_eq!(
            (s.version, status_of(&s), s.epoch.as_str()),
            (1, pb::Status::Pending, created.epoch.as_str()),
            "{name}"
        );
    }
    // Mutations on C (and an id clash seen from B) are visible on A.
    let started = start(&mut c.client, &id).await;
    assert_eq!(started.version, 2);
    assert_code(
        b.client.create_session(chess(&id, HOUR_MS)).await,
        Code::AlreadyExists,
    );
    let switched = switch(&mut c.client, &id).await;
    assert_eq!(
        (switched.version, switched.active_participant_id.as_str()),
        (3, "black")
    );
    let s = get(&mut a.client, &id).await;
    assert_eq!(
        (s.version, status_of(&s), s.active_participant_id.as_str()),
        (3, pb::Status::Running, "black")
    );
    assert_eq!(find(&s, "white").cycle_count, 1);
    assert_eq!(
        s.deadline_at, switched.deadline_at,
        "every replica derives the same deadline"
    );

    // Delete on B: gone everywhere.
    b.client
        .delete_session(pb::DeleteSessionRequest {
            session_id: id.clone(),
        })
        .await
        .expect("DeleteSession");
    for r in [&mut a, &mut c] {
        assert_code(
            r.client
                .get_session(pb::GetSessionRequest {
                    session_id: id.clone(),
                })
                .await,
            Code::NotFound,
        );
    }
}

// ---------- 2. one stream sees every replica's versions ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_on_one_replica_sees_every_version_made_on_the_others_in_order() {
    let _iso = shared_isolation();
    let redis = RedisServer::start();
    let (mut a, mut b, mut c) = three_replicas(&redis.url()).await;

    let s = create_started(&mut a.client).await;
    let id = s.session_id.clone();
    let mut stream = subscribe(&mut c.client, subscribe_req(&id)).await;
    let snap = next_event(&mut stream).await;
    assert_eq!((event_type(&snap), snap.version), (EventType::Snapshot, 2));

    // 100 switches alternating A / B, then 40 more raced from A and B at once.
    const ALTERNATING: u64 = 100;
    for i in 0..ALTERNATING {
        let r = if i % 2 == 0 { &mut a } else { &mut b };
        assert_eq!(switch(&mut r.client, &id).await.version, 3 + i);
    }
    const RACED: u64 = 40;
    let mut racers = Vec::new();
    for client in [a.client.clone(), b.client.clone()] {
        let id = id.clone();
        let mut client = client;
        racers.push(tokio::spawn(async move {
            for _ in 0..RACED / 2 {
                switch(&mut client, &id).await;
            }
        }));
    }
    for r in racers {
        r.await.unwrap();
    }
    let last = 2 + ALTERNATING + RACED;

    let mut expected = 3;
    while expected <= last {
        let e = next_change(&mut stream).await;
        assert_eq!(
            (e.version, event_type(&e)),
            (expected, EventType::Switched),
            "strict order, no gaps, no duplicates"
        );
        assert_eq!(e.epoch, s.epoch);
        // Alternation: after an odd number of switches black is to move.
        let to_move = if (expected - 2) % 2 == 1 {
            "black"
        } else {
            "white"
        };
        assert_eq!(
            e.session.as_ref().unwrap().active_participant_id,
            to_move,
            "version {expected}"
        );
        expected += 1;
    }
    assert_quiet(&mut stream, Duration::from_millis(200)).await;
    assert_eq!(get(&mut c.client, &id).await.version, last);
}

// ---------- 3. racing conditional switches ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_switches_of_one_turn_from_three_replicas_apply_once() {
    let _iso = shared_isolation();
    let redis = RedisServer::start();
    let (mut a, b, c) = three_replicas(&redis.url()).await;
    let s = create_started(&mut a.client).await;
    let id = s.session_id.clone();

    // Two racers per replica, each on its own connection.
    let mut clients = Vec::new();
    for r in [&a, &b, &c] {
        clients.push(r.new_client().await);
        clients.push(r.new_client().await);
    }
    const ROUNDS: u64 = 10;
    let mut aborted = 0;
    for round in 0..ROUNDS {
        let mover = get(&mut a.client, &id).await.active_participant_id;
        let mut wins = Vec::new();
        for reply in race_conditional_switches(&clients, &id, &mover).await {
            match reply {
                Ok(s) => wins.push(s),
                Err(status) if status.code() == Code::FailedPrecondition => {
                    assert!(
                        status.message().contains("not the active participant"),
                        "{status:?}"
                    );
                }
                Err(status) if status.code() == Code::Aborted => aborted += 1,
                Err(status) => panic!("round {round}: unexpected {status:?}"),
            }
        }
        assert_eq!(
            wins.len(),
            1,
            "round {round}: exactly one of six racers wins"
        );
        assert_eq!(wins[0].version, 3 + round);
        assert_ne!(wins[0].active_participant_id, mover);
    }
    let s = get(&mut a.client, &id).await;
    assert_eq!((s.version, s.cycle_count), (2 + ROUNDS, ROUNDS));
    println!(
        "racing conditional switches: {ROUNDS} rounds x 6 racers, {aborted} ABORTED (conflict retries exhausted)"
    );
}

// ---------- 4. hundreds of unconditioned switches ----------

/// What a storm of unconditioned switches on one session left behind.
struct Storm {
    versions: Vec<u64>,
    failures: Vec<Status>,
}

/// `tasks_per_replica` tasks on each replica, each doing `each` switches of
/// session `id` back to back, all released at once.
async fn switch_storm(
    replicas: &[&Replica],
    id: &str,
    tasks_per_replica: usize,
    each: usize,
) -> Storm {
    let barrier = Arc::new(Barrier::new(replicas.len() * tasks_per_replica));
    let mut tasks = Vec::new();
    for r in replicas {
        for t in 0..tasks_per_replica {
            // Half share the replica's connection, half have their own.
            let mut client = if t % 2 == 0 {
                r.client.clone()
            } else {
                r.new_client().await
            };
            let (id, barrier) = (id.to_owned(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let mut out = Vec::with_capacity(each);
                for _ in 0..each {
                    out.push(
                        client
                            .switch_cycle(switch_req(&id))
                            .await
                            .map(|s| s.into_inner().version),
                    );
                }
                out
            }));
        }
    }
    let t0 = Instant::now();
    let (mut versions, mut failures) = (Vec::new(), Vec::new());
    for t in tasks {
        for r in t.await.unwrap() {
            match r {
                Ok(v) => versions.push(v),
                Err(s) => failures.push(s),
            }
        }
    }
    let total = replicas.len() * tasks_per_replica * each;
    println!(
        "{total} unconditioned switches from {} replicas x {tasks_per_replica} tasks: {:.0} ms ({:.0}/s), {} ABORTED",
        replicas.len(),
        ms(t0.elapsed()),
        total as f64 / t0.elapsed().as_secs_f64(),
        failures.len()
    );
    versions.sort_unstable();
    Storm { versions, failures }
}

/// No lost and no phantom update: the applied switches are exactly the
/// successful replies, each with its own version, and the stream saw them all.
async fn assert_applied_exactly(
    client: &mut Client,
    stream: &mut EventStream,
    id: &str,
    versions: &[u64],
) {
    let n = versions.len() as u64;
    assert_eq!(
        versions,
        (3..=2 + n).collect::<Vec<_>>(),
        "each successful reply has its own version"
    );
    let s = get(client, id).await;
    assert_eq!(
        (s.version, s.cycle_count),
        (2 + n, n),
        "create=1, start=2, then one version per applied switch"
    );
    assert_eq!(s.participants.iter().map(|p| p.cycle_count).sum::<u64>(), n);
    assert_eq!(
        find(&s, "white").cycle_count,
        n.div_ceil(2),
        "strict alternation"
    );
    for expected in 3..=2 + n {
        let e = next_change(stream).await;
        assert_eq!((e.version, event_type(&e)), (expected, EventType::Switched));
    }
    assert_quiet(stream, Duration::from_millis(100)).await;
}

/// 480 unconditioned switches from three replicas at once: lost WATCH races
/// are retried inside the server (per-session turns on each replica, then a
/// jittered retry within RETRY_BUDGET), so every call succeeds exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_concurrent_switches_from_three_replicas_all_succeed() {
    let _iso = shared_isolation();
    let redis = RedisServer::start();
    let (mut a, b, mut c) = three_replicas(&redis.url()).await;
    let s = create_started(&mut a.client).await;
    let id = s.session_id.clone();
    let mut stream = subscribe(&mut c.client, subscribe_req(&id)).await;
    assert_eq!(next_event(&mut stream).await.version, 2);

    let storm = switch_storm(&[&a, &b, &c], &id, 8, 20).await;
    assert!(
        storm.failures.is_empty(),
        "write conflicts must be retried inside the server; got {:?}",
        storm.failures
    );
    assert_eq!(storm.versions.len(), 480);
    assert_applied_exactly(&mut a.client, &mut stream, &id, &storm.versions).await;
}

// ---------- 5. deadlines survive the replica that set them ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_set_through_a_killed_replica_still_fire_exactly_once() {
    let _iso = shared_isolation();
    let redis = RedisServer::start();
    let url = redis.url();
    let (mut doomed, mut via_doomed) = ChildReplica::spawn(&url, None).await;
    let (a, b) = (Replica::start(&url).await, Replica::start(&url).await);
    let _c = Replica::start(&url).await;

    // 20 sessions, white's budget 400..780 ms, created through the doomed replica.
    const SESSIONS: usize = 20;
    let mut ids = Vec::new();
    for i in 0..SESSIONS {
        let id = unique_id("orphan");
        create(&mut via_doomed, chess_white(&id, 400 + 20 * i as i64)).await;
        ids.push(id);
    }
    // Every session is watched from both surviving replicas A and B.
    let mut streams = Vec::new();
    for id in &ids {
        for (name, r) in [("A", &a), ("B", &b)] {
            let mut client = r.client.clone();
            let mut stream = subscribe(&mut client, subscribe_req(id)).await;
            assert_eq!(next_event(&mut stream).await.version, 1);
            streams.push((id.clone(), name, stream));
        }
    }
    let mut deadlines = std::collections::HashMap::new();
    for id in &ids {
        let s = start(&mut via_doomed, id).await;
        deadlines.insert(id.clone(), micros_of(&s.deadline_at));
    }
    doomed.kill();
    let killed_at = wall_micros();
    let earliest = *deadlines.values().min().unwrap();
    assert!(
        killed_at < earliest,
        "the replica died {} ms before the first deadline",
        (earliest - killed_at) / 1_000
    );
    println!(
        "killed the replica that set 20 deadlines {:.0} ms before the first one",
        (earliest - killed_at) as f64 / 1e3
    );

    let mut watchers = Vec::new();
    for (id, name, mut stream) in streams {
        let deadline = deadlines[&id];
        watchers.push(tokio::spawn(async move {
            let started = next_change(&mut stream).await;
            assert_eq!(
                (event_type(&started), started.version),
                (EventType::Started, 2),
                "{id} on {name}"
            );
            let e = within(Duration::from_secs(5), "EXPIRED", next_change(&mut stream)).await;
            let received = wall_micros();
            assert_eq!(
                (event_type(&e), e.version, e.participant_id.as_str()),
                (EventType::Expired, 3, "white"),
                "{id} on {name}"
            );
            let s = e.session.as_ref().unwrap();
            assert_eq!(status_of(s), pb::Status::Expired);
            assert_eq!(
                micros_of(&s.ended_at),
                deadline,
                "ended at the deadline instant"
            );
            // Nothing after EXPIRED: no second firing from another replica.
            assert_quiet(&mut stream, Duration::from_millis(600)).await;
            (micros_of(&e.server_time) - deadline, received - deadline)
        }));
    }
    let (mut commit_late, mut seen_late) = (Vec::new(), Vec::new());
    for w in watchers {
        let (c, r) = w.await.unwrap();
        commit_late.push(c);
        seen_late.push(r);
    }
    let max_commit = *commit_late.iter().max().unwrap();
    let max_seen = *seen_late.iter().max().unwrap();
    let mean_commit = commit_late.iter().sum::<i64>() as f64 / commit_late.len() as f64;
    println!(
        "flag after kill: fired (commit at Redis TIME) mean {:.1} ms / max {:.1} ms after the deadline; \
         seen on the surviving replicas' streams at most {:.1} ms after",
        mean_commit / 1e3,
        max_commit as f64 / 1e3,
        max_seen as f64 / 1e3
    );
    assert!(max_commit >= 0, "never before the deadline");
    // The wake-ups reached the survivors before the kill; the 500 ms poll is only the safety net.
    assert!(
        max_seen < 1_000_000,
        "flagged within 1 s of the deadline even though its replica died"
    );

    let mut client = a.client.clone();
    for id in &ids {
        let s = get(&mut client, id).await;
        assert_eq!((s.version, status_of(&s)), (3, pb::Status::Expired), "{id}");
    }
    let mut con = redis_conn(&url).await;
    assert_eq!(
        deadline_members(&mut con).await,
        (0, 0),
        "every claim was released"
    );
}

// ---------- 6. resume on another replica ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_resumes_on_another_replica_with_exactly_the_missed_events() {
    let _iso = shared_isolation();
    let redis = RedisServer::start();
    let (mut a, mut b, mut c) = three_replicas(&redis.url()).await;
    let s = create_started(&mut a.client).await;
    let id = s.session_id.clone();

    let (last_seen, epoch) = {
        let mut on_a = subscribe(&mut a.client, subscribe_req(&id)).await;
        let snap = next_event(&mut on_a).await;
        assert_eq!((event_type(&snap), snap.version), (EventType::Snapshot, 2));
        for v in 3..=5 {
            switch(&mut a.client, &id).await;
            assert_eq!(next_change(&mut on_a).await.version, v);
        }
        (5, snap.epoch)
    }; // dropped: the client "disconnects"

    // Missed meanwhile, made on B: three switches, an adjustment, a pause.
    for _ in 0..3 {
        switch(&mut b.client, &id).await;
    }
    b.client
        .adjust_time(pb::AdjustTimeRequest {
            session_id: id.clone(),
            participant_id: "black".into(),
            delta_ms: 5_000,
            ..Default::default()
        })
        .await
        .expect("AdjustTime");
    b.client
        .pause_session(pb::PauseSessionRequest {
            session_id: id.clone(),
            ..Default::default()
        })
        .await
        .expect("PauseSession");

    let mut on_c = subscribe(
        &mut c.client,
        pb::SubscribeRequest {
            from_version: Some(last_seen),
            epoch: epoch.clone(),
            strict: true,
            ..subscribe_req(&id)
        },
    )
    .await;
    let expected = [
        (6, EventType::Switched),
        (7, EventType::Switched),
        (8, EventType::Switched),
        (9, EventType::TimeAdjusted),
        (10, EventType::Paused),
    ];
    for (v, t) in expected {
        let e = next_change(&mut on_c).await;
        assert_eq!(
            (e.version, event_type(&e), e.epoch.as_str()),
            (v, t, epoch.as_str()),
            "replayed, not a snapshot"
        );
    }
    assert_quiet(&mut on_c, Duration::from_millis(150)).await;
    // Then live events, from yet another replica.
    a.client
        .resume_session(pb::ResumeSessionRequest {
            session_id: id.clone(),
            ..Default::default()
        })
        .await
        .expect("ResumeSession");
    let e = next_change(&mut on_c).await;
    assert_eq!((e.version, event_type(&e)), (11, EventType::Resumed));

    // A wrong epoch with strict is OUT_OF_RANGE on any replica; without strict it is a snapshot.
    let wrong = pb::SubscribeRequest {
        from_version: Some(5),
        epoch: "not-the-epoch".into(),
        strict: true,
        ..subscribe_req(&id)
    };
    assert_code(b.client.subscribe(wrong.clone()).await, Code::OutOfRange);
    let mut snap = subscribe(
        &mut b.client,
        pb::SubscribeRequest {
            strict: false,
            ..wrong
        },
    )
    .await;
    let e = next_event(&mut snap).await;
    assert_eq!((event_type(&e), e.version), (EventType::Snapshot, 11));
}

// ---------- 7. Redis outage ----------

// Observed (2-core machine, debug build, several runs):
// - while Redis is down every Redis-backed call (Get/Switch/Create) fails with
//   UNAVAILABLE in ~250-270 ms (the pool's 250 ms connection timeout);
//   Subscribe likewise in ~250-290 ms; GetServerTime keeps answering from the
//   replica's clock and last measured offset;
// - health turns NOT_SERVING (overall and for the service) ~1.45-1.5 s after
//   Redis died (1 s probe period + the failing offset measurement and ping);
// - after `restart()` (same port, empty) every replica is SERVING again within
//   ~0-0.45 s, by itself; creates/switches succeed at once on all replicas;
// - the stream opened on B before the outage stayed open while Redis was down
//   and ended with NOT_FOUND once B's Pub/Sub reconnected (its resync found the
//   session gone with Redis's data);
// - a stream opened on B after recovery opened at the first try and saw A's
//   and C's changes; a 300 ms clock started after recovery flagged ~5-15 ms
//   after its deadline (timers recovered too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_fails_fast_and_every_replica_recovers_by_itself() {
    let _iso = shared_isolation();
    let mut redis = RedisServer::start();
    let url = redis.url();
    let (mut a, mut b, mut c) = three_replicas(&url).await;
    let mut health = vec![
        a.health_client().await,
        b.health_client().await,
        c.health_client().await,
    ];
    for h in &mut health {
        assert_eq!(
            health_of(h).await,
            (ServingStatus::Serving, ServingStatus::Serving)
        );
    }

    let before = create_started(&mut a.client).await;
    let old_id = before.session_id.clone();
    let mut old_stream = subscribe(&mut b.client, subscribe_req(&old_id)).await;
    assert_eq!(next_event(&mut old_stream).await.version, 2);
    switch(&mut a.client, &old_id).await;
    assert_eq!(next_change(&mut old_stream).await.version, 3);

    // ---- Redis goes down ----
    tokio::task::block_in_place(|| redis.stop());
    let down = Instant::now();
    // Health is watched meanwhile (polled every 25 ms), from the moment Redis died.
    let watchers: Vec<_> = health
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, mut h)| {
            tokio::spawn(async move {
                wait_health(
                    &mut h,
                    ServingStatus::NotServing,
                    Duration::from_secs(5),
                    &format!("replica {i} down"),
                )
                .await
            })
        })
        .collect();

    // Every call that needs Redis fails fast with UNAVAILABLE, on every replica,
    // both right away (pooled connections are dead) and a little later.
    let mut worst_call = Duration::ZERO;
    let mut worst_subscribe = Duration::ZERO;
    for pass in 0..2 {
        if pass == 1 {
            tokio::time::sleep(Duration::from_millis(1_200)).await;
        }
        for (name, r) in [("A", &mut a), ("B", &mut b), ("C", &mut c)] {
            let (got, t) = timed(r.client.get_session(pb::GetSessionRequest {
                session_id: old_id.clone(),
            }))
            .await;
            assert_code(got, Code::Unavailable);
            worst_call = worst_call.max(t);
            let (got, t) = timed(r.client.switch_cycle(switch_req(&old_id))).await;
            assert_code(got, Code::Unavailable);
            worst_call = worst_call.max(t);
            let (got, t) = timed(r.client.create_session(chess(&unique_id("down"), HOUR_MS))).await;
            assert_code(got, Code::Unavailable);
            worst_call = worst_call.max(t);
            let (got, t) = timed(r.client.subscribe(subscribe_req(&old_id))).await;
            let status = assert_code(got, Code::Unavailable);
            worst_subscribe = worst_subscribe.max(t);
            assert!(
                t < Duration::from_millis(2_500),
                "{name}: Subscribe took {t:?} to fail: {status:?}"
            );
            assert!(
                worst_call < Duration::from_millis(1_500),
                "{name}: a call took {worst_call:?} to fail"
            );
            // GetServerTime needs no Redis: the replica's clock keeps its last offset.
            let (got, t) = timed(r.client.get_server_time(pb::GetServerTimeRequest {})).await;
            let st = micros_of(
                &got.expect("GetServerTime works while Redis is down")
                    .into_inner()
                    .server_time,
            );
            assert!(
                (st - wall_micros()).abs() < 50_000,
                "{name}: server time still right"
            );
            assert!(t < Duration::from_millis(200));
        }
    }
    println!(
        "redis down: calls failed with UNAVAILABLE after at most {:.0} ms (Subscribe {:.0} ms)",
        ms(worst_call),
        ms(worst_subscribe)
    );

    // Health reports NOT_SERVING (overall and for the service) within a few seconds.
    let mut not_serving = Vec::new();
    for w in watchers {
        not_serving.push(ms(w.await.expect("health watcher")));
    }
    println!(
        "health NOT_SERVING on A/B/C {not_serving:.0?} ms after Redis went down (the calls above took {:.0} ms)",
        ms(down.elapsed())
    );

    // ---- Redis comes back, empty (nothing was persisted) ----
    tokio::task::block_in_place(|| redis.restart());
    let up = Instant::now();
    let mut serving = Vec::new();
    for (i, h) in health.iter_mut().enumerate() {
        wait_health(
            h,
            ServingStatus::Serving,
            Duration::from_secs(10),
            &format!("replica {i} up"),
        )
        .await;
        serving.push(ms(up.elapsed()));
    }
    println!("health SERVING again on A/B/C by {serving:.0?} ms after Redis restarted");

    // Calls succeed on every replica, without any restart.
    for r in [&mut a, &mut b, &mut c] {
        let (s, t) = timed(create_chess(&mut r.client)).await;
        assert_eq!(s.version, 1);
        assert!(
            t < Duration::from_secs(1),
            "first create after recovery took {t:?}"
        );
    }
    let new = create_chess(&mut a.client).await;
    let new_id = new.session_id.clone();

    // The stream opened on B before the outage. Observed: it stayed open while
    // Redis was down (nothing to say), and once B's Pub/Sub reconnected, its
    // resync looked up the log, found the session gone (Redis lost it) and ended
    // the stream with NOT_FOUND — the client re-subscribes and learns the
    // session is gone. Accepted alternatives: UNAVAILABLE, a plain end, or
    // (still open) a fresh snapshot / further events.
    let old_outcome = match tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match old_stream.message().await {
                Ok(Some(e)) if event_type(&e) == EventType::Heartbeat => continue,
                other => return other,
            }
        }
    })
    .await
    {
        Ok(Err(status)) => {
            assert!(
                matches!(status.code(), Code::NotFound | Code::Unavailable),
                "old stream ended with {status:?}"
            );
            format!("ended with {:?} ({})", status.code(), status.message())
        }
        Ok(Ok(None)) => "ended (OK)".to_string(),
        Ok(Ok(Some(e))) => panic!("the old session is gone, yet its stream got {e:?}"),
        Err(_) => "still open, silent".to_string(),
    };
    println!("stream opened on B before the outage: {old_outcome}");

    // A stream opened on B after recovery sees what A and C do: B's Pub/Sub
    // reconnected and re-subscribed by itself.
    let (mut on_b, refused) = subscribe_retrying(
        &mut b.client,
        subscribe_req(&new_id),
        Duration::from_secs(5),
    )
    .await;
    println!("Subscribe on B after recovery: {refused} UNAVAILABLE answer(s) before it opened");
    let snap = next_event(&mut on_b).await;
    assert_eq!((event_type(&snap), snap.version), (EventType::Snapshot, 1));
    start(&mut a.client, &new_id).await;
    switch(&mut c.client, &new_id).await;
    switch(&mut a.client, &new_id).await;
    for (v, t) in [
        (2, EventType::Started),
        (3, EventType::Switched),
        (4, EventType::Switched),
    ] {
        let e = next_change(&mut on_b).await;
        assert_eq!((e.version, event_type(&e)), (v, t));
    }
    let got = get(&mut b.client, &new_id).await;
    assert_eq!(got.version, 4);

    // The timers recovered too (wake-up channels re-joined, deadlines re-read).
    let flag_id = unique_id("after-outage");
    create(&mut c.client, chess_white(&flag_id, 300)).await;
    let (mut on_a, _) = subscribe_retrying(
        &mut a.client,
        subscribe_req(&flag_id),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(next_event(&mut on_a).await.version, 1);
    start(&mut b.client, &flag_id).await;
    assert_eq!(next_change(&mut on_a).await.version, 2);
    let e = within(
        Duration::from_secs(2),
        "EXPIRED after recovery",
        next_change(&mut on_a),
    )
    .await;
    assert_eq!((event_type(&e), e.version), (EventType::Expired, 3));
    assert_quiet(&mut on_a, Duration::from_millis(300)).await;
    println!(
        "recovered cluster: a 300 ms clock flagged {:.1} ms after its deadline",
        (micros_of(&e.server_time) - micros_of(&e.session.as_ref().unwrap().ended_at)) as f64 / 1e3
    );
}

// ---------- 8. skewed host clocks ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_replica_clocks_charge_turns_by_redis_time() {
    // Timing-sensitive (±50 ms): no other test's server runs meanwhile. The
    // guard comes with a throwaway server, the only way helpers hand it out.
    let _alone = spawn_app_alone().await;
    let redis = RedisServer::start();
    let url = redis.url();
    let mut a = Replica::start_skewed(&url, 5_000_000).await; // host clock 5 s fast
    let mut b = Replica::start_skewed(&url, -3_000_000).await; // 3 s slow
    let mut c = Replica::start(&url).await;

    let s = create_chess(&mut c.client).await;
    let id = s.session_id.clone();

    // White's turn starts on A and ends on B, 300 ms later.
    let t0 = Instant::now();
    let started = start(&mut a.client, &id).await;
    let t1 = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t2 = Instant::now();
    let switched = switch(&mut b.client, &id).await;
    let t3 = Instant::now();
    let used = find(&switched, "white").used_ms;
    let (lo, hi) = (
        ms(t2 - t1).floor() as i64 - 2,
        ms(t3 - t0).ceil() as i64 + 2,
    );
    println!(
        "turn started on A (+5 s), ended on B (-3 s): white used {used} ms; the test saw {lo}..{hi} ms"
    );
    assert!(
        (lo..=hi).contains(&used),
        "used {used} ms outside what the test measured ({lo}..{hi})"
    );
    assert!(
        (used - 300).abs() <= 50,
        "white used {used} ms, expected ~300 (not 8 s)"
    );
    assert_eq!(find(&switched, "white").remaining_ms, HOUR_MS - used);
    // Timestamps are Redis's, not the skewed hosts'.
    let wall = wall_micros();
    assert!(
        (micros_of(&started.started_at) - (wall - ms(t3 - t0) as i64 * 1_000)).abs() < 100_000,
        "started_at is Redis TIME"
    );
    assert!(
        (micros_of(&switched.server_time) - wall).abs() < 50_000,
        "B's reply server_time is Redis time"
    );

    // And back: black's turn started with that switch on B (committed
    // between t2 and t3) and ends on A ~200 ms later.
    let (sent, replied) = (t2, t3);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t2 = Instant::now();
    let back = switch(&mut a.client, &id).await;
    let t3 = Instant::now();
    let used = find(&back, "black").used_ms;
    let (lo, hi) = (
        ms(t2 - replied).floor() as i64 - 2,
        ms(t3 - sent).ceil() as i64 + 2,
    );
    println!("turn started on B, ended on A: black used {used} ms; the test saw {lo}..{hi} ms");
    assert!(
        (lo..=hi).contains(&used) && (used - 200).abs() <= 50,
        "black used {used} ms, expected ~200"
    );

    // Computed values agree across replicas: read the running clock on all three.
    let mut readings = Vec::new();
    for r in [&mut a, &mut b, &mut c] {
        let s = get(&mut r.client, &id).await;
        readings.push((
            micros_of(&s.server_time),
            find(&s, "white").remaining_ms,
            s.deadline_at,
        ));
    }
    for (st, remaining, deadline) in &readings {
        assert_eq!(deadline, &readings[2].2, "one deadline");
        // remaining = deadline - server_time, whatever the host clock
        let expect = (micros_of(deadline) - st) / 1_000;
        assert!(
            (remaining - expect).abs() <= 1,
            "remaining {remaining} vs deadline - server_time {expect}"
        );
        assert!(
            (st - readings[2].0).abs() < 50_000,
            "server times within 50 ms: {readings:?}"
        );
    }

    // GetServerTime on A and B agrees with C (and with this host) within 50 ms.
    for (name, r) in [("A", &mut a), ("B", &mut b)] {
        let before = server_time(&mut c.client).await;
        let w0 = wall_micros();
        let t = server_time(&mut r.client).await;
        let w1 = wall_micros();
        let after = server_time(&mut c.client).await;
        println!(
            "GetServerTime on {name}: {:+.1} ms from C's bracket, {:+.1} ms from this host",
            (t - (before + after) / 2) as f64 / 1e3,
            (t - (w0 + w1) / 2) as f64 / 1e3
        );
        assert!(
            before - 50_000 <= t && t <= after + 50_000,
            "{name}: {t} not within 50 ms of C's [{before}, {after}]"
        );
        assert!(
            w0 - 50_000 <= t && t <= w1 + 50_000,
            "{name}: server time off this host's clock by more than 50 ms"
        );
    }
}

// ---------- 9. lease recovery ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_claimed_by_a_dead_replica_fires_after_its_lease() {
    let _iso = shared_isolation();
    let redis = RedisServer::start();
    let url = redis.url();
    let mut con = redis_conn(&url).await;

    // Sessions created and started through a replica that then dies
    // (SIGKILL) before any deadline; no replica runs for a while. Three of
    // them share a bucket, so one claim hands several back at once.
    let (mut doomed, mut via_doomed) = ChildReplica::spawn(&url, None).await;
    let expired: Vec<String> = {
        let first = unique_id("lease-over");
        let mut same = vec![first.clone()];
        while same.len() < 3 {
            let id = unique_id("lease-over");
            if bucket_of(&id) == bucket_of(&first) {
                same.push(id);
            }
        }
        same
    };
    let (expired_lease, live_lease) = (expired[0].clone(), unique_id("lease-held"));
    let mut deadlines = std::collections::HashMap::new();
    for id in expired.iter().chain([&live_lease]) {
        create(&mut via_doomed, chess_white(id, 300)).await;
        deadlines.insert(
            id.clone(),
            micros_of(&start(&mut via_doomed, id).await.deadline_at),
        );
    }
    doomed.kill();
    assert!(
        wall_micros() < deadlines.values().copied().min().unwrap(),
        "killed before the deadlines"
    );

    // Every deadline passes with nobody running.
    let last = deadlines.values().copied().max().unwrap();
    tokio::time::sleep(Duration::from_micros(
        (last - wall_micros()).max(0) as u64 + 100_000,
    ))
    .await;

    // Simulate "a replica claimed them, then died": move each member from the
    // due set to the in-flight set, as the claim script does. One lease has
    // run out already (three of them); the other still has 1.5 s to go.
    let now = redis_time(&mut con).await;
    let lease_end = now + 1_500_000;
    let scores = expired
        .iter()
        .map(|id| (id, now - 1_000_000))
        .chain([(&live_lease, lease_end)]);
    for (id, score) in scores {
        let b = bucket_of(id);
        let member = format!("default/{id}");
        let removed: i64 = redis::cmd("ZREM")
            .arg(format!("sk:{{{b}}}:deadlines"))
            .arg(&member)
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(removed, 1, "{id}: its deadline was in bucket {b}'s due set");
        let _: i64 = redis::cmd("ZADD")
            .arg(format!("sk:{{{b}}}:inflight"))
            .arg(score)
            .arg(&member)
            .query_async(&mut con)
            .await
            .unwrap();
    }

    // Fresh replicas come up.
    let (mut a, mut b, _c) = three_replicas(&url).await;
    // Watch the held one before its lease ends: still RUNNING at version 2.
    let mut held = subscribe(&mut b.client, subscribe_req(&live_lease)).await;
    let snap = next_event(&mut held).await;
    assert_eq!(
        (event_type(&snap), snap.version),
        (EventType::Snapshot, 2),
        "not fired while the lease runs"
    );

    // The ones whose lease ran out fire at once, each once.
    let t0 = Instant::now();
    for id in &expired {
        loop {
            let s = get(&mut a.client, id).await;
            if status_of(&s) == pb::Status::Expired {
                assert_eq!(s.version, 3, "{id}");
                assert_eq!(micros_of(&s.ended_at), deadlines[id], "{id}");
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(2),
                "a lease-expired claim ({id}) was not recovered"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    println!(
        "lease already over: fired {:.0} ms after fresh replicas started",
        ms(t0.elapsed())
    );
    let mut replay = subscribe(
        &mut b.client,
        pb::SubscribeRequest {
            from_version: Some(2),
            strict: true,
            ..subscribe_req(&expired_lease)
        },
    )
    .await;
    let e = next_change(&mut replay).await;
    assert_eq!((event_type(&e), e.version), (EventType::Expired, 3));

    // The held one fires once its lease ends — not before, and only once.
    let e = within(
        Duration::from_secs(4),
        "EXPIRED after the lease",
        next_change(&mut held),
    )
    .await;
    assert_eq!(
        (event_type(&e), e.version, e.participant_id.as_str()),
        (EventType::Expired, 3, "white")
    );
    let fired = micros_of(&e.server_time);
    println!(
        "lease held: fired {:.1} ms after the lease ended",
        (fired - lease_end) as f64 / 1e3
    );
    assert!(
        fired >= lease_end,
        "fired {} ms before the lease ended",
        (lease_end - fired) / 1_000
    );
    assert!(
        fired - lease_end < 1_000_000,
        "fired {} ms after the lease ended",
        (fired - lease_end) / 1_000
    );
    assert_eq!(
        micros_of(&e.session.as_ref().unwrap().ended_at),
        deadlines[&live_lease]
    );
    assert_quiet(&mut held, Duration::from_millis(600)).await;
    assert_quiet(&mut replay, Duration::from_millis(100)).await;
    assert_eq!(get(&mut a.client, &live_lease).await.version, 3);
    for id in &expired {
        assert_eq!(get(&mut a.client, id).await.version, 3, "{id} fired once");
    }
    assert_eq!(
        deadline_members(&mut con).await,
        (0, 0),
        "every claim released"
    );
}

// ---------- a release drops only its own claim ----------

/// Claims `key` with `store`, polling claim rounds for at most `limit`.
async fn claim_of(
    store: &synckairos::store::redis::RedisStore,
    key: &synckairos::engine::SessionKey,
    limit: Duration,
) -> Option<synckairos::store::Claim> {
    use synckairos::store::SessionStore;
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if let Some(c) = store
            .claim_due()
            .await
            .unwrap()
            .into_iter()
            .find(|c| c.key == *key)
        {
            return Some(c);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Issue 12: replica A claims K; a switch settles that deadline and moves
/// K's deadline; replica B claims the new one; A's release (its firing found
/// nothing due) must not drop B's claim, or, should B's firing then fail,
/// K never flags. After B's lease ends the deadline is claimed again and K
/// flags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_drops_only_its_own_claim_not_a_newer_one() {
    use synckairos::engine::{
        self, Command, Mode, NewParticipant, NewSession, ParticipantId, Request, SessionId,
        SessionKey, Status, Tenant, TimeoutAction,
    };
    use synckairos::store::redis::RedisStore;
    use synckairos::store::{self, SessionStore};

    let _iso = shared_isolation();
    let redis = RedisServer::start();
    let settings = store_settings(&redis.url(), BUCKETS, 4);
    // Two replicas' stores and no timers: the test claims, releases and fires.
    let a = RedisStore::connect(settings.clone(), Clock::new())
        .await
        .unwrap();
    let b = RedisStore::connect(settings, Clock::new()).await.unwrap();
    let k = SessionKey {
        tenant: Tenant::default_tenant(),
        id: SessionId::parse("id", &unique_id("claimed-twice")).unwrap(),
    };
    // Ten seats: the ~8 cycles this test waits through stay short of a whole
    // unattended round, which would end the session (docs/clock-rules.md).
    let players = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]
        .map(|p| NewParticipant::named(ParticipantId::parse("p", p).unwrap()))
        .to_vec();
    let new = NewSession {
        cycle_time_ms: 1_000,
        timeout_action: Some(TimeoutAction::Skip),
        ..NewSession::new(k.id.clone(), Mode::PerCycle, players)
    };
    a.create(&k, &|now| engine::create(new.clone(), now))
        .await
        .unwrap();
    let start = Request::new(Command::Start { first: None });
    a.update(&k, store::apply(start)).await.unwrap();

    // A claims K's first deadline.
    let claim_a = claim_of(&a, &k, Duration::from_secs(3))
        .await
        .expect("A claims K's first deadline");
    // A switch after it settles that deadline (a skip) and moves K's deadline.
    let switch = Request::new(Command::Switch {
        from: None,
        next: None,
        lag_ms: None,
    });
    let switched = b.update(&k, store::apply(switch)).await.unwrap();
    let moved = engine::deadline(&switched.session).expect("K's clock runs");
    // B claims K's new deadline.
    let claim_b = claim_of(&b, &k, Duration::from_secs(3))
        .await
        .expect("B claims K's new deadline");
    assert_ne!(claim_a.lease, claim_b.lease);
    // A releases its claim (say its firing ran before the new deadline and
    // found nothing due): B's claim stays in flight.
    a.release(&claim_a).await.unwrap();
    let mut con = redis_conn(&redis.url()).await;
    let bucket = a.bucket_of(&k);
    let mut score_in = async |set: &str| -> Option<f64> {
        redis::cmd("ZSCORE")
            .arg(format!("sk:{{{bucket}}}:{set}"))
            .arg(format!("default/{}", k.id))
            .query_async(&mut con)
            .await
            .unwrap()
    };
    assert_eq!(
        score_in("inflight").await,
        Some(claim_b.lease as f64),
        "A's release dropped B's claim: K's deadline is in neither ZSET"
    );

    // B's firing fails and gives up (it never runs here): once B's lease
    // ends, the deadline is claimed again and K flags.
    let again = claim_of(&a, &k, Duration::from_secs(8))
        .await
        .expect("K is claimed again once B's lease ends");
    synckairos::timers::fire(a.as_ref(), &again).await;
    let flagged = a.get(&k).await.unwrap();
    assert_eq!(flagged.status, Status::Running, "a skip keeps K running");
    assert!(
        flagged.version > switched.session.version
            && engine::deadline(&flagged).is_some_and(|d| d > moved),
        "K flagged: version {} -> {}",
        switched.session.version,
        flagged.version
    );
    // That commit settled the claim; the next deadline waits in the due set.
    assert_eq!(score_in("inflight").await, None);
    assert_eq!(
        score_in("deadlines").await,
        engine::deadline(&flagged).map(|d| d as f64)
    );

    // A release of the claim still in flight drops it (a firing that found nothing due).
    let last = claim_of(&b, &k, Duration::from_secs(3))
        .await
        .expect("B claims K's next deadline");
    assert_eq!(score_in("inflight").await, Some(last.lease as f64));
    b.release(&last).await.unwrap();
    assert_eq!(
        score_in("inflight").await,
        None,
        "B's own release drops its claim"
    );
}

// ---------- a cancelled commit leaves no WATCH behind ----------

/// A commit dropped while its WATCH+GET+TIME is in flight (a cancelled RPC)
/// must not hand its connection, WATCH and all, to the next commit: that one
/// would fail its EXEC for a key it never read and have to run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_dropped_midway_does_not_lend_its_watch_to_the_next() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use synckairos::engine::{self, Command, Request};
    use synckairos::store::redis::RedisStore;
    use synckairos::store::{self, SessionStore};

    let _iso = shared_isolation();
    let redis = RedisServer::start();
    let settings = |pool_size| store_settings(&redis.url(), 16, pool_size);
    // One connection, so the next commit gets the very connection the dropped one used.
    let store = RedisStore::connect(settings(1), Clock::new())
        .await
        .unwrap();
    let other_replica = RedisStore::connect(settings(4), Clock::new())
        .await
        .unwrap();
    let (dropped, next) = (store_key("dropped-midway"), store_key("next-commit"));
    for k in [&dropped, &next] {
        let new = two_player_session(k, ["a", "b"], 60_000);
        store
            .create(k, &|now| engine::create(new.clone(), now))
            .await
            .unwrap();
    }
    let start = Request::new(Command::Start { first: None });
    store
        .update(&next, store::apply(start.clone()))
        .await
        .unwrap();
    store.update(&dropped, store::apply(start)).await.unwrap();

    // Poll a switch of `dropped` once (its WATCH+GET+TIME goes out), let Redis
    // answer, then drop it unanswered, as tonic drops a cancelled call.
    let switch = Request::new(Command::Switch {
        from: None,
        next: None,
        lag_ms: None,
    });
    let apply_switch = store::apply(switch.clone());
    // (On a loaded machine a single poll may, rarely, see the whole commit
    // through; that is just a switch, and the next try stops midway.)
    let mut dropped_midway = false;
    for _ in 0..20 {
        let mut cancelled = Box::pin(store.update(&dropped, apply_switch.clone()));
        let polled =
            std::future::poll_fn(|cx| std::task::Poll::Ready(cancelled.as_mut().poll(cx))).await;
        if polled.is_pending() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(cancelled);
            dropped_midway = true;
            break;
        }
    }
    assert!(dropped_midway, "no try stopped while waiting for Redis");

    // Another replica writes the dropped session's key...
    other_replica.update(&dropped, apply_switch).await.unwrap();
    // ...and this replica's next commit, on another session, runs once.
    let plans = Arc::new(AtomicUsize::new(0));
    let counted = plans.clone();
    store
        .update(
            &next,
            Arc::new(move |s, now| {
                counted.fetch_add(1, Ordering::SeqCst);
                engine::apply(s, &switch, now)
            }),
        )
        .await
        .unwrap();
    assert_eq!(
        plans.load(Ordering::SeqCst),
        1,
        "the next commit must not inherit the dropped one's WATCH"
    );
}

// ---------- a burst of timeouts fires in one commit per bucket ----------

/// The timers fire the due deadlines of one bucket together: one WATCH/MULTI
/// for all of them, each session with its own outcome (fired, not due, gone),
/// and a write by someone else to any of them reruns the whole batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_of_one_bucket_fire_in_one_commit_and_a_lost_race_reruns_it() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use synckairos::engine::{
        self, Command, Mode, NewParticipant, NewSession, ParticipantId, Request, RuleError,
        SessionId, SessionKey, Tenant,
    };
    use synckairos::store::redis::RedisStore;
    use synckairos::store::{self, SessionStore, StoreError};

    let _iso = shared_isolation();
    let redis = RedisServer::start();
    let settings = store_settings(&redis.url(), 1, 2);
    // No timers run here: nothing fires the deadlines but the call below.
    let store = RedisStore::connect(settings, Clock::new()).await.unwrap();
    let key = |name: &str| SessionKey {
        tenant: Tenant::default_tenant(),
        id: SessionId::parse("id", name).unwrap(),
    };
    let (due, not_due, missing) = (
        ["due-1", "due-2", "due-3"].map(key),
        key("not-due"),
        key("missing"),
    );
    let start = Request::new(Command::Start { first: None });
    for (k, budget_ms) in due.iter().map(|k| (k, 50)).chain([(&not_due, 60_000)]) {
        let players = ["a", "b"]
            .map(|p| NewParticipant::named(ParticipantId::parse("p", p).unwrap()))
            .to_vec();
        let new = NewSession {
            initial_time_ms: budget_ms,
            ..NewSession::new(k.id.clone(), Mode::PerParticipant, players)
        };
        store
            .create(k, &|now| engine::create(new.clone(), now))
            .await
            .unwrap();
        store.update(k, store::apply(start.clone())).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(150)).await;

    // The first time the batch plans due-2, another client changes that
    // session's key (its TTL): the batch's EXEC must fail and all of it rerun.
    let outsider = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let outsider_state_key = format!("sk:{{0}}:s:default:{}", due[1].id);
    let outsider = std::sync::Mutex::new(outsider);
    let (raced, plans) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let timeout = Request::new(Command::Timeout);
    let fire: store::Change = {
        let (raced, plans, raced_id) = (raced.clone(), plans.clone(), due[1].id.clone());
        Arc::new(move |s: &engine::Session, now| {
            plans.fetch_add(1, Ordering::SeqCst);
            if s.id == raced_id && !raced.swap(true, Ordering::SeqCst) {
                let mut con = outsider.lock().unwrap();
                let changed: i64 = redis::cmd("PEXPIRE")
                    .arg(&outsider_state_key)
                    .arg(7_200_000)
                    .query(&mut *con)
                    .unwrap();
                assert_eq!(changed, 1);
            }
            engine::apply(s, &timeout, now)
        })
    };
    let execs_before = exec_calls(&redis.url()).await;
    // due-1 twice: the second time it has fired already.
    let keys = [
        due[0].clone(),
        not_due.clone(),
        due[1].clone(),
        missing.clone(),
        due[2].clone(),
        due[0].clone(),
    ];
    let results = store.update_many(&keys, fire).await;
    let execs = exec_calls(&redis.url()).await - execs_before;

    assert_eq!(results.len(), keys.len());
    for (i, (k, r)) in keys.iter().zip(&results).enumerate() {
        match r {
            Err(StoreError::Rule(RuleError::NotDue)) if i == 5 => {}
            Ok(applied) if due.contains(k) && i != 5 => {
                assert_eq!(applied.session.status, engine::Status::Expired, "{k}");
                assert_eq!(applied.session.version, 3, "{k}");
            }
            Err(StoreError::Rule(RuleError::NotDue)) if *k == not_due => {}
            Err(StoreError::NotFound) if *k == missing => {}
            other => panic!("{k}: unexpected {other:?}"),
        }
    }
    assert!(raced.load(Ordering::SeqCst));
    // Four sessions planned twice (the lost race, then the rerun), the
    // repeated one once more on its own; the missing one never.
    assert_eq!(plans.load(Ordering::SeqCst), 9);
    assert_eq!(
        execs, 2,
        "one EXEC that lost the race, one that committed all three"
    );
    for k in &due {
        let s = store.get(k).await.unwrap();
        assert_eq!(
            (s.status, s.version),
            (engine::Status::Expired, 3),
            "{k}: fired exactly once"
        );
    }
    assert_eq!(
        store.get(&not_due).await.unwrap().version,
        2,
        "not due: untouched"
    );
}

/// How many EXECs Redis has run.
async fn exec_calls(url: &str) -> u64 {
    crate::redis_server::command_calls(url, "exec").await
}

// ---------- calls on one bucket share commits (group commit) ----------

mod group_commit {
    use std::future::Future;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::task::Poll;

    use synckairos::engine::{self, Applied, Command, Request, SessionKey};
    use synckairos::store::redis::RedisStore;
    use synckairos::store::{self, SessionStore, StoreError};

    use super::*;

    /// A store with one bucket, and `n` started sessions in it.
    async fn started_sessions(redis: &RedisServer, n: usize) -> (Arc<RedisStore>, Vec<SessionKey>) {
        started_sessions_pooled(redis, n, 4).await
    }

    /// `started_sessions` with a pool of `pool_size` connections.
    pub(super) async fn started_sessions_pooled(
        redis: &RedisServer,
        n: usize,
        pool_size: u32,
    ) -> (Arc<RedisStore>, Vec<SessionKey>) {
        let settings = store_settings(&redis.url(), 1, pool_size);
        let store = RedisStore::connect(settings, Clock::new()).await.unwrap();
        let mut keys = Vec::new();
        for i in 0..n {
            let k = store_key(&format!("g-{i}"));
            create_started_in(&*store, &k, ["a", "b"], 60_000).await;
            keys.push(k);
        }
        (store, keys)
    }

    fn switch() -> store::Change {
        store::apply(Request::new(Command::Switch {
            from: None,
            next: None,
            lag_ms: None,
        }))
    }

    /// Polls each future once (each sends its first request or queues) with
    /// Redis frozen, so that none can finish its commit meanwhile, however
    /// the threads of a busy machine are scheduled.
    async fn poll_once_frozen<F: Future + Unpin>(redis: &RedisServer, futures: &mut [F])
    where
        F::Output: std::fmt::Debug,
    {
        redis.pause();
        for f in futures.iter_mut() {
            let polled =
                std::future::poll_fn(|cx| Poll::Ready(std::pin::Pin::new(&mut *f).poll(cx))).await;
            assert!(
                polled.is_pending(),
                "a commit answered while Redis was frozen: {polled:?}"
            );
        }
    }

    /// `change` on every session at once; the results and the EXECs it took.
    async fn update_all(
        redis: &RedisServer,
        store: &RedisStore,
        keys: &[SessionKey],
        change: store::Change,
    ) -> (Vec<Result<Applied, StoreError>>, u64) {
        let before = exec_calls(&redis.url()).await;
        let mut calls: Vec<_> = keys
            .iter()
            .map(|k| Box::pin(store.update(k, change.clone())))
            .collect();
        poll_once_frozen(redis, &mut calls).await;
        redis.resume();
        let results = futures_util::future::join_all(calls).await;
        (results, exec_calls(&redis.url()).await - before)
    }

    /// Each session answered and stored version 3: switched exactly once since its start.
    async fn assert_switched_once(
        store: &RedisStore,
        keys: &[SessionKey],
        results: Vec<Result<Applied, StoreError>>,
    ) {
        for (k, r) in keys.iter().zip(results) {
            let applied = r.unwrap();
            assert_eq!(
                (applied.session.id.as_str(), applied.session.version),
                (k.id.as_str(), 3)
            );
            assert_eq!(
                store.get(k).await.unwrap().version,
                3,
                "{k}: switched exactly once"
            );
        }
    }

    /// The first switch of the bucket commits alone; the seven that arrive
    /// while it is in flight wait, then share one commit, each with its own
    /// result.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn switches_arriving_during_a_commit_of_their_bucket_share_the_next_one() {
        let _iso = shared_isolation();
        let redis = RedisServer::start();
        let (store, keys) = started_sessions(&redis, 8).await;
        let (results, execs) = update_all(&redis, &store, &keys, switch()).await;
        assert_eq!(
            execs, 2,
            "one commit alone, then one for the seven queued behind it"
        );
        assert_switched_once(&store, &keys, results).await;
    }

    /// When another writer changes one session of a group commit, the group
    /// is not rerun as a whole: each of its changes runs again on its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_that_loses_a_race_commits_each_change_on_its_own() {
        let _iso = shared_isolation();
        let redis = RedisServer::start();
        let (store, keys) = started_sessions(&redis, 4).await;
        let outsider = std::sync::Mutex::new(
            redis::Client::open(redis.url())
                .unwrap()
                .get_connection()
                .unwrap(),
        );
        let raced_key = format!("sk:{{0}}:s:default:{}", keys[2].id);
        let (raced, plans) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        let change: store::Change = {
            let (raced, plans, raced_id, switch) =
                (raced.clone(), plans.clone(), keys[2].id.clone(), switch());
            Arc::new(move |s: &engine::Session, now| {
                plans.fetch_add(1, Ordering::SeqCst);
                if s.id == raced_id && !raced.swap(true, Ordering::SeqCst) {
                    let changed: i64 = redis::cmd("PEXPIRE")
                        .arg(&raced_key)
                        .arg(7_200_000)
                        .query(&mut *outsider.lock().unwrap())
                        .unwrap();
                    assert_eq!(changed, 1);
                }
                switch(s, now)
            })
        };
        let (results, execs) = update_all(&redis, &store, &keys, change).await;
        assert!(raced.load(Ordering::SeqCst));
        // keys[0] alone; keys[1..] as a group that loses; then three on their own.
        assert_eq!(execs, 5, "lead, lost group, three single commits");
        assert_eq!(plans.load(Ordering::SeqCst), 1 + 3 + 3);
        assert_switched_once(&store, &keys, results).await;
    }

    /// While Redis does not answer, a call queued behind a commit that times
    /// out fails with it, instead of waiting out a timeout of its own after.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_queued_behind_a_commit_that_times_out_fail_with_it() {
        let _iso = shared_isolation();
        let redis = RedisServer::start();
        let (store, keys) = started_sessions(&redis, 2).await;
        let mut calls: Vec<_> = keys
            .iter()
            .map(|k| {
                let store = store.clone();
                Box::pin(async move { (store.update(k, switch()).await, Instant::now()) })
            })
            .collect();
        poll_once_frozen(&redis, &mut calls).await;
        let t0 = Instant::now();
        let done = futures_util::future::join_all(calls).await;
        redis.resume();
        for (r, _) in &done {
            assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
        }
        let (lead, queued) = (done[0].1 - t0, done[1].1 - t0);
        // The lead waits out a timeout (redis-rs's 500 ms response timeout,
        // or ours); the queued call must not add a timeout of its own.
        assert!(
            lead >= Duration::from_millis(400),
            "the lead failed after {lead:?}"
        );
        assert!(
            queued < lead + Duration::from_millis(300),
            "the queued call failed {queued:?} after the start, the lead {lead:?}"
        );
    }

    /// A queued call dropped before its group starts is not committed; a
    /// leading call dropped midway still hands the queue on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_that_give_up_neither_commit_late_nor_strand_the_queue() {
        let _iso = shared_isolation();
        let redis = RedisServer::start();
        let (store, keys) = started_sessions(&redis, 4).await;

        // keys[0] leads, keys[1] and keys[2] queue; keys[2]'s caller gives up.
        let mut calls: Vec<_> = keys[..3]
            .iter()
            .map(|k| Box::pin(store.update(k, switch())))
            .collect();
        poll_once_frozen(&redis, &mut calls).await;
        drop(calls.pop());
        redis.resume();
        for r in futures_util::future::join_all(calls).await {
            assert_eq!(r.unwrap().session.version, 3);
        }
        assert_eq!(
            store.get(&keys[2]).await.unwrap().version,
            2,
            "given up before its commit: not switched"
        );
        // The group's task lets go of the bucket just after it answers.
        tokio::time::sleep(Duration::from_millis(50)).await;

        // keys[3] leads and is dropped midway; keys[2], queued behind it, still commits.
        let mut calls: Vec<_> = [&keys[3], &keys[2]]
            .into_iter()
            .map(|k| Box::pin(store.update(k, switch())))
            .collect();
        poll_once_frozen(&redis, &mut calls).await;
        let lead = calls.remove(0);
        drop(lead);
        redis.resume();
        let queued = calls.pop().unwrap();
        let applied = tokio::time::timeout(Duration::from_secs(5), queued)
            .await
            .expect("the queue was handed on")
            .unwrap();
        assert_eq!(applied.session.version, 3);
    }
}

// ---------- a pooled connection that died while idle ----------

/// Redis (or a proxy) may close connections that sit idle in the pool. The
/// next call must not fail for it: a read that fails at once on such a
/// connection runs again on a fresh one (it wrote nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_died_idle_in_the_pool_cost_no_call_an_error() {
    use synckairos::engine::{Command, Request};
    use synckairos::store::{self, SessionStore};

    let _iso = shared_isolation();
    let redis = RedisServer::start();
    // One connection: the dead one must go back before a fresh one is made.
    let (store, keys) = group_commit::started_sessions_pooled(&redis, 2, 1).await;
    let mut outsider = redis_conn(&redis.url()).await;
    let mut kill_store_connections = async || {
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .arg("SKIPME")
            .arg("yes")
            .query_async(&mut outsider)
            .await
            .unwrap();
        assert!(killed >= 1, "the store's pooled connections were closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for k in &keys {
        kill_store_connections().await;
        let applied = store
            .update(
                k,
                store::apply(Request::new(Command::Switch {
                    from: None,
                    next: None,
                    lag_ms: None,
                })),
            )
            .await;
        assert_eq!(applied.unwrap().session.version, 3, "{k}: a commit");
        kill_store_connections().await;
        assert_eq!(store.get(k).await.unwrap().version, 3, "{k}: a read");
        kill_store_connections().await;
        match store.events_after(k, 2).await.unwrap() {
            store::Replay::Events(events) => assert_eq!(
                events.iter().map(|e| e.version).collect::<Vec<_>>(),
                [3],
                "{k}"
            ),
            other => panic!("{k}: a replay: {other:?}"),
        }
        kill_store_connections().await;
        store.ping().await.expect("health's ping");
    }
}

/// Replicas that disagree on `SYNCKAIROS_REDIS_BUCKETS` would read and write
/// different keys for one session: the first replica records its count in
/// Redis, and one with another count refuses to start, naming the variable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_another_bucket_count_refuses_to_start() {
    use synckairos::store::SessionStore;
    use synckairos::store::redis::RedisStore;
    let redis = RedisServer::start();
    let settings = |buckets| store_settings(&redis.url(), buckets, 2);
    let first = RedisStore::connect(settings(16), Clock::new())
        .await
        .unwrap();
    let same = RedisStore::connect(settings(16), Clock::new())
        .await
        .unwrap();
    same.ping()
        .await
        .expect("a replica with the same count serves");
    let err = match RedisStore::connect(settings(8), Clock::new()).await {
        Ok(_) => panic!("a replica with 8 buckets started beside one with 16"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("SYNCKAIROS_REDIS_BUCKETS is 8 here but 16"),
        "{err}"
    );
    first.ping().await.expect("the first replica still serves");
}

/// A Redis store's settings for the store-level tests: one-hour TTLs, a
/// 500 ms pool timeout, no audit.
pub(crate) fn store_settings(
    url: &str,
    buckets: u32,
    pool_size: u32,
) -> synckairos::store::redis::RedisSettings {
    synckairos::store::redis::RedisSettings {
        url: url.to_owned(),
        ca: None,
        buckets,
        session_ttl: Duration::from_secs(3600),
        idle_ttl: Duration::from_secs(3600),
        pool_size,
        pool_timeout: Duration::from_millis(500),
        audit: false,
    }
}

//! The PostgreSQL audit trail end to end (SPEC §8 "Audit", §6 ListSessionEvents).
//!
//! Every committed version of every session must reach `session_events`
//! exactly once — on the memory engine (channel) and on the redis engine
//! (bucket audit streams + consumer group `synckairos-audit`), with two
//! replicas writing concurrently, when a replica is SIGKILLed holding
//! unacknowledged entries (the survivor takes them over with XAUTOCLAIM after
//! 15 s idle), and when Postgres refuses connections for a while (the clock
//! does not notice; the backlog drains afterwards). ListSessionEvents pages the
//! history in order, each version once, even after the session was deleted.
//!
//! Each test has its own database (`TestDb`) and, on the redis engine, its own
//! redis-server. Each test holds exactly ONE isolation guard (see replicas.rs:
//! a second shared guard could deadlock against a waiting exclusive test), so
//! servers here are started directly rather than through `helpers::launch`.
//!
//!   CARGO_TARGET_DIR=$HOME/.cache/synckairos-target cargo test --test api audit -- --nocapture

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use synckairos::audit::writer::AuditLag;
use synckairos::config::{Config, EngineKind, Secret};
use synckairos::grpc::pb;
use synckairos::grpc::pb::EventType;
use synckairos::startup::Application;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Endpoint;
use tonic::{Code, Status};

use crate::child::ChildReplica;
use crate::helpers::*;
use crate::pg::TestDb;
use crate::redis_server::RedisServer;

/// The service's default bucket count (the tests do not change it).
const BUCKETS: u32 = 16;
/// How long the writer may take to catch up when nothing is in its way.
const CATCH_UP: Duration = Duration::from_secs(10);
/// The service's consumer group on the audit streams.
const GROUP: &str = "synckairos-audit";

// ---------- servers ----------

fn config(engine: EngineKind, redis_url: Option<&str>, database_url: Option<&str>) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        engine,
        redis_url: redis_url.map(Secret::new),
        database_url: database_url.map(Secret::new),
        redis_buckets: BUCKETS,
        shutdown_grace: Duration::from_secs(1),
        // The outage tests switch as fast as they can from one caller for
        // seconds (thousands a second): they measure the clock, not the limit.
        mutation_rate: None,
        ..Config::default()
    }
}

fn memory_config(db: &TestDb) -> Config {
    config(EngineKind::Memory, None, Some(&db.url()))
}

fn redis_config(redis: &RedisServer, db: &TestDb) -> Config {
    config(EngineKind::Redis, Some(&redis.url()), Some(&db.url()))
}

/// One in-process server (replica). Dropping it stops it.
struct Server {
    addr: SocketAddr,
    client: Client,
    lag: Arc<AuditLag>,
    stop: Option<oneshot::Sender<()>>,
    _server: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    async fn start(config: Config) -> Self {
        let app = Application::build(config).await.expect("build application");
        let addr = app.local_addr();
        let lag = app.audit_lag();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        let client = connect(Endpoint::from_shared(format!("http://{addr}")).unwrap()).await;
        Server {
            addr,
            client,
            lag,
            stop: Some(stop),
            _server: server,
        }
    }

    /// A client on its own HTTP/2 connection.
    async fn new_client(&self) -> Client {
        connect(Endpoint::from_shared(format!("http://{}", self.addr)).unwrap()).await
    }

    fn inserted(&self) -> u64 {
        self.lag.inserted.load(Ordering::Relaxed)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The writers' own counts of new rows reach `total` (they are bumped just after the commit).
async fn wait_inserted(servers: &[&Server], total: u64) {
    let t0 = Instant::now();
    loop {
        let sum: u64 = servers.iter().map(|s| s.inserted()).sum();
        if sum == total {
            return;
        }
        assert!(
            sum < total,
            "the writers counted {sum} new rows for {total} versions"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "the writers counted {sum} new rows for {total} versions"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------- Postgres ----------

/// `db.sql` runs psql (blocking): keep it off the runtime's worker.
fn sql(db: &TestDb, q: &str) -> String {
    tokio::task::block_in_place(|| db.sql(q))
}

fn refuse(db: &TestDb) {
    tokio::task::block_in_place(|| db.refuse_connections());
}

fn allow(db: &TestDb) {
    tokio::task::block_in_place(|| db.allow_connections());
}

/// Per session id: (rows, distinct versions, min version, max version, distinct epochs).
type Summary = HashMap<String, (u64, u64, u64, u64, u64)>;

/// What `session_events` holds, or None while the migrations have not run yet.
fn audit_summary(db: &TestDb) -> Option<Summary> {
    if sql(
        db,
        "SELECT to_regclass('public.session_events') IS NOT NULL",
    ) != "t"
    {
        return None;
    }
    let out = sql(
        db,
        "SELECT session_id, count(*), count(DISTINCT version), min(version), max(version), count(DISTINCT epoch) \
         FROM session_events GROUP BY session_id",
    );
    Some(
        out.lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split('|').collect();
                let n = |i: usize| {
                    f[i].parse::<u64>()
                        .unwrap_or_else(|_| panic!("bad psql line {l:?}"))
                };
                (f[0].to_owned(), (n(1), n(2), n(3), n(4), n(5)))
            })
            .collect(),
    )
}

/// Why `summary` is not exactly versions 1..=v of every expected session, once each.
fn mismatch(summary: &Summary, expected: &HashMap<String, u64>) -> Option<String> {
    let mut problems = Vec::new();
    for (id, &v) in expected {
        match summary.get(id) {
            None => problems.push(format!("{id}: no rows (want 1..={v})")),
            Some(&got) if got != (v, v, 1, v, 1) => problems.push(format!(
                "{id}: (rows, distinct, min, max, epochs) = {got:?}, want ({v}, {v}, 1, {v}, 1)"
            )),
            Some(_) => {}
        }
    }
    for id in summary.keys().filter(|id| !expected.contains_key(*id)) {
        problems.push(format!("{id}: rows for a session this test did not make"));
    }
    if problems.is_empty() {
        return None;
    }
    let n = problems.len();
    problems.truncate(5);
    Some(format!("{n} sessions wrong, e.g. {problems:#?}"))
}

/// Polls until `session_events` holds exactly versions 1..=v of every
/// expected session (no gap, no duplicate, nothing else); returns how long it took.
async fn wait_audit(
    db: &TestDb,
    expected: &HashMap<String, u64>,
    limit: Duration,
    what: &str,
) -> Duration {
    let t0 = Instant::now();
    loop {
        let why = match audit_summary(db) {
            None => "session_events does not exist yet (migrations not run)".to_owned(),
            Some(s) => match mismatch(&s, expected) {
                None => return t0.elapsed(),
                Some(why) => why,
            },
        };
        assert!(
            t0.elapsed() < limit,
            "{what}: the audit did not catch up within {limit:?}: {why}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The table-wide exactly-once figures, the snapshots' versions and the one CREATED per session.
fn assert_exactly_once(db: &TestDb, expected: &HashMap<String, u64>) {
    let total: u64 = expected.values().sum();
    let ids = expected
        .keys()
        .map(|id| format!("'{id}'"))
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(
        sql(
            db,
            "SELECT count(*), count(DISTINCT (session_id, version)) FROM session_events"
        ),
        format!("{total}|{total}"),
        "every committed version exactly once"
    );
    assert_eq!(
        sql(
            db,
            "SELECT count(*) FROM session_events WHERE (snapshot->>'version')::bigint <> version OR snapshot->>'id' <> session_id"
        ),
        "0",
        "each snapshot is the session at its event's version"
    );
    assert_eq!(
        sql(
            db,
            &format!(
                "SELECT count(*) FROM session_events WHERE event_type = 'CREATED' AND version = 1 AND session_id IN ({ids})"
            )
        ),
        expected.len().to_string(),
        "version 1 of every session is its CREATED event"
    );
}

/// `sessions`: one row per session, with the current status and last version.
fn assert_sessions_rows(db: &TestDb, current: &HashMap<String, (String, u64)>) {
    let out = sql(
        db,
        "SELECT session_id, status, last_version, deleted_at IS NOT NULL FROM sessions",
    );
    let rows: HashMap<String, (String, u64)> = out
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            assert_eq!(f[3], "f", "{l}: not deleted");
            (f[0].to_owned(), (f[1].to_owned(), f[2].parse().unwrap()))
        })
        .collect();
    assert_eq!(rows.len(), current.len(), "one sessions row per session");
    for (id, want) in current {
        assert_eq!(rows.get(id), Some(want), "sessions row of {id}");
    }
}

/// The audit's name for a session status ("RUNNING").
fn status_name(s: &pb::Session) -> String {
    status_of(s)
        .as_str_name()
        .trim_start_matches("STATUS_")
        .to_owned()
}

/// The final version (and status) of every session, as the store has it.
async fn current(
    client: &mut Client,
    ids: &[String],
) -> (HashMap<String, u64>, HashMap<String, (String, u64)>) {
    let (mut versions, mut rows) = (HashMap::new(), HashMap::new());
    for id in ids {
        let s = get(client, id).await;
        versions.insert(id.clone(), s.version);
        rows.insert(id.clone(), (status_name(&s), s.version));
    }
    (versions, rows)
}

// ---------- Redis ----------

async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection")
}

fn audit_stream(b: u32) -> String {
    format!("sk:{{{b}}}:audit")
}

/// XLEN of every bucket's audit stream, summed.
async fn audit_backlog(con: &mut redis::aio::MultiplexedConnection) -> u64 {
    let mut total = 0;
    for b in 0..BUCKETS {
        let n: u64 = redis::cmd("XLEN")
            .arg(audit_stream(b))
            .query_async(con)
            .await
            .expect("XLEN");
        total += n;
    }
    total
}

/// Pending (read, unacknowledged) entries per consumer of the audit group, over every bucket.
async fn pending_by_consumer(
    con: &mut redis::aio::MultiplexedConnection,
) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for b in 0..BUCKETS {
        let reply: redis::RedisResult<redis::streams::StreamInfoConsumersReply> =
            redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(audit_stream(b))
                .arg(GROUP)
                .query_async(con)
                .await;
        // No stream or no group yet: nobody has read anything there.
        for c in reply.map(|r| r.consumers).unwrap_or_default() {
            *out.entry(c.name).or_default() += c.pending;
        }
    }
    out
}

/// Polls until the audit streams are empty and nothing is pending (acks follow inserts closely).
async fn wait_streams_empty(con: &mut redis::aio::MultiplexedConnection, what: &str) {
    let t0 = Instant::now();
    loop {
        let (len, pending) = (audit_backlog(con).await, pending_by_consumer(con).await);
        if len == 0 && pending.values().all(|&p| p == 0) {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{what}: audit streams still hold {len} entries, pending {pending:?}, after everything was in Postgres"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------- load ----------

#[derive(Default)]
struct LoadReport {
    ok: u64,
    failed: Vec<Status>,
    latencies: Vec<Duration>,
}

/// A task switching `ids` round-robin (starting at its own offset) until
/// `stop` is set or `limit` calls are made; with `stop_on_error` it ends at
/// the first failure (its replica died).
fn switcher(
    mut client: Client,
    ids: Arc<Vec<String>>,
    offset: usize,
    stop: Arc<AtomicBool>,
    limit: Option<usize>,
    stop_on_error: bool,
) -> JoinHandle<LoadReport> {
    tokio::spawn(async move {
        let mut r = LoadReport::default();
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) && limit.is_none_or(|l| i < l) {
            let id = &ids[(offset + i) % ids.len()];
            i += 1;
            let t0 = Instant::now();
            let res = client.switch_cycle(switch_req(id)).await;
            r.latencies.push(t0.elapsed());
            match res {
                Ok(_) => r.ok += 1,
                Err(s) => {
                    r.failed.push(s);
                    if stop_on_error {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        r
    })
}

async fn join_all(tasks: Vec<JoinHandle<LoadReport>>) -> LoadReport {
    let mut all = LoadReport::default();
    for t in tasks {
        let r = t.await.expect("load task");
        all.ok += r.ok;
        all.failed.extend(r.failed);
        all.latencies.extend(r.latencies);
    }
    all
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

/// (p50, p99, max) in ms.
fn percentiles(lat: &[Duration]) -> (f64, f64, f64) {
    let mut v = lat.to_vec();
    v.sort_unstable();
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let at = |q: f64| ms(v[((v.len() - 1) as f64 * q).round() as usize]);
    (at(0.5), at(0.99), at(1.0))
}

/// `n` started one-hour chess sessions, created alternately through `clients`.
async fn started_sessions(clients: &mut [&mut Client], n: usize, prefix: &str) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let c = &mut *clients[i % clients.len()];
        let s = create(c, chess(&unique_id(prefix), HOUR_MS)).await;
        start(c, &s.session_id).await;
        ids.push(s.session_id);
    }
    ids
}

fn list_req(
    id: &str,
    page_size: u32,
    page_token: &str,
    after_version: Option<u64>,
) -> pb::ListSessionEventsRequest {
    pb::ListSessionEventsRequest {
        session_id: id.into(),
        page_size,
        page_token: page_token.into(),
        after_version,
    }
}

async fn list(
    client: &mut Client,
    req: pb::ListSessionEventsRequest,
) -> pb::ListSessionEventsResponse {
    client
        .list_session_events(req)
        .await
        .expect("ListSessionEvents")
        .into_inner()
}

fn versions_of(r: &pb::ListSessionEventsResponse) -> Vec<u64> {
    r.events.iter().map(|e| e.version).collect()
}

// ---------- 1. memory engine: every version exactly once ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_engine_every_committed_version_reaches_postgres_exactly_once() {
    let _iso = shared_isolation();
    let db = TestDb::create();
    let mut app = Server::start(memory_config(&db)).await;

    // 12 sessions: 10 started and switched by 4 concurrent tasks, then
    // some paused, completed, cancelled; 2 never started (PENDING).
    let ids = started_sessions(&mut [&mut app.client], 10, "audit-mem").await;
    let mut all = ids.clone();
    for _ in 0..2 {
        all.push(create_chess(&mut app.client).await.session_id);
    }
    let ids = Arc::new(ids);
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..4 {
        tasks.push(switcher(
            app.new_client().await,
            ids.clone(),
            t * 3,
            stop.clone(),
            Some(75),
            false,
        ));
    }
    let load = join_all(tasks).await;
    assert!(load.failed.is_empty(), "switches failed: {:?}", load.failed);
    assert_eq!(load.ok, 300);
    let c = &mut app.client;
    c.pause_session(pb::PauseSessionRequest {
        session_id: ids[0].clone(),
        ..Default::default()
    })
    .await
    .expect("pause");
    c.complete_session(pb::CompleteSessionRequest {
        session_id: ids[1].clone(),
        ..Default::default()
    })
    .await
    .expect("complete");
    c.cancel_session(pb::CancelSessionRequest {
        session_id: ids[2].clone(),
        ..Default::default()
    })
    .await
    .expect("cancel");

    let (expected, rows) = current(&mut app.client, &all).await;
    let total: u64 = expected.values().sum();
    assert_eq!(
        total,
        10 * 2 + 300 + 3 + 2,
        "create + start each, 300 switches, 3 controls, 2 pending creates"
    );
    let took = wait_audit(&db, &expected, CATCH_UP, "memory engine").await;
    println!(
        "memory engine: {total} versions of {} sessions in Postgres {:.0} ms after the last commit",
        all.len(),
        ms(took)
    );
    assert_exactly_once(&db, &expected);
    assert_sessions_rows(&db, &rows);
    let statuses: HashSet<&str> = rows.values().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        statuses,
        HashSet::from(["RUNNING", "PAUSED", "COMPLETED", "CANCELLED", "PENDING"])
    );
    wait_inserted(&[&app], total).await;
}

// ---------- 2. ListSessionEvents ----------

/// The paging contract on the given engine (SPEC §6).
async fn list_session_events_pages(engine: EngineKind) {
    let _iso = shared_isolation();
    let db = TestDb::create();
    let redis = (engine == EngineKind::Redis).then(RedisServer::start);
    let cfg = match &redis {
        Some(r) => redis_config(r, &db),
        None => memory_config(&db),
    };
    let mut app = Server::start(cfg).await;
    let c = &mut app.client;

    // 250 versions: CREATED, STARTED, 248 SWITCHED.
    let s = create_started(c).await;
    let id = s.session_id.clone();
    for _ in 0..248 {
        switch(c, &id).await;
    }
    assert_eq!(get(c, &id).await.version, 250);
    wait_audit(
        &db,
        &HashMap::from([(id.clone(), 250)]),
        CATCH_UP,
        "250 versions",
    )
    .await;

    // page_size 100: three pages, each version once, in order.
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let r = list(c, list_req(&id, 100, &token, None)).await;
        pages += 1;
        assert!(r.events.len() <= 100);
        for e in &r.events {
            let snap = e.session.as_ref().expect("event carries the session");
            assert_eq!(
                snap.version, e.version,
                "the snapshot is the session at the event's version"
            );
            assert_eq!(
                (snap.session_id.as_str(), e.session_id.as_str()),
                (id.as_str(), id.as_str())
            );
            assert_eq!(
                (snap.epoch.as_str(), e.epoch.as_str()),
                (s.epoch.as_str(), s.epoch.as_str())
            );
            assert!(e.server_time.is_some(), "event time");
            let want = match e.version {
                1 => EventType::Created,
                2 => EventType::Started,
                _ => EventType::Switched,
            };
            assert_eq!(event_type(e), want, "type of version {}", e.version);
        }
        seen.extend(versions_of(&r));
        token = r.next_page_token;
        if token.is_empty() {
            break;
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(
        seen,
        (1..=250).collect::<Vec<_>>(),
        "each version once, in order, across pages"
    );

    // page_size 0 -> the default 100; the largest page holds everything.
    let r = list(c, list_req(&id, 0, "", None)).await;
    assert_eq!(
        versions_of(&r),
        (1..=100).collect::<Vec<_>>(),
        "default page size 100"
    );
    assert!(!r.next_page_token.is_empty());
    let r = list(c, list_req(&id, 1000, "", None)).await;
    assert_eq!(versions_of(&r), (1..=250).collect::<Vec<_>>());
    assert!(r.next_page_token.is_empty(), "nothing more");

    // Bad arguments name their field.
    assert_status(
        c.list_session_events(list_req(&id, 1001, "", None)).await,
        Code::InvalidArgument,
        "page_size",
    );
    for garbage in ["garbage!", "zz", "abc", "6869", "%%%%", "3a3a3a"] {
        assert_status(
            c.list_session_events(list_req(&id, 10, garbage, None))
                .await,
            Code::InvalidArgument,
            "page_token",
        );
    }
    assert_status(
        c.list_session_events(list_req("", 10, "", None)).await,
        Code::InvalidArgument,
        "session_id",
    );

    // after_version: versions after it, paged the same way.
    let r = list(c, list_req(&id, 0, "", Some(200))).await;
    assert_eq!(versions_of(&r), (201..=250).collect::<Vec<_>>());
    assert!(r.next_page_token.is_empty());
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let r = list(c, list_req(&id, 20, &token, Some(200))).await;
        seen.extend(versions_of(&r));
        token = r.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(
        seen,
        (201..=250).collect::<Vec<_>>(),
        "after_version with pages of 20"
    );
    let r = list(c, list_req(&id, 0, "", Some(250))).await;
    assert!(
        r.events.is_empty() && r.next_page_token.is_empty(),
        "nothing after the last version"
    );
    // A token and an after_version beyond it: the later of the two.
    let first = list(c, list_req(&id, 100, "", None)).await;
    let r = list(c, list_req(&id, 1000, &first.next_page_token, Some(150))).await;
    assert_eq!(versions_of(&r), (151..=250).collect::<Vec<_>>());

    // A session that never existed.
    assert_code(
        c.list_session_events(list_req("never-was", 0, "", None))
            .await,
        Code::NotFound,
    );

    // Deleted from the store: the history stays, DELETED included.
    c.delete_session(pb::DeleteSessionRequest {
        session_id: id.clone(),
    })
    .await
    .expect("DeleteSession");
    assert_code(
        c.get_session(pb::GetSessionRequest {
            session_id: id.clone(),
        })
        .await,
        Code::NotFound,
    );
    wait_audit(
        &db,
        &HashMap::from([(id.clone(), 251)]),
        CATCH_UP,
        "DELETED",
    )
    .await;
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut last = None;
    loop {
        let r = list(c, list_req(&id, 100, &token, None)).await;
        seen.extend(versions_of(&r));
        last = r.events.last().cloned().or(last);
        token = r.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(
        seen,
        (1..=251).collect::<Vec<_>>(),
        "the whole history after DeleteSession"
    );
    let deleted = last.unwrap();
    assert_eq!(
        (deleted.version, event_type(&deleted)),
        (251, EventType::Deleted)
    );
    assert_eq!(deleted.session.as_ref().unwrap().version, 251);
    // The writer stores a batch's events before the sessions row they update
    // (audit/db.rs, not one transaction): the row may lag the events a moment.
    let summary = format!(
        "SELECT last_version, deleted_at IS NOT NULL FROM sessions WHERE session_id = '{id}'"
    );
    let t0 = Instant::now();
    while sql(&db, &summary) != "251|t" && t0.elapsed() < CATCH_UP {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sql(&db, &summary), "251|t");

    // Created again under the same id: a new epoch, and the history is the new one's.
    let again = create(c, chess(&id, HOUR_MS)).await;
    assert_ne!(again.epoch, s.epoch);
    let t0 = Instant::now();
    let r = loop {
        let r = list(c, list_req(&id, 0, "", None)).await;
        if r.events.first().is_some_and(|e| e.epoch == again.epoch) {
            break r;
        }
        assert!(
            t0.elapsed() < CATCH_UP,
            "the recreated session's history never showed: {:?}",
            versions_of(&r)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(versions_of(&r), vec![1]);
    assert_eq!(event_type(&r.events[0]), EventType::Created);
    assert_eq!(
        sql(
            &db,
            &format!("SELECT count(*) FROM session_events WHERE session_id = '{id}'")
        ),
        "252",
        "both epochs kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_session_events_pages_the_history_in_order_on_the_memory_engine() {
    list_session_events_pages(EngineKind::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_session_events_pages_the_history_in_order_on_the_redis_engine() {
    list_session_events_pages(EngineKind::Redis).await;
}

/// A compensated switch: the audit keeps the lag the mover asked for and
/// the compensation it got, and ListSessionEvents gives both back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_keeps_the_lag_asked_and_the_compensation_given() {
    let _iso = shared_isolation();
    let db = TestDb::create();
    let mut app = Server::start(memory_config(&db)).await;
    let c = &mut app.client;
    let id = unique_id("lag-audit");
    let mut req = chess(&id, 60_000);
    req.lag_compensation = true;
    create(c, req).await;
    start(c, &id).await;
    c.switch_cycle(pb::SwitchCycleRequest {
        lag_ms: Some(700),
        ..switch_req(&id)
    })
    .await
    .unwrap();
    switch(c, &id).await;
    wait_audit(
        &db,
        &HashMap::from([(id.clone(), 4)]),
        CATCH_UP,
        "4 versions",
    )
    .await;
    let r = list(c, list_req(&id, 10, "", None)).await;
    let lags: Vec<(u64, i64, i64)> = r
        .events
        .iter()
        .map(|e| (e.version, e.lag_ms, e.lag_compensation_ms))
        .collect();
    assert_eq!(lags, vec![(1, 0, 0), (2, 0, 0), (3, 700, 700), (4, 0, 0)]);
    assert_eq!(
        db.sql(&format!(
            "SELECT version, lag_asked_us, lag_given_us FROM session_events \
             WHERE session_id = '{id}' AND lag_asked_us IS NOT NULL"
        ))
        .trim(),
        "3|700000|700000"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_session_events_is_unimplemented_without_database_url() {
    let _iso = shared_isolation();
    let mut app = Server::start(config(EngineKind::Memory, None, None)).await;
    let s = create_started(&mut app.client).await;
    assert_status(
        app.client
            .list_session_events(list_req(&s.session_id, 0, "", None))
            .await,
        Code::Unimplemented,
        "DATABASE_URL",
    );
}

// ---------- 3. two replicas under concurrent load ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_redis_replicas_under_concurrent_load_store_every_version_exactly_once() {
    let _iso = shared_isolation();
    let db = TestDb::create();
    let redis = RedisServer::start();
    let mut a = Server::start(redis_config(&redis, &db)).await;
    let mut b = Server::start(redis_config(&redis, &db)).await;

    let ids =
        Arc::new(started_sessions(&mut [&mut a.client, &mut b.client], 20, "audit-two").await);
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (r, replica) in [&a, &b].into_iter().enumerate() {
        for t in 0..4 {
            tasks.push(switcher(
                replica.new_client().await,
                ids.clone(),
                r * 4 + t,
                stop.clone(),
                Some(100),
                false,
            ));
        }
    }
    let load = join_all(tasks).await;
    let took = t0.elapsed();
    // Unconditioned switches of one session from several writers may, rarely,
    // exhaust the store's WATCH retries (ABORTED; see replicas.rs): such a
    // call committed nothing, and the store's final versions are the truth.
    for f in &load.failed {
        assert_eq!(f.code(), Code::Aborted, "{f:?}");
    }
    let (expected, rows) = current(&mut a.client, &ids).await;
    let total: u64 = expected.values().sum();
    assert_eq!(total, 20 * 2 + load.ok);
    let caught_up = wait_audit(&db, &expected, CATCH_UP, "two replicas").await;
    wait_inserted(&[&a, &b], total).await;
    println!(
        "two replicas: {} switches in {:.0} ms ({} ABORTED); {total} versions in Postgres {:.0} ms after the load; \
         inserted by replica a {} / b {}",
        load.ok,
        ms(took),
        load.failed.len(),
        ms(caught_up),
        a.inserted(),
        b.inserted()
    );
    assert_exactly_once(&db, &expected);
    assert_sessions_rows(&db, &rows);
    let mut con = redis_conn(&redis.url()).await;
    wait_streams_empty(&mut con, "two replicas").await;
}

// ---------- 4. a replica SIGKILLed holding unacknowledged entries ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_pending_audit_entries_are_taken_over_by_a_survivor() {
    let _iso = shared_isolation();
    let db = TestDb::create();
    let redis = RedisServer::start();
    let mut con = redis_conn(&redis.url()).await;

    // The survivor first: once its writer has stored a session, the tables
    // exist and its consumer is known.
    let mut a = Server::start(redis_config(&redis, &db)).await;
    let warm = create_chess(&mut a.client).await.session_id;
    wait_audit(
        &db,
        &HashMap::from([(warm.clone(), 1)]),
        CATCH_UP,
        "warm-up",
    )
    .await;
    let survivors: HashSet<String> = pending_by_consumer(&mut con).await.into_keys().collect();
    assert_eq!(survivors.len(), 1, "one consumer so far: {survivors:?}");

    let (mut child, mut child_client) = ChildReplica::spawn(&redis.url(), Some(&db.url())).await;

    // Load through both replicas.
    let mut ids = started_sessions(&mut [&mut a.client, &mut child_client], 20, "audit-kill").await;
    let load_ids = Arc::new(ids.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let (mut on_a, mut on_child) = (Vec::new(), Vec::new());
    for t in 0..3 {
        on_a.push(switcher(
            a.new_client().await,
            load_ids.clone(),
            t,
            stop.clone(),
            None,
            false,
        ));
        on_child.push(switcher(
            child_client.clone(),
            load_ids.clone(),
            10 + t,
            stop.clone(),
            None,
            true,
        ));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    // The child's consumer: Redis creates it when the child's writer first reads an entry.
    let t0 = Instant::now();
    let doomed = loop {
        let names = pending_by_consumer(&mut con).await;
        if let Some(n) = names.keys().find(|n| !survivors.contains(*n)) {
            break n.clone();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the child's audit consumer never showed up: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // Postgres goes away: every writer holds its batch, unacknowledged.
    refuse(&db);
    let t0 = Instant::now();
    let held = loop {
        let held = pending_by_consumer(&mut con)
            .await
            .get(&doomed)
            .copied()
            .unwrap_or(0);
        if held > 0 {
            break held;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the child never held audit entries"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.kill();
    let killed = Instant::now();
    let held_at_kill = pending_by_consumer(&mut con)
        .await
        .get(&doomed)
        .copied()
        .unwrap_or(0);
    let child_load = join_all(on_child).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    allow(&db);
    let allowed = Instant::now();
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    let a_load = join_all(on_a).await;
    assert!(
        a_load.failed.is_empty(),
        "the survivor's switches failed: {:?}",
        &a_load.failed[..a_load.failed.len().min(3)]
    );
    assert!(child_load.ok > 0, "the child served load before it died");

    ids.push(warm);
    let (expected, rows) = current(&mut a.client, &ids).await;
    let total: u64 = expected.values().sum();
    // Until the takeover, Postgres lacks the dead consumer's entries.
    let mut taken_over = None;
    let deadline = Duration::from_secs(45);
    loop {
        if taken_over.is_none()
            && pending_by_consumer(&mut con)
                .await
                .get(&doomed)
                .copied()
                .unwrap_or(0)
                == 0
        {
            taken_over = Some(killed.elapsed());
        }
        if taken_over.is_some()
            && audit_summary(&db).is_some_and(|s| mismatch(&s, &expected).is_none())
        {
            break;
        }
        if killed.elapsed() > deadline {
            let why = audit_summary(&db).and_then(|s| mismatch(&s, &expected));
            panic!(
                "not stored within {deadline:?} of the kill; dead consumer still holds {:?}; {why:?}",
                pending_by_consumer(&mut con).await.get(&doomed)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let taken_over = taken_over.unwrap();
    println!(
        "SIGKILL: the child held {held} (at kill {held_at_kill}) unacknowledged audit entries; the survivor took them over \
         {:.1} s after the kill ({:.1} s after Postgres came back); all {total} versions ({} switches via the child, {} via the survivor) \
         in Postgres {:.1} s after the kill",
        taken_over.as_secs_f64(),
        allowed.elapsed().as_secs_f64() - killed.elapsed().as_secs_f64() + taken_over.as_secs_f64(),
        child_load.ok,
        a_load.ok,
        killed.elapsed().as_secs_f64()
    );
    assert!(
        taken_over >= Duration::from_secs(10),
        "taken over before the 15 s idle limit: {taken_over:?}"
    );
    assert_exactly_once(&db, &expected);
    assert_sessions_rows(&db, &rows);
    wait_streams_empty(&mut con, "after the takeover").await;
}

// ---------- 5. Postgres down: the clock does not notice ----------

async fn postgres_outage(engine: EngineKind) {
    // It bounds SwitchCycle's latency during the outage (200 ms): alone, so
    // that what it measures is the outage, not the rest of the suite (a full
    // run beside other tests once saw 602 ms).
    let _iso = exclusive_isolation();
    let db = TestDb::create();
    let redis = (engine == EngineKind::Redis).then(RedisServer::start);
    let cfg = match &redis {
        Some(r) => redis_config(r, &db),
        None => memory_config(&db),
    };
    let mut app = Server::start(cfg).await;
    let ids = Arc::new(started_sessions(&mut [&mut app.client], 8, "audit-down").await);
    let (expected, _) = current(&mut app.client, &ids).await;
    wait_audit(&db, &expected, CATCH_UP, "before the outage").await;

    let clients = [app.new_client().await, app.new_client().await];
    let measure = async |window: Duration| {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(t, c)| switcher(c.clone(), ids.clone(), t * 4, stop.clone(), None, false))
            .collect();
        tokio::time::sleep(window).await;
        stop.store(true, Ordering::Relaxed);
        join_all(tasks).await
    };
    let before = measure(Duration::from_secs(1)).await;
    assert!(before.failed.is_empty(), "{:?}", before.failed);

    refuse(&db);
    let down = measure(Duration::from_millis(2_500)).await;
    // Still down: the history is UNAVAILABLE, promptly.
    let t0 = Instant::now();
    assert_status(
        app.client
            .list_session_events(list_req(&ids[0], 0, "", None))
            .await,
        Code::Unavailable,
        "audit",
    );
    let list_took = t0.elapsed();
    let backlog = match &redis {
        Some(r) => Some(audit_backlog(&mut redis_conn(&r.url()).await).await),
        None => None,
    };
    allow(&db);
    let allowed = Instant::now();

    let (b50, b99, bmax) = percentiles(&before.latencies);
    let (d50, d99, dmax) = percentiles(&down.latencies);
    println!(
        "{engine:?}: SwitchCycle with Postgres up: {} calls p50 {b50:.2} / p99 {b99:.2} / max {bmax:.2} ms; \
         Postgres down 2.5 s: {} calls, {} failed, p50 {d50:.2} / p99 {d99:.2} / max {dmax:.2} ms; \
         ListSessionEvents UNAVAILABLE after {:.0} ms; audit stream backlog {backlog:?}",
        before.ok,
        down.ok,
        down.failed.len(),
        ms(list_took)
    );
    assert!(
        down.failed.is_empty(),
        "SwitchCycle failed while Postgres was down: {:?}",
        &down.failed[..down.failed.len().min(3)]
    );
    assert!(down.ok > 50, "SwitchCycle kept serving: {} calls", down.ok);
    assert!(
        dmax < 200.0,
        "SwitchCycle max latency {dmax:.1} ms while Postgres was down"
    );
    assert!(
        list_took < Duration::from_secs(5),
        "ListSessionEvents took {list_took:?} to fail"
    );
    if let Some(backlog) = backlog {
        assert!(
            backlog > 0,
            "the streams hold the backlog while Postgres is down"
        );
    }

    let (expected, rows) = current(&mut app.client, &ids).await;
    let total: u64 = expected.values().sum();
    wait_audit(&db, &expected, Duration::from_secs(20), "after the outage").await;
    let drained = allowed.elapsed();
    println!(
        "{engine:?}: backlog drained, all {total} versions in Postgres {:.2} s after it came back (writer's max lag {:.1} s)",
        drained.as_secs_f64(),
        app.lag.max_lag_us.load(Ordering::Relaxed) as f64 / 1e6
    );
    assert_exactly_once(&db, &expected);
    assert_sessions_rows(&db, &rows);
    wait_inserted(&[&app], total).await;
    if let Some(r) = &redis {
        wait_streams_empty(&mut redis_conn(&r.url()).await, "after the outage").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_delays_the_audit_not_the_clock_on_the_memory_engine() {
    postgres_outage(EngineKind::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_delays_the_audit_not_the_clock_on_the_redis_engine() {
    postgres_outage(EngineKind::Redis).await;
}

// ---------- 6. start-up without a reachable database ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_url_does_not_stop_the_clock() {
    let _iso = shared_isolation();
    const NOWHERE: &str = "postgres://postgres@127.0.0.1:1/nope";
    let redis = RedisServer::start();
    for (engine, redis_url) in [
        (EngineKind::Memory, None),
        (EngineKind::Redis, Some(redis.url())),
    ] {
        let mut app = Server::start(config(engine, redis_url.as_deref(), Some(NOWHERE))).await;
        let c = &mut app.client;
        let s = create_started(c).await;
        let t0 = Instant::now();
        for _ in 0..20 {
            switch(c, &s.session_id).await;
        }
        let per_switch = t0.elapsed() / 20;
        assert_eq!(get(c, &s.session_id).await.version, 22);
        let t0 = Instant::now();
        assert_status(
            c.list_session_events(list_req(&s.session_id, 0, "", None))
                .await,
            Code::Unavailable,
            "audit",
        );
        let list_took = t0.elapsed();
        println!(
            "{engine:?} with DATABASE_URL unreachable: SwitchCycle {:.2} ms each; ListSessionEvents UNAVAILABLE after {:.0} ms",
            ms(per_switch),
            ms(list_took)
        );
        assert!(
            list_took < Duration::from_secs(5),
            "ListSessionEvents took {list_took:?} to fail"
        );
        if engine == EngineKind::Redis {
            // Nothing is lost meanwhile: every version waits in the audit streams.
            assert_eq!(audit_backlog(&mut redis_conn(&redis.url()).await).await, 22);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_comes_up_after_start_up_receives_the_whole_backlog() {
    let _iso = shared_isolation();
    let db = TestDb::create();
    let redis = RedisServer::start();
    refuse(&db);
    let mut app = Server::start(redis_config(&redis, &db)).await;
    let ids = started_sessions(&mut [&mut app.client], 5, "audit-late").await;
    for id in &ids {
        for _ in 0..10 {
            switch(&mut app.client, id).await;
        }
    }
    assert_code(
        app.client
            .list_session_events(list_req(&ids[0], 0, "", None))
            .await,
        Code::Unavailable,
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    allow(&db);
    let (expected, rows) = current(&mut app.client, &ids).await;
    let took = wait_audit(
        &db,
        &expected,
        Duration::from_secs(20),
        "database up after start-up",
    )
    .await;
    println!(
        "database up after start-up: migrations run and 60 versions stored {:.2} s after it came up",
        took.as_secs_f64()
    );
    assert_exactly_once(&db, &expected);
    assert_sessions_rows(&db, &rows);
    let r = list(&mut app.client, list_req(&ids[0], 0, "", None)).await;
    assert_eq!(versions_of(&r), (1..=12).collect::<Vec<_>>());
    wait_streams_empty(
        &mut redis_conn(&redis.url()).await,
        "database up after start-up",
    )
    .await;
}

/// A CREATED event of a new two-player session whose metadata carries
/// `note`, made below the gRPC edge (which may refuse such a value).
fn created_record(id: &str, note: &str) -> synckairos::store::AuditRecord {
    use synckairos::engine::{
        self, Mode, NewParticipant, NewSession, ParticipantId, SessionId, Tenant,
    };
    let p = |id: &str| NewParticipant::named(ParticipantId::parse("p", id).unwrap());
    let mut new = NewSession::new(
        SessionId::parse("session_id", id).unwrap(),
        Mode::PerParticipant,
        vec![p("a"), p("b")],
    );
    new.initial_time_ms = 60_000;
    let (_, mut event) = engine::create(new, 1_700_000_000_000_000).unwrap();
    event.session.metadata.insert("note".into(), note.into());
    synckairos::store::AuditRecord {
        tenant: Tenant::default_tenant(),
        event: Arc::new(event),
    }
}

/// One event PostgreSQL refuses (a U+0000 in a string: jsonb cannot hold it)
/// must not hold back the audit of every other session: it goes to
/// `audit_dead_letters` with Postgres' reason, and the events before it, in
/// its batch and after it are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_postgres_refuses_is_dead_lettered_and_the_audit_goes_on() {
    use synckairos::audit::source::MemorySource;
    let db = TestDb::create();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let lag = Arc::new(AuditLag::default());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let writer = tokio::spawn(synckairos::audit::writer::run(
        synckairos::audit::db::pool(db.url().parse().unwrap(), 4),
        Box::new(MemorySource::new(rx)),
        lag.clone(),
        || 1_700_000_000_000_000,
        shutdown.clone(),
    ));
    // One batch: two storable events around the refused one.
    for (id, note) in [
        ("dl-before", "fine"),
        ("dl-bad", "nul \0 here"),
        ("dl-same-batch", "ok"),
    ] {
        tx.try_send(created_record(id, note)).unwrap();
    }
    let stored = |db: &TestDb| {
        sql(
            db,
            "SELECT string_agg(session_id, ',' ORDER BY session_id) FROM session_events",
        )
    };
    db.wait_for_table("session_events", Duration::from_secs(15))
        .await;
    let t0 = Instant::now();
    while stored(&db) != "dl-before,dl-same-batch" {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "the events around a refused one never reached Postgres (stored: {:?}, dead letters: {})",
            stored(&db),
            lag.dead_lettered.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A later batch goes through as usual.
    tx.try_send(created_record("dl-after", "later")).unwrap();
    let t0 = Instant::now();
    while stored(&db) != "dl-after,dl-before,dl-same-batch" {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "a later event was not stored"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dead = sql(
        &db,
        "SELECT session_id || ' v' || version || ' ' || reason FROM audit_dead_letters",
    );
    assert!(
        dead.starts_with("dl-bad v1 ") && dead.contains("Unicode"),
        "the refused event and Postgres' reason are in the dead letters: {dead:?}"
    );
    let kept = sql(
        &db,
        "SELECT convert_from(event, 'UTF8') FROM audit_dead_letters",
    );
    assert!(kept.contains(r#""note":"nul \u0000 here""#), "{kept}");
    assert_eq!(lag.dead_lettered.load(Ordering::Relaxed), 1);
    assert_eq!(lag.inserted.load(Ordering::Relaxed), 3);
    shutdown.cancel();
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
}

/// The same on the redis engine, end to end: an entry in a bucket's audit
/// stream that Postgres refuses is dead-lettered by the replica's writer, and
/// a session created after it reaches Postgres (before, the writer held it
/// forever, and the replica that took it over 15 s later stuck too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_stream_entry_postgres_refuses_is_dead_lettered_on_the_redis_engine() {
    let redis = RedisServer::start();
    let db = TestDb::create();
    let mut server = Server::start(redis_config(&redis, &db)).await;
    let t0 = Instant::now();
    while sql(&db, "SELECT to_regclass('audit_dead_letters') IS NOT NULL") != "t" {
        assert!(
            t0.elapsed() < CATCH_UP,
            "the writer never ran its migrations"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let bad = created_record("dl-stream-bad", "nul \0 here");
    let mut con = redis_conn(&redis.url()).await;
    let _: String = redis::cmd("XADD")
        .arg(audit_stream(3))
        .arg("*")
        .arg("tenant")
        .arg("default")
        .arg("e")
        .arg(serde_json::to_vec(&*bad.event).unwrap())
        .query_async(&mut con)
        .await
        .unwrap();
    server
        .client
        .create_session(chess("dl-stream-good", 60_000))
        .await
        .unwrap();
    let t0 = Instant::now();
    loop {
        let stored = sql(
            &db,
            "SELECT count(*) FROM session_events WHERE session_id = 'dl-stream-good'",
        );
        if stored == "1" {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "a session created after a refused stream entry never reached Postgres (dead letters: {})",
            server.lag.dead_lettered.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t0 = Instant::now();
    while sql(
        &db,
        "SELECT count(*) FROM audit_dead_letters WHERE session_id = 'dl-stream-bad'",
    ) != "1"
    {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "the refused entry is not in the dead letters"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Acknowledged like any stored entry: nothing is left pending for another replica.
    wait_streams_empty(&mut con, "after the dead letter").await;
}

/// Creates and starts `req`'s session, switches it `switches` times and
/// waits until all its versions are in Postgres; its latest version.
async fn audited(
    server: &mut Server,
    db: &TestDb,
    req: pb::CreateSessionRequest,
    switches: usize,
) -> u64 {
    let id = req.session_id.clone();
    create(&mut server.client, req).await;
    let mut latest = start(&mut server.client, &id).await.version;
    for _ in 0..switches {
        latest = server
            .client
            .switch_cycle(switch_req(&id))
            .await
            .expect("switch")
            .into_inner()
            .version;
    }
    let expected = HashMap::from([(id.clone(), latest)]);
    wait_audit(db, &expected, CATCH_UP, &id).await;
    latest
}

/// A batch writes its events before the `sessions` rows, so for a moment a
/// session has events and no row: its history is found all the same (it
/// was NOT_FOUND, seen in a full run right after the events arrived). Made
/// deterministic here by deleting the row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_is_found_before_its_sessions_row_is_written() {
    let db = TestDb::create();
    let mut server = Server::start(memory_config(&db)).await;
    let id = unique_id("no-row");
    let latest = audited(&mut server, &db, chess(&id, HOUR_MS), 1).await;
    db.sql(&format!("DELETE FROM sessions WHERE session_id = '{id}'"));
    let page = list(&mut server.client, list_req(&id, 100, "", None)).await;
    assert_eq!(versions_of(&page), (1..=latest).collect::<Vec<_>>());
}

/// A page of ListSessionEvents is bounded by bytes as well as by count: the
/// history of a 1,000-participant session (a snapshot is about 100 KB) comes
/// in pages a gRPC client accepts (4 MiB by default), and paging still gives
/// every version once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_large_snapshots_is_bounded_by_bytes() {
    let db = TestDb::create();
    let mut server = Server::start(memory_config(&db)).await;
    let id = unique_id("big");
    let mut req = chess(&id, HOUR_MS);
    req.participants = (0..1_000)
        .map(|i| participant(&format!("player-{i:04}")))
        .collect();
    let latest = audited(&mut server, &db, req, 48).await;
    let (versions, pages) = page_all(&mut server, &id, 4 * 1024 * 1024 - 1).await;
    assert!(pages > 1, "{latest} versions of ~100 KB came in one page");
    assert_eq!(versions, (1..=latest).collect::<Vec<_>>());
}

/// Pages through `id`'s whole history 1,000 events at most a page, each
/// page's reply at most `most_bytes` and never empty: the versions in the
/// order they came, and how many pages.
async fn page_all(server: &mut Server, id: &str, most_bytes: usize) -> (Vec<u64>, usize) {
    use prost::Message;
    let (mut versions, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let page = list(&mut server.client, list_req(id, 1_000, &token, None)).await;
        let bytes = page.encoded_len();
        assert!(
            bytes <= most_bytes,
            "page {pages} is {bytes} bytes ({} events), over {most_bytes}",
            page.events.len()
        );
        assert!(!page.events.is_empty());
        versions.extend(versions_of(&page));
        pages += 1;
        if page.next_page_token.is_empty() {
            return (versions, pages);
        }
        token = page.next_page_token;
    }
}

/// `SYNCKAIROS_MAX_PAGE_BYTES` moves where a page ends: at 64 KiB, the
/// history of a 100-participant session (snapshots of about 10 KB) comes a
/// few events a page, each page under the setting, every version once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_bytes_setting_bounds_each_page() {
    let db = TestDb::create();
    let mut config = memory_config(&db);
    config.max_page_bytes = 64 * 1024;
    let mut server = Server::start(config).await;
    let id = unique_id("page-bytes");
    let mut req = chess(&id, HOUR_MS);
    req.participants = (0..100)
        .map(|i| participant(&format!("player-{i:04}")))
        .collect();
    let latest = audited(&mut server, &db, req, 30).await;
    let (versions, pages) = page_all(&mut server, &id, 64 * 1024).await;
    assert!(
        pages >= 3,
        "{latest} versions of ~10 KB in {pages} pages of 64 KiB"
    );
    assert_eq!(versions, (1..=latest).collect::<Vec<_>>());
}

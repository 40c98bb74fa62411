//! Shared test helpers: one real server per test (memory engine, port 0),
//! a connected client, request builders and small stream/status assertions.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Once, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use prost_types::Timestamp;
use synckairos::config::{Config, EngineKind, Secret};

use crate::redis_server::RedisServer;
use synckairos::grpc::pb;
use synckairos::grpc::pb::sync_service_client::SyncServiceClient;
use synckairos::startup::{Application, Reloaders};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};

pub type Client = SyncServiceClient<Channel>;
pub type EventStream = Streaming<pb::SessionEvent>;

/// How long a test waits for a message that should come "at once".
pub const PROMPT: Duration = Duration::from_secs(5);

/// A running server and a client connected to it. Dropping it stops the
/// server (the stop future resolves when the sender is dropped).
pub struct TestApp {
    pub addr: SocketAddr,
    pub client: Client,
    /// Where `/metrics` is served, when the config set `metrics_listen`.
    pub metrics_addr: Option<SocketAddr>,
    /// What a SIGHUP would reload on this server (`Application::reloaders`).
    pub reloaders: Reloaders,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
    /// The private Redis of this test, when the suite runs on the redis
    /// engine: held so that it lives exactly as long as the server.
    _redis: Option<std::sync::Arc<std::sync::Mutex<RedisServer>>>,
    _isolation: Isolation,
}

/// Which engine the suite runs on: `SYNCKAIROS_TEST_ENGINE=redis` (tests/run.sh
/// runs the suite once per engine); memory otherwise.
pub fn test_engine() -> EngineKind {
    match std::env::var("SYNCKAIROS_TEST_ENGINE").as_deref() {
        Ok("redis") => EngineKind::Redis,
        _ => EngineKind::Memory,
    }
}

/// Timing-sensitive tests (flag lateness, latency) run alone: the test
/// harness runs the others in parallel on this 2-core machine, and their
/// load is not what those tests measure. Every server holds a shared lock;
/// an exclusive test takes it exclusively (new shared holders then wait).
static ISOLATION: RwLock<()> = RwLock::new(());

#[allow(dead_code)]
pub enum Isolation {
    Shared(RwLockReadGuard<'static, ()>),
    Exclusive(RwLockWriteGuard<'static, ()>),
}

impl TestApp {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client on its own HTTP/2 connection.
    pub async fn new_client(&self) -> Client {
        connect(Endpoint::from_shared(self.url()).expect("endpoint")).await
    }

    /// Triggers the stop future; the server begins its shutdown.
    pub fn trigger_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits (at most `limit`) for `run_until_stopped` to return.
    pub async fn wait_stopped(&mut self, limit: Duration) -> anyhow::Result<()> {
        let handle = self.server.take().expect("server already awaited");
        match tokio::time::timeout(limit, handle).await {
            Ok(joined) => joined.expect("server task panicked"),
            Err(_) => panic!("server did not stop within {limit:?}"),
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.trigger_stop();
    }
}

fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Logs only when asked for: TEST_LOG=1 cargo test --test api -- --nocapture
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(
                    std::env::var("RUST_LOG")
                        .unwrap_or_else(|_| "debug,h2=warn,hyper=warn,tower=warn".into()),
                ))
                .with_test_writer()
                .try_init();
        }
    });
}

pub async fn connect(endpoint: Endpoint) -> Client {
    let channel = endpoint
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect to test server");
    SyncServiceClient::new(channel)
}

/// A server with the default test config.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// A server on 127.0.0.1:0 with the memory engine; `tweak` edits the config first.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let shared = ISOLATION
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    build_app(tweak, Isolation::Shared(shared), plaintext).await
}

/// As `spawn_app_with`, its client on the endpoint `endpoint_of` makes for
/// the server's address (a TLS client, for a server with TLS on).
pub async fn spawn_app_with_client(
    tweak: impl FnOnce(&mut Config),
    endpoint_of: impl FnOnce(SocketAddr) -> Endpoint,
) -> TestApp {
    build_app(tweak, shared_isolation(), endpoint_of).await
}

/// The plaintext endpoint of a server.
fn plaintext(addr: SocketAddr) -> Endpoint {
    Endpoint::from_shared(format!("http://{addr}")).expect("endpoint")
}

/// The shared isolation guard every ordinary test server holds.
pub fn shared_isolation() -> Isolation {
    Isolation::Shared(
        ISOLATION
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
    )
}

/// The exclusive guard, for a timing-sensitive test that starts its own
/// servers: no other test's server runs while it is held.
pub fn exclusive_isolation() -> Isolation {
    Isolation::Exclusive(
        ISOLATION
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
    )
}

/// A server for a timing-sensitive test: no other test's server runs meanwhile.
pub async fn spawn_app_alone() -> TestApp {
    spawn_app_alone_with(|_| {}).await
}

/// As [`spawn_app_alone`], with `tweak` applied to the config first.
pub async fn spawn_app_alone_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    build_app(tweak, exclusive_isolation(), plaintext).await
}

async fn build_app(
    tweak: impl FnOnce(&mut Config),
    isolation: Isolation,
    endpoint_of: impl FnOnce(SocketAddr) -> Endpoint,
) -> TestApp {
    init_tracing();
    let redis = (test_engine() == EngineKind::Redis)
        .then(|| std::sync::Arc::new(std::sync::Mutex::new(RedisServer::start())));
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        engine: test_engine(),
        redis_url: redis.as_ref().map(|r| Secret::new(r.lock().unwrap().url())),
        database_url: None,
        shutdown_grace: Duration::from_secs(5),
        // No load balancer to wait for: a stopped test server drains at once.
        prestop_delay: Duration::ZERO,
        ..Config::default()
    };
    tweak(&mut config);
    launch_with(config, redis, isolation, endpoint_of).await
}

/// Runs one server with `config` (one replica, when several share a Redis).
pub async fn launch(
    config: Config,
    redis: Option<std::sync::Arc<std::sync::Mutex<RedisServer>>>,
    isolation: Isolation,
) -> TestApp {
    launch_with(config, redis, isolation, plaintext).await
}

async fn launch_with(
    config: Config,
    redis: Option<std::sync::Arc<std::sync::Mutex<RedisServer>>>,
    isolation: Isolation,
    endpoint_of: impl FnOnce(SocketAddr) -> Endpoint,
) -> TestApp {
    let app = Application::build(config).await.expect("build application");
    let addr = SocketAddr::from(([127, 0, 0, 1], app.port()));
    let reloaders = app.reloaders();
    let metrics_addr = app.metrics_addr();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stop_rx.await;
    }));
    let client = connect(endpoint_of(addr)).await;
    TestApp {
        addr,
        client,
        metrics_addr,
        reloaders,
        stop: Some(stop_tx),
        server: Some(server),
        _redis: redis,
        _isolation: isolation,
    }
}

/// A fresh, valid session id: `prefix-<uuid>`.
pub fn unique_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

// ---------- request builders ----------

pub fn participant(id: &str) -> pb::ParticipantSpec {
    pb::ParticipantSpec {
        participant_id: id.into(),
        ..Default::default()
    }
}

pub fn participant_with_budget(id: &str, ms: i64) -> pb::ParticipantSpec {
    pb::ParticipantSpec {
        participant_id: id.into(),
        initial_time_ms: Some(ms),
        ..Default::default()
    }
}

/// A two-player chess clock ("white", "black"), `budget_ms` each, sudden death.
pub fn chess(session_id: &str, budget_ms: i64) -> pb::CreateSessionRequest {
    pb::CreateSessionRequest {
        session_id: session_id.into(),
        mode: pb::Mode::PerParticipant as i32,
        participants: vec![participant("white"), participant("black")],
        initial_time_ms: budget_ms,
        ..Default::default()
    }
}

/// One hour each: long enough that no clock runs out during a test.
pub const HOUR_MS: i64 = 3_600_000;

pub async fn create(client: &mut Client, req: pb::CreateSessionRequest) -> pb::Session {
    client
        .create_session(req)
        .await
        .expect("CreateSession")
        .into_inner()
}

/// Creates a one-hour chess session and returns it (version 1).
pub async fn create_chess(client: &mut Client) -> pb::Session {
    create(client, chess(&unique_id("chess"), HOUR_MS)).await
}

/// Creates and starts a one-hour chess session (version 2, white to move).
pub async fn create_started(client: &mut Client) -> pb::Session {
    let s = create_chess(client).await;
    start(client, &s.session_id).await
}

pub async fn get(client: &mut Client, id: &str) -> pb::Session {
    client
        .get_session(pb::GetSessionRequest {
            session_id: id.into(),
        })
        .await
        .expect("GetSession")
        .into_inner()
}

pub async fn start(client: &mut Client, id: &str) -> pb::Session {
    client
        .start_session(pb::StartSessionRequest {
            session_id: id.into(),
            ..Default::default()
        })
        .await
        .expect("StartSession")
        .into_inner()
}

pub fn switch_req(id: &str) -> pb::SwitchCycleRequest {
    pb::SwitchCycleRequest {
        session_id: id.into(),
        ..Default::default()
    }
}

pub async fn switch(client: &mut Client, id: &str) -> pb::Session {
    client
        .switch_cycle(switch_req(id))
        .await
        .expect("SwitchCycle")
        .into_inner()
}

pub async fn subscribe(client: &mut Client, req: pb::SubscribeRequest) -> EventStream {
    client.subscribe(req).await.expect("Subscribe").into_inner()
}

pub fn subscribe_req(id: &str) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        session_id: id.into(),
        ..Default::default()
    }
}

// ---------- assertions ----------

/// Asserts that `result` failed with `code` and that the message mentions `needle`.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    needle: &str,
) -> Status {
    match result {
        Ok(v) => panic!("expected {code:?} mentioning {needle:?}, got Ok({v:?})"),
        Err(s) => {
            assert_eq!(s.code(), code, "wrong code; message: {:?}", s.message());
            assert!(
                s.message().contains(needle),
                "{code:?} message {:?} should mention {needle:?}",
                s.message()
            );
            s
        }
    }
}

/// Asserts the code only.
#[track_caller]
pub fn assert_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> Status {
    assert_status(result, code, "")
}

/// The next message, failing the test if none comes within `limit`.
pub async fn next_within(
    stream: &mut EventStream,
    limit: Duration,
) -> Result<Option<pb::SessionEvent>, Status> {
    match tokio::time::timeout(limit, stream.message()).await {
        Ok(r) => r,
        Err(_) => panic!("no stream message within {limit:?}"),
    }
}

/// The next event; fails on end of stream, error or timeout.
pub async fn next_event(stream: &mut EventStream) -> pb::SessionEvent {
    next_within(stream, PROMPT)
        .await
        .expect("stream error")
        .expect("stream ended")
}

/// The next non-heartbeat event.
pub async fn next_change(stream: &mut EventStream) -> pb::SessionEvent {
    loop {
        let e = next_event(stream).await;
        if e.r#type != pb::EventType::Heartbeat as i32 {
            return e;
        }
    }
}

/// Creates a session from `req`, subscribes, starts it; returns the stream
/// (positioned after STARTED) and the STARTED event.
pub async fn start_watched(
    client: &mut Client,
    req: pb::CreateSessionRequest,
) -> (EventStream, pb::SessionEvent) {
    let id = req.session_id.clone();
    create(client, req).await;
    let mut stream = subscribe(client, subscribe_req(&id)).await;
    assert_eq!(
        event_type(&next_event(&mut stream).await),
        pb::EventType::Snapshot
    );
    start(client, &id).await;
    let started = next_change(&mut stream).await;
    assert_eq!(event_type(&started), pb::EventType::Started, "{started:?}");
    (stream, started)
}

/// Every client sends `SwitchCycle{from_participant_id: mover}` for `id` at
/// the same instant (a barrier); the replies, in client order.
pub async fn race_conditional_switches(
    clients: &[Client],
    id: &str,
    mover: &str,
) -> Vec<Result<pb::Session, Status>> {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(clients.len()));
    let mut racers = Vec::new();
    for client in clients {
        let mut client = client.clone();
        let req = pb::SwitchCycleRequest {
            from_participant_id: Some(mover.to_owned()),
            ..switch_req(id)
        };
        let barrier = barrier.clone();
        racers.push(tokio::spawn(async move {
            barrier.wait().await;
            client.switch_cycle(req).await.map(|r| r.into_inner())
        }));
    }
    let mut replies = Vec::new();
    for r in racers {
        replies.push(r.await.expect("racer task"));
    }
    replies
}

/// Asserts that nothing arrives on `stream` within `window`.
pub async fn assert_quiet(stream: &mut EventStream, window: Duration) {
    if let Ok(r) = tokio::time::timeout(window, stream.message()).await {
        panic!("expected no message within {window:?}, got {r:?}");
    }
}

pub fn event_type(e: &pb::SessionEvent) -> pb::EventType {
    pb::EventType::try_from(e.r#type).unwrap_or(pb::EventType::Unspecified)
}

pub fn status_of(s: &pb::Session) -> pb::Status {
    pb::Status::try_from(s.status).unwrap_or(pb::Status::Unspecified)
}

pub fn find<'a>(s: &'a pb::Session, participant_id: &str) -> &'a pb::Participant {
    s.participants
        .iter()
        .find(|p| p.participant_id == participant_id)
        .unwrap_or_else(|| panic!("no participant {participant_id:?} in {s:?}"))
}

/// Microseconds since the Unix epoch.
pub fn micros(t: &Timestamp) -> i64 {
    t.seconds * 1_000_000 + i64::from(t.nanos) / 1_000
}

pub fn micros_of(t: &Option<Timestamp>) -> i64 {
    micros(t.as_ref().expect("timestamp is set"))
}

pub fn wall_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// Runs `f` with a deadline, failing with `what` if it takes longer.
pub async fn within<T>(limit: Duration, what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: took longer than {limit:?}"))
}

/// The key of session `id` of the default tenant, for tests that drive a store directly.
pub fn store_key(id: &str) -> synckairos::engine::SessionKey {
    synckairos::engine::SessionKey {
        tenant: synckairos::engine::Tenant::default_tenant(),
        id: synckairos::engine::SessionId::parse("id", id).unwrap(),
    }
}

/// A two-player session (`players`, `budget_ms` each, sudden death) to
/// create straight in a store.
pub fn two_player_session(
    key: &synckairos::engine::SessionKey,
    players: [&str; 2],
    budget_ms: i64,
) -> synckairos::engine::NewSession {
    use synckairos::engine::{Mode, NewParticipant, NewSession, ParticipantId};
    let players = players
        .map(|p| NewParticipant::named(ParticipantId::parse("p", p).unwrap()))
        .to_vec();
    NewSession {
        initial_time_ms: budget_ms,
        ..NewSession::new(key.id.clone(), Mode::PerParticipant, players)
    }
}

/// Creates a two-player session (`players`, `budget_ms` each, sudden death)
/// straight in `store` and starts it: the first player's clock runs.
pub async fn create_started_in<S>(
    store: &S,
    key: &synckairos::engine::SessionKey,
    players: [&str; 2],
    budget_ms: i64,
) where
    S: synckairos::store::SessionStore + ?Sized,
{
    use synckairos::engine::{self, Command, Request};
    let new = two_player_session(key, players, budget_ms);
    store
        .create(key, &|now| engine::create(new.clone(), now))
        .await
        .unwrap();
    store
        .update(
            key,
            synckairos::store::apply(Request::new(Command::Start { first: None })),
        )
        .await
        .unwrap();
}

/// One HTTP/1.1 `GET path` to `addr` (no keep-alive): the status code and
/// the body. Enough for `/metrics` and the probes.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect for GET");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    conn.write_all(req.as_bytes()).await.expect("send GET");
    let mut raw = Vec::new();
    within(PROMPT, "the GET's answer", conn.read_to_end(&mut raw))
        .await
        .expect("read the GET's answer");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {head:?}"));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

/// The payload of a chunked HTTP/1.1 body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

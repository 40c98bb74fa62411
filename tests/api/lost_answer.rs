//! A commit whose `EXEC` answer is lost (issue 12): the connection to Redis
//! breaks after the EXEC went out and before its answer came back. The store
//! reads back whether it landed before it answers, so a SwitchCycle sent
//! without a request_id switches exactly once whatever happened to EXEC:
//! it ran (the answer is OK), it never reached Redis (the commit runs again:
//! OK), it reached Redis only later, after the read-back (the read-back made
//! it fail: OK, once), or nobody can tell (UNAVAILABLE, saying so).
//!
//! Between the server and a private redis-server sits [`Proxy`], a TCP proxy
//! in the test that forwards bytes both ways and, once armed, does one of
//! these things to the first `EXEC` it sees. Always the redis engine.
//!
//!   CARGO_TARGET_DIR=... cargo test --test api lost_answer -- --nocapture

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use synckairos::config::{Config, EngineKind, Secret};
use synckairos::grpc::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::helpers::*;
use crate::redis_server::RedisServer;

/// What the proxy does to the first EXEC it sees once armed.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// Forwards everything.
    Pass,
    /// Forwards the EXEC, lets Redis run it, and closes the connection
    /// before its answer is forwarded.
    CutAfterExec,
    /// Closes the connection instead of forwarding the EXEC.
    DropExec,
    /// Closes the connection to the client, holds the EXEC, and forwards it
    /// (on its still open connection to Redis) only when the next `WATCH`
    /// comes, on any connection, just before that WATCH.
    HoldExec,
    /// (internal) HoldExec after the cut: waiting for the next WATCH.
    WaitWatch,
    /// As `CutAfterExec`, then every connection is closed and new ones are
    /// refused until `up()`.
    CutThenDown,
}

const EXEC: &[u8] = b"*1\r\n$4\r\nEXEC\r\n";
const WATCH: &[u8] = b"\r\n$5\r\nWATCH\r\n";

struct Shared {
    redis: u16,
    mode: Mutex<Mode>,
    /// EXECs the proxy interfered with.
    cuts: AtomicUsize,
    /// Armed EXECs to let through before the one interfered with.
    skip: AtomicUsize,
    /// Connections are refused while set.
    down: AtomicBool,
    /// Ends every connection made so far.
    kill_all: Mutex<CancellationToken>,
    /// HoldExec: the next WATCH came; forward the held EXEC now.
    release_held: Notify,
    /// HoldExec: Redis has run the held EXEC.
    held_ran: Notify,
}

/// A TCP proxy on 127.0.0.1 in front of one redis-server.
struct Proxy {
    port: u16,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl Proxy {
    async fn start(redis: &RedisServer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            redis: redis.port,
            mode: Mutex::new(Mode::Pass),
            cuts: AtomicUsize::new(0),
            skip: AtomicUsize::new(0),
            down: AtomicBool::new(false),
            kill_all: Mutex::new(CancellationToken::new()),
            release_held: Notify::new(),
            held_ran: Notify::new(),
        });
        let stop = CancellationToken::new();
        let (s, stopped) = (shared.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let client = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((client, _)) => client,
                        Err(_) => return,
                    },
                    _ = stopped.cancelled() => return,
                };
                if s.down.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", s.redis)).await else {
                    continue;
                };
                let kill = s.kill_all.lock().unwrap().child_token();
                tokio::spawn(relay(s.clone(), client, server, kill));
            }
        });
        Proxy { port, shared, stop }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn arm(&self, mode: Mode) {
        self.arm_after(0, mode);
    }

    /// Arms `mode` for the EXEC after the next `skip` ones.
    fn arm_after(&self, skip: usize, mode: Mode) {
        self.shared.skip.store(skip, Ordering::SeqCst);
        *self.shared.mode.lock().unwrap() = mode;
    }

    fn cuts(&self) -> usize {
        self.shared.cuts.load(Ordering::SeqCst)
    }

    /// Accepts connections again (after `CutThenDown`).
    fn up(&self) {
        self.shared.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.shared.kill_all.lock().unwrap().cancel();
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// One proxied connection: bytes both ways until `kill`, with the armed
/// mode applied to the first EXEC the client sends.
async fn relay(s: Arc<Shared>, client: TcpStream, server: TcpStream, kill: CancellationToken) {
    let (client_rx, client_tx) = client.into_split();
    let (server_rx, server_tx) = server.into_split();
    // Once this connection's EXEC is met: Redis's answers are dropped
    // (`mute`), and the client's side of the connection is closed (`cut`).
    let (mute, cut) = (CancellationToken::new(), CancellationToken::new());
    let up = tokio::spawn(client_to_server(
        s.clone(),
        client_rx,
        server_tx,
        [mute.clone(), cut.clone()],
        kill.clone(),
    ));
    let down = tokio::spawn(server_to_client(server_rx, client_tx, [mute, cut], kill));
    let _ = tokio::join!(up, down);
}

async fn client_to_server(
    s: Arc<Shared>,
    mut client: OwnedReadHalf,
    mut server: OwnedWriteHalf,
    [mute, cut]: [CancellationToken; 2],
    kill: CancellationToken,
) {
    let mut buf = vec![0u8; 64 * 1024];
    // The end of the chunk before, so that a pattern split across reads is found.
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let n = tokio::select! {
            read = client.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = kill.cancelled() => return,
        };
        let chunk = &buf[..n];
        let mut seen = std::mem::take(&mut tail);
        seen.extend_from_slice(chunk);
        let mode = *s.mode.lock().unwrap();
        if mode == Mode::WaitWatch && contains(&seen, WATCH) {
            *s.mode.lock().unwrap() = Mode::Pass;
            s.release_held.notify_one();
            s.held_ran.notified().await;
        } else if mode != Mode::Pass
            && mode != Mode::WaitWatch
            && contains(&seen, EXEC)
            && s.skip
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_err()
        {
            *s.mode.lock().unwrap() = match mode {
                Mode::HoldExec => Mode::WaitWatch,
                _ => Mode::Pass,
            };
            s.cuts.fetch_add(1, Ordering::SeqCst);
            mute.cancel();
            match mode {
                Mode::DropExec => {
                    kill.cancel();
                    return;
                }
                Mode::HoldExec => {
                    cut.cancel();
                    s.release_held.notified().await;
                    let _ = server.write_all(chunk).await;
                    // Redis runs it in microseconds; its answer is dropped.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    s.held_ran.notify_one();
                    kill.cancelled().await;
                    return;
                }
                _ => {
                    let _ = server.write_all(chunk).await;
                    // Redis runs it in microseconds; its answer is dropped,
                    // then the connection closes.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if mode == Mode::CutThenDown {
                        s.down.store(true, Ordering::SeqCst);
                        s.kill_all.lock().unwrap().cancel();
                        *s.kill_all.lock().unwrap() = CancellationToken::new();
                    }
                    kill.cancel();
                    return;
                }
            }
        }
        if server.write_all(chunk).await.is_err() {
            return;
        }
        // Shorter than either pattern: one found always ends in the new chunk.
        let keep = seen.len().saturating_sub(WATCH.len().min(EXEC.len()) - 1);
        tail = seen.split_off(keep);
    }
}

async fn server_to_client(
    mut server: OwnedReadHalf,
    client: OwnedWriteHalf,
    [mute, cut]: [CancellationToken; 2],
    kill: CancellationToken,
) {
    let mut client = Some(client);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            read = server.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            // The client's side closes (FIN) at once; Redis's side is read
            // on, its answers dropped.
            _ = cut.cancelled(), if client.is_some() => {
                client = None;
                continue;
            }
            _ = kill.cancelled() => return,
        };
        if let Some(c) = client.as_mut().filter(|_| !mute.is_cancelled())
            && c.write_all(&buf[..n]).await.is_err()
        {
            return;
        }
    }
}

/// One server on the redis engine whose Redis is behind `proxy`.
async fn server_behind(proxy: &Proxy) -> TestApp {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        engine: EngineKind::Redis,
        redis_url: Some(Secret::new(proxy.url())),
        database_url: None,
        shutdown_grace: Duration::from_secs(1),
        ..Config::default()
    };
    launch(config, None, shared_isolation()).await
}

/// The stored version of session `id`, read from Redis itself (not through the proxy).
async fn stored_version(redis: &RedisServer, id: &str) -> u64 {
    let mut con = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("sk:*:s:default:{id}"))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "one state for {id}");
    let raw: Vec<u8> = redis::cmd("GET")
        .arg(&keys[0])
        .query_async(&mut con)
        .await
        .unwrap();
    let state: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    state["version"].as_u64().unwrap()
}

/// A started session (version 2, white to move) with a stream on it,
/// positioned after STARTED; then the proxy is armed with `mode`, and one
/// SwitchCycle without a request_id is sent. Its reply.
async fn switch_through(
    redis: &RedisServer,
    proxy: &Proxy,
    app: &mut TestApp,
    mode: Mode,
) -> (String, EventStream, Result<pb::Session, tonic::Status>) {
    let id = unique_id("lost");
    let (stream, started) = start_watched(&mut app.client, chess(&id, HOUR_MS)).await;
    assert_eq!(started.version, 2);
    let execs = exec_calls(redis).await;
    proxy.arm(mode);
    let t0 = Instant::now();
    let reply = app
        .client
        .switch_cycle(switch_req(&id))
        .await
        .map(|r| r.into_inner());
    let took = t0.elapsed();
    let execs = exec_calls(redis).await - execs;
    println!(
        "{mode:?}: answered in {took:?} after {execs} EXEC(s) in Redis: {:?}",
        reply.as_ref().map(|s| s.version)
    );
    assert_eq!(proxy.cuts(), 1, "the proxy met the switch's EXEC");
    let want = match mode {
        // The one EXEC ran; nothing runs again.
        Mode::CutAfterExec | Mode::CutThenDown => 1,
        // The first never reached Redis; the second committed.
        Mode::DropExec => 1,
        // The late one, failed by the read-back's writes, and the second.
        _ => 2,
    };
    assert_eq!(execs, want, "EXECs Redis ran for the switch");
    (id, stream, reply)
}

/// How many EXECs the Redis behind the proxy has run.
async fn exec_calls(redis: &RedisServer) -> u64 {
    crate::redis_server::command_calls(&redis.url(), "exec").await
}

/// The session switched exactly once (version 3, black to move), and its
/// stream got that one SWITCHED event.
async fn assert_switched_once(
    app: &mut TestApp,
    redis: &RedisServer,
    id: &str,
    stream: &mut EventStream,
    reply: Result<pb::Session, tonic::Status>,
) {
    let s = reply.expect("the switch is answered OK");
    assert_eq!(s.version, 3, "the answer is the switch");
    assert_eq!(s.active_participant_id, "black");
    assert_eq!(get(&mut app.client, id).await.version, 3);
    assert_eq!(stored_version(redis, id).await, 3, "switched exactly once");
    let e = next_change(stream).await;
    assert_eq!((event_type(&e), e.version), (pb::EventType::Switched, 3));
    assert_quiet(stream, Duration::from_millis(300)).await;
}

/// EXEC ran, its answer never came: the read-back finds this commit's own
/// state, and the switch is answered OK (its event published by the MULTI).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_that_ran_but_whose_answer_was_lost_is_answered_ok() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis).await;
    let mut app = server_behind(&proxy).await;
    let (id, mut stream, reply) =
        switch_through(&redis, &proxy, &mut app, Mode::CutAfterExec).await;
    assert_switched_once(&mut app, &redis, &id, &mut stream, reply).await;
}

/// EXEC never reached Redis: the read-back finds the state as read, and the
/// commit runs again (its plan is pure): OK, switched once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_that_never_reached_redis_commits_again() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis).await;
    let mut app = server_behind(&proxy).await;
    let (id, mut stream, reply) = switch_through(&redis, &proxy, &mut app, Mode::DropExec).await;
    assert_switched_once(&mut app, &redis, &id, &mut stream, reply).await;
}

/// EXEC reaches Redis late, after the read-back found nothing applied and
/// just before the commit runs again: the read-back wrote the state it read
/// (the same bytes), so the late EXEC's WATCH fails it, and the switch
/// still applies once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_that_arrives_after_the_read_back_cannot_apply_twice() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis).await;
    let mut app = server_behind(&proxy).await;
    let (id, mut stream, reply) = switch_through(&redis, &proxy, &mut app, Mode::HoldExec).await;
    assert_switched_once(&mut app, &redis, &id, &mut stream, reply).await;
}

/// EXEC ran and then Redis became unreachable, so the read-back fails too:
/// truly unknown. UNAVAILABLE, saying the change may have been applied and
/// to retry with a request_id (it was applied).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_that_cannot_be_read_back_is_unavailable_and_says_so() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis).await;
    let mut app = server_behind(&proxy).await;
    let (id, _stream, reply) = switch_through(&redis, &proxy, &mut app, Mode::CutThenDown).await;
    let status = assert_status(reply, Code::Unavailable, "may have been applied");
    assert!(status.message().contains("request_id"), "{status:?}");
    assert_eq!(stored_version(&redis, &id).await, 3, "it was applied");
    proxy.up();
}

/// A group commit (calls queued behind a commit of their bucket share the
/// next one) whose EXEC ran but whose answer was lost: every caller of the
/// group is answered OK, each session switched once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_caller_of_a_group_commit_whose_answer_was_lost_is_answered_ok() {
    use std::future::Future;
    use std::task::Poll;
    use synckairos::engine::{Command, Request};
    use synckairos::store::clock::Clock;
    use synckairos::store::redis::RedisStore;
    use synckairos::store::{self, SessionStore};

    let _iso = shared_isolation();
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis).await;
    // One bucket: every session's commit shares it.
    let settings = crate::replicas::store_settings(&proxy.url(), 1, 4);
    let store = RedisStore::connect(settings, Clock::new()).await.unwrap();
    let mut keys = Vec::new();
    for i in 0..4 {
        let k = store_key(&format!("group-{i}"));
        create_started_in(&*store, &k, ["a", "b"], 3_600_000).await;
        keys.push(k);
    }
    let switch = store::apply(Request::new(Command::Switch {
        from: None,
        next: None,
        lag_ms: None,
    }));
    // The first call commits alone; the other three queue behind it and
    // share the next commit, whose answer the proxy loses.
    proxy.arm_after(1, Mode::CutAfterExec);
    let execs = exec_calls(&redis).await;
    let mut calls: Vec<_> = keys
        .iter()
        .map(|k| Box::pin(store.update(k, switch.clone())))
        .collect();
    // Redis frozen while each call is polled once, so none finishes first.
    redis.pause();
    for call in calls.iter_mut() {
        let polled =
            std::future::poll_fn(|cx| Poll::Ready(std::pin::Pin::new(&mut *call).poll(cx))).await;
        assert!(
            polled.is_pending(),
            "a commit answered while Redis was frozen"
        );
    }
    redis.resume();
    let results = futures_util::future::join_all(calls).await;
    assert_eq!(proxy.cuts(), 1, "the proxy met the group's EXEC");
    assert_eq!(
        exec_calls(&redis).await - execs,
        2,
        "the lead's EXEC and the group's, nothing run again"
    );
    for (k, r) in keys.iter().zip(results) {
        let applied = r.unwrap_or_else(|e| panic!("{k}: {e}"));
        assert_eq!(applied.session.version, 3, "{k}");
        assert_eq!(
            stored_version(&redis, k.id.as_str()).await,
            3,
            "{k}: switched exactly once"
        );
    }
}

//! Graceful drain (issue 14): SIGTERM to the real binary, on the Redis
//! engine with the audit on, under load. The load client acts as a load
//! balancer would: it calls until `/ready` says not ready, then sends no new
//! call; but one of its workers is late (as a balancer whose endpoints update
//! late) and goes on for [`LATE`] into the pre-stop delay. Checked: `/ready`
//! 503 and gRPC health NOT_SERVING at once; no unary call fails; every
//! Subscribe stream gets every version of its session (the late ones too:
//! the fan-out outlives the calls) and ends with UNAVAILABLE, not all at the
//! same instant; every committed version reaches Postgres, although Postgres
//! stalls from SIGTERM for [`PG_STALL`] (a table lock: the writer's inserts
//! wait, so it still holds entries when the calls have drained, and the exit
//! waits for it to store them); the process exits 0 within the grace. The binary listens on `PORT` (Railway's variable), no
//! `SYNCKAIROS_LISTEN`. Alone (exclusive isolation): it has timing bounds.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use synckairos::grpc::pb;
use tonic::transport::Endpoint;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::*;
use crate::pg::TestDb;
use crate::probes::{grpc_health, http_get};
use crate::redis_server::RedisServer;

/// The binary's whole sequence must fit in this (its default).
const GRACE: Duration = Duration::from_secs(5);
const SESSIONS: usize = 6;
const STREAMS: usize = 8;
const WORKERS: usize = 4;
/// How long the late worker goes on calling after SIGTERM (less than the
/// pre-stop delay, 1 s).
const LATE: Duration = Duration::from_millis(500);
/// How long Postgres stalls from SIGTERM: past the calls' drain (about 2 s).
const PG_STALL: Duration = Duration::from_millis(2500);

/// The `synckairos` binary; its log goes to a file, shown when a check fails.
struct Binary {
    child: Child,
    log: std::path::PathBuf,
}

impl Binary {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn spawn_binary(port: u16, redis_url: &str, database_url: &str) -> Binary {
    let log = std::env::temp_dir().join(unique_id("sk-drain-log"));
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_synckairos"))
        .env("PORT", port.to_string())
        .env_remove("SYNCKAIROS_LISTEN")
        .env("SYNCKAIROS_ENGINE", "redis")
        .env("REDIS_URL", redis_url)
        .env("DATABASE_URL", database_url)
        .env_remove("SYNCKAIROS_SHUTDOWN_GRACE")
        .env_remove("SYNCKAIROS_PRESTOP_DELAY")
        .env_remove("SYNCKAIROS_API_KEYS_FILE")
        .env_remove("SYNCKAIROS_API_KEYS")
        .env_remove("SYNCKAIROS_METRICS_LISTEN")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        // No rate limit: the load is one caller.
        .env("SYNCKAIROS_MUTATION_RATE", "off")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("spawn synckairos");
    Binary { child, log }
}

/// What the load saw.
#[derive(Default)]
struct Load {
    /// Every version a call committed, by session.
    committed: HashMap<String, Vec<u64>>,
    calls: usize,
    failures: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_drains_streams_and_calls_and_audits_everything() {
    let _alone = exclusive_isolation();
    let redis = RedisServer::start();
    let db = TestDb::create();
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut binary = spawn_binary(port, &redis.url(), &db.url());

    // Up and ready.
    let t0 = Instant::now();
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok()
            && http_get(addr, "/ready").await.0 == 200
        {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the binary never became ready:\n{}",
            binary.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    db.wait_for_table("session_events", Duration::from_secs(20))
        .await;
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).unwrap();
    let mut client = connect(endpoint.clone()).await;

    let mut ids = Vec::new();
    let load = Arc::new(Mutex::new(Load::default()));
    for _ in 0..SESSIONS {
        let s = create_started(&mut client).await;
        load.lock()
            .unwrap()
            .committed
            .insert(s.session_id.clone(), vec![1, 2]);
        ids.push(s.session_id);
    }

    // Streams on two connections of their own, read until they end.
    let mut streams = Vec::new();
    for i in 0..STREAMS {
        let mut c = if i % 2 == 0 {
            connect(endpoint.clone()).await
        } else {
            client.clone()
        };
        let mut stream = subscribe(&mut c, subscribe_req(&ids[i % SESSIONS])).await;
        assert_eq!(
            event_type(&next_event(&mut stream).await),
            pb::EventType::Snapshot
        );
        streams.push(tokio::spawn(async move {
            let _c = c;
            let (mut events, mut last) = (0usize, 0u64);
            loop {
                match stream.message().await {
                    Ok(Some(e)) => {
                        events += 1;
                        last = last.max(e.version);
                    }
                    Ok(None) => return (Instant::now(), Ok(()), events, last),
                    Err(status) => return (Instant::now(), Err(status), events, last),
                }
            }
        }));
    }

    // The load: switches and reads until the balancer sees not ready.
    let stop_sending = Arc::new(AtomicBool::new(false));
    let late_stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let stop = if w == 0 { &late_stop } else { &stop_sending };
        let (mut c, ids, load, stop) = (client.clone(), ids.clone(), load.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut n = w;
            while !stop.load(Ordering::SeqCst) {
                let id = &ids[n % ids.len()];
                // Every session in turn; every third round of them a read.
                let read = (n / ids.len()) % 3 == 2;
                n += 1;
                let outcome = if read {
                    c.get_session(pb::GetSessionRequest {
                        session_id: id.clone(),
                    })
                    .await
                    .map(|_| None)
                } else {
                    c.switch_cycle(switch_req(id))
                        .await
                        .map(|r| Some(r.into_inner().version))
                };
                let mut load = load.lock().unwrap();
                load.calls += 1;
                match outcome {
                    Ok(Some(v)) => load.committed.entry(id.clone()).or_default().push(v),
                    Ok(None) => {}
                    Err(s) => load.failures.push(format!("{id}: {s:?}")),
                }
            }
        }));
    }
    // The balancer's probe: /ready every 10 ms.
    let balancer = {
        let stop = stop_sending.clone();
        tokio::spawn(async move {
            loop {
                let (status, body) = http_get(addr, "/ready").await;
                if status != 200 {
                    stop.store(true, Ordering::SeqCst);
                    return (Instant::now(), status, body);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    let calls_before = load.lock().unwrap().calls;
    assert!(
        calls_before > 20,
        "the load is running: {calls_before} calls"
    );

    let sigterm = Instant::now();
    let calls_at_sigterm = load.lock().unwrap().calls;
    let term = Command::new("kill")
        .args(["-TERM", &binary.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    let mut stall = Command::new("psql")
        .arg(db.url())
        .args([
            "-qtA",
            "-c",
            &format!(
                "BEGIN; LOCK TABLE session_events IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep({}); COMMIT;",
                PG_STALL.as_secs_f64()
            ),
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("psql");

    // Not ready at once, and gRPC health with it.
    let (seen, status, body) = within(PROMPT, "/ready turning 503", balancer)
        .await
        .unwrap();
    let after = seen - sigterm;
    println!("/ready 503 {after:?} after SIGTERM: {body}");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("draining"), "{body}");
    assert!(
        after < Duration::from_millis(250),
        "/ready turned 503 only {after:?} after SIGTERM"
    );
    assert_eq!(grpc_health(addr).await, ServingStatus::NotServing);
    tokio::time::sleep_until((sigterm + LATE).into()).await;
    late_stop.store(true, Ordering::SeqCst);

    for w in workers {
        within(PROMPT, "a load worker", w).await.unwrap();
    }
    let late_calls = load.lock().unwrap().calls - calls_at_sigterm;
    println!("{late_calls} calls after SIGTERM");
    assert!(
        late_calls > 10,
        "the late worker called during the pre-stop delay"
    );
    let mut ends = Vec::new();
    for (i, s) in streams.into_iter().enumerate() {
        let (at, outcome, events, last) = within(GRACE, "a stream's end", s).await.unwrap();
        let id = &ids[i % SESSIONS];
        let committed = load.lock().unwrap().committed[id].iter().copied().max();
        assert_eq!(
            Some(last),
            committed,
            "{id}: the stream's last version against the last committed"
        );
        match outcome {
            Err(status) if status.code() == tonic::Code::Unavailable => {}
            other => panic!(
                "a stream ended with {other:?}, not UNAVAILABLE\n{}",
                binary.log()
            ),
        }
        assert!(events > 0, "the stream carried the load's events");
        ends.push(at - sigterm);
    }
    ends.sort();
    println!("streams ended at {ends:?} after SIGTERM");
    assert!(
        ends[0] >= Duration::from_millis(900),
        "streams end after the pre-stop delay (1 s), not before: {ends:?}"
    );
    assert!(
        ends[STREAMS - 1] - ends[0] > Duration::from_millis(300),
        "the streams ended all together: {ends:?}"
    );

    let exit = within(GRACE + Duration::from_secs(2), "the process' exit", async {
        loop {
            if let Some(status) = binary.child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let took = sigterm.elapsed();
    println!("exited {exit:?} {took:?} after SIGTERM");
    assert!(stall.wait().unwrap().success(), "the stall's psql failed");
    assert!(exit.success(), "exit {exit:?}\n{}", binary.log());
    assert!(took < GRACE, "exited after {took:?}\n{}", binary.log());

    let load = load.lock().unwrap();
    assert!(
        load.failures.is_empty(),
        "{} of {} calls failed: {:?}",
        load.failures.len(),
        load.calls,
        load.failures
    );
    // Every committed version is in Postgres: exactly 1..=last per session.
    let rows =
        db.sql("SELECT session_id, count(*), max(version) FROM session_events GROUP BY session_id");
    let stored: HashMap<String, (u64, u64)> = rows
        .lines()
        .filter_map(|l| {
            let mut f = l.split('|');
            Some((
                f.next()?.to_owned(),
                (f.next()?.parse().ok()?, f.next()?.parse().ok()?),
            ))
        })
        .collect();
    let mut total = 0;
    for (id, versions) in &load.committed {
        let last = *versions.iter().max().unwrap();
        total += versions.len();
        assert_eq!(
            stored.get(id),
            Some(&(last, last)),
            "{id}: committed up to version {last}, Postgres holds (count, max) {:?}\n{}",
            stored.get(id),
            binary.log()
        );
    }
    println!(
        "{} calls, {total} versions committed and audited",
        load.calls
    );
}

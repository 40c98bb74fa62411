//! Prometheus metrics on `SYNCKAIROS_METRICS_LISTEN` (src/prometheus.rs,
//! src/grpc/observe.rs): every name is there from the start, calls are
//! counted under go-grpc-prometheus's names by method and code, streams'
//! messages and ends are counted, and the domain series move when their
//! events happen. The recorder is one per process, shared by every server of
//! the test binary, so the tests that count calls run the real binary (a
//! process of their own, whose counts are only theirs).

use std::net::SocketAddr;
use std::time::Duration;

use synckairos::config::EngineKind;
use synckairos::grpc::pb;
use tonic::Code;

use crate::child::{ChildReplica, free_port};
use crate::helpers::*;
use crate::redis_server::RedisServer;

fn with_metrics(c: &mut synckairos::config::Config) {
    c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
}

async fn scrape(app: &TestApp) -> String {
    scrape_at(app.metrics_addr.expect("metrics are on")).await
}

async fn scrape_at(addr: SocketAddr) -> String {
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The real binary with metrics on (and `env`), on the engine of the suite
/// (a private Redis when it is redis): its client, and where `/metrics` is.
struct Metered {
    _child: ChildReplica,
    client: Client,
    metrics: SocketAddr,
    _redis: Option<RedisServer>,
}

async fn metered(env: &[(&str, &str)]) -> Metered {
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut all: Vec<(&str, String)> = vec![("SYNCKAIROS_METRICS_LISTEN", metrics.to_string())];
    let redis = (test_engine() == EngineKind::Redis).then(RedisServer::start);
    if let Some(r) = &redis {
        all.push(("SYNCKAIROS_ENGINE", "redis".into()));
        all.push(("REDIS_URL", r.url()));
    }
    all.extend(env.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let (child, client, _) = ChildReplica::spawn_with(&all).await;
    Metered {
        _child: child,
        client,
        metrics,
        _redis: redis,
    }
}

/// The sum of the samples of `name` whose labels include every one of `labels`.
fn sample(scrape: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest),
                None => (series, ""),
            };
            (n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

fn method(name: &'static str) -> [(&'static str, &'static str); 2] {
    [
        ("grpc_service", "synckairos.v1.SyncService"),
        ("grpc_method", name),
    ]
}

#[tokio::test]
async fn every_metric_name_is_in_the_first_scrape() {
    let app = spawn_app_with(with_metrics).await;
    let body = scrape(&app).await;
    for name in synckairos::prometheus::all_names() {
        assert!(
            body.lines()
                .any(|l| l.starts_with(&format!("# TYPE {name} "))),
            "{name} is not in the scrape"
        );
    }
    // go-grpc-prometheus pre-registers every code of every method.
    let ok = [("grpc_method", "SwitchCycle"), ("grpc_code", "DataLoss")];
    assert!(body.contains("grpc_server_handled_total{"));
    assert!(
        body.lines()
            .any(|l| ok.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))),
        "SwitchCycle's DataLoss series is not pre-registered"
    );
}

#[tokio::test]
async fn the_listener_answers_only_metrics_and_the_probes() {
    let app = spawn_app_with(with_metrics).await;
    let addr = app.metrics_addr.unwrap();
    let (status, body) = http_get(addr, "/health").await;
    assert_eq!((status, body.contains("alive")), (200, true), "{body}");
    let (status, body) = http_get(addr, "/ready").await;
    assert_eq!((status, body.contains("\"ready\"")), (200, true), "{body}");
    let body = scrape(&app).await;
    for check in ["store", "pubsub", "audit", "draining"] {
        assert_eq!(
            sample(&body, "synckairos_ready", &[("check", check)]),
            1.0,
            "{check}"
        );
    }
    let (status, _) = http_get(addr, "/nope").await;
    assert_eq!(status, 404);
    let (status, _) = http_get(addr, "/metrics/../../etc/passwd").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn unary_calls_are_counted_by_method_and_code() {
    let mut app = metered(&[]).await;
    let before = scrape_at(app.metrics).await;
    for _ in 0..3 {
        app.client
            .get_server_time(pb::GetServerTimeRequest {})
            .await
            .unwrap();
    }
    for bad in ["", "a b"] {
        let r = app
            .client
            .get_session(pb::GetSessionRequest {
                session_id: bad.into(),
            })
            .await;
        assert_code(r, Code::InvalidArgument);
    }
    let after = scrape_at(app.metrics).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels) - sample(&before, name, labels)
    };
    let time = method("GetServerTime");
    let get = method("GetSession");
    assert_eq!(delta("grpc_server_started_total", &time), 3.0);
    assert_eq!(delta("grpc_server_msg_received_total", &time), 3.0);
    let ok = [time[0], time[1], ("grpc_code", "OK")];
    assert_eq!(delta("grpc_server_handled_total", &ok), 3.0);
    assert_eq!(delta("grpc_server_msg_sent_total", &time), 3.0);
    assert_eq!(delta("grpc_server_handling_seconds_count", &time), 3.0);
    let bad = [get[0], get[1], ("grpc_code", "InvalidArgument")];
    assert_eq!(delta("grpc_server_handled_total", &bad), 2.0);
    assert_eq!(delta("grpc_server_started_total", &get), 2.0);
    // A refused call sends no message.
    assert_eq!(delta("grpc_server_msg_sent_total", &get), 0.0);
    assert_eq!(
        sample(
            &after,
            "grpc_server_handled_total",
            &[("grpc_type", "unary"), ("grpc_method", "GetServerTime")]
        ),
        sample(&after, "grpc_server_started_total", &time)
    );
}

#[tokio::test]
async fn a_stream_counts_its_messages_while_open_and_its_end_when_dropped() {
    let mut app = metered(&[]).await;
    let session = create_started(&mut app.client).await;
    let id = session.session_id.clone();
    let before = scrape_at(app.metrics).await;
    let mut stream = subscribe(&mut app.client, subscribe_req(&id)).await;
    next_event(&mut stream).await; // the snapshot
    for _ in 0..3 {
        switch(&mut app.client, &id).await;
        next_change(&mut stream).await;
    }
    let open = scrape_at(app.metrics).await;
    let sub = method("Subscribe");
    let delta = |s: &str, name: &str, labels: &[(&str, &str)]| {
        sample(s, name, labels) - sample(&before, name, labels)
    };
    assert_eq!(delta(&open, "grpc_server_started_total", &sub), 1.0);
    assert!(delta(&open, "grpc_server_msg_sent_total", &sub) >= 4.0);
    assert_eq!(delta(&open, "synckairos_streams_open", &[]), 1.0);
    assert_eq!(
        delta(
            &open,
            "synckairos_tenant_streams_open",
            &[("tenant", "default")]
        ),
        1.0
    );
    // Still open: not handled yet.
    let handled = [sub[0], sub[1], ("grpc_code", "Canceled")];
    assert_eq!(delta(&open, "grpc_server_handled_total", &handled), 0.0);
    // Deliveries were timed from their commits.
    assert!(delta(&open, "synckairos_fanout_delivery_seconds_count", &[]) >= 3.0);
    drop(stream);
    let closed = within(PROMPT, "the stream's end counted", async {
        loop {
            let s = scrape_at(app.metrics).await;
            if delta(&s, "grpc_server_handled_total", &handled) == 1.0 {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(delta(&closed, "synckairos_streams_open", &[]), 0.0);
    assert_eq!(
        delta(&closed, "grpc_server_handling_seconds_count", &sub),
        1.0
    );
}

#[tokio::test]
async fn a_flag_is_timed_from_its_deadline_and_a_rate_limit_counted_by_tenant() {
    let mut app = metered(&[
        ("SYNCKAIROS_CREATE_RATE", "1"),
        ("SYNCKAIROS_CREATE_BURST", "1"),
    ])
    .await;
    let before = scrape_at(app.metrics).await;
    let id = unique_id("metrics-flag");
    create(&mut app.client, chess(&id, 50)).await;
    start(&mut app.client, &id).await;
    let refused = app.client.create_session(chess(&unique_id("x"), 50)).await;
    assert_code(refused, Code::ResourceExhausted);
    let flagged = within(PROMPT, "the flag counted", async {
        loop {
            let s = scrape_at(app.metrics).await;
            let n = sample(&s, "synckairos_timer_flag_lateness_seconds_count", &[])
                - sample(&before, "synckairos_timer_flag_lateness_seconds_count", &[]);
            if n >= 1.0 {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        status_of(&get(&mut app.client, &id).await),
        pb::Status::Expired
    );
    let delta = |name: &str, labels: &[(&str, &str)]| {
        sample(&flagged, name, labels) - sample(&before, name, labels)
    };
    assert_eq!(
        delta("synckairos_timer_flag_lateness_seconds_count", &[]),
        1.0
    );
    // Late by less than the safety poll: the flag was woken for, not polled.
    let late = delta("synckairos_timer_flag_lateness_seconds_sum", &[]);
    assert!((0.0..0.5).contains(&late), "{late}");
    assert!(delta("synckairos_timer_claims_total", &[]) >= 1.0);
    assert_eq!(
        delta(
            "synckairos_tenant_rate_limited_total",
            &[("tenant", "default"), ("limit", "create")]
        ),
        1.0
    );
    // create, start, the flag (group commits may join, never split them), on
    // either engine.
    let commits = delta("synckairos_store_commit_seconds_count", &[]);
    assert!(commits >= 2.0, "{commits}");
}

#[tokio::test]
async fn the_store_reports_its_pool_and_counts_redis_failures_by_kind() {
    // The Redis engine whichever engine the suite runs on: these are its series.
    let mut redis = RedisServer::start();
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (_child, mut client, _) = ChildReplica::spawn_with(&[
        ("SYNCKAIROS_ENGINE", "redis".into()),
        ("REDIS_URL", redis.url()),
        ("SYNCKAIROS_REDIS_POOL", "7".into()),
        ("SYNCKAIROS_METRICS_LISTEN", metrics.to_string()),
    ])
    .await;
    let id = create_started(&mut client).await.session_id;
    switch(&mut client, &id).await;
    // The pool's gauges are read at each upkeep (every second).
    let up = within(PROMPT, "the pool's gauges", async {
        loop {
            let s = scrape_at(metrics).await;
            if sample(&s, "synckairos_store_pool_size", &[]) == 7.0 {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let open = sample(&up, "synckairos_store_pool_connections", &[]);
    assert!((1.0..=7.0).contains(&open), "{open}");
    assert!(sample(&up, "synckairos_store_commit_seconds_count", &[]) >= 2.0);
    assert!(sample(&up, "synckairos_store_pool_wait_seconds_count", &[]) >= 2.0);
    let errors = |s: &str| sample(s, "synckairos_store_redis_errors_total", &[]);
    assert_eq!(errors(&up), 0.0);
    redis.stop();
    let r = client.switch_cycle(switch_req(&id)).await;
    assert_code(r, Code::Unavailable);
    let after = scrape_at(metrics).await;
    assert!(errors(&after) > 0.0, "{after}");
    let unavailable = [("grpc_method", "SwitchCycle"), ("grpc_code", "Unavailable")];
    assert_eq!(
        sample(&after, "grpc_server_handled_total", &unavailable),
        1.0
    );
}

/// The access log's lines of a run of the binary with `env` (JSON logs,
/// `RUST_LOG=warn`), after two calls: one answered OK, one refused.
async fn access_lines(env: &[(&str, &str)]) -> Vec<serde_json::Value> {
    let log = std::env::temp_dir().join(unique_id("sk-access"));
    let mut all: Vec<(&str, String)> = vec![
        ("SYNCKAIROS_LOG_FORMAT", "json".into()),
        ("RUST_LOG", "warn".into()),
    ];
    all.extend(env.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let (mut child, mut client, _) = ChildReplica::spawn_logged(&all, Some(&log)).await;
    client
        .get_server_time(pb::GetServerTimeRequest {})
        .await
        .unwrap();
    let r = client
        .get_session(pb::GetSessionRequest {
            session_id: "no\u{1}".into(),
        })
        .await;
    assert_code(r, Code::InvalidArgument);
    child.kill();
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "synckairos::access")
        .collect()
}

#[tokio::test]
async fn the_access_log_is_one_line_per_call_when_on_whatever_rust_log_says() {
    let on = access_lines(&[("SYNCKAIROS_ACCESS_LOG", "on")]).await;
    let line = |method: &str| {
        on.iter()
            .find(|v| v["fields"]["method"] == method)
            .unwrap_or_else(|| panic!("no access line for {method}: {on:#?}"))
    };
    let ok = &line("synckairos.v1.SyncService/GetServerTime")["fields"];
    let bad = &line("synckairos.v1.SyncService/GetSession")["fields"];
    assert_eq!(
        (&ok["code"], &bad["code"]),
        (&"OK".into(), &"InvalidArgument".into())
    );
    for f in [ok, bad] {
        assert_eq!(f["tenant"], "default", "{f}");
        assert_eq!(f["caller"], "open", "{f}");
        assert!(f["micros"].as_u64().is_some(), "{f}");
        let peer = f["peer"].as_str().unwrap_or_default();
        assert!(peer.starts_with("127.0.0.1:"), "{f}");
    }
    // One line per call: the spawn's own probe, then these two.
    let calls = on
        .iter()
        .filter(|v| v["fields"]["method"] == "synckairos.v1.SyncService/GetSession")
        .count();
    assert_eq!(calls, 1, "{on:#?}");
    let off = access_lines(&[]).await;
    assert!(off.is_empty(), "{off:#?}");
}

/// The open descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[tokio::test]
async fn a_flood_of_idle_connections_to_the_metrics_port_is_bounded_and_reaped() {
    use tokio::io::AsyncReadExt;
    let app = metered(&[]).await;
    let pid = app._child.pid();
    let before = open_fds(pid);
    // Connections that never send a byte: the kernel completes them (the
    // backlog), the server takes at most MAX_CONNECTIONS of them.
    let flood = synckairos::prometheus::MAX_CONNECTIONS + 40;
    let mut idle = Vec::new();
    for _ in 0..flood {
        match tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(app.metrics),
        )
        .await
        {
            Ok(Ok(c)) => idle.push(c),
            _ => break,
        }
    }
    assert!(
        idle.len() > synckairos::prometheus::MAX_CONNECTIONS,
        "{}",
        idle.len()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = open_fds(pid).saturating_sub(before);
    assert!(
        held <= synckairos::prometheus::MAX_CONNECTIONS + 2,
        "{held} descriptors for {} idle connections",
        idle.len()
    );
    // The gRPC port is not starved meanwhile.
    let mut client = app.client.clone();
    client
        .get_server_time(pb::GetServerTimeRequest {})
        .await
        .unwrap();
    // A connection that sends no request is closed (its header timeout).
    let mut first = idle.swap_remove(0);
    let mut buf = [0u8; 64];
    let read = within(
        Duration::from_secs(10),
        "the idle connection closed",
        first.read(&mut buf),
    )
    .await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    drop(idle);
    // And the listener serves again once the flood is gone.
    let s = within(
        Duration::from_secs(10),
        "a scrape after the flood",
        scrape_at(app.metrics),
    )
    .await;
    assert!(s.contains("grpc_server_started_total"));
}

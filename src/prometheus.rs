//! Prometheus metrics: the names (`names`), their help texts and histogram
//! buckets, the process-wide recorder, and the `/metrics` HTTP listener of
//! `SYNCKAIROS_METRICS_LISTEN` (which also answers `/health` and `/ready`;
//! HTTP/1.1, at most `MAX_CONNECTIONS` connections at once, each bounded in
//! time).
//!
//! Rooms record through the `metrics` facade (`::metrics::counter!(names::X)`
//! and so on). With no listener configured no recorder is installed, and
//! every recording is a no-op: an atomic load and a branch. The recorder is
//! global to the process (the `metrics` facade has one); `install` is
//! idempotent, so several `Application`s in one process (the tests) share it.
//!
//! Names follow go-grpc-prometheus for the per-RPC series and carry the
//! `synckairos_` prefix otherwise, units in the name. Every name is
//! registered at `install` (counters and gauges at 0; a histogram's `TYPE`
//! and `HELP` lines, its buckets from its first sample on), so a scrape
//! lists each one before anything happened. Labels are bounded: RPC names from the proto, gRPC codes,
//! error kinds, readiness checks and tenants (the keys file bounds them);
//! never a session id.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub use metrics_exporter_prometheus::PrometheusHandle;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Every metric name, once.
pub mod names {
    pub const GRPC_STARTED: &str = "grpc_server_started_total";
    pub const GRPC_HANDLED: &str = "grpc_server_handled_total";
    pub const GRPC_HANDLING_SECONDS: &str = "grpc_server_handling_seconds";
    pub const GRPC_MSG_RECEIVED: &str = "grpc_server_msg_received_total";
    pub const GRPC_MSG_SENT: &str = "grpc_server_msg_sent_total";

    pub const STORE_COMMIT_SECONDS: &str = "synckairos_store_commit_seconds";
    pub const STORE_COMMIT_CONFLICTS: &str = "synckairos_store_commit_conflicts_total";
    pub const STORE_COMMIT_RETRIES: &str = "synckairos_store_commit_retries_total";
    pub const STORE_GROUP_COMMIT_SIZE: &str = "synckairos_store_group_commit_size";
    pub const STORE_POOL_WAIT_SECONDS: &str = "synckairos_store_pool_wait_seconds";
    pub const STORE_POOL_CONNECTIONS: &str = "synckairos_store_pool_connections";
    pub const STORE_POOL_SIZE: &str = "synckairos_store_pool_size";
    pub const STORE_REDIS_ERRORS: &str = "synckairos_store_redis_errors_total";

    pub const TIMER_FLAG_LATENESS_SECONDS: &str = "synckairos_timer_flag_lateness_seconds";
    pub const TIMER_CLAIMS: &str = "synckairos_timer_claims_total";
    pub const TIMER_RECLAIMS: &str = "synckairos_timer_reclaims_total";
    pub const TIMER_EMPTY_FIRINGS: &str = "synckairos_timer_empty_firings_total";

    pub const STREAMS_OPEN: &str = "synckairos_streams_open";
    pub const PUBSUB_RECONNECTS: &str = "synckairos_pubsub_reconnects_total";
    pub const FANOUT_GAPS_FILLED: &str = "synckairos_fanout_gaps_filled_total";
    pub const FANOUT_LAGGED_SNAPSHOTS: &str = "synckairos_fanout_lagged_snapshots_total";
    pub const FANOUT_DELIVERY_SECONDS: &str = "synckairos_fanout_delivery_seconds";
    pub const FANOUT_WATCH_DROPPED: &str = "synckairos_fanout_watch_dropped_total";

    pub const AUDIT_BACKLOG: &str = "synckairos_audit_backlog";
    pub const AUDIT_LAG_SECONDS: &str = "synckairos_audit_lag_seconds";
    pub const AUDIT_ROWS_WRITTEN: &str = "synckairos_audit_rows_written_total";
    pub const AUDIT_ROWS_DEAD_LETTERED: &str = "synckairos_audit_rows_dead_lettered_total";

    pub const TENANT_STREAMS_OPEN: &str = "synckairos_tenant_streams_open";
    pub const TENANT_RATE_LIMITED: &str = "synckairos_tenant_rate_limited_total";

    pub const READY: &str = "synckairos_ready";
    pub const BUILD_INFO: &str = "synckairos_build_info";
}

use names::*;

/// What a histogram's buckets are for.
#[derive(Clone, Copy)]
enum Buckets {
    /// A call or a commit: 100 µs to 10 s.
    Latency,
    /// Waiting for a pooled connection: 10 µs to 1 s.
    Wait,
    /// Sessions per commit: 1 to 512.
    Count,
}

impl Buckets {
    fn values(self) -> &'static [f64] {
        match self {
            Buckets::Latency => &[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ],
            Buckets::Wait => &[
                0.00001, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 1.0,
            ],
            Buckets::Count => &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
        }
    }
}

enum Kind {
    Counter,
    Gauge,
    Histogram(Buckets),
}

/// Every metric with its kind and help text: what `install` registers and
/// describes, and what docs/deploy.md's table lists.
const ALL: &[(&str, Kind, &str)] = &[
    (GRPC_STARTED, Kind::Counter, "RPCs started on the server."),
    (
        GRPC_HANDLED,
        Kind::Counter,
        "RPCs completed on the server, by gRPC code (a stream when it ends).",
    ),
    (
        GRPC_HANDLING_SECONDS,
        Kind::Histogram(Buckets::Latency),
        "Time from the start of an RPC to its end (a stream's whole life).",
    ),
    (
        GRPC_MSG_RECEIVED,
        Kind::Counter,
        "Request messages received (one per unary or server-streaming call).",
    ),
    (
        GRPC_MSG_SENT,
        Kind::Counter,
        "Response messages sent: one per OK unary reply, one per Subscribe message.",
    ),
    (
        STORE_COMMIT_SECONDS,
        Kind::Histogram(Buckets::Latency),
        "One versioned commit to the store (a create, change or delete), its retries included.",
    ),
    (
        STORE_COMMIT_CONFLICTS,
        Kind::Counter,
        "Commit attempts that lost a race with another writer (Redis EXEC aborted by WATCH).",
    ),
    (
        STORE_COMMIT_RETRIES,
        Kind::Counter,
        "Commit attempts made again after a lost race or a lost answer that had not landed.",
    ),
    (
        STORE_GROUP_COMMIT_SIZE,
        Kind::Histogram(Buckets::Count),
        "Sessions written by one commit (a Redis group commit or timer burst has several; the memory engine always 1).",
    ),
    (
        STORE_POOL_WAIT_SECONDS,
        Kind::Histogram(Buckets::Wait),
        "Time spent waiting for a pooled Redis connection.",
    ),
    (
        STORE_POOL_CONNECTIONS,
        Kind::Gauge,
        "Redis connections of the store's pool, by state (idle, in_use).",
    ),
    (
        STORE_POOL_SIZE,
        Kind::Gauge,
        "Most Redis connections the store's pool may open (SYNCKAIROS_REDIS_POOL).",
    ),
    (
        STORE_REDIS_ERRORS,
        Kind::Counter,
        "Failed Redis exchanges by kind: io, timeout, response (Redis answered an error), pool.",
    ),
    (
        TIMER_FLAG_LATENESS_SECONDS,
        Kind::Histogram(Buckets::Latency),
        "How long after its deadline a flag was committed (commit time minus deadline).",
    ),
    (
        TIMER_CLAIMS,
        Kind::Counter,
        "Deadlines this replica claimed to fire.",
    ),
    (
        TIMER_RECLAIMS,
        Kind::Counter,
        "Deadlines claimed again after an earlier claim's lease expired (a replica died or stalled).",
    ),
    (
        TIMER_EMPTY_FIRINGS,
        Kind::Counter,
        "Claimed deadlines that found nothing due when fired (moved or settled meanwhile).",
    ),
    (
        STREAMS_OPEN,
        Kind::Gauge,
        "Subscribe and WatchSessions streams open on this replica.",
    ),
    (
        PUBSUB_RECONNECTS,
        Kind::Counter,
        "Times the Redis Pub/Sub connection was opened again after it dropped.",
    ),
    (
        FANOUT_GAPS_FILLED,
        Kind::Counter,
        "Events a stream read back from the event log to fill a gap in what it was handed.",
    ),
    (
        FANOUT_LAGGED_SNAPSHOTS,
        Kind::Counter,
        "Snapshots sent to a stream that fell behind, in place of the events it missed.",
    ),
    (
        FANOUT_WATCH_DROPPED,
        Kind::Counter,
        "Events an all-sessions WatchSessions could neither queue nor mark for a snapshot (its lagged set was full).",
    ),
    (
        FANOUT_DELIVERY_SECONDS,
        Kind::Histogram(Buckets::Latency),
        "From an event's commit (the store's clock) to its hand-over to a local stream.",
    ),
    (
        AUDIT_BACKLOG,
        Kind::Gauge,
        "Audit entries read by this replica's writer and not yet in PostgreSQL.",
    ),
    (
        AUDIT_LAG_SECONDS,
        Kind::Gauge,
        "Age of the oldest audit entry this replica's writer holds (0 when it holds none).",
    ),
    (
        AUDIT_ROWS_WRITTEN,
        Kind::Counter,
        "Audit rows written to PostgreSQL.",
    ),
    (
        AUDIT_ROWS_DEAD_LETTERED,
        Kind::Counter,
        "Audit entries PostgreSQL refused, set aside in the dead-letter table.",
    ),
    (
        TENANT_STREAMS_OPEN,
        Kind::Gauge,
        "Subscribe and WatchSessions streams open on this replica, by tenant.",
    ),
    (
        TENANT_RATE_LIMITED,
        Kind::Counter,
        "Calls refused RESOURCE_EXHAUSTED by a rate limit, by tenant and limit (create, mutation).",
    ),
    (
        READY,
        Kind::Gauge,
        "Readiness, by check (store, pubsub, audit, draining): 1 when the check passes.",
    ),
    (
        BUILD_INFO,
        Kind::Gauge,
        "1, labelled with the version of this build.",
    ),
];

/// The names of every metric, for tests and docs.
pub fn all_names() -> impl Iterator<Item = &'static str> {
    ALL.iter().map(|(name, _, _)| *name)
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Whether a recorder is installed (metrics are on in this process).
pub fn enabled() -> bool {
    HANDLE.get().is_some()
}

/// Installs the process-wide recorder (once; later calls return the same
/// handle) and registers every metric.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let mut builder = PrometheusBuilder::new();
    for (name, kind, _) in ALL {
        if let Kind::Histogram(b) = kind {
            builder =
                builder.set_buckets_for_metric(Matcher::Full((*name).to_owned()), b.values())?;
        }
    }
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    // Another thread may have won the race: then its recorder stays, and so
    // does its handle.
    if ::metrics::set_global_recorder(recorder).is_err() {
        return HANDLE
            .get()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("another metrics recorder is installed"));
    }
    let handle = HANDLE.get_or_init(|| handle).clone();
    register();
    Ok(handle)
}

/// Describes every metric and makes the label-less ones appear at zero.
fn register() {
    for (name, kind, help) in ALL {
        let name = *name;
        match kind {
            Kind::Counter => {
                ::metrics::describe_counter!(name, *help);
                if !labelled(name) {
                    ::metrics::counter!(name).increment(0);
                }
            }
            Kind::Gauge => {
                ::metrics::describe_gauge!(name, *help);
                if !labelled(name) {
                    ::metrics::gauge!(name).set(0.0);
                }
            }
            Kind::Histogram(_) => {
                ::metrics::describe_histogram!(name, *help);
                // Registered, so that its TYPE and HELP lines are there
                // before its first sample.
                if !labelled(name) {
                    let _ = ::metrics::histogram!(name);
                }
            }
        }
    }
    ::metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    for kind in RedisErrorKind::ALL {
        ::metrics::counter!(STORE_REDIS_ERRORS, "kind" => kind.label()).increment(0);
    }
    // The tenant of open mode (and of callers without one), so that the
    // per-tenant names are listed before any tenant's first stream.
    ::metrics::gauge!(TENANT_STREAMS_OPEN, "tenant" => "default").set(0.0);
    for limit in ["create", "mutation"] {
        ::metrics::counter!(TENANT_RATE_LIMITED, "tenant" => "default", "limit" => limit)
            .increment(0);
    }
    for check in ["store", "pubsub", "audit", "draining"] {
        ::metrics::gauge!(READY, "check" => check).set(0.0);
    }
    for state in ["idle", "in_use"] {
        ::metrics::gauge!(STORE_POOL_CONNECTIONS, "state" => state).set(0.0);
    }
}

/// The series that only exist with labels (registered by their owners).
fn labelled(name: &str) -> bool {
    matches!(
        name,
        GRPC_STARTED
            | GRPC_HANDLED
            | GRPC_HANDLING_SECONDS
            | GRPC_MSG_RECEIVED
            | GRPC_MSG_SENT
            | STORE_POOL_CONNECTIONS
            | STORE_REDIS_ERRORS
            | TENANT_STREAMS_OPEN
            | TENANT_RATE_LIMITED
            | READY
            | BUILD_INFO
    )
}

/// How a Redis exchange failed, for `synckairos_store_redis_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisErrorKind {
    /// The connection failed or dropped.
    Io,
    /// No answer within the I/O timeout.
    Timeout,
    /// Redis answered with an error.
    Response,
    /// No connection could be had from the pool.
    Pool,
}

impl RedisErrorKind {
    pub const ALL: [RedisErrorKind; 4] = [Self::Io, Self::Timeout, Self::Response, Self::Pool];

    pub fn label(self) -> &'static str {
        match self {
            Self::Io => "io",
            Self::Timeout => "timeout",
            Self::Response => "response",
            Self::Pool => "pool",
        }
    }

    /// Counts one failure of this kind.
    pub fn count(self) {
        ::metrics::counter!(STORE_REDIS_ERRORS, "kind" => self.label()).increment(1);
    }
}

/// A duration as the seconds a histogram records.
pub fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// A probe's answer for a path (`None`: 404).
pub type ProbeAnswer = Arc<dyn Fn(&str) -> Option<(http::StatusCode, String)> + Send + Sync>;

/// What the listener answers besides `/metrics`.
#[derive(Clone)]
pub struct Probes {
    /// `/health` and `/ready` (the same answers as on the gRPC port), given
    /// the path; `None`: 404.
    pub answer: ProbeAnswer,
    /// Run before each scrape is rendered (gauges read at that moment).
    pub on_scrape: Arc<dyn Fn() + Send + Sync>,
}

/// How often histograms are folded and idle series swept (the recorder
/// without its own listener needs it done).
const UPKEEP: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` (and the probes) on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    probes: Probes,
    shutdown: CancellationToken,
) {
    use axum::routing::get;
    let addr = listener.local_addr().ok();
    let render = handle.clone();
    let Probes { answer, on_scrape } = probes;
    let router = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let render = render.clone();
                on_scrape();
                async move {
                    (
                        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        render.render(),
                    )
                }
            }),
        )
        .fallback(move |uri: http::Uri| {
            let answer = answer.clone();
            async move {
                match answer(uri.path()) {
                    Some((status, body)) => (
                        status,
                        [(http::header::CONTENT_TYPE, "application/json")],
                        body,
                    ),
                    None => (
                        http::StatusCode::NOT_FOUND,
                        [(http::header::CONTENT_TYPE, "text/plain")],
                        "not found: /metrics, /health, /ready\n".to_owned(),
                    ),
                }
            }
        });
    let upkeep = {
        let shutdown = shutdown.clone();
        async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(UPKEEP) => handle.run_upkeep(),
                }
            }
        }
    };
    if let Some(addr) = addr {
        info!(%addr, "serving Prometheus metrics on /metrics");
    }
    tokio::join!(accept(listener, router, shutdown), upkeep);
}

/// Connections the listener serves at once; more wait in the kernel's
/// backlog (holding no descriptor of this process) until one ends. A
/// scraper needs one; this leaves room for several and for probes.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a connection may take to send a request's head, and how long
/// it may live at all: a scrape takes milliseconds, so a client that sends
/// nothing, or never reads, gives its connection back within these.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// HTTP/1.1 on `listener`, at most `MAX_CONNECTIONS` at once, each bounded
/// in time, until `shutdown` (open connections are dropped then). The
/// listener shares the process's file descriptors with the gRPC port, so a
/// flood here must not be able to take them all.
async fn accept(listener: TcpListener, router: axum::Router, shutdown: CancellationToken) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => return,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, say: wait a little, never spin.
                    warn!(error = %e, "the metrics listener could not accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(router.clone());
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(CONNECTION_LIFETIME) => {}
                _ = conn => {}
            }
        });
    }
}

/// Binds `SYNCKAIROS_METRICS_LISTEN`; the error names the variable.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("SYNCKAIROS_METRICS_LISTEN: cannot bind {addr}: {e}"))
}

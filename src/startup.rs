//! `Application`: the only place that wires every room together. `build`
//! makes one decision per function (the store of the configured engine, its
//! fan-out, the audit trail), binds the listener (port 0 works, for tests)
//! and reports the port. `run_until_stopped` serves until the given future
//! resolves (SIGTERM or SIGINT in main.rs), then drains.
//!
//! # Readiness
//!
//! One [`Readiness`] (src/probes.rs) says whether this replica should get
//! traffic: the store answers its ping (re-checked every second by the
//! health task, which also runs the store's upkeep), the Pub/Sub connection
//! is up (told by the fan-out task), the audit writer is not stuck, and no
//! SIGTERM has come. The same port answers HTTP/1.1 `GET /health` and
//! `GET /ready` from it (grpc/probes.rs), and `grpc.health.v1.Health` (both
//! "" and `synckairos.v1.SyncService`) is SERVING exactly when it is ready:
//! the health task sets it at every change.
//!
//! With `SYNCKAIROS_METRICS_LISTEN`, `build` binds that listener and installs
//! the metrics recorder before anything records (src/prometheus.rs); it
//! serves `/metrics` and the same probes until the background tasks stop,
//! so a drain is still scraped.
//!
//! # Shutdown
//!
//! Every step fits in `SYNCKAIROS_SHUTDOWN_GRACE` (G, default 5 s), counted
//! from the signal; `SYNCKAIROS_PRESTOP_DELAY` is P (default 1 s, less than
//! G), and R = min(1 s, (G − P) / 4) ([`DrainPlan`]). With the defaults:
//!
//! | when            | what |
//! |-----------------|------|
//! | 0               | not ready: `/ready` 503 naming `draining`, gRPC health NOT_SERVING; calls are served as before, new connections accepted |
//! | P (1 s)         | the listener closes (no new connections) and every connection gets a GOAWAY (no new calls on it); the Subscribe streams end with UNAVAILABLE "server shutting down; reconnect with from_version", each at its own moment over the next R (1 s), delivering events until then; unary calls in flight finish |
//! | calls drained (≈ P + R, 2 s) | the timers, the fan-out (Pub/Sub), the health task and the key-file watch stop; once the timers have stopped (no commit can come any more), the audit writer is told to stop: it stores what it holds and what the source still has, and ends when the source is empty |
//! | G − R (4 s)     | calls still open (a stream nobody reads, a stuck call) are cut, and the step above begins |
//! | G (5 s)         | the process exits, whatever is left: on the Redis engine unstored audit entries stay pending in Redis for another replica's writer (taken over after 15 s); on the memory engine they are lost (logged) |
//!
//! Before this order the background tasks stopped at the signal, while
//! calls still drained: a stream could lose its fan-out and a late commit
//! its audit row.
//!
//! With `SYNCKAIROS_TLS_CERT` and `SYNCKAIROS_TLS_KEY` the listener serves
//! TLS only (`tls::accept`); `build` reads the files, and SIGHUP re-reads
//! them (every [`Reloaders`] entry runs on each SIGHUP), as it re-reads the
//! keys file of `SYNCKAIROS_API_KEYS_FILE` (also watched for changes).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tracing::{info, warn};

use crate::app::App;
use crate::audit::{
    self, Audit,
    connect::PgTarget,
    source::{AuditSource, MemorySource, RedisSource},
    writer::AuditLag,
};
use crate::auth::{Authenticator, KeySource};
use crate::config::{Config, EngineKind, TCP_KEEPALIVE_INTERVAL, TCP_KEEPALIVE_RETRIES};
use crate::fanout::{self, Hub, redis::PubSubSetup};
use crate::grpc::{self, HealthControl};
use crate::probes::Readiness;
use crate::prometheus::{self, PrometheusHandle};
use crate::store::clock::Clock;
use crate::store::memory::{MemorySettings, MemoryStore};
use crate::store::redis::{RedisSettings, RedisStore};
use crate::store::{AuditRecord, SessionStore, audit_outbox};
use crate::timers;
use crate::tls::{self, HandshakeLimits, ReloadableTls, TlsFiles};

/// How often health re-checks the store (and the store does its upkeep).
const HEALTH_PROBE: Duration = Duration::from_secs(1);
/// How long serving waits, at most, for the first Pub/Sub connection, so that
/// the first health answer is not a NOT_SERVING of a connection just being made.
const PUBSUB_WAIT: Duration = Duration::from_secs(2);
/// The longest spread of the Subscribe streams' ends at shutdown.
const STREAM_END_SPREAD: Duration = Duration::from_secs(1);
/// How long a call waits for a Redis connection before failing with UNAVAILABLE.
const REDIS_POOL_TIMEOUT: Duration = Duration::from_millis(250);

pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    app: App,
    store: Arc<dyn SessionStore>,
    /// Ends the Subscribe streams (each at its moment of the spread).
    streams_end: CancellationToken,
    /// Stops the timers, the fan-out, health, the key-file watch and SIGHUP,
    /// once the calls have drained.
    background: CancellationToken,
    /// Stops the audit writer, once the timers have stopped.
    audit_stop: CancellationToken,
    readiness: Readiness,
    /// The transport settings (limits, keepalives, shutdown grace).
    config: Config,
    /// The audit writer, drained at shutdown.
    audit_writer: Option<tokio::task::JoinHandle<()>>,
    audit_lag: Arc<AuditLag>,
    /// The TLS config of the listener, when TLS is on.
    tls: Option<Arc<ReloadableTls>>,
    /// What SIGHUP re-reads.
    reloaders: Reloaders,
    /// Who may call (the keys file, or open mode).
    auth: Arc<Authenticator>,
    /// `SYNCKAIROS_METRICS_LISTEN`'s listener and the recorder it renders.
    metrics: Option<(TcpListener, PrometheusHandle)>,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::build_with_clock(config, Clock::new()).await
    }

    /// As `build`, with a given process clock (tests skew it).
    pub async fn build_with_clock(config: Config, clock: Clock) -> anyhow::Result<Self> {
        // First: bad TLS files stop start-up before anything connects.
        let tls = load_tls(&config)?;
        // Before anything records: with no recorder, recordings are no-ops.
        let metrics = match config.metrics_listen {
            Some(addr) => Some((prometheus::bind(addr).await?, prometheus::install()?)),
            None => None,
        };
        let auth = build_auth(&config)?;
        let hub = Hub::new(config.stream_buffer, config.max_subscribe_streams);
        let (streams_end, background, audit_stop): (
            CancellationToken,
            CancellationToken,
            CancellationToken,
        ) = Default::default();
        let audit_lag = Arc::new(AuditLag::default());
        let readiness = Readiness::new(
            config.engine == EngineKind::Redis,
            config.database_url.is_some().then(|| audit_lag.clone()),
        );
        let (store, audit_feed) =
            build_store(&config, clock, &hub, &readiness, &background).await?;
        let (audit, audit_writer) =
            build_audit(&config, audit_feed, &store, &audit_lag, &audit_stop)?;
        let listener = TcpListener::bind(config.listen).await.map_err(|e| {
            anyhow::anyhow!("SYNCKAIROS_LISTEN: cannot bind {}: {e}", config.listen)
        })?;
        let addr = listener.local_addr()?;
        let mut reloaders: Vec<Reloader> = Vec::new();
        if let Some(tls) = &tls {
            let tls = tls.clone();
            // The outcome is logged by `reload` itself.
            reloaders.push(Box::new(move || {
                let _ = tls.reload();
            }));
        }
        if matches!(config.api_keys, Some(KeySource::File(_))) {
            let auth = auth.clone();
            reloaders.push(Box::new(move || {
                auth.reload();
            }));
        }
        let plan = DrainPlan::new(config.shutdown_grace, config.prestop_delay);
        let app = App::new(store.clone(), hub, audit, streams_end.clone())
            .with_unstarted_ttl(config.unstarted_ttl)
            .with_stream_end_spread(plan.stream_spread)
            .with_page_bytes(config.max_page_bytes);
        Ok(Self {
            listener,
            addr,
            app,
            store,
            streams_end,
            background,
            audit_stop,
            readiness,
            config,
            audit_writer,
            audit_lag,
            tls,
            reloaders: Reloaders::new(reloaders),
            auth,
            metrics,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `/metrics` is served, when `SYNCKAIROS_METRICS_LISTEN` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    pub fn app(&self) -> &App {
        &self.app
    }

    /// The audit writer's figures (all zero when the audit is off).
    pub fn audit_lag(&self) -> Arc<AuditLag> {
        self.audit_lag.clone()
    }

    /// The process' readiness (what `/health`, `/ready` and gRPC health
    /// answer from); for the metrics port, which serves the same probes.
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// What a SIGHUP runs, callable without the signal (tests hold it past
    /// `run_until_stopped`; a signal would reach every server in the process).
    pub fn reloaders(&self) -> Reloaders {
        self.reloaders.clone()
    }

    /// Serves until `stop` resolves, then shuts down as the module doc says.
    pub async fn run_until_stopped(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let readiness = self.readiness.clone();
        let (router, health) = grpc::router(
            self.app.clone(),
            &self.config,
            self.auth.clone(),
            readiness.clone(),
        )?;
        readiness.set_store(self.store.ping().await.is_ok());
        wait_for_pubsub(&readiness, PUBSUB_WAIT).await;
        health.set(readiness.ready()).await;
        let background = self.background.clone();
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(timers::run(self.store.clone(), background.clone()));
        tasks.spawn(self.auth.clone().watch(background.clone()));
        tasks.spawn(follow_readiness(
            self.store.clone(),
            readiness.clone(),
            health.clone(),
            background.clone(),
        ));
        tasks.spawn(reload_on_sighup(self.reloaders.clone(), background.clone()));
        if let Some((listener, handle)) = self.metrics {
            // Served until the background stops: scrapes go on through the drain.
            tasks.spawn(prometheus::serve(
                listener,
                handle,
                metrics_probes(readiness.clone()),
                background.clone(),
            ));
        }

        // Cancelled at the end of the pre-stop delay: tonic stops accepting
        // and sends every connection a GOAWAY, then waits for their calls.
        let stop_accepting = CancellationToken::new();
        let signal = stop_accepting.clone().cancelled_owned();
        info!(addr = %self.addr, tls = self.tls.is_some(), "serving synckairos.v1.SyncService");
        let incoming = tcp_incoming(self.listener, &self.config);
        let mut serve: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
            match &self.tls {
                None => Box::pin(router.serve_with_incoming_shutdown(incoming, signal)),
                Some(tls) => Box::pin(router.serve_with_incoming_shutdown(
                    tls::accept(
                        incoming,
                        tls.clone(),
                        HandshakeLimits::default(),
                        stop_accepting.clone(),
                    ),
                    signal,
                )),
            };

        // Serving, until the signal.
        let ended_early = tokio::select! {
            served = &mut serve => Some(served),
            () = stop => None,
        };
        let t0 = Instant::now();
        let plan = DrainPlan::new(self.config.shutdown_grace, self.config.prestop_delay);
        let served = match ended_early {
            Some(served) => Some(served),
            None => {
                // 0: not ready, still serving.
                readiness.start_draining();
                health.set(false).await;
                info!(
                    prestop_ms = plan.prestop.as_millis() as u64,
                    grace_ms = plan.grace.as_millis() as u64,
                    "shutting down: not ready (NOT_SERVING, /ready 503); serving on for the pre-stop delay"
                );
                tokio::select! {
                    served = &mut serve => Some(served),
                    () = tokio::time::sleep_until(t0 + plan.prestop) => None,
                }
            }
        };
        let served = match served {
            Some(served) => Some(served),
            None => {
                // P: no new connections nor calls; streams end over the spread.
                info!(
                    spread_ms = plan.stream_spread.as_millis() as u64,
                    "shutting down: listener closed; ending Subscribe streams and draining calls"
                );
                stop_accepting.cancel();
                self.streams_end.cancel();
                match tokio::time::timeout_at(t0 + plan.calls_until, &mut serve).await {
                    Ok(served) => Some(served),
                    Err(_) => {
                        warn!(
                            after_ms = plan.calls_until.as_millis() as u64,
                            "calls still open near the end of the grace period; cutting them"
                        );
                        None
                    }
                }
            }
        };
        drop(serve);
        // Calls drained: the background, then the audit.
        stop_accepting.cancel();
        self.streams_end.cancel();
        background.cancel();
        let deadline = t0 + plan.grace;
        let stopped = tokio::time::timeout_at(deadline, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if stopped.is_err() {
            warn!("background tasks still running at the end of the grace period");
        }
        tasks.shutdown().await;
        self.audit_stop.cancel();
        if let Some(writer) = self.audit_writer {
            // The writer stores what it holds and what the source has, and
            // ends once the source is empty (or its own drain window is over).
            if tokio::time::timeout_at(deadline, writer).await.is_err() {
                warn!("the audit writer had not finished at the end of the grace period");
            }
        }
        info!(ms = t0.elapsed().as_millis() as u64, "stopped");
        served.transpose()?;
        Ok(())
    }
}

/// The time budget of a shutdown, from the signal (the module doc's table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainPlan {
    /// G: everything happens within this.
    pub grace: Duration,
    /// P: serving on, not ready, so load balancers move away. A configured
    /// delay of G or more (only a `Config` built in code can have one) is
    /// taken as G / 2.
    pub prestop: Duration,
    /// R: the Subscribe streams end over this, starting at P.
    pub stream_spread: Duration,
    /// G − R: calls still open then are cut; R is left for the audit at least.
    pub calls_until: Duration,
}

impl DrainPlan {
    pub fn new(grace: Duration, prestop: Duration) -> Self {
        let prestop = if prestop < grace { prestop } else { grace / 2 };
        let rest = (grace - prestop) / 4;
        let spread = STREAM_END_SPREAD.min(rest);
        Self {
            grace,
            prestop,
            stream_spread: spread,
            calls_until: grace - spread,
        }
    }
}

/// Waits, at most `limit`, until the `pubsub` check passes (at once on the
/// memory engine).
async fn wait_for_pubsub(readiness: &Readiness, limit: Duration) {
    let mut changed = readiness.subscribe();
    let _ = tokio::time::timeout(limit, async {
        while !readiness.pubsub_up() {
            if changed.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
}

/// What the metrics listener answers besides `/metrics`: the probes, as on
/// the gRPC port; and, before each scrape, `synckairos_ready{check}` from
/// the same readiness.
fn metrics_probes(readiness: Readiness) -> prometheus::Probes {
    let on_scrape = readiness.clone();
    prometheus::Probes {
        answer: Arc::new(move |path: &str| {
            crate::probes::probe(path, &readiness).map(|a| (a.status, a.body))
        }),
        on_scrape: Arc::new(move || {
            for (check, passing) in on_scrape.checks() {
                metrics::gauge!(prometheus::names::READY, "check" => check).set(if passing {
                    1.0
                } else {
                    0.0
                });
            }
        }),
    }
}

/// The accepted TCP connections, TLS or not. Small replies must not wait for
/// a delayed ACK (Nagle): no-delay on every connection. TCP keepalive here,
/// not on the builder: tonic ignores `Server::tcp_keepalive` with an incoming
/// stream of our own.
fn tcp_incoming(listener: TcpListener, config: &Config) -> TcpIncoming {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(config.tcp_keepalive))
        .with_keepalive_interval(Some(TCP_KEEPALIVE_INTERVAL))
        .with_keepalive_retries(Some(TCP_KEEPALIVE_RETRIES))
}

/// The listener's TLS config, when `SYNCKAIROS_TLS_CERT` and
/// `SYNCKAIROS_TLS_KEY` are set; a file that cannot be used stops start-up
/// with one line naming its variable.
fn load_tls(config: &Config) -> anyhow::Result<Option<Arc<ReloadableTls>>> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let files = TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: config.tls_client_ca.clone(),
    };
    let tls = ReloadableTls::load(files).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Some(Arc::new(tls)))
}

/// One thing SIGHUP re-reads (a set of files); it logs its own outcome, and
/// keeps what it had when the files are bad.
pub type Reloader = Box<dyn Fn() + Send + Sync>;

/// Everything SIGHUP re-reads, in order; cheap to clone.
#[derive(Clone, Default)]
pub struct Reloaders(Arc<Vec<Reloader>>);

impl Reloaders {
    pub fn new(reloaders: Vec<Reloader>) -> Self {
        Self(Arc::new(reloaders))
    }

    /// Runs every reloader once: what one SIGHUP does.
    pub fn reload(&self) {
        for reload in self.0.iter() {
            reload();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Runs `reloaders` on each SIGHUP until `shutdown`. With nothing to reload
/// no handler is installed, so SIGHUP keeps its default (it ends the process).
async fn reload_on_sighup(reloaders: Reloaders, shutdown: CancellationToken) {
    if reloaders.is_empty() {
        return;
    }
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(hup) => hup,
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGHUP; nothing will be reloaded");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                got = hup.recv() => {
                    if got.is_none() {
                        return;
                    }
                    info!("SIGHUP: reloading");
                    reloaders.reload();
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = shutdown;
    }
}

/// The keys of `SYNCKAIROS_API_KEYS_FILE` / `SYNCKAIROS_API_KEYS`, or open
/// mode, said loudly.
fn build_auth(config: &Config) -> anyhow::Result<Arc<Authenticator>> {
    match &config.api_keys {
        None => {
            warn!(
                "OPEN MODE: no SYNCKAIROS_API_KEYS_FILE nor SYNCKAIROS_API_KEYS; every caller is tenant `default` with role admin and may create, switch or delete any session"
            );
            Ok(Authenticator::open())
        }
        Some(source) => {
            let var = match source {
                KeySource::File(_) => "SYNCKAIROS_API_KEYS_FILE",
                KeySource::Inline(_) => "SYNCKAIROS_API_KEYS",
            };
            let auth =
                Authenticator::load(source.clone()).map_err(|e| anyhow::anyhow!("{var}: {e}"))?;
            let (keys, signers) = auth.keys().len();
            info!(keys, signers, "{var}: loaded");
            Ok(auth)
        }
    }
}

/// Where the audit writer reads what the store committed (only when the
/// audit is on).
enum AuditFeed {
    /// The memory engine's channel (bounded: `SYNCKAIROS_MEMORY_AUDIT_BUFFER`).
    Channel(mpsc::Receiver<AuditRecord>),
    /// The Redis engine's bucket audit streams.
    RedisStreams {
        /// Boxed: a client with its TLS settings is some 260 bytes.
        client: Box<redis::Client>,
        streams: Vec<String>,
    },
}

/// The store of the configured engine, and its audit feed when
/// `DATABASE_URL` turns the audit on.
async fn build_store(
    config: &Config,
    clock: Clock,
    hub: &Arc<Hub>,
    readiness: &Readiness,
    shutdown: &CancellationToken,
) -> anyhow::Result<(Arc<dyn SessionStore>, Option<AuditFeed>)> {
    match config.engine {
        EngineKind::Memory => Ok(memory_store(config, clock, hub)),
        EngineKind::Redis => redis_store(config, clock, hub, readiness, shutdown).await,
    }
}

/// The memory engine publishes into the hub itself; its audit records go
/// down a bounded channel.
fn memory_store(
    config: &Config,
    clock: Clock,
    hub: &Arc<Hub>,
) -> (Arc<dyn SessionStore>, Option<AuditFeed>) {
    let store = MemoryStore::new(hub.clone(), clock).with_settings(MemorySettings {
        session_ttl: config.session_ttl,
        idle_ttl: config.idle_ttl,
        max_sessions: config.memory_max_sessions,
    });
    if config.database_url.is_none() {
        return (Arc::new(store), None);
    }
    let (outbox, rx) = audit_outbox::outbox(config.memory_audit_buffer);
    (
        Arc::new(store.with_audit(outbox)),
        Some(AuditFeed::Channel(rx)),
    )
}

/// The Redis engine, with its fan-out; its audit records go to the bucket
/// streams.
async fn redis_store(
    config: &Config,
    clock: Clock,
    hub: &Arc<Hub>,
    readiness: &Readiness,
    shutdown: &CancellationToken,
) -> anyhow::Result<(Arc<dyn SessionStore>, Option<AuditFeed>)> {
    let Some(url) = &config.redis_url else {
        anyhow::bail!("REDIS_URL: is required when SYNCKAIROS_ENGINE=redis");
    };
    // The one client (plaintext or TLS) of the store's pool, the fan-out and
    // the audit reader; a bad URL or CA stops start-up here, naming its variable.
    let client = crate::store::redis::client(url.expose(), config.redis_ca.as_ref())?;
    let settings = RedisSettings {
        url: url.expose().to_owned(),
        ca: config.redis_ca.clone(),
        buckets: config.redis_buckets,
        session_ttl: config.session_ttl,
        idle_ttl: config.idle_ttl,
        pool_size: config.redis_pool_size,
        pool_timeout: REDIS_POOL_TIMEOUT,
        audit: config.database_url.is_some(),
    };
    let store = RedisStore::connect(settings, clock)
        .await
        .map_err(|e| anyhow::anyhow!("REDIS_URL: {e}"))?;
    redis_fanout(client.clone(), &store, hub, readiness, shutdown);
    let feed = config
        .database_url
        .as_ref()
        .map(|_| AuditFeed::RedisStreams {
            client: Box::new(client),
            streams: RedisStore::audit_streams(config.redis_buckets),
        });
    Ok((store, feed))
}

/// The fan-out across replicas: a Pub/Sub task hands every batch published
/// on a channel the hub joined (this replica's own commits included) to its
/// streams, and deadline wake-ups to the timers; it tells readiness whether
/// its connection is up.
fn redis_fanout(
    client: redis::Client,
    store: &Arc<RedisStore>,
    hub: &Arc<Hub>,
    readiness: &Readiness,
    shutdown: &CancellationToken,
) {
    let channel_store = store.clone();
    let link = readiness.clone();
    let pubsub = fanout::redis::spawn(
        PubSubSetup {
            client,
            hub: hub.clone(),
            channel_of: Arc::new(move |key| channel_store.channel_of(key)),
            pattern_of: Arc::new(RedisStore::watch_pattern),
            wake_channels: store.wake_channels(),
            on_wake: Arc::new(store.wake_handler()),
            on_link: Arc::new(move |up| {
                if !up {
                    warn!("Pub/Sub connection down: not ready");
                }
                link.set_pubsub(up);
            }),
        },
        shutdown.clone(),
    );
    hub.set_remote(pubsub);
}

/// The audit trail, when it is on: the history queries, and a writer per
/// replica that drains the feed into PostgreSQL.
fn build_audit(
    config: &Config,
    feed: Option<AuditFeed>,
    store: &Arc<dyn SessionStore>,
    lag: &Arc<AuditLag>,
    shutdown: &CancellationToken,
) -> anyhow::Result<(Option<Audit>, Option<tokio::task::JoinHandle<()>>)> {
    let (url, feed) = match (&config.database_url, feed) {
        (None, _) => return Ok((None, None)),
        (Some(url), Some(feed)) => (url, feed),
        (Some(_), None) => {
            anyhow::bail!("DATABASE_URL: the audit needs an engine that records events")
        }
    };
    // sslmode and its root certificate, checked now: a bad one stops start-up.
    let target = PgTarget::parse(url.expose(), config.database_ca.as_ref())?;
    let pool = audit::db::pool(target, 8);
    let token = shutdown.clone();
    let source = async move {
        match feed {
            AuditFeed::Channel(rx) => Some(Box::new(MemorySource::new(rx)) as Box<dyn AuditSource>),
            AuditFeed::RedisStreams { client, streams } => {
                connect_redis_source(*client, streams, token).await
            }
        }
    };
    let (writer_pool, lag, token, clock) =
        (pool.clone(), lag.clone(), shutdown.clone(), store.clone());
    let writer = tokio::spawn(async move {
        if let Some(source) = source.await {
            audit::writer::run(writer_pool, source, lag, move || clock.now(), token).await;
        }
    });
    Ok((Some(Audit::new(pool)), Some(writer)))
}

/// Connects the writer's Redis source, retrying while Redis is unreachable.
async fn connect_redis_source(
    client: redis::Client,
    streams: Vec<String>,
    shutdown: CancellationToken,
) -> Option<Box<dyn AuditSource>> {
    let consumer = format!("replica-{}", uuid::Uuid::new_v4().simple());
    loop {
        match RedisSource::connect(client.clone(), streams.clone(), consumer.clone()).await {
            Ok(source) => return Some(Box::new(source)),
            Err(e) => warn!(error = %e, "audit: cannot reach Redis yet; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// gRPC health follows readiness: re-checked at every change of a check, and
/// every [`HEALTH_PROBE`], when the store is pinged (after its upkeep) and
/// the audit check is read again.
async fn follow_readiness(
    store: Arc<dyn SessionStore>,
    readiness: Readiness,
    health: HealthControl,
    stop: CancellationToken,
) {
    let mut changed = readiness.subscribe();
    let mut serving = readiness.ready();
    let mut tick = tokio::time::interval_at(Instant::now() + HEALTH_PROBE, HEALTH_PROBE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            got = changed.changed() => {
                if got.is_err() {
                    // Never: the sender lives as long as `readiness`.
                    return;
                }
            }
            _ = tick.tick() => {
                store.maintain().await;
                readiness.set_store(store.ping().await.is_ok());
            }
        }
        let ready = readiness.ready();
        if ready != serving {
            if ready {
                info!("ready: SERVING");
            } else {
                warn!(not_ready = ?readiness.not_ready(), "not ready: NOT_SERVING");
            }
            health.set(ready).await;
            serving = ready;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_plan_fits_the_5s_grace_step_by_step() {
        let s = Duration::from_secs;
        let plan = DrainPlan::new(s(5), s(1));
        assert_eq!(
            plan,
            DrainPlan {
                grace: s(5),
                prestop: s(1),
                stream_spread: s(1),
                calls_until: s(4),
            }
        );
        // A short grace shares what is left after the pre-stop delay.
        let plan = DrainPlan::new(s(2), Duration::from_millis(400));
        assert_eq!(plan.stream_spread, Duration::from_millis(400));
        assert_eq!(plan.calls_until, Duration::from_millis(1600));
        // No pre-stop delay: straight to the drain.
        assert_eq!(DrainPlan::new(s(5), Duration::ZERO).prestop, Duration::ZERO);
        // A delay that does not fit (a Config built in code): half the grace.
        let plan = DrainPlan::new(s(1), s(1));
        assert_eq!(plan.prestop, Duration::from_millis(500));
        assert_eq!(plan.stream_spread, Duration::from_millis(125));
        for plan in [
            DrainPlan::new(s(5), s(1)),
            DrainPlan::new(s(1), s(3)),
            DrainPlan::new(s(60), s(10)),
        ] {
            assert!(
                plan.prestop + plan.stream_spread <= plan.calls_until,
                "{plan:?}"
            );
            assert!(plan.calls_until < plan.grace, "{plan:?}");
        }
    }
}

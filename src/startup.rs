//! `Application`: the only place that wires every room together. `build`
//! makes one decision per function (the store of the configured engine, its
//! fan-out, the audit trail), binds the listener (port 0 works, for tests)
//! and reports the port. `run_until_stopped` serves until the given future
//! resolves; then the Subscribe streams end with UNAVAILABLE, the server
//! stops taking connections and waits for the calls in flight, for at most
//! the configured grace period (calls still open then are cut). The audit
//! writer, told at the same moment, writes what it holds within its own
//! drain window, and is waited for at most `AUDIT_DRAIN` once the server has
//! stopped. The timers and the health task (NOT_SERVING) stop at that same
//! moment too.
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
use crate::prometheus::{self, PrometheusHandle};
use crate::store::clock::Clock;
use crate::store::memory::{MemorySettings, MemoryStore};
use crate::store::redis::{RedisSettings, RedisStore};
use crate::store::{AuditRecord, SessionStore, audit_outbox};
use crate::timers;
use crate::tls::{self, HandshakeLimits, ReloadableTls, TlsFiles};

/// How often health re-checks the store (and the store does its upkeep).
const HEALTH_PROBE: Duration = Duration::from_secs(1);
/// How long the audit writer is waited for once the server has stopped.
const AUDIT_DRAIN: Duration = Duration::from_secs(5);
/// How long a call waits for a Redis connection before failing with UNAVAILABLE.
const REDIS_POOL_TIMEOUT: Duration = Duration::from_millis(250);

pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    app: App,
    store: Arc<dyn SessionStore>,
    shutdown: CancellationToken,
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
        let shutdown = CancellationToken::new();
        let (store, audit_feed) = build_store(&config, clock, &hub, &shutdown).await?;
        let audit_lag = Arc::new(AuditLag::default());
        let (audit, audit_writer) =
            build_audit(&config, audit_feed, &store, &audit_lag, &shutdown)?;
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
        let app = App::new(store.clone(), hub, audit, shutdown.clone())
            .with_unstarted_ttl(config.unstarted_ttl);
        Ok(Self {
            listener,
            addr,
            app,
            store,
            shutdown,
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

    /// What a SIGHUP runs, callable without the signal (tests hold it past
    /// `run_until_stopped`; a signal would reach every server in the process).
    pub fn reloaders(&self) -> Reloaders {
        self.reloaders.clone()
    }

    pub async fn run_until_stopped(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (router, health) = grpc::router(self.app.clone(), &self.config, self.auth.clone())?;
        health.set(self.store.ping().await.is_ok()).await;
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(timers::run(self.store.clone(), self.shutdown.clone()));
        tasks.spawn(self.auth.clone().watch(self.shutdown.clone()));
        tasks.spawn(watch_health(
            self.store.clone(),
            health,
            self.shutdown.clone(),
        ));
        tasks.spawn(reload_on_sighup(
            self.reloaders.clone(),
            self.shutdown.clone(),
        ));
        if let Some((listener, handle)) = self.metrics {
            let probe: prometheus::Probe = Arc::new(|path: &str| {
                (path == "/health")
                    .then(|| (http::StatusCode::OK, r#"{"status":"alive"}"#.to_owned()))
            });
            tasks.spawn(prometheus::serve(
                listener,
                handle,
                probe,
                self.shutdown.clone(),
            ));
        }

        let shutdown = self.shutdown.clone();
        let signal = async move {
            stop.await;
            info!("shutting down: ending streams and draining calls");
            shutdown.cancel();
        };
        info!(addr = %self.addr, tls = self.tls.is_some(), "serving synckairos.v1.SyncService");
        let incoming = tcp_incoming(self.listener, &self.config);
        let serve: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
            match &self.tls {
                None => Box::pin(router.serve_with_incoming_shutdown(incoming, signal)),
                Some(tls) => Box::pin(router.serve_with_incoming_shutdown(
                    tls::accept(
                        incoming,
                        tls.clone(),
                        HandshakeLimits::default(),
                        self.shutdown.clone(),
                    ),
                    signal,
                )),
            };
        let shutdown = self.shutdown.clone();
        let grace = self.config.shutdown_grace;
        tokio::select! {
            served = serve => served?,
            _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
                warn!(grace_ms = grace.as_millis() as u64, "calls still open after the grace period; stopping anyway");
            }
        }
        self.shutdown.cancel();
        if let Some(writer) = self.audit_writer {
            // The writer drains what it holds (bounded by its own drain window).
            let _ = tokio::time::timeout(AUDIT_DRAIN, writer).await;
        }
        tasks.shutdown().await;
        info!("stopped");
        Ok(())
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
    shutdown: &CancellationToken,
) -> anyhow::Result<(Arc<dyn SessionStore>, Option<AuditFeed>)> {
    match config.engine {
        EngineKind::Memory => Ok(memory_store(config, clock, hub)),
        EngineKind::Redis => redis_store(config, clock, hub, shutdown).await,
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
    redis_fanout(client.clone(), &store, hub, shutdown);
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
/// streams, and deadline wake-ups to the timers.
fn redis_fanout(
    client: redis::Client,
    store: &Arc<RedisStore>,
    hub: &Arc<Hub>,
    shutdown: &CancellationToken,
) {
    let channel_store = store.clone();
    let pubsub = fanout::redis::spawn(
        PubSubSetup {
            client,
            hub: hub.clone(),
            channel_of: Arc::new(move |key| channel_store.channel_of(key)),
            wake_channels: store.wake_channels(),
            on_wake: Arc::new(store.wake_handler()),
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

/// Health follows the store: NOT_SERVING while it cannot be reached.
async fn watch_health(
    store: Arc<dyn SessionStore>,
    health: HealthControl,
    shutdown: CancellationToken,
) {
    let mut serving = true;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                health.set(false).await;
                return;
            }
            _ = tokio::time::sleep(HEALTH_PROBE) => {}
        }
        store.maintain().await;
        let ok = store.ping().await.is_ok();
        if ok != serving {
            if ok {
                info!("store reachable again: SERVING")
            } else {
                warn!("store unreachable: NOT_SERVING")
            }
            health.set(ok).await;
            serving = ok;
        }
    }
}

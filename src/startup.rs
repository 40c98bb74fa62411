//! `Application`: the only place that wires every room together. `build`
//! binds the listener (port 0 works, for tests) and reports the port;
//! `run_until_stopped` serves until the given future resolves, then ends the
//! Subscribe streams with UNAVAILABLE, drains in-flight calls and stops the
//! background tasks, all within the configured grace period.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tracing::{info, warn};

use crate::app::App;
use crate::audit::{
    self, Audit,
    source::{AuditSource, MemorySource, RedisSource},
    writer::AuditLag,
};
use crate::config::{Config, EngineKind};
use crate::fanout::{self, Hub, redis::PubSubSetup};
use crate::grpc::{self, HealthControl};
use crate::store::SessionStore;
use crate::store::clock::Clock;
use crate::store::memory::MemoryStore;
use crate::store::redis::{RedisSettings, RedisStore};
use crate::timers;

/// How often health re-checks the store (and the store does its upkeep).
const HEALTH_PROBE: Duration = Duration::from_secs(1);
/// How long a call waits for a Redis connection before failing with UNAVAILABLE.
const REDIS_POOL_TIMEOUT: Duration = Duration::from_millis(250);

pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    app: App,
    store: Arc<dyn SessionStore>,
    shutdown: CancellationToken,
    grace: Duration,
    /// The audit writer, drained at shutdown.
    audit_writer: Option<tokio::task::JoinHandle<()>>,
    audit_lag: Arc<AuditLag>,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::build_with_clock(config, Clock::new()).await
    }

    /// As `build`, with a given process clock (tests skew it).
    pub async fn build_with_clock(config: Config, clock: Clock) -> anyhow::Result<Self> {
        let hub = Hub::new(config.stream_buffer);
        let shutdown = CancellationToken::new();
        let mut memory_audit = None;
        let store: Arc<dyn SessionStore> = match (config.engine, &config.redis_url) {
            (EngineKind::Redis, Some(url)) => {
                let settings = RedisSettings {
                    url: url.expose().to_owned(),
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
                let client = redis::Client::open(url.expose())
                    .map_err(|e| anyhow::anyhow!("REDIS_URL: {e}"))?;
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
                store
            }
            (EngineKind::Redis, None) => {
                anyhow::bail!("REDIS_URL: is required when SYNCKAIROS_ENGINE=redis")
            }
            (EngineKind::Memory, _) => {
                let store = MemoryStore::new(hub.clone(), clock);
                match config.database_url {
                    Some(_) => {
                        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                        memory_audit = Some(rx);
                        Arc::new(store.with_audit(tx))
                    }
                    None => Arc::new(store),
                }
            }
        };
        // The audit trail: a writer per replica, fed by the bucket streams or the channel.
        let audit_lag = Arc::new(AuditLag::default());
        let (audit, audit_writer) = match &config.database_url {
            Some(url) => {
                let pool = audit::db::pool(url.expose(), 8);
                let source: SourceFuture = match (memory_audit, &config.redis_url) {
                    (Some(rx), _) => Box::pin(async move {
                        Some(Box::new(MemorySource::new(rx)) as Box<dyn AuditSource>)
                    }),
                    (None, Some(redis_url)) => {
                        let (url, streams, token) = (
                            redis_url.expose().to_owned(),
                            RedisStore::audit_streams(config.redis_buckets),
                            shutdown.clone(),
                        );
                        Box::pin(async move { connect_redis_source(url, streams, token).await })
                    }
                    (None, None) => {
                        anyhow::bail!("DATABASE_URL: the audit needs an engine that records events")
                    }
                };
                let (writer_pool, lag, token, clock) = (
                    pool.clone(),
                    audit_lag.clone(),
                    shutdown.clone(),
                    store.clone(),
                );
                let writer = tokio::spawn(async move {
                    if let Some(source) = source.await {
                        audit::writer::run(writer_pool, source, lag, move || clock.now(), token)
                            .await;
                    }
                });
                (Some(Audit::new(pool)), Some(writer))
            }
            None => (None, None),
        };
        let listener = TcpListener::bind(config.listen).await.map_err(|e| {
            anyhow::anyhow!("SYNCKAIROS_LISTEN: cannot bind {}: {e}", config.listen)
        })?;
        let addr = listener.local_addr()?;
        let app = App::new(store.clone(), hub, audit, shutdown.clone());
        Ok(Self {
            listener,
            addr,
            app,
            store,
            shutdown,
            grace: config.shutdown_grace,
            audit_writer,
            audit_lag,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn app(&self) -> &App {
        &self.app
    }

    /// The audit writer's figures (all zero when the audit is off).
    pub fn audit_lag(&self) -> Arc<AuditLag> {
        self.audit_lag.clone()
    }

    pub async fn run_until_stopped(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (router, health) = grpc::router(self.app.clone())?;
        health.set(self.store.ping().await.is_ok()).await;
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(timers::run(self.store.clone(), self.shutdown.clone()));
        tasks.spawn(watch_health(
            self.store.clone(),
            health,
            self.shutdown.clone(),
        ));

        let shutdown = self.shutdown.clone();
        let signal = async move {
            stop.await;
            info!("shutting down: ending streams and draining calls");
            shutdown.cancel();
        };
        info!(addr = %self.addr, "serving synckairos.v1.SyncService");
        // Small replies must not wait for a delayed ACK (Nagle): no-delay on every connection.
        let incoming = TcpIncoming::from(self.listener).with_nodelay(Some(true));
        let serve = router.serve_with_incoming_shutdown(incoming, signal);
        let shutdown = self.shutdown.clone();
        let grace = self.grace;
        tokio::select! {
            served = serve => served?,
            _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
                warn!(grace_ms = grace.as_millis() as u64, "calls still open after the grace period; stopping anyway");
            }
        }
        self.shutdown.cancel();
        if let Some(writer) = self.audit_writer {
            // The writer drains what it holds (bounded by its own drain window).
            let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
        }
        tasks.shutdown().await;
        info!("stopped");
        Ok(())
    }
}

type SourceFuture = std::pin::Pin<Box<dyn Future<Output = Option<Box<dyn AuditSource>>> + Send>>;

/// Connects the writer's Redis source, retrying while Redis is unreachable.
async fn connect_redis_source(
    url: String,
    streams: Vec<String>,
    shutdown: CancellationToken,
) -> Option<Box<dyn AuditSource>> {
    let consumer = format!("replica-{}", uuid::Uuid::new_v4().simple());
    loop {
        match RedisSource::connect(&url, streams.clone(), consumer.clone()).await {
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

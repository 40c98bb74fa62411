//! The Redis side of the hub: one Pub/Sub connection per replica, owned by one
//! task. It joins a session's channel when the session's first local stream
//! opens and leaves it when the last one closes (the hub asks, through
//! [`Remote`]), hands each published batch of events to the hub, and passes
//! deadline wake-ups on to the timers.
//!
//! When the connection drops the task reconnects (with backoff), joins every
//! channel it had again, and tells every local stream to check the log for
//! what it may have missed ([`Hub::resync_all`]: one shared read per
//! session) — no restart needed.
//!
//! A connection can also die silently: a proxy or NAT that stops forwarding
//! closes nothing, and a subscriber only reads, so it would wait forever
//! while its streams heartbeat with no events. The task therefore PINGs the
//! connection every [`PING_PERIOD`] (in subscribe mode Redis answers with a
//! `pong` message, which redis-rs hands back to the PING); no answer within
//! [`COMMAND_TIMEOUT`] counts as a drop. A silent connection is so noticed
//! within about 3 s, and its streams are caught up right after.
//!
//! Whether the connection is up is told to [`PubSubSetup::on_link`] at each
//! change: up once connected and subscribed (again), down as soon as a drop
//! is noticed or a connection attempt fails (readiness' `pubsub` check).
//! Each batch of events handed to the hub is a `fanout.deliver` span (its
//! channel and how many events), for traces only.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Hub, Remote};
use crate::engine::{Event, SessionKey, Tenant};
use crate::prometheus::names;
use crate::wire;

/// How long one Pub/Sub command (a PING included) may take before the
/// connection is presumed dead.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

/// How often the task PINGs an otherwise quiet or busy connection alike: the
/// cost is one round trip per replica per period; the gain, a connection
/// that died silently is noticed within `PING_PERIOD + COMMAND_TIMEOUT`.
pub const PING_PERIOD: Duration = Duration::from_secs(2);

/// The pauses between reconnection attempts: 50 ms doubling up to 1 s.
fn reconnect_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(1))
        .with_factor(2.0)
        .without_max_times()
        .build()
}

enum Cmd {
    Join(SessionKey, oneshot::Sender<Result<(), String>>),
    Leave(SessionKey),
    JoinTenant(Tenant, oneshot::Sender<Result<(), String>>),
    LeaveTenant(Tenant),
}

/// What the task needs to know about the key layout and the timers.
pub struct PubSubSetup {
    pub client: redis::Client,
    pub hub: Arc<Hub>,
    /// The Pub/Sub channel of a session (`sk:{b}:ev:<tenant>:<session>`).
    pub channel_of: Arc<dyn Fn(&SessionKey) -> String + Send + Sync>,
    /// The pattern every session channel of a tenant matches
    /// (`sk:{*}:ev:<tenant>:*`). A tenant named with a `:` (the keys file
    /// allows none) would match another's channels; `channel_of` tells them
    /// apart.
    pub pattern_of: Arc<dyn Fn(&Tenant) -> String + Send + Sync>,
    /// The deadline wake-up channels of every bucket.
    pub wake_channels: Vec<String>,
    /// Called with a wake-up's payload (the new earliest deadline), and with
    /// `None` after a reconnect (wake-ups may have been lost).
    pub on_wake: OnWake,
    /// Called with `true` when the connection is up (connected, channels
    /// joined) and `false` when it is lost or cannot be made; only on change.
    /// Down until the first connection.
    pub on_link: OnLink,
}

/// What the Pub/Sub task calls when its connection comes up or goes down.
pub type OnLink = Arc<dyn Fn(bool) + Send + Sync>;

/// What the Pub/Sub task calls with a deadline wake-up.
pub type OnWake = Arc<dyn Fn(Option<&[u8]>) + Send + Sync>;

/// The handle the hub holds.
pub struct RedisPubSub {
    cmds: mpsc::UnboundedSender<Cmd>,
}

impl Remote for RedisPubSub {
    fn join(&self, key: &SessionKey) -> oneshot::Receiver<Result<(), String>> {
        let (tx, rx) = oneshot::channel();
        // A send error drops `tx`: the caller sees the join fail at once.
        let _ = self.cmds.send(Cmd::Join(key.clone(), tx));
        rx
    }

    fn leave(&self, key: &SessionKey) {
        let _ = self.cmds.send(Cmd::Leave(key.clone()));
    }

    fn join_tenant(&self, tenant: &Tenant) -> oneshot::Receiver<Result<(), String>> {
        let (tx, rx) = oneshot::channel();
        let _ = self.cmds.send(Cmd::JoinTenant(tenant.clone(), tx));
        rx
    }

    fn leave_tenant(&self, tenant: &Tenant) {
        let _ = self.cmds.send(Cmd::LeaveTenant(tenant.clone()));
    }
}

/// Starts the task; it runs until `shutdown`.
pub fn spawn(setup: PubSubSetup, shutdown: CancellationToken) -> Arc<RedisPubSub> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(setup, rx, shutdown));
    Arc::new(RedisPubSub { cmds: tx })
}

async fn timed<T>(
    what: &str,
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(COMMAND_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: timed out")),
    }
}

async fn run(
    setup: PubSubSetup,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    shutdown: CancellationToken,
) {
    // channel -> session, for every channel a local stream follows.
    let mut joined: HashMap<String, SessionKey> = HashMap::new();
    // pattern -> tenant, for every tenant a local watch follows.
    let mut watched: HashMap<String, Tenant> = HashMap::new();
    let mut pauses = reconnect_backoff();
    let mut connected_before = false;
    let mut up = false;
    let mut link = |now_up: bool| {
        if now_up != up {
            up = now_up;
            (setup.on_link)(now_up);
        }
    };
    loop {
        let connect = async {
            let pubsub = timed("connect", setup.client.get_async_pubsub()).await?;
            let (mut sink, stream) = pubsub.split();
            timed("subscribe wake", sink.subscribe(&setup.wake_channels)).await?;
            if !joined.is_empty() {
                let channels: Vec<&String> = joined.keys().collect();
                timed("resubscribe", sink.subscribe(&channels)).await?;
            }
            if !watched.is_empty() {
                let patterns: Vec<&String> = watched.keys().collect();
                timed("resubscribe patterns", sink.psubscribe(&patterns)).await?;
            }
            Ok::<_, String>((sink, stream))
        };
        let (mut sink, mut stream) = tokio::select! {
            _ = shutdown.cancelled() => return,
            connected = connect => match connected {
                Ok(pair) => pair,
                Err(e) => {
                    link(false);
                    warn!(error = %e, "Pub/Sub connection failed; retrying");
                    // Joins cannot succeed while disconnected: fail them fast.
                    while let Ok(cmd) = cmds.try_recv() {
                        match cmd {
                            Cmd::Join(_, reply) | Cmd::JoinTenant(_, reply) => { let _ = reply.send(Err("Pub/Sub is disconnected".into())); }
                            Cmd::Leave(key) => { joined.remove(&(setup.channel_of)(&key)); }
                            Cmd::LeaveTenant(tenant) => { watched.remove(&(setup.pattern_of)(&tenant)); }
                        }
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(pauses.next().unwrap_or(Duration::from_secs(1))) => {}
                    }
                    continue;
                }
            },
        };
        pauses = reconnect_backoff();
        link(true);
        if connected_before {
            metrics::counter!(names::PUBSUB_RECONNECTS).increment(1);
            info!(
                channels = joined.len(),
                "Pub/Sub reconnected; streams resynchronise from the log"
            );
            setup.hub.resync_all();
            (setup.on_wake)(None);
        }
        connected_before = true;

        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_PERIOD, PING_PERIOD);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ping.tick() => {
                    if let Err(e) = timed("ping", sink.ping::<redis::Value>()).await {
                        warn!(error = %e, "Pub/Sub connection did not answer a PING; reconnecting");
                        break;
                    }
                }
                cmd = cmds.recv() => match cmd {
                    None => return,
                    Some(Cmd::Join(key, reply)) => {
                        let channel = (setup.channel_of)(&key);
                        if joined.contains_key(&channel) {
                            let _ = reply.send(Ok(()));
                            continue;
                        }
                        match timed("subscribe", sink.subscribe(&channel)).await {
                            Ok(()) => {
                                joined.insert(channel, key);
                                let _ = reply.send(Ok(()));
                            }
                            Err(e) => {
                                let _ = reply.send(Err(e.clone()));
                                warn!(error = %e, "Pub/Sub subscribe failed; reconnecting");
                                break;
                            }
                        }
                    }
                    Some(Cmd::Leave(key)) => {
                        let channel = (setup.channel_of)(&key);
                        if joined.remove(&channel).is_some() {
                            if let Err(e) = timed("unsubscribe", sink.unsubscribe(&channel)).await {
                                warn!(error = %e, "Pub/Sub unsubscribe failed; reconnecting");
                                break;
                            }
                        }
                    }
                    Some(Cmd::JoinTenant(tenant, reply)) => {
                        let pattern = (setup.pattern_of)(&tenant);
                        if watched.contains_key(&pattern) {
                            let _ = reply.send(Ok(()));
                            continue;
                        }
                        match timed("psubscribe", sink.psubscribe(&pattern)).await {
                            Ok(()) => {
                                watched.insert(pattern, tenant);
                                let _ = reply.send(Ok(()));
                            }
                            Err(e) => {
                                let _ = reply.send(Err(e.clone()));
                                warn!(error = %e, "Pub/Sub psubscribe failed; reconnecting");
                                break;
                            }
                        }
                    }
                    Some(Cmd::LeaveTenant(tenant)) => {
                        let pattern = (setup.pattern_of)(&tenant);
                        if watched.remove(&pattern).is_some() {
                            if let Err(e) = timed("punsubscribe", sink.punsubscribe(&pattern)).await {
                                warn!(error = %e, "Pub/Sub punsubscribe failed; reconnecting");
                                break;
                            }
                        }
                    }
                },
                msg = stream.next() => {
                    let Some(msg) = msg else {
                        warn!("Pub/Sub connection lost; reconnecting");
                        break;
                    };
                    let channel = msg.get_channel_name();
                    if msg.from_pattern() {
                        deliver_watched(&setup, &watched, &msg);
                    } else if let Some(key) = joined.get(channel) {
                        match wire::decode_batch(msg.get_payload_bytes()) {
                            Ok(events) => {
                                let events: Vec<Arc<Event>> = events.into_iter().map(Arc::new).collect();
                                tracing::info_span!(
                                    target: crate::telemetry::TRACE_TARGET,
                                    "fanout.deliver",
                                    channel,
                                    events = events.len() as i64,
                                )
                                .in_scope(|| setup.hub.deliver_streams(key, &events));
                            }
                            Err(e) => warn!(%channel, error = %e, "undecodable event batch"),
                        }
                    } else if setup.wake_channels.iter().any(|w| w == channel) {
                        (setup.on_wake)(Some(msg.get_payload_bytes()));
                    }
                }
            }
        }
        // Out of the loop: the connection is gone.
        link(false);
    }
}

/// A batch that came through a tenant's pattern: to the tenant's watches,
/// when the channel really is one of that tenant's sessions (the pattern of
/// tenant `a` also matches the channels of a tenant `a:b`).
fn deliver_watched(setup: &PubSubSetup, watched: &HashMap<String, Tenant>, msg: &redis::Msg) {
    let channel = msg.get_channel_name();
    let Some(tenant) = msg
        .get_pattern::<String>()
        .ok()
        .and_then(|p| watched.get(&p))
    else {
        return;
    };
    let events = match wire::decode_batch(msg.get_payload_bytes()) {
        Ok(events) => events,
        Err(e) => {
            warn!(%channel, error = %e, "undecodable event batch");
            return;
        }
    };
    let Some(first) = events.first() else {
        return;
    };
    let key = SessionKey {
        tenant: tenant.clone(),
        id: first.session.id.clone(),
    };
    if (setup.channel_of)(&key) != channel {
        return;
    }
    let events: Vec<Arc<Event>> = events.into_iter().map(Arc::new).collect();
    tracing::info_span!(
        target: crate::telemetry::TRACE_TARGET,
        "fanout.deliver",
        channel,
        events = events.len() as i64,
    )
    .in_scope(|| setup.hub.deliver_watches(&key, &events));
}

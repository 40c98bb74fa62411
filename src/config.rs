//! Typed settings from the environment (SPEC §9), validated once at start-up.
//! A bad value stops start-up with one line naming the variable and why.
//! Secrets (URLs that may carry passwords) are redacted in `Debug`, so the
//! config can be logged whole at start-up.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A value that must never reach a log.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    Memory,
    Redis,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub engine: EngineKind,
    pub redis_url: Option<Secret>,
    pub database_url: Option<Secret>,
    // --- TLS to Redis and PostgreSQL (docs/dependencies-tls.md) ---
    /// `SYNCKAIROS_REDIS_CA` (PEM file; needs a `rediss://` `REDIS_URL`): the
    /// CA the Redis server's certificate is checked against, instead of
    /// Mozilla's roots (webpki-roots), e.g. a private CA. Read at start-up.
    pub redis_ca: Option<crate::dependency_tls::CaFile>,
    /// `SYNCKAIROS_DATABASE_CA` (PEM file): the root certificate for
    /// `DATABASE_URL`'s `sslmode` (like libpq's `sslrootcert=`, which the URL
    /// may give instead, not both): `verify-ca` and `verify-full` need one,
    /// `prefer` and `require` then check the chain too. Read at start-up.
    pub database_ca: Option<crate::dependency_tls::CaFile>,
    // --- end of TLS ---
    pub redis_buckets: u32,
    /// Pooled Redis connections per replica (each WATCH…EXEC holds one).
    pub redis_pool_size: u32,
    pub session_ttl: Duration,
    pub idle_ttl: Duration,
    pub metrics_listen: Option<SocketAddr>,
    pub otlp_endpoint: Option<String>,
    pub log_format: LogFormat,
    /// Events a Subscribe stream may fall behind before it skips to a snapshot.
    pub stream_buffer: usize,
    /// `SYNCKAIROS_SHUTDOWN_GRACE` (default 5s): the whole shutdown sequence,
    /// from SIGTERM to exit (startup.rs: pre-stop delay, streams ended, calls
    /// drained, background tasks stopped, audit flushed); what is still open
    /// at its end is cut.
    pub shutdown_grace: Duration,
    /// `SYNCKAIROS_PRESTOP_DELAY` (default 1s, `0s` for none; less than
    /// `SYNCKAIROS_SHUTDOWN_GRACE`): after SIGTERM the replica reports not
    /// ready (`/ready` 503, gRPC health `NOT_SERVING`) and goes on serving
    /// this long, so load balancers take it out of rotation before it stops
    /// accepting connections.
    pub prestop_delay: Duration,
    /// `SYNCKAIROS_MAX_STREAMS_PER_CONNECTION` (default 256): HTTP/2
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`, the calls (unary or Subscribe) one
    /// connection may have open at once. Each Subscribe stream costs a task, a
    /// buffer and a heartbeat, so one connection must not hold unbounded many;
    /// 256 is Go's `net/http2` default (250) rounded, and above nginx's 128: room
    /// for a game server that watches many sessions over one connection, small
    /// enough that one connection cannot take a replica's whole Subscribe budget.
    /// A conforming client (tonic, grpc-go, grpc-java) sees its extra calls wait
    /// on its side until one of its open calls ends; a client that ignores the
    /// setting has its extra streams reset with `REFUSED_STREAM` (never
    /// processed, safe to retry).
    pub max_streams_per_connection: u32,
    /// `SYNCKAIROS_MAX_SUBSCRIBE_STREAMS` (default 10,000): open Subscribe
    /// streams per replica, all connections together. One more gets
    /// `RESOURCE_EXHAUSTED` (with a `RetryInfo` of 1 s) before its Pub/Sub
    /// channel is joined (a missing session is `NOT_FOUND` first, and takes
    /// no slot); a slot frees as soon as a stream ends, however it ends.
    pub max_subscribe_streams: usize,
    /// `SYNCKAIROS_HTTP2_KEEPALIVE_INTERVAL` (default 30s): the server sends an
    /// HTTP/2 PING on every connection this often (idle or not) ...
    pub http2_keepalive_interval: Duration,
    /// `SYNCKAIROS_HTTP2_KEEPALIVE_TIMEOUT` (default 10s): ... and closes the
    /// connection when the PING is not acknowledged within this, so a dead peer
    /// (its Subscribe streams and their slots) is reaped within about 40 s.
    /// Conforming clients acknowledge PINGs in their transport, whether or not
    /// the application reads its streams: only a peer that is gone (or whose
    /// transport is wedged) is cut. The interval is well above gRPC clients'
    /// own ping policies, and the timeout above a slow mobile round trip.
    pub http2_keepalive_timeout: Duration,
    /// `SYNCKAIROS_TCP_KEEPALIVE` (default 60s): idle time before the kernel
    /// probes a connection (then every [`TCP_KEEPALIVE_INTERVAL`], at most
    /// [`TCP_KEEPALIVE_RETRIES`] times), a second net below HTTP/2's PINGs for
    /// peers that never got as far as HTTP/2.
    pub tcp_keepalive: Duration,
    /// `SYNCKAIROS_MAX_CONNECTION_AGE` (default `off`; e.g. `30m` behind an L4
    /// load balancer): a connection older than this gets an HTTP/2 GOAWAY, so
    /// the client opens its new calls on a fresh connection (spreading load over
    /// replicas added since); calls already open on it, Subscribe streams too,
    /// go on until they end, and then the connection closes. Off by default,
    /// like gRPC's own default, because of what a tonic client sees: the first
    /// call it makes after a GOAWAY that came while one of its streams was open
    /// fails with `CANCELLED` ("operation was canceled"), unsent and safe to
    /// retry; the next call reconnects (grpc/grpc-rust#2185). grpc-go and
    /// grpc-java clients just reconnect. Dead peers need no age: the keepalives
    /// above reap them. No jitter: tonic 0.14 has none.
    pub max_connection_age: Option<Duration>,
    /// `SYNCKAIROS_MAX_CONNECTION_AGE_GRACE` (default `off`; needs
    /// `SYNCKAIROS_MAX_CONNECTION_AGE`): a connection is closed outright
    /// `max_connection_age` + this after it opened. Beware tonic 0.14's
    /// semantics (`Server::max_connection_age_grace`): with a grace set it sends
    /// **no GOAWAY** at `max_connection_age`, it only cuts the connection at the
    /// end of the grace, so every call open then fails, on a tonic client with
    /// `UNKNOWN` "h2 protocol error: error reading a body from connection"
    /// (Subscribe: resume with `from_version`; mutations: retry with their
    /// `request_id`, their outcome is unknown). Hence off by default.
    pub max_connection_age_grace: Option<Duration>,
    /// `SYNCKAIROS_MAX_REQUEST_BYTES` (default 1 MiB): the largest request
    /// message the service decodes. The largest valid request, a CreateSession
    /// with 1,000 participants and groups of 128-character ids, 30 stages and
    /// 4 KiB of metadata, is under 500 KiB. A larger one is refused before it is
    /// decoded with `OUT_OF_RANGE` ("decoded message length too large"), tonic's
    /// code for it.
    pub max_request_bytes: usize,
    /// `SYNCKAIROS_MAX_RESPONSE_BYTES` (default 4 MiB): the largest reply or
    /// stream message the service encodes, the receive limit every stock gRPC
    /// client (tonic, grpc-go, grpc-java) applies by default, so a larger one
    /// would be refused by them anyway. A larger one ends the call with
    /// `OUT_OF_RANGE` ("encoded message length too large"); for a mutation the
    /// change is committed all the same (a retry with its `request_id` says so).
    pub max_response_bytes: usize,
    /// `SYNCKAIROS_MAX_PAGE_BYTES` (default 2 MiB; from 64 KiB to half of
    /// `SYNCKAIROS_MAX_RESPONSE_BYTES`): a page of ListSessionEvents ends
    /// once its snapshots reach this much JSON, a page of ListSessions once
    /// its sessions reach this much protobuf (each page holds one item at
    /// least), so that a page stays under the reply limit.
    pub max_page_bytes: usize,
    /// `SYNCKAIROS_CREATE_RATE` (default 100 a second) and
    /// `SYNCKAIROS_CREATE_BURST` (default 200): `CreateSession` calls per
    /// caller (grpc/caller.rs: its peer address until callers authenticate),
    /// a GCRA; beyond it `RESOURCE_EXHAUSTED` with `google.rpc.RetryInfo`.
    /// `off` turns it off.
    pub create_rate: Option<Rate>,
    /// `SYNCKAIROS_MUTATION_RATE` (default 1,000 a second) and
    /// `SYNCKAIROS_MUTATION_BURST` (default 2,000): every other mutation
    /// (Start, Switch, Pause, Resume, Adjust, Complete, Cancel, Delete) per
    /// caller, the same way. A game server driving 10,000 chess games at a
    /// move each every 20 s spends 500 a second.
    pub mutation_rate: Option<Rate>,
    /// `SYNCKAIROS_UNSTARTED_TTL` (default 24h): a session not started this
    /// long after it was created ends as EXPIRED (an event like any other),
    /// whatever calls it receives meanwhile (docs/clock-rules.md).
    pub unstarted_ttl: Duration,
    /// `SYNCKAIROS_MEMORY_MAX_SESSIONS` (default 100,000; the memory engine
    /// only): the most sessions the process holds, expired ones until the
    /// once-a-second sweep frees them. One more CreateSession fails with
    /// `RESOURCE_EXHAUSTED` (`RetryInfo` 1 s). Each session keeps up to 256
    /// events, each a snapshot (about 1 KB for two players). The Redis
    /// engine's bound is Redis' `maxmemory`.
    pub memory_max_sessions: usize,
    /// `SYNCKAIROS_MEMORY_AUDIT_BUFFER` (default 100,000 events; the memory
    /// engine with `DATABASE_URL` only): committed events waiting for the
    /// audit writer. When it is full (Postgres down or slow) commits go on
    /// and their events are left out of the audit, counted, with one warning
    /// per burst. The Redis engine's backlog waits in its audit streams.
    pub memory_audit_buffer: usize,
    /// `SYNCKAIROS_API_KEYS_FILE` (a path; reloaded on SIGHUP and on change)
    /// or `SYNCKAIROS_API_KEYS` (the same TOML inline), not both: the API
    /// keys, player-token signers and per-tenant limits (src/auth/keys.rs).
    /// Neither: open mode, every caller tenant `default` with role `admin`.
    pub api_keys: Option<crate::auth::KeySource>,
    /// `SYNCKAIROS_REFLECTION` (`on`, the default, or `off`): serve gRPC
    /// reflection (v1 and v1alpha). With keys it needs a valid credential.
    pub reflection: bool,
    /// `SYNCKAIROS_ACCESS_LOG` (`off`, the default, or `on`): one `info` line
    /// per finished call under the target `synckairos::access` (method, code,
    /// latency, tenant, caller, peer; grpc/observe.rs). `RUST_LOG` naming
    /// that target turns it on too.
    pub access_log: bool,
    /// `SYNCKAIROS_CORS_ORIGINS` (default unset: no CORS header at all):
    /// the origins whose pages may call from a browser over gRPC-Web, a
    /// comma-separated list (`https://play.example.com,http://127.0.0.1:5173`,
    /// at most 1,000) or `*` for any (grpc/web.rs). gRPC-Web itself is always
    /// served; without an allowed origin only same-origin pages and
    /// non-browser clients can use it.
    pub cors_origins: Option<crate::grpc::web::CorsOrigins>,
    // --- TLS on the gRPC listener (src/tls.rs, docs/tls.md) ---
    /// `SYNCKAIROS_TLS_CERT` (default unset: plaintext): a PEM file with the
    /// server's certificate chain, leaf first. With `SYNCKAIROS_TLS_KEY`, the
    /// port serves gRPC over TLS only (ALPN `h2`, and `http/1.1` for the
    /// `/health` and `/ready` probes); a plaintext client's
    /// connection is dropped at the handshake. Re-read on SIGHUP.
    pub tls_cert: Option<PathBuf>,
    /// `SYNCKAIROS_TLS_KEY`: a PEM file with the private key of that leaf
    /// certificate (PKCS#8, PKCS#1 or SEC1). Set both or neither.
    pub tls_key: Option<PathBuf>,
    /// `SYNCKAIROS_TLS_CLIENT_CA` (needs `SYNCKAIROS_TLS_CERT` and
    /// `SYNCKAIROS_TLS_KEY`): a PEM file of CA certificates. Every client
    /// must then present a certificate one of them signed, or its handshake
    /// fails; the certificate's subject common name is what
    /// `grpc::client_cert::client_common_name` reads. Re-read on SIGHUP.
    pub tls_client_ca: Option<PathBuf>,
}

/// A sustained rate per second and the burst allowed on top of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub per_second: std::num::NonZeroU32,
    pub burst: std::num::NonZeroU32,
}

impl Rate {
    /// `per_second` sustained, bursts of `burst`; `None` when either is 0.
    pub fn new(per_second: u32, burst: u32) -> Option<Self> {
        Some(Self {
            per_second: std::num::NonZeroU32::new(per_second)?,
            burst: std::num::NonZeroU32::new(burst)?,
        })
    }
}

/// TCP keepalive probe spacing once [`Config::tcp_keepalive`] idle time has passed.
pub const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered TCP keepalive probes before the kernel drops the connection.
pub const TCP_KEEPALIVE_RETRIES: u32 = 3;

/// One line: `VARIABLE: what is wrong`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub reason: String,
}

fn err(var: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        reason: reason.into(),
    }
}

/// Parses a duration: a bare whole number is seconds (`90`); anything else
/// goes to `humantime::parse_duration`, i.e. numbers each with a unit, added
/// up (`90s`, `500ms`, `15m`, `1h 30m`, `7d`, `1w`, `1.5h`). Its units: `ns`,
/// `us`, `ms`, `s`, `m` (minutes), `h`, `d`, `w`, `M` (months of 30.44 days),
/// `y` (years of 365.25 days) and long forms like `min`, `hours`, `days`.
/// Surrounding whitespace is ignored. `None` for anything else or too large.
pub fn parse_duration(raw: &str) -> Option<Duration> {
    let raw = raw.trim();
    if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) {
        return raw.parse().ok().map(Duration::from_secs);
    }
    humantime::parse_duration(raw).ok()
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 50051)),
            engine: EngineKind::Memory,
            redis_url: None,
            database_url: None,
            redis_ca: None,
            database_ca: None,
            redis_buckets: 16,
            redis_pool_size: 64,
            session_ttl: Duration::from_secs(3600),
            idle_ttl: Duration::from_secs(7 * 86_400),
            metrics_listen: None,
            otlp_endpoint: None,
            log_format: LogFormat::Human,
            stream_buffer: crate::fanout::DEFAULT_STREAM_BUFFER,
            shutdown_grace: Duration::from_secs(5),
            prestop_delay: Duration::from_secs(1),
            max_streams_per_connection: 256,
            max_subscribe_streams: 10_000,
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(10),
            tcp_keepalive: Duration::from_secs(60),
            max_connection_age: None,
            max_connection_age_grace: None,
            max_request_bytes: 1024 * 1024,
            max_response_bytes: 4 * 1024 * 1024,
            max_page_bytes: crate::audit::DEFAULT_PAGE_BYTES,
            create_rate: Rate::new(100, 200),
            mutation_rate: Rate::new(1_000, 2_000),
            unstarted_ttl: Duration::from_secs(86_400),
            memory_max_sessions: crate::store::memory::DEFAULT_MAX_SESSIONS,
            memory_audit_buffer: crate::store::audit_outbox::DEFAULT_CAPACITY,
            api_keys: None,
            reflection: true,
            access_log: false,
            cors_origins: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
        }
    }
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads settings through `get` (the environment, or a map in tests).
    /// Empty values count as unset.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let api_keys = match (get("SYNCKAIROS_API_KEYS_FILE"), get("SYNCKAIROS_API_KEYS")) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "SYNCKAIROS_API_KEYS",
                    "set SYNCKAIROS_API_KEYS_FILE or SYNCKAIROS_API_KEYS, not both",
                ));
            }
            (Some(path), None) => Some(crate::auth::KeySource::File(path.into())),
            (None, Some(text)) => Some(crate::auth::KeySource::Inline(text)),
            (None, None) => None,
        };
        let on_off = |name: &'static str, default: bool| match get(name).as_deref() {
            None => Ok(default),
            Some("on") => Ok(true),
            Some("off") => Ok(false),
            Some(other) => Err(err(name, format!("{other:?} is not one of on, off"))),
        };
        let mut c = Config {
            api_keys,
            reflection: on_off("SYNCKAIROS_REFLECTION", true)?,
            access_log: on_off("SYNCKAIROS_ACCESS_LOG", false)?,
            ..Config::default()
        };
        if let Some(v) = get("SYNCKAIROS_CORS_ORIGINS") {
            c.cors_origins = Some(
                crate::grpc::web::CorsOrigins::parse(&v)
                    .map_err(|why| err("SYNCKAIROS_CORS_ORIGINS", why))?,
            );
        }
        if let Some(v) = get("SYNCKAIROS_LISTEN") {
            c.listen = v.parse().map_err(|_| {
                err(
                    "SYNCKAIROS_LISTEN",
                    format!("{v:?} is not a socket address like 0.0.0.0:50051"),
                )
            })?;
        } else if let Some(v) = get("PORT") {
            // Railway (and Heroku-style platforms) give the port to listen on
            // in PORT, and probe it there; SYNCKAIROS_LISTEN wins when set.
            let port: u16 = v
                .trim()
                .parse()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| err("PORT", format!("{v:?} is not a port from 1 to 65535")))?;
            c.listen = SocketAddr::from(([0, 0, 0, 0], port));
        }
        c.redis_url = get("REDIS_URL").map(Secret::new);
        if let Some(url) = &c.redis_url {
            if !(url.expose().starts_with("redis://") || url.expose().starts_with("rediss://")) {
                return Err(err("REDIS_URL", "must start with redis:// or rediss://"));
            }
        }
        c.database_url = get("DATABASE_URL").map(Secret::new);
        if let Some(url) = &c.database_url {
            if !(url.expose().starts_with("postgres://")
                || url.expose().starts_with("postgresql://"))
            {
                return Err(err(
                    "DATABASE_URL",
                    "must start with postgres:// or postgresql://",
                ));
            }
        }
        // --- TLS to Redis and PostgreSQL: the CA files, read and checked now ---
        for (var, slot) in [
            ("SYNCKAIROS_REDIS_CA", &mut c.redis_ca),
            ("SYNCKAIROS_DATABASE_CA", &mut c.database_ca),
        ] {
            if let Some(path) = get(var) {
                *slot = Some(
                    crate::dependency_tls::CaFile::read(path.trim()).map_err(|e| err(var, e))?,
                );
            }
        }
        // --- end of TLS ---
        c.engine = match get("SYNCKAIROS_ENGINE").as_deref() {
            None if c.redis_url.is_some() => EngineKind::Redis,
            None | Some("memory") => EngineKind::Memory,
            Some("redis") => EngineKind::Redis,
            Some(other) => {
                return Err(err(
                    "SYNCKAIROS_ENGINE",
                    format!("{other:?} is not one of memory, redis"),
                ));
            }
        };
        if c.engine == EngineKind::Redis && c.redis_url.is_none() {
            return Err(err("REDIS_URL", "is required when SYNCKAIROS_ENGINE=redis"));
        }
        if let Some(v) = get("SYNCKAIROS_REDIS_BUCKETS") {
            c.redis_buckets = v
                .parse()
                .ok()
                .filter(|b| (1..=16_384).contains(b))
                .ok_or_else(|| {
                    err(
                        "SYNCKAIROS_REDIS_BUCKETS",
                        format!("{v:?} is not a whole number from 1 to 16384"),
                    )
                })?;
        }
        if let Some(v) = get("SYNCKAIROS_REDIS_POOL") {
            c.redis_pool_size = v
                .parse()
                .ok()
                .filter(|n| (1..=1024).contains(n))
                .ok_or_else(|| {
                    err(
                        "SYNCKAIROS_REDIS_POOL",
                        format!("{v:?} is not a whole number from 1 to 1024"),
                    )
                })?;
        }
        for (var, slot) in [
            ("SYNCKAIROS_SESSION_TTL", &mut c.session_ttl),
            ("SYNCKAIROS_IDLE_TTL", &mut c.idle_ttl),
            ("SYNCKAIROS_SHUTDOWN_GRACE", &mut c.shutdown_grace),
            (
                "SYNCKAIROS_HTTP2_KEEPALIVE_INTERVAL",
                &mut c.http2_keepalive_interval,
            ),
            (
                "SYNCKAIROS_HTTP2_KEEPALIVE_TIMEOUT",
                &mut c.http2_keepalive_timeout,
            ),
            ("SYNCKAIROS_TCP_KEEPALIVE", &mut c.tcp_keepalive),
        ] {
            if let Some(v) = get(var) {
                *slot = parse_duration(&v).filter(|d| !d.is_zero()).ok_or_else(|| {
                    err(
                        var,
                        format!("{v:?} is not a positive duration like 90s, 15m, 1h or 7d"),
                    )
                })?;
            }
        }
        if let Some(v) = get("SYNCKAIROS_PRESTOP_DELAY") {
            c.prestop_delay = parse_duration(&v).ok_or_else(|| {
                err(
                    "SYNCKAIROS_PRESTOP_DELAY",
                    format!("{v:?} is not a duration like 0s, 500ms or 2s"),
                )
            })?;
        }
        if c.prestop_delay >= c.shutdown_grace {
            return Err(err(
                "SYNCKAIROS_PRESTOP_DELAY",
                format!(
                    "{} must be less than SYNCKAIROS_SHUTDOWN_GRACE ({}): the drain after it needs time too",
                    humantime::format_duration(c.prestop_delay),
                    humantime::format_duration(c.shutdown_grace)
                ),
            ));
        }
        if let Some(v) = get("SYNCKAIROS_METRICS_LISTEN") {
            c.metrics_listen = Some(v.parse().map_err(|_| {
                err(
                    "SYNCKAIROS_METRICS_LISTEN",
                    format!("{v:?} is not a socket address like 0.0.0.0:9090"),
                )
            })?);
        }
        c.otlp_endpoint = get("OTEL_EXPORTER_OTLP_ENDPOINT");
        c.log_format = match get("SYNCKAIROS_LOG_FORMAT").as_deref() {
            None | Some("human") | Some("text") => LogFormat::Human,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(err(
                    "SYNCKAIROS_LOG_FORMAT",
                    format!("{other:?} is not one of human, json"),
                ));
            }
        };
        if let Some(v) = get("SYNCKAIROS_STREAM_BUFFER") {
            c.stream_buffer = v
                .parse()
                .ok()
                .filter(|n| (1..=65_536).contains(n))
                .ok_or_else(|| {
                    err(
                        "SYNCKAIROS_STREAM_BUFFER",
                        format!("{v:?} is not a whole number from 1 to 65536"),
                    )
                })?;
        }
        for (var, slot) in [
            ("SYNCKAIROS_MAX_CONNECTION_AGE", &mut c.max_connection_age),
            (
                "SYNCKAIROS_MAX_CONNECTION_AGE_GRACE",
                &mut c.max_connection_age_grace,
            ),
        ] {
            if let Some(v) = get(var) {
                *slot = parse_optional_duration(&v).ok_or_else(|| {
                    err(
                        var,
                        format!("{v:?} is not off nor a positive duration like 30m or 1h"),
                    )
                })?;
            }
        }
        if c.max_connection_age.is_none() && c.max_connection_age_grace.is_some() {
            return Err(err(
                "SYNCKAIROS_MAX_CONNECTION_AGE_GRACE",
                "has no effect without SYNCKAIROS_MAX_CONNECTION_AGE",
            ));
        }
        if let Some(v) = get("SYNCKAIROS_MAX_STREAMS_PER_CONNECTION") {
            c.max_streams_per_connection = v
                .parse()
                .ok()
                .filter(|n| (1..=100_000).contains(n))
                .ok_or_else(|| {
                    err(
                        "SYNCKAIROS_MAX_STREAMS_PER_CONNECTION",
                        format!("{v:?} is not a whole number from 1 to 100000"),
                    )
                })?;
        }
        if let Some(v) = get("SYNCKAIROS_MEMORY_MAX_SESSIONS") {
            c.memory_max_sessions = v
                .parse()
                .ok()
                .filter(|n| (1..=100_000_000).contains(n))
                .ok_or_else(|| {
                    err(
                        "SYNCKAIROS_MEMORY_MAX_SESSIONS",
                        format!("{v:?} is not a whole number from 1 to 100000000"),
                    )
                })?;
        }
        if let Some(v) = get("SYNCKAIROS_MEMORY_AUDIT_BUFFER") {
            c.memory_audit_buffer = v
                .parse()
                .ok()
                .filter(|n| (1..=100_000_000).contains(n))
                .ok_or_else(|| {
                    err(
                        "SYNCKAIROS_MEMORY_AUDIT_BUFFER",
                        format!("{v:?} is not a whole number from 1 to 100000000"),
                    )
                })?;
        }
        if let Some(v) = get("SYNCKAIROS_MAX_SUBSCRIBE_STREAMS") {
            c.max_subscribe_streams = v
                .parse()
                .ok()
                .filter(|n| (1..=10_000_000).contains(n))
                .ok_or_else(|| {
                    err(
                        "SYNCKAIROS_MAX_SUBSCRIBE_STREAMS",
                        format!("{v:?} is not a whole number from 1 to 10000000"),
                    )
                })?;
        }
        for (var, slot) in [
            ("SYNCKAIROS_MAX_REQUEST_BYTES", &mut c.max_request_bytes),
            ("SYNCKAIROS_MAX_RESPONSE_BYTES", &mut c.max_response_bytes),
        ] {
            if let Some(v) = get(var) {
                *slot = parse_bytes(&v)
                    .filter(|n| (MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES).contains(n))
                    .ok_or_else(|| {
                        err(
                            var,
                            format!(
                                "{v:?} is not a size from 1KiB to 256MiB like 1048576, 512KiB or 4MiB"
                            ),
                        )
                    })?;
            }
        }
        if let Some(v) = get("SYNCKAIROS_MAX_PAGE_BYTES") {
            let most = c.max_response_bytes / 2;
            c.max_page_bytes = parse_bytes(&v)
                .filter(|n| (MIN_PAGE_BYTES..=most).contains(n))
                .ok_or_else(|| {
                    err(
                        "SYNCKAIROS_MAX_PAGE_BYTES",
                        format!(
                            "{v:?} is not a size from 64KiB to half of SYNCKAIROS_MAX_RESPONSE_BYTES ({most} bytes) like 512KiB or 2MiB"
                        ),
                    )
                })?;
        } else {
            // A smaller reply limit brings the default page down with it.
            c.max_page_bytes = c.max_page_bytes.min(c.max_response_bytes / 2);
        }
        c.create_rate = rate(
            &get,
            "SYNCKAIROS_CREATE_RATE",
            "SYNCKAIROS_CREATE_BURST",
            c.create_rate,
        )?;
        c.mutation_rate = rate(
            &get,
            "SYNCKAIROS_MUTATION_RATE",
            "SYNCKAIROS_MUTATION_BURST",
            c.mutation_rate,
        )?;
        if let Some(v) = get("SYNCKAIROS_UNSTARTED_TTL") {
            c.unstarted_ttl = parse_duration(&v)
                .filter(|d| *d >= Duration::from_secs(1))
                .ok_or_else(|| {
                    err(
                        "SYNCKAIROS_UNSTARTED_TTL",
                        format!("{v:?} is not a duration of 1s or more like 90s, 15m or 24h"),
                    )
                })?;
        }
        read_tls(&get, &mut c)?;
        Ok(c)
    }
}

/// `SYNCKAIROS_TLS_CERT`, `SYNCKAIROS_TLS_KEY` and `SYNCKAIROS_TLS_CLIENT_CA`:
/// cert and key both or neither, a client CA only with both. The files are
/// read (and their errors named) when the server starts.
fn read_tls(get: &impl Fn(&str) -> Option<String>, c: &mut Config) -> Result<(), ConfigError> {
    let path = |var: &str| get(var).map(|v| PathBuf::from(v.trim()));
    let cert = path("SYNCKAIROS_TLS_CERT");
    let key = path("SYNCKAIROS_TLS_KEY");
    let client_ca = path("SYNCKAIROS_TLS_CLIENT_CA");
    match (&cert, &key) {
        (Some(_), None) => Err(err(
            "SYNCKAIROS_TLS_KEY",
            "is required with SYNCKAIROS_TLS_CERT (the key of that certificate)",
        )),
        (None, Some(_)) => Err(err(
            "SYNCKAIROS_TLS_CERT",
            "is required with SYNCKAIROS_TLS_KEY (the certificate of that key)",
        )),
        (None, None) if client_ca.is_some() => Err(err(
            "SYNCKAIROS_TLS_CLIENT_CA",
            "needs SYNCKAIROS_TLS_CERT and SYNCKAIROS_TLS_KEY (client certificates come with TLS)",
        )),
        _ => {
            (c.tls_cert, c.tls_key, c.tls_client_ca) = (cert, key, client_ca);
            Ok(())
        }
    }
}

/// A rate limit from `rate_var` (a whole number a second, or `off`) and
/// `burst_var` (a whole number; by default twice the rate).
fn rate(
    get: &impl Fn(&str) -> Option<String>,
    rate_var: &'static str,
    burst_var: &'static str,
    default: Option<Rate>,
) -> Result<Option<Rate>, ConfigError> {
    let whole = |var: &'static str, v: &str| {
        v.trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=10_000_000).contains(n))
            .ok_or_else(|| {
                err(
                    var,
                    format!("{v:?} is not a whole number from 1 to 10000000"),
                )
            })
    };
    let per_second = match get(rate_var) {
        None => default.map(|r| r.per_second.get()),
        Some(v) if matches!(v.trim(), "off" | "none") => None,
        Some(v) => Some(whole(rate_var, &v)?),
    };
    let burst = get(burst_var).map(|v| whole(burst_var, &v)).transpose()?;
    let Some(per_second) = per_second else {
        if burst.is_some() {
            return Err(err(burst_var, format!("has no effect with {rate_var}=off")));
        }
        return Ok(None);
    };
    let burst = burst.unwrap_or_else(|| {
        if get(rate_var).is_none() {
            default.map_or(per_second, |r| r.burst.get())
        } else {
            per_second.saturating_mul(2)
        }
    });
    Ok(Rate::new(per_second, burst))
}

/// The smallest message size limit accepted: below it no Session fits.
const MIN_MESSAGE_BYTES: usize = 1024;
/// The smallest `SYNCKAIROS_MAX_PAGE_BYTES`.
const MIN_PAGE_BYTES: usize = 64 * 1024;
/// The largest message size limit accepted.
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// `off` (or `none`) is `Some(None)`; a positive duration (see
/// [`parse_duration`]) is `Some(Some(d))`; anything else is `None`.
fn parse_optional_duration(raw: &str) -> Option<Option<Duration>> {
    match raw.trim() {
        "off" | "none" => Some(None),
        other => parse_duration(other).filter(|d| !d.is_zero()).map(Some),
    }
}

/// A byte count: a whole number, optionally followed by `KiB` or `MiB`
/// (powers of 1024; `K`/`KB`/`M`/`MB` are read the same way).
pub fn parse_bytes(raw: &str) -> Option<usize> {
    let raw = raw.trim();
    let digits = raw.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = raw.split_at(digits);
    let scale: usize = match unit.trim() {
        "" | "B" => 1,
        "K" | "KB" | "KiB" => 1024,
        "M" | "MB" | "MiB" => 1024 * 1024,
        _ => return None,
    };
    number.parse::<usize>().ok()?.checked_mul(scale)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn from(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_are_the_memory_engine_on_50051() {
        let c = from(&[]).unwrap();
        assert_eq!(c.listen.port(), 50051);
        assert_eq!(c.engine, EngineKind::Memory);
        assert_eq!(c.session_ttl, Duration::from_secs(3600));
        assert_eq!(c.idle_ttl, Duration::from_secs(7 * 86_400));
    }

    #[test]
    fn rate_limits_default_on_and_can_be_set_or_turned_off() {
        let c = from(&[]).unwrap();
        assert_eq!(c.create_rate, Rate::new(100, 200));
        assert_eq!(c.mutation_rate, Rate::new(1_000, 2_000));
        assert_eq!(c.unstarted_ttl, Duration::from_secs(86_400));
        let c = from(&[
            ("SYNCKAIROS_CREATE_RATE", "5"),
            ("SYNCKAIROS_MUTATION_RATE", "off"),
            ("SYNCKAIROS_UNSTARTED_TTL", "10m"),
        ])
        .unwrap();
        assert_eq!(c.create_rate, Rate::new(5, 10), "burst twice the rate set");
        assert_eq!(c.mutation_rate, None);
        assert_eq!(c.unstarted_ttl, Duration::from_secs(600));
        let c = from(&[("SYNCKAIROS_MUTATION_BURST", "7")]).unwrap();
        assert_eq!(c.mutation_rate, Rate::new(1_000, 7));
        for (var, value) in [
            ("SYNCKAIROS_CREATE_RATE", "0"),
            ("SYNCKAIROS_CREATE_RATE", "fast"),
            ("SYNCKAIROS_MUTATION_BURST", "-1"),
            ("SYNCKAIROS_UNSTARTED_TTL", "0s"),
        ] {
            let e = from(&[(var, value)]).unwrap_err();
            assert_eq!(e.var, var, "{value}");
        }
        let e = from(&[
            ("SYNCKAIROS_CREATE_RATE", "off"),
            ("SYNCKAIROS_CREATE_BURST", "9"),
        ])
        .unwrap_err();
        assert_eq!(e.var, "SYNCKAIROS_CREATE_BURST");
    }

    #[test]
    fn redis_url_selects_the_redis_engine_and_is_redacted() {
        let c = from(&[("REDIS_URL", "redis://:hunter2@localhost:6379")]).unwrap();
        assert_eq!(c.engine, EngineKind::Redis);
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn api_keys_come_from_a_file_or_inline_never_printed_and_not_both() {
        let c = from(&[("SYNCKAIROS_API_KEYS", "[[signer]] hs256 = 'hunter2'")]).unwrap();
        assert!(matches!(
            c.api_keys,
            Some(crate::auth::KeySource::Inline(_))
        ));
        assert!(!format!("{c:?}").contains("hunter2"));
        let c = from(&[("SYNCKAIROS_API_KEYS_FILE", "/etc/sk/keys.toml")]).unwrap();
        assert_eq!(
            c.api_keys,
            Some(crate::auth::KeySource::File("/etc/sk/keys.toml".into()))
        );
        assert!(from(&[]).unwrap().api_keys.is_none());
        let e = from(&[
            ("SYNCKAIROS_API_KEYS_FILE", "/k"),
            ("SYNCKAIROS_API_KEYS", "x"),
        ])
        .unwrap_err();
        assert_eq!(e.var, "SYNCKAIROS_API_KEYS");
        assert!(
            !from(&[("SYNCKAIROS_REFLECTION", "off")])
                .unwrap()
                .reflection
        );
    }

    #[test]
    fn each_bad_value_names_its_variable() {
        let cases = [
            ("SYNCKAIROS_LISTEN", "nope"),
            ("SYNCKAIROS_ENGINE", "mongo"),
            ("SYNCKAIROS_REDIS_BUCKETS", "0"),
            ("SYNCKAIROS_SESSION_TTL", "soon"),
            ("SYNCKAIROS_IDLE_TTL", "0s"),
            ("SYNCKAIROS_METRICS_LISTEN", ":"),
            ("SYNCKAIROS_LOG_FORMAT", "xml"),
            ("SYNCKAIROS_REFLECTION", "maybe"),
            ("REDIS_URL", "localhost:6379"),
            ("DATABASE_URL", "mysql://x"),
            ("SYNCKAIROS_MAX_STREAMS_PER_CONNECTION", "0"),
            ("SYNCKAIROS_MAX_SUBSCRIBE_STREAMS", "many"),
            ("SYNCKAIROS_HTTP2_KEEPALIVE_INTERVAL", "0s"),
            ("SYNCKAIROS_HTTP2_KEEPALIVE_TIMEOUT", "soon"),
            ("SYNCKAIROS_TCP_KEEPALIVE", "-1"),
            ("SYNCKAIROS_MAX_CONNECTION_AGE", "0s"),
            ("SYNCKAIROS_MAX_CONNECTION_AGE_GRACE", "never"),
            ("SYNCKAIROS_MAX_REQUEST_BYTES", "12"),
            ("SYNCKAIROS_MAX_RESPONSE_BYTES", "4GiB"),
            ("SYNCKAIROS_MEMORY_MAX_SESSIONS", "0"),
            ("SYNCKAIROS_MAX_PAGE_BYTES", "1KiB"),
            ("SYNCKAIROS_MAX_PAGE_BYTES", "3MiB"),
            ("SYNCKAIROS_MEMORY_AUDIT_BUFFER", "lots"),
        ];
        for (var, value) in cases {
            let e = from(&[(var, value)]).unwrap_err();
            assert_eq!(e.var, var, "{e}");
            assert!(e.to_string().starts_with(var), "{e}");
        }
        assert_eq!(
            from(&[("SYNCKAIROS_ENGINE", "redis")]).unwrap_err().var,
            "REDIS_URL"
        );
        assert_eq!(
            from(&[("SYNCKAIROS_MAX_CONNECTION_AGE_GRACE", "1m")])
                .unwrap_err()
                .var,
            "SYNCKAIROS_MAX_CONNECTION_AGE_GRACE"
        );
    }

    #[test]
    fn limits_have_production_defaults_and_read_their_variables() {
        let c = from(&[]).unwrap();
        assert_eq!(c.max_streams_per_connection, 256);
        assert_eq!(c.max_subscribe_streams, 10_000);
        assert_eq!(c.http2_keepalive_interval, Duration::from_secs(30));
        assert_eq!(c.http2_keepalive_timeout, Duration::from_secs(10));
        assert_eq!(c.tcp_keepalive, Duration::from_secs(60));
        assert_eq!(c.max_connection_age, None);
        assert_eq!(c.max_connection_age_grace, None);
        assert_eq!(c.max_request_bytes, 1 << 20);
        assert_eq!(c.max_response_bytes, 4 << 20);
        assert_eq!(c.memory_max_sessions, 100_000);
        assert_eq!(c.memory_audit_buffer, 100_000);
        let c = from(&[
            ("SYNCKAIROS_MAX_STREAMS_PER_CONNECTION", "100"),
            ("SYNCKAIROS_MAX_SUBSCRIBE_STREAMS", "5"),
            ("SYNCKAIROS_HTTP2_KEEPALIVE_INTERVAL", "20s"),
            ("SYNCKAIROS_HTTP2_KEEPALIVE_TIMEOUT", "5s"),
            ("SYNCKAIROS_TCP_KEEPALIVE", "2m"),
            ("SYNCKAIROS_MAX_CONNECTION_AGE", "30m"),
            ("SYNCKAIROS_MAX_CONNECTION_AGE_GRACE", "1m"),
            ("SYNCKAIROS_MAX_REQUEST_BYTES", "512KiB"),
            ("SYNCKAIROS_MAX_RESPONSE_BYTES", "8388608"),
            ("SYNCKAIROS_MEMORY_MAX_SESSIONS", "50"),
            ("SYNCKAIROS_MEMORY_AUDIT_BUFFER", "1000"),
        ])
        .unwrap();
        assert_eq!(c.memory_max_sessions, 50);
        assert_eq!(c.memory_audit_buffer, 1000);
        assert_eq!(c.max_streams_per_connection, 100);
        assert_eq!(c.max_subscribe_streams, 5);
        assert_eq!(c.http2_keepalive_interval, Duration::from_secs(20));
        assert_eq!(c.http2_keepalive_timeout, Duration::from_secs(5));
        assert_eq!(c.tcp_keepalive, Duration::from_secs(120));
        assert_eq!(c.max_connection_age, Some(Duration::from_secs(1800)));
        assert_eq!(c.max_connection_age_grace, Some(Duration::from_secs(60)));
        let off = from(&[("SYNCKAIROS_MAX_CONNECTION_AGE", "off")]).unwrap();
        assert_eq!(off.max_connection_age, None);
        assert_eq!(c.max_request_bytes, 512 * 1024);
        assert_eq!(c.max_response_bytes, 8 << 20);
    }

    #[test]
    fn tls_takes_cert_and_key_together_and_a_client_ca_only_with_them() {
        let c = from(&[]).unwrap();
        assert_eq!((c.tls_cert, c.tls_key, c.tls_client_ca), (None, None, None));
        let c = from(&[
            ("SYNCKAIROS_TLS_CERT", "/etc/sk/cert.pem"),
            ("SYNCKAIROS_TLS_KEY", " /etc/sk/key.pem "),
        ])
        .unwrap();
        assert_eq!(c.tls_cert, Some(PathBuf::from("/etc/sk/cert.pem")));
        assert_eq!(c.tls_key, Some(PathBuf::from("/etc/sk/key.pem")));
        assert_eq!(c.tls_client_ca, None);
        let c = from(&[
            ("SYNCKAIROS_TLS_CERT", "cert.pem"),
            ("SYNCKAIROS_TLS_KEY", "key.pem"),
            ("SYNCKAIROS_TLS_CLIENT_CA", "ca.pem"),
        ])
        .unwrap();
        assert_eq!(c.tls_client_ca, Some(PathBuf::from("ca.pem")));
        for (pairs, var) in [
            (
                &[("SYNCKAIROS_TLS_CERT", "cert.pem")][..],
                "SYNCKAIROS_TLS_KEY",
            ),
            (
                &[("SYNCKAIROS_TLS_KEY", "key.pem")][..],
                "SYNCKAIROS_TLS_CERT",
            ),
            (
                &[("SYNCKAIROS_TLS_CLIENT_CA", "ca.pem")][..],
                "SYNCKAIROS_TLS_CLIENT_CA",
            ),
            (
                &[
                    ("SYNCKAIROS_TLS_CERT", "cert.pem"),
                    ("SYNCKAIROS_TLS_KEY", ""),
                    ("SYNCKAIROS_TLS_CLIENT_CA", "ca.pem"),
                ][..],
                "SYNCKAIROS_TLS_KEY",
            ),
        ] {
            let e = from(pairs).unwrap_err();
            assert_eq!(e.var, var, "{pairs:?}: {e}");
            assert!(e.to_string().starts_with(var), "{e}");
        }
    }

    #[test]
    fn byte_sizes_take_binary_units() {
        assert_eq!(parse_bytes("1048576"), Some(1 << 20));
        assert_eq!(parse_bytes("4MiB"), Some(4 << 20));
        assert_eq!(parse_bytes("64 KiB"), Some(64 << 10));
        assert_eq!(parse_bytes("MiB"), None);
        assert_eq!(parse_bytes("1.5MiB"), None);
        assert_eq!(parse_bytes("-1"), None);
    }

    #[test]
    fn the_prestop_delay_defaults_to_1s_and_must_be_shorter_than_the_grace() {
        let c = from(&[]).unwrap();
        assert_eq!(c.prestop_delay, Duration::from_secs(1));
        assert_eq!(c.shutdown_grace, Duration::from_secs(5));
        let c = from(&[("SYNCKAIROS_PRESTOP_DELAY", "250ms")]).unwrap();
        assert_eq!(c.prestop_delay, Duration::from_millis(250));
        let c = from(&[("SYNCKAIROS_PRESTOP_DELAY", "0s")]).unwrap();
        assert_eq!(c.prestop_delay, Duration::ZERO);
        let c = from(&[
            ("SYNCKAIROS_PRESTOP_DELAY", "8s"),
            ("SYNCKAIROS_SHUTDOWN_GRACE", "10s"),
        ])
        .unwrap();
        assert_eq!(c.prestop_delay, Duration::from_secs(8));
        for pairs in [
            &[("SYNCKAIROS_PRESTOP_DELAY", "soon")][..],
            &[("SYNCKAIROS_PRESTOP_DELAY", "-1s")][..],
            &[("SYNCKAIROS_PRESTOP_DELAY", "5s")][..],
            &[
                ("SYNCKAIROS_PRESTOP_DELAY", "3s"),
                ("SYNCKAIROS_SHUTDOWN_GRACE", "2s"),
            ][..],
            // The default delay (1s) does not fit in a 1s grace either.
            &[("SYNCKAIROS_SHUTDOWN_GRACE", "1")][..],
        ] {
            let e = from(pairs).unwrap_err();
            assert_eq!(e.var, "SYNCKAIROS_PRESTOP_DELAY", "{pairs:?}: {e}");
            assert!(e.to_string().starts_with("SYNCKAIROS_PRESTOP_DELAY"), "{e}");
        }
        let e = from(&[("SYNCKAIROS_PRESTOP_DELAY", "5s")]).unwrap_err();
        assert!(e.reason.contains("SYNCKAIROS_SHUTDOWN_GRACE"), "{e}");
    }

    #[test]
    fn port_is_the_listen_port_when_synckairos_listen_is_unset() {
        let c = from(&[("PORT", "8080")]).unwrap();
        assert_eq!(c.listen, SocketAddr::from(([0, 0, 0, 0], 8080)));
        let c = from(&[("PORT", "8080"), ("SYNCKAIROS_LISTEN", "127.0.0.1:9000")]).unwrap();
        assert_eq!(c.listen, "127.0.0.1:9000".parse().unwrap());
        for bad in ["http", "0", "70000", "-1"] {
            let e = from(&[("PORT", bad)]).unwrap_err();
            assert_eq!(e.var, "PORT", "{bad}: {e}");
        }
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(7 * 86_400)));
        // Weeks are one of humantime's units.
        assert_eq!(parse_duration("1w"), Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("h"), None);
    }
}

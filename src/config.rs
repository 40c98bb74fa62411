//! Typed settings from the environment (SPEC §9), validated once at start-up.
//! A bad value stops start-up with one line naming the variable and why.
//! Secrets (URLs that may carry passwords) are redacted in `Debug`, so the
//! config can be logged whole at start-up.

use std::fmt;
use std::net::SocketAddr;
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
    /// How long shutdown waits for in-flight calls before it stops anyway.
    pub shutdown_grace: Duration,
}

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
            redis_buckets: 16,
            redis_pool_size: 64,
            session_ttl: Duration::from_secs(3600),
            idle_ttl: Duration::from_secs(7 * 86_400),
            metrics_listen: None,
            otlp_endpoint: None,
            log_format: LogFormat::Human,
            stream_buffer: crate::fanout::DEFAULT_STREAM_BUFFER,
            shutdown_grace: Duration::from_secs(5),
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
        let mut c = Config::default();
        if let Some(v) = get("SYNCKAIROS_LISTEN") {
            c.listen = v.parse().map_err(|_| {
                err(
                    "SYNCKAIROS_LISTEN",
                    format!("{v:?} is not a socket address like 0.0.0.0:50051"),
                )
            })?;
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
        Ok(c)
    }
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
    fn redis_url_selects_the_redis_engine_and_is_redacted() {
        let c = from(&[("REDIS_URL", "redis://:hunter2@localhost:6379")]).unwrap();
        assert_eq!(c.engine, EngineKind::Redis);
        assert!(!format!("{c:?}").contains("hunter2"));
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
            ("REDIS_URL", "localhost:6379"),
            ("DATABASE_URL", "mysql://x"),
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

//! Liveness and readiness: what `/health`, `/ready` and `grpc.health.v1.Health`
//! answer, from one [`Readiness`] per process.
//!
//! Four checks, each passing or not:
//! - `store`: the store answered its last ping (startup.rs pings it every
//!   second; the memory engine always answers);
//! - `pubsub`: the Redis engine's Pub/Sub connection is up (set by the
//!   fan-out task at each connect and each loss; always passing on the
//!   memory engine, which has none);
//! - `audit`: the audit writer is not stuck: it has not held records it
//!   could not store for longer than [`AUDIT_STUCK_AFTER`]
//!   ([`AuditLag::stuck`]); always passing when the audit is off;
//! - `draining`: the process has not been told to stop (SIGTERM).
//!
//! Reading them is a few atomic loads (no lock, no await): [`Readiness::ready`]
//! is cheap enough for every probe and every metrics scrape. A change of
//! `store`, `pubsub` or `draining` is also signalled ([`Readiness::subscribe`])
//! so gRPC health follows it at once rather than at the next second.
//!
//! [`probe`] renders the HTTP answers, so that any HTTP server (the gRPC
//! port's HTTP/1.1 side, grpc/probes.rs; the metrics port) serves the same:
//! - `GET /health` → 200 `{"status":"alive"}` while the process runs;
//! - `GET /ready` → 200 `{"status":"ready"}`, or 503
//!   `{"status":"not ready","not_ready":["pubsub",…]}` naming each failing check.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::StatusCode;
use tokio::sync::watch;

use crate::audit::writer::AuditLag;

/// How long the audit writer may hold records it cannot store (Postgres
/// down or refusing to answer, the migrations not run yet) before `audit`
/// fails. Long enough that a Postgres restart or failover (seconds) does
/// not take the replica out of rotation; short enough that an audit that
/// is really stuck shows within a minute. Every replica shares the one
/// Postgres, so past this bound they all report not ready together (see
/// the README's "Health and readiness").
pub const AUDIT_STUCK_AFTER: Duration = Duration::from_secs(30);

/// The names of the checks, in the order [`Readiness::checks`] gives them.
pub const CHECKS: [&str; 4] = ["store", "pubsub", "audit", "draining"];

/// The content type of every probe answer.
pub const CONTENT_TYPE: &str = "application/json";

/// The probes' view of the process; cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Readiness {
    inner: Arc<Inner>,
}

struct Inner {
    store: AtomicBool,
    pubsub: AtomicBool,
    draining: AtomicBool,
    /// The audit writer's figures; `None` when the audit is off.
    audit: Option<Arc<AuditLag>>,
    /// [`AUDIT_STUCK_AFTER`], but in tests.
    audit_stuck_after: Duration,
    /// Bumped on every change of `store`, `pubsub` or `draining`.
    changed: watch::Sender<u64>,
}

impl Readiness {
    /// Not ready until the first store ping ([`Readiness::set_store`]) and,
    /// when `has_pubsub` (the Redis engine), until the Pub/Sub connection is
    /// up ([`Readiness::set_pubsub`]).
    pub fn new(has_pubsub: bool, audit: Option<Arc<AuditLag>>) -> Self {
        Self::with_audit_bound(has_pubsub, audit, AUDIT_STUCK_AFTER)
    }

    /// As [`Readiness::new`], the audit stuck after `audit_stuck_after`.
    pub fn with_audit_bound(
        has_pubsub: bool,
        audit: Option<Arc<AuditLag>>,
        audit_stuck_after: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store: AtomicBool::new(false),
                pubsub: AtomicBool::new(!has_pubsub),
                draining: AtomicBool::new(false),
                audit,
                audit_stuck_after,
                changed: watch::Sender::new(0),
            }),
        }
    }

    /// A readiness whose every check passes (tests, tools).
    pub fn always_ready() -> Self {
        let r = Self::new(false, None);
        r.set_store(true);
        r
    }

    /// Whether every check passes.
    pub fn ready(&self) -> bool {
        self.checks().iter().all(|(_, ok)| *ok)
    }

    /// Each check by name ([`CHECKS`]) and whether it passes (`true` is
    /// good: for `draining`, not draining), e.g. for a
    /// `synckairos_ready{check}` gauge.
    pub fn checks(&self) -> [(&'static str, bool); 4] {
        let i = &self.inner;
        let audit_ok = i
            .audit
            .as_ref()
            .is_none_or(|lag| !lag.stuck(i.audit_stuck_after));
        [
            (CHECKS[0], i.store.load(Ordering::Relaxed)),
            (CHECKS[1], i.pubsub.load(Ordering::Relaxed)),
            (CHECKS[2], audit_ok),
            (CHECKS[3], !i.draining.load(Ordering::Relaxed)),
        ]
    }

    /// The names of the checks that fail, in [`CHECKS`] order.
    pub fn not_ready(&self) -> Vec<&'static str> {
        self.checks()
            .into_iter()
            .filter(|(_, ok)| !ok)
            .map(|(name, _)| name)
            .collect()
    }

    /// Whether the `pubsub` check passes (always on the memory engine).
    pub fn pubsub_up(&self) -> bool {
        self.inner.pubsub.load(Ordering::Relaxed)
    }

    /// Whether SIGTERM has come ([`Readiness::start_draining`]).
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Relaxed)
    }

    /// The outcome of the latest store ping.
    pub fn set_store(&self, reachable: bool) {
        self.set(&self.inner.store, reachable);
    }

    /// The Pub/Sub connection came up (`true`) or was lost (`false`).
    pub fn set_pubsub(&self, up: bool) {
        self.set(&self.inner.pubsub, up);
    }

    /// SIGTERM: not ready from now on, for good.
    pub fn start_draining(&self) {
        self.set(&self.inner.draining, true);
    }

    fn set(&self, flag: &AtomicBool, value: bool) {
        if flag.swap(value, Ordering::Relaxed) != value {
            self.inner.changed.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Changes once `store`, `pubsub` or `draining` changes (the audit
    /// check is computed when read: poll it).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }
}

/// One probe's HTTP answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeAnswer {
    pub status: StatusCode,
    /// Always [`CONTENT_TYPE`].
    pub content_type: &'static str,
    pub body: String,
}

/// The answer to `GET <path>` when `path` is `/health` or `/ready`; `None`
/// for any other path (the caller serves it, or answers 404).
pub fn probe(path: &str, readiness: &Readiness) -> Option<ProbeAnswer> {
    let (status, body) = match path {
        "/health" => (StatusCode::OK, r#"{"status":"alive"}"#.to_owned()),
        "/ready" => {
            let failing = readiness.not_ready();
            if failing.is_empty() {
                (StatusCode::OK, r#"{"status":"ready"}"#.to_owned())
            } else {
                let body = serde_json::json!({"status": "not ready", "not_ready": failing});
                (StatusCode::SERVICE_UNAVAILABLE, body.to_string())
            }
        }
        _ => return None,
    };
    Some(ProbeAnswer {
        status,
        content_type: CONTENT_TYPE,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready_path(r: &Readiness) -> (StatusCode, serde_json::Value) {
        let a = probe("/ready", r).expect("an answer");
        assert_eq!(a.content_type, "application/json");
        (a.status, serde_json::from_str(&a.body).expect("JSON"))
    }

    #[test]
    fn health_is_alive_whatever_the_checks_say() {
        let r = Readiness::new(true, None);
        let a = probe("/health", &r).unwrap();
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.body, r#"{"status":"alive"}"#);
        assert_eq!(probe("/metrics", &r), None);
        assert_eq!(probe("/ready/", &r), None);
    }

    #[test]
    fn ready_names_each_failing_check_in_order() {
        let r = Readiness::new(true, None);
        let (status, body) = ready_path(&r);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            serde_json::json!({"status": "not ready", "not_ready": ["store", "pubsub"]})
        );
        r.set_store(true);
        r.set_pubsub(true);
        assert!(r.ready());
        let (status, body) = ready_path(&r);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, serde_json::json!({"status": "ready"}));
        r.set_pubsub(false);
        assert_eq!(r.not_ready(), ["pubsub"]);
        r.set_pubsub(true);
        r.start_draining();
        assert!(r.is_draining());
        assert_eq!(
            ready_path(&r).1["not_ready"],
            serde_json::json!(["draining"])
        );
        assert_eq!(
            r.checks(),
            [
                ("store", true),
                ("pubsub", true),
                ("audit", true),
                ("draining", false)
            ]
        );
    }

    #[test]
    fn the_memory_engine_has_no_pubsub_to_wait_for() {
        let r = Readiness::new(false, None);
        assert_eq!(r.not_ready(), ["store"]);
        assert!(Readiness::always_ready().ready());
    }

    #[test]
    fn a_stuck_audit_writer_fails_the_audit_check() {
        let lag = Arc::new(AuditLag::default());
        let bound = Duration::from_millis(50);
        let r = Readiness::with_audit_bound(false, Some(lag.clone()), bound);
        r.set_store(true);
        assert!(r.ready(), "a writer holding nothing is fine");
        lag.holding();
        assert!(r.ready(), "holding a batch is not being stuck");
        std::thread::sleep(bound * 2);
        assert_eq!(r.not_ready(), ["audit"]);
        lag.holding();
        assert_eq!(r.not_ready(), ["audit"], "since the first record held");
        lag.caught_up();
        assert!(r.ready());
        assert!(Readiness::new(false, None).checks()[2].1, "audit off");
    }

    #[tokio::test]
    async fn changes_are_signalled_and_repeats_are_not() {
        let r = Readiness::new(true, None);
        let mut rx = r.subscribe();
        rx.borrow_and_update();
        r.set_store(false);
        assert!(!rx.has_changed().unwrap(), "no change, no signal");
        r.set_pubsub(true);
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        r.start_draining();
        assert!(rx.has_changed().unwrap());
    }
}

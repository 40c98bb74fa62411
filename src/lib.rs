//! SyncKairos: authoritative, synchronized clocks for shared sessions, over gRPC.
//!
//! # Rooms
//! Arrows point one way: engine <- wire <- store/fanout/timers/audit <- app <- grpc <- startup
//! <- main; auth (engine ids only) <- grpc; audit <- probes <- grpc.
//!
//! - [`engine`]: the pure clock rules; `apply(session, command, now)`. No I/O.
//! - [`store`]: `SessionStore` and its engines, `memory` and `redis`: versioned
//!   commits, event log, audit append, deadline index and claims, the store's clock.
//! - [`fanout`]: the per-replica hub handing committed events to local streams,
//!   and its Redis Pub/Sub side.
//! - [`timers`]: sleeps until deadlines, claims them and fires them through the store.
//! - [`audit`]: the PostgreSQL trail: migrations, batch writer, history queries.
//! - [`auth`]: who is calling (API keys, player tokens, open mode), what it
//!   may touch, and the keys file with its reloads.
//! - [`app`]: one async fn per RPC; `AppError`; the Subscribe producer.
//! - [`grpc`]: tonic service, proto <-> domain conversion, the error table,
//!   health and reflection.
//! - [`wire`]: the bytes of stored states and events, the log, the audit
//!   stream and Pub/Sub batches; written (and read back) by the store, read by
//!   the fan-out and the audit.
//! - [`tls`]: TLS on the gRPC listener: certificates (reloadable) and the
//!   acceptor that bounds handshakes.
//! - [`dependency_tls`]: TLS to Redis and PostgreSQL (rustls on ring): CA files and the
//!   certificate checks of `rediss://` and libpq's `sslmode`s.
//! - [`prometheus`]: the metric names, the recorder and the `/metrics` listener.
//! - [`healthcheck`]: the `synckairos healthcheck` command, a gRPC health client
//!   for the container image's HEALTHCHECK (reads no configuration but the listener's).
//! - [`probes`]: readiness (store, Pub/Sub, audit, draining) and the
//!   `/health` and `/ready` answers, served on the gRPC port and followed by
//!   gRPC health.
//! - [`config`], [`telemetry`], [`startup`]: settings, logs/traces, wiring.
//!
//! `fuzzing` (hidden) re-exports what the `cargo fuzz` targets in `fuzz/` drive.

pub mod app;
mod architecture;
pub mod audit;
pub mod auth;
pub mod config;
pub mod dependency_tls;
pub mod engine;
pub mod fanout;
pub mod grpc;
pub mod healthcheck;
pub mod probes;
pub mod prometheus;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod timers;
pub mod tls;
pub mod wire;

/// What the `cargo fuzz` targets (`fuzz/`, docs/fuzzing.md) drive, with the
/// least surface: re-exports of the request conversion the gRPC handlers use
/// (`grpc::convert`, a private room otherwise) and wrappers of the page-token
/// codec. Not an API: nothing but the fuzz targets uses it.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::grpc::convert::{
        adjust_target, create_request, event, guards, lag_ms, page_token, session, session_id,
        start_first, stream_item, switch_args,
    };

    /// The session the fuzzed page tokens are bound to.
    fn fuzzed_session() -> crate::engine::SessionKey {
        crate::engine::SessionKey {
            tenant: crate::engine::Tenant::default_tenant(),
            id: crate::engine::SessionId::parse("session_id", "fuzz").expect("a valid session id"),
        }
    }

    /// ListSessionEvents' page-token decoder (`audit::decode_token`), for
    /// the session `default/fuzz`.
    pub fn decode_page_token(token: &str) -> Result<(String, u64), crate::audit::AuditError> {
        crate::audit::decode_token(&fuzzed_session(), token)
    }

    /// ListSessionEvents' page-token encoder (`audit::encode_token`), for
    /// the session `default/fuzz`.
    pub fn encode_page_token(epoch: &str, version: u64) -> String {
        crate::audit::encode_token(&fuzzed_session(), epoch, version)
    }

    /// ListSessions' page-token decoder (`app::list::decode_token`), for
    /// the tenant `default` with no status filter: the position
    /// (`created_at`, session id) a token resumes after.
    pub fn decode_list_token(token: &str) -> Result<(i64, String), crate::app::AppError> {
        crate::app::list::decode_token(
            &crate::engine::Tenant::default_tenant(),
            crate::app::StatusFilter::default(),
            token,
        )
        .map(|p| (p.created_at, p.id.as_str().to_owned()))
    }

    /// ListSessions' page-token encoder (`app::list::encode_token`), as
    /// `decode_list_token`; `None` when `id` is not a session id.
    pub fn encode_list_token(created_at: i64, id: &str) -> Option<String> {
        let pos = crate::store::ListPosition {
            created_at,
            id: crate::engine::SessionId::parse("session_id", id).ok()?,
        };
        Some(crate::app::list::encode_token(
            &crate::engine::Tenant::default_tenant(),
            crate::app::StatusFilter::default(),
            &pos,
        ))
    }
}

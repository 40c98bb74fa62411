//! SyncKairos: authoritative, synchronized clocks for shared sessions, over gRPC.
//!
//! # Rooms
//! Arrows point one way: engine <- wire <- store/fanout/timers/audit <- app <- grpc <- startup
//! <- main.
//!
//! - [`engine`]: the pure clock rules; `apply(session, command, now)`. No I/O.
//! - [`store`]: `SessionStore` and its engines, `memory` and `redis`: versioned
//!   commits, event log, audit append, deadline index and claims, the store's clock.
//! - [`fanout`]: the per-replica hub handing committed events to local streams,
//!   and its Redis Pub/Sub side.
//! - [`timers`]: sleeps until deadlines, claims them and fires them through the store.
//! - [`audit`]: the PostgreSQL trail: migrations, batch writer, history queries.
//! - [`app`]: one async fn per RPC; `AppError`; the Subscribe producer.
//! - [`grpc`]: tonic service, proto <-> domain conversion, the error table,
//!   health and reflection.
//! - [`wire`]: the bytes of stored states and events, the log, the audit
//!   stream and Pub/Sub batches; written (and read back) by the store, read by
//!   the fan-out and the audit.
//! - [`config`], [`telemetry`], [`startup`]: settings, logs/traces, wiring.

pub mod app;
mod architecture;
pub mod audit;
pub mod config;
pub mod engine;
pub mod fanout;
pub mod grpc;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod timers;
pub mod wire;

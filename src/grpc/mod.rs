//! The only room that knows tonic and prost (but for startup's listener): the generated code (`pb`), the
//! `SyncService` implementation, proto <-> domain conversion, the one
//! `AppError -> Status` table, the router with health and reflection, and
//! what wraps every call: who the caller is (and the common name of its
//! client certificate), its rate limits, and the guard that turns a panic
//! into `INTERNAL`; the HTTP probes `/health` and `/ready` on the same port;
//! and gRPC-Web with CORS for browsers.

mod auth;
pub mod caller;
pub mod client_cert;
// pub(crate) only so that lib.rs's `fuzzing` module can re-export what the
// fuzz targets drive (fuzz/); nothing outside the crate sees it otherwise.
pub(crate) mod convert;
mod error;
mod observe;
mod panic;
pub mod probes;
mod rate;
mod service;
mod tenant_streams;
mod watch;
pub mod web;

pub use observe::{ACCESS_TARGET, CODE_NAMES};
pub use panic::{CatchPanic, catch_panic, panic_message};
pub use service::{HealthControl, router};

/// Code generated from `proto/synckairos/v1/sync.proto`.
pub mod pb {
    tonic::include_proto!("synckairos.v1");

    /// Descriptor set served by reflection (v1 and v1alpha).
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("synckairos_descriptor");
}

//! Integration tests: each test spawns its own SyncKairos server (memory
//! engine, port 0) and talks to it over real gRPC.
//!
//!   CARGO_TARGET_DIR=$HOME/.cache/synckairos-target cargo test --test api -- --nocapture
//!
//! `--nocapture` shows the measured flag lateness; `TEST_LOG=1` shows server logs.

mod concurrency;
mod flag;
mod grpcurl;
mod health;
mod helpers;
mod latency;
mod sessions;
mod subscribe;

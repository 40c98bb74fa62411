//! Integration tests: each test spawns its own SyncKairos server (port 0) and
//! talks to it over real gRPC. The engine-agnostic suite runs on the memory
//! engine, and again on the redis engine with `SYNCKAIROS_TEST_ENGINE=redis`
//! (each test then gets its own private redis-server on a free port).
//! `fuzz_regressions` is the exception: it replays the fuzz targets' inputs
//! through the library, no server.
//!
//!   CARGO_TARGET_DIR=$HOME/.cache/synckairos-target cargo test --test api -- --nocapture
//!
//! `--nocapture` shows the measured flag lateness; `TEST_LOG=1` shows server logs.

mod audit;
mod audit_outbox;
mod auth;
mod auth_cross_language;
mod auth_logs;
mod browser;
mod child;
mod concurrency;
mod dep_tls;
mod deploy_files;
mod docs;
mod drain;
mod error_details;
mod expiry;
mod flag;
mod fuzz_regressions;
mod game_rules;
mod ghz_configs;
mod grpc_web;
mod grpcurl;
mod health;
mod healthcheck;
mod helpers;
mod hostile;
mod hostile_input;
mod latency;
mod limits;
mod list_sessions;
mod lost_answer;
mod metrics;
mod panic;
mod pg;
mod probes;
mod redis_server;
mod replicas;
mod request_ids;
mod sessions;
mod silent_faults;
mod subscribe;
mod tcp_proxy;
mod timers;
mod tls;
mod traces;
mod watch_sessions;

//! `synckairos-load`: the load generator (ghz cannot be installed here).
//! Drives a running SyncKairos over gRPC and prints throughput and latency
//! percentiles; `breakdown` also times Redis and the store directly, in one run.
//! This file owns the command line (every mode and flag, with its default) and
//! hands each mode to its module; what the modes share is in `shared`.
//!
//! ```text
//! synckairos-load switch    --target 127.0.0.1:50051 --sessions 1000 --concurrency 64 --seconds 10
//!                           [--api-key SECRET] [--token KID:BASE64SECRET]
//! synckairos-load time      --target 127.0.0.1:50051 --concurrency 64 --seconds 10
//! synckairos-load auth-cost
//! synckairos-load fanout    --target A --subscribe-target B --sessions 100 --streams 1000 --seconds 10
//! synckairos-load subscribe-flood --target A --subscribe-target B --sessions 20 --rate 200 --flood-rate 2000
//! synckairos-load watch     --target A --watch-target B --watch-pid PID_B --subscribe-target C --subscribe-pid PID_C --sessions 10000 --rate 200
//! synckairos-load flags     --target A,B,C --sessions 10000 --spread-ms 1000
//! synckairos-load breakdown --target 127.0.0.1:50051 --redis redis://127.0.0.1:6379 --seconds 5
//! synckairos-load audit-ingest --redis redis://127.0.0.1:6379 --database postgres://... --rate 20000 --seconds 10
//! ```

mod audit_ingest;
mod auth_cost;
mod breakdown;
mod fanout;
mod flags;
mod shared;
mod subscribe_flood;
mod switch;
mod time;
mod watch;

/// The server's allocator, so that `breakdown` times the store as it runs in service.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Load generator for SyncKairos")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// Server address(es), comma-separated; calls are spread over them.
    #[arg(long, default_value = "127.0.0.1:50051")]
    target: String,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// How long to measure (after a 1 s warm-up).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// gRPC connections per target (calls are spread over them).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// An API key sent on every call (`authorization: Bearer <key>`).
    #[arg(long)]
    api_key: Option<String>,
    /// `KID:BASE64SECRET` of a `[[signer]]`: `switch` then mints a play
    /// token for each participant of each session and sends the mover's on
    /// every SwitchCycle (set-up calls still use `--api-key`).
    #[arg(long)]
    token: Option<String>,
}

#[derive(Subcommand)]
enum Mode {
    /// SwitchCycle across N running sessions.
    Switch {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1000)]
        sessions: usize,
    },
    /// What authenticating one call costs, in this process (no server).
    AuthCost,
    /// GetServerTime: the transport floor.
    Time {
        #[command(flatten)]
        common: Common,
    },
    /// Switch on one replica, time the event's arrival on streams held by another.
    Fanout {
        #[command(flatten)]
        common: Common,
        /// Where the Subscribe streams are opened.
        #[arg(long)]
        subscribe_target: String,
        #[arg(long, default_value_t = 100)]
        sessions: usize,
        /// Streams in all, spread evenly over the sessions.
        #[arg(long, default_value_t = 1000)]
        streams: usize,
        /// Switches per second (all sessions together).
        #[arg(long, default_value_t = 200)]
        rate: u64,
    },
    /// The fanout figure without and then with a flood of Subscribe calls to
    /// missing ids on the streams' replica (one stream per session).
    SubscribeFlood {
        #[command(flatten)]
        common: Common,
        /// Where the real streams are opened and the flood is sent.
        #[arg(long)]
        subscribe_target: String,
        #[arg(long, default_value_t = 20)]
        sessions: usize,
        /// Switches per second (all sessions together).
        #[arg(long, default_value_t = 200)]
        rate: u64,
        /// Subscribe calls to missing ids per second.
        #[arg(long, default_value_t = 2000)]
        flood_rate: u64,
    },
    /// Switch on one replica, time the event on one WatchSessions over every
    /// session on another; then RSS of that watch vs one Subscribe per session.
    Watch {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        watch_target: String,
        /// The watch replica's pid (same machine), for its RSS.
        #[arg(long)]
        watch_pid: u32,
        /// A fresh replica for the Subscribe streams.
        #[arg(long)]
        subscribe_target: String,
        #[arg(long)]
        subscribe_pid: u32,
        #[arg(long, default_value_t = 10_000)]
        sessions: usize,
        /// Switches per second (all sessions together).
        #[arg(long, default_value_t = 200)]
        rate: u64,
    },
    /// Many sessions whose deadlines fall within one window: how late do the flags fire?
    Flags {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 10_000)]
        sessions: usize,
        /// Deadlines are spread over this window, starting 3 s after creation ends.
        #[arg(long, default_value_t = 1000)]
        spread_ms: u64,
    },
    /// Sustained audit ingest: events appended to the audit streams at a rate, drained by a running replica.
    AuditIngest {
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis: String,
        /// The database the replica writes its audit to.
        #[arg(long)]
        database: String,
        #[arg(long, default_value_t = 20_000)]
        rate: u64,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[arg(long, default_value_t = 16)]
        buckets: u32,
    },
    /// Where the time of one switch goes, one call in flight: Redis PING, the
    /// store's commit called directly, GetServerTime and SwitchCycle over gRPC.
    Breakdown {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis: String,
        /// Run only these rows, comma-separated (a, a2, a', b, c, d, e, b', c', d'); all by default.
        #[arg(long, default_value = "")]
        only: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().mode {
        Mode::Switch { common, sessions } => switch::run(common, sessions).await,
        Mode::AuthCost => auth_cost::run(),
        Mode::Watch {
            common,
            watch_target,
            watch_pid,
            subscribe_target,
            subscribe_pid,
            sessions,
            rate,
        } => {
            let targets = watch::Targets {
                watch_target,
                watch_pid,
                subscribe_target,
                subscribe_pid,
            };
            watch::run(common, targets, sessions, rate).await
        }
        Mode::Time { common } => time::run(common).await,
        Mode::Fanout {
            common,
            subscribe_target,
            sessions,
            streams,
            rate,
        } => fanout::run(common, subscribe_target, sessions, streams, rate).await,
        Mode::SubscribeFlood {
            common,
            subscribe_target,
            sessions,
            rate,
            flood_rate,
        } => subscribe_flood::run(common, subscribe_target, sessions, rate, flood_rate).await,
        Mode::Flags {
            common,
            sessions,
            spread_ms,
        } => flags::run(common, sessions, spread_ms).await,
        Mode::Breakdown {
            common,
            redis,
            only,
        } => breakdown::run(common, redis, only).await,
        Mode::AuditIngest {
            redis,
            database,
            rate,
            seconds,
            buckets,
        } => audit_ingest::run(redis, database, rate, seconds, buckets).await,
    }
}

//! `synckairos`: config -> telemetry -> Application::build -> run until SIGTERM/SIGINT.
//! `synckairos keys new|signer ...`: mint an API key or a token signer (src/auth/cli.rs).
//! `synckairos healthcheck`: probe the local server's gRPC health (src/healthcheck.rs),
//! exit 0 when SERVING, 1 otherwise: the container image's HEALTHCHECK.

use std::process::ExitCode;

/// mimalloc: the hot path allocates many small, short-lived buffers (request,
/// session JSON, Redis replies); glibc malloc spent ~10% of a switch-heavy
/// profile in malloc/free/consolidate.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use synckairos::config::Config;
use synckairos::startup::Application;
use synckairos::telemetry;

/// The commands; with none, the server runs (configured by the environment).
#[derive(clap::Parser)]
#[command(name = "synckairos")]
enum Cli {
    /// API keys and player-token signers for the keys file.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Probe the local server's grpc.health.v1.Health: exit 0 when SERVING,
    /// 1 otherwise (one line on stderr says why). Reads only SYNCKAIROS_LISTEN,
    /// PORT, SYNCKAIROS_TLS_CERT and SYNCKAIROS_TLS_CLIENT_CA.
    Healthcheck(HealthcheckArgs),
}

#[derive(clap::Args)]
struct HealthcheckArgs {
    /// host:port to probe [default: 127.0.0.1 and the port of SYNCKAIROS_LISTEN, else PORT, else 50051]
    #[arg(long)]
    addr: Option<String>,
    /// The whole probe must answer within this (e.g. 2s, 500ms).
    #[arg(long, default_value = "2s", value_parser = parse_timeout)]
    timeout: std::time::Duration,
    /// The health service to check ("" is the whole server).
    #[arg(long, default_value = "")]
    service: String,
    /// PEM client certificate, for a server with SYNCKAIROS_TLS_CLIENT_CA.
    #[arg(long, env = "SYNCKAIROS_HEALTHCHECK_CLIENT_CERT")]
    client_cert: Option<std::path::PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, env = "SYNCKAIROS_HEALTHCHECK_CLIENT_KEY")]
    client_key: Option<std::path::PathBuf>,
}

fn parse_timeout(raw: &str) -> Result<std::time::Duration, String> {
    synckairos::config::parse_duration(raw)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{raw:?} is not a duration like 2s or 500ms"))
}

#[derive(clap::Subcommand)]
enum KeysCmd {
    /// A fresh API key: prints its secret and the [[key]] block to paste.
    New {
        #[arg(long)]
        tenant: String,
        /// admin | play | read
        #[arg(long)]
        role: String,
        /// Shown in logs; a client certificate's CN.
        #[arg(long)]
        id: String,
    },
    /// A fresh HS256 signer for player tokens: prints its [[signer]] block.
    Signer {
        #[arg(long)]
        tenant: String,
        /// The JWT header's kid.
        #[arg(long)]
        kid: String,
    },
}

/// Runs a command of the command line; the server is not started.
async fn command(cli: Cli) -> ExitCode {
    match cli {
        Cli::Keys(keys) => keys_command(keys),
        Cli::Healthcheck(args) => healthcheck_command(args).await,
    }
}

/// Exit codes as Docker's HEALTHCHECK reads them: 0 healthy, 1 unhealthy.
async fn healthcheck_command(args: HealthcheckArgs) -> ExitCode {
    let opts = synckairos::healthcheck::Options {
        addr: args.addr,
        timeout: args.timeout,
        service: args.service,
        client_cert: args.client_cert,
        client_key: args.client_key,
    };
    match synckairos::healthcheck::run(&opts, |k| std::env::var(k).ok()).await {
        Ok(line) => {
            println!("synckairos healthcheck: {line}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("synckairos healthcheck: {why}");
            ExitCode::from(1)
        }
    }
}

fn keys_command(keys: KeysCmd) -> ExitCode {
    let minted = match keys {
        KeysCmd::New { tenant, role, id } => {
            synckairos::auth::cli::new_key(&tenant, &role, &id).map(|m| {
                format!(
                    "# the secret, for the client only (sent as authorization: Bearer <secret>); it is stored nowhere:\n{}\n\n# paste into the keys file:\n{}",
                    m.secret, m.block
                )
            })
        }
        KeysCmd::Signer { tenant, kid } => {
            synckairos::auth::cli::new_signer(&tenant, &kid)
                .map(|m| format!("# paste into the keys file, and give hs256 to the game server that mints tokens:\n{}", m.block))
        }
    };
    match minted {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("synckairos keys: {e}");
            ExitCode::from(2)
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    if std::env::args_os().nth(1).is_some() {
        use clap::Parser as _;
        // An unknown command or a bad flag: clap prints why and exits 2.
        return command(Cli::parse()).await;
    }
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("synckairos: bad configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let _telemetry = match telemetry::init(
        config.log_format,
        config.otlp_endpoint.as_deref(),
        config.access_log,
    ) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("synckairos: cannot start telemetry: {e}");
            return ExitCode::from(2);
        }
    };
    tracing::info!(?config, "starting");
    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!("cannot start: {e:#}");
            return ExitCode::from(1);
        }
    };
    match app.run_until_stopped(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("server failed: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

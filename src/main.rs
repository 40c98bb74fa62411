//! `synckairos`: config -> telemetry -> Application::build -> run until SIGTERM/SIGINT.
//! `synckairos keys new|signer ...`: mint an API key or a token signer (src/auth/cli.rs).

use std::process::ExitCode;

/// mimalloc: the hot path allocates many small, short-lived buffers (request,
/// session JSON, Redis replies); glibc malloc spent ~10% of a switch-heavy
/// profile in malloc/free/consolidate.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use synckairos::config::Config;
use synckairos::startup::Application;
use synckairos::telemetry;

/// The key-minting commands; the server takes no arguments.
#[derive(clap::Parser)]
#[command(name = "synckairos")]
enum Cli {
    /// API keys and player-token signers for the keys file.
    #[command(subcommand)]
    Keys(KeysCmd),
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

fn keys_command() -> ExitCode {
    use clap::Parser as _;
    let minted = match Cli::parse() {
        Cli::Keys(KeysCmd::New { tenant, role, id }) => {
            synckairos::auth::cli::new_key(&tenant, &role, &id).map(|m| {
                format!(
                    "# the secret, for the client only (sent as authorization: Bearer <secret>); it is stored nowhere:\n{}\n\n# paste into the keys file:\n{}",
                    m.secret, m.block
                )
            })
        }
        Cli::Keys(KeysCmd::Signer { tenant, kid }) => {
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
        return keys_command();
    }
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("synckairos: bad configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let _telemetry = match telemetry::init(config.log_format, config.otlp_endpoint.as_deref()) {
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

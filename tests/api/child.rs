//! The real `synckairos` binary as a child process, for tests that kill a
//! replica with SIGKILL (no shutdown, no drain, no acknowledgement: a crash).

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use synckairos::grpc::pb;
use tonic::transport::Endpoint;

use crate::helpers::Client;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub struct ChildReplica {
    child: Child,
}

impl ChildReplica {
    /// Spawns `synckairos` on the redis engine (audit on when `database_url`
    /// is given) and waits until it answers gRPC.
    pub async fn spawn(redis_url: &str, database_url: Option<&str>) -> (Self, Client) {
        let mut env = vec![
            ("SYNCKAIROS_ENGINE", "redis".to_owned()),
            ("REDIS_URL", redis_url.to_owned()),
        ];
        if let Some(db) = database_url {
            env.push(("DATABASE_URL", db.to_owned()));
        }
        let (me, client, _) = Self::spawn_with(&env).await;
        (me, client)
    }

    /// Spawns `synckairos` with `env` over a clean slate (no Redis, audit,
    /// metrics or OTLP unless `env` sets them; `RUST_LOG=warn`) and waits
    /// until it answers gRPC; also says where it listens.
    pub async fn spawn_with(env: &[(&str, String)]) -> (Self, Client, SocketAddr) {
        Self::spawn_logged(env, None).await
    }

    /// `spawn_with`, its logs (stdout and stderr) written to `log` when given.
    pub async fn spawn_logged(
        env: &[(&str, String)],
        log: Option<&std::path::Path>,
    ) -> (Self, Client, SocketAddr) {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        Self::spawn_at(addr, env, log).await
    }

    /// `spawn_logged` on a given address: a replica started again where a
    /// killed one listened, so that its clients find it at the same place.
    /// A server with keys answers the readiness probe UNAUTHENTICATED, which
    /// counts as answering.
    pub async fn spawn_at(
        addr: SocketAddr,
        env: &[(&str, String)],
        log: Option<&std::path::Path>,
    ) -> (Self, Client, SocketAddr) {
        let (stdout, stderr) = match log {
            Some(path) => {
                let f = std::fs::File::create(path).expect("create the log file");
                (
                    Stdio::from(f.try_clone().expect("the log file")),
                    Stdio::from(f),
                )
            }
            None if std::env::var_os("TEST_LOG").is_some() => (Stdio::null(), Stdio::inherit()),
            None => (Stdio::null(), Stdio::null()),
        };
        let mut command = Command::new(env!("CARGO_BIN_EXE_synckairos"));
        command
            .env("SYNCKAIROS_LISTEN", addr.to_string())
            .env("SYNCKAIROS_ENGINE", "memory")
            .env("RUST_LOG", "warn")
            .env_remove("REDIS_URL")
            .env_remove("SYNCKAIROS_REDIS_BUCKETS")
            .env_remove("DATABASE_URL")
            .env_remove("SYNCKAIROS_METRICS_LISTEN")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().expect("spawn the synckairos binary");
        let mut me = ChildReplica { child };
        let t0 = Instant::now();
        loop {
            if let Some(exit) = me.child.try_wait().expect("child status") {
                panic!("synckairos child exited early: {exit}");
            }
            let endpoint = Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect_timeout(Duration::from_millis(500));
            if let Ok(channel) = endpoint.connect().await {
                let mut client = pb::sync_service_client::SyncServiceClient::new(channel);
                let answer = client.get_server_time(pb::GetServerTimeRequest {}).await;
                if answer.is_ok() || answer.is_err_and(|s| s.code() == tonic::Code::Unauthenticated)
                {
                    return (me, client, addr);
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "synckairos child did not answer on {addr}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no shutdown, no drain, no clean-up — like a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildReplica {
    fn drop(&mut self) {
        self.kill();
    }
}

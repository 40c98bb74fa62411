//! TLS to the dependencies (docs/dependencies-tls.md), against real servers
//! with certificates made here with rcgen (a CA and a server certificate for
//! `localhost` and `127.0.0.1`):
//!
//! - a private `redis-server` with a TLS port only: the redis engine over
//!   `rediss://` with `SYNCKAIROS_REDIS_CA` serves calls, Subscribe streams
//!   (the Pub/Sub connection), flags (timers) and the audit (its stream
//!   reader); without the CA it fails fast with UNAVAILABLE;
//! - private PostgreSQL clusters (initdb in a temp dir, as `postgres` when
//!   the tests run as root), one with `ssl=on` shared by the tests that run
//!   together, one without SSL: libpq's `sslmode`s as documented, and the
//!   service's audit over `sslmode=require` really on TLS (`pg_stat_ssl`).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use synckairos::audit::connect::PgTarget;
use synckairos::config::{Config, EngineKind, Secret};
use synckairos::dependency_tls::CaFile;
use synckairos::grpc::pb::{self, EventType};
use synckairos::startup::Application;
use tonic::Code;

use crate::helpers::*;
use crate::pg::TestDb;

// ---------- certificates ----------

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA and a server certificate it signed, for `localhost` and
/// `127.0.0.1`, as PEM files: `ca.crt`, `server.crt`, `server.key`.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = TempDir::new("sk-tls");
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Its own name: a CA that did not sign a certificate is then an unknown issuer.
        let name = format!("synckairos test CA {}", uuid::Uuid::new_v4().simple());
        ca.distinguished_name.push(DnType::CommonName, name);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut server =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = server.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.0.join("ca.crt"), ca_cert.pem()).unwrap();
        std::fs::write(dir.0.join("server.crt"), cert.pem()).unwrap();
        std::fs::write(dir.0.join("server.key"), key.serialize_pem()).unwrap();
        Self { dir }
    }

    fn ca_path(&self) -> PathBuf {
        self.dir.0.join("ca.crt")
    }

    fn ca(&self) -> CaFile {
        CaFile::read(self.ca_path()).unwrap()
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.0.join(name)
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

// ---------- Redis over TLS ----------

/// A private `redis-server` listening on a TLS port only (no plaintext port).
struct TlsRedis {
    port: u16,
    child: Child,
}

impl TlsRedis {
    fn start(pki: &Pki) -> Self {
        let port = free_port();
        let path = |name: &str| pki.file(name).display().to_string();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--tls-cert-file", &path("server.crt")])
            .args(["--tls-key-file", &path("server.key")])
            .args(["--tls-ca-cert-file", &path("ca.crt")])
            .args(["--tls-auth-clients", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (tests/run.sh installs it)");
        let server = Self { port, child };
        // Up when a TLS PING (through the service's own client) answers.
        let client = synckairos::store::redis::client(&server.url(), Some(&pki.ca())).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let pong = client
                .get_connection_with_timeout(Duration::from_millis(500))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if pong.is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server with TLS on port {port} did not come up");
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis_tls_config(redis: &TlsRedis, ca: Option<CaFile>) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        engine: EngineKind::Redis,
        redis_url: Some(Secret::new(redis.url())),
        redis_ca: ca,
        shutdown_grace: Duration::from_secs(1),
        ..Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_engine_runs_over_rediss_with_a_private_ca() {
    let pki = Pki::new();
    let redis = TlsRedis::start(&pki);
    let db = TestDb::create();
    let mut config = redis_tls_config(&redis, Some(pki.ca()));
    config.database_url = Some(Secret::new(db.url()));
    let mut app = launch(config, None, shared_isolation()).await;

    // Commits (the pool) and a Subscribe stream (the Pub/Sub connection).
    let id = unique_id("tls-switch");
    let (mut stream, _) = start_watched(&mut app.client, chess(&id, HOUR_MS)).await;
    switch(&mut app.client, &id).await;
    let e = within(PROMPT, "SWITCHED", next_change(&mut stream)).await;
    assert_eq!(event_type(&e), EventType::Switched, "{e:?}");

    // A flag, fired by the timers (deadline claims) with nobody calling.
    let flag = unique_id("tls-flag");
    let (mut stream, _) = start_watched(&mut app.client, chess(&flag, 300)).await;
    let e = within(Duration::from_secs(3), "EXPIRED", next_change(&mut stream)).await;
    assert_eq!(event_type(&e), EventType::Expired, "{e:?}");

    // The audit writer read the events from the audit streams (its own
    // connection) into Postgres: created, started, switched.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // UNAVAILABLE until the writer has connected and run the migrations.
        let page = app
            .client
            .list_session_events(pb::ListSessionEventsRequest {
                session_id: id.clone(),
                page_size: 10,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().events.len());
        if page.as_ref().is_ok_and(|n| *n >= 3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the audit never got the events: {page:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rediss_server_the_service_does_not_trust_fails_calls_fast_with_unavailable() {
    let pki = Pki::new();
    let redis = TlsRedis::start(&pki);
    let stranger = Pki::new();
    // Mozilla's roots (no CA file), and a CA that did not sign the server's certificate.
    for ca in [None, Some(stranger.ca())] {
        let label = format!("{:?}", ca.as_ref().map(|c| c.path().to_owned()));
        // Start-up goes on without Redis (it may come later), and does not hang.
        let mut app = tokio::time::timeout(
            Duration::from_secs(5),
            launch(redis_tls_config(&redis, ca), None, shared_isolation()),
        )
        .await
        .unwrap_or_else(|_| panic!("{label}: start-up hung"));
        let started = Instant::now();
        let result = tokio::time::timeout(
            Duration::from_secs(5),
            app.client
                .create_session(chess(&unique_id("untrusted"), HOUR_MS)),
        )
        .await
        .unwrap_or_else(|_| panic!("{label}: CreateSession hung"));
        assert_code(result, Code::Unavailable);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{label}: UNAVAILABLE took {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn redis_tls_settings_that_cannot_work_stop_start_up_naming_the_variable() {
    let pki = Pki::new();
    let ca = pki.ca();
    let err = synckairos::store::redis::client("redis://127.0.0.1:6379", Some(&ca)).unwrap_err();
    assert_eq!(err.var, "SYNCKAIROS_REDIS_CA", "{err}");
    assert!(err.reason.contains("rediss://"), "{err}");
    let err =
        synckairos::store::redis::client("rediss://127.0.0.1:6379/#insecure", None).unwrap_err();
    assert_eq!(err.var, "REDIS_URL", "{err}");
    assert!(err.reason.contains("#insecure"), "{err}");
    assert!(synckairos::store::redis::client("rediss://127.0.0.1:6379", Some(&ca)).is_ok());

    // Through the service: a plaintext URL with a CA file is refused at build.
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        engine: EngineKind::Redis,
        redis_url: Some(Secret::new("redis://127.0.0.1:1")),
        redis_ca: Some(ca),
        ..Config::default()
    };
    let err = Application::build(config).await.err().expect("refused");
    assert!(
        err.to_string().starts_with("SYNCKAIROS_REDIS_CA: "),
        "{err}"
    );
}

#[test]
fn a_bad_ca_file_stops_start_up_with_one_line_naming_the_variable() {
    let dir = TempDir::new("sk-bad-ca");
    let not_pem = dir.0.join("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let missing = dir.0.join("missing.pem");
    for var in ["SYNCKAIROS_REDIS_CA", "SYNCKAIROS_DATABASE_CA"] {
        for path in [&not_pem, &missing] {
            let err = Config::from_lookup(|k| (k == var).then(|| path.display().to_string()))
                .expect_err("a bad CA file is refused");
            assert_eq!(err.var, var, "{err}");
            let line = err.to_string();
            assert!(!line.contains('\n'), "{line}");
            assert!(
                line.contains("missing.pem") || line.contains("not.pem"),
                "{line}"
            );
        }
    }
    let pki = Pki::new();
    let ok = Config::from_lookup(|k| {
        (k == "SYNCKAIROS_DATABASE_CA").then(|| pki.ca_path().display().to_string())
    })
    .unwrap();
    assert!(ok.database_ca.is_some());
}

// ---------- PostgreSQL over TLS ----------

/// The newest PostgreSQL's binaries (Debian: /usr/lib/postgresql/<v>/bin).
fn pg_bin(name: &str) -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL under /usr/lib/postgresql")
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path())))
        .collect();
    versions.sort();
    let (_, dir) = versions.pop().expect("a PostgreSQL version");
    dir.join("bin").join(name)
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a PostgreSQL server binary, as `postgres` when we are root
/// (initdb and postgres refuse to run as root).
fn pg_command(name: &str) -> Command {
    if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(pg_bin(name));
        c
    } else {
        Command::new(pg_bin(name))
    }
}

fn run(mut c: Command, what: &str) {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private PostgreSQL cluster in a temp dir (trust auth, user `postgres`,
/// 127.0.0.1 and a socket in the dir), with `ssl=on` and the certificates
/// of its `Pki` or without SSL. Stopped and removed on drop.
struct PgCluster {
    port: u16,
    dir: TempDir,
    pki: Pki,
}

impl PgCluster {
    fn start(ssl: bool) -> Self {
        let pki = Pki::new();
        let dir = TempDir::new("sk-pg");
        let data = dir.0.join("data");
        let port = free_port();
        let mut server_files = Vec::new();
        if ssl {
            for name in ["server.crt", "server.key"] {
                let to = dir.0.join(name);
                std::fs::copy(pki.file(name), &to).unwrap();
                server_files.push(to);
            }
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&server_files[1], std::fs::Permissions::from_mode(0o600))
                .unwrap();
        }
        if running_as_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.args(["-R", "postgres:postgres"]).arg(&dir.0);
                    c
                },
                "chown the cluster dir to postgres",
            );
        }
        let mut initdb = pg_command("initdb");
        initdb
            .args(["-A", "trust", "-U", "postgres", "-N", "-E", "UTF8", "-D"])
            .arg(&data);
        run(initdb, "initdb");
        let mut options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            dir.0.display()
        );
        if ssl {
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                server_files[0].display(),
                server_files[1].display()
            ));
        }
        let mut pg_ctl = pg_command("pg_ctl");
        pg_ctl
            .args(["-w", "-t", "30", "-D"])
            .arg(&data)
            .arg("-l")
            .arg(dir.0.join("log"))
            .args(["-o", &options, "start"]);
        run(pg_ctl, "pg_ctl start");
        Self { port, dir, pki }
    }

    /// `postgres://postgres@127.0.0.1:PORT/<db>?<params>`.
    fn url(&self, db: &str, params: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}?{params}", self.port)
    }

    /// One SQL statement as the admin, over the cluster's socket.
    fn sql(&self, sql: &str) -> String {
        let (socket, port) = (self.dir.0.to_string_lossy(), self.port.to_string());
        crate::pg::psql(
            &[
                "-h", &socket, "-p", &port, "-U", "postgres", "-d", "postgres",
            ],
            sql,
        )
    }

    /// A fresh database's name.
    fn create_db(&self) -> String {
        let name = format!("sk_tls_{}", uuid::Uuid::new_v4().simple());
        self.sql(&format!("CREATE DATABASE {name}"));
        name
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let mut stop = pg_command("pg_ctl");
        stop.args(["-w", "-m", "immediate", "-D"])
            .arg(self.dir.0.join("data"))
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = stop.status();
    }
}

/// The `ssl=on` cluster, shared by the tests of this file that run at the
/// same time (starting one costs seconds); stopped when the last lets go.
fn ssl_cluster() -> Arc<PgCluster> {
    static SHARED: Mutex<Weak<PgCluster>> = Mutex::new(Weak::new());
    let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(cluster) = shared.upgrade() {
        return cluster;
    }
    let cluster = Arc::new(PgCluster::start(true));
    *shared = Arc::downgrade(&cluster);
    cluster
}

#[derive(QueryableByName)]
struct Ssl {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    ssl: bool,
}

/// Whether a connection made by `target` (as the pool makes them) is on TLS,
/// or why it could not connect.
async fn connects_over_tls(target: &PgTarget) -> Result<bool, String> {
    let mut conn = target.connect().await.map_err(|e| e.to_string())?;
    let row: Ssl = diesel::sql_query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .get_result(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.ssl)
}

async fn outcome(url: &str, ca: Option<&CaFile>) -> Result<bool, String> {
    let target = PgTarget::parse(url, ca).unwrap_or_else(|e| panic!("{url}: {e}"));
    connects_over_tls(&target).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_over_sslmode_require_writes_its_events_over_tls() {
    let pg = ssl_cluster();
    let db = pg.create_db();
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: Some(Secret::new(pg.url(&db, "sslmode=require"))),
        ..Config::default()
    };
    let mut app = launch(config, None, shared_isolation()).await;
    let id = unique_id("pg-tls");
    create(&mut app.client, chess(&id, HOUR_MS)).await;
    start(&mut app.client, &id).await;
    switch(&mut app.client, &id).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new("psql")
            .arg("-h")
            .arg(&pg.dir.0)
            .args(["-p", &pg.port.to_string(), "-U", "postgres", "-d", &db])
            .args([
                "-qtA",
                "-c",
                &format!("SELECT count(*) FROM session_events WHERE session_id = '{id}'"),
            ])
            .output()
            .expect("psql");
        if String::from_utf8_lossy(&out.stdout).trim() == "3" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the events never reached Postgres: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every connection the service holds to its database is on TLS.
    let seen = pg.sql(&format!(
        "SELECT count(*) FILTER (WHERE s.ssl) || ' on TLS, ' || count(*) FILTER (WHERE NOT s.ssl) \
         || ' in plaintext' FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.datname = '{db}'"
    ));
    let (on_tls, plaintext) = seen.split_once(" on TLS, ").expect("two counts");
    assert!(on_tls.parse::<u32>().unwrap() > 0, "{seen}");
    assert_eq!(plaintext, "0 in plaintext", "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmodes_check_what_libpq_checks() {
    let pg = ssl_cluster();
    let db = pg.create_db();
    let ca = pg.pki.ca_path().display().to_string();
    let stranger = Pki::new();
    let stranger_ca = stranger.ca_path().display().to_string();
    // Connected to by its address, the server's certificate is for this name.
    let wrong_name = |params: &str| {
        format!(
            "postgres://postgres@not-the-server.invalid:{}/{db}?hostaddr=127.0.0.1&{params}",
            pg.port
        )
    };

    // prefer (the default) and require: encrypted, nothing checked.
    assert_eq!(outcome(&pg.url(&db, ""), None).await, Ok(true));
    assert_eq!(
        outcome(&pg.url(&db, "sslmode=require"), None).await,
        Ok(true)
    );
    assert_eq!(
        outcome(&pg.url(&db, "sslmode=disable"), None).await,
        Ok(false)
    );
    // verify-full: the chain, from sslrootcert= or SYNCKAIROS_DATABASE_CA, and the name.
    let full = format!("sslmode=verify-full&sslrootcert={ca}");
    assert_eq!(outcome(&pg.url(&db, &full), None).await, Ok(true));
    let with_env = pg.url(&db, "sslmode=verify-full");
    assert_eq!(outcome(&with_env, Some(&pg.pki.ca())).await, Ok(true));
    let err = outcome(&wrong_name(&full), None).await.unwrap_err();
    assert!(err.contains("certificate not valid for name"), "{err}");
    let untrusted = format!("sslmode=verify-full&sslrootcert={stranger_ca}");
    let err = outcome(&pg.url(&db, &untrusted), None).await.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    // verify-ca: the chain only, whatever the name.
    let chain = format!("sslmode=verify-ca&sslrootcert={ca}");
    assert_eq!(outcome(&wrong_name(&chain), None).await, Ok(true));
    let untrusted = format!("sslmode=verify-ca&sslrootcert={stranger_ca}");
    let err = outcome(&pg.url(&db, &untrusted), None).await.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    // require with a root certificate checks the chain, as libpq does.
    let err = outcome(&pg.url(&db, "sslmode=require"), Some(&stranger.ca()))
        .await
        .unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert_eq!(
        outcome(&wrong_name("sslmode=require"), Some(&pg.pki.ca())).await,
        Ok(true)
    );

    // The audit pool connects the same way.
    let pool = synckairos::audit::db::pool(pg.url(&db, &full).parse().unwrap(), 1);
    let mut conn = pool.get().await.expect("a pooled verify-full connection");
    let row: Ssl = diesel::sql_query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .get_result(&mut *conn)
        .await
        .unwrap();
    assert!(row.ssl);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_refuses_a_server_without_ssl() {
    let pg = PgCluster::start(false);
    let db = pg.create_db();
    let ca = pg.pki.ca();
    for params in ["sslmode=require", "sslmode=verify-full"] {
        let err = outcome(&pg.url(&db, params), Some(&ca)).await.unwrap_err();
        assert!(
            err.contains("server does not support TLS"),
            "{params}: {err}"
        );
    }
    let err = outcome(&pg.url(&db, "sslmode=require"), None)
        .await
        .unwrap_err();
    assert!(err.contains("server does not support TLS"), "{err}");
    // prefer falls back to plaintext (as libpq); disable never tries.
    assert_eq!(
        outcome(&pg.url(&db, "sslmode=prefer"), None).await,
        Ok(false)
    );
    assert_eq!(
        outcome(&pg.url(&db, "sslmode=disable"), None).await,
        Ok(false)
    );
}

#[tokio::test]
async fn database_urls_that_cannot_work_stop_start_up_naming_the_variable() {
    let pki = Pki::new();
    let ca = pki.ca();
    let path = pki.ca_path().display().to_string();
    let base = "postgres://u:secret@db.example:5432/sk";
    let cases: Vec<(String, Option<&CaFile>, &str, &str)> = vec![
        (
            format!("{base}?sslmode=allow"),
            None,
            "DATABASE_URL",
            "allow",
        ),
        (
            format!("{base}?sslmode=bogus"),
            None,
            "DATABASE_URL",
            "bogus",
        ),
        (
            format!("{base}?sslmode=verify-full"),
            None,
            "DATABASE_URL",
            "root certificate",
        ),
        (
            format!("{base}?sslmode=verify-ca"),
            None,
            "DATABASE_URL",
            "root certificate",
        ),
        (
            format!("{base}?sslmode=require&sslrootcert=system"),
            None,
            "DATABASE_URL",
            "verify-full",
        ),
        (
            format!("{base}?sslrootcert=/nonexistent/ca.pem"),
            None,
            "DATABASE_URL",
            "/nonexistent/ca.pem",
        ),
        (
            format!("{base}?sslrootcert={path}"),
            Some(&ca),
            "SYNCKAIROS_DATABASE_CA",
            "sslrootcert",
        ),
        (
            format!("{base}?nosuchoption=1"),
            None,
            "DATABASE_URL",
            "nosuchoption",
        ),
    ];
    for (url, ca, var, says) in cases {
        let err = PgTarget::parse(&url, ca).expect_err(&url);
        assert_eq!(err.var, var, "{url}: {err}");
        assert!(err.reason.contains(says), "{url}: {err}");
        assert!(!err.to_string().contains("secret"), "{err}");
    }
    // Good ones: sslrootcert=system implies verify-full; a percent-encoded path.
    let system = PgTarget::parse(&format!("{base}?sslrootcert=system"), None).unwrap();
    assert_eq!(
        system.ssl_mode(),
        synckairos::audit::connect::SslMode::VerifyFull
    );
    let encoded = path.replace('/', "%2F");
    PgTarget::parse(
        &format!("{base}?sslmode=verify-ca&sslrootcert={encoded}"),
        None,
    )
    .unwrap();

    // Through the service: start-up stops with one line naming the variable.
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: Some(Secret::new(format!("{base}?sslmode=verify-full"))),
        ..Config::default()
    };
    let err = Application::build(config).await.err().expect("refused");
    assert!(err.to_string().starts_with("DATABASE_URL: "), "{err}");
}

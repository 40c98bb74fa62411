//! A private PostgreSQL database per test, on the server that
//! `SYNCKAIROS_TEST_PG` names (an admin URL; default the machine's
//! `postgres://postgres@127.0.0.1:5432/postgres`, which tests/run.sh makes
//! sure is up). Created empty, dropped (forcibly) on drop. Uses `psql`.

use std::process::Command;

pub struct TestDb {
    pub name: String,
    admin: String,
}

pub fn admin_url() -> String {
    std::env::var("SYNCKAIROS_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Runs one SQL statement with psql, connected by `connection` (a URL, or
/// `-h … -p … -U … -d …`); returns its unaligned output, panics with psql's
/// message on failure.
pub fn psql(connection: &[&str], sql: &str) -> String {
    let out = Command::new("psql")
        .args(connection)
        .args(["-v", "ON_ERROR_STOP=1", "-qtA", "-c", sql])
        .output()
        .expect("psql on PATH (tests/run.sh installs PostgreSQL)");
    assert!(
        out.status.success(),
        "psql {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Runs one SQL statement as the admin.
pub fn admin_sql(sql: &str) -> String {
    psql(&[admin_url().as_str()], sql)
}

impl TestDb {
    pub fn create() -> Self {
        let name = format!("sk_test_{}", uuid::Uuid::new_v4().simple());
        admin_sql(&format!("CREATE DATABASE {name}"));
        TestDb {
            name,
            admin: admin_url(),
        }
    }

    /// The URL the service uses (`DATABASE_URL`).
    pub fn url(&self) -> String {
        match self.admin.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{}", self.name),
            None => panic!("SYNCKAIROS_TEST_PG must end in /<database>"),
        }
    }

    /// Runs SQL inside this database and returns psql's unaligned output.
    pub fn sql(&self, sql: &str) -> String {
        psql(&[self.url().as_str()], sql)
    }

    /// Waits (up to `limit`) until `table` exists: the audit writer runs the
    /// migrations first, on a connection of its own (a TLS handshake under
    /// the default `sslmode=prefer`), so a count taken at once can be an error.
    pub async fn wait_for_table(&self, table: &str, limit: std::time::Duration) {
        let t0 = std::time::Instant::now();
        while self.sql(&format!("SELECT to_regclass('{table}') IS NOT NULL")) != "t" {
            assert!(t0.elapsed() < limit, "{table}: the migrations never ran");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Refuses new connections and ends the open ones (Postgres "down" for this database).
    pub fn refuse_connections(&self) {
        admin_sql(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS false",
            self.name
        ));
        admin_sql(&format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{}'",
            self.name
        ));
    }

    pub fn allow_connections(&self) {
        admin_sql(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS true",
            self.name
        ));
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                self.admin.as_str(),
                "-qtA",
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

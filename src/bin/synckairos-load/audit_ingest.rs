//! `audit-ingest`: sustained audit ingest. Appends synthetic committed events
//! straight to the bucket audit streams at `--rate` (as the commits of many
//! replicas would), while a replica started with REDIS_URL and DATABASE_URL
//! drains them; then reads the ingest rate and the lag
//! (`inserted_at - occurred_at`) from Postgres.

use std::time::{Duration, Instant};

use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use synckairos::engine::{self, Event, EventKind};

use crate::shared::{run_id, two_players};

pub async fn run(
    redis_url: String,
    database: String,
    rate: u64,
    seconds: f64,
    buckets: u32,
) -> anyhow::Result<()> {
    // One small real session, cloned into every synthetic event.
    let new = two_players(engine::SessionId::parse("id", "ingest")?, 60_000)?;
    let (template, _) = engine::create(new, 0)?;
    let client = synckairos::store::redis::client(&redis_url, None)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let run = run_id();
    let sessions = 1_000u64;
    let tick = Duration::from_millis(10);
    let started = Instant::now();
    let mut ticker = tokio::time::interval(tick);
    let mut sent = 0u64;
    while started.elapsed().as_secs_f64() < seconds {
        ticker.tick().await;
        let target = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        if target <= sent {
            continue;
        }
        let mut pipe = redis::pipe();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_micros() as i64;
        while sent < target {
            let s = sent % sessions;
            let version = sent / sessions + 1;
            let mut session = template.clone();
            session.id = engine::SessionId::parse("id", &format!("{run}-{s}"))?;
            session.version = version;
            let event = Event {
                version,
                kind: EventKind::Switched,
                participant: None,
                at: now,
                session,
                lag: None,
            };
            let key = format!("default/{}", event.session.id);
            let b = crc32fast::hash(key.as_bytes()) % buckets;
            pipe.cmd("XADD")
                .arg(format!("sk:{{{b}}}:audit"))
                .arg("*")
                .arg("tenant")
                .arg("default")
                .arg("e")
                .arg(serde_json::to_vec(&event)?)
                .ignore();
            sent += 1;
        }
        pipe.query_async::<()>(&mut conn).await?;
    }
    let produce_secs = started.elapsed().as_secs_f64();
    println!(
        "appended {sent} events in {produce_secs:.1} s ({:.0}/s)",
        sent as f64 / produce_secs
    );

    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
        #[diesel(sql_type = diesel::sql_types::Double)]
        span_s: f64,
        #[diesel(sql_type = diesel::sql_types::Double)]
        p50_ms: f64,
        #[diesel(sql_type = diesel::sql_types::Double)]
        p99_ms: f64,
        #[diesel(sql_type = diesel::sql_types::Double)]
        max_ms: f64,
    }
    let mut pg = database
        .parse::<synckairos::audit::connect::PgTarget>()?
        .connect()
        .await?;
    let like = format!("{run}-%");
    let query = diesel::sql_query(
        "SELECT count(*) AS n,
                coalesce(extract(epoch FROM max(inserted_at) - min(occurred_at))::float8, 0) AS span_s,
                coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM inserted_at - occurred_at)) * 1000, 0) AS p50_ms,
                coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM inserted_at - occurred_at)) * 1000, 0) AS p99_ms,
                coalesce(extract(epoch FROM max(inserted_at - occurred_at))::float8 * 1000, 0) AS max_ms
         FROM session_events WHERE session_id LIKE $1",
    )
    .bind::<diesel::sql_types::Text, _>(&like);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let row: Row = query.clone().get_result(&mut pg).await?;
        if row.n as u64 >= sent || Instant::now() > deadline {
            println!(
                "Postgres: {} of {sent} events stored; ingest {:.0} events/s over {:.1} s; lag p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                row.n,
                row.n as f64 / row.span_s.max(1e-9),
                row.span_s,
                row.p50_ms,
                row.p99_ms,
                row.max_ms
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

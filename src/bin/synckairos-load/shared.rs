//! What the modes share: connecting to the targets, creating the sessions a
//! run drives, the worker loops that time the calls, and `Stats`, the latency
//! histogram (hdrhistogram) behind every mode's report line.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use synckairos::grpc::pb::{self, sync_service_client::SyncServiceClient};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::{Interceptor, interceptor::InterceptedService};
use tonic::transport::Channel;

use crate::Common;

/// A client whose calls carry `--api-key`, unless a call set its own.
pub type Client = SyncServiceClient<InterceptedService<Channel, Bearer>>;

/// Adds `authorization: Bearer <key>` to calls that carry none.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            if !req.metadata().contains_key("authorization") {
                req.metadata_mut().insert("authorization", v.clone());
            }
        }
        Ok(req)
    }
}

pub fn bearer_value(credential: &str) -> anyhow::Result<MetadataValue<Ascii>> {
    Ok(format!("Bearer {credential}").parse()?)
}

fn targets(common: &Common) -> Vec<String> {
    common
        .target
        .split(',')
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect()
}

pub async fn clients(common: &Common) -> anyhow::Result<Vec<Client>> {
    let mut out = Vec::new();
    for t in targets(common) {
        for _ in 0..common.connections.max(1) {
            let ch = tonic::transport::Endpoint::from_shared(format!("http://{t}"))?
                .tcp_nodelay(true)
                .connect()
                .await?;
            let bearer = Bearer(common.api_key.as_deref().map(bearer_value).transpose()?);
            out.push(SyncServiceClient::with_interceptor(ch, bearer));
        }
    }
    Ok(out)
}

/// Latencies in microseconds, to three significant digits (exact below
/// 2.048 ms; above, a figure is the top of its bucket, at most 0.1% high),
/// plus an error count. A percentile is hdrhistogram's: the ceil(q * n)-th
/// smallest latency.
pub struct Stats {
    micros: Histogram<u64>,
    pub errors: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            micros: Histogram::new(3).expect("3 significant digits is in range"),
            errors: 0,
        }
    }
}

impl Stats {
    /// One successful call that took `micros`.
    pub fn record(&mut self, micros: u64) {
        // Auto-resizing: only values beyond 2^62 us could fail.
        self.micros
            .record(micros)
            .expect("a latency fits the histogram");
    }

    /// Successful calls recorded.
    pub fn len(&self) -> u64 {
        self.micros.len()
    }

    pub fn merge(&mut self, other: Stats) {
        self.micros
            .add(&other.micros)
            .expect("auto-resizing histograms add");
        self.errors += other.errors;
    }

    /// The latency at quantile `q` in milliseconds; 0 when nothing was recorded.
    fn ms(&self, q: f64) -> f64 {
        self.micros.value_at_quantile(q) as f64 / 1000.0
    }

    /// Prints the figures; returns the median in milliseconds.
    pub fn report(self, label: &str, seconds: f64) -> f64 {
        let n = self.micros.len();
        println!(
            "{label}: {n} ok, {} errors, {:.0}/s, p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
            self.errors,
            n as f64 / seconds,
            self.ms(0.50),
            self.ms(0.90),
            self.ms(0.99),
            self.ms(0.999),
            self.micros.max() as f64 / 1000.0,
        );
        self.ms(0.50)
    }
}

pub fn chess(id: String, initial_ms: i64) -> pb::CreateSessionRequest {
    pb::CreateSessionRequest {
        session_id: id,
        mode: pb::Mode::PerParticipant as i32,
        initial_time_ms: initial_ms,
        participants: ["a", "b"]
            .iter()
            .map(|p| pb::ParticipantSpec {
                participant_id: p.to_string(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

pub fn run_id() -> String {
    format!("load-{}", uuid::Uuid::new_v4().simple())
}

/// Calls `each(client, index, id)` once for every id, from `workers` tasks
/// sharing one cursor; the first error stops the run.
pub async fn for_each_id<F, Fut>(
    clients: &[Client],
    ids: Arc<Vec<String>>,
    workers: usize,
    each: F,
) -> anyhow::Result<()>
where
    F: Fn(Client, usize, String) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let each = Arc::new(each);
    let mut tasks = Vec::new();
    for w in 0..workers.max(1) {
        let c = clients[w % clients.len()].clone();
        let (next, ids, each) = (next.clone(), ids.clone(), each.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(id) = ids.get(i) else {
                    return Ok::<_, tonic::Status>(());
                };
                each(c.clone(), i, id.clone()).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

pub async fn create_running(
    clients: &[Client],
    ids: &[String],
    initial_ms: i64,
) -> anyhow::Result<()> {
    for_each_id(
        clients,
        Arc::new(ids.to_vec()),
        32,
        move |mut c, _, id| async move {
            c.create_session(chess(id.clone(), initial_ms)).await?;
            c.start_session(pb::StartSessionRequest {
                session_id: id,
                ..Default::default()
            })
            .await?;
            Ok(())
        },
    )
    .await
}

/// Runs `call` from `concurrency` workers for a second's warm-up + `seconds`; returns the measured part.
pub async fn drive<F, Fut>(concurrency: usize, seconds: f64, call: F) -> Stats
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    drive_for(concurrency, Duration::from_secs(1), seconds, call).await
}

pub async fn drive_for<F, Fut>(concurrency: usize, warm: Duration, seconds: f64, call: F) -> Stats
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let start = Instant::now();
    let end = warm + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut stats = Stats::default();
            let mut n = 0u64;
            loop {
                let t = Instant::now();
                if t - start >= end {
                    return stats;
                }
                let ok = call(w, n).await;
                n += 1;
                if t - start >= warm {
                    if ok {
                        stats.record(t.elapsed().as_micros() as u64);
                    } else {
                        stats.errors += 1;
                    }
                }
            }
        }));
    }
    let mut all = Stats::default();
    for t in tasks {
        if let Ok(s) = t.await {
            all.merge(s);
        }
    }
    all
}

/// A two-player sudden-death session for direct store calls.
pub fn two_players(
    id: synckairos::engine::SessionId,
    initial_ms: i64,
) -> anyhow::Result<synckairos::engine::NewSession> {
    use synckairos::engine::{Mode, NewParticipant, NewSession, ParticipantId};
    let participants = vec![
        NewParticipant::named(ParticipantId::parse("p", "a")?),
        NewParticipant::named(ParticipantId::parse("p", "b")?),
    ];
    Ok(NewSession {
        epoch: "bench".into(),
        initial_time_ms: initial_ms,
        ..NewSession::new(id, Mode::PerParticipant, participants)
    })
}

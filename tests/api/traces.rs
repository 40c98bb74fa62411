//! Traces (issue 14): the real binary exports its spans over OTLP/gRPC to an
//! in-process collector (opentelemetry-proto's `TraceServiceServer`), with
//! `RUST_LOG=warn`, so quiet logs are seen not to silence traces.
//!
//! - `rpc_spans_take_the_callers_traceparent_and_name_the_call`: the RPC span
//!   of each call (`synckairos.v1.SyncService/<Method>`, kind server, the
//!   `rpc.*` attributes, `tenant`, `session_id` only once validated) has the
//!   caller's `traceparent` as its parent, and the store's commit is under it.
//! - `child_spans_arrive_with_their_attributes`: on the redis engine with the
//!   audit on, the spans below the RPC arrive: the Redis commit (group size,
//!   attempts), the deadline claim (claimed) and firing (session id) with the
//!   firing's commit under it, the Pub/Sub delivery (channel, events) and the
//!   audit batch (rows).
//! - `the_traces_filter_decides_what_is_sent`: `OTEL_TRACES_FILTER=off` (or
//!   `warn`) sends no span at all; `info,synckairos::trace=off` keeps the RPC
//!   spans and drops the ones below them.
//!
//! The binary flushes its spans every 50 ms (`OTEL_BSP_SCHEDULE_DELAY`) and at
//! shutdown (SIGTERM), so a test either polls the collector or stops the
//! binary and reads what it holds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use synckairos::grpc::pb;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Endpoint, Server};
use tonic::{Code, Request, Response, Status};

use crate::helpers::*;
use crate::pg::TestDb;
use crate::redis_server::RedisServer;

const SERVICE: &str = "synckairos.v1.SyncService";

// ---------- the collector ----------

/// Every span exported to it, in arrival order.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in req.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    /// A collector serving on a free port of 127.0.0.1.
    async fn start() -> (Self, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let collector = Collector::default();
        tokio::spawn(
            Server::builder()
                .add_service(TraceServiceServer::new(collector.clone()))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        (collector, addr)
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    /// The spans once `done` holds of them, polling for up to 10 s; panics
    /// with `what` (and the names of the spans that did arrive) otherwise.
    async fn wait_for(&self, what: &str, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let t0 = Instant::now();
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "no {what} within 10 s; spans that arrived:\n{}",
                summary(&spans)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

// ---------- the binary ----------

/// The real `synckairos` binary exporting to a collector; killed on drop.
struct Binary {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Binary {
    /// Starts it on the memory engine (unless `env` says otherwise) with
    /// `RUST_LOG=warn`, its spans going to `collector`.
    fn start(collector: SocketAddr, env: &[(&str, String)]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::env::temp_dir().join(unique_id("sk-traces-log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_synckairos"));
        cmd.env("SYNCKAIROS_LISTEN", format!("127.0.0.1:{port}"))
            .env("SYNCKAIROS_ENGINE", "memory")
            .env_remove("REDIS_URL")
            .env_remove("DATABASE_URL")
            .env_remove("SYNCKAIROS_API_KEYS")
            .env_remove("SYNCKAIROS_API_KEYS_FILE")
            .env_remove("OTEL_TRACES_FILTER")
            .env_remove("OTEL_TRACES_SAMPLER")
            .env_remove("OTEL_TRACES_SAMPLER_ARG")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}"))
            .env("OTEL_BSP_SCHEDULE_DELAY", "50")
            .env("RUST_LOG", "warn");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn synckairos");
        Binary { child, port, log }
    }

    async fn client(&self) -> Client {
        let t0 = Instant::now();
        loop {
            if let Ok(ch) = Endpoint::from_shared(format!("http://127.0.0.1:{}", self.port))
                .unwrap()
                .connect()
                .await
            {
                return pb::sync_service_client::SyncServiceClient::new(ch);
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "no server; its output:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, and waits for it to exit (it flushes its spans first).
    async fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        let t0 = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "still running 20 s after SIGTERM; its output:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

// ---------- spans ----------

/// A W3C `traceparent` (sampled) with a fresh trace id and parent span id.
struct Parent {
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    header: String,
}

fn parent() -> Parent {
    let trace_id = uuid::Uuid::new_v4().as_bytes().to_vec();
    let span_id = uuid::Uuid::new_v4().as_bytes()[..8].to_vec();
    let header = format!("00-{}-{}-01", hex(&trace_id), hex(&span_id));
    Parent {
        trace_id,
        span_id,
        header,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `msg` with `parent` as its `traceparent` metadata.
fn traced<T>(msg: T, parent: &Parent) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut()
        .insert("traceparent", parent.header.parse().unwrap());
    req
}

/// One line per span: its name, ids and attributes (not the code location).
fn summary(spans: &[Span]) -> String {
    let mut out = String::new();
    for s in spans {
        let attrs: Vec<String> = s
            .attributes
            .iter()
            .filter(|kv| !kv.key.starts_with("code."))
            .map(
                |kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(Value::StringValue(v)) => format!("{}={v:?}", kv.key),
                    Some(Value::IntValue(v)) => format!("{}={v}", kv.key),
                    other => format!("{}={other:?}", kv.key),
                },
            )
            .collect();
        out += &format!(
            "{} trace={} span={} parent={} {}\n",
            s.name,
            hex(&s.trace_id),
            hex(&s.span_id),
            hex(&s.parent_span_id),
            attrs.join(" ")
        );
    }
    out
}

fn names(spans: &[Span]) -> Vec<&str> {
    spans.iter().map(|s| s.name.as_str()).collect()
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn str_attr<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    match attr(span, key) {
        Some(Value::StringValue(s)) => Some(s),
        _ => None,
    }
}

fn int_attr(span: &Span, key: &str) -> Option<i64> {
    match attr(span, key) {
        Some(Value::IntValue(i)) => Some(*i),
        _ => None,
    }
}

/// A `store.commit` span's group size.
fn group_size(span: &Span) -> Option<i64> {
    (span.name == "store.commit")
        .then(|| int_attr(span, "group_size"))
        .flatten()
}

fn rpc_name(method: &str) -> String {
    format!("{SERVICE}/{method}")
}

/// The RPC span of `method` in `parent`'s trace.
fn rpc_span<'a>(spans: &'a [Span], method: &str, parent: &Parent) -> Option<&'a Span> {
    let name = rpc_name(method);
    spans
        .iter()
        .find(|s| s.name == name && s.trace_id == parent.trace_id)
}

/// Whether `ancestor` is `span`'s parent, or its parent's, and so on.
fn descends_from(spans: &[Span], span: &Span, ancestor: &Span) -> bool {
    let mut at = span;
    for _ in 0..32 {
        if at.parent_span_id.is_empty() || at.trace_id != ancestor.trace_id {
            return false;
        }
        if at.parent_span_id == ancestor.span_id {
            return true;
        }
        match spans
            .iter()
            .find(|s| s.span_id == at.parent_span_id && s.trace_id == at.trace_id)
        {
            Some(up) => at = up,
            None => return false,
        }
    }
    false
}

/// The RPC span's contract: its name, kind, parent and attributes.
#[track_caller]
fn assert_rpc_span(span: &Span, method: &str, parent: &Parent, code: Code) {
    assert_eq!(span.name, rpc_name(method));
    assert_eq!(span.kind, SpanKind::Server as i32, "{span:?}");
    assert_eq!(span.trace_id, parent.trace_id, "the caller's trace");
    assert_eq!(span.parent_span_id, parent.span_id, "the caller's span");
    assert_eq!(str_attr(span, "rpc.system"), Some("grpc"), "{span:?}");
    assert_eq!(str_attr(span, "rpc.service"), Some(SERVICE), "{span:?}");
    assert_eq!(str_attr(span, "rpc.method"), Some(method), "{span:?}");
    assert_eq!(
        int_attr(span, "rpc.grpc.status_code"),
        Some(code as i64),
        "{span:?}"
    );
    assert_eq!(str_attr(span, "tenant"), Some("default"), "{span:?}");
}

// ---------- the tests ----------

/// Waits for the observe layer (src/grpc/observe.rs): the RPC span.
#[tokio::test]
async fn rpc_spans_take_the_callers_traceparent_and_name_the_call() {
    let (collector, at) = Collector::start().await;
    let bin = Binary::start(at, &[]);
    let mut client = bin.client().await;
    let id = unique_id("traced");
    let (create, start, switch, time, bad) = (parent(), parent(), parent(), parent(), parent());
    client
        .create_session(traced(chess(&id, HOUR_MS), &create))
        .await
        .unwrap();
    client
        .start_session(traced(
            pb::StartSessionRequest {
                session_id: id.clone(),
                ..Default::default()
            },
            &start,
        ))
        .await
        .unwrap();
    client
        .switch_cycle(traced(switch_req(&id), &switch))
        .await
        .unwrap();
    client
        .get_server_time(traced(pb::GetServerTimeRequest {}, &time))
        .await
        .unwrap();
    let invalid = client
        .get_session(traced(
            pb::GetSessionRequest {
                session_id: "not a valid id!".into(),
            },
            &bad,
        ))
        .await;
    assert_code(invalid, Code::InvalidArgument);

    let spans = collector
        .wait_for("RPC span of each call", |spans| {
            rpc_span(spans, "SwitchCycle", &switch).is_some()
                && rpc_span(spans, "GetServerTime", &time).is_some()
                && rpc_span(spans, "GetSession", &bad).is_some()
                && rpc_span(spans, "CreateSession", &create).is_some()
                && spans
                    .iter()
                    .any(|s| s.name == "store.commit" && s.trace_id == switch.trace_id)
        })
        .await;
    let sw = rpc_span(&spans, "SwitchCycle", &switch).unwrap();
    assert_rpc_span(sw, "SwitchCycle", &switch, Code::Ok);
    assert_eq!(str_attr(sw, "session_id"), Some(id.as_str()), "{sw:?}");
    let created = rpc_span(&spans, "CreateSession", &create).unwrap();
    assert_rpc_span(created, "CreateSession", &create, Code::Ok);
    assert_eq!(str_attr(created, "session_id"), Some(id.as_str()));
    let t = rpc_span(&spans, "GetServerTime", &time).unwrap();
    assert_rpc_span(t, "GetServerTime", &time, Code::Ok);
    let b = rpc_span(&spans, "GetSession", &bad).unwrap();
    assert_rpc_span(b, "GetSession", &bad, Code::InvalidArgument);
    assert_eq!(
        attr(b, "session_id"),
        None,
        "an id that did not validate is not an attribute: {b:?}"
    );
    // The switch's commit (memory engine) is under its RPC span.
    let commit = spans
        .iter()
        .find(|s| s.name == "store.commit" && s.trace_id == switch.trace_id)
        .unwrap();
    assert!(descends_from(&spans, commit, sw), "{commit:?} under {sw:?}");
    assert_eq!(str_attr(commit, "engine"), Some("memory"));
    assert_eq!(commit.kind, SpanKind::Internal as i32);
}

#[tokio::test]
async fn child_spans_arrive_with_their_attributes() {
    let (collector, at) = Collector::start().await;
    let redis = RedisServer::start();
    let db = TestDb::create();
    let bin = Binary::start(
        at,
        &[
            ("SYNCKAIROS_ENGINE", "redis".into()),
            ("REDIS_URL", redis.url()),
            ("DATABASE_URL", db.url()),
            // One bucket: concurrent switches share group commits.
            ("SYNCKAIROS_REDIS_BUCKETS", "1".into()),
        ],
    );
    let mut client = bin.client().await;
    // A session followed by a stream here, so its events come back over Pub/Sub.
    let id = unique_id("children");
    create(&mut client, chess(&id, HOUR_MS)).await;
    start(&mut client, &id).await;
    let mut stream = subscribe(&mut client, subscribe_req(&id)).await;
    next_event(&mut stream).await; // the snapshot
    switch(&mut client, &id).await;
    next_change(&mut stream).await;
    // Switches side by side in the one bucket: group commits.
    let mut many = Vec::new();
    for _ in 0..16 {
        many.push(create_started(&mut client).await.session_id);
    }
    let switches = many.iter().map(|id| {
        let mut client = client.clone();
        async move { switch(&mut client, id).await }
    });
    futures_util::future::join_all(switches).await;
    // A session whose clock runs out: a claim and a firing.
    let flagged = unique_id("flagged");
    create(&mut client, chess(&flagged, 300)).await;
    start(&mut client, &flagged).await;

    let spans = collector
        .wait_for("store, Pub/Sub, timer and audit spans", |spans| {
            let has = |name: &str| spans.iter().any(|s| s.name == name);
            has("store.commit")
                && spans.iter().any(|s| group_size(s) >= Some(2))
                && has("fanout.deliver")
                && has("audit.batch")
                && spans
                    .iter()
                    .any(|s| s.name == "timers.fire" && str_attr(s, "session_id") == Some(&flagged))
                && spans
                    .iter()
                    .any(|s| s.name == "timers.claim" && int_attr(s, "claimed") >= Some(1))
        })
        .await;
    for s in spans.iter().filter(|s| s.name == "store.commit") {
        assert_eq!(str_attr(s, "engine"), Some("redis"), "{s:?}");
        assert!(int_attr(s, "group_size") >= Some(1), "{s:?}");
        assert!(int_attr(s, "attempts") >= Some(1), "{s:?}");
    }
    // One call at a time: each commit led alone, at the first attempt.
    assert!(
        spans.iter().any(|s| s.name == "store.commit"
            && int_attr(s, "group_size") == Some(1)
            && int_attr(s, "attempts") == Some(1)),
        "{:?}",
        names(&spans)
    );
    // A group commit runs in a task of its own: it is put under its oldest
    // call's span and linked to the others'.
    for group in spans.iter().filter(|s| group_size(s) >= Some(2)) {
        let size = group_size(group).unwrap() as usize;
        let caller = spans
            .iter()
            .find(|s| s.span_id == group.parent_span_id && s.trace_id == group.trace_id);
        assert!(
            caller.is_some_and(|c| !c.name.starts_with("store.")),
            "a group commit under its oldest call: {group:?}"
        );
        assert_eq!(group.links.len(), size - 1, "{group:?}");
        for link in &group.links {
            assert!(
                spans
                    .iter()
                    .any(|s| s.span_id == link.span_id && s.trace_id == link.trace_id),
                "a link to a call's span: {link:?}"
            );
        }
    }
    let deliver = spans.iter().find(|s| s.name == "fanout.deliver").unwrap();
    assert!(
        str_attr(deliver, "channel").is_some_and(|c| c.ends_with(&id)),
        "{deliver:?}"
    );
    assert_eq!(int_attr(deliver, "events"), Some(1), "{deliver:?}");
    let fire = spans
        .iter()
        .find(|s| s.name == "timers.fire" && str_attr(s, "session_id") == Some(&flagged))
        .unwrap();
    assert_eq!(int_attr(fire, "sessions"), Some(1), "{fire:?}");
    assert_eq!(str_attr(fire, "tenant"), Some("default"), "{fire:?}");
    assert!(
        spans
            .iter()
            .any(|s| s.name == "store.commit" && descends_from(&spans, s, fire)),
        "the firing's commit is under the firing: {:?}",
        names(&spans)
    );
    let batch = spans.iter().find(|s| s.name == "audit.batch").unwrap();
    assert!(int_attr(batch, "rows") >= Some(1), "{batch:?}");
    assert_eq!(int_attr(batch, "inserted"), int_attr(batch, "rows"));
    // Nothing of the transport (the exporter's own included) nor of
    // OpenTelemetry itself is traced: every span is the service's.
    for s in &spans {
        assert!(
            str_attr(s, "target").is_some_and(|t| t.starts_with("synckairos")),
            "a span not of the service: {s:?}"
        );
    }
    drop(stream);
}

#[tokio::test]
async fn the_traces_filter_decides_what_is_sent() {
    /// Calls that make RPC spans and commit spans, then stops the binary so
    /// that it flushes; what the collector then holds is all it sent.
    async fn run(filter: &str) -> Vec<Span> {
        let (collector, at) = Collector::start().await;
        let mut bin = Binary::start(at, &[("OTEL_TRACES_FILTER", filter.into())]);
        let mut client = bin.client().await;
        let id = unique_id("filtered");
        let p = parent();
        create(&mut client, chess(&id, HOUR_MS)).await;
        start(&mut client, &id).await;
        client
            .switch_cycle(traced(switch_req(&id), &p))
            .await
            .unwrap();
        bin.stop().await;
        collector.spans()
    }
    for quiet in ["off", "warn"] {
        let spans = run(quiet).await;
        assert!(
            spans.is_empty(),
            "OTEL_TRACES_FILTER={quiet} sent {:?}",
            names(&spans)
        );
    }
    // The control: the same calls send spans, and the filter picks them.
    let all = run("info").await;
    assert!(
        all.iter().any(|s| s.name == "store.commit"),
        "{:?}",
        names(&all)
    );
    // Nothing was due (the one deadline is an hour away): the claim rounds
    // that found nothing are below `info`, so an idle replica sends none.
    assert!(
        !all.iter().any(|s| s.name == "timers.claim"),
        "{:?}",
        names(&all)
    );
    let rpc_only = run("info,synckairos::trace=off").await;
    assert!(
        !rpc_only.iter().any(|s| s.name.starts_with("store.")),
        "{:?}",
        names(&rpc_only)
    );
    // Waits for the observe layer: the RPC spans are kept.
    assert!(
        rpc_only.iter().any(|s| s.name == rpc_name("SwitchCycle")),
        "{:?}",
        names(&rpc_only)
    );
}

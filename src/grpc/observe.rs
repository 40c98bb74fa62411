//! What every call leaves behind, in the outermost of the per-call tower
//! layers (outside the panic guard, so that a panic answered INTERNAL is
//! seen as one; inside gRPC-Web's translation, so that a gRPC-Web call is
//! seen as the gRPC call it became; grpc/service.rs `Layers`):
//! - **metrics** under go-grpc-prometheus's names and labels
//!   (`grpc_server_started_total`, `grpc_server_handled_total{grpc_code}`,
//!   `grpc_server_handling_seconds`, `grpc_server_msg_received_total`,
//!   `grpc_server_msg_sent_total`), with `grpc_type`, `grpc_service` and
//!   `grpc_method` from a fixed table of the methods served (any other path
//!   counts as `unknown`, so a caller cannot add series);
//! - **the RPC span**, named `synckairos.v1.SyncService/<Method>` (OpenTelemetry's
//!   RPC conventions: `rpc.system`, `rpc.service`, `rpc.method`,
//!   `rpc.grpc.status_code`, kind server), whose parent is the caller's W3C
//!   `traceparent` when it sends one; the handlers record `tenant`, `caller`
//!   and, once it parsed, `session_id` on it. It is for traces only
//!   (`telemetry::RPC_TARGET`): without an OTLP endpoint it is never built;
//! - **the access log**: one line per finished call under the target
//!   `synckairos::access` at `info` (method, code, latency, tenant, caller,
//!   peer), off unless `SYNCKAIROS_ACCESS_LOG=on` (or `RUST_LOG` names the
//!   target); the credential never reaches it.
//!
//! What is not a gRPC call (not a `POST`: the probes' `GET /health` and
//! `GET /ready`) goes through unrecorded.
//!
//! A call ends when its reply's trailers pass (its gRPC code), or at once
//! when its head already carries the code (trailers-only: most errors), or
//! when the reply is dropped before its end (the client went away:
//! `Canceled`). A stream's handling time is its whole life.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body::{Frame, SizeHint};
use metrics::{Counter, Histogram};
use tonic::Code;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tracing::Instrument;
use tracing::field::Empty;

use crate::auth::{Principal, Rpc};
use crate::prometheus::names;

/// Where the access log is written.
pub const ACCESS_TARGET: &str = "synckairos::access";

/// The gRPC codes, by number, as Go's `codes.Code.String()` names them
/// (go-grpc-prometheus's `grpc_code` label).
pub const CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// A served method, with its metric handles (made once, when the router is built).
struct Method {
    service: &'static str,
    name: &'static str,
    /// `service/name`: the span's name.
    full: String,
    /// `unary`, `server_stream`, `bidi_stream`.
    kind: &'static str,
    started: Counter,
    received: Counter,
    sent: Counter,
    seconds: Histogram,
    handled: [Counter; 17],
}

impl Method {
    fn new(service: &'static str, name: &'static str, kind: &'static str) -> Self {
        let labels = [
            ("grpc_type", kind),
            ("grpc_service", service),
            ("grpc_method", name),
        ];
        let handled = std::array::from_fn(|code| {
            let mut l = labels.to_vec();
            l.push(("grpc_code", CODE_NAMES[code]));
            let c = metrics::counter!(names::GRPC_HANDLED, &l);
            c.increment(0);
            c
        });
        let started = metrics::counter!(names::GRPC_STARTED, &labels);
        let received = metrics::counter!(names::GRPC_MSG_RECEIVED, &labels);
        let sent = metrics::counter!(names::GRPC_MSG_SENT, &labels);
        for c in [&started, &received, &sent] {
            c.increment(0);
        }
        Self {
            service,
            name,
            full: format!("{service}/{name}"),
            kind,
            started,
            received,
            sent,
            seconds: metrics::histogram!(names::GRPC_HANDLING_SECONDS, &labels),
            handled,
        }
    }

    fn unary(&self) -> bool {
        self.kind == "unary"
    }
}

const SYNC: &str = "synckairos.v1.SyncService";
const HEALTH: &str = "grpc.health.v1.Health";
const REFLECTION: [&str; 2] = [
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Every method served, and `unknown` last.
struct Methods(Vec<Method>);

impl Methods {
    fn new() -> Self {
        let mut all: Vec<Method> = Rpc::ALL
            .into_iter()
            .filter(|r| *r != Rpc::Reflection)
            .map(|r| {
                let kind = if matches!(r, Rpc::Subscribe | Rpc::WatchSessions) {
                    "server_stream"
                } else {
                    "unary"
                };
                Method::new(SYNC, r.method_name(), kind)
            })
            .collect();
        all.push(Method::new(HEALTH, "Check", "unary"));
        all.push(Method::new(HEALTH, "Watch", "server_stream"));
        for service in REFLECTION {
            all.push(Method::new(
                service,
                Rpc::Reflection.method_name(),
                "bidi_stream",
            ));
        }
        all.push(Method::new("unknown", "unknown", "unary"));
        Self(all)
    }

    /// The method `path` (`/service/method`) names, or `unknown`.
    fn of(&self, path: &str) -> usize {
        let found = path
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .and_then(|(service, name)| {
                self.0
                    .iter()
                    .position(|m| m.service == service && m.name == name)
            });
        found.unwrap_or(self.0.len() - 1)
    }

    fn sync(&self, rpc: Rpc) -> &Method {
        let i = self.of(&format!("/{SYNC}/{}", rpc.method_name()));
        &self.0[i]
    }
}

/// The counter of messages a server stream of `SyncService` sends.
pub struct StreamMessages(Counter);

impl StreamMessages {
    pub fn sent(&self) {
        self.0.increment(1);
    }
}

/// The layer; see the module doc.
#[derive(Clone)]
pub struct ObserveLayer {
    methods: Arc<Methods>,
    /// The access log is on (`SYNCKAIROS_ACCESS_LOG=on`).
    access_log: bool,
}

impl ObserveLayer {
    /// Builds the metric handles: call after `prometheus::install`, if metrics are on.
    pub fn new(access_log: bool) -> Self {
        Self {
            methods: Arc::new(Methods::new()),
            access_log,
        }
    }

    /// What the Subscribe stream counts its messages with.
    pub fn subscribe_messages(&self) -> StreamMessages {
        StreamMessages(self.methods.sync(Rpc::Subscribe).sent.clone())
    }

    /// What the WatchSessions stream counts its messages with.
    pub fn watch_messages(&self) -> StreamMessages {
        StreamMessages(self.methods.sync(Rpc::WatchSessions).sent.clone())
    }
}

impl<S> tower_layer::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    layer: ObserveLayer,
}

/// Who called, set by the auth layer for the access log (only while it is on).
#[derive(Clone, Default)]
pub struct AccessSlot(Arc<OnceLock<Principal>>);

impl AccessSlot {
    pub fn set(&self, p: &Principal) {
        let _ = self.0.set(p.clone());
    }
}

/// What the access log says of a call besides its code and latency.
struct Access {
    slot: AccessSlot,
    peer: Option<std::net::SocketAddr>,
}

/// A call under way: finished once, with its code.
struct Call {
    methods: Arc<Methods>,
    method: usize,
    started: Instant,
    span: tracing::Span,
    access: Option<Access>,
}

impl Call {
    fn finish(self, code: Code) {
        let m = &self.methods.0[self.method];
        let n = code as usize;
        m.handled[n.min(16)].increment(1);
        m.seconds.record(self.started.elapsed().as_secs_f64());
        if code == Code::Ok && m.unary() {
            m.sent.increment(1);
        }
        if !self.span.is_disabled() {
            self.span.record("rpc.grpc.status_code", code as i64);
            if server_error(code) {
                self.span.record("otel.status_code", "ERROR");
            }
        }
        if let Some(access) = self.access {
            let p = access.slot.0.get();
            tracing::info!(
                target: ACCESS_TARGET,
                method = %m.full,
                code = CODE_NAMES[n.min(16)],
                micros = self.started.elapsed().as_micros() as u64,
                tenant = p.map_or("", Principal::tenant_str),
                caller = p.map_or_else(|| "unauthenticated".to_owned(), Principal::label),
                peer = access.peer.map(|a| a.to_string()).unwrap_or_default(),
                "access"
            );
        }
    }
}

/// The codes OpenTelemetry's RPC conventions count as a server span's error.
fn server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// The code a reply's head or trailers carry.
fn code_in(headers: &http::HeaderMap) -> Option<Code> {
    let v = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(Code::from_i32(v))
}

fn peer_of<B>(req: &http::Request<B>) -> Option<std::net::SocketAddr> {
    let ext = req.extensions();
    ext.get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.get_ref().remote_addr())
        })
}

impl<S, B, R> tower_service::Service<http::Request<B>> for Observe<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    R: http_body::Body<Data = Bytes> + Unpin + Send + 'static,
{
    type Response = http::Response<Observed<R>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // Not a gRPC call (a probe's GET): through, unrecorded.
        if req.method() != http::Method::POST {
            let call = self.inner.call(req);
            return Box::pin(
                async move { Ok(call.await?.map(|inner| Observed { inner, call: None })) },
            );
        }
        let methods = self.layer.methods.clone();
        let method = methods.of(req.uri().path());
        let m = &methods.0[method];
        m.started.increment(1);
        m.received.increment(1);
        let span = tracing::info_span!(
            target: crate::telemetry::RPC_TARGET,
            "rpc",
            otel.name = m.full.as_str(),
            otel.kind = "server",
            otel.status_code = Empty,
            rpc.system = "grpc",
            rpc.service = m.service,
            rpc.method = m.name,
            rpc.grpc.status_code = Empty,
            tenant = Empty,
            caller = Empty,
            session_id = Empty,
        );
        if !span.is_disabled() && req.headers().contains_key("traceparent") {
            crate::telemetry::set_parent_from_headers(&span, req.headers());
        }
        let access = (self.layer.access_log
            || tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO))
        .then(|| {
            let slot = AccessSlot::default();
            req.extensions_mut().insert(slot.clone());
            Access {
                slot,
                peer: peer_of(&req),
            }
        });
        let call = Call {
            methods: methods.clone(),
            method,
            started: Instant::now(),
            span: span.clone(),
            access,
        };
        // The service stays ready for the call it was polled for: swap in the
        // clone (tower's "clone, then take the ready one" pattern).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(
            async move {
                let resp = inner.call(req).await?;
                // An error before the first message is trailers-only: its
                // code is in the head, and the body is empty.
                let call = match code_in(resp.headers()) {
                    Some(code) => {
                        call.finish(code);
                        None
                    }
                    None => Some(call),
                };
                Ok(resp.map(|inner| Observed { inner, call }))
            }
            .instrument(span),
        )
    }
}

/// A reply's body that finishes its call when the trailers pass.
pub struct Observed<R> {
    inner: R,
    call: Option<Call>,
}

impl<R> Observed<R> {
    fn finish(&mut self, code: Code) {
        if let Some(call) = self.call.take() {
            call.finish(code);
        }
    }
}

impl<R> Drop for Observed<R> {
    fn drop(&mut self) {
        // Dropped before its trailers: the client went away, or the
        // connection did.
        self.finish(Code::Cancelled);
    }
}

impl<R: http_body::Body<Data = Bytes> + Unpin> http_body::Body for Observed<R> {
    type Data = Bytes;
    type Error = R::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, R::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.finish(code_in(trailers).unwrap_or(Code::Unknown));
                }
            }
            // The transport failed mid-reply.
            Poll::Ready(Some(Err(_))) => this.finish(Code::Unknown),
            Poll::Ready(None) => this.finish(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_find_their_method_and_anything_else_is_unknown() {
        let m = Methods::new();
        let name = |path: &str| {
            let x = &m.0[m.of(path)];
            (x.service, x.name, x.kind)
        };
        assert_eq!(
            name("/synckairos.v1.SyncService/SwitchCycle"),
            (SYNC, "SwitchCycle", "unary")
        );
        assert_eq!(
            name("/synckairos.v1.SyncService/Subscribe"),
            (SYNC, "Subscribe", "server_stream")
        );
        assert_eq!(name("/grpc.health.v1.Health/Watch").2, "server_stream");
        assert_eq!(
            name("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo").2,
            "bidi_stream"
        );
        for other in ["/", "", "/x/y", "/synckairos.v1.SyncService/Nope", "/a/b/c"] {
            assert_eq!(name(other).0, "unknown", "{other:?}");
        }
    }

    #[test]
    fn codes_are_named_as_go_names_them() {
        assert_eq!(CODE_NAMES[Code::Ok as usize], "OK");
        assert_eq!(CODE_NAMES[Code::Cancelled as usize], "Canceled");
        assert_eq!(
            CODE_NAMES[Code::InvalidArgument as usize],
            "InvalidArgument"
        );
        assert_eq!(
            CODE_NAMES[Code::Unauthenticated as usize],
            "Unauthenticated"
        );
    }
}

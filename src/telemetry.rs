//! Logs and traces: one `tracing` subscriber with two layers, each with a
//! filter of its own (tracing-subscriber's per-layer filtering), so that
//! quieting the logs never silences the traces, nor the other way round:
//!
//! - logs: human-readable by default (JSON with `SYNCKAIROS_LOG_FORMAT=json`),
//!   filtered by `RUST_LOG` (default `info`);
//! - traces: an OpenTelemetry OTLP/gRPC exporter, layered on when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set, filtered by `OTEL_TRACES_FILTER`
//!   (the same directive syntax; default `info`; `off` sends no span).
//!
//! Both keep h2, hyper and tower at `warn`; the trace layer never sees any
//! span or event of the transport crates (h2, hyper, tower, tonic) nor of
//! OpenTelemetry itself, whatever its filter says, so the exporter's own
//! calls are never traced into the exporter.
//!
//! The RPC span ([`RPC_TARGET`]) and the spans below it (the store's commit,
//! the timers' claim and firing, the audit batch, the Pub/Sub delivery:
//! [`TRACE_TARGET`]) exist for traces only: the log layer never enables
//! them, so without an OTLP endpoint they are never built (a callsite check,
//! no allocation, no field formatted) and they add nothing to log lines.
//!
//! Sampling is the SDK's, from the standard variables: `OTEL_TRACES_SAMPLER`
//! (`always_on`, `always_off`, `traceidratio`, `parentbased_always_on`,
//! `parentbased_always_off`, `parentbased_traceidratio`) and
//! `OTEL_TRACES_SAMPLER_ARG` (the ratio); by default parent-based
//! always-on: every trace is kept unless a caller's `traceparent` says it
//! is not sampled. The batch exporter reads `OTEL_BSP_SCHEDULE_DELAY` (ms,
//! default 5000), `OTEL_BSP_MAX_QUEUE_SIZE` and the other `OTEL_BSP_*`.
//!
//! A caller's W3C `traceparent` (and `tracestate`) becomes the parent of the
//! RPC span: the W3C TraceContext propagator is installed globally, and
//! [`parent_from_headers`] / [`set_parent_from_headers`] read a request's
//! headers with it.
//!
//! Export never blocks start-up; a dead collector costs at most the export
//! timeout at shutdown. Panics are logged as one error line each
//! (`log_panics`).

use std::time::Duration;

use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::filter::{EnvFilter, FilterExt as _, LevelFilter, filter_fn};
use tracing_subscriber::layer::Filter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

use crate::config::LogFormat;

const SERVICE_NAME: &str = "synckairos";

/// The variable that filters the spans (and span events) sent over OTLP.
pub const TRACES_FILTER_VAR: &str = "OTEL_TRACES_FILTER";

/// The target of the spans that exist for traces only (the child spans of
/// an RPC: store commit, claim, firing, audit batch, Pub/Sub delivery). The
/// log layer never enables them; `OTEL_TRACES_FILTER=info,synckairos::trace=off`
/// keeps the RPC spans and drops these.
pub const TRACE_TARGET: &str = "synckairos::trace";

/// The target of the RPC span (grpc/observe.rs). It exists for traces only
/// too: the log layer never enables it, so without an OTLP endpoint it is
/// never built (building it for the logs' sake cost about 5% of a
/// SwitchCycle's server CPU: a registry slab entry, enter, exit and close per
/// call); log lines name what they are about in their own fields (the access
/// log: method, tenant, caller, peer).
pub const RPC_TARGET: &str = "synckairos::rpc";

/// Crates whose spans and events never reach the trace layer: the
/// transport (the exporter's own included) and OpenTelemetry itself.
const NEVER_TRACED: [&str; 5] = ["h2", "hyper", "tower", "tonic", "opentelemetry"];

fn never_traced(target: &str) -> bool {
    NEVER_TRACED.iter().any(|t| {
        target
            .strip_prefix(t)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(':') || rest.starts_with('_'))
    })
}

/// Flushes and stops the trace exporter when dropped.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// The log layer's filter: `RUST_LOG` (default `info`; an unreadable one
/// falls back to `info`), with the transport at `warn`, the access log at
/// `info` when `access_log` (`SYNCKAIROS_ACCESS_LOG=on`, whatever `RUST_LOG`
/// says), and never a span that exists for traces only (`TRACE_TARGET`,
/// `RPC_TARGET`).
fn log_filter<S>(access_log: bool) -> anyhow::Result<impl Filter<S>> {
    let mut env = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive("h2=warn".parse()?)
        .add_directive("hyper=warn".parse()?)
        .add_directive("tower=warn".parse()?);
    if access_log {
        env = env.add_directive(format!("{}=info", crate::grpc::ACCESS_TARGET).parse()?);
    }
    Ok(env.and(filter_fn(|meta| {
        !(meta.is_span() && (meta.target() == TRACE_TARGET || meta.target() == RPC_TARGET))
    })))
}

/// The trace layer's filter: `OTEL_TRACES_FILTER` (default `info`), with
/// the transport at `warn`. An unreadable one is a start-up error: the
/// variable is only ever set on purpose.
fn trace_filter(var: Option<&str>) -> anyhow::Result<EnvFilter> {
    let directives = var
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .unwrap_or("info");
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .parse(directives)
        .map_err(|e| anyhow::anyhow!("{TRACES_FILTER_VAR}={directives:?}: {e}"))?;
    Ok(filter
        .add_directive("h2=warn".parse()?)
        .add_directive("hyper=warn".parse()?)
        .add_directive("tower=warn".parse()?))
}

/// Installs the global subscriber and the W3C TraceContext propagator.
/// Call once, inside the Tokio runtime.
pub fn init(
    format: LogFormat,
    otlp_endpoint: Option<&str>,
    access_log: bool,
) -> anyhow::Result<TelemetryGuard> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    // Read even without an endpoint, so that a typo is found at once.
    let traces_filter = std::env::var(TRACES_FILTER_VAR).ok();
    let traces_filter = trace_filter(traces_filter.as_deref())?;
    let logs_filter = log_filter(access_log)?;
    let logs = match format {
        LogFormat::Human => fmt::layer().with_target(false).boxed(),
        LogFormat::Json => fmt::layer().json().with_current_span(true).boxed(),
    }
    .with_filter(logs_filter);
    let provider = match otlp_endpoint {
        Some(endpoint) => {
            let traces_filter = traces_filter.and(filter_fn(|meta| !never_traced(meta.target())));
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(Duration::from_secs(3))
                .build()?;
            // The sampler is the SDK's default: OTEL_TRACES_SAMPLER(_ARG),
            // else parent-based always-on.
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(Resource::builder().with_service_name(SERVICE_NAME).build())
                .build();
            // A task moves between threads: the thread says nothing of a
            // span. Busy/idle times would cost two clock reads per poll.
            // Integer fields must be i64 (or i32...): tracing-opentelemetry
            // has no u64 attribute and would format one as a string.
            // Nothing else here reads OpenTelemetry's active context (the
            // spans' parents come from tracing's own registry), so entering a
            // span (each poll of an instrumented future) need not swap it in;
            // the code location (three attributes a span) says nothing the
            // span's name and target do not.
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer(SERVICE_NAME))
                .with_threads(false)
                .with_tracked_inactivity(false)
                .with_context_activation(false)
                .with_location(false)
                .with_filter(traces_filter);
            tracing_subscriber::registry()
                .with(logs)
                .with(layer)
                .try_init()?;
            Some(provider)
        }
        None => {
            logs_only(logs).try_init()?;
            None
        }
    };
    log_panics();
    Ok(TelemetryGuard { provider })
}

/// The subscriber without an OTLP endpoint: the log layer alone. Not the
/// same subscriber with a `None` trace layer: a layer that is `None` tells
/// tracing-subscriber that it wants every callsite (`Interest::always()`), so
/// every span at any level of any crate (h2's per-frame trace spans, the RPC
/// span) would be built in the registry for nobody: a third of a
/// SwitchCycle's server CPU (122-125 µs a call with it, 73-82 µs without).
fn logs_only<L>(logs: L) -> impl tracing::Subscriber + Send + Sync
where
    L: Layer<tracing_subscriber::Registry> + Send + Sync,
{
    tracing_subscriber::registry().with(logs)
}

/// Reads W3C trace context out of request headers (gRPC metadata).
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The OpenTelemetry context a request's `traceparent` / `tracestate`
/// headers name, read with the global propagator (W3C TraceContext, set by
/// [`init`]); a context with no remote span when they are missing or
/// malformed.
pub fn parent_from_headers(headers: &http::HeaderMap) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
}

/// Makes the request's `traceparent`, if it has one, the parent of `span`
/// (which must not have been entered yet). Does nothing, and reads nothing,
/// when `span` is disabled (traces off, or filtered out) or the request
/// carries no `traceparent`.
pub fn set_parent_from_headers(span: &tracing::Span, headers: &http::HeaderMap) {
    if span.is_disabled() || !headers.contains_key("traceparent") {
        return;
    }
    // Err only when no OpenTelemetry layer is installed: nothing to parent.
    let _ = span.set_parent(parent_from_headers(headers));
}

/// Every panic, wherever it happens, becomes one error line in the log (with
/// its location), in place of the default hook's text on stderr, so that it
/// reaches the same log and format as everything else. A handler's panic is
/// then answered `INTERNAL` by the panic guard (grpc/panic.rs).
fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map_or_else(|| "unknown".to_owned(), ToString::to_string);
        tracing::error!(
            target: "synckairos::panic",
            %location,
            "panic: {}",
            crate::grpc::panic_message(info.payload())
        );
    }));
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TraceContextExt as _;

    use super::*;

    #[test]
    fn a_traceparent_header_names_the_remote_parent() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        );
        let cx = parent_from_headers(&headers);
        let span = cx.span();
        let sc = span.span_context();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");

        headers.insert("traceparent", http::HeaderValue::from_static("00-garbage"));
        assert!(
            !parent_from_headers(&headers)
                .span()
                .span_context()
                .is_valid()
        );
        assert!(
            !parent_from_headers(&http::HeaderMap::new())
                .span()
                .span_context()
                .is_valid()
        );
    }

    /// Keeps what it is given.
    #[derive(Clone, Debug, Default)]
    struct Keep(std::sync::Arc<std::sync::Mutex<Vec<opentelemetry_sdk::trace::SpanData>>>);

    impl opentelemetry_sdk::trace::SpanExporter for Keep {
        async fn export(
            &self,
            batch: Vec<opentelemetry_sdk::trace::SpanData>,
        ) -> opentelemetry_sdk::error::OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    #[test]
    fn set_parent_from_headers_makes_the_callers_span_the_parent() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let keep = Keep::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(keep.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let mut traced = http::HeaderMap::new();
        traced.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        );
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("with a parent");
            set_parent_from_headers(&span, &traced);
            span.in_scope(|| tracing::info_span!("child").in_scope(|| {}));
            drop(span);
            let span = tracing::info_span!("without");
            set_parent_from_headers(&span, &http::HeaderMap::new());
            drop(span);
        });
        let spans = keep.0.lock().unwrap().clone();
        let find = |name: &str| spans.iter().find(|s| s.name == name).unwrap();
        let (with, child, without) = (find("with a parent"), find("child"), find("without"));
        assert_eq!(
            with.span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(with.parent_span_id.to_string(), "00f067aa0ba902b7");
        assert!(with.parent_span_is_remote);
        assert_eq!(child.span_context.trace_id(), with.span_context.trace_id());
        assert_eq!(child.parent_span_id, with.span_context.span_id());
        assert_ne!(
            without.span_context.trace_id(),
            with.span_context.trace_id()
        );
        assert_eq!(
            without.parent_span_id,
            opentelemetry::trace::SpanId::INVALID
        );
    }

    #[test]
    fn the_trace_filter_defaults_to_info_and_refuses_nonsense() {
        assert_eq!(
            trace_filter(None).unwrap().max_level_hint(),
            Some(LevelFilter::INFO)
        );
        assert_eq!(
            trace_filter(Some("  ")).unwrap().max_level_hint(),
            Some(LevelFilter::INFO)
        );
        assert_eq!(
            trace_filter(Some("off")).unwrap().max_level_hint(),
            Some(LevelFilter::WARN),
            "only the transport's own directives are left"
        );
        assert!(trace_filter(Some("synckairos=loud")).is_err());
    }

    #[test]
    fn without_an_otlp_endpoint_the_spans_for_traces_are_never_built() {
        let logs = fmt::layer()
            .with_writer(std::io::sink)
            .with_filter(log_filter(false).unwrap());
        tracing::subscriber::with_default(tracing_subscriber::registry().with(logs), || {
            assert!(tracing::error_span!(target: TRACE_TARGET, "store.commit").is_disabled());
            assert!(tracing::error_span!(target: RPC_TARGET, "rpc").is_disabled());
            // The control: the logs' own spans are built (unless RUST_LOG=off).
            if std::env::var("RUST_LOG").as_deref() != Ok("off") {
                assert!(!tracing::error_span!("a call").is_disabled());
            }
        });
    }

    #[test]
    fn without_an_otlp_endpoint_no_span_is_built_for_nobody() {
        let logs = || {
            fmt::layer()
                .with_writer(std::io::sink)
                .with_filter(log_filter(false).unwrap())
        };
        let quiet = || {
            assert!(tracing::trace_span!(target: "h2::codec", "frame").is_disabled());
            assert!(tracing::info_span!(target: RPC_TARGET, "rpc").is_disabled());
        };
        tracing::subscriber::with_default(logs_only(logs()), quiet);
        // Why `logs_only`: with a `None` trace layer beside the logs, the same
        // spans are built (tracing-subscriber's `Option<Layer>` wants them all).
        let with_none = tracing_subscriber::registry()
            .with(logs())
            .with(None::<tracing_subscriber::layer::Identity>);
        tracing::subscriber::with_default(with_none, || {
            assert!(!tracing::trace_span!(target: "h2::codec", "frame").is_disabled());
        });
    }

    #[test]
    fn the_transport_and_opentelemetry_are_never_traced() {
        for t in [
            "h2",
            "h2::proto",
            "hyper_util::client",
            "tower::buffer",
            "tonic::transport",
            "opentelemetry_sdk",
            "opentelemetry_otlp::exporter",
        ] {
            assert!(never_traced(t), "{t}");
        }
        for t in [
            "synckairos",
            "synckairos::trace",
            "h2o",
            "towers",
            "hyperloop",
        ] {
            assert!(!never_traced(t), "{t}");
        }
    }
}

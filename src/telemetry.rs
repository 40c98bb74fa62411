//! Logs and traces: a `tracing` subscriber with human-readable logs by
//! default (JSON with `SYNCKAIROS_LOG_FORMAT=json`), filtered by `RUST_LOG`,
//! and an OpenTelemetry OTLP exporter layered on when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Export never blocks start-up; a dead
//! collector costs at most the export timeout at shutdown. Panics are logged
//! as one error line each (`log_panics`).

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, fmt};

use crate::config::LogFormat;

const SERVICE_NAME: &str = "synckairos";

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

/// Installs the global subscriber. Call once, inside the Tokio runtime.
pub fn init(format: LogFormat, otlp_endpoint: Option<&str>) -> anyhow::Result<TelemetryGuard> {
    // The exporter's own transport must not trace itself back into the exporter.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive("h2=warn".parse()?)
        .add_directive("hyper=warn".parse()?)
        .add_directive("tower=warn".parse()?);
    let logs = match format {
        LogFormat::Human => fmt::layer().with_target(false).boxed(),
        LogFormat::Json => fmt::layer().json().with_current_span(true).boxed(),
    };
    let (otel, provider) = match otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(Duration::from_secs(3))
                .build()?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(Resource::builder().with_service_name(SERVICE_NAME).build())
                .build();
            let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer(SERVICE_NAME));
            (Some(layer), Some(provider))
        }
        None => (None, None),
    };
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(otel)
        .try_init()?;
    log_panics();
    Ok(TelemetryGuard { provider })
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

/// Reads a W3C `traceparent` (and `tracestate`) from request headers.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Makes the caller's trace (its `traceparent` header) the parent of `span`.
pub fn set_parent_from_headers(span: &tracing::Span, headers: &http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let cx =
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    let _ = span.set_parent(cx);
}

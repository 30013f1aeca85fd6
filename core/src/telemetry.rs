//! Telemetry shared by every binary: `tracing` logs (JSON lines by default), a Prometheus recorder for the
//! `metrics` facade, and OpenTelemetry traces. Metric names follow `airq_<service>_<what>_<unit>`.
//!
//! Traces: every `tracing` span is an OpenTelemetry span too. A request's span continues the W3C trace context
//! (`traceparent`) the caller sent, or starts a trace, and carries its `trace_id` as a field, so that every log line
//! written while serving the request names the trace; outgoing calls pass the context on ([`inject_trace`]). Spans
//! are exported over OTLP/HTTP when an endpoint is configured; without one, ids are still made and propagated
//! (nothing is recorded for export, and a caller's sampling decision is passed on unchanged).

use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogArgs, LogFormat};

/// Latency buckets in seconds, from 100 µs to 30 s: fine enough for the gateway's sub-millisecond overhead and wide
/// enough for a training request.
const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

static PROMETHEUS: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// What went wrong while setting telemetry up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid log level {level:?}: {source}")]
    LogLevel {
        level: String,
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("cannot install the Prometheus recorder: {0}")]
    Prometheus(#[from] metrics_exporter_prometheus::BuildError),
    #[error("invalid OTLP endpoint {endpoint:?} (--otlp-endpoint / OTEL_EXPORTER_OTLP_ENDPOINT): {reason}")]
    OtlpEndpoint { endpoint: String, reason: String },
    #[error("invalid trace sample ratio {0} (--trace-sample-ratio / AIRQ_TRACE_SAMPLE_RATIO): it must be from 0 to 1")]
    SampleRatio(f64),
}

/// The handles a service keeps after set-up.
#[derive(Clone)]
pub struct Telemetry {
    /// The service name, as used in metric names (`airq_<service>_…`).
    pub service: &'static str,
    /// Renders the Prometheus text exposition for `/metrics`.
    pub prometheus: PrometheusHandle,
    /// Keeps the background log writer running; the last clone dropped flushes what is queued.
    _log_writer: Option<Arc<tracing_appender::non_blocking::WorkerGuard>>,
    /// Keeps the trace exporter running; the last clone dropped sends the spans still queued.
    _traces: Option<Arc<TraceExport>>,
}

impl Telemetry {
    /// A metric name in this service's namespace: `airq_<service>_<name>`.
    pub fn metric_name(&self, name: &str) -> String {
        format!("airq_{}_{}", self.service, name)
    }

    /// The same set-up under another service name, for a process that serves several services (`airq up`).
    pub fn for_service(&self, service: &'static str) -> Self {
        Self {
            service,
            ..self.clone()
        }
    }
}

/// Shuts the tracer provider down when the last [`Telemetry`] goes: the batch still queued is exported.
struct TraceExport(SdkTracerProvider);

impl Drop for TraceExport {
    fn drop(&mut self) {
        if let Err(e) = self.0.shutdown() {
            // The logger may be gone already.
            eprintln!("airq: the last traces could not be exported: {e}");
        }
    }
}

/// Makes `span` continue the trace whose context `headers` carry (W3C `traceparent`/`tracestate`), or start a new
/// one, records the trace id in the span's `trace_id` field (declare it `trace_id = tracing::field::Empty`), and
/// returns it (empty when the span is disabled).
pub fn continue_trace(span: &tracing::Span, headers: &HeaderMap) -> String {
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let _ = span.set_parent(parent);
    let id = trace_id(span);
    if !id.is_empty() {
        span.record("trace_id", id.as_str());
    }
    id
}

/// The trace id of `span` in hex, or an empty string when it has none (disabled by the log filter).
pub fn trace_id(span: &tracing::Span) -> String {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        span_context.trace_id().to_string()
    } else {
        String::new()
    }
}

/// Writes `span`'s trace context into the headers of an outgoing request, so that the callee continues the trace
/// as a child of `span`.
pub fn inject_trace(span: &tracing::Span, headers: &mut HeaderMap) {
    let context = span.context();
    if context.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
    }
}

/// The tracer provider for `service`: exporting over OTLP/HTTP when an endpoint is given.
fn tracer_provider(service: &'static str, log: &LogArgs) -> Result<(SdkTracerProvider, bool), Error> {
    let ratio = log.trace_sample_ratio;
    if !(0.0..=1.0).contains(&ratio) {
        return Err(Error::SampleRatio(ratio));
    }
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(format!("airq-{service}"))
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let Some(endpoint) = log.otlp_endpoint.as_deref().filter(|e| !e.trim().is_empty()) else {
        // Nothing leaves the process: spans are not recorded, but ids are made and a caller's decision is kept.
        return Ok((
            builder
                .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)))
                .build(),
            false,
        ));
    };
    let invalid = |reason: String| Error::OtlpEndpoint {
        endpoint: endpoint.to_owned(),
        reason,
    };
    let base = reqwest::Url::parse(endpoint.trim()).map_err(|e| invalid(e.to_string()))?;
    if !matches!(base.scheme(), "http" | "https") {
        return Err(invalid("expected an http:// or https:// URL".to_owned()));
    }
    let url = format!("{}/v1/traces", base.as_str().trim_end_matches('/'));
    // The exporter's HTTP client uses rustls with the process's crypto provider, as every airq client does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(url)
        .build()
        .map_err(|e| invalid(e.to_string()))?;
    let provider = builder
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))))
        .build();
    Ok((provider, true))
}

/// Sets logging up and installs the metrics recorder. Safe to call more than once in a process (tests mount several
/// services in one process): the first logger and recorder stay in place.
pub fn init(service: &'static str, log: &LogArgs) -> Result<Telemetry, Error> {
    install(service, log, false)
}

/// [`init`] for a service on a request path measured in microseconds (the gateway): log lines are written to
/// stdout by a thread of their own, so that a slow write never stalls the runtime that serves requests. Lines are
/// never dropped (a full queue slows logging down instead); keep the returned [`Telemetry`] until the end, when it
/// flushes.
pub fn init_background_writer(service: &'static str, log: &LogArgs) -> Result<Telemetry, Error> {
    install(service, log, true)
}

fn install(service: &'static str, log: &LogArgs, background: bool) -> Result<Telemetry, Error> {
    let filter = EnvFilter::try_new(&log.level).map_err(|source| Error::LogLevel {
        level: log.level.clone(),
        source,
    })?;
    let (writer, guard) = if background {
        let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(false)
            .thread_name("airq-log-writer")
            .finish(std::io::stdout());
        (BoxMakeWriter::new(writer), Some(std::sync::Arc::new(guard)))
    } else {
        (BoxMakeWriter::new(std::io::stdout), None)
    };
    let (provider, exporting) = tracer_provider(service, log)?;
    let fmt = match log.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(writer)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer().with_writer(writer).boxed(),
    };
    // One filter for logs and traces: a per-layer filter for the trace layer (to trace airq's spans whatever the
    // log level) left some request spans without an OpenTelemetry context under concurrent requests — the gateway
    // then passed the caller's trace context on unchanged. Request spans are at info level: traced at the default
    // level and below.
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("airq")))
        .with(fmt)
        .try_init()
        .is_ok();
    // A second initialisation in the same process (tests mount several services in one) fails harmlessly: the
    // first subscriber keeps logging and tracing, and this provider is dropped unused.
    let traces = if installed {
        if exporting {
            tracing::info!(
                service,
                endpoint = log.otlp_endpoint.as_deref(),
                "exporting traces over OTLP"
            );
        }
        Some(Arc::new(TraceExport(provider)))
    } else {
        None
    };
    let prometheus = prometheus_handle()?;
    metrics::gauge!(format!("airq_{service}_build_info"), "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(Telemetry {
        service,
        prometheus,
        _log_writer: guard,
        _traces: traces,
    })
}

fn prometheus_handle() -> Result<PrometheusHandle, Error> {
    // The recorder is process-global; the lock makes "install once, then share" hold across threads.
    let mut installed = PROMETHEUS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(handle) = installed.as_ref() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS_SECONDS)?
        .install_recorder()?;
    *installed = Some(handle.clone());
    Ok(handle)
}

/// Writes metrics computed when `/metrics` is read, in the Prometheus text format: series that exist exactly as long
/// as what they describe (one per object of a cache, say), which the `metrics` facade cannot remove.
pub type Collector = Arc<dyn Fn(&mut String) + Send + Sync>;

static COLLECTORS: std::sync::Mutex<Vec<(u64, Collector)>> = std::sync::Mutex::new(Vec::new());
static NEXT_COLLECTOR: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Adds `collector` to what `/metrics` answers, until the returned guard is dropped.
#[must_use = "the collector is removed when the guard is dropped"]
pub fn add_collector(collector: Collector) -> CollectorGuard {
    let id = NEXT_COLLECTOR.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    COLLECTORS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((id, collector));
    CollectorGuard(id)
}

/// Removes its collector when dropped.
pub struct CollectorGuard(u64);

impl Drop for CollectorGuard {
    fn drop(&mut self) {
        COLLECTORS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(id, _)| *id != self.0);
    }
}

/// What the collectors write now.
pub fn collected() -> String {
    let collectors: Vec<Collector> = COLLECTORS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(_, c)| c.clone())
        .collect();
    let mut text = String::new();
    for collector in collectors {
        collector(&mut text);
    }
    text
}

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
/// Whether the installed subscriber exports spans.
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// The installed subscriber's batched JSON log writer, when it has one.
static JSON_LINES: std::sync::OnceLock<crate::log_sink::LogSink> = std::sync::OnceLock::new();

/// Whether spans leave the process (an OTLP endpoint is configured). When they do not, a hot path may skip making
/// spans and pass the trace context on with [`pass_trace_on`].
pub fn exporting_traces() -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Relaxed)
}

/// The installed logger's batched writer, when it writes JSON lines from a thread of its own
/// ([`init_background_writer`]): a hot path may write a line it formatted itself, in the logger's JSON shape
/// (`timestamp`, `level`, `message`, the fields, `target`). Check the level with `tracing::enabled!` first.
pub fn json_lines() -> Option<&'static crate::log_sink::LogSink> {
    JSON_LINES.get()
}

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
    #[error("cannot start the log writer thread: {0}")]
    LogWriter(std::io::Error),
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
    _log_writer: Option<Arc<crate::log_sink::SinkGuard>>,
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

/// Passes the trace context on without a span: what [`continue_trace`] and [`inject_trace`] do together when spans
/// are not exported ([`exporting_traces`] is false), at a fraction of the cost. A valid W3C `traceparent` keeps its
/// trace id, sampling flag and `tracestate`, with a new span id naming this hop; anything else starts a new trace
/// (and the caller's `tracestate`, which belonged to no valid trace, is dropped). Returns the trace id in hex.
pub fn pass_trace_on(headers: &mut HeaderMap) -> String {
    const TRACEPARENT: &str = "traceparent";
    let continued = headers
        .get(TRACEPARENT)
        .and_then(|value| parse_traceparent(value.as_bytes()));
    let (trace_id, flags) = match continued {
        Some(found) => found,
        None => {
            headers.remove("tracestate");
            let mut id = 0;
            while id == 0 {
                id = fastrand::u128(..);
            }
            (id, 0)
        }
    };
    let mut span_id = 0;
    while span_id == 0 {
        span_id = fastrand::u64(..);
    }
    let value = format!("00-{trace_id:032x}-{span_id:016x}-{flags:02x}");
    if let Ok(header) = axum::http::HeaderValue::from_str(&value) {
        headers.insert(TRACEPARENT, header);
    }
    value[3..35].to_owned()
}

/// The trace id and flags of a W3C `traceparent` (version `00`, or a later version read as `00` as the
/// recommendation asks), if it is valid.
fn parse_traceparent(value: &[u8]) -> Option<(u128, u8)> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let mut parts = text.splitn(5, '-');
    let version = parts.next()?;
    let (trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?);
    let rest = parts.next();
    let hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hex(version, 2) || version == "ff" || !hex(trace, 32) || !hex(parent, 16) || !hex(flags, 2) {
        return None;
    }
    // Version 00 has exactly four parts; a later one may add more.
    if version == "00" && rest.is_some() {
        return None;
    }
    let trace = u128::from_str_radix(trace, 16).ok()?;
    let parent = u64::from_str_radix(parent, 16).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    (trace != 0 && parent != 0).then_some((trace, flags & 0x01))
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
    let (writer, sink, guard) = if background {
        let (sink, guard) =
            crate::log_sink::LogSink::start(std::io::stdout(), "airq-log-writer").map_err(Error::LogWriter)?;
        (
            BoxMakeWriter::new(sink.clone()),
            Some(sink),
            Some(std::sync::Arc::new(guard)),
        )
    } else if log.to_stderr {
        (BoxMakeWriter::new(std::io::stderr), None, None)
    } else {
        (BoxMakeWriter::new(std::io::stdout), None, None)
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
        EXPORTING.store(exporting, std::sync::atomic::Ordering::Relaxed);
        if let (Some(sink), LogFormat::Json) = (sink, log.format) {
            let _ = JSON_LINES.set(sink);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &HeaderMap) -> Vec<String> {
        headers["traceparent"]
            .to_str()
            .unwrap_or_default()
            .split('-')
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn a_valid_traceparent_keeps_its_trace_flag_and_state_with_a_new_span() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        headers.insert("tracestate", "vendor=1".parse().unwrap());
        let trace = pass_trace_on(&mut headers);
        assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
        let parts = parts(&headers);
        assert_eq!(parts[..2], ["00", "4bf92f3577b34da6a3ce929d0e0e4736"]);
        assert_eq!(parts[2].len(), 16);
        assert_ne!(parts[2], "00f067aa0ba902b7");
        assert_ne!(parts[2], "0000000000000000");
        assert_eq!(parts[3], "01");
        assert_eq!(headers["tracestate"], "vendor=1");
    }

    #[test]
    fn an_unsampled_caller_stays_unsampled() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
                .parse()
                .unwrap(),
        );
        pass_trace_on(&mut headers);
        assert_eq!(parts(&headers)[3], "00");
    }

    #[test]
    fn anything_but_a_valid_traceparent_starts_a_new_trace() {
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert("traceparent", bad.parse().unwrap());
            headers.insert("tracestate", "vendor=1".parse().unwrap());
            let trace = pass_trace_on(&mut headers);
            assert_eq!(trace.len(), 32, "{bad:?}");
            assert_ne!(trace, "4bf92f3577b34da6a3ce929d0e0e4736", "{bad:?}");
            assert_eq!(parts(&headers)[3], "00", "{bad:?}");
            assert!(!headers.contains_key("tracestate"), "{bad:?}");
        }
        // A later version is read as version 00, its extra parts ignored.
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what"
                .parse()
                .unwrap(),
        );
        assert_eq!(pass_trace_on(&mut headers), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn a_caller_without_a_trace_gets_a_new_one_each_time() {
        let (mut a, mut b) = (HeaderMap::new(), HeaderMap::new());
        assert_ne!(pass_trace_on(&mut a), pass_trace_on(&mut b));
        assert!(a["traceparent"].to_str().unwrap().starts_with("00-"));
    }
}

//! Telemetry shared by every binary: `tracing` logs (JSON lines by default) and a Prometheus recorder for the
//! `metrics` facade. Metric names follow `airq_<service>_<what>_<unit>`.

use std::sync::Mutex;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;
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
}

/// The handles a service keeps after set-up.
#[derive(Clone)]
pub struct Telemetry {
    /// The service name, as used in metric names (`airq_<service>_…`).
    pub service: &'static str,
    /// Renders the Prometheus text exposition for `/metrics`.
    pub prometheus: PrometheusHandle,
    /// Keeps the background log writer running; the last clone dropped flushes what is queued.
    _log_writer: Option<std::sync::Arc<tracing_appender::non_blocking::WorkerGuard>>,
}

impl Telemetry {
    /// A metric name in this service's namespace: `airq_<service>_<name>`.
    pub fn metric_name(&self, name: &str) -> String {
        format!("airq_{}_{}", self.service, name)
    }
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
    let registry = tracing_subscriber::registry().with(filter);
    // A second initialisation in the same process fails harmlessly; the first subscriber keeps logging.
    let _ = match log.format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(writer),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(tracing_subscriber::fmt::layer().with_writer(writer))
            .try_init(),
    };
    let prometheus = prometheus_handle()?;
    metrics::gauge!(format!("airq_{service}_build_info"), "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(Telemetry {
        service,
        prometheus,
        _log_writer: guard,
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

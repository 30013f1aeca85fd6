//! Configuration flags shared by every binary. Each flag can also be set through an `AIRQ_*` environment variable,
//! which is how the operator configures the pods it runs.

use std::net::SocketAddr;

use clap::{Args, ValueEnum};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    Json,
    /// Human-readable lines, for a terminal.
    Pretty,
}

/// Logging flags.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log filter in `tracing` syntax, e.g. `info` or `info,airq_gateway=debug`.
    #[arg(long = "log-level", env = "AIRQ_LOG_LEVEL", default_value = "info")]
    pub level: String,
    /// Log line format.
    #[arg(long = "log-format", env = "AIRQ_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub format: LogFormat,
    /// Where OpenTelemetry traces are sent, over OTLP/HTTP (protobuf), e.g. `http://otel-collector:4318` (traces go
    /// to `<endpoint>/v1/traces`). Without it nothing is exported, but trace ids are still made, logged and passed on.
    #[arg(long = "otlp-endpoint", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Share of the traces this process starts that are exported, from 0 to 1; a trace started by a caller keeps
    /// the caller's decision.
    #[arg(long = "trace-sample-ratio", env = "AIRQ_TRACE_SAMPLE_RATIO", default_value_t = 1.0)]
    pub trace_sample_ratio: f64,
    /// Log to stderr instead of stdout: commands whose stdout is their result (a table, a JSON report) set it, so
    /// that `… > table.md` holds the result alone.
    #[arg(skip)]
    pub to_stderr: bool,
}

impl LogArgs {
    /// Logging at `level` in `format`, no trace export.
    pub fn new(level: impl Into<String>, format: LogFormat) -> Self {
        Self {
            level: level.into(),
            format,
            otlp_endpoint: None,
            trace_sample_ratio: 1.0,
            to_stderr: false,
        }
    }

    /// The same logging, to stderr.
    pub fn on_stderr(&self) -> Self {
        Self {
            to_stderr: true,
            ..self.clone()
        }
    }
}

/// Flags of every long-running service: where it listens, and its logs.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address the HTTP server binds to (API, `/healthz`, `/readyz` and `/metrics`).
    #[arg(long, env = "AIRQ_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Seconds to go on answering after SIGTERM — not ready, closing each connection after its answer — before
    /// stopping; long enough for the endpoint's removal to reach every proxy (the operator sets 5 in a cluster).
    #[arg(long, env = "AIRQ_SHUTDOWN_DRAIN_SECONDS", default_value_t = 0)]
    pub shutdown_drain_seconds: u64,
    #[command(flatten)]
    pub log: LogArgs,
}

/// The database a service stores its data in.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// `postgres://user:password@host:port/db` in a cluster, or `sqlite://path/to/airq.db` on one machine.
    #[arg(long = "database-url", env = "AIRQ_DATABASE_URL", hide_env_values = true)]
    pub url: String,
    /// Maximum number of pooled connections.
    #[arg(
        long = "database-max-connections",
        env = "AIRQ_DATABASE_MAX_CONNECTIONS",
        default_value_t = 10
    )]
    pub max_connections: u32,
    /// Seconds to keep trying to reach the database at start-up (it may still be starting) before giving up.
    #[arg(
        long = "database-connect-timeout",
        env = "AIRQ_DATABASE_CONNECT_TIMEOUT",
        default_value_t = 10
    )]
    pub connect_timeout_secs: u64,
    /// Apply pending schema migrations at start-up (safe with several replicas: migrations take a lock).
    #[arg(long = "database-migrate", env = "AIRQ_DATABASE_MIGRATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate: bool,
}

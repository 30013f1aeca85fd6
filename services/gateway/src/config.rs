//! The gateway service's configuration, from flags or `AIRQ_*` environment variables.

use std::path::PathBuf;

use airq_core::config::{DatabaseArgs, ServeArgs};
use clap::Parser;

/// The only entrance: routes requests to the services, with API keys, users, groups, rate limits, logs and metrics.
#[derive(Debug, Clone, Parser)]
#[command(name = "airq-gateway", version)]
pub struct Config {
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Where `/readyz` and `/metrics` (and `/healthz`) are served, apart from the public listener, which answers
    /// `/healthz` only: probes and Prometheus use this port, callers never see it.
    #[arg(long, env = "AIRQ_OPS_LISTEN", default_value = "0.0.0.0:9090")]
    pub ops_listen: std::net::SocketAddr,
    /// The route table (YAML, as the operator writes it into the `airq-gateway-routes` ConfigMap). Read again when
    /// it changes. Without it the gateway serves only its own endpoints.
    #[arg(long, env = "AIRQ_ROUTES_FILE")]
    pub routes_file: Option<PathBuf>,
    /// How often the route table file is checked for changes, in milliseconds.
    #[arg(long, env = "AIRQ_ROUTES_POLL_MS", default_value_t = 1000)]
    pub routes_poll_ms: u64,
    /// The bootstrap admin API key (`airq_<id>_<secret>`), usually from a Secret. Its user `admin` is in the `admin`
    /// group.
    #[arg(long, env = "AIRQ_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// The secret API keys are hashed with (HMAC-SHA256). Every replica needs the same one; changing it invalidates
    /// every key but the bootstrap key. With SQLite and none given, one is generated beside the database file.
    #[arg(long, env = "AIRQ_KEY_HASH_SECRET", hide_env_values = true)]
    pub key_hash_secret: Option<String>,
    /// A file holding the key hashing secret (instead of `--key-hash-secret`).
    #[arg(long, env = "AIRQ_KEY_HASH_SECRET_FILE", conflicts_with = "key_hash_secret")]
    pub key_hash_secret_file: Option<PathBuf>,
    /// Largest request body forwarded, in bytes (413 beyond).
    #[arg(long, env = "AIRQ_MAX_BODY_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_body_bytes: u64,
    /// Largest request line and headers together, in bytes (431 beyond).
    #[arg(long, env = "AIRQ_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,
    /// Requests per second a key may make on average, unless the key sets its own.
    #[arg(long, env = "AIRQ_KEY_RATE_PER_SECOND", default_value_t = 50.0)]
    pub key_rate_per_second: f64,
    /// Requests a key may make at once above its rate, unless the key sets its own.
    #[arg(long, env = "AIRQ_KEY_BURST", default_value_t = 100)]
    pub key_burst: u32,
    /// Requests per UTC day a key may make, unless the key sets its own. None: no daily quota.
    #[arg(long, env = "AIRQ_KEY_DAILY_QUOTA")]
    pub key_daily_quota: Option<u64>,
    /// Seconds between two additions of this replica's usage counts to the database.
    #[arg(long, env = "AIRQ_USAGE_FLUSH_SECONDS", default_value_t = 2)]
    pub usage_flush_seconds: u64,
    /// Milliseconds between two samples of each route's request rate, 5xx ratio and mean latency for anomaly
    /// detection.
    #[arg(long, env = "AIRQ_ANOMALY_INTERVAL_MS", default_value_t = 60_000)]
    pub anomaly_interval_ms: u64,
    /// The detector each route's signals get: `rolling` (a z-score against the last `--anomaly-season-seconds`,
    /// the winner held out on NAB's standard and low-false-positive profiles) or `seasonal` (the median of the same
    /// time of day over the past week: fewer missed anomalies, about twice the false alarms).
    #[arg(long, env = "AIRQ_ANOMALY_DETECTOR", value_enum, default_value_t = Detector::Rolling)]
    pub anomaly_detector: Detector,
    /// The span the anomaly detector looks back over, in seconds: the rolling window, or the seasonal detector's
    /// season (a day: the usual daily rhythm of traffic).
    #[arg(long, env = "AIRQ_ANOMALY_SEASON_SECONDS", default_value_t = 86_400)]
    pub anomaly_season_seconds: u64,
    /// The z-score above which a sample is anomalous; by default the threshold chosen for the detector on NAB's
    /// realAWSCloudwatch category and held out on realKnownCause (5.25 rolling, 5.5 seasonal).
    #[arg(long, env = "AIRQ_ANOMALY_THRESHOLD")]
    pub anomaly_threshold: Option<f64>,
    /// Upstream failures in a row (connect errors, timeouts, 502/503/504) that open a route's circuit.
    #[arg(long, env = "AIRQ_BREAKER_FAILURES", default_value_t = 5)]
    pub breaker_failures: u32,
    /// Seconds an open circuit stays open before one trial request.
    #[arg(long, env = "AIRQ_BREAKER_OPEN_SECONDS", default_value_t = 10)]
    pub breaker_open_seconds: u64,
    /// Take the client's address from the last `X-Forwarded-For` entry (set behind an ingress controller that
    /// appends it; never when clients reach the gateway directly).
    #[arg(long, env = "AIRQ_TRUST_FORWARDED_FOR", default_value_t = false, action = clap::ArgAction::Set)]
    pub trust_forwarded_for: bool,
    #[command(flatten)]
    pub jwt: JwtArgs,
}

/// JWT bearer tokens, accepted besides API keys when an issuer is set.
#[derive(Debug, Clone, clap::Args)]
pub struct JwtArgs {
    /// The `iss` tokens must carry; setting it turns JWT bearer tokens on.
    #[arg(long = "jwt-issuer", env = "AIRQ_JWT_ISSUER", requires = "audience")]
    pub issuer: Option<String>,
    /// The `aud` tokens must carry.
    #[arg(long = "jwt-audience", env = "AIRQ_JWT_AUDIENCE")]
    pub audience: Option<String>,
    /// PEM public key (RSA or EC) that verifies tokens.
    #[arg(long = "jwt-public-key-file", env = "AIRQ_JWT_PUBLIC_KEY_FILE")]
    pub public_key_file: Option<PathBuf>,
    /// Shared secret for HS256 tokens (instead of a public key).
    #[arg(long = "jwt-secret", env = "AIRQ_JWT_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// The claim listing the caller's groups.
    #[arg(long = "jwt-groups-claim", env = "AIRQ_JWT_GROUPS_CLAIM", default_value = "groups")]
    pub groups_claim: String,
}

/// The anomaly detector the gateway follows its traffic with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Detector {
    Rolling,
    Seasonal,
}

impl Detector {
    /// The threshold chosen for it on one NAB category and held out on the other (docs/benchmarks.md).
    pub fn default_threshold(self) -> f64 {
        match self {
            Self::Rolling => 5.25,
            Self::Seasonal => 5.5,
        }
    }
}

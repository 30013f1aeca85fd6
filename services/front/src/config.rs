//! The front service's configuration, from flags or `AIRQ_*` environment variables.

use airq_core::config::{DatabaseArgs, ServeArgs};
use clap::Parser;

/// The data behind the dashboard's views, and the dashboard.
#[derive(Debug, Clone, Parser)]
#[command(name = "airq-front", version)]
pub struct Config {
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Base URL of the predictive service (`http://airq-predictive.<namespace>.svc:80` in a cluster). Without it
    /// the dashboard shows data without forecasts.
    #[arg(long, env = "AIRQ_PREDICTIVE_URL")]
    pub predictive_url: Option<String>,
    /// How long to wait for the predictive service before answering without a forecast, in milliseconds.
    #[arg(long, env = "AIRQ_PREDICTIVE_TIMEOUT_MS", default_value_t = 5000)]
    pub predictive_timeout_ms: u64,
}

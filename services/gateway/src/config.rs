//! The gateway service's configuration, from flags or `AIRQ_*` environment variables.

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
}

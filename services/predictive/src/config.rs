//! The predictive service's configuration, from flags or `AIRQ_*` environment variables.

use airq_core::config::{DatabaseArgs, ServeArgs};
use clap::Parser;

/// Training, testing and forecasting of contamination with calibrated intervals.
#[derive(Debug, Clone, Parser)]
#[command(name = "airq-predictive", version)]
pub struct Config {
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

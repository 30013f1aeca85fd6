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
}

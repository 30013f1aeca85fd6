//! The etl service's configuration, from flags or `AIRQ_*` environment variables.

use airq_core::config::{DatabaseArgs, ServeArgs};
use clap::Parser;

/// Incremental and bulk loads from external services (OpenAQ, Open-Meteo, CSV) into the database.
#[derive(Debug, Clone, Parser)]
#[command(name = "airq-etl", version)]
pub struct Config {
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
}
